"""The standard normal CDF `Phi`, density `phi` and quantile `Phi^-1` (algorithms.md §0), and
the half-normal CDF of the ReLU-aware quantizer (§1f).

`normal_cdf` and `normal_pdf` compute in their input's dtype (no upcast), so the reference
run in a kernel's dtype shows that dtype's own rounding error.

The constants are literals, 0.7071067811865476 = sqrt(1/2) and 0.3989422804014327 =
1/sqrt(2 pi) (tests/test_fusable.py checks them): `nn/fusable.py` calls these functions inside
autograd.Functions that torch.compile traces, and under dynamic=True a module-level float read
inside two such bodies of one graph trips dynamo (torch 2.14: "Argument 'item' of Node ... does
not belong to this Graph"), where a literal is a constant.
"""

import torch
from torch import Tensor


def normal_cdf(t: Tensor) -> Tensor:
    """Phi(t) = 0.5 * (1 + erf(t / sqrt(2))), elementwise, in t's dtype."""
    return 0.5 * (1.0 + torch.erf(t * 0.7071067811865476))


def half_normal_cdf(t: Tensor) -> Tensor:
    """max(2 Phi(t) - 1, 0) = erf(max(t, 0) / sqrt(2)), elementwise, in t's dtype: the CDF of |Z|
    at t, 0 for t <= 0 (the one-sided CDF of algorithms.md §1f)."""
    return torch.erf(t.clamp_min(0) * 0.7071067811865476)


def normal_pdf(t: Tensor) -> Tensor:
    """phi(t) = exp(-t^2 / 2) / sqrt(2 pi), elementwise, in t's dtype."""
    return torch.exp(-0.5 * t * t) * 0.3989422804014327


def normal_ppf(p: Tensor) -> Tensor:
    """Phi^-1(p) (`torch.special.ndtri`), elementwise; p float32 or float64."""
    return torch.special.ndtri(p)
