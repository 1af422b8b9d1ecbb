"""Scoring a whole training set for ACS (algorithms.md §2): one batched pass, both models in eval mode.

Every batch of the score loader goes through the quantized and the float model under
`torch.no_grad()`; the two logits feed the fused EVS and DS ops. The loader should yield the
un-augmented training samples in dataset order (no shuffle, no random crops): ACS scores how the
model sees the data, not a random view of it. Both models get their train / eval mode back
afterwards. The wall time of the pass is returned so that callers report it beside the training
time the coreset saves.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from tqdm import tqdm

from .scores import acs_beta, combine_scores, disagreement_score, error_vector_score

__all__ = ["DatasetScores", "score_dataset"]


@dataclass(frozen=True)
class DatasetScores:
    """ACS scores of every sample, in dataset order, on the CPU (float32)."""

    scores: Tensor
    """s = beta EVS + (1 - beta) DS, (N,)."""
    evs: Tensor
    ds: Tensor
    labels: Tensor
    """(N,) int64, as the loader gave them."""
    beta: float
    seconds: float
    """Wall time of the scoring pass."""


def _initialise_lazy_quantizers(model: nn.Module, x: Tensor) -> None:
    """Quantizers that take their range from their first training batch (LSQ activation steps,
    observers) and have not seen one yet: run them, alone in training mode, on `x`. Selection
    before the first QAT step (epoch 0) needs a quantized model; BatchNorm and the other layers stay
    in eval mode, so nothing but the quantizers' own initial range changes."""
    lazy = [m for m in model.modules() if getattr(m, "_needs_init", False)]
    if not lazy:
        return
    for m in lazy:
        m.train()
    try:
        model(x)
    finally:
        for m in lazy:
            m.eval()


def _batch(item, index: int) -> tuple[Tensor, Tensor]:
    if not isinstance(item, (tuple, list)) or len(item) < 2:
        raise TypeError(f"loader must yield (inputs, labels) pairs, got {type(item).__name__} for batch {index}")
    return item[0], item[1]


def score_dataset(model_q: nn.Module, model_fp: nn.Module, loader, *, epoch: int, epochs: int,
                  schedule: str = "cos", device: torch.device | str | None = None,
                  progress: bool = True) -> DatasetScores:
    """EVS, DS and the combined ACS score of every sample `loader` yields (algorithms.md §2).

    model_q: the model under QAT (any `quantize_` config); model_fp: the full-precision model of
    the same architecture; loader: an iterable of (inputs, labels) batches in dataset order.
    Quantizers still waiting for their first training batch (LSQ before any QAT step) take their
    initial range from the first scored batch, as their first training batch would set it.
    device: where the models run (default: the device of model_q's first parameter).
    ValueError when a batch holds NaN inputs (naming the sample), TypeError for a loader that
    yields something other than pairs.
    """
    beta = acs_beta(epoch, epochs, schedule)
    if device is None:
        first = next(model_q.parameters(), None)
        device = first.device if first is not None else torch.device("cpu")
    modes = (model_q.training, model_fp.training)
    model_q.eval()
    model_fp.eval()
    evs_parts, ds_parts, label_parts = [], [], []
    seen = 0
    start = time.perf_counter()
    try:
        with torch.no_grad():
            for index, item in enumerate(tqdm(loader, desc=f"ACS scoring (epoch {epoch})", unit="batch",
                                              leave=False, disable=not progress)):
                x, y = _batch(item, index)
                if x.is_floating_point():
                    bad = torch.isnan(x.reshape(x.shape[0], -1)).any(dim=1)
                    if bad.any():
                        raise ValueError(f"loader: inputs hold NaN at sample {seen + int(torch.nonzero(bad)[0])} "
                                         f"(batch {index}); ACS cannot score a sample it cannot see")
                x, y = x.to(device), y.to(device)
                if index == 0:
                    _initialise_lazy_quantizers(model_q, x)
                logits_q, logits_fp = model_q(x), model_fp(x)
                evs_parts.append(error_vector_score(logits_q, y).float().cpu())
                ds_parts.append(disagreement_score(logits_q, logits_fp).float().cpu())
                label_parts.append(y.long().cpu())
                seen += y.shape[0]
    finally:
        model_q.train(modes[0])
        model_fp.train(modes[1])
    if not label_parts:
        raise ValueError("loader yielded no batches: there is nothing to score")
    evs, ds = torch.cat(evs_parts), torch.cat(ds_parts)
    return DatasetScores(combine_scores(evs, ds, beta), evs, ds, torch.cat(label_parts), beta,
                         time.perf_counter() - start)
