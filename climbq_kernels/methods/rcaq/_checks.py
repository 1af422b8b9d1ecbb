"""Argument checks of the RCAQ estimator and the DP baseline: each error names the argument."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor


def as_data(name: str, value, *, dim: int) -> Tensor:
    """A finite float64 tensor of `dim` dimensions from a tensor or a NumPy array (not mutated)."""
    if isinstance(value, np.ndarray):
        value = torch.from_numpy(value)
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or numpy.ndarray, got {type(value).__name__}")
    if not (value.is_floating_point() or value.dtype in (torch.int32, torch.int64)):
        raise TypeError(f"{name} must hold real numbers, got dtype {value.dtype}")
    if value.dim() != dim:
        raise ValueError(f"{name} must have {dim} dimension(s), got shape {tuple(value.shape)}")
    value = value.detach().to(device="cpu", dtype=torch.float64)
    if not bool(torch.isfinite(value).all()):
        raise ValueError(f"{name} must be finite: found NaN or Inf")
    return value


def check_gamma(gamma) -> float:
    """gamma, the weight of the 0-1 term, in [0, 1]."""
    if isinstance(gamma, bool) or not isinstance(gamma, (int, float)):
        raise TypeError(f"gamma must be a number, got {type(gamma).__name__}")
    if not 0.0 <= gamma <= 1.0:  # false for NaN too
        raise ValueError(f"gamma must lie in [0, 1], got {gamma}")
    return float(gamma)


def check_count(name: str, value, minimum: int = 1) -> int:
    """A Python (or NumPy) int of at least `minimum` (bool refused)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def check_rates(rates) -> tuple[int, ...]:
    """The number of indices R_i of each sensor: a non-empty sequence of ints >= 1."""
    if isinstance(rates, (Tensor, np.ndarray)):
        rates = rates.tolist()
    if isinstance(rates, (str, bytes)) or not hasattr(rates, "__len__"):
        raise TypeError(f"rates must be a sequence of ints (one per sensor), got {type(rates).__name__}")
    if len(rates) == 0:
        raise ValueError("rates must name at least one sensor, got an empty sequence")
    return tuple(check_count(f"rates[{i}]", r) for i, r in enumerate(rates))


def check_classifier(w, d: int | None = None) -> Tensor:
    """The linear classifier's normal w (d,), finite and non-zero, returned with unit norm."""
    w = as_data("w", w, dim=1)
    if d is not None and w.shape[0] != d:
        raise ValueError(f"w must have one entry per sensor ({d}), got shape {tuple(w.shape)}")
    norm = float(w.norm())
    if not norm > 0 or not math.isfinite(norm):
        raise ValueError("w must be a non-zero vector")
    return w / norm
