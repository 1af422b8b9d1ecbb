"""The fused ClimbQ activation quantizer (algorithms.md §1a placement): folded BN, quantizer, ReLU.

ClimbQ sits after a BatchNorm and before the ReLU. At inference (and with frozen statistics in
training) the BatchNorm is a per-channel affine y = x * bn_scale[c] + bn_shift[c] over
channel dim 1 of x (B, C, ...). These functions compose the existing reference functions:

    y = folded_bn(x, bn_scale, bn_shift)            (y = x without tables)
    out = climbq_act_quant(y, sigma, mu, bits, A)   (or climbq_act_quant_inference(y, ...))
    out = max(out, 0)                               (when relu)

All in x's dtype (float64: the oracle), never mutating the inputs.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..checks import check_same_device, check_tensor
from ..constants import DEFAULT_INFERENCE_SIGMA, levels
from .climbq import climbq_act_quant, climbq_act_quant_backward, climbq_act_quant_inference


def _channel_table(name: str, table: Tensor, x: Tensor) -> Tensor:
    """A (C,) per-channel table in x's dtype viewed to broadcast over x (B, C, ...)."""
    check_tensor(name, table, floating=True)
    if x.dim() < 2 or table.shape != (x.shape[1],):
        raise ValueError(f"{name} must have shape (C,) with C = x.shape[1] of x (B, C, ...), got "
                         f"{tuple(table.shape)} for x of shape {tuple(x.shape)}")
    check_same_device(x=x, **{name: table})
    return table.to(x.dtype).reshape(1, -1, *([1] * (x.dim() - 2)))


def folded_bn(x: Tensor, bn_scale: Tensor | None, bn_shift: Tensor | None) -> Tensor:
    """y = x * bn_scale[c] + bn_shift[c] along dim 1 (a missing table: scale 1, shift 0)."""
    if bn_scale is not None:
        x = x * _channel_table("bn_scale", bn_scale, x)
    if bn_shift is not None:
        x = x + _channel_table("bn_shift", bn_shift, x)
    return x


def climbq_act_fused(x: Tensor, sigma: Tensor, mu: Tensor, bits: int, act_range: float, *,
                     bn_scale: Tensor | None = None, bn_shift: Tensor | None = None, relu: bool = False) -> Tensor:
    """relu?(climbq_act_quant(folded_bn(x), sigma, mu, bits, act_range)); sigma, mu per sample (B,)."""
    out = climbq_act_quant(folded_bn(x, bn_scale, bn_shift), sigma, mu, bits, act_range)
    return out.clamp_min(0) if relu else out


def climbq_act_fused_inference(x: Tensor, bits: int, act_range: float, sigma: float = DEFAULT_INFERENCE_SIGMA,
                               mu: float = 0.0, *, bn_scale: Tensor | None = None,
                               bn_shift: Tensor | None = None, relu: bool = False) -> Tensor:
    """relu?(climbq_act_quant_inference(folded_bn(x), bits, act_range, sigma, mu)): threshold bucketing."""
    out = climbq_act_quant_inference(folded_bn(x, bn_scale, bn_shift), bits, act_range, sigma, mu)
    return out.clamp_min(0) if relu else out


def climbq_act_fused_grad_y(grad_out: Tensor, x: Tensor, sigma: Tensor, mu: Tensor, bits: int, act_range: float, *,
                            bn_scale: Tensor | None = None, bn_shift: Tensor | None = None,
                            relu: bool = False) -> Tensor:
    """dy, the gradient at the quantizer's input y = folded_bn(x) (straight-through on rint only):

        dy = climbq_act_quant_backward(grad_out * [out > 0 if relu], y, sigma, mu, bits, act_range)
    """
    y = folded_bn(x, bn_scale, bn_shift)
    if relu:
        grad_out = grad_out * (climbq_act_quant(y, sigma, mu, bits, act_range) > 0).to(grad_out.dtype)
    return climbq_act_quant_backward(grad_out, y, sigma, mu, bits, act_range)


def climbq_act_fused_backward(grad_out: Tensor, x: Tensor, sigma: Tensor, mu: Tensor, bits: int,
                              act_range: float, *, bn_scale: Tensor | None = None,
                              bn_shift: Tensor | None = None, relu: bool = False
                              ) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """Gradients of `climbq_act_fused`: (dx, dbn_scale, dbn_shift), with dy = `climbq_act_fused_grad_y`:

        dx = dy * bn_scale[c],  dbn_scale[c] = sum of dy * x,  dbn_shift[c] = sum of dy

    the sums over every dim but 1. dx has x's shape and dtype; the table gradients are (C,) in
    x's dtype, None without that table.
    """
    dy = climbq_act_fused_grad_y(grad_out, x, sigma, mu, bits, act_range, bn_scale=bn_scale, bn_shift=bn_shift,
                                 relu=relu)
    dims = [d for d in range(x.dim()) if d != 1]
    dx = dy * _channel_table("bn_scale", bn_scale, x) if bn_scale is not None else dy
    dscale = (dy * x).sum(dim=dims) if bn_scale is not None else None
    dshift = dy.sum(dim=dims) if bn_shift is not None else None
    return dx, dscale, dshift


def climbq_act_inference_codes(x: Tensor, bits: int, sigma: float = DEFAULT_INFERENCE_SIGMA,
                               mu: float = 0.0) -> Tensor:
    """The codes q in [0, N] of `climbq_act_quant_inference` (thresholds rounded to x's dtype), int64.

    Read back from the levels computed in float32 (float64 for a float64 x), where 2q/N - 1
    is exact enough to invert for every bits <= 16; float16/bfloat16 x is compared against
    float32 thresholds, as the kernels do.
    """
    wide = x if x.dtype == torch.float64 else x.float()
    n = levels(bits)
    out = climbq_act_quant_inference(wide, bits, 1.0, sigma, mu).double()
    return torch.round((out + 1.0) * (n / 2.0)).to(torch.int64)
