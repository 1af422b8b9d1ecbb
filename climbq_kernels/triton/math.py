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
