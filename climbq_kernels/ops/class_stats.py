"""Class-segmented statistics op (algorithms.md §1c steps 1-3, §4a)."""

from __future__ import annotations

import warnings

import torch
from torch import Tensor

from .. import dispatch, reference
from ._dispatch import native, register_kernels, run, triton_launcher
from ._eager import custom_op, eager

register_kernels({
    "class_stats": {
        "reference": reference.class_stats,
        "cpu": native("class_stats"),
        "cuda": native("class_stats"),
        "triton": triton_launcher("class_stats", "class_stats"),
    },
})


@custom_op("climbq::class_stats")
def class_stats(x: Tensor, labels: Tensor, num_classes: int) -> tuple[Tensor, Tensor, Tensor]:
    """(mean (K, F), biased var (K, F), counts (K,) int64) by label; F = D for (B, D), C for (B, C, ...).

    Kernel backends accumulate in float64 (see csrc/class_stats.h and triton/class_stats.py);
    labels must already be int64 in [0, K) (the public function checks them).
    The floating outputs come first (unlike the reference's (counts, mean, var)): autograd
    tooling such as opcheck sums outputs starting from the first one.
    """
    if x.is_cuda and torch.are_deterministic_algorithms_enabled() and _gpu_kernels_allowed_to_yield():
        counts, mean, var = reference.class_stats(x, labels, num_classes)
    else:
        counts, mean, var = run("class_stats", x, x, labels, num_classes)
    return mean, var, counts.to(torch.int64)


def _gpu_kernels_allowed_to_yield() -> bool:
    """Under `torch.use_deterministic_algorithms(True)`: whether CUDA tensors may go to the
    reference (its index_add_ is deterministic in that mode) instead of the CUDA and Triton
    kernels, which add float64 atomics in arrival order. A backend forced to those kernels
    raises instead, or warns in torch's warn_only mode, as torch's nondeterministic ops do."""
    forced = dispatch.explicit_backend()
    if forced in (None, "reference"):
        return True
    message = (f"class_stats on the '{forced}' backend adds float64 atomics in arrival order, which is not "
               "deterministic; leave the backend automatic (deterministic mode then runs the reference)")
    if torch.is_deterministic_algorithms_warn_only_enabled():
        warnings.warn(message, stacklevel=3)
        return False
    raise RuntimeError(message)


@class_stats.register_fake
def _(x, labels, num_classes):
    stats = x.new_empty(num_classes, x.shape[1]) if x.dim() > 1 else x.new_empty(num_classes)
    return stats, torch.empty_like(stats), x.new_empty(num_classes, dtype=torch.int64)


def _class_stats_setup(ctx, inputs, output):
    x, labels, num_classes = inputs
    mean, _, counts = output
    ctx.save_for_backward(x, labels, counts, mean)


def _by_sample(table: Tensor, labels: Tensor, x: Tensor) -> Tensor:
    """Gather a per-class (K, F) table to broadcast against x (B, F, ...)."""
    picked = table[labels]
    return picked.reshape(*picked.shape, *([1] * (x.dim() - picked.dim())))


def _class_stats_backward(ctx, grad_mean, grad_var, _grad_counts):
    x, labels, counts, mean = ctx.saved_tensors
    per_class = counts.clamp(min=1).to(x.dtype).reshape(-1, *([1] * (mean.dim() - 1)))
    # mean_c = sum x / n_c; var_c = sum (x - mean_c)^2 / n_c, whose gradient through mean_c is zero.
    dx = _by_sample(grad_mean / per_class, labels, x)
    dx = dx + _by_sample(2 * grad_var / per_class, labels, x) * (x - _by_sample(mean, labels, x))
    return dx.expand_as(x).contiguous(), None, None


class_stats_eager = eager(class_stats, _class_stats_setup, _class_stats_backward)
