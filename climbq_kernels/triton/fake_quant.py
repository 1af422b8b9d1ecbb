"""Affine fake quant with LSQ gradients in Triton (algorithms.md §1e): forward and backward, one pass each.

x (contiguous) is viewed as rows of `inner` elements; row r uses channel r % channels of
the float32 tables (per tensor: one row; per channel along `axis`: rows = prod(shape[:axis+1])).
One program handles BLOCK elements of one row, so a channel's constants are scalars. Math in
float32 as torch's CPU kernel does it (reference/fake_quant.py), which is what makes the
forward bit-identical:

    v = x * inv_scale,  q = rint(v) + zp | rint(fma(x, inv_scale, zp)) | rint(v + zp)
    out = (fmin(fmax(q, qmin), qmax) - zp) * scale   (float64 product per channel when needed)
    dx = grad * [qmin <= q <= qmax]
    dscale partial = sum grad * (qmin - zp | qmax - zp | (q - zp) - v),  dzp partial = sum grad * (-scale | 0)

inv_scale = 1.0 / scale is computed by torch (a correctly rounded float32 division) and the
kernels are launched with fp fusion off, so that no multiply-add is contracted behind our
back. The backward writes one partial sum per program; `_reduce` adds them per channel in
float64 in a fixed order and applies the LSQ gradient scale.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .. import reference
from ..reference.fake_quant import _MAX_CODE
from ..testing import poison_like
from .math import cast_rne, round_half_even
from .registry import Example, KernelEntry, register

BLOCK = 1024
"""Largest elements per program; a row shorter than that gets the next power of two (`block_for`)."""
ZP_INTEGER, ZP_FUSED_FLOAT, ZP_FLOAT = 0, 1, 2
"""How the zero point enters the code (reference `_pre_clamp`): added after rint (integer zp),
fused into one FMA (float32 zp), added before rint (other floating zp)."""


@triton.jit
def _code(x, inv_scale, zp, ZP_MODE: tl.constexpr):
    v = x * inv_scale
    if ZP_MODE == 0:
        q = round_half_even(v) + zp
    elif ZP_MODE == 1:
        q = round_half_even(tl.fma(x, inv_scale, zp)) + 0.0  # + 0: a zero code is +0, as torch's
    else:
        q = round_half_even(v + zp) + 0.0
    return v, q


@triton.jit
def _piece(piece, inner, chunks_per_row, BLOCK: tl.constexpr):
    """(row, flat offsets, mask) of program `piece`: BLOCK elements of one row."""
    row = piece // chunks_per_row
    cols = (piece % chunks_per_row) * BLOCK + tl.arange(0, BLOCK)
    return row, row.to(tl.int64) * inner + cols, cols < inner


@triton.jit
def fake_quant_affine_forward_kernel(x_ptr, scale_ptr, inv_scale_ptr, zp_ptr, out_ptr, inner, channels,
                                     chunks_per_row, quant_min, quant_max, ZP_MODE: tl.constexpr,
                                     DOUBLE_PRODUCT: tl.constexpr, BLOCK: tl.constexpr):
    row, offs, mask = _piece(tl.program_id(0), inner, chunks_per_row, BLOCK)
    channel = row % channels
    scale = tl.load(scale_ptr + channel)
    zp = tl.load(zp_ptr + channel)
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    _, q = _code(x, tl.load(inv_scale_ptr + channel), zp, ZP_MODE)
    low = tl.where(q >= quant_min, q, quant_min)  # fmax: a NaN code becomes quant_min
    clamped = tl.where(low <= quant_max, low, quant_max)
    if DOUBLE_PRODUCT:
        out = ((clamped.to(tl.float64) - zp.to(tl.float64)) * scale.to(tl.float64)).to(tl.float32)
    else:
        out = (clamped - zp) * scale
    tl.store(out_ptr + offs, cast_rne(out, out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def fake_quant_affine_backward_kernel(grad_ptr, x_ptr, scale_ptr, inv_scale_ptr, zp_ptr, dx_ptr, dscale_ptr,
                                      dzp_ptr, inner, channels, chunks_per_row, quant_min, quant_max,
                                      ZP_MODE: tl.constexpr, SCALE_GRAD: tl.constexpr, ZP_GRAD: tl.constexpr,
                                      BLOCK: tl.constexpr):
    piece = tl.program_id(0)
    row, offs, mask = _piece(piece, inner, chunks_per_row, BLOCK)
    channel = row % channels
    scale = tl.load(scale_ptr + channel)
    zp = tl.load(zp_ptr + channel)
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    grad = tl.load(grad_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    v, q = _code(x, tl.load(inv_scale_ptr + channel), zp, ZP_MODE)
    below = q < quant_min
    above = q > quant_max
    inside = (q >= quant_min) & (q <= quant_max)  # false for a NaN code
    tl.store(dx_ptr + offs, cast_rne(grad * inside.to(tl.float32), dx_ptr.dtype.element_ty), mask=mask)
    if SCALE_GRAD:
        term = tl.where(below, quant_min - zp, tl.where(above, quant_max - zp, (q - zp) - v))
        tl.store(dscale_ptr + piece, tl.sum(grad * term, axis=0))
    if ZP_GRAD:
        tl.store(dzp_ptr + piece, tl.sum(grad * tl.where(inside, 0.0, -scale), axis=0))


def block_for(inner: int) -> int:
    """Elements per program for rows of `inner`: one program never spans two rows, so short rows
    (per channel along a late axis) get short programs instead of mostly masked ones."""
    return max(16, min(BLOCK, triton.next_power_of_2(max(inner, 1))))


def _layout(x: torch.Tensor, axis: int | None) -> tuple[int, int, int]:
    """(rows, channels, inner) of contiguous x for per-tensor (axis None) or per-channel quant."""
    if axis is None:
        return (1 if x.numel() else 0), 1, x.numel()
    axis %= x.dim()
    inner = x[(0,) * (axis + 1)].numel() if x.numel() else 0
    return (x.numel() // inner if inner else 0), x.shape[axis], inner


def _tables(scale, zero_point, quant_min: int, quant_max: int, per_channel: bool):
    """float32 scale, inv_scale, zp (flat), the zero-point mode and the product precision."""
    scale = scale.to(torch.float32).reshape(-1).contiguous()
    if zero_point.is_floating_point():
        mode = ZP_FUSED_FLOAT if zero_point.dtype == torch.float32 else ZP_FLOAT
    else:
        mode = ZP_INTEGER
    # Per channel torch multiplies in float64; with an integer zp and a range of at most 2**24
    # codes that product is exact, so float32 gives the same bits (see csrc/fake_quant.h).
    double_product = per_channel and (mode != ZP_INTEGER or quant_max - quant_min > _MAX_CODE)
    return scale, 1.0 / scale, zero_point.to(torch.float32).reshape(-1).contiguous(), mode, double_product


def fake_quant_affine_forward(x, scale, zero_point, quant_min: int, quant_max: int, axis: int | None, *,
                              out=None):
    """Affine fake quant of x (any shape) per tensor or per channel; returns a tensor like x."""
    x = x.contiguous()
    out = torch.empty_like(x) if out is None else out
    rows, channels, inner = _layout(x, axis)
    if rows:
        scale_f, inv_scale, zp, mode, double_product = _tables(scale, zero_point, quant_min, quant_max,
                                                                axis is not None)
        block = block_for(inner)
        chunks = triton.cdiv(inner, block)
        fake_quant_affine_forward_kernel[(rows * chunks,)](
            x, scale_f, inv_scale, zp, out, inner, channels, chunks, float(quant_min), float(quant_max),
            ZP_MODE=mode, DOUBLE_PRODUCT=double_product, BLOCK=block, enable_fp_fusion=False)
    return out


def fake_quant_affine_backward(grad_out, x, scale, zero_point, quant_min: int, quant_max: int, axis: int | None,
                               scale_grad: bool, zero_point_grad: bool, *, out=None):
    """(dx, dscale, dzero_point) of `fake_quant_affine_forward`; the last two are float32 of
    shape (channels,), or None unless requested (LSQ gradient scale applied)."""
    x, grad_out = x.contiguous(), grad_out.contiguous()
    if zero_point_grad and not zero_point.is_floating_point():
        raise ValueError("zero_point must be floating to receive a gradient (a learned zero point)")
    dx = torch.empty_like(x) if out is None else out
    rows, channels, inner = _layout(x, axis)
    block = block_for(inner)
    chunks = triton.cdiv(inner, block) if inner else 0
    partials = [torch.zeros(rows * chunks, device=x.device) if wanted else None
                for wanted in (scale_grad, zero_point_grad)]
    if rows:
        scale_f, inv_scale, zp, mode, _ = _tables(scale, zero_point, quant_min, quant_max, axis is not None)
        unused = torch.empty(1, device=x.device)
        fake_quant_affine_backward_kernel[(rows * chunks,)](
            grad_out, x, scale_f, inv_scale, zp, dx, partials[0] if scale_grad else unused,
            partials[1] if zero_point_grad else unused, inner, channels, chunks, float(quant_min),
            float(quant_max), ZP_MODE=mode, SCALE_GRAD=scale_grad, ZP_GRAD=zero_point_grad, BLOCK=block,
            enable_fp_fusion=False)
    numel_per_scale = x.numel() // channels if channels else 0
    grad_scale = reference.lsq_grad_scale(numel_per_scale, quant_max) if numel_per_scale and any(
        p is not None for p in partials) else 0.0
    dscale, dzp = (None if p is None else _reduce(p, rows, channels, chunks, grad_scale) for p in partials)
    return dx, dscale, dzp


def _reduce(partials: torch.Tensor, rows: int, channels: int, chunks: int, grad_scale: float) -> torch.Tensor:
    """Per-channel sums of the per-program partials (row-major: (outer, channels, chunks))."""
    if not rows:
        return torch.zeros(channels, device=partials.device)
    per_channel = partials.view(rows // channels, channels, chunks).double().sum(dim=(0, 2))
    return (per_channel * grad_scale).float()


def _random_case(dtype: torch.dtype, gen: torch.Generator, device: str, shape=(3, 6, 37)):
    x = (torch.randn(shape, generator=gen) * 2.0).to(device, dtype)
    scale = (torch.rand(shape[1], generator=gen) * 0.2 + 0.05).to(device)
    zero_point = torch.randint(-3, 4, (shape[1],), generator=gen).to(device, torch.float32)
    return x, scale, zero_point


def _forward_example(dtype: torch.dtype, gen: torch.Generator, device: str) -> Example:
    x, scale, zero_point = _random_case(dtype, gen, device)
    got = fake_quant_affine_forward(x, scale, zero_point, -8, 7, 1, out=poison_like(x))
    ref64 = reference.fake_quant_affine(x.double(), scale.double(), zero_point.double(), -8, 7, axis=1)
    ref_lowp = reference.fake_quant_affine(x, scale, zero_point, -8, 7, axis=1)
    return Example(got, ref64, ref_lowp, step=float(scale.max()))


def _backward_example(dtype: torch.dtype, gen: torch.Generator, device: str) -> Example:
    x, scale, zero_point = _random_case(dtype, gen, device)
    grad = torch.randn(x.shape, generator=gen).to(device, dtype)
    got, _, _ = fake_quant_affine_backward(grad, x, scale, zero_point, -8, 7, 1, True, True, out=poison_like(x))
    ref64, _, _ = reference.fake_quant_affine_backward(grad.double(), x.double(), scale.double(),
                                                       zero_point.double(), -8, 7, axis=1)
    ref_lowp, _, _ = reference.fake_quant_affine_backward(grad, x, scale, zero_point, -8, 7, axis=1)
    return Example(got, ref64, ref_lowp)


def _signature(pointer_names, scalars):
    def build(dtype: str) -> dict[str, str]:
        tables = {name: "*fp32" for name in ("scale_ptr", "inv_scale_ptr", "zp_ptr", "dscale_ptr", "dzp_ptr")}
        return {**{name: f"*{dtype}" for name in pointer_names}, **tables,
                "inner": "i64", "channels": "i64", "chunks_per_row": "i64", "quant_min": "fp32",
                "quant_max": "fp32", **scalars}
    return build


register(KernelEntry(
    name="fake_quant_affine_forward",
    kernel=fake_quant_affine_forward_kernel,
    signature=_signature(("x_ptr", "out_ptr"), {"ZP_MODE": "constexpr", "DOUBLE_PRODUCT": "constexpr",
                                                "BLOCK": "constexpr"}),
    constexprs={"ZP_MODE": ZP_FUSED_FLOAT, "DOUBLE_PRODUCT": True, "BLOCK": BLOCK},
    example=_forward_example,
))
register(KernelEntry(
    name="fake_quant_affine_backward",
    kernel=fake_quant_affine_backward_kernel,
    signature=_signature(("grad_ptr", "x_ptr", "dx_ptr"), {"ZP_MODE": "constexpr", "SCALE_GRAD": "constexpr",
                                                           "ZP_GRAD": "constexpr", "BLOCK": "constexpr"}),
    constexprs={"ZP_MODE": ZP_FUSED_FLOAT, "SCALE_GRAD": True, "ZP_GRAD": True, "BLOCK": BLOCK},
    example=_backward_example,
))
