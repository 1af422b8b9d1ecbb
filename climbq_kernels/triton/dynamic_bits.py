"""Per-sample bit-width fake quant in Triton (algorithms.md §3a, DynaDFQ): forward and backward, one pass each.

x (contiguous) is viewed as (B, inner); one program handles BLOCK elements of one sample, whose
bit-width b comes from an int32 (B,) table and whose clip from a one-element float32 tensor, both
read on the device (no host sync). Math in float32 (reference/dynamic_bits.py is the spec):

    L = 2**b - 1,  s = clip / L,  c = min(max(x, 0), clip)
    out = rint(c / s) * s
    dx = grad * [0 <= x <= clip]
    dclip partial = sum grad * ((rint(c/s) - c/s) / L inside, 1 above clip, 0 below 0)

The backward writes one partial per program; the launcher adds them in float64.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .. import reference
from ..testing import poison_like
from .fake_quant import BLOCK, _piece, block_for
from .math import cast_rne, round_half_even
from .registry import Example, KernelEntry, register


@triton.jit
def _sample_grid(bits_ptr, clip_ptr, row):
    """(clip, L, s) of sample `row`, float32."""
    levels = ((1 << tl.load(bits_ptr + row)) - 1).to(tl.float32)
    clip = tl.load(clip_ptr)
    return clip, levels, clip / levels


@triton.jit
def fake_quant_per_sample_bits_forward_kernel(x_ptr, bits_ptr, clip_ptr, out_ptr, inner, chunks_per_row,
                                              BLOCK: tl.constexpr):
    row, offs, mask = _piece(tl.program_id(0), inner, chunks_per_row, BLOCK)
    clip, _, step = _sample_grid(bits_ptr, clip_ptr, row)
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    clamped = tl.minimum(tl.maximum(x, 0.0, propagate_nan=tl.PropagateNan.ALL), clip,
                         propagate_nan=tl.PropagateNan.ALL)
    out = round_half_even(clamped / step) * step
    tl.store(out_ptr + offs, cast_rne(out, out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def fake_quant_per_sample_bits_backward_kernel(grad_ptr, x_ptr, bits_ptr, clip_ptr, dx_ptr, dclip_ptr, inner,
                                               chunks_per_row, BLOCK: tl.constexpr):
    piece = tl.program_id(0)
    row, offs, mask = _piece(piece, inner, chunks_per_row, BLOCK)
    clip, levels, step = _sample_grid(bits_ptr, clip_ptr, row)
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    grad = tl.load(grad_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    inside = (x >= 0.0) & (x <= clip)  # false for NaN
    tl.store(dx_ptr + offs, cast_rne(grad * inside.to(tl.float32), dx_ptr.dtype.element_ty), mask=mask)
    v = tl.minimum(tl.maximum(x, 0.0), clip) / step
    term = tl.where(inside, (round_half_even(v) - v) / levels, (x > clip).to(tl.float32))
    tl.store(dclip_ptr + piece, tl.sum(grad * term, axis=0))


def _launch_shape(x: torch.Tensor) -> tuple[int, int, int, int]:
    """(samples, inner, elements per program, programs per sample) of x (B, ...)."""
    inner = x.numel() // x.shape[0] if x.shape[0] else 0
    block = block_for(inner)
    return (x.shape[0] if inner else 0), inner, block, (triton.cdiv(inner, block) if inner else 0)


def _device_tables(bits: torch.Tensor, clip: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return bits.to(torch.int32).contiguous(), clip.to(torch.float32).reshape(1).contiguous()


def fake_quant_per_sample_bits_forward(x, bits, clip, *, out=None):
    """Fake quant of x (B, ...) with bits (B,) integer in [1, 16] and clip (one element); like x."""
    x = x.contiguous()
    out = torch.empty_like(x) if out is None else out
    samples, inner, block, chunks = _launch_shape(x)
    if samples:
        fake_quant_per_sample_bits_forward_kernel[(samples * chunks,)](x, *_device_tables(bits, clip), out, inner,
                                                                       chunks, BLOCK=block)
    return out


def fake_quant_per_sample_bits_backward(grad_out, x, bits, clip, *, out=None):
    """(dx like x, dclip float32 0-d) of `fake_quant_per_sample_bits_forward`."""
    x, grad_out = x.contiguous(), grad_out.contiguous()
    dx = torch.empty_like(x) if out is None else out
    samples, inner, block, chunks = _launch_shape(x)
    partials = torch.zeros(samples * chunks, device=x.device)
    if samples:
        fake_quant_per_sample_bits_backward_kernel[(samples * chunks,)](
            grad_out, x, *_device_tables(bits, clip), dx, partials, inner, chunks, BLOCK=block)
    return dx, partials.double().sum().float()


def _random_case(dtype: torch.dtype, gen: torch.Generator, device: str, shape=(5, 3, 29)):
    x = (torch.randn(shape, generator=gen) * 1.5 + 0.5).to(device, dtype)
    bits = torch.randint(1, 9, (shape[0],), generator=gen).to(device)
    clip = (torch.rand((), generator=gen) + 1.5).to(device)
    return x, bits, clip


def _forward_example(dtype: torch.dtype, gen: torch.Generator, device: str) -> Example:
    x, bits, clip = _random_case(dtype, gen, device)
    got = fake_quant_per_sample_bits_forward(x, bits, clip, out=poison_like(x))
    ref64 = reference.fake_quant_per_sample_bits(x.double(), bits, clip.double())
    ref_lowp = reference.fake_quant_per_sample_bits(x, bits, clip)
    return Example(got, ref64, ref_lowp, step=float(clip))


def _backward_example(dtype: torch.dtype, gen: torch.Generator, device: str) -> Example:
    x, bits, clip = _random_case(dtype, gen, device)
    grad = torch.randn(x.shape, generator=gen).to(device, dtype)
    got, _ = fake_quant_per_sample_bits_backward(grad, x, bits, clip, out=poison_like(x))
    ref64, _ = reference.fake_quant_per_sample_bits_backward(grad.double(), x.double(), bits, clip.double())
    ref_lowp, _ = reference.fake_quant_per_sample_bits_backward(grad, x, bits, clip)
    return Example(got, ref64, ref_lowp)


def _signature(pointer_names):
    def build(dtype: str) -> dict[str, str]:
        return {**{name: f"*{dtype}" for name in pointer_names}, "bits_ptr": "*i32", "clip_ptr": "*fp32",
                "dclip_ptr": "*fp32", "inner": "i64", "chunks_per_row": "i64", "BLOCK": "constexpr"}
    return build


register(KernelEntry(
    name="fake_quant_per_sample_bits_forward",
    kernel=fake_quant_per_sample_bits_forward_kernel,
    signature=_signature(("x_ptr", "out_ptr")),
    constexprs={"BLOCK": BLOCK},
    example=_forward_example,
))
register(KernelEntry(
    name="fake_quant_per_sample_bits_backward",
    kernel=fake_quant_per_sample_bits_backward_kernel,
    signature=_signature(("grad_ptr", "x_ptr", "dx_ptr")),
    constexprs={"BLOCK": BLOCK},
    example=_backward_example,
))
