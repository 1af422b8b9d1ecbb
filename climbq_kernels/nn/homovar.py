"""`HomoVarLoss`: the HomoVar loss (algorithms.md §1c) as a module holding the dataset class counts."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..constants import HOMOVAR_ALPHA, HOMOVAR_BETA0
from ..losses import homovar_loss
from ..reference._args import check_fraction
from ..reference.homovar import check_class_counts


class HomoVarLoss(nn.Module):
    """loss = `climbq_kernels.homovar_loss(features, logits, labels, class_counts, alpha, beta0)`.

    class_counts: the dataset class sizes n (K,), a real tensor or a sequence of numbers whose
    values are positive whole numbers (checked once here: ValueError naming `class_counts`
    otherwise); kept as the persistent int64 buffer `class_counts`, so it follows the module
    across devices (`.to`, `.cuda`) and round-trips through `state_dict` (a loaded state must
    hold K positive whole counts too). alpha, beta0 in (0, 1): the significance of the
    homogeneity test and the base of the class-balanced weights (algorithms.md §1c steps 4, 6).

    forward(features (B, D), logits (B, K), labels (B,)) -> 0-d loss in logits' dtype,
    differentiable in logits only (the class weights carry no gradient). K must equal
    len(class_counts): ValueError naming `class_counts` otherwise. Sync-free on every device
    and traced whole by torch.compile(fullgraph=True), as `homovar_loss` says (its counts,
    already on the device, are not read on the host per call).
    """

    class_counts: Tensor

    def __init__(self, class_counts, alpha: float = HOMOVAR_ALPHA, beta0: float = HOMOVAR_BETA0):
        super().__init__()
        device = class_counts.device if isinstance(class_counts, Tensor) else torch.device("cpu")
        counts = check_class_counts(class_counts, device)
        if counts.device.type != "cpu":  # a GPU tensor's values are not read per call: read them once here
            check_class_counts(counts.cpu(), device)
        self.register_buffer("class_counts", counts.clone())
        self.alpha = check_fraction("alpha", alpha)
        self.beta0 = check_fraction("beta0", beta0)

    @property
    def num_classes(self) -> int:
        return self.class_counts.numel()

    def forward(self, features: Tensor, logits: Tensor, labels: Tensor) -> Tensor:
        if isinstance(logits, Tensor) and logits.dim() == 2 and logits.shape[1] != self.num_classes:
            raise ValueError(f"class_counts has {self.num_classes} classes but logits has {logits.shape[1]} "
                             f"(logits must be (B, {self.num_classes}))")
        return homovar_loss(features, logits, labels, self.class_counts, self.alpha, self.beta0)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        counts = state_dict.get(prefix + "class_counts")
        if isinstance(counts, Tensor):
            if counts.shape != self.class_counts.shape:
                raise ValueError(f"class_counts in the state dict has shape {tuple(counts.shape)}, this module "
                                 f"has {tuple(self.class_counts.shape)} (one count per class)")
            check_class_counts(counts.cpu(), counts.device)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def extra_repr(self) -> str:
        counts = self.class_counts
        shown = counts.tolist() if counts.numel() <= 8 else f"[{int(counts.min())}..{int(counts.max())}]"
        return f"num_classes={self.num_classes}, class_counts={shown}, alpha={self.alpha}, beta0={self.beta0}"
