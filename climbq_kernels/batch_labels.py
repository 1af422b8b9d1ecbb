"""The labels of the batch being trained on, handed to every ClimbQ quantizer of a forward pass.

ClimbQ's activation quantizer scales each sample by its class (algorithms.md §1a), so it needs
the batch labels, which a model's `forward(x)` never passes down. `class_labels(labels)` sets
them for the duration of a `with` block; every quantizer inside reads them from here. The
per-sample tables derived from the labels (the label histogram, the scale table gathered by
label) are computed once per batch and shared by every layer: `BatchLabels.per_sample_tables`
caches them per number of classes and dtype.

The state lives in a `contextvars.ContextVar`, so threads and asyncio tasks each see their own
labels. Nested blocks must agree on the batch size.

Data-parallel training (DDP): each process sees its own part of the batch, but the class-wise
scale belongs to the whole batch. When `torch.distributed` is initialised with more than one
process, the label histogram (a K-vector) and the class sums behind `sigma="class_std"` are
all-reduced across the process group, like SyncBatchNorm's statistics: every process then
quantizes with the tables of the concatenated batch. The samples themselves never travel.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

import torch
import torch.distributed as dist
from torch import Tensor

from . import reference
from .checks import check_labels, check_tensor, raise_pending_label_errors
from .ops import train as train_ops


def check_sync(sync) -> bool | None:
    """Require `sync` to be True, False or None (automatic)."""
    if sync is not None and not isinstance(sync, bool):
        raise TypeError(f"sync must be True, False or None (whenever torch.distributed runs), "
                        f"got {type(sync).__name__}")
    return sync


def distributed_group(process_group, sync: bool | None):
    """The process group to all-reduce class statistics over, or None for a single process."""
    check_sync(sync)
    if sync is False or not dist.is_available() or not dist.is_initialized():
        if sync:
            raise RuntimeError("class_labels(sync=True) needs torch.distributed to be initialised")
        return None
    group = process_group if process_group is not None else dist.group.WORLD
    return group if dist.get_world_size(group) > 1 else None


class BatchLabels:
    """One batch's labels (B,) and the per-sample tables derived from them, computed on first use."""

    def __init__(self, labels: Tensor, group=None):
        self.labels = labels
        self.group = group
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
        if key not in self._tables and train_ops.native_tables(self.labels, dtype):
            # The CPU op checks the range as it counts; CUDA labels are checked on the device first.
            labels = self.labels.long() if self.labels.is_cpu else self.checked(num_classes)
            self._tables[key] = train_ops.class_sigma_table(labels, num_classes,
                                                            self.all_reduce if self.group is not None else None)
        if key not in self._tables:
            labels = self.checked(num_classes)
            counts = self.all_reduce(reference.label_histogram(labels, num_classes))
            sigma = reference.class_sigma_from_counts(counts, dtype)[labels]
            self._tables[key] = (sigma, torch.zeros_like(sigma))
        return self._tables[key]


    def all_reduce(self, t: Tensor) -> Tensor:
        """Sum `t` over the process group (in place, a collective every process must join); the
        tensor unchanged in a single process."""
        if self.group is not None:
            dist.all_reduce(t, group=self.group)
        return t


_CURRENT: contextvars.ContextVar[BatchLabels | None] = contextvars.ContextVar("climbq_batch_labels", default=None)


@contextlib.contextmanager
def class_labels(labels: Tensor, *, sync: bool | None = None, process_group=None) -> Iterator[BatchLabels]:
    """Hand `labels` (B,) to every ClimbQ quantizer run inside the block.

    labels: a 1-D integer tensor on the model's device, one class index per sample of the
    batch. Nested blocks must use the same batch size (ValueError naming `labels` otherwise).
    sync: all-reduce class statistics over `process_group` (default: the world) so that every
    process uses the whole batch's tables; None (default) does so whenever torch.distributed is
    initialised with more than one process. Every process must then run the same quantizers.
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
    token = _CURRENT.set(BatchLabels(labels, distributed_group(process_group, sync)))
    try:
        yield _CURRENT.get()
    finally:
        _CURRENT.reset(token)


def current_batch_labels() -> BatchLabels | None:
    """The innermost `class_labels` block's batch, or None outside any block."""
    return _CURRENT.get()
