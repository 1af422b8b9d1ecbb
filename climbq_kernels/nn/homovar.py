"""`HomoVarLoss`: the HomoVar loss (algorithms.md §1c) as a module holding the dataset class counts."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..batch_labels import check_sync
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
    sync, process_group: all-reduce the class statistics of a batch split over processes, as
    `homovar_loss` says (default: whenever torch.distributed runs more than one process).

    forward(features (B, D), logits (B, K), labels (B,)) -> 0-d loss in logits' dtype,
    differentiable in logits only (the class weights carry no gradient). K must equal
    len(class_counts): ValueError naming `class_counts` otherwise. Sync-free on every device
    and traced whole by torch.compile(fullgraph=True), as `homovar_loss` says (its counts,
    already on the device, are not read on the host per call).
    """

    class_counts: Tensor

    def __init__(self, class_counts, alpha: float = HOMOVAR_ALPHA, beta0: float = HOMOVAR_BETA0, *,
                 sync: bool | None = None, process_group=None):
        super().__init__()
        self.sync, self.process_group = check_sync(sync), process_group
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

    def attach(self, model: nn.Module, layer: str | None = None) -> HomoVarLoss:
        """Capture the pooled penultimate features from `model` on each forward, and return self.

        A forward pre-hook on `layer` (a module name; default: the last nn.Linear, or QuantLinear,
        in module order, i.e. the classifier) keeps its input, flattened to (B, D), so the loss
        can be called as `homovar(logits, labels)` after `logits = model(x)`. Attach once; the
        hook is removed by `detach()`.
        """
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if layer is None:
            linears = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
            if not linears:
                raise ValueError("model has no nn.Linear classifier: name the layer whose input is the features")
            layer = linears[-1]
        try:
            target = model.get_submodule(layer)
        except AttributeError:
            raise ValueError(f"layer must name a module of the model, got {layer!r}") from None
        self.detach()
        self._hook = target.register_forward_pre_hook(self._capture)
        return self

    def detach(self) -> None:
        """Remove the hook `attach` installed (no-op without one)."""
        hook = self.__dict__.pop("_hook", None)
        if hook is not None:
            hook.remove()
        self.__dict__.pop("_features", None)

    def _capture(self, module: nn.Module, inputs: tuple) -> None:
        self.__dict__["_features"] = inputs[0].flatten(1)

    def forward(self, *args: Tensor) -> Tensor:
        """forward(features, logits, labels), or forward(logits, labels) after `attach`."""
        if len(args) == 2:
            features = self.__dict__.get("_features")
            if features is None:
                raise RuntimeError("HomoVarLoss(logits, labels) needs the features: call attach(model) and run the "
                                   "model first, or pass forward(features, logits, labels)")
            args = (features, *args)
        if len(args) != 3:
            raise TypeError(f"HomoVarLoss takes (features, logits, labels) or (logits, labels), got {len(args)} "
                            "arguments")
        return self._loss(*args)

    def _loss(self, features: Tensor, logits: Tensor, labels: Tensor) -> Tensor:
        if isinstance(logits, Tensor) and logits.dim() == 2 and logits.shape[1] != self.num_classes:
            raise ValueError(f"class_counts has {self.num_classes} classes but logits has {logits.shape[1]} "
                             f"(logits must be (B, {self.num_classes}))")
        return homovar_loss(features, logits, labels, self.class_counts, self.alpha, self.beta0, sync=self.sync,
                            process_group=self.process_group)

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
