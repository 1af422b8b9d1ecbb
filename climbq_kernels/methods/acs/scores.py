"""ACS per-sample scores and their epoch schedule (algorithms.md §2).

    EVS_i = || softmax(f_q(x_i)) - onehot(y_i) ||_2           error vector score
    DS_i  = || softmax(f_q(x_i)) - softmax(f_fp(x_i)) ||_2     disagreement score
    s_i(t) = beta(t) EVS_i + (1 - beta(t)) DS_i,  beta(t) = cos(pi t / 2E)  ("cos", the paper)
                                                  or cos^2(pi t / 2E)       ("cos2", the authors' code)

Both scores lie in [0, sqrt(2)]. They rank samples and carry no gradient: the logits are
detached, the result never requires grad. A sample whose logits hold a NaN (or +inf) scores
NaN, never a finite number; `select_coreset` refuses NaN scores.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ...checks import check_labels, check_same_device, check_tensor
from ...ops import acs as acs_ops
from ...reference._args import check_int

__all__ = ["SCHEDULES", "acs_beta", "acs_score", "disagreement_score", "error_vector_score"]

SCHEDULES = ("cos", "cos2")
"""beta(t) schedules: "cos" = cos(pi t / 2E) as the paper writes it (default), "cos2" its square,
as the authors' code computes it."""


def _check_logits(name: str, logits) -> Tensor:
    check_tensor(name, logits, floating=True)
    if logits.dim() != 2:
        raise ValueError(f"{name} must have shape (B, K) (a batch of class logits), got {tuple(logits.shape)}")
    if logits.shape[1] < 1:
        raise ValueError(f"{name} must have at least one class column, got shape {tuple(logits.shape)}")
    return logits.detach()


def error_vector_score(logits_q: Tensor, labels: Tensor) -> Tensor:
    """EVS_i = ||softmax(logits_q,i) - onehot(labels_i)||_2 (algorithms.md §2).

    logits_q: (B, K) float32 / float16 / bfloat16 / float64 logits of the quantized model in eval
    mode; labels: (B,) integer in [0, K). Returns (B,) in logits_q's dtype, without gradient.
    TypeError / ValueError naming the argument for a bad dtype, shape or label.
    """
    logits_q = _check_logits("logits_q", logits_q)
    labels = check_labels(labels, logits_q.shape[0], logits_q.shape[1])
    check_same_device(logits_q=logits_q, labels=labels)
    return acs_ops.error_vector_score_eager(logits_q, labels.long())


def disagreement_score(logits_q: Tensor, logits_fp: Tensor) -> Tensor:
    """DS_i = ||softmax(logits_q,i) - softmax(logits_fp,i)||_2 (algorithms.md §2).

    logits_q, logits_fp: (B, K) logits of the quantized and the full-precision model (same shape;
    logits_fp is cast to logits_q's dtype). Returns (B,) in logits_q's dtype, without gradient.
    """
    logits_q = _check_logits("logits_q", logits_q)
    logits_fp = _check_logits("logits_fp", logits_fp)
    if logits_fp.shape != logits_q.shape:
        raise ValueError(f"logits_fp must have logits_q's shape {tuple(logits_q.shape)}, got {tuple(logits_fp.shape)}")
    check_same_device(logits_q=logits_q, logits_fp=logits_fp)
    return acs_ops.disagreement_score_eager(logits_q, logits_fp.to(logits_q.dtype))


def _check_epochs(epoch, epochs) -> None:
    check_int("epoch", epoch)
    check_int("epochs", epochs, minimum=1)
    if not 0 <= epoch <= epochs:
        raise ValueError(f"epoch must lie in [0, epochs={epochs}], got {epoch}")


def acs_beta(epoch: int, epochs: int, schedule: str = "cos") -> float:
    """beta(t) of algorithms.md §2: 1 at t = 0 (pure EVS), 0 at t = E (pure DS).

    epoch: t, the 0-based index of the epoch being selected for; epochs: E, the training length.
    A loop over epochs 0..E-1 ends just short of pure DS, as in the paper's formula.
    """
    _check_epochs(epoch, epochs)
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    # cos(pi / 2) is 6e-17 in floating point: the last epoch is pure DS exactly.
    beta = math.cos(math.pi * epoch / (2 * epochs)) if epoch < epochs else 0.0
    return beta * beta if schedule == "cos2" else beta


def acs_score(logits_q: Tensor, logits_fp: Tensor, labels: Tensor, epoch: int, epochs: int,
              schedule: str = "cos") -> Tensor:
    """s = beta(t) EVS + (1 - beta(t)) DS per sample (algorithms.md §2), (B,) in logits_q's dtype.

    Both scores are computed (each one fused pass over its logits); a NaN in either logits row
    makes the sample's score NaN even where its weight is 0.
    """
    beta = acs_beta(epoch, epochs, schedule)
    evs = error_vector_score(logits_q, labels)
    ds = disagreement_score(logits_q, logits_fp)
    return combine_scores(evs, ds, beta)


def combine_scores(evs: Tensor, ds: Tensor, beta: float) -> Tensor:
    """beta EVS + (1 - beta) DS, computed in float32 at least (float64 stays float64)."""
    dtype = torch.promote_types(evs.dtype, torch.float32)
    return (beta * evs.to(dtype) + (1.0 - beta) * ds.to(dtype)).to(evs.dtype)
