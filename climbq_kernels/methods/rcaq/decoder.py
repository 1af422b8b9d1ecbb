"""The fusion decoder of RCAQ (algorithms.md §5): one codeword in R^d per joint index, and the
decoder step that refits it with the encoders fixed."""

from __future__ import annotations

import torch
from torch import Tensor

from ...reference.rcaq import decision, rcaq_point_loss, reflect


def representable(c: Tensor, dtype: torch.dtype) -> Tensor:
    """c rounded to the working dtype and held in float64: the codebook the kernels see is the
    one every loss is computed with."""
    return c.to(dtype).double()


def cell_losses(x: Tensor, labels: Tensor, m: Tensor, codebook: Tensor, w: Tensor, gamma: float) -> Tensor:
    """Sum of the loss over the points of each cell, (M,) float64, for codebook (M, d)."""
    loss = rcaq_point_loss(x, labels, codebook[m], decision(codebook, w)[m], gamma)
    return torch.zeros(codebook.shape[0], dtype=torch.float64).index_add_(0, m, loss)


def marginal_codewords(x: Tensor, q: Tensor, rates: tuple[int, ...], prototypes: list[Tensor],
                       lookup: list[Tensor]) -> list[Tensor]:
    """Per sensor i, a value for each index in [0, R_i): the mean of the sensor's training values
    sent to it, else the mean of the prototypes its table sends to it, else the sensor's mean."""
    out = []
    for i, rate in enumerate(rates):
        values = x[:, i]
        counts = torch.bincount(q[:, i], minlength=rate).double()
        sums = torch.zeros(rate, dtype=torch.float64).index_add_(0, q[:, i], values)
        proto_counts = torch.bincount(lookup[i], minlength=rate).double()
        proto_sums = torch.zeros(rate, dtype=torch.float64).index_add_(0, lookup[i], prototypes[i])
        level = torch.full((rate,), float(values.mean()), dtype=torch.float64)
        level = torch.where(proto_counts > 0, proto_sums / proto_counts.clamp(min=1), level)
        out.append(torch.where(counts > 0, sums / counts.clamp(min=1), level))
    return out


def refill(codebook: Tensor, empty: Tensor, levels: list[Tensor], rates: tuple[int, ...]) -> Tensor:
    """Codewords of empty cells set to the product of the sensors' marginal levels of the cell's
    indices: a deterministic guess that the encoder step can use when it moves points there."""
    grids = torch.meshgrid(*levels, indexing="ij")
    product = torch.stack([g.reshape(-1) for g in grids], dim=1)
    return torch.where(empty[:, None], product, codebook)


def decoder_step(x: Tensor, labels: Tensor, m: Tensor, q: Tensor, w: Tensor, gamma: float, rates: tuple[int, ...],
                 prototypes: list[Tensor], lookup: list[Tensor], dtype: torch.dtype,
                 current: Tensor | None = None) -> Tensor:
    """The new codebook (M, d) float64 (values representable in `dtype`).

    Each non-empty cell takes, among its mean, the mean reflected across the decision boundary
    (c - 1.001 (c . w) w) and, when `current` is given, its current codeword, the one of least
    loss on the cell (ties: mean, then reflection, then current). Keeping the current codeword
    as a candidate makes the step never increase the objective; the two published candidates
    alone do not guarantee that when gamma > 0 (the mean need not be best for the 0-1 term).
    Empty cells are refilled by `refill`. x: (N, d) float64 of working-dtype values.
    """
    num_codewords = 1
    for r in rates:
        num_codewords *= r
    counts = torch.bincount(m, minlength=num_codewords)
    sums = torch.zeros(num_codewords, x.shape[1], dtype=torch.float64).index_add_(0, m, x)
    mean = sums / counts.clamp(min=1)[:, None]
    candidates = [representable(mean, dtype), representable(reflect(mean, w), dtype)]
    if current is not None:
        candidates.append(current)
    losses = torch.stack([cell_losses(x, labels, m, c, w, gamma) for c in candidates])  # (K, M)
    best = losses.argmin(0)  # first of equal minima: the order of `candidates`
    codebook = torch.stack(candidates)[best, torch.arange(num_codewords)]
    levels = [representable(v, dtype) for v in marginal_codewords(x, q, rates, prototypes, lookup)]
    return refill(codebook, counts == 0, levels, rates)
