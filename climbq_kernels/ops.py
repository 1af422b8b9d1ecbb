"""Every op of the package, declared once with `torch.library` in the `climbq` namespace.

Each op has a fake (meta) kernel for `torch.compile`, an autograd formula where it is
differentiable, and a table of backend implementations; at run time the op asks
`dispatch.resolve` which backend runs it. The public, argument-checking functions live in
`functional.py`, `losses.py` and `int4.py`; they call these ops.

Backend functions all take the op's arguments positionally and return what the op returns;
the reference backend is `climbq_kernels.reference`, which runs on any device and dtype.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from torch import Tensor

from . import dispatch, reference
from .constants import KERNEL_DTYPES

OpTable = dict[str, Callable]


def _native(name: str) -> Callable:
    """The C++/CUDA op `climbq_native::name` (CPU or CUDA kernel chosen by the tensors' device)."""
    def call(*args):
        return getattr(torch.ops.climbq_native, name)(*args)
    return call


def _triton(module: str, name: str) -> Callable:
    """A Triton launcher, imported on first use so that importing the package needs no triton."""
    def call(*args):
        return getattr(_triton_module(module), name)(*args)
    return call


@functools.cache
def _triton_module(module: str):
    import importlib
    return importlib.import_module(f"climbq_kernels.triton.{module}")


KERNELS: dict[str, OpTable] = {
    "climbq_act_quant": {
        "reference": reference.climbq_act_quant,
        "cpu": _native("climbq_act_quant_forward"),
        "cuda": _native("climbq_act_quant_forward"),
        "triton": _triton("climbq_act", "climbq_act_quant_forward"),
    },
    "climbq_act_quant_backward": {
        "reference": reference.climbq_act_quant_backward,
        "cpu": _native("climbq_act_quant_backward"),
        "cuda": _native("climbq_act_quant_backward"),
        "triton": _triton("climbq_act", "climbq_act_quant_backward"),
    },
    "climbq_weight_quant": {"reference": reference.climbq_weight_quant},
    "climbq_weight_quant_backward": {"reference": reference.climbq_weight_quant_backward},
    "fake_quant_affine": {"reference": reference.fake_quant_affine},
    "fake_quant_affine_backward": {"reference": reference.fake_quant_affine_backward},
    "class_stats": {"reference": reference.class_stats},
    "quantize_int4": {"reference": reference.quantize_int4},
    "int4_matmul": {"reference": reference.int4_matmul},
}
"""op name -> {backend name -> implementation}. A backend missing from an op's table has no
kernel for it yet: automatic dispatch skips it, an explicit `use_backend` raises."""


def _run(op: str, like: Tensor, *args):
    """Run `op` on the backend chosen for `like`'s device and dtype; tensors go in contiguous."""
    table = KERNELS[op]
    implemented = set(table)
    if like.dtype not in KERNEL_DTYPES:
        forced = dispatch.explicit_backend()
        if forced not in (None, "reference"):
            raise TypeError(f"{op}: the '{forced}' backend takes float32, float16 or bfloat16 tensors, "
                            f"got {like.dtype}; {like.dtype} runs on the 'reference' backend")
        implemented = {"reference"}
    args = [a.contiguous() if isinstance(a, Tensor) else a for a in args]
    return table[dispatch.resolve(op, like.device, implemented)](*args)


def _trailing_sum(t: Tensor) -> Tensor:
    """Sum over every dimension but the first: (B, ...) -> (B,)."""
    return t.reshape(t.shape[0], -1).sum(dim=1) if t.dim() > 1 else t


def _per_sample(t: Tensor, like: Tensor) -> Tensor:
    """A (B,) per-sample table viewed to broadcast against `like` (B, ...)."""
    return t.reshape(t.shape[0], *([1] * (like.dim() - 1)))


# --- ClimbQ activation quantizer (SPEC 1a) -------------------------------------------------

@torch.library.custom_op("climbq::climbq_act_quant", mutates_args=())
def climbq_act_quant(x: Tensor, sigma: Tensor, mu: Tensor, bits: int, act_range: float) -> Tensor:
    """out = A*(2*rint(Phi((x - mu_i)/sigma_i)*N)/N - 1); sigma, mu per sample (B,)."""
    return _run("climbq_act_quant", x, x, sigma, mu, bits, act_range)


@torch.library.custom_op("climbq::climbq_act_quant_backward", mutates_args=())
def climbq_act_quant_backward(grad_out: Tensor, x: Tensor, sigma: Tensor, mu: Tensor, bits: int,
                              act_range: float) -> Tensor:
    """dx = dout * 2A*phi(z)/sigma_i (straight-through on rint only)."""
    return _run("climbq_act_quant_backward", x, grad_out, x, sigma, mu, bits, act_range)


@climbq_act_quant.register_fake
def _(x, sigma, mu, bits, act_range):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


@climbq_act_quant_backward.register_fake
def _(grad_out, x, sigma, mu, bits, act_range):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def _climbq_act_setup(ctx, inputs, output):
    x, sigma, mu, bits, act_range = inputs
    ctx.save_for_backward(x, sigma, mu)
    ctx.bits, ctx.act_range = bits, act_range


def _climbq_act_backward(ctx, grad_out):
    x, sigma, mu = ctx.saved_tensors
    dx = climbq_act_quant_backward(grad_out.contiguous(), x, sigma, mu, ctx.bits, ctx.act_range)
    dsigma = dmu = None
    if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
        # d out/d mu = -d out/d x and d out/d sigma = -z * d out/d x, summed over each sample.
        dmu = -_trailing_sum(dx).to(mu.dtype)
        z = (x - _per_sample(mu, x)) / _per_sample(sigma, x)
        dsigma = -_trailing_sum(dx * z).to(sigma.dtype)
    return dx, dsigma, dmu, None, None


climbq_act_quant.register_autograd(_climbq_act_backward, setup_context=_climbq_act_setup)


# --- ClimbQ weight quantizer (SPEC 1b) -----------------------------------------------------

@torch.library.custom_op("climbq::climbq_weight_quant", mutates_args=())
def climbq_weight_quant(w: Tensor, bits: int) -> Tensor:
    """Wq = 2*rint(Phi((w - mean)/std)*N)/N - 1 over the whole tensor."""
    return _run("climbq_weight_quant", w, w, bits)


@torch.library.custom_op("climbq::climbq_weight_quant_backward", mutates_args=())
def climbq_weight_quant_backward(grad_out: Tensor, w: Tensor, bits: int) -> Tensor:
    """dL/dw through the projection, the mean and the std (SPEC 1b)."""
    return _run("climbq_weight_quant_backward", w, grad_out, w, bits)


@climbq_weight_quant.register_fake
def _(w, bits):
    return torch.empty_like(w, memory_format=torch.contiguous_format)


@climbq_weight_quant_backward.register_fake
def _(grad_out, w, bits):
    return torch.empty_like(w, memory_format=torch.contiguous_format)


def _climbq_weight_setup(ctx, inputs, output):
    w, bits = inputs
    ctx.save_for_backward(w)
    ctx.bits = bits


def _climbq_weight_backward(ctx, grad_out):
    (w,) = ctx.saved_tensors
    return climbq_weight_quant_backward(grad_out.contiguous(), w, ctx.bits), None


climbq_weight_quant.register_autograd(_climbq_weight_backward, setup_context=_climbq_weight_setup)


# --- Affine fake quant with learnable (LSQ) scale (SPEC 1e) --------------------------------

@torch.library.custom_op("climbq::fake_quant_affine", mutates_args=())
def fake_quant_affine(x: Tensor, scale: Tensor, zero_point: Tensor, quant_min: int, quant_max: int,
                      axis: int | None) -> Tensor:
    """(clamp(rint(x/scale) + zp, qmin, qmax) - zp) * scale, bit-identical to torch's fake quant."""
    return _run("fake_quant_affine", x, x, scale, zero_point, quant_min, quant_max, axis)


@torch.library.custom_op("climbq::fake_quant_affine_backward", mutates_args=())
def fake_quant_affine_backward(grad_out: Tensor, x: Tensor, scale: Tensor, zero_point: Tensor,
                               quant_min: int, quant_max: int, axis: int | None, scale_grad: bool,
                               zero_point_grad: bool) -> tuple[Tensor, Tensor, Tensor]:
    """(dx, dscale, dzero_point); the last two are zeros unless requested (LSQ gradients)."""
    dx, dscale, dzp = _run("fake_quant_affine_backward", x, grad_out, x, scale, zero_point, quant_min,
                           quant_max, axis, scale_grad, zero_point_grad)
    dscale = torch.zeros_like(scale) if dscale is None else dscale.reshape(scale.shape).to(scale.dtype)
    dzp = torch.zeros_like(zero_point) if dzp is None else dzp.reshape(zero_point.shape).to(zero_point.dtype)
    return dx, dscale, dzp


@fake_quant_affine.register_fake
def _(x, scale, zero_point, quant_min, quant_max, axis):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


@fake_quant_affine_backward.register_fake
def _(grad_out, x, scale, zero_point, quant_min, quant_max, axis, scale_grad, zero_point_grad):
    return (torch.empty_like(x, memory_format=torch.contiguous_format), torch.empty_like(scale),
            torch.empty_like(zero_point))


def _fake_quant_setup(ctx, inputs, output):
    x, scale, zero_point, quant_min, quant_max, axis = inputs
    ctx.save_for_backward(x, scale, zero_point)
    ctx.args = (quant_min, quant_max, axis)


def _fake_quant_backward(ctx, grad_out):
    x, scale, zero_point = ctx.saved_tensors
    scale_grad, zp_grad = ctx.needs_input_grad[1], ctx.needs_input_grad[2]
    dx, dscale, dzp = fake_quant_affine_backward(grad_out.contiguous(), x, scale, zero_point, *ctx.args,
                                                 scale_grad, zp_grad)
    return dx, dscale if scale_grad else None, dzp if zp_grad else None, None, None, None


fake_quant_affine.register_autograd(_fake_quant_backward, setup_context=_fake_quant_setup)


# --- Class-segmented statistics (SPEC 1c steps 1-3, SPEC 4) --------------------------------

@torch.library.custom_op("climbq::class_stats", mutates_args=())
def class_stats(x: Tensor, labels: Tensor, num_classes: int) -> tuple[Tensor, Tensor, Tensor]:
    """(mean (K, F), biased var (K, F), counts (K,) int64) by label; F = D for (B, D), C for (B, C, ...).

    The floating outputs come first (unlike the reference's (counts, mean, var)): autograd
    tooling such as opcheck sums outputs starting from the first one.
    """
    counts, mean, var = _run("class_stats", x, x, labels, num_classes)
    return mean, var, counts.to(torch.int64)


@class_stats.register_fake
def _(x, labels, num_classes):
    stats = x.new_empty(num_classes, x.shape[1]) if x.dim() > 1 else x.new_empty(num_classes)
    return stats, torch.empty_like(stats), x.new_empty(num_classes, dtype=torch.int64)


def _class_stats_setup(ctx, inputs, output):
    x, labels, num_classes = inputs
    mean, _, counts = output
    ctx.save_for_backward(x, labels, counts, mean)


def _by_sample(table: Tensor, labels: Tensor, x: Tensor) -> Tensor:
    """Gather a per-class (K, F) table to broadcast against x (B, F, ...)."""
    picked = table[labels]
    return picked.reshape(*picked.shape, *([1] * (x.dim() - picked.dim())))


def _class_stats_backward(ctx, grad_mean, grad_var, _grad_counts):
    x, labels, counts, mean = ctx.saved_tensors
    per_class = counts.clamp(min=1).to(x.dtype).reshape(-1, *([1] * (mean.dim() - 1)))
    # mean_c = sum x / n_c; var_c = sum (x - mean_c)^2 / n_c, whose gradient through mean_c is zero.
    dx = _by_sample(grad_mean / per_class, labels, x)
    dx = dx + _by_sample(2 * grad_var / per_class, labels, x) * (x - _by_sample(mean, labels, x))
    return dx.expand_as(x).contiguous(), None, None


class_stats.register_autograd(_class_stats_backward, setup_context=_class_stats_setup)


# --- INT4 group-wise weights (SPEC 6) -------------------------------------------------------

@torch.library.custom_op("climbq::quantize_int4", mutates_args=())
def quantize_int4(w: Tensor, group_size: int) -> tuple[Tensor, Tensor, Tensor]:
    """(packed uint8 (N, K/2), scales float32 (N, K/g), zeros float32 (N, K/g))."""
    return _run("quantize_int4", w, w, group_size)


@quantize_int4.register_fake
def _(w, group_size):
    rows, cols = w.shape
    groups = cols // group_size
    return (w.new_empty(rows, cols // 2, dtype=torch.uint8), w.new_empty(rows, groups, dtype=torch.float32),
            w.new_empty(rows, groups, dtype=torch.float32))


@torch.library.custom_op("climbq::int4_matmul", mutates_args=())
def int4_matmul(x: Tensor, packed: Tensor, scales: Tensor, zeros: Tensor, group_size: int,
                bias: Tensor | None) -> Tensor:
    """x @ dequant(W)^T + bias in x's dtype; x (..., K)."""
    return _run("int4_matmul", x, x, packed, scales, zeros, group_size, bias)


@int4_matmul.register_fake
def _(x, packed, scales, zeros, group_size, bias):
    return x.new_empty(*x.shape[:-1], packed.shape[0])


def _int4_matmul_setup(ctx, inputs, output):
    x, packed, scales, zeros, group_size, bias = inputs
    ctx.save_for_backward(packed, scales, zeros)
    ctx.group_size = group_size


def _int4_matmul_backward(ctx, grad_out):
    packed, scales, zeros = ctx.saved_tensors
    weight = reference.dequantize_int4(packed, scales, zeros, ctx.group_size, dtype=grad_out.dtype)
    dx = grad_out @ weight if ctx.needs_input_grad[0] else None
    dbias = grad_out.reshape(-1, grad_out.shape[-1]).sum(0) if ctx.needs_input_grad[5] else None
    return dx, None, None, None, None, dbias


int4_matmul.register_autograd(_int4_matmul_backward, setup_context=_int4_matmul_setup)
