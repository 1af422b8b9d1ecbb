"""ClimbQ weight quantizer in Triton (algorithms.md §1b): one reduction and one elementwise pass forward;
the statistics reduction again, the (S1, S2) reduction and one elementwise pass backward.

Every pass splits w into the same at most MAX_PARTIALS chunks, one program each. Reductions:
w is shifted by its first element (d = w - w[0]) and each program adds sum d and sum d^2 over
its chunk in float64, writing one partial pair; every program of the next pass adds the
partials itself in one fixed order (one read of them per chunk), so mean and std never leave
the device and no launch waits on the host. With n = w.numel(), N = 2^bits - 1:

    mean = w[0] + sum d / n,   s = sqrt((sum d^2 - (sum d)^2 / n) / (n - 1))
    z = (w - mean) / s,   Wq = (2 rint(Phi(z) N) - N) / N
    S1 = sum g phi(z),  S2 = sum g phi(z) z,   dw = (2/s)(g phi(z) - S1/n - z S2/(n-1))

Elementwise math in float32 whatever w's dtype. Zero spread (s = 0) gives z = 0 instead of
NaN; the ops layer rejects such w before launching (ops/climbq_weight.py).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .. import reference
from ..constants import levels
from ..reference._normal import normal_pdf as reference_normal_pdf
from ..testing import poison_like
from .math import INV_SQRT_2PI, cast_rne, normal_cdf, round_half_even
from .registry import Example, KernelEntry, register

BLOCK = 1024
MAX_PARTIALS = 512
"""Most partial sums a reduction writes; every program of the following pass reads them all."""


@triton.jit
def _partial_sums_store(partials_ptr, acc_a, acc_b):
    pid = tl.program_id(0)
    tl.store(partials_ptr + 2 * pid, tl.sum(acc_a, axis=0))
    tl.store(partials_ptr + 2 * pid + 1, tl.sum(acc_b, axis=0))


@triton.jit
def _total(partials_ptr, num_partials, PARTIALS: tl.constexpr):
    """(sum of the a's, sum of the b's) of `num_partials` float64 partial pairs."""
    j = tl.arange(0, PARTIALS)
    mask = j < num_partials
    a = tl.sum(tl.load(partials_ptr + 2 * j, mask=mask, other=0.0), axis=0)
    b = tl.sum(tl.load(partials_ptr + 2 * j + 1, mask=mask, other=0.0), axis=0)
    return a, b


@triton.jit
def _standardize(w_ptr, partials_ptr, num_partials, numel, PARTIALS: tl.constexpr):
    """(mean as float32, 1/s as float32 and as float64; 1/s = 0 for zero spread)."""
    sum_d, sum_d2 = _total(partials_ptr, num_partials, PARTIALS)
    n = numel.to(tl.float64)
    mean_d = sum_d / n
    var = tl.maximum(sum_d2 - sum_d * mean_d, 0.0) / (n - 1.0)
    std = tl.sqrt(var)
    inv_std = tl.where(std > 0, 1.0 / tl.where(std > 0, std, 1.0), 0.0)
    shift = tl.load(w_ptr).to(tl.float32).to(tl.float64)
    return (shift + mean_d).to(tl.float32), inv_std.to(tl.float32), inv_std


@triton.jit
def weight_stats_kernel(w_ptr, partials_ptr, numel, chunk, BLOCK: tl.constexpr):
    """Partial (sum d, sum d^2), d = w - w[0], over elements [pid * chunk, (pid + 1) * chunk)."""
    start = tl.program_id(0).to(tl.int64) * chunk
    shift = tl.load(w_ptr).to(tl.float32)
    acc_a = tl.zeros([BLOCK], dtype=tl.float64)
    acc_b = tl.zeros([BLOCK], dtype=tl.float64)
    for off in range(0, chunk, BLOCK):
        offs = start + off + tl.arange(0, BLOCK)
        mask = offs < numel
        w = tl.load(w_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        d = tl.where(mask, w - shift, 0.0).to(tl.float64)
        acc_a += d
        acc_b += d * d
    _partial_sums_store(partials_ptr, acc_a, acc_b)


@triton.jit
def weight_forward_kernel(w_ptr, out_ptr, stat_partials_ptr, num_partials, numel, chunk, num_levels,
                          BLOCK: tl.constexpr, PARTIALS: tl.constexpr):
    """Wq over this program's chunk (one chunk per partial: the partials are read once per chunk)."""
    mean, inv_std, _ = _standardize(w_ptr, stat_partials_ptr, num_partials, numel, PARTIALS)
    start = tl.program_id(0).to(tl.int64) * chunk
    for off in range(0, chunk, BLOCK):
        offs = start + off + tl.arange(0, BLOCK)
        mask = offs < numel
        w = tl.load(w_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        code = round_half_even(normal_cdf((w - mean) * inv_std) * num_levels)
        out = (code * 2.0 - num_levels) * (1.0 / num_levels)  # exactly -1 and 1 at the end codes
        tl.store(out_ptr + offs, cast_rne(out, out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def weight_grad_sums_kernel(grad_ptr, w_ptr, stat_partials_ptr, grad_partials_ptr, num_partials, numel,
                            chunk, BLOCK: tl.constexpr, PARTIALS: tl.constexpr):
    """Partial (sum g phi(z), sum g phi(z) z) over this program's chunk."""
    mean, inv_std, _ = _standardize(w_ptr, stat_partials_ptr, num_partials, numel, PARTIALS)
    start = tl.program_id(0).to(tl.int64) * chunk
    acc_a = tl.zeros([BLOCK], dtype=tl.float64)
    acc_b = tl.zeros([BLOCK], dtype=tl.float64)
    for off in range(0, chunk, BLOCK):
        offs = start + off + tl.arange(0, BLOCK)
        mask = offs < numel
        w = tl.load(w_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        g = tl.load(grad_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        z = (w - mean) * inv_std
        g_phi = g * INV_SQRT_2PI * tl.exp(-0.5 * z * z)  # masked lanes: g = 0
        acc_a += g_phi.to(tl.float64)
        acc_b += (g_phi * z).to(tl.float64)
    _partial_sums_store(grad_partials_ptr, acc_a, acc_b)


@triton.jit
def weight_backward_kernel(grad_ptr, w_ptr, dw_ptr, stat_partials_ptr, grad_partials_ptr, num_partials, numel,
                           chunk, BLOCK: tl.constexpr, PARTIALS: tl.constexpr):
    mean, inv_std_f32, inv_std = _standardize(w_ptr, stat_partials_ptr, num_partials, numel, PARTIALS)
    s1, s2 = _total(grad_partials_ptr, num_partials, PARTIALS)
    n = numel.to(tl.float64)
    g_scale = (2.0 * inv_std * INV_SQRT_2PI).to(tl.float32)
    offset = (-2.0 * inv_std * s1 / n).to(tl.float32)
    z_scale = (-2.0 * inv_std * s2 / (n - 1.0)).to(tl.float32)
    start = tl.program_id(0).to(tl.int64) * chunk
    for off in range(0, chunk, BLOCK):
        offs = start + off + tl.arange(0, BLOCK)
        mask = offs < numel
        w = tl.load(w_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        g = tl.load(grad_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        z = (w - mean) * inv_std_f32
        dw = g_scale * g * tl.exp(-0.5 * z * z) + offset + z_scale * z
        tl.store(dw_ptr + offs, cast_rne(dw, dw_ptr.dtype.element_ty), mask=mask)


# --- launchers ------------------------------------------------------------------------------

def _chunking(numel: int) -> tuple[int, int]:
    """(programs, chunk): at most MAX_PARTIALS programs, chunks a multiple of BLOCK."""
    blocks = triton.cdiv(numel, BLOCK)
    programs = min(MAX_PARTIALS, blocks)
    return programs, triton.cdiv(blocks, programs) * BLOCK


def weight_stats(w: torch.Tensor) -> torch.Tensor:
    """Float64 partial (sum d, sum d^2) pairs of contiguous w, shape (programs, 2)."""
    programs, chunk = _chunking(w.numel())
    partials = torch.empty(programs, 2, dtype=torch.float64, device=w.device)
    weight_stats_kernel[(programs,)](w, partials, w.numel(), chunk, BLOCK=BLOCK)
    return partials


def weight_grad_sums(grad_out: torch.Tensor, w: torch.Tensor, stat_partials: torch.Tensor) -> torch.Tensor:
    """Float64 partial (S1, S2) pairs, shape (programs, 2)."""
    programs, chunk = _chunking(w.numel())
    partials = torch.empty_like(stat_partials)
    weight_grad_sums_kernel[(programs,)](grad_out, w, stat_partials, partials, programs, w.numel(), chunk,
                                         BLOCK=BLOCK, PARTIALS=MAX_PARTIALS)
    return partials


def climbq_weight_quant_forward(w, bits: int, *, out=None):
    """Wq of w (any shape, >= 2 elements, nonzero spread); returns a contiguous tensor like w."""
    w = w.contiguous()
    out = torch.empty_like(w) if out is None else out
    stat_partials = weight_stats(w)
    programs, chunk = _chunking(w.numel())
    weight_forward_kernel[(programs,)](w, out, stat_partials, programs, w.numel(), chunk, float(levels(bits)),
                                       BLOCK=BLOCK, PARTIALS=MAX_PARTIALS)
    return out


def climbq_weight_quant_backward(grad_out, w, bits: int, *, out=None):
    """dL/dw through Phi, the mean and the std; `bits` does not enter (straight-through rint)."""
    w, grad_out = w.contiguous(), grad_out.contiguous()
    out = torch.empty_like(w) if out is None else out
    stat_partials = weight_stats(w)
    grad_partials = weight_grad_sums(grad_out, w, stat_partials)
    programs, chunk = _chunking(w.numel())
    weight_backward_kernel[(programs,)](grad_out, w, out, stat_partials, grad_partials, programs, w.numel(), chunk,
                                        BLOCK=BLOCK, PARTIALS=MAX_PARTIALS)
    return out


# --- registry: examples checked against the reference ------------------------------------------

def _random_weight(dtype: torch.dtype, gen: torch.Generator, device: str, shape=(7, 5, 3, 3)):
    return (torch.randn(shape, generator=gen) * 0.05 + 0.01).to(device, dtype)


def _mean_std(w: torch.Tensor) -> torch.Tensor:
    return torch.stack([w.mean(), w.std()])


def _stats_example(dtype, gen, device) -> Example:
    w = _random_weight(dtype, gen, device)
    sum_d, sum_d2 = weight_stats(w).sum(dim=0)
    n = w.numel()
    mean_d = sum_d / n
    got = torch.stack([w.reshape(-1)[0].double() + mean_d, ((sum_d2 - sum_d * mean_d) / (n - 1)).sqrt()])
    return Example(got, _mean_std(w.double()), _mean_std(w).double())


def _grad_sums(grad: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    _, z, _, _ = reference.climbq_weight_project(w)
    g_phi = grad * reference_normal_pdf(z)
    return torch.stack([g_phi.sum(), (g_phi * z).sum()])


def _grad_sums_example(dtype, gen, device) -> Example:
    w = _random_weight(dtype, gen, device)
    grad = torch.randn(w.shape, generator=gen).to(device, dtype)
    got = weight_grad_sums(grad, w, weight_stats(w)).sum(dim=0)
    return Example(got, _grad_sums(grad.double(), w.double()), _grad_sums(grad, w).double())


def _forward_example(dtype, gen, device, bits: int = 4) -> Example:
    w = _random_weight(dtype, gen, device)
    got = climbq_weight_quant_forward(w, bits, out=poison_like(w))
    return Example(got, reference.climbq_weight_quant(w.double(), bits), reference.climbq_weight_quant(w, bits),
                   step=2.0 / levels(bits))


def _backward_example(dtype, gen, device, bits: int = 4) -> Example:
    w = _random_weight(dtype, gen, device)
    grad = torch.randn(w.shape, generator=gen).to(device, dtype)
    got = climbq_weight_quant_backward(grad, w, bits, out=poison_like(w))
    return Example(got, reference.climbq_weight_quant_backward(grad.double(), w.double(), bits),
                   reference.climbq_weight_quant_backward(grad, w, bits))


def _signature(pointer_names, partial_names, scalars):
    def build(dtype: str) -> dict[str, str]:
        return {**{name: f"*{dtype}" for name in pointer_names}, **{name: "*fp64" for name in partial_names},
                **scalars, "BLOCK": "constexpr", "PARTIALS": "constexpr"}
    return build


_CONSTEXPRS = {"BLOCK": BLOCK, "PARTIALS": MAX_PARTIALS}
register(KernelEntry(
    name="climbq_weight_stats",
    kernel=weight_stats_kernel,
    signature=_signature(("w_ptr",), ("partials_ptr",), {"numel": "i64", "chunk": "i64"}),
    constexprs={"BLOCK": BLOCK},
    example=_stats_example,
))
register(KernelEntry(
    name="climbq_weight_forward",
    kernel=weight_forward_kernel,
    signature=_signature(("w_ptr", "out_ptr"), ("stat_partials_ptr",),
                         {"num_partials": "i32", "numel": "i64", "chunk": "i64", "num_levels": "fp32"}),
    constexprs=_CONSTEXPRS,
    example=_forward_example,
))
register(KernelEntry(
    name="climbq_weight_grad_sums",
    kernel=weight_grad_sums_kernel,
    signature=_signature(("grad_ptr", "w_ptr"), ("stat_partials_ptr", "grad_partials_ptr"),
                         {"num_partials": "i32", "numel": "i64", "chunk": "i64"}),
    constexprs=_CONSTEXPRS,
    example=_grad_sums_example,
))
register(KernelEntry(
    name="climbq_weight_backward",
    kernel=weight_backward_kernel,
    signature=_signature(("grad_ptr", "w_ptr", "dw_ptr"), ("stat_partials_ptr", "grad_partials_ptr"),
                         {"num_partials": "i32", "numel": "i64", "chunk": "i64"}),
    constexprs=_CONSTEXPRS,
    example=_backward_example,
))
