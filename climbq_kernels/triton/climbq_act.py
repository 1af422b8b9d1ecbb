"""ClimbQ activation quantizer in Triton (algorithms.md §1a): forward and backward, one pass each.

The input is viewed as (B, inner) in memory order; element e belongs to sample e // inner,
whose sigma and mu come from per-sample (B,) float32 tables. Math in float32 whatever the
input dtype:

    y = x * bn_scale[c] + bn_shift[c]       (HAS_BN: folded BatchNorm, c = (e // channel_stride) % C)
    q = rint(Phi((y - mu) / sigma) * N)     (or BUCKET: q = #{j : y > t_j}, +1 at y == t_j for odd j)
    out = q * (2A/N) - A, then max(out, 0)  (RELU); or q itself as uint8 (CODES)
    dy = dout * (2A / sigma) * phi((y - mu) / sigma) * [q > N/2 if RELU];  dx = dy * bn_scale[c]

`channel_stride` is 1 when the channel is the last dim of x (the (B, H, W, C) view of a
channels-last tensor, or (B, C)) and prod(shape[2:]) for a contiguous (B, C, ...) x.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .. import reference
from ..constants import levels
from ..testing import poison_like
from .math import cast_rne, normal_cdf, normal_pdf, round_half_even
from .registry import Example, KernelEntry, register

BLOCK = 1024


@triton.jit
def _quantizer_input(x, offs, mask, scale_ptr, shift_ptr, channels, channel_stride, HAS_BN: tl.constexpr):
    """y: x through the folded BatchNorm when HAS_BN, else x."""
    if HAS_BN:
        channel = (offs // channel_stride) % channels
        x = x * tl.load(scale_ptr + channel, mask=mask, other=1.0) + tl.load(shift_ptr + channel, mask=mask,
                                                                             other=0.0)
    return x


@triton.jit
def _code(y, sigma, mu, t_ptr, bits, num_levels, mask, BUCKET: tl.constexpr):
    """q as float32: rint(Phi(z) N), or by binary search in `bits` probes of the N thresholds."""
    if BUCKET:
        below = tl.zeros(y.shape, tl.int32)  # #{j : t_j < y}; every probe index stays below N
        step = 1 << (bits - 1)
        for _ in range(bits):
            probe = tl.load(t_ptr + below + step - 1, mask=mask, other=0.0)
            below = tl.where(probe < y, below + step, below)
            step = step // 2
        n = (1 << bits) - 1
        at_next = tl.load(t_ptr + tl.minimum(below, n - 1), mask=mask, other=0.0)
        odd_tie = (below < n) & (at_next == y) & ((below % 2) == 1)  # rint's half-to-even rule
        code = (below + odd_tie.to(tl.int32)).to(tl.float32)
        return tl.where(y != y, y, code)  # NaN stays NaN
    else:
        return round_half_even(normal_cdf((y - mu) / sigma) * num_levels)


@triton.jit
def climbq_act_forward_kernel(x_ptr, sigma_ptr, mu_ptr, t_ptr, scale_ptr, shift_ptr, out_ptr, numel, inner,
                              channels, channel_stride, bits, num_levels, act_range, HAS_BN: tl.constexpr,
                              BUCKET: tl.constexpr, RELU: tl.constexpr, CODES: tl.constexpr,
                              BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    sample = offs // inner
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    sigma = tl.load(sigma_ptr + sample, mask=mask, other=1.0)
    mu = tl.load(mu_ptr + sample, mask=mask, other=0.0)
    y = _quantizer_input(x, offs, mask, scale_ptr, shift_ptr, channels, channel_stride, HAS_BN)
    code = _code(y, sigma, mu, t_ptr, bits, num_levels, mask, BUCKET)
    if CODES:
        out = tl.where(code == code, code, 0.0)  # NaN: code 0
    else:
        out = code * (2.0 * act_range / num_levels) - act_range
        if RELU:
            out = tl.where(out > 0.0, out, 0.0)
        out = tl.where(y != y, y, out)  # NaN propagates, through ReLU too
    tl.store(out_ptr + offs, cast_rne(out, out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def climbq_act_backward_kernel(grad_ptr, x_ptr, sigma_ptr, mu_ptr, t_ptr, scale_ptr, shift_ptr, dx_ptr, numel,
                               inner, channels, channel_stride, bits, num_levels, act_range,
                               HAS_BN: tl.constexpr, BUCKET: tl.constexpr, RELU: tl.constexpr,
                               CHAIN_SCALE: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    sample = offs // inner
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    grad = tl.load(grad_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    sigma = tl.load(sigma_ptr + sample, mask=mask, other=1.0)
    mu = tl.load(mu_ptr + sample, mask=mask, other=0.0)
    y = _quantizer_input(x, offs, mask, scale_ptr, shift_ptr, channels, channel_stride, HAS_BN)
    dy = grad * (2.0 * act_range / sigma) * normal_pdf((y - mu) / sigma)
    if RELU:
        code = _code(y, sigma, mu, t_ptr, bits, num_levels, mask, BUCKET)
        dy = tl.where(2.0 * code > num_levels, dy, 0.0)  # ReLU passes where q > N/2
    if HAS_BN and CHAIN_SCALE:
        dy = dy * tl.load(scale_ptr + (offs // channel_stride) % channels, mask=mask, other=0.0)
    tl.store(dx_ptr + offs, cast_rne(dy, dx_ptr.dtype.element_ty), mask=mask)


def _layout(x: torch.Tensor, bn_scale, channels_last: bool) -> tuple[int, int, int]:
    """(inner, channels, channel_stride) of a contiguous x (B, ...); see the module docstring."""
    inner = x.numel() // x.shape[0] if x.shape[0] else 0
    if bn_scale is None:
        return inner, 1, 1
    if channels_last or x.dim() < 3:
        return inner, x.shape[-1] if channels_last else x.shape[1], 1
    return inner, x.shape[1], x[0, 0].numel()


def _tables(sigma, thresholds, bn_scale, bn_shift):
    """Kernel pointers for the optional tables; an absent one points at sigma and is never read."""
    return [t.contiguous() if t is not None else sigma for t in (thresholds, bn_scale, bn_shift)]


def climbq_act_fused_forward(x, sigma, mu, thresholds, bn_scale, bn_shift, bits: int, act_range: float,
                             relu: bool, channels_last: bool, *, out=None, codes: bool = False):
    """Forward of the fused op (argument order as climbq_native.climbq_act_fused_forward).

    x (B, ...) float32/float16/bfloat16 contiguous; returns a tensor like x (uint8 when `codes`).
    """
    x = x.contiguous()
    sigma = sigma.contiguous()
    inner, channels, channel_stride = _layout(x, bn_scale, channels_last)
    if out is None:
        out = torch.empty_like(x, dtype=torch.uint8 if codes else x.dtype)
    if x.numel():
        grid = (triton.cdiv(x.numel(), BLOCK),)
        climbq_act_forward_kernel[grid](x, sigma, mu.contiguous(), *_tables(sigma, thresholds, bn_scale, bn_shift),
                                        out, x.numel(), inner, channels, channel_stride, bits, float(levels(bits)),
                                        float(act_range), HAS_BN=bn_scale is not None,
                                        BUCKET=thresholds is not None, RELU=relu, CODES=codes, BLOCK=BLOCK)
    return out


def climbq_act_fused_codes(x, sigma, mu, thresholds, bn_scale, bn_shift, bits: int, channels_last: bool, *,
                           out=None):
    """uint8 codes q (bits <= 8) of the fused op (argument order as climbq_native.climbq_act_fused_codes)."""
    if bits > 8:
        raise ValueError(f"uint8 codes hold bits <= 8, got bits={bits}")
    return climbq_act_fused_forward(x, sigma, mu, thresholds, bn_scale, bn_shift, bits, 1.0, False, channels_last,
                                    out=out, codes=True)


def climbq_act_fused_backward(grad_out, x, sigma, mu, thresholds, bn_scale, bn_shift, bits: int, act_range: float,
                              relu: bool, channels_last: bool, chain_scale: bool, *, out=None):
    """dx (chain_scale) or dy of the fused op (argument order as climbq_native.climbq_act_fused_backward)."""
    x = x.contiguous()
    sigma = sigma.contiguous()
    grad_out = grad_out.contiguous()
    inner, channels, channel_stride = _layout(x, bn_scale, channels_last)
    out = torch.empty_like(x) if out is None else out
    if x.numel():
        grid = (triton.cdiv(x.numel(), BLOCK),)
        climbq_act_backward_kernel[grid](grad_out, x, sigma, mu.contiguous(),
                                         *_tables(sigma, thresholds, bn_scale, bn_shift), out, x.numel(), inner,
                                         channels, channel_stride, bits, float(levels(bits)), float(act_range),
                                         HAS_BN=bn_scale is not None, BUCKET=thresholds is not None, RELU=relu,
                                         CHAIN_SCALE=chain_scale, BLOCK=BLOCK)
    return out


def climbq_act_quant_forward(x, sigma, mu, bits: int, act_range: float, *, out=None):
    """Quantize x (B, ...) with per-sample float32 sigma, mu (B,); returns a tensor like x."""
    return climbq_act_fused_forward(x, sigma, mu, None, None, None, bits, act_range, False, False, out=out)


def climbq_act_quant_backward(grad_out, x, sigma, mu, bits: int, act_range: float, *, out=None):
    """dx for `climbq_act_quant_forward` (straight-through on rint)."""
    return climbq_act_fused_backward(grad_out, x, sigma, mu, None, None, None, bits, act_range, False, False, True,
                                     out=out)


# --- registry: one entry per compiled variant, each checked against the reference -------------

def _random_case(dtype: torch.dtype, gen: torch.Generator, device: str, shape=(3, 5, 37)):
    x = (torch.randn(shape, generator=gen) * 2.5 + 0.3).to(device, dtype)
    sigma = (torch.rand(shape[0], generator=gen) + 1.0).to(device)
    mu = (torch.randn(shape[0], generator=gen) * 0.2).to(device)
    return x, sigma, mu


def _bn_tables(channels: int, gen: torch.Generator, device: str):
    scale = (torch.rand(channels, generator=gen) + 0.5).to(device)
    shift = (torch.randn(channels, generator=gen) * 0.3).to(device)
    return scale, shift


def _forward_example(dtype, gen, device, bits: int = 4, act_range: float = 2.0) -> Example:
    x, sigma, mu = _random_case(dtype, gen, device)
    got = climbq_act_quant_forward(x, sigma, mu, bits, act_range, out=poison_like(x))
    ref64 = reference.climbq_act_quant(x.double(), sigma.double(), mu.double(), bits, act_range)
    ref_lowp = reference.climbq_act_quant(x, sigma, mu, bits, act_range)
    return Example(got, ref64, ref_lowp, step=2 * act_range / levels(bits))


def _backward_example(dtype, gen, device, bits: int = 4, act_range: float = 2.0) -> Example:
    x, sigma, mu = _random_case(dtype, gen, device)
    grad = torch.randn(x.shape, generator=gen).to(device, dtype)
    got = climbq_act_quant_backward(grad, x, sigma, mu, bits, act_range, out=poison_like(x))
    args64 = (grad.double(), x.double(), sigma.double(), mu.double(), bits, act_range)
    ref64 = reference.climbq_act_quant_backward(*args64)
    ref_lowp = reference.climbq_act_quant_backward(grad, x, sigma, mu, bits, act_range)
    return Example(got, ref64, ref_lowp)


def _bn_relu_forward_example(dtype, gen, device, bits: int = 4, act_range: float = 2.0) -> Example:
    x, sigma, mu = _random_case(dtype, gen, device)
    scale, shift = _bn_tables(x.shape[1], gen, device)
    got = climbq_act_fused_forward(x, sigma, mu, None, scale, shift, bits, act_range, True, False,
                                   out=poison_like(x))

    def ref(t, s, m, a, b):
        return reference.climbq_act_fused(t, s, m, bits, act_range, bn_scale=a, bn_shift=b, relu=True)
    ref64 = ref(x.double(), sigma.double(), mu.double(), scale.double(), shift.double())
    return Example(got, ref64, ref(x, sigma, mu, scale, shift), step=2 * act_range / levels(bits))


def _bn_relu_backward_example(dtype, gen, device, bits: int = 4, act_range: float = 2.0) -> Example:
    x, sigma, mu = _random_case(dtype, gen, device)
    scale, shift = _bn_tables(x.shape[1], gen, device)
    grad = torch.randn(x.shape, generator=gen).to(device, dtype)
    got = climbq_act_fused_backward(grad, x, sigma, mu, None, scale, shift, bits, act_range, True, False, True,
                                    out=poison_like(x))

    def ref(g, t, s, m, a, b):
        return reference.climbq_act_fused_backward(g, t, s, m, bits, act_range, bn_scale=a, bn_shift=b, relu=True)[0]
    ref64 = ref(grad.double(), x.double(), sigma.double(), mu.double(), scale.double(), shift.double())
    return Example(got, ref64, ref(grad, x, sigma, mu, scale, shift))


def _inference_example(dtype, gen, device, bits: int = 4, act_range: float = 2.0) -> Example:
    x, _, _ = _random_case(dtype, gen, device)
    sigma = torch.full((x.shape[0],), 1.7, device=device)
    mu = torch.full((x.shape[0],), 0.2, device=device)
    t = reference.climbq_act_thresholds(bits, 1.7, 0.2, dtype=torch.float32).to(device)
    got = climbq_act_fused_forward(x, sigma, mu, t, None, None, bits, act_range, False, False, out=poison_like(x))
    ref64 = reference.climbq_act_quant_inference(x.double(), bits, act_range, 1.7, 0.2)
    ref_lowp = reference.climbq_act_quant_inference(x, bits, act_range, 1.7, 0.2)
    return Example(got, ref64, ref_lowp, step=2 * act_range / levels(bits))


def _codes_example(dtype, gen, device, bits: int = 8) -> Example:
    x, sigma, mu = _random_case(dtype, gen, device)
    got = climbq_act_fused_codes(x, sigma, mu, None, None, None, bits, False,
                                 out=poison_like(torch.empty_like(x, dtype=torch.uint8)))
    ref64 = reference.climbq_act_codes(x.double(), sigma.double(), mu.double(), bits).double()
    ref_lowp = reference.climbq_act_codes(x, sigma, mu, bits).to(dtype)
    return Example(got.to(dtype), ref64, ref_lowp, step=1.0)


_POINTERS = ("sigma_ptr", "mu_ptr", "t_ptr", "scale_ptr", "shift_ptr")
_SCALARS = {"numel": "i64", "inner": "i64", "channels": "i64", "channel_stride": "i64", "bits": "i32",
            "num_levels": "fp32", "act_range": "fp32"}


def _signature(io_pointers, constexpr_names, out_ptr_type=None):
    def build(dtype: str) -> dict[str, str]:
        io = {name: f"*{dtype}" for name in io_pointers}
        if out_ptr_type is not None:
            io["out_ptr"] = out_ptr_type
        return {**io, **{name: "*fp32" for name in _POINTERS}, **_SCALARS,
                **{name: "constexpr" for name in constexpr_names}}
    return build


_FORWARD_FLAGS = ("HAS_BN", "BUCKET", "RELU", "CODES", "BLOCK")
_BACKWARD_FLAGS = ("HAS_BN", "BUCKET", "RELU", "CHAIN_SCALE", "BLOCK")


def _forward_entry(name, example, codes=False, **flags):
    constexprs = {"HAS_BN": False, "BUCKET": False, "RELU": False, "CODES": codes, "BLOCK": BLOCK, **flags}
    register(KernelEntry(name=name, kernel=climbq_act_forward_kernel,
                         signature=_signature(("x_ptr",) if codes else ("x_ptr", "out_ptr"), _FORWARD_FLAGS,
                                              "*u8" if codes else None),
                         constexprs=constexprs, example=example))


def _backward_entry(name, example, **flags):
    constexprs = {"HAS_BN": False, "BUCKET": False, "RELU": False, "CHAIN_SCALE": True, "BLOCK": BLOCK, **flags}
    register(KernelEntry(name=name, kernel=climbq_act_backward_kernel,
                         signature=_signature(("grad_ptr", "x_ptr", "dx_ptr"), _BACKWARD_FLAGS),
                         constexprs=constexprs, example=example))


_forward_entry("climbq_act_forward", _forward_example)
_backward_entry("climbq_act_backward", _backward_example)
_forward_entry("climbq_act_bn_relu_forward", _bn_relu_forward_example, HAS_BN=True, RELU=True)
_backward_entry("climbq_act_bn_relu_backward", _bn_relu_backward_example, HAS_BN=True, RELU=True)
_forward_entry("climbq_act_inference_forward", _inference_example, BUCKET=True)
_forward_entry("climbq_act_codes", _codes_example, codes=True)
