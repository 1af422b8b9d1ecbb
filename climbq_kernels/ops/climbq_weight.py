"""ClimbQ weight quantizer ops (SPEC 1b)."""

from __future__ import annotations

import torch
from torch import Tensor

from .. import reference
from ._dispatch import register_kernels, run

register_kernels({
    "climbq_weight_quant": {"reference": reference.climbq_weight_quant},
    "climbq_weight_quant_backward": {"reference": reference.climbq_weight_quant_backward},
})


@torch.library.custom_op("climbq::climbq_weight_quant", mutates_args=())
def climbq_weight_quant(w: Tensor, bits: int) -> Tensor:
    """Wq = 2*rint(Phi((w - mean)/std)*N)/N - 1 over the whole tensor."""
    return run("climbq_weight_quant", w, w, bits)


@torch.library.custom_op("climbq::climbq_weight_quant_backward", mutates_args=())
def climbq_weight_quant_backward(grad_out: Tensor, w: Tensor, bits: int) -> Tensor:
    """dL/dw through the projection, the mean and the std (SPEC 1b)."""
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
    return climbq_weight_quant_backward(grad_out.contiguous(), w, ctx.bits), None


climbq_weight_quant.register_autograd(_climbq_weight_backward, setup_context=_climbq_weight_setup)
