"""The labels of the batch being trained on, handed to every ClimbQ quantizer of a forward pass.

ClimbQ's activation quantizer scales each sample by its class (algorithms.md §1a), so it needs
the batch labels, which a model's `forward(x)` never passes down. `class_labels(labels)` sets
them for the duration of a `with` block; every quantizer inside reads them from here. The
per-sample tables derived from the labels (the label histogram, the scale table gathered by
label) are computed once per batch and shared by every layer: `BatchLabels.per_sample_tables`
caches them per number of classes and dtype.

The state lives in a `contextvars.ContextVar`, so threads and asyncio tasks each see their own
labels. Nested blocks must agree on the batch size.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

import torch
from torch import Tensor

from . import reference
from .checks import check_labels, check_tensor, raise_pending_label_errors


class BatchLabels:
    """One batch's labels (B,) and the per-sample tables derived from them, computed on first use."""

    def __init__(self, labels: Tensor):
        self.labels = labels
        self._checked: dict[int, Tensor] = {}
        self._tables: dict[tuple[int, torch.dtype], tuple[Tensor, Tensor]] = {}

    def checked(self, num_classes: int) -> Tensor:
        """The labels as int64, range-checked against `num_classes` once per batch (on the device
        for CUDA labels: see `checks.check_labels`)."""
        if num_classes not in self._checked:
            raise_pending_label_errors()
            self._checked[num_classes] = check_labels(self.labels, self.labels.shape[0], num_classes).long()
        return self._checked[num_classes]

    def per_sample_tables(self, num_classes: int, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """(sigma_i, mu_i), each (B,) in `dtype`: the default scale rule (algorithms.md §1a)
        gathered by label, and location 0."""
        key = (num_classes, dtype)
        if key not in self._tables:
            labels = self.checked(num_classes)
            sigma = reference.class_sigma(labels, num_classes, dtype=dtype)[labels]
            self._tables[key] = (sigma, torch.zeros_like(sigma))
        return self._tables[key]


_CURRENT: contextvars.ContextVar[BatchLabels | None] = contextvars.ContextVar("climbq_batch_labels", default=None)


@contextlib.contextmanager
def class_labels(labels: Tensor) -> Iterator[BatchLabels]:
    """Hand `labels` (B,) to every ClimbQ quantizer run inside the block.

    labels: a 1-D integer tensor on the model's device, one class index per sample of the
    batch. Nested blocks must use the same batch size (ValueError naming `labels` otherwise).
    """
    check_tensor("labels", labels)
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise TypeError(f"labels must be an integer tensor of class indices, got dtype {labels.dtype}")
    if labels.dim() != 1:
        raise ValueError(f"labels must be 1-D (B,), got shape {tuple(labels.shape)}")
    outer = _CURRENT.get()
    if outer is not None and outer.labels.shape != labels.shape:
        raise ValueError(f"labels of a nested class_labels block must match the outer batch size "
                         f"{outer.labels.shape[0]}, got {labels.shape[0]}")
    token = _CURRENT.set(BatchLabels(labels))
    try:
        yield _CURRENT.get()
    finally:
        _CURRENT.reset(token)


def current_batch_labels() -> BatchLabels | None:
    """The innermost `class_labels` block's batch, or None outside any block."""
    return _CURRENT.get()
