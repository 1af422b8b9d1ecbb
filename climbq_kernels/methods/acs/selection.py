"""Coreset selection from per-sample scores (algorithms.md §2).

Per class (the paper's mode): keep the `round(f * n_c)` highest-scoring samples of each class c
with n_c samples, at least one of every class present. Global: the `max(1, round(f * N))`
highest scores overall. `round` is Python's (half to even, the spec's rint). Ties go to the
lower index (a stable sort), so a selection is a pure function of the scores.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ...checks import check_tensor

__all__ = ["check_coreset_fraction", "coreset_size", "select_coreset"]


def check_coreset_fraction(fraction) -> float:
    """Require a number in (0, 1]: the share of the training set kept each epoch."""
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)):
        raise TypeError(f"fraction must be a number in (0, 1], got {type(fraction).__name__}")
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must lie in (0, 1], got {fraction!r}")
    return float(fraction)


def _check_labels(labels, n: int, num_classes: int | None) -> Tensor:
    check_tensor("labels", labels)
    if labels.dtype.is_floating_point or labels.dtype == torch.bool or labels.is_complex():
        raise TypeError(f"labels must be an integer tensor, got dtype {labels.dtype}")
    if labels.shape != (n,):
        raise ValueError(f"labels must have shape ({n},) to match scores, got {tuple(labels.shape)}")
    if n and int(labels.min()) < 0:
        raise ValueError(f"labels must be >= 0, got {int(labels.min())}")
    if num_classes is not None:
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be an int >= 1, got {num_classes!r}")
        if n and int(labels.max()) >= num_classes:
            raise ValueError(f"labels must lie in [0, {num_classes}), got {int(labels.max())}")
        counts = torch.bincount(labels.long().cpu(), minlength=num_classes)
        empty = torch.nonzero(counts == 0).flatten().tolist()
        if empty:
            raise ValueError(f"labels: class {empty[0]} of num_classes={num_classes} has no samples "
                             f"(empty classes: {empty}); pass the classes present or drop num_classes")
    return labels.long()


def coreset_size(labels: Tensor, fraction: float, per_class: bool = True) -> int:
    """How many samples `select_coreset` keeps for these labels (it depends on the labels alone)."""
    fraction = check_coreset_fraction(fraction)
    if not per_class:
        return max(1, round(fraction * labels.numel())) if labels.numel() else 0
    counts = torch.bincount(labels.long().cpu())
    return sum(max(1, round(fraction * n)) for n in counts.tolist() if n)


def select_coreset(scores: Tensor, labels: Tensor, fraction: float, per_class: bool = True,
                   num_classes: int | None = None) -> Tensor:
    """Indices (sorted, int64) of the coreset: the highest `scores` per class or overall.

    scores: (N,) floating, one per training sample; labels: (N,) integer class of each sample;
    fraction: f in (0, 1]; per_class: the paper's class-wise top `round(f * n_c)` (at least one
    per present class) when True, a global top `max(1, round(f * N))` when False; num_classes:
    when given, every class in [0, num_classes) must have a sample (ValueError naming the empty
    class otherwise). ValueError for NaN scores (a NaN input or a diverged model), naming the index.
    """
    fraction = check_coreset_fraction(fraction)
    check_tensor("scores", scores, floating=True)
    if scores.dim() != 1:
        raise ValueError(f"scores must have shape (N,), got {tuple(scores.shape)}")
    labels = _check_labels(labels, scores.shape[0], num_classes)
    nan = torch.isnan(scores)
    if nan.any():
        where = torch.nonzero(nan).flatten()
        raise ValueError(f"scores holds NaN at {where.numel()} sample(s), first at index {int(where[0])}: "
                         "their logits were not finite (NaN in the data or a diverged model)")
    scores, labels = scores.detach().cpu().double(), labels.cpu()
    if not per_class:
        order = torch.sort(scores, descending=True, stable=True).indices
        return torch.sort(order[:coreset_size(labels, fraction, per_class=False)]).values
    picked = []
    for c in torch.unique(labels).tolist():
        members = torch.nonzero(labels == c).flatten()
        keep = max(1, round(fraction * members.numel()))
        order = torch.sort(scores[members], descending=True, stable=True).indices
        picked.append(members[order[:keep]])
    return torch.sort(torch.cat(picked)).values if picked else torch.empty(0, dtype=torch.long)
