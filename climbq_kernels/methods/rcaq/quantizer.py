"""`RCAQ`: the regularized classification-aware distributed quantizer (algorithms.md §5) as a
scikit-learn-style estimator: `fit`, `encode`, `decode`, `predict`, `score`."""

from __future__ import annotations

import torch
from torch import Tensor
from tqdm import tqdm

from ...reference.rcaq import decision, rcaq_point_loss
from . import _checks
from .decoder import decoder_step, representable
from .encoder import (
    assign_prototypes,
    encoder_step,
    fit_prototypes,
    initial_lookup,
    joint_index,
    sensor_indices,
)

WORKING_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


class RCAQ:
    """d sensors quantize one scalar feature each to R_i indices; a fusion decoder maps the joint
    index to a codeword c_m in R^d; a fixed linear classifier w (normalised to unit norm) decides
    by sign(c_m . w). Training minimises the mean over the points of

        (1 - gamma) ||x - c_m||^2 + gamma [sign(x . w) != sign(c_m . w)]

    by alternating the decoder step and the exact encoder step until no table entry changes
    (or `max_iter` sweeps). gamma = 0 is Lloyd's MSE quantizer under the distributed structure;
    gamma = 1 minimises the classification disagreement alone.

    Args:
        rates: R_i, the number of indices of each sensor (ints >= 1); M = prod R_i codewords.
        gamma: weight of the 0-1 term, in [0, 1].
        w: the classifier's normal (d,); the boundary passes through the origin.
        prototypes: P, prototypes per sensor (fewer if a feature has fewer distinct values).
        max_iter: most encoder-decoder alternations.
        keep_codeword: let a cell keep its codeword when neither its mean nor the reflected mean
            has a lower loss; this makes every step non-increasing in the objective (False gives
            the two-candidate rule as published, for which only gamma = 0 is guaranteed).
        dtype: working dtype of the data and codebook handed to the encoder kernels (float32 runs
            the C++ kernel; float64 the reference). Losses are always summed in float64.
        progress: show a progress bar over alternations.

    Fitted attributes: prototypes_ (list of (P_i,) float64), lookup_ (list of (P_i,) int64),
    codebook_ ((M, d) in `dtype`), objective_history_ (objective after the initial decoder step
    and after each encoder and decoder step), n_iter_ (alternations run), converged_.
    """

    def __init__(self, rates, gamma: float, w, *, prototypes: int = 32, max_iter: int = 50,
                 keep_codeword: bool = True, dtype: torch.dtype = torch.float32, progress: bool = False):
        self.rates = _checks.check_rates(rates)
        self.gamma = _checks.check_gamma(gamma)
        self.w = _checks.check_classifier(w, len(self.rates))
        self.prototypes = _checks.check_count("prototypes", prototypes)
        self.max_iter = _checks.check_count("max_iter", max_iter, 0)
        if not isinstance(keep_codeword, bool):
            raise TypeError(f"keep_codeword must be a bool, got {type(keep_codeword).__name__}")
        self.keep_codeword = keep_codeword
        if dtype not in WORKING_DTYPES:
            raise TypeError(f"dtype must be one of {WORKING_DTYPES}, got {dtype}")
        self.dtype = dtype
        self.progress = bool(progress)

    # -- checks -------------------------------------------------------------------------------

    def _data(self, X, name: str = "X") -> Tensor:
        x = _checks.as_data(name, X, dim=2)
        if x.shape[1] != len(self.rates):
            raise ValueError(f"{name} must have one column per sensor ({len(self.rates)}, from rates), "
                             f"got shape {tuple(x.shape)}")
        return x

    def _fitted(self) -> None:
        if not hasattr(self, "codebook_"):
            raise RuntimeError("this RCAQ is not fitted yet: call fit(X) first")

    # -- training -----------------------------------------------------------------------------

    def fit(self, X, y=None) -> RCAQ:
        """Train on X (N, d) (tensor or array; N >= 1). `y` is ignored: the labels are the
        classifier's own decisions sign(x . w) on the unquantized points."""
        x = self._data(X)
        if x.shape[0] == 0:
            raise ValueError("X must hold at least one point, got shape (0, d)")
        x = representable(x, self.dtype)
        x_work = x.to(self.dtype)
        labels = decision(x, self.w)
        self.prototypes_ = [fit_prototypes(x[:, i], self.prototypes) for i in range(len(self.rates))]
        proto_index = [assign_prototypes(x[:, i], p) for i, p in enumerate(self.prototypes_)]
        lookup = [initial_lookup(p.shape[0], r) for p, r in zip(self.prototypes_, self.rates, strict=True)]

        def refit_decoder(current):
            q = sensor_indices(proto_index, lookup)
            m = joint_index(q, self.rates)
            codebook = decoder_step(x, labels, m, q, self.w, self.gamma, self.rates, self.prototypes_, lookup,
                                    self.dtype, current if self.keep_codeword else None)
            return codebook, self._objective(x, labels, m, codebook)

        codebook, objective = refit_decoder(None)
        history = [objective]
        converged = False
        iterations = 0
        for _ in tqdm(range(self.max_iter), desc="rcaq", unit="sweep", leave=False, disable=not self.progress):
            iterations += 1
            codeword_labels = decision(codebook, self.w)
            lookup, changed = encoder_step(x_work, labels, codebook.to(self.dtype), codeword_labels, proto_index,
                                           lookup, self.rates, self.gamma)
            m = joint_index(sensor_indices(proto_index, lookup), self.rates)
            history.append(self._objective(x, labels, m, codebook))
            codebook, objective = refit_decoder(codebook)
            history.append(objective)
            if not changed:
                converged = True
                break
        self.lookup_ = lookup
        self.codebook_ = codebook.to(self.dtype)
        self._codebook64 = codebook
        self.objective_history_ = history
        self.n_iter_ = iterations
        self.converged_ = converged
        return self

    def _objective(self, x: Tensor, labels: Tensor, m: Tensor, codebook: Tensor) -> float:
        loss = rcaq_point_loss(x, labels, codebook[m], decision(codebook, self.w)[m], self.gamma)
        return float(loss.mean())

    # -- inference ----------------------------------------------------------------------------

    def encode(self, X) -> Tensor:
        """Joint index (N,) int64 of each row of X (N, d): nearest prototype on each sensor, its
        table entry, then m = sum_i q_i prod_{j > i} R_j."""
        self._fitted()
        x = representable(self._data(X), self.dtype)
        proto_index = [assign_prototypes(x[:, i], p) for i, p in enumerate(self.prototypes_)]
        return joint_index(sensor_indices(proto_index, self.lookup_), self.rates)

    def decode(self, m) -> Tensor:
        """Codewords (N, d) in the working dtype for joint indices m (N,) in [0, M)."""
        self._fitted()
        if not isinstance(m, Tensor) or m.dtype != torch.int64 or m.dim() != 1:
            raise TypeError("m must be an int64 tensor of shape (N,) (what encode returns)")
        if m.numel() and not bool(((m >= 0) & (m < self.codebook_.shape[0])).all()):
            raise ValueError(f"m must lie in [0, {self.codebook_.shape[0]})")
        return self.codebook_[m]

    def predict(self, X) -> Tensor:
        """The classifier's decision on the quantized points, sign(c_m . w), int64 (N,)."""
        return decision(self.decode(self.encode(X)), self.w)

    def score(self, X, y=None) -> float:
        """Fraction of points whose decision survives quantization: mean of
        [sign(c_m . w) == sign(x . w)] (1 - the 0-1 error). `y` is ignored."""
        x = self._data(X)
        return float((self.predict(x) == decision(representable(x, self.dtype), self.w)).double().mean())

    def zero_one_error(self, X) -> float:
        """Mean of [sign(x . w) != sign(c_m . w)]: the classification error quantization causes."""
        return 1.0 - self.score(X)

    def mse(self, X) -> float:
        """Mean of ||x - c_m||^2."""
        x = representable(self._data(X), self.dtype)
        return float(((x - self.decode(self.encode(x)).double()) ** 2).sum(1).mean())

    def objective(self, X) -> float:
        """Mean loss (1 - gamma) ||x - c_m||^2 + gamma [sign(x . w) != sign(c_m . w)] on X."""
        self._fitted()
        x = representable(self._data(X), self.dtype)
        return self._objective(x, decision(x, self.w), self.encode(x), self._codebook64)
