"""ClimbQ activation quantizer in Triton (SPEC 1a): forward and backward, one pass each.

The input is viewed as (B, inner); element e belongs to sample e // inner, whose sigma and
mu come from per-sample (B,) float32 tables. Math in float32 whatever the input dtype:

    z = (x - mu) / sigma,  q = rint(Phi(z) * N),  out = q * (2A/N) - A
    dx = dout * (2A / sigma) * phi(z)
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .. import reference
from ..constants import levels
from ..testing import poison_like
from .math import normal_cdf, normal_pdf, round_half_even
from .registry import Example, KernelEntry, register

BLOCK = 1024


@triton.jit
def climbq_act_forward_kernel(x_ptr, sigma_ptr, mu_ptr, out_ptr, numel, inner, num_levels, act_range,
                              BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    sample = offs // inner
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    sigma = tl.load(sigma_ptr + sample, mask=mask, other=1.0)
    mu = tl.load(mu_ptr + sample, mask=mask, other=0.0)
    code = round_half_even(normal_cdf((x - mu) / sigma) * num_levels)
    out = code * (2.0 * act_range / num_levels) - act_range
    tl.store(out_ptr + offs, out.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def climbq_act_backward_kernel(grad_ptr, x_ptr, sigma_ptr, mu_ptr, dx_ptr, numel, inner, act_range,
                               BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    sample = offs // inner
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    grad = tl.load(grad_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    sigma = tl.load(sigma_ptr + sample, mask=mask, other=1.0)
    mu = tl.load(mu_ptr + sample, mask=mask, other=0.0)
    dx = grad * (2.0 * act_range / sigma) * normal_pdf((x - mu) / sigma)
    tl.store(dx_ptr + offs, dx.to(dx_ptr.dtype.element_ty), mask=mask)


def _flat(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    x = x.contiguous()
    return x, (x.numel() // x.shape[0] if x.shape[0] else 0)


def climbq_act_quant_forward(x, sigma, mu, bits: int, act_range: float, *, out=None):
    """Quantize x (B, ...) with per-sample float32 sigma, mu (B,); returns a tensor like x."""
    x, inner = _flat(x)
    out = torch.empty_like(x) if out is None else out
    if x.numel():
        grid = (triton.cdiv(x.numel(), BLOCK),)
        climbq_act_forward_kernel[grid](x, sigma.contiguous(), mu.contiguous(), out, x.numel(), inner,
                                        float(levels(bits)), float(act_range), BLOCK=BLOCK)
    return out


def climbq_act_quant_backward(grad_out, x, sigma, mu, bits: int, act_range: float, *, out=None):
    """dx for `climbq_act_quant_forward` (straight-through on rint); `bits` does not enter."""
    x, inner = _flat(x)
    grad_out = grad_out.contiguous()
    out = torch.empty_like(x) if out is None else out
    if x.numel():
        grid = (triton.cdiv(x.numel(), BLOCK),)
        climbq_act_backward_kernel[grid](grad_out, x, sigma.contiguous(), mu.contiguous(), out, x.numel(), inner,
                                         float(act_range), BLOCK=BLOCK)
    return out


def _random_case(dtype: torch.dtype, gen: torch.Generator, device: str, shape=(3, 5, 37)):
    x = (torch.randn(shape, generator=gen) * 2.5 + 0.3).to(device, dtype)
    sigma = (torch.rand(shape[0], generator=gen) + 1.0).to(device)
    mu = (torch.randn(shape[0], generator=gen) * 0.2).to(device)
    return x, sigma, mu


def _forward_example(dtype: torch.dtype, gen: torch.Generator, device: str, bits: int = 4,
                     act_range: float = 2.0) -> Example:
    x, sigma, mu = _random_case(dtype, gen, device)
    got = climbq_act_quant_forward(x, sigma, mu, bits, act_range, out=poison_like(x))
    ref64 = reference.climbq_act_quant(x.double(), sigma.double(), mu.double(), bits, act_range)
    ref_lowp = reference.climbq_act_quant(x, sigma, mu, bits, act_range)
    return Example(got, ref64, ref_lowp, step=2 * act_range / levels(bits))


def _backward_example(dtype: torch.dtype, gen: torch.Generator, device: str, bits: int = 4,
                      act_range: float = 2.0) -> Example:
    x, sigma, mu = _random_case(dtype, gen, device)
    grad = torch.randn(x.shape, generator=gen).to(device, dtype)
    got = climbq_act_quant_backward(grad, x, sigma, mu, bits, act_range, out=poison_like(x))
    args64 = (grad.double(), x.double(), sigma.double(), mu.double(), bits, act_range)
    ref64 = reference.climbq_act_quant_backward(*args64)
    ref_lowp = reference.climbq_act_quant_backward(grad, x, sigma, mu, bits, act_range)
    return Example(got, ref64, ref_lowp)


def _signature(pointer_names, scalars):
    def build(dtype: str) -> dict[str, str]:
        return {**{name: f"*{dtype}" for name in pointer_names}, "sigma_ptr": "*fp32", "mu_ptr": "*fp32",
                **scalars, "BLOCK": "constexpr"}
    return build


register(KernelEntry(
    name="climbq_act_forward",
    kernel=climbq_act_forward_kernel,
    signature=_signature(("x_ptr", "out_ptr"),
                         {"numel": "i64", "inner": "i64", "num_levels": "fp32", "act_range": "fp32"}),
    constexprs={"BLOCK": BLOCK},
    example=_forward_example,
))
register(KernelEntry(
    name="climbq_act_backward",
    kernel=climbq_act_backward_kernel,
    signature=_signature(("grad_ptr", "x_ptr", "dx_ptr"), {"numel": "i64", "inner": "i64", "act_range": "fp32"}),
    constexprs={"BLOCK": BLOCK},
    example=_backward_example,
))
