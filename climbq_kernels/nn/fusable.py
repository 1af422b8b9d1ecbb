"""The QAT quantizers' formulas in plain PyTorch, written for torch.compile to fuse.

The quantizer modules call the library's ops (`torch.library` custom ops), which Inductor
cannot see into: under `torch.compile` a quantizer between a BatchNorm and a ReLU then costs
its own kernels and round trips through memory. Under `torch.compiler.is_compiling()` the
modules call these functions instead. Each is one `torch.autograd.Function` whose forward and
backward are elementwise PyTorch, plus the reductions the math needs (the weight's mean and std
forward and its two sums backward; LSQ's step gradient): dynamo traces it with `fullgraph=True`,
AOTAutograd records our backward formula rather than differentiating the forward (the backward
recomputes z or the code from the saved input, as the kernels do, instead of saving them), and
Inductor fuses the elementwise passes with their neighbours: conv -> BatchNorm -> `climbq_act`
-> ReLU compiles to the same generated kernels as conv -> BatchNorm -> ReLU alone.

Values: the same arithmetic as the reference (`climbq_kernels.reference`), in the order it
evaluates it, so that run eagerly a float32 or float64 input gives the reference's output and
gradient bit for bit. float16 and bfloat16 inputs compute in float32 and round the result to
their dtype once, as the C++/CUDA/Triton kernels do (the reference computes in the half type
itself, the error rule's yardstick). Compiled, Inductor's own erf/exp and contractions may move
a value by an ulp, and a quantized output by one level where the input sits on a rounding tie.

No function reads a tensor on the host or branches on data, so none checks values: sigma > 0,
a scale > 0, a zero point in range are the caller's (the modules build them valid). Shapes,
dtypes and Python arguments are checked, statically. Every tensor argument may live on any
device; tables are moved to x's.

- `climbq_act`: the ClimbQ activation quantizer, published form (algorithms.md §1a).
- `climbq_act_relu`: its ReLU-aware form (algorithms.md §1f).
- `climbq_weight`: the ClimbQ weight quantizer (algorithms.md §1b).
- `lsq`: LSQ fake quant with a learned step, used as max(|step|, 1e-8) (algorithms.md §1e).
- `affine`: affine fake quant, PyTorch's semantics, no gradient to scale or zero point (§1e).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..checks import check_bits, check_positive_float, check_tensor
from ..constants import IDENTITY_BITS, levels
from ..reference._normal import half_normal_cdf, normal_cdf, normal_pdf
from ..reference.fake_quant import check_code_range

__all__ = ["affine", "climbq_act", "climbq_act_relu", "climbq_weight", "lsq", "MIN_STEP"]

MIN_STEP = 1e-8
"""LSQ's step as used is max(|step|, MIN_STEP) (as `nn.quantizers._positive_step`)."""

# The formulas write their float constants as literals. Under torch.compile(dynamic=True) a
# module-level float read by traced code becomes a symbolic graph input, and one read inside two
# autograd.Function bodies of a graph trips dynamo (torch 2.14: "Argument 'item' of Node ... does
# not belong to this Graph"); a literal is a constant. (Floats passed as arguments, act_range,
# are fine symbolic.) tests/test_fusable.py checks the values:
#   1e-8 = MIN_STEP; the normal CDF and density come from reference/_normal.py, written alike.


# --- shared pieces --------------------------------------------------------------------------

def _compute_dtype(x: Tensor) -> torch.dtype:
    """float64 for a float64 input (the oracle's precision), else float32 (the kernels' opmath)."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _check_x(name: str, x, batched: bool) -> None:
    check_tensor(name, x, floating=True)
    if batched and x.dim() < 1:
        raise ValueError(f"{name} must have a batch dimension (B, ...), got a 0-d tensor")


def _per_sample(name: str, table, x: Tensor, dtype: torch.dtype) -> Tensor:
    """A per-sample (B,) table in `dtype` on x's device, viewed to broadcast over x (B, ...)."""
    check_tensor(name, table, floating=True)
    if table.dim() != 1 or table.shape[0] != x.shape[0]:
        raise ValueError(f"{name} must have shape ({x.shape[0]},) (one value per sample), got {tuple(table.shape)}")
    return table.detach().to(device=x.device, dtype=dtype).reshape(x.shape[0], *([1] * (x.dim() - 1)))


def _level(q: Tensor, bits: int) -> Tensor:
    """level(q) = (q - N/2) * (2/N) in q's dtype (float32/float64): q - N/2 is exact there and
    2/N is rounded once to q's dtype (a Python scalar meeting a float32 tensor is used as a
    float32, in eager ops and in Inductor's kernels alike), as `reference.climbq._levels`."""
    n = levels(bits)
    return (q - n / 2) * (2.0 / n)


# --- algorithms.md §1a: the ClimbQ activation quantizer ---------------------------------------------

def _act_z(x: Tensor, sigma: Tensor, mu: Tensor) -> tuple[Tensor, Tensor]:
    dtype = _compute_dtype(x)
    sigma_b = _per_sample("sigma", sigma, x, dtype)
    mu_b = _per_sample("mu", mu, x, dtype)
    return (x.to(dtype) - mu_b) / sigma_b, sigma_b


class _ClimbQAct(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, sigma, mu, bits, act_range, relu):
        z, _ = _act_z(x, sigma, mu)
        n = levels(bits)
        if relu:
            u = half_normal_cdf(z)
            out = act_range * (torch.round(u * n) / n)
        else:
            out = act_range * _level(torch.round(normal_cdf(z) * n), bits)
        ctx.save_for_backward(x, sigma, mu)
        ctx.act_range, ctx.relu = act_range, relu
        return out.to(x.dtype)

    @staticmethod
    def backward(ctx, grad_out):
        x, sigma, mu = ctx.saved_tensors
        z, sigma_b = _act_z(x, sigma, mu)
        dx = grad_out.to(z.dtype) * (2.0 * ctx.act_range) * normal_pdf(z) / sigma_b
        if ctx.relu:
            dx = torch.where(z > 0, dx, torch.zeros_like(dx))
        return dx.to(x.dtype), None, None, None, None, None


def _climbq_act(x, sigma, mu, bits, act_range, relu: bool) -> Tensor:
    check_bits(bits)
    act_range = check_positive_float("act_range", act_range)
    _check_x("x", x, batched=True)
    if bits == IDENTITY_BITS:
        return torch.relu(x) if relu else x.clone()
    return _ClimbQAct.apply(x, sigma, mu, bits, act_range, relu)


def climbq_act(x: Tensor, sigma: Tensor, mu: Tensor, bits: int, act_range: float) -> Tensor:
    """ClimbQ activation fake quant, published form (algorithms.md §1a), for fusion.

        z = (x - mu_i) / sigma_i,  q = rint(Phi(z) * N),  out = A * (2q/N - 1)
        dx = dout * 2A * phi(z) / sigma_i          (straight-through on rint only)

    x: (B, ...) float32/float16/bfloat16/float64; sigma, mu: per-sample (B,) floating tables
    (the per-class tables gathered by label), sigma > 0 (not checked); A = act_range > 0;
    bits in [1, 16], or 32 for the identity (`x.clone()`). Returns x's shape and dtype.

    sigma and mu are batch statistics here and get no gradient (they are detached; the op
    `climbq_act_quant` differentiates caller-supplied tables, this does not). Same values as
    `reference.climbq_act_quant` / `climbq_act_quant_backward` (see the module docstring for
    half types). NaN stays NaN; +-inf give +-A (and dx = 0).
    """
    return _climbq_act(x, sigma, mu, bits, act_range, relu=False)


def climbq_act_relu(x: Tensor, sigma: Tensor, mu: Tensor, bits: int, act_range: float) -> Tensor:
    """ReLU-aware ClimbQ activation fake quant (algorithms.md §1f), for fusion.

        u = erf(max(z, 0) / sqrt 2),  out = A * rint(u * N) / N
        dx = dout * 2A * phi(z) / sigma_i where z > 0, else 0

    Arguments as `climbq_act`; bits == 32 returns relu(x). Same values as
    `reference.climbq_act_quant_relu` / `climbq_act_quant_relu_backward`; sigma, mu get no
    gradient. NaN stays NaN; +inf gives A, -inf gives 0.
    """
    return _climbq_act(x, sigma, mu, bits, act_range, relu=True)


# --- algorithms.md §1b: the ClimbQ weight quantizer -------------------------------------------------

def _weight_z(w: Tensor, mean: Tensor, std: Tensor, flat: Tensor) -> Tensor:
    """z = (w - mean) / std, and 0 where w has zero spread (`flat`): the kernels' convention,
    where the mean and std of the reference need not be exact (torch's float32 std of twelve
    copies of 0.1 is 1.6e-8, not 0). A non-finite w keeps its NaN."""
    z = (w.to(mean.dtype) - mean) / std
    return torch.where(flat, torch.zeros_like(z), z)


class _ClimbQWeight(torch.autograd.Function):
    @staticmethod
    def forward(ctx, w, bits):
        wc = w.to(_compute_dtype(w))
        mean = wc.mean()
        std = wc.std()
        high = wc.amax()
        flat = (high == wc.amin()) & high.isfinite()
        z = _weight_z(w, mean, std, flat)
        out = _level(torch.round(normal_cdf(z) * levels(bits)), bits)
        ctx.save_for_backward(w, mean, std, flat)
        return out.to(w.dtype)

    @staticmethod
    def backward(ctx, grad_out):
        w, mean, std, flat = ctx.saved_tensors
        z = _weight_z(w, mean, std, flat)
        n = w.numel()
        g_phi = grad_out.to(z.dtype) * normal_pdf(z)
        s1 = g_phi.sum()
        s2 = (g_phi * z).sum()
        two_over_std = torch.where(flat, torch.zeros_like(std), 2.0 / std)
        return ((g_phi - s1 / n - z * (s2 / (n - 1))) * two_over_std).to(w.dtype), None


def climbq_weight(w: Tensor, bits: int) -> Tensor:
    """ClimbQ weight fake quant (algorithms.md §1b), for fusion.

        mean, std = mean(w), std(w) (unbiased) over ALL of w;  z = (w - mean) / std
        Wq = 2 * rint(Phi(z) * N) / N - 1                               in [-1, 1]
        dw_i = (2 / std) * (g_i phi_i - S1 / n - z_i S2 / (n - 1)),  S1 = sum g phi, S2 = sum g phi z

    The statistics are per tensor and the gradient goes through them (the exact derivative of
    2 Phi(z) - 1 with rint passed straight through), as `reference.climbq_weight_quant_backward`.
    w: any shape with >= 2 elements, float32/float16/bfloat16/float64 (statistics and math in
    float32 for the half types, float64 for float64); bits in [1, 16] or 32 (`w.clone()`).
    Returns w's shape and dtype.

    Unlike the reference, values are not checked (that would read them on the host): a
    zero-spread w gives z = 0 (every code rint(N/2)) and a zero gradient, as the device kernels
    do; a non-finite w makes the whole output NaN (the reference refuses it).
    """
    check_bits(bits)
    _check_x("w", w, batched=False)
    if bits == IDENTITY_BITS:
        return w.clone()
    if w.numel() < 2:
        raise ValueError(f"w must have at least 2 elements (its unbiased std divides by n - 1), got {w.numel()}")
    return _ClimbQWeight.apply(w, bits)


# --- algorithms.md §1e: affine fake quant and LSQ ---------------------------------------------------

def _param(name: str, value, x: Tensor, axis: int | None, number_dtype: torch.dtype) -> Tensor:
    """A scale or zero point on x's device, viewed to broadcast against x: per tensor (axis None)
    a number or a one-element tensor, 0-d; per channel a (C,) tensor, C = x.shape[axis]."""
    if not isinstance(value, Tensor):
        if axis is not None or isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"{name} must be a tensor{'' if axis is not None else ' or a number'}, "
                            f"got {type(value).__name__}")
        # As reference.fake_quant._grid: a float scale is kept in float64 until cast to the compute
        # dtype; a float zero point is a C float in torch's fake quant, float32.
        dtype = torch.int64 if isinstance(value, int) else number_dtype
        return torch.tensor(value, dtype=dtype, device=x.device)
    value = value.detach().to(x.device)
    if axis is None:
        if value.numel() != 1:
            raise ValueError(f"{name} must be a number or a one-element tensor, got shape {tuple(value.shape)}")
        return value.reshape(())
    if value.shape != (x.shape[axis],):
        raise ValueError(f"{name} must have shape ({x.shape[axis]},) (one per channel along axis {axis}), "
                         f"got {tuple(value.shape)}")
    return value.reshape([-1 if d == axis else 1 for d in range(x.dim())])


def _axis(axis, x: Tensor) -> int | None:
    if axis is None:
        return None
    if isinstance(axis, bool) or not isinstance(axis, int) or not -x.dim() <= axis < x.dim():
        raise ValueError(f"axis must be an int in [{-x.dim()}, {x.dim()}) for x of shape {tuple(x.shape)}, "
                         f"got {axis!r}")
    return axis % x.dim()


def _pre_clamp(x: Tensor, scale: Tensor, zero_point: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(v, q, zp): v = x * (1/scale), the code q before clamping and the zero point, all in the
    compute dtype, by `reference.fake_quant._pre_clamp`'s arithmetic (torch's fake quant): the
    inverse is a division in the compute dtype, a floating zero point is added before rounding
    (float32: as one fused multiply-add, evaluated in float64), an integer one after."""
    dtype = _compute_dtype(x)
    scale_c = scale.to(dtype)
    zp = zero_point.to(dtype)
    x_c = x.to(dtype)
    v = x_c * (1.0 / scale_c)
    if not zero_point.is_floating_point():
        return v, torch.round(v) + zp, zp
    if dtype == torch.float32 and zero_point.dtype == torch.float32:
        fused = x_c.double() * (1.0 / scale_c).double() + zp.double()
        return v, torch.round(fused.to(dtype)) + 0.0, zp  # + 0: a zero code is +0, as torch's
    return v, torch.round(v + zp) + 0.0, zp


def _clamp_code(q: Tensor, quant_min: int, quant_max: int) -> Tensor:
    """fmin(fmax(q, qmin), qmax), C's fmax/fmin as torch's fake quant: a NaN code becomes qmin."""
    q = torch.where(q >= quant_min, q, torch.full_like(q, quant_min))
    return torch.where(q <= quant_max, q, torch.full_like(q, quant_max))


def _fake_quant_forward(x: Tensor, scale: Tensor, zero_point: Tensor, quant_min: int, quant_max: int,
                        per_channel: bool) -> Tensor:
    """(clamp(q) - zp) * scale, rounded to x's dtype.

    The reference forms the product in float32 per tensor and float64 per channel (as torch).
    With an integer zero point the float64 product of the integer code (|q| <= 2**24) and a
    float32 scale is exact, so rounding it to float32 equals the float32 product: float64 is
    used only for a per-channel floating zero point, where the difference can round twice.
    """
    _, q, zp = _pre_clamp(x, scale, zero_point)
    dtype = q.dtype
    codes = _clamp_code(q, quant_min, quant_max)
    if per_channel and zero_point.is_floating_point() and dtype == torch.float32:
        out = ((codes.double() - zp.double()) * scale.to(dtype).double()).to(dtype)
    else:
        out = (codes - zp) * scale.to(dtype)
    return out.to(x.dtype)


def _inside(q: Tensor, quant_min: int, quant_max: int) -> Tensor:
    return (q >= quant_min) & (q <= quant_max)


class _LSQ(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, step, zero_point, quant_min, quant_max, reduce_dims, numel_per_scale):
        ctx.save_for_backward(x, step, zero_point)
        ctx.args = (quant_min, quant_max, reduce_dims, numel_per_scale)
        # An integer zero point: the per-tensor and per-channel products agree (_fake_quant_forward).
        return _fake_quant_forward(x, step, zero_point, quant_min, quant_max, per_channel=False)

    @staticmethod
    def backward(ctx, grad_out):
        x, step, zero_point = ctx.saved_tensors
        quant_min, quant_max, reduce_dims, numel_per_scale = ctx.args
        v, q, zp = _pre_clamp(x, step, zero_point)
        below, above = q < quant_min, q > quant_max
        dx = grad_out * _inside(q, quant_min, quant_max)
        dstep = None
        if ctx.needs_input_grad[1]:
            # reference.fake_quant_affine_backward (scale_requires_grad=True), then cast to the
            # step's dtype as the op does.
            per_element = torch.where(below, quant_min - zp, torch.where(above, quant_max - zp, (q - zp) - v))
            t = grad_out.to(q.dtype) * per_element
            summed = t.sum(dim=reduce_dims) if reduce_dims else t
            g = 1.0 / math.sqrt(numel_per_scale * quant_max)
            dstep = (summed.reshape(step.shape) * g).to(step.dtype)
        return dx, dstep, None, None, None, None, None


class _Affine(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, scale, zero_point, quant_min, quant_max, per_channel):
        ctx.save_for_backward(x, scale, zero_point)
        ctx.args = (quant_min, quant_max)
        return _fake_quant_forward(x, scale, zero_point, quant_min, quant_max, per_channel)

    @staticmethod
    def backward(ctx, grad_out):
        x, scale, zero_point = ctx.saved_tensors
        quant_min, quant_max = ctx.args
        _, q, _ = _pre_clamp(x, scale, zero_point)
        return grad_out * _inside(q, quant_min, quant_max), None, None, None, None, None


def lsq(x: Tensor, step: Tensor, quant_min: int, quant_max: int, axis: int | None = None) -> Tensor:
    """LSQ fake quant with a learned step (algorithms.md §1e), zero point 0, for fusion.

        s = max(|step|, 1e-8)   (as `nn.quantizers._positive_step`, differentiated through)
        out = clamp(rint(x * (1/s)), qmin, qmax) * s
        dx = dout where qmin <= rint(x/s) <= qmax (straight-through), else 0 (and 0 for NaN)
        ds = g * sum dout * e,  e = rint(x/s) - x/s inside, qmin below, qmax above,
             g = 1 / sqrt(numel_per_scale * qmax)

    Per tensor (axis None; step 0-d or one element, the gradient shaped like it) or per channel
    along `axis` (step (C,), C = x.shape[axis], sums over every other dim). x: any shape,
    float32/float16/bfloat16/float64; step floating (the modules keep it float32). qmax >= 1.

    Bit for bit `ops.fake_quant_affine_eager(x, s, zeros, qmin, qmax, axis)` with s as above
    and its backward with scale_grad (torch's fake-quant arithmetic: 1/s in float32, x * (1/s),
    a NaN code clamped to qmin so NaN x gives qmin * s). For an empty x the step's gradient is
    0 (g counts at least one element; the reference refuses an empty x).
    """
    _check_x("x", x, batched=False)
    check_tensor("step", step, floating=True)
    check_code_range(quant_min, quant_max)
    if quant_max < 1:
        raise ValueError(f"quant_max must be >= 1 (LSQ's gradient scale divides by sqrt(quant_max)), got {quant_max}")
    axis = _axis(axis, x)
    if axis is None:
        if step.numel() != 1:
            raise ValueError(f"step must have one element per tensor (axis=None), got shape {tuple(step.shape)}")
        view, reduce_dims, numel_per_scale = [], tuple(range(x.dim())), x.numel()
    else:
        if step.shape != (x.shape[axis],):
            raise ValueError(f"step must have shape ({x.shape[axis]},) (one per channel along axis {axis}), "
                             f"got {tuple(step.shape)}")
        view = [-1 if d == axis else 1 for d in range(x.dim())]
        reduce_dims = tuple(d for d in range(x.dim()) if d != axis)
        numel_per_scale = x.numel() // torch.sym_max(x.shape[axis], 1)
    s = step.to(x.device).abs().clamp_min(1e-8)  # nn.quantizers._positive_step; 1e-8 is MIN_STEP
    zero_point = torch.zeros((), dtype=torch.int32, device=x.device)
    return _LSQ.apply(x, s.reshape(view), zero_point, quant_min, quant_max, reduce_dims,
                      torch.sym_max(numel_per_scale, 1))


def affine(x: Tensor, scale, zero_point, quant_min: int, quant_max: int, axis: int | None = None) -> Tensor:
    """Affine fake quant with PyTorch's semantics (algorithms.md §1e), for fusion.

        q = rint(x * (1/scale)) + zp (integer zp; a floating zp is added before rint)
        out = (clamp(q, qmin, qmax) - zp) * scale
        dx = dout where qmin <= q <= qmax (straight-through), else 0 (and 0 for NaN)

    Per tensor (axis None: scale, zero_point numbers or one-element tensors) or per channel
    along `axis` (scale, zero_point (C,)). No gradient to scale or zero point (they are
    detached: observer statistics). x: any shape, float32/float16/bfloat16/float64.

    Bit for bit `ops.fake_quant_affine_eager` / `reference.fake_quant_affine` (so torch's
    `fake_quantize_per_{tensor,channel}_affine` for the three kernel dtypes), including a NaN
    x giving (qmin - zp) * scale.
    """
    _check_x("x", x, batched=False)
    check_code_range(quant_min, quant_max)
    axis = _axis(axis, x)
    scale_t = _param("scale", scale, x, axis, torch.float64)
    if not scale_t.is_floating_point():
        scale_t = scale_t.to(torch.float64)
    zp_t = _param("zero_point", zero_point, x, axis, torch.float32)
    return _Affine.apply(x, scale_t, zp_t, quant_min, quant_max, axis is not None)
