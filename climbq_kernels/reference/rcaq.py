"""Reference (oracle) of the RCAQ distributed quantizer's loss and encoder step (algorithms.md §5).

Everything here computes in float64 whatever the inputs' dtype: the encoder step compares sums
of losses and keeps the least, so its result must not depend on the precision or the order of
the summation (the kernels accumulate in float64 too). Labels are the classifier's decisions
`sign(x . w)` in {-1, 0, 1} as int64; a codeword's label is `sign(c . w)`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..checks import check_tensor
from ._args import check_int

REFLECTION = 1.001
"""algorithms.md §5: a codeword reflected across the decision boundary is c - 1.001 (c . w) w, a
little past the mirror image so that its label flips even after rounding."""


def _check_index(name: str, t, length: int) -> Tensor:
    check_tensor(name, t)
    if t.dtype != torch.int64:
        raise TypeError(f"{name} must be int64, got {t.dtype}")
    if t.shape != (length,):
        raise ValueError(f"{name} must have shape ({length},), got {tuple(t.shape)}")
    return t


def _check_gamma(gamma) -> float:
    if isinstance(gamma, bool) or not isinstance(gamma, (int, float)):
        raise TypeError(f"gamma must be a number, got {type(gamma).__name__}")
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"gamma must lie in [0, 1], got {gamma}")
    return float(gamma)


def decision(x: Tensor, w: Tensor) -> Tensor:
    """sign(x . w) as int64 in {-1, 0, 1}: x (N, d), w (d,); the products are summed in float64."""
    return (x.double() * w.double()).sum(-1).sign().to(torch.int64)


def reflect(c: Tensor, w: Tensor) -> Tensor:
    """c - 1.001 (c . w) w for unit-norm w, row by row, in float64: c (M, d) -> (M, d)."""
    c, w = c.double(), w.double()
    return c - REFLECTION * (c * w).sum(-1, keepdim=True) * w


def rcaq_point_loss(x: Tensor, labels: Tensor, c: Tensor, c_labels: Tensor, gamma: float) -> Tensor:
    """(1 - gamma) ||x - c||^2 + gamma [labels != c_labels] per row, float64.

    x, c: (..., d) of any floating dtype (compared after conversion to float64); labels, c_labels:
    int64 (...,) decisions of the classifier on x and on c.
    """
    squared = ((x.double() - c.double()) ** 2).sum(-1)
    wrong = (labels != c_labels).double()
    return (1.0 - gamma) * squared + gamma * wrong


def rcaq_encoder_step(x: Tensor, labels: Tensor, codebook: Tensor, codeword_labels: Tensor,
                      proto_index: Tensor, base_index: Tensor, lookup: Tensor, stride: int, rate: int,
                      gamma: float) -> tuple[Tensor, Tensor]:
    """One sensor's exact encoder step (algorithms.md §5): the cost of every index for every prototype.

    x: (N, d) floating; labels: int64 (N,) = sign(x . w); codebook: (M, d) of x's dtype;
    codeword_labels: int64 (M,) = sign(c . w); proto_index: int64 (N,) in [0, P), each point's
    prototype on this sensor; base_index: int64 (N,), the joint index without this sensor's term,
    so that index q sends point n to codeword base_index[n] + q * stride; lookup: int64 (P,) the
    current table. Returns (costs, new lookup):
    costs[p, q] = sum over points n of prototype p of (1 - gamma) ||x_n - c||^2
    + gamma [labels[n] != codeword_labels[m]] with m = base_index[n] + q * stride, float64 (P, rate);
    the new table holds, for each prototype with points, the lowest q of least cost (ties go to
    the lowest index); a prototype with no point keeps its entry.
    """
    check_tensor("x", x, floating=True)
    check_tensor("codebook", codebook, floating=True)
    if x.dim() != 2:
        raise ValueError(f"x must be (N, d), got shape {tuple(x.shape)}")
    if codebook.dim() != 2 or codebook.shape[1] != x.shape[1] or codebook.shape[0] < 1:
        raise ValueError(f"codebook must be (M, {x.shape[1]}) with M >= 1, got shape {tuple(codebook.shape)}")
    if codebook.dtype != x.dtype:
        raise TypeError(f"codebook must have x's dtype {x.dtype}, got {codebook.dtype}")
    n, m = x.shape[0], codebook.shape[0]
    _check_index("labels", labels, n)
    _check_index("codeword_labels", codeword_labels, m)
    _check_index("proto_index", proto_index, n)
    _check_index("base_index", base_index, n)
    check_tensor("lookup", lookup)
    if lookup.dim() != 1 or lookup.shape[0] < 1:
        raise ValueError(f"lookup must be (P,) with P >= 1, got shape {tuple(lookup.shape)}")
    _check_index("lookup", lookup, lookup.shape[0])
    check_int("stride", stride, 1)
    check_int("rate", rate, 1)
    gamma = _check_gamma(gamma)
    if not bool(torch.isfinite(x).all()):
        raise ValueError("x must be finite")
    if not bool(torch.isfinite(codebook).all()):
        raise ValueError("codebook must be finite")
    protos = lookup.shape[0]
    if n and not bool(((proto_index >= 0) & (proto_index < protos)).all()):
        raise ValueError(f"proto_index must lie in [0, {protos})")
    if n and not bool(((base_index >= 0) & (base_index + (rate - 1) * stride < m)).all()):
        raise ValueError(f"base_index + (rate - 1) * stride must lie in [0, {m})")

    candidates = base_index[:, None] + torch.arange(rate, device=x.device) * stride  # (N, rate)
    loss = rcaq_point_loss(x[:, None, :], labels[:, None], codebook[candidates], codeword_labels[candidates], gamma)
    costs = torch.zeros(protos, rate, dtype=torch.float64, device=x.device).index_add_(0, proto_index, loss)
    occupied = torch.zeros(protos, dtype=torch.bool, device=x.device)
    occupied[proto_index] = True
    # torch.argmin returns the first of equal minima: the lowest index.
    return costs, torch.where(occupied, costs.argmin(1), lookup)
