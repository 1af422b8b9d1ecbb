"""ACS per-sample scores (algorithms.md §2), the oracle the kernels are tested against.

    EVS_i = || softmax(z_q,i) - onehot(y_i) ||_2          (error vector score)
    DS_i  = || softmax(z_q,i) - softmax(z_fp,i) ||_2       (disagreement score)

z_q, z_fp: (B, K) logits of the quantized and the full-precision model; y: (B,) integer labels
in [0, K). Computed in the logits' dtype (float64 for the oracle), returned as (B,) in that
dtype. Scores carry no gradient (ACS scores samples, it does not train through them): the
result is computed from detached logits. A row with a NaN (or +inf, or all -inf) logit gets a
NaN score, as torch.softmax gives for it.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..checks import check_same_device, check_tensor

__all__ = ["disagreement_score", "error_vector_score"]


def _check_logits(name: str, logits) -> Tensor:
    check_tensor(name, logits, floating=True)
    if logits.dim() != 2:
        raise ValueError(f"{name} must have shape (B, K), got {tuple(logits.shape)}")
    return logits


def error_vector_score(logits: Tensor, labels: Tensor) -> Tensor:
    """EVS = ||softmax(logits) - onehot(labels)||_2 per row: (B, K), (B,) -> (B,) in logits' dtype."""
    _check_logits("logits", logits)
    check_tensor("labels", labels)
    if labels.dtype.is_floating_point or labels.dtype == torch.bool or labels.is_complex():
        raise TypeError(f"labels must be an integer tensor (int64 preferred), got dtype {labels.dtype}")
    if labels.shape != logits.shape[:1]:
        raise ValueError(f"labels must have shape ({logits.shape[0]},) to match logits, got {tuple(labels.shape)}")
    check_same_device(logits=logits, labels=labels)
    k = logits.shape[1]
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= k):
        raise ValueError(f"labels must lie in [0, {k}), got values in [{int(labels.min())}, {int(labels.max())}]")
    p = torch.softmax(logits.detach(), dim=1)
    onehot = torch.nn.functional.one_hot(labels.long(), k).to(p.dtype)
    return torch.linalg.vector_norm(p - onehot, dim=1)


def disagreement_score(logits_q: Tensor, logits_fp: Tensor) -> Tensor:
    """DS = ||softmax(logits_q) - softmax(logits_fp)||_2 per row: two (B, K) -> (B,) in their dtype."""
    _check_logits("logits_q", logits_q)
    _check_logits("logits_fp", logits_fp)
    if logits_fp.shape != logits_q.shape:
        raise ValueError(f"logits_fp must have logits_q's shape {tuple(logits_q.shape)}, got {tuple(logits_fp.shape)}")
    if logits_fp.dtype != logits_q.dtype:
        raise TypeError(f"logits_fp must have logits_q's dtype {logits_q.dtype}, got {logits_fp.dtype}")
    check_same_device(logits_q=logits_q, logits_fp=logits_fp)
    diff = torch.softmax(logits_q.detach(), dim=1) - torch.softmax(logits_fp.detach(), dim=1)
    return torch.linalg.vector_norm(diff, dim=1)
