"""ClimbQ activation quantizer ops (SPEC 1a)."""

from __future__ import annotations

import torch
from torch import Tensor

from .. import reference
from ._dispatch import native, per_sample, register_kernels, run, trailing_sum, triton_launcher

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


@torch.library.custom_op("climbq::climbq_act_quant", mutates_args=())
def climbq_act_quant(x: Tensor, sigma: Tensor, mu: Tensor, bits: int, act_range: float) -> Tensor:
    """out = A*(2*rint(Phi((x - mu_i)/sigma_i)*N)/N - 1); sigma, mu per sample (B,)."""
    return run("climbq_act_quant", x, x, sigma, mu, bits, act_range)


@torch.library.custom_op("climbq::climbq_act_quant_backward", mutates_args=())
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
    dx = climbq_act_quant_backward(grad_out.contiguous(), x, sigma, mu, ctx.bits, ctx.act_range)
    dsigma = dmu = None
    if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
        # d out/d mu = -d out/d x and d out/d sigma = -z * d out/d x, summed over each sample.
        dmu = -trailing_sum(dx).to(mu.dtype)
        z = (x - per_sample(mu, x)) / per_sample(sigma, x)
        dsigma = -trailing_sum(dx * z).to(sigma.dtype)
    return dx, dsigma, dmu, None, None


climbq_act_quant.register_autograd(_climbq_act_backward, setup_context=_climbq_act_setup)
