"""Scalar math shared by the Triton kernels (inlined into each kernel that calls it)."""

import triton
import triton.language as tl

SQRT1_2 = tl.constexpr(0.7071067811865476)
INV_SQRT_2PI = tl.constexpr(0.3989422804014327)


@triton.jit
def round_half_even(t):
    """rint(t) with ties to even, as `torch.round` does.

    Built from floor so it behaves identically when compiled and under TRITON_INTERPRET
    (the interpreter has no libdevice.rint). Exact for |t| < 2**23.
    """
    whole = tl.floor(t)
    frac = t - whole
    whole_is_odd = (whole - 2.0 * tl.floor(whole * 0.5)) != 0.0
    round_up = (frac > 0.5) | ((frac == 0.5) & whole_is_odd)
    return tl.where(round_up, whole + 1.0, whole)


@triton.jit
def normal_cdf(z):
    """Phi(z), the standard normal CDF."""
    return 0.5 * (1.0 + tl.math.erf(z * SQRT1_2))


@triton.jit
def normal_pdf(z):
    """phi(z), the standard normal density."""
    return INV_SQRT_2PI * tl.exp(-0.5 * z * z)


@triton.jit
def cast_rne(t, dtype: tl.constexpr):
    """float32 t to `dtype` rounding to nearest even, as torch's casts do.

    bfloat16 is rounded on the bits (NaN kept quiet): the interpreter's own float32 -> bfloat16
    cast truncates, which would break bit identity under TRITON_INTERPRET.
    """
    if dtype == tl.bfloat16:
        bits = t.to(tl.uint32, bitcast=True)
        rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
        high = tl.where(t != t, (bits >> 16) | 0x40, rounded)
        return high.to(tl.uint16).to(tl.bfloat16, bitcast=True)
    return t.to(dtype)
