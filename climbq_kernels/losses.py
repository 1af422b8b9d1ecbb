"""HomoVar loss (algorithms.md §1c): class-balanced BCE whose class weights keep class variances homogeneous."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

from . import ops, reference
from .batch_labels import distributed_group
from .checks import (
    check_labels,
    check_same_device,
    check_tensor,
    raise_pending_label_errors,
    unchecked_label_mask,
)
from .constants import HOMOVAR_ALPHA, HOMOVAR_BETA0
from .reference._args import check_fraction
from .reference.homovar import check_class_counts, weights_from_levene


def homovar_loss(features: Tensor, logits: Tensor, labels: Tensor, class_counts,
                 alpha: float = HOMOVAR_ALPHA, beta0: float = HOMOVAR_BETA0, *, sync: bool | None = None,
                 process_group=None) -> Tensor:
    """Mean over (sample, class) of w_{y_i} * BCE(softmax(logits)_ic, onehot_ic).

    features (B, D) pooled penultimate features, logits (B, K), labels (B,) in [0, K),
    class_counts (K,) dataset class sizes: a real tensor (any integer or floating dtype) on
    the logits' device, or a sequence of numbers, whose values are positive whole numbers
    (converted to int64; TypeError for another kind of thing, ValueError naming
    `class_counts` for a wrong shape or a value that is not a positive whole number). A
    sequence is copied to the device on every call; a tensor there (as `nn.HomoVarLoss`
    keeps it) costs nothing. The class weights w (algorithms.md §1c steps 1-7) come from a
    Levene-style homogeneity test on the batch; they are computed without gradient, so the
    loss is differentiable in `logits` only. 0-d result in logits' dtype.

    Steps 1-3 are segmented reductions by label through the `class_stats` op (so they run on
    the selected kernel backend): class means of the features, then class means of the Levene
    deviations z_i; no (B, K, D) tensor is built. Steps 3-8 reuse the reference's formulas
    (`reference.homovar_weights_from_levene`, `reference.homovar_bce`), which keep the number
    of present classes on the device (step 4's Fcrit comes from a table cached per
    (alpha, K, B)). The weights are computed in float32 for float16/bfloat16 features, else in
    the features' dtype.

    No host synchronisation on the training path, and under torch.compile(fullgraph=True) one
    graph: alpha, beta0 and B are specialised (a new value or batch size compiles anew), and
    the value checks on class_counts and labels that need a host read are skipped there (as
    during CUDA graph capture). A label out of range there makes the loss NaN; on CPU tensors
    the compiled code raises RuntimeError naming `labels` (`checks.unchecked_label_mask`).
    Eagerly it raises ValueError.

    Data-parallel training: with `sync` (default: whenever torch.distributed is initialised
    with more than one process, as `class_labels`), the class weights are those of the whole
    batch split over the processes of `process_group`: the class counts (K), feature sums
    (K x D), deviation sums (K) and the within-class sum of squares are all-reduced, never the
    samples. Every process must pass the same batch size B (the whole batch is B x processes).
    """
    check_tensor("features", features, floating=True)
    check_tensor("logits", logits, floating=True)
    if features.dim() != 2 or logits.dim() != 2 or features.shape[0] != logits.shape[0]:
        raise ValueError(f"features must be (B, D) and logits (B, K) with one B, got {tuple(features.shape)} "
                         f"and {tuple(logits.shape)}")
    num_classes = logits.shape[1]
    if isinstance(class_counts, Tensor):
        check_tensor("class_counts", class_counts)
        check_same_device(logits=logits, class_counts=class_counts)
    class_counts = check_class_counts(class_counts, logits.device)
    if class_counts.shape != (num_classes,):
        raise ValueError(f"class_counts must have shape ({num_classes},) to match logits, "
                         f"got {tuple(class_counts.shape)}")
    raise_pending_label_errors()
    checked = check_labels(labels, features.shape[0], num_classes)
    check_same_device(features=features, logits=logits, labels=labels)
    alpha, beta0 = check_fraction("alpha", alpha), check_fraction("beta0", beta0)
    in_range = unchecked_label_mask(labels, num_classes)
    labels = checked.long() if in_range is None else labels.long().clamp(0, num_classes - 1)
    with torch.no_grad():
        dtype = features.dtype if features.dtype in (torch.float32, torch.float64) else torch.float32
        f = features.detach().to(dtype)
        group = distributed_group(process_group, sync)
        if group is None:
            xbar, _, _ = ops.class_stats_eager(f, labels, num_classes)  # 1. class means (K, D)
            z = reference.levene_deviations(f, labels, xbar)  # 2. (B,)
            zbar_c, _, batch_counts = ops.class_stats_eager(z, labels, num_classes)  # 3. class means of z
            w = weights_from_levene(z, labels, zbar_c, batch_counts, class_counts.to(dtype), alpha, beta0)
        else:
            w = _split_batch_weights(f, labels, class_counts.to(dtype), alpha, beta0, group)
        # A NaN or Inf feature leaves the weights undefined (algorithms.md §1c): the loss says so
        # instead of the tests' comparisons turning it into finite fallback weights.
        w = w + f.sum() * 0
    loss = reference.homovar_bce(w, logits, labels)
    if in_range is not None:
        loss = torch.where(in_range.all(), loss, torch.nan)
    return loss


def _split_batch_weights(f: Tensor, labels: Tensor, n: Tensor, alpha: float, beta0: float, group) -> Tensor:
    """Steps 1-7 of algorithms.md §1c for a batch split over the processes of `group`."""
    num_classes = n.numel()
    m = reference.class_counts(labels, num_classes).to(f.dtype)
    sums = reference.segment_sum(f, labels, num_classes)
    for t in (m, sums):
        dist.all_reduce(t, group=group)
    xbar = sums / m.clamp_min(1).unsqueeze(1)  # 1. whole-batch class means
    z = reference.levene_deviations(f, labels, xbar)  # 2.
    z_sums = reference.segment_sum(z, labels, num_classes)
    dist.all_reduce(z_sums, group=group)
    zbar_c = z_sums / m.clamp_min(1)  # 3.
    within = ((z - zbar_c[labels]) ** 2).sum()
    dist.all_reduce(within, group=group)
    batch = f.shape[0] * dist.get_world_size(group)
    return weights_from_levene(z, labels, zbar_c, m, n, alpha, beta0, within=within, batch=batch)
