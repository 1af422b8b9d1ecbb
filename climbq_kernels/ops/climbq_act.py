"""ClimbQ activation quantizer ops (algorithms.md §1a)."""

from __future__ import annotations

import torch
from torch import Tensor

from .. import reference
from ._dispatch import native, per_sample, register_kernels, run, trailing_sum, triton_launcher
from ._eager import custom_op, eager

register_kernels({
    "climbq_act_quant": {
        "reference": reference.climbq_act_quant,
        "cpu": native("climbq_act_quant_forward"),
        "cuda": native("climbq_act_quant_forward"),
        "triton": triton_launcher("climbq_act", "climbq_act_quant_forward"),
    },
    "climbq_act_quant_backward": {
        "reference": reference.climbq_act_quant_backward,
        "cpu": native("climbq_act_quant_backward"),
        "cuda": native("climbq_act_quant_backward"),
        "triton": triton_launcher("climbq_act", "climbq_act_quant_backward"),
    },
})


@custom_op("climbq::climbq_act_quant")
def climbq_act_quant(x: Tensor, sigma: Tensor, mu: Tensor, bits: int, act_range: float) -> Tensor:
    """out = A*(2*rint(Phi((x - mu_i)/sigma_i)*N)/N - 1); sigma, mu per sample (B,)."""
    return run("climbq_act_quant", x, x, sigma, mu, bits, act_range)


@custom_op("climbq::climbq_act_quant_backward")
def climbq_act_quant_backward(grad_out: Tensor, x: Tensor, sigma: Tensor, mu: Tensor, bits: int,
                              act_range: float) -> Tensor:
    """dx = dout * 2A*phi(z)/sigma_i (straight-through on rint only)."""
    return run("climbq_act_quant_backward", x, grad_out, x, sigma, mu, bits, act_range)


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
    dx = climbq_act_quant_backward_eager(grad_out.contiguous(), x, sigma, mu, ctx.bits, ctx.act_range)
    dsigma = dmu = None
    if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
        # d out/d mu = -d out/d x and d out/d sigma = -z * d out/d x, summed over each sample.
        dmu = -trailing_sum(dx).to(mu.dtype)
        z = (x - per_sample(mu, x)) / per_sample(sigma, x)
        dsigma = -trailing_sum(dx * z).to(sigma.dtype)
    return dx, dsigma, dmu, None, None


climbq_act_quant_eager = eager(climbq_act_quant, _climbq_act_setup, _climbq_act_backward)
climbq_act_quant_backward_eager = eager(climbq_act_quant_backward)


# --- the fused variants: folded BN before, ReLU after, threshold bucketing, uint8 codes -------

def _channels_last(x: Tensor) -> bool:
    """Whether x (B, C, ...) is dense with the channel innermost (torch.channels_last and its
    1-D/3-D analogues) but not contiguous: the kernels then read x.movedim(1, -1), which is
    contiguous, with no copy, and the output keeps x's strides."""
    return x.dim() >= 3 and not x.is_contiguous() and x.movedim(1, -1).is_contiguous()


def _kernel_view(t: Tensor, channels_last: bool) -> Tensor:
    return t.movedim(1, -1) if channels_last else t


def _from_kernel_view(t: Tensor, channels_last: bool) -> Tensor:
    return t.movedim(-1, 1) if channels_last else t


def _reference_fused_forward(x, sigma, mu, thresholds, bn_scale, bn_shift, bits, act_range, relu, channels_last):
    """The reference backend of `climbq_act_fused_forward`, taking the kernels' arguments.

    With `thresholds` (inference) the per-sample sigma and mu are one constant each, and the
    reference bucketing recomputes the thresholds from them in x's dtype.
    """
    x = _from_kernel_view(x, channels_last)  # back to (B, C, ...)
    if thresholds is None:
        out = reference.climbq_act_fused(x, sigma, mu, bits, act_range, bn_scale=bn_scale, bn_shift=bn_shift,
                                         relu=relu)
    elif x.numel() == 0:
        out = torch.empty_like(x)
    else:
        out = reference.climbq_act_fused_inference(x, bits, act_range, float(sigma[0]), float(mu[0]),
                                                   bn_scale=bn_scale, bn_shift=bn_shift, relu=relu)
    return _kernel_view(out, channels_last).contiguous()


def _reference_fused_backward(grad_out, x, sigma, mu, thresholds, bn_scale, bn_shift, bits, act_range, relu,
                              channels_last, chain_scale):
    grad_out, x = _from_kernel_view(grad_out, channels_last), _from_kernel_view(x, channels_last)
    tables = dict(bn_scale=bn_scale, bn_shift=bn_shift, relu=relu)
    if chain_scale:
        d = reference.climbq_act_fused_backward(grad_out, x, sigma, mu, bits, act_range, **tables)[0]
    else:
        d = reference.climbq_act_fused_grad_y(grad_out, x, sigma, mu, bits, act_range, **tables)
    return _kernel_view(d, channels_last).contiguous()


def _reference_fused_codes(x, sigma, mu, thresholds, bn_scale, bn_shift, bits, channels_last):
    y = _kernel_view(reference.folded_bn(_from_kernel_view(x, channels_last), bn_scale, bn_shift), channels_last)
    if thresholds is None:
        codes = reference.climbq_act_codes(y, sigma, mu, bits)
    elif y.numel() == 0:
        codes = torch.empty_like(y, dtype=torch.int64)
    else:
        codes = reference.climbq_act_inference_codes(y, bits, float(sigma[0]), float(mu[0]))
    return codes.to(torch.uint8).contiguous()


register_kernels({
    "climbq_act_fused": {
        "reference": _reference_fused_forward,
        "cpu": native("climbq_act_fused_forward"),
        "cuda": native("climbq_act_fused_forward"),
        "triton": triton_launcher("climbq_act", "climbq_act_fused_forward"),
    },
    "climbq_act_fused_backward": {
        "reference": _reference_fused_backward,
        "cpu": native("climbq_act_fused_backward"),
        "cuda": native("climbq_act_fused_backward"),
        "triton": triton_launcher("climbq_act", "climbq_act_fused_backward"),
    },
    "climbq_act_codes": {
        "reference": _reference_fused_codes,
        "cpu": native("climbq_act_fused_codes"),
        "cuda": native("climbq_act_fused_codes"),
        "triton": triton_launcher("climbq_act", "climbq_act_fused_codes"),
    },
})


def _like_x(x: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    """An empty tensor shaped like x in the layout the fused ops return: x's own strides when x
    is channels-last (see `_channels_last`), else contiguous."""
    fmt = torch.preserve_format if _channels_last(x) else torch.contiguous_format
    return torch.empty_like(x, dtype=dtype, memory_format=fmt)


@custom_op("climbq::climbq_act_fused")
def climbq_act_fused(x: Tensor, sigma: Tensor, mu: Tensor, thresholds: Tensor | None, bn_scale: Tensor | None,
                     bn_shift: Tensor | None, bits: int, act_range: float, relu: bool) -> Tensor:
    """out = [relu] A*(2q/N - 1) of y = x*bn_scale[c] + bn_shift[c] (algorithms.md §1a; math in csrc/climbq_act.h).

    x (B, C, ...) (or (B, ...) without BN); sigma, mu per sample (B,) float32; q from erf, or by
    bucketing against `thresholds` (N,) float32 when given (inference); bn_scale, bn_shift (C,)
    float32, both or neither. Channels-last x is read in place and the output keeps its layout.
    """
    cl = _channels_last(x)
    xv = _kernel_view(x, cl)
    out = run("climbq_act_fused", xv, xv, sigma, mu, thresholds, bn_scale, bn_shift, bits, act_range, relu,
              cl)
    return _from_kernel_view(out, cl)


@custom_op("climbq::climbq_act_fused_backward")
def climbq_act_fused_backward(grad_out: Tensor, x: Tensor, sigma: Tensor, mu: Tensor, thresholds: Tensor | None,
                              bn_scale: Tensor | None, bn_shift: Tensor | None, bits: int, act_range: float,
                              relu: bool, chain_scale: bool) -> Tensor:
    """dy = dout * 2A*phi(z)/sigma_i [* (q > N/2) with relu]; returns dy*bn_scale[c] (= dx) when
    chain_scale, else dy (the gradient at the quantizer's input y). Layout as `climbq_act_fused`."""
    cl = _channels_last(x)
    xv = _kernel_view(x, cl)
    d = run("climbq_act_fused_backward", xv, _kernel_view(grad_out, cl), xv, sigma, mu, thresholds, bn_scale,
            bn_shift, bits, act_range, relu, cl, chain_scale)
    return _from_kernel_view(d, cl)


@custom_op("climbq::climbq_act_codes")
def climbq_act_codes(x: Tensor, sigma: Tensor, mu: Tensor, thresholds: Tensor | None, bits: int) -> Tensor:
    """Integer codes q in [0, N] as uint8 (bits <= 8), of x (B, ...) as in `climbq_act_fused`."""
    cl = _channels_last(x)
    xv = _kernel_view(x, cl)
    return _from_kernel_view(run("climbq_act_codes", xv, xv, sigma, mu, thresholds, None, None, bits, cl), cl)


@climbq_act_fused.register_fake
def _(x, sigma, mu, thresholds, bn_scale, bn_shift, bits, act_range, relu):
    return _like_x(x)


@climbq_act_fused_backward.register_fake
def _(grad_out, x, sigma, mu, thresholds, bn_scale, bn_shift, bits, act_range, relu, chain_scale):
    return _like_x(x)


@climbq_act_codes.register_fake
def _(x, sigma, mu, thresholds, bits):
    return _like_x(x, torch.uint8)


def _climbq_act_fused_setup(ctx, inputs, output):
    """Saved for backward: x (the input before the folded BN) and the small tables. Nothing of
    size x.numel() but x itself: y, the codes and the ReLU mask are recomputed in the backward
    pass from x, which costs an FMA (and an erf with ReLU) per element, cheaper than writing and
    reading back another tensor of x's size."""
    x, sigma, mu, thresholds, bn_scale, bn_shift, bits, act_range, relu = inputs
    ctx.save_for_backward(x, sigma, mu, thresholds, bn_scale, bn_shift)
    ctx.bits, ctx.act_range, ctx.relu = bits, act_range, relu


def _per_channel_sum(t: Tensor) -> Tensor:
    """Sum over every dim but dim 1: (B, C, ...) -> (C,)."""
    return t.sum(dim=[d for d in range(t.dim()) if d != 1])


def _climbq_act_fused_backward(ctx, grad_out):
    x, sigma, mu, thresholds, bn_scale, bn_shift = ctx.saved_tensors
    need_x, need_sigma, need_mu, _, need_scale, need_shift = ctx.needs_input_grad[:6]
    args = (x, sigma, mu, thresholds, bn_scale, bn_shift, ctx.bits, ctx.act_range, ctx.relu)
    if not (need_sigma or need_mu or need_scale or need_shift):
        return climbq_act_fused_backward_eager(grad_out, *args, True), None, None, None, None, None, None, None, None
    # The table gradients need dy, the gradient at y: one kernel pass for it, the rest in torch.
    dy = climbq_act_fused_backward_eager(grad_out, *args, False)
    dx = dsigma = dmu = dscale = dshift = None
    if need_x:
        dx = dy * bn_scale.reshape(1, -1, *([1] * (x.dim() - 2))) if bn_scale is not None else dy
    if need_scale:
        dscale = _per_channel_sum(dy * x).to(bn_scale.dtype)
    if need_shift:
        dshift = _per_channel_sum(dy).to(bn_shift.dtype)
    if need_sigma or need_mu:
        # d out/d mu = -dy and d out/d sigma = -z dy, summed over each sample.
        y = reference.folded_bn(x, bn_scale, bn_shift)
        dmu = -trailing_sum(dy).to(mu.dtype)
        dsigma = -trailing_sum(dy * (y - per_sample(mu, x)) / per_sample(sigma, x)).to(sigma.dtype)
    return dx, dsigma, dmu, None, dscale, dshift, None, None, None


climbq_act_fused_eager = eager(climbq_act_fused, _climbq_act_fused_setup, _climbq_act_fused_backward)
climbq_act_fused_backward_eager = eager(climbq_act_fused_backward)
climbq_act_codes_eager = eager(climbq_act_codes)
