"""Per-class (segmented) statistics of a batch (algorithms.md §1c steps 1-3, §4a): the reference.

Segmented reductions by label with `index_add_`: memory O(B * D + K * D), never a (B, K, D)
one-hot expansion, no host synchronisation beyond the label range check.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..checks import check_labels, check_tensor
from .climbq import class_counts


def segment_sum(values: Tensor, labels: Tensor, num_segments: int) -> Tensor:
    """Sum the rows of `values` (B, ...) by segment: out[k] = sum_{i : labels_i = k} values[i].

    Shape (num_segments, ...), values' dtype. labels: (B,) integer, already range-checked.
    """
    out = values.new_zeros((num_segments, *values.shape[1:]))
    return out.index_add_(0, labels.to(torch.int64), values)


def class_stats(x: Tensor, labels: Tensor, num_classes: int) -> tuple[Tensor, Tensor, Tensor]:
    """Per-class mean and biased variance of a batch: (counts, mean, var) (algorithms.md §1c, §4a).

    x (B, D): per class and feature; mean, var (K, D), counts (K,) = samples per class.
    x (B, C, *spatial) (e.g. (B, C, H, W)): per class and channel, reducing over the samples
    of the class and all spatial positions (what BatchNorm reduces); mean, var (K, C),
    counts = samples * prod(spatial).
    x (B,): one value per sample; mean, var (K,).

    var = sum (x - mean_c)^2 / counts_c (population variance, like BatchNorm's batch
    statistics), two-pass for accuracy. Classes absent from the batch get count 0, mean 0 and
    var 0; callers mask with `counts`. mean, var in x's dtype; counts int64.
    labels: (B,) integer in [0, K), K = num_classes.
    """
    check_tensor("x", x, floating=True)
    if x.dim() < 1:
        raise ValueError("x must have a batch dimension: (B,), (B, D) or (B, C, *spatial), got a 0-d tensor")
    check_labels(labels, x.shape[0], num_classes)
    batch = x.shape[0]
    features = x.shape[1] if x.dim() > 1 else 1
    positions = math.prod(x.shape[2:])
    x3 = x.reshape(batch, features, positions)  # (B, F, S): S spatial positions per feature
    counts = class_counts(labels, num_classes) * positions
    denom = counts.clamp_min(1).to(x.dtype).unsqueeze(1)
    mean = segment_sum(x3.sum(dim=2), labels, num_classes) / denom
    deviation = x3 - mean[labels.to(torch.int64)].unsqueeze(2)
    var = segment_sum((deviation * deviation).sum(dim=2), labels, num_classes) / denom
    if x.dim() == 1:
        mean, var = mean.squeeze(1), var.squeeze(1)
    return counts, mean, var
