"""The dynamic-programming baseline on the line (algorithms.md §5) and the distributed quantizer
built from it, for comparison with RCAQ.

What `dp_baseline` optimises, exactly: given scalar values x_1..x_N with class labels y_n, split
the sorted values into at most k contiguous, non-empty cells (a cut may not separate equal
values) to minimise

    sum over cells C of (1 - gamma) sum_{n in C} (x_n - mean_C)^2 + gamma (|C| - max_y |{n in C: y_n = y}|),

each cell reconstructing to its mean and predicting its majority class. At gamma = 1 this is the
least number of misclassified points of a k-cell quantizer on the line; at gamma = 0, optimal
1-D k-means. The cell costs come from prefix sums (O(1) per cell and class), so the program costs
O(k N^2) time and O(N^2) memory: O(N^3) when k grows in proportion to N.

RCAQ's cells are not contiguous and its objective couples the sensors through the fusion
decoder; the DP is exact for one sensor's scalar problem only. `DPQuantizer` applies it to each
sensor separately (labels sign(x . w) from all features) and fits RCAQ's decoder once on the
product cells: a per-sensor-optimal baseline, not a joint optimum.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ...reference.rcaq import decision, rcaq_point_loss
from . import _checks
from .decoder import decoder_step, representable
from .encoder import joint_index


@dataclass(frozen=True)
class DPResult:
    """thresholds: sorted float64 (c - 1,) between the c cells used (a value equal to a threshold
    goes to the lower cell); cost: the minimised objective (a sum, not a mean); cells: c <= k."""

    thresholds: Tensor
    cost: float
    cells: int


def cell_costs(x_sorted: Tensor, classes: Tensor, gamma: float) -> Tensor:
    """G (N + 1, N + 1) float64: G[l, i] = cost of the cell holding sorted points l..i-1, inf
    where l >= i or where a cut at l would split equal values."""
    n = x_sorted.shape[0]
    centred = x_sorted - x_sorted.mean()
    s1 = torch.cat([centred.new_zeros(1), centred.cumsum(0)])
    s2 = torch.cat([centred.new_zeros(1), (centred ** 2).cumsum(0)])
    size = torch.arange(n + 1, dtype=torch.float64)
    count = size[None, :] - size[:, None]  # (l, i) -> i - l
    positive = count > 0
    safe = torch.where(positive, count, torch.ones_like(count))
    sum1 = s1[None, :] - s1[:, None]
    sse = ((s2[None, :] - s2[:, None]) - sum1 ** 2 / safe).clamp(min=0)
    majority = torch.zeros_like(count)
    for c in range(int(classes.max()) + 1 if n else 0):
        prefix = torch.cat([count.new_zeros(1), (classes == c).double().cumsum(0)])
        majority = torch.maximum(majority, prefix[None, :] - prefix[:, None])
    cost = (1.0 - gamma) * sse + gamma * (count - majority)
    allowed = torch.ones(n + 1, dtype=torch.bool)
    allowed[1:n] = x_sorted[1:] != x_sorted[:-1]  # cells may start only where the value changes
    return torch.where(positive & allowed[:, None], cost, torch.full_like(cost, float("inf")))


def dp_baseline(x, labels, cells: int, gamma: float) -> DPResult:
    """Optimal partition of the line into at most `cells` contiguous cells (see the module
    docstring). x: (N,) real values; labels: (N,) integer classes (any values); N >= 1."""
    values = _checks.as_data("x", x, dim=1)
    if not isinstance(labels, Tensor):
        labels = torch.as_tensor(labels)
    if labels.dtype == torch.bool:
        labels = labels.to(torch.int64)
    if labels.is_floating_point() or labels.is_complex():
        raise TypeError(f"labels must be an integer tensor, got dtype {labels.dtype}")
    if labels.shape != values.shape:
        raise ValueError(f"labels must have x's shape {tuple(values.shape)}, got {tuple(labels.shape)}")
    cells = _checks.check_count("cells", cells)
    gamma = _checks.check_gamma(gamma)
    n = values.shape[0]
    if n == 0:
        raise ValueError("x must hold at least one value")
    order = values.argsort(stable=True)
    x_sorted = values[order]
    classes = torch.unique(labels.cpu(), return_inverse=True)[1][order]
    g = cell_costs(x_sorted, classes, gamma)
    best = g[0].clone()  # best[i]: least cost of points 0..i-1 in at most b cells
    back = []
    for _ in range(1, cells):
        candidates, split = (best[:, None] + g).min(0)
        fewer = best <= candidates  # ties: fewer cells
        back.append(torch.where(fewer, torch.full_like(split, -1), split))
        best = torch.where(fewer, best, candidates)
    cuts, i = [], n
    for step in reversed(back):
        split = int(step[i])
        if split >= 0:
            cuts.append(split)
            i = split
    cuts.sort()
    cut = torch.tensor(cuts, dtype=torch.int64)
    thresholds = (x_sorted[cut - 1] + x_sorted[cut]) / 2 if cuts else x_sorted.new_zeros(0)
    return DPResult(thresholds=thresholds, cost=float(best[n]), cells=len(cuts) + 1)


class DPQuantizer:
    """The DP baseline as a distributed quantizer: sensor i's cells are `dp_baseline(x[:, i],
    sign(x . w), rates[i], gamma)`, its index the cell; the fusion decoder is fitted once with
    RCAQ's decoder step (mean or reflected mean, empty cells refilled). Same API as `RCAQ`."""

    def __init__(self, rates, gamma: float, w, *, dtype: torch.dtype = torch.float32):
        self.rates = _checks.check_rates(rates)
        self.gamma = _checks.check_gamma(gamma)
        self.w = _checks.check_classifier(w, len(self.rates))
        self.dtype = dtype

    def _data(self, X) -> Tensor:
        x = _checks.as_data("X", X, dim=2)
        if x.shape[1] != len(self.rates):
            raise ValueError(f"X must have one column per sensor ({len(self.rates)}), got shape {tuple(x.shape)}")
        return representable(x, self.dtype)

    def _sensor_indices(self, x: Tensor) -> Tensor:
        cells = [torch.bucketize(x[:, i].contiguous(), t, right=False) for i, t in enumerate(self.thresholds_)]
        return torch.stack(cells, 1)

    def fit(self, X, y=None) -> DPQuantizer:
        x = self._data(X)
        labels = decision(x, self.w)
        self.thresholds_ = [dp_baseline(x[:, i], labels, r, self.gamma).thresholds for i, r in enumerate(self.rates)]
        q = self._sensor_indices(x)
        m = joint_index(q, self.rates)
        self._codebook64 = decoder_step(x, labels, m, q, self.w, self.gamma, self.rates,
                                        [x[:, i] for i in range(len(self.rates))],
                                        [q[:, i] for i in range(len(self.rates))], self.dtype)
        self.codebook_ = self._codebook64.to(self.dtype)
        return self

    def encode(self, X) -> Tensor:
        return joint_index(self._sensor_indices(self._data(X)), self.rates)

    def decode(self, m: Tensor) -> Tensor:
        return self.codebook_[m]

    def predict(self, X) -> Tensor:
        return decision(self.decode(self.encode(X)), self.w)

    def score(self, X, y=None) -> float:
        x = self._data(X)
        return float((self.predict(x) == decision(x, self.w)).double().mean())

    def zero_one_error(self, X) -> float:
        return 1.0 - self.score(X)

    def mse(self, X) -> float:
        x = self._data(X)
        return float(((x - self._codebook64[self.encode(x)]) ** 2).sum(1).mean())

    def objective(self, X) -> float:
        x = self._data(X)
        m = self.encode(x)
        c = self._codebook64
        return float(rcaq_point_loss(x, decision(x, self.w), c[m], decision(c, self.w)[m], self.gamma).mean())
