"""Argument checks used only by the reference modules (the shared ones live in `checks`)."""

from __future__ import annotations

import torch
from torch import Tensor

from ..checks import check_same_device, check_tensor


def check_batched(name: str, x) -> Tensor:
    """Require a floating tensor with a leading batch dimension (B, ...)."""
    check_tensor(name, x, floating=True)
    if x.dim() < 1:
        raise ValueError(f"{name} must have a batch dimension (B, ...), got a 0-d tensor")
    return x


def check_grad(grad_out, like: Tensor, like_name: str) -> Tensor:
    """Require `grad_out` to match the forward input `like` in shape, dtype and device."""
    check_tensor("grad_out", grad_out, floating=True)
    if grad_out.shape != like.shape:
        raise ValueError(f"grad_out must have {like_name}'s shape {tuple(like.shape)}, got {tuple(grad_out.shape)}")
    if grad_out.dtype != like.dtype:
        raise TypeError(f"grad_out must have {like_name}'s dtype {like.dtype}, got {grad_out.dtype}")
    check_same_device(grad_out=grad_out, **{like_name: like})
    return grad_out


def check_int(name: str, value, minimum: int | None = None) -> int:
    """Require a Python int (not a bool), at least `minimum` when given."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def check_fraction(name: str, value) -> float:
    """Require a number strictly between 0 and 1."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if not 0.0 < value < 1.0:
        raise ValueError(f"{name} must lie strictly between 0 and 1, got {value}")
    return float(value)


def scalar_tensor(name: str, value, like: Tensor) -> Tensor:
    """A Python number or a one-element tensor as a 0-d tensor on `like`'s device (dtype kept;
    numbers become float64 so that no precision is lost before the caller casts)."""
    if isinstance(value, Tensor):
        if value.numel() != 1:
            raise ValueError(f"{name} must be a number or a one-element tensor, got shape {tuple(value.shape)}")
        check_same_device(**{name: value}, x=like)
        return value.reshape(())
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number or a one-element tensor, got {type(value).__name__}")
    dtype = torch.int64 if isinstance(value, int) else torch.float64
    return torch.tensor(value, dtype=dtype, device=like.device)
