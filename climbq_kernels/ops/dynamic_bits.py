"""Per-sample bit-width fake quant ops (algorithms.md §3a, DynaDFQ)."""

from __future__ import annotations

import torch
from torch import Tensor

from .. import reference
from ._dispatch import native, register_kernels, run, triton_launcher
from ._eager import custom_op, eager

register_kernels({
    "fake_quant_per_sample_bits": {
        "reference": reference.fake_quant_per_sample_bits,
        "cpu": native("fake_quant_per_sample_bits_forward"),
        "cuda": native("fake_quant_per_sample_bits_forward"),
        "triton": triton_launcher("dynamic_bits", "fake_quant_per_sample_bits_forward"),
    },
    "fake_quant_per_sample_bits_backward": {
        "reference": reference.fake_quant_per_sample_bits_backward,
        "cpu": native("fake_quant_per_sample_bits_backward"),
        "cuda": native("fake_quant_per_sample_bits_backward"),
        "triton": triton_launcher("dynamic_bits", "fake_quant_per_sample_bits_backward"),
    },
})


@custom_op("climbq::fake_quant_per_sample_bits")
def fake_quant_per_sample_bits(x: Tensor, bits: Tensor, clip: Tensor) -> Tensor:
    """rint(clamp(x, 0, clip) / s_i) * s_i with s_i = clip / (2**bits_i - 1); bits (B,), clip 0-d."""
    return run("fake_quant_per_sample_bits", x, x, bits, clip)


@custom_op("climbq::fake_quant_per_sample_bits_backward")
def fake_quant_per_sample_bits_backward(grad_out: Tensor, x: Tensor, bits: Tensor,
                                        clip: Tensor) -> tuple[Tensor, Tensor]:
    """(dx, dclip): straight-through on rint; dclip shaped and typed like clip."""
    dx, dclip = run("fake_quant_per_sample_bits_backward", x, grad_out, x, bits, clip)
    return dx, dclip.reshape(clip.shape).to(clip.dtype)


@fake_quant_per_sample_bits.register_fake
def _(x, bits, clip):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


@fake_quant_per_sample_bits_backward.register_fake
def _(grad_out, x, bits, clip):
    return torch.empty_like(x, memory_format=torch.contiguous_format), torch.empty_like(clip)


def _setup(ctx, inputs, output):
    x, bits, clip = inputs
    ctx.save_for_backward(x, bits, clip)


def _backward(ctx, grad_out):
    x, bits, clip = ctx.saved_tensors
    dx, dclip = fake_quant_per_sample_bits_backward_eager(grad_out.contiguous(), x, bits, clip)
    return dx, None, dclip if ctx.needs_input_grad[2] else None


fake_quant_per_sample_bits_eager = eager(fake_quant_per_sample_bits, _setup, _backward)
fake_quant_per_sample_bits_backward_eager = eager(fake_quant_per_sample_bits_backward)
