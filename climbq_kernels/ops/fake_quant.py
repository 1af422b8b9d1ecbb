"""Affine fake quant ops with learnable (LSQ) scale and zero point (algorithms.md §1e)."""

from __future__ import annotations

import torch
from torch import Tensor

from .. import reference
from ._dispatch import native, register_kernels, run, triton_launcher
from ._eager import custom_op, eager

register_kernels({
    "fake_quant_affine": {
        "reference": reference.fake_quant_affine,
        "cpu": native("fake_quant_affine_forward"),
        "cuda": native("fake_quant_affine_forward"),
        "triton": triton_launcher("fake_quant", "fake_quant_affine_forward"),
    },
    "fake_quant_affine_backward": {
        "reference": reference.fake_quant_affine_backward,
        "cpu": native("fake_quant_affine_backward"),
        "cuda": native("fake_quant_affine_backward"),
        "triton": triton_launcher("fake_quant", "fake_quant_affine_backward"),
    },
})


@custom_op("climbq::fake_quant_affine")
def fake_quant_affine(x: Tensor, scale: Tensor, zero_point: Tensor, quant_min: int, quant_max: int,
                      axis: int | None) -> Tensor:
    """(clamp(rint(x/scale) + zp, qmin, qmax) - zp) * scale, bit-identical to torch's fake quant."""
    return run("fake_quant_affine", x, x, scale, zero_point, quant_min, quant_max, axis)


@custom_op("climbq::fake_quant_affine_backward")
def fake_quant_affine_backward(grad_out: Tensor, x: Tensor, scale: Tensor, zero_point: Tensor,
                               quant_min: int, quant_max: int, axis: int | None, scale_grad: bool,
                               zero_point_grad: bool) -> tuple[Tensor, Tensor, Tensor]:
    """(dx, dscale, dzero_point); the last two are zeros unless requested (LSQ gradients)."""
    dx, dscale, dzp = run("fake_quant_affine_backward", x, grad_out, x, scale, zero_point, quant_min,
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
    dx, dscale, dzp = fake_quant_affine_backward_eager(grad_out.contiguous(), x, scale, zero_point, *ctx.args,
                                                 scale_grad, zp_grad)
    return dx, dscale if scale_grad else None, dzp if zp_grad else None, None, None, None


fake_quant_affine_eager = eager(fake_quant_affine, _fake_quant_setup, _fake_quant_backward)
fake_quant_affine_backward_eager = eager(fake_quant_affine_backward)
