"""HomoVar loss (SPEC 1c): class-balanced BCE whose class weights keep class variances homogeneous."""

from __future__ import annotations

from torch import Tensor

from . import reference
from .checks import check_labels, check_same_device, check_tensor, raise_pending_label_errors
from .constants import HOMOVAR_ALPHA, HOMOVAR_BETA0


def homovar_loss(features: Tensor, logits: Tensor, labels: Tensor, class_counts: Tensor,
                 alpha: float = HOMOVAR_ALPHA, beta0: float = HOMOVAR_BETA0) -> Tensor:
    """Mean over (sample, class) of w_{y_i} * BCE(softmax(logits)_ic, onehot_ic).

    features (B, D) pooled penultimate features, logits (B, K), labels (B,) in [0, K),
    class_counts (K,) positive dataset class sizes. The class weights w (SPEC 1c steps 1-7)
    come from a Levene-style homogeneity test on the batch; they are computed without
    gradient, so the loss is differentiable in `logits` only. Steps 1-3 are segmented
    reductions by label: no (B, K, D) tensor is built.
    """
    check_tensor("features", features, floating=True)
    check_tensor("logits", logits, floating=True)
    check_tensor("class_counts", class_counts)
    if features.dim() != 2 or logits.dim() != 2 or features.shape[0] != logits.shape[0]:
        raise ValueError(f"features must be (B, D) and logits (B, K) with one B, got {tuple(features.shape)} "
                         f"and {tuple(logits.shape)}")
    num_classes = logits.shape[1]
    if class_counts.shape != (num_classes,):
        raise ValueError(f"class_counts must have shape ({num_classes},) to match logits, got {tuple(class_counts.shape)}")
    raise_pending_label_errors()
    labels = check_labels(labels, features.shape[0], num_classes)
    check_same_device(features=features, logits=logits, labels=labels, class_counts=class_counts)
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    if not 0 < beta0 < 1:
        raise ValueError(f"beta0 must be in (0, 1), got {beta0}")
    return reference.homovar_loss(features, logits, labels.long(), class_counts, alpha, beta0)
