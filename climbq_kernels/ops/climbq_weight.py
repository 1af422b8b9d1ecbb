"""ClimbQ weight quantizer ops (algorithms.md §1b).

Backends: the reference; the C++ CPU kernel (which rejects zero spread itself, from the
statistics it already has on the host); CUDA and Triton, whose statistics stay on the device.
For those two, `_check_weight_values` checks w first (finite, nonzero spread, as the reference)
with one extra read of w and a host sync, done only where `checks.can_sync` allows (eager mode,
not during CUDA graph capture); where it is skipped, a zero-spread w quantizes every element to
z = 0 (code rint(N/2)) and gets the gradient 0, never NaN.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .. import reference
from ..checks import can_sync
from ._dispatch import native, register_kernels, run, triton_launcher
from ._eager import custom_op, eager


def _check_weight_values(kernel: Callable) -> Callable:
    """`kernel(..., w, bits)` preceded by the reference's value checks (w finite, nonzero spread),
    for the backends whose statistics stay on the device: one host read for both."""
    def call(*args):
        w = args[-2]
        if w.numel() and can_sync(w):
            low, high = torch.aminmax(w)  # NaN reaches both
            finite, spread = torch.stack((torch.isfinite(low) & torch.isfinite(high), high > low)).tolist()
            if not finite:
                raise ValueError("w must be finite: found NaN or Inf")
            if not spread:
                raise ValueError("w must have nonzero spread: all its elements are equal, so std(w) = 0")
        return kernel(*args)
    return call


register_kernels({
    "climbq_weight_quant": {
        "reference": reference.climbq_weight_quant,
        "cpu": native("climbq_weight_quant_forward"),
        "cuda": _check_weight_values(native("climbq_weight_quant_forward")),
        "triton": _check_weight_values(triton_launcher("climbq_weight", "climbq_weight_quant_forward")),
    },
    "climbq_weight_quant_backward": {
        "reference": reference.climbq_weight_quant_backward,
        "cpu": native("climbq_weight_quant_backward"),
        "cuda": _check_weight_values(native("climbq_weight_quant_backward")),
        "triton": _check_weight_values(triton_launcher("climbq_weight", "climbq_weight_quant_backward")),
    },
})


@custom_op("climbq::climbq_weight_quant")
def climbq_weight_quant(w: Tensor, bits: int) -> Tensor:
    """Wq = 2*rint(Phi((w - mean)/std)*N)/N - 1 over the whole tensor."""
    return run("climbq_weight_quant", w, w, bits)


@custom_op("climbq::climbq_weight_quant_backward")
def climbq_weight_quant_backward(grad_out: Tensor, w: Tensor, bits: int) -> Tensor:
    """dL/dw through the projection, the mean and the std (algorithms.md §1b)."""
    return run("climbq_weight_quant_backward", w, grad_out, w, bits)


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
    return climbq_weight_quant_backward_eager(grad_out.contiguous(), w, ctx.bits), None


climbq_weight_quant_eager = eager(climbq_weight_quant, _climbq_weight_setup, _climbq_weight_backward)
climbq_weight_quant_backward_eager = eager(climbq_weight_quant_backward)
