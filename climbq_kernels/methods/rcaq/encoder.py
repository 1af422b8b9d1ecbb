"""The sensors' encoders of RCAQ (algorithms.md §5): prototypes on each line, proto-regions, and
the lookup tables from prototype to index that the exact encoder step trains.

Sensor i holds P_i sorted prototypes; the proto-region of prototype p is the set of values
nearer to it than to any other prototype, the interval (mid_{p-1}, mid_p] between the midpoints
of its neighbours (a value on a midpoint goes to the lower prototype). Its table sends each
prototype to an index in [0, R_i); an index may own several separate proto-regions.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ...ops.rcaq import rcaq_encoder_step


def fit_prototypes(values: Tensor, count: int) -> Tensor:
    """Up to `count` sorted prototypes for one sensor's training values (N,): the values at the
    centres of `count` equal-count bins of the sorted data, duplicates dropped (so a feature with
    fewer distinct values gets fewer prototypes). Fixed during training: the encoder step trains
    the tables, never the prototypes."""
    ordered = values.sort().values
    n = ordered.shape[0]
    picks = ((torch.arange(count, dtype=torch.float64) + 0.5) * n / count).long().clamp(max=n - 1)
    return torch.unique(ordered[picks])


def assign_prototypes(values: Tensor, prototypes: Tensor) -> Tensor:
    """Index (N,) int64 of each value's nearest prototype; a value on a midpoint goes to the
    lower prototype (bucketize with right=False puts a boundary value in the lower bucket)."""
    midpoints = (prototypes[1:] + prototypes[:-1]) / 2
    return torch.bucketize(values.contiguous(), midpoints, right=False)


def initial_lookup(num_prototypes: int, rate: int) -> Tensor:
    """Contiguous equal-count cells to start from: prototype p -> floor(p R / P)."""
    return torch.arange(num_prototypes, dtype=torch.int64) * rate // num_prototypes


def strides(rates: tuple[int, ...]) -> list[int]:
    """Row-major strides of the joint index m = sum_i q_i stride_i (sensor 0 most significant)."""
    out, acc = [], 1
    for r in reversed(rates):
        out.append(acc)
        acc *= r
    return out[::-1]


def sensor_indices(proto_index: list[Tensor], lookup: list[Tensor]) -> Tensor:
    """Each point's index on each sensor, (N, d) int64, through the sensors' tables."""
    return torch.stack([table[p] for table, p in zip(lookup, proto_index, strict=True)], dim=1)


def joint_index(q: Tensor, rates: tuple[int, ...]) -> Tensor:
    """Joint index (N,) of per-sensor indices q (N, d): row-major over rates."""
    return (q * torch.tensor(strides(rates), dtype=torch.int64)).sum(1)


def encoder_step(x: Tensor, labels: Tensor, codebook: Tensor, codeword_labels: Tensor, proto_index: list[Tensor],
                 lookup: list[Tensor], rates: tuple[int, ...], gamma: float) -> tuple[list[Tensor], bool]:
    """One exact encoder sweep: sensor by sensor, every index for every prototype with the
    codebook and the other sensors' tables fixed (each sensor sees the tables already updated in
    this sweep). x, codebook: the working dtype; labels int64. Returns (new tables, whether any
    entry changed). The objective cannot increase: each prototype's choice includes its current
    index and the cost of one prototype's points depends on its own entry only."""
    lookup = [t.clone() for t in lookup]
    q = sensor_indices(proto_index, lookup)
    m = joint_index(q, rates)
    changed = False
    for i, stride in enumerate(strides(rates)):
        base = m - q[:, i] * stride
        _, new = rcaq_encoder_step(x, labels, codebook, codeword_labels, proto_index[i], base, lookup[i], stride,
                                   rates[i], gamma)
        if not torch.equal(new, lookup[i]):
            changed = True
            lookup[i] = new
            q[:, i] = new[proto_index[i]]
            m = base + q[:, i] * stride
    return lookup, changed
