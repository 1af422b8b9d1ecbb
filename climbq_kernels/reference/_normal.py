"""The standard normal CDF `Phi`, density `phi` and quantile `Phi^-1` (algorithms.md §0), and
the half-normal CDF of the ReLU-aware quantizer (§1f).

`normal_cdf` and `normal_pdf` compute in their input's dtype (no upcast), so the reference
run in a kernel's dtype shows that dtype's own rounding error.
"""

import math

import torch
from torch import Tensor

_SQRT_HALF = math.sqrt(0.5)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


def normal_cdf(t: Tensor) -> Tensor:
    """Phi(t) = 0.5 * (1 + erf(t / sqrt(2))), elementwise, in t's dtype."""
    return 0.5 * (1.0 + torch.erf(t * _SQRT_HALF))


def half_normal_cdf(t: Tensor) -> Tensor:
    """max(2 Phi(t) - 1, 0) = erf(max(t, 0) / sqrt(2)), elementwise, in t's dtype: the CDF of |Z|
    at t, 0 for t <= 0 (the one-sided CDF of algorithms.md §1f)."""
    return torch.erf(t.clamp_min(0) * _SQRT_HALF)


def normal_pdf(t: Tensor) -> Tensor:
    """phi(t) = exp(-t^2 / 2) / sqrt(2 pi), elementwise, in t's dtype."""
    return torch.exp(-0.5 * t * t) * _INV_SQRT_2PI


def normal_ppf(p: Tensor) -> Tensor:
    """Phi^-1(p) (`torch.special.ndtri`), elementwise; p float32 or float64."""
    return torch.special.ndtri(p)
