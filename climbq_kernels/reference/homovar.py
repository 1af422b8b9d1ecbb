"""HomoVar loss: class reweighting that keeps class variances homogeneous (algorithms.md §1c): the reference.

Steps 1-3 are segmented reductions by label (`segment_stats.segment_sum`): memory
O(B * D + K * D), never a (B, K, D) tensor. Step 4's F quantile comes from
`scipy.stats.f.ppf`: as the table Fcrit[K'] over every possible number K' of present classes,
built on the host once per (alpha, K, N) and cached (`f_critical_table`), and indexed on the
device by K', so that nothing here reads a tensor on the host (no sync, no graph break under
torch.compile). The weights are loss coefficients: computed without gradient in the features'
dtype (float32 for float16 / bfloat16 features, whose range cannot hold the Levene sums
reliably).
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
from scipy import stats
from torch import Tensor
from torch.fx.experimental.symbolic_shapes import guard_scalar

from ..checks import can_sync, check_labels, check_tensor
from ..constants import HOMOVAR_ALPHA, HOMOVAR_BETA0
from ._args import check_fraction
from .climbq import class_counts as batch_class_counts
from .segment_stats import segment_sum

_INT_DTYPES = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)


@functools.lru_cache(maxsize=1024)
def f_critical(alpha: float, present: int, batch: int) -> float:
    """Fcrit = F^-1_{1 - alpha}(K' - 1, N - K') (algorithms.md §1c step 4), K' = present, N = batch."""
    return float(stats.f.ppf(1.0 - alpha, present - 1, batch - present))


@functools.lru_cache(maxsize=64)
def _f_critical_table(alpha: float, num_classes: int, batch: int, dtype: torch.dtype,
                      device: torch.device) -> Tensor:
    present = np.arange(num_classes + 1)
    defined = (present >= 2) & (batch - present >= 1)
    values = np.ones(num_classes + 1)
    values[defined] = stats.f.ppf(1.0 - alpha, present[defined] - 1, batch - present[defined])
    return torch.tensor(values, dtype=torch.float64).to(dtype=dtype, device=device)


@torch.compiler.assume_constant_result
def f_critical_table(alpha: float, num_classes: int, batch: int, dtype: torch.dtype = torch.float64,
                     device: torch.device | str = "cpu") -> Tensor:
    """Fcrit[K'] = `f_critical(alpha, K', batch)` for K' = 0..num_classes (algorithms.md §1c step 4).

    Shape (num_classes + 1,), `dtype` on `device`; 1.0 where the F distribution is undefined
    (K' < 2 or batch - K' < 1, the cases where step 4 falls back to beta0). Built with one
    vectorised `scipy.stats.f.ppf` call (the same ufunc as `f_critical`, so the same values)
    once per (alpha, num_classes, batch, dtype, device) and cached: only the first call per
    key copies to the device. Under torch.compile it is a constant of the graph; its
    arguments must then be concrete numbers (`guard_scalar` specialises symbolic ones).
    The returned tensor is shared: do not modify it.
    """
    return _f_critical_table(alpha, num_classes, batch, dtype, torch.device(device))


def _whole_number_error() -> ValueError:
    return ValueError("class_counts must hold positive whole numbers (dataset class sizes, "
                      "every class with >= 1 training sample)")


def check_class_counts(class_counts, device: torch.device) -> Tensor:
    """Dataset class sizes n_c -> (K,) int64 on `device`: a (K,) real tensor (integer or
    floating dtype) or a sequence of ints/floats, whose values are positive whole numbers.

    TypeError for another kind of thing (bool or complex dtype included); ValueError naming
    `class_counts` for a wrong shape or a value that is not a positive whole number. The values
    of a sequence are always checked, those of a tensor where reading them costs no device
    sync: a CPU tensor, except while torch.compile traces. A GPU tensor's values are not read
    per call (the loss runs every training step; `nn.HomoVarLoss` checks its counts once when
    built); a zero count there makes the weights NaN."""
    if not isinstance(class_counts, Tensor):
        if not isinstance(class_counts, (list, tuple)) or not all(
                isinstance(c, (int, float)) and not isinstance(c, bool) for c in class_counts):
            raise TypeError("class_counts must be a (K,) real tensor or a sequence of numbers")
        if not all(0 < c < math.inf and c == math.floor(c) for c in class_counts):
            raise _whole_number_error()
        class_counts = torch.tensor([int(c) for c in class_counts], dtype=torch.int64)
    if class_counts.dtype == torch.bool or class_counts.is_complex():
        raise TypeError(f"class_counts must be a real tensor (dataset class sizes), got dtype {class_counts.dtype}")
    if class_counts.dim() != 1 or class_counts.numel() < 1:
        raise ValueError(f"class_counts must have shape (K,) with K >= 1, got {tuple(class_counts.shape)}")
    if class_counts.device.type == "cpu" and can_sync(class_counts):
        whole = torch.isfinite(class_counts) & (class_counts == class_counts.round()) \
            if class_counts.is_floating_point() else torch.ones_like(class_counts, dtype=torch.bool)
        if not bool((whole & (class_counts > 0)).all()):
            raise _whole_number_error()
    return class_counts.to(device=device, dtype=torch.int64)


def _check_features(features) -> Tensor:
    check_tensor("features", features, floating=True)
    if features.dim() != 2:
        raise ValueError(f"features must have shape (B, D), got {tuple(features.shape)}")
    return features


def _size_bounds(zbar: Tensor, class_sum: Tensor, bound: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Roots n_lb <= n_ub of zbar^2 n^2 - (2 zbar S_c + C_c) n + S_c^2 (algorithms.md §1c step 5), and
    where they are real (zbar > 0 and discriminant >= 0).

    The discriminant is evaluated factored, C_c * (4 zbar S_c + C_c), and the roots in the
    cancellation-free form q / a, c / q with q = (b + sign(b) sqrt(disc)) / 2.
    """
    a = zbar * zbar
    b = 2 * zbar * class_sum + bound
    disc = bound * (4 * zbar * class_sum + bound)
    real = (a > 0) & (disc >= 0)
    q = 0.5 * (b + torch.copysign(disc.clamp_min(0).sqrt(), b))
    root_a = q / torch.where(a > 0, a, torch.ones_like(a))
    root_c = torch.where(q != 0, class_sum * class_sum / torch.where(q != 0, q, torch.ones_like(q)),
                         torch.zeros_like(q))
    return torch.minimum(root_a, root_c), torch.maximum(root_a, root_c), real


def levene_deviations(f: Tensor, labels: Tensor, xbar: Tensor) -> Tensor:
    """z_i = sum_d |F_id - Xbar_{y_i d}| over the d with F_id != 0 (algorithms.md §1c step 2), shape (B,).

    f: (B, D); xbar: (K, D) class means (step 1); labels: (B,) integer in [0, K).
    """
    return ((f - xbar[labels.to(torch.int64)]).abs() * (f != 0)).sum(dim=1)


def _log_betas(f: Tensor, labels: Tensor, n: Tensor, alpha: float, beta0: float) -> Tensor:
    """log(beta_c), (K,), from algorithms.md §1c steps 1-6; log(beta0) wherever a step degenerates."""
    num_classes = n.numel()
    m = batch_class_counts(labels, num_classes).to(f.dtype)  # batch counts m_c
    m_safe = m.clamp_min(1)
    # 1. class means; 2. z_i; 3. class means of z (the rest of step 3 is in log_betas_from_levene).
    xbar = segment_sum(f, labels, num_classes) / m_safe.unsqueeze(1)
    z = levene_deviations(f, labels, xbar)
    zbar_c = segment_sum(z, labels, num_classes) / m_safe
    return log_betas_from_levene(z, labels, zbar_c, m, n, alpha, beta0)


def log_betas_from_levene(z: Tensor, labels: Tensor, zbar_c: Tensor, m: Tensor, n: Tensor, alpha: float,
                          beta0: float, *, within: Tensor | None = None, batch: int | None = None) -> Tensor:
    """log(beta_c), (K,), from algorithms.md §1c steps 3-6 given the Levene deviations and their class means.

    z: (B,) from step 2; zbar_c: (K,) class means of z (0 for absent classes); m: (K,) batch
    counts and n: (K,) dataset counts, both in z's dtype. log(beta0) wherever a step degenerates.

    The number of present classes K' stays on the device: Fcrit is read from
    `f_critical_table(alpha, K, N)` at index K', and the fallbacks (K' < 2 or N - K' < 1: every
    class gets log(beta0)) are a torch.where, so nothing syncs and torch.compile traces it
    whole. alpha, beta0 and N = B must be concrete there (specialised if symbolic).

    For a batch split over several processes, `within` (the sum over the whole batch of
    (z_i - zbar_{y_i})^2, 0-d) and `batch` (its size N) replace what z alone would give; zbar_c
    and m must then be the whole batch's too.
    """
    num_classes = n.numel()
    batch = guard_scalar(z.shape[0] if batch is None else batch)
    alpha, beta0 = guard_scalar(alpha), guard_scalar(beta0)
    present = m > 0
    log_beta0 = torch.full((num_classes,), math.log(beta0), dtype=z.dtype, device=z.device)
    k_present = present.sum()  # K', int64 0-d on the device
    defined = (k_present >= 2) & (batch - k_present >= 1)
    k_f = k_present.to(z.dtype)
    index = labels.to(torch.int64)
    zbar_c = torch.where(present, zbar_c, torch.zeros_like(zbar_c))
    class_sum = zbar_c * m  # S_c
    zbar = zbar_c.sum() / k_f.clamp_min(1)
    # 4. Levene terms (with placeholder divisors where the test is undefined; discarded below).
    if within is None:
        within = ((z - zbar_c[index]) ** 2).sum()
    msw = within / (batch - k_f).clamp_min(1)
    between = m * (zbar_c - zbar) ** 2  # b_c, 0 for absent classes
    fcrit = f_critical_table(alpha, num_classes, batch, z.dtype, z.device)[k_present.reshape(1)].reshape(())
    bound = fcrit * msw * (k_f - 1) - (between.sum() - between)
    # 5. bounds on the class size; 6. beta_c from the distance of n_c to them.
    n_lb, n_ub, real = _size_bounds(zbar, class_sum, bound)
    valid = present & real & defined
    below, above = valid & (n < n_lb), valid & (n > n_ub)
    distance = torch.where(below, n_lb - n, torch.where(above, n - n_ub, torch.ones_like(n)))
    return torch.where(below | above, log_beta0 / distance, log_beta0)


def _class_balanced_weights(log_beta: Tensor, n: Tensor) -> Tensor:
    """w_c = (1 - beta_c) / (1 - beta_c^{n_c}), normalised to sum K (algorithms.md §1c step 7).

    Evaluated as expm1(log beta) / expm1(n log beta): no 0/0 when beta_c rounds to 1 (its
    limit 1/n_c is used where log beta underflows to 0).
    """
    ratio = torch.expm1(log_beta) / torch.expm1(n * log_beta)
    w = torch.where(log_beta == 0, 1.0 / n, ratio)
    return w * (n.numel() / w.sum())


@torch.no_grad()
def homovar_weights_from_levene(z: Tensor, labels: Tensor, zbar_c: Tensor, m: Tensor, class_counts,
                                alpha: float = HOMOVAR_ALPHA, beta0: float = HOMOVAR_BETA0) -> Tensor:
    """HomoVar class weights w (K,) (algorithms.md §1c steps 3-7) from precomputed steps 1-3.

    For callers that compute the segmented reductions elsewhere (`losses.homovar_loss` runs
    them through the `class_stats` op): z (B,) Levene deviations (`levene_deviations`),
    zbar_c (K,) their class means, m (K,) batch class counts. Computed in z's dtype; other
    arguments as in `homovar_weights`, unchecked beyond class_counts.
    """
    n = check_class_counts(class_counts, z.device).to(z.dtype)
    return weights_from_levene(z, labels, zbar_c, m, n, alpha, beta0)


def weights_from_levene(z: Tensor, labels: Tensor, zbar_c: Tensor, m: Tensor, n: Tensor, alpha: float,
                        beta0: float, *, within: Tensor | None = None, batch: int | None = None) -> Tensor:
    """`homovar_weights_from_levene` without its class_counts check: n (K,) the dataset counts,
    already checked, in z's dtype (algorithms.md §1c steps 3-7); `within`, `batch` as in
    `log_betas_from_levene`."""
    log_beta = log_betas_from_levene(z, labels, zbar_c, m.to(z.dtype), n, alpha, beta0, within=within, batch=batch)
    return _class_balanced_weights(log_beta, n)


@torch.no_grad()
def homovar_weights(features: Tensor, labels: Tensor, class_counts, alpha: float = HOMOVAR_ALPHA,
                    beta0: float = HOMOVAR_BETA0) -> Tensor:
    """HomoVar class weights w (K,) (algorithms.md §1c steps 1-7), detached, summing to K.

    features F: (B, D) floating (pooled penultimate features); labels: (B,) integer in [0, K);
    class_counts n: the DATASET class sizes, (K,) positive whole numbers, as a real tensor of
    any integer or floating dtype or a sequence of numbers (`check_class_counts`; ValueError
    naming `class_counts` otherwise), K = class_counts.numel(). alpha, beta0 in (0, 1).

    1. Xbar_c = mean of F over the batch samples of class c.
    2. z_i = sum_d |F_id - Xbar_{y_i d}| over the d with F_id != 0.
    3. zbar_c = mean of z over class c; zbar = mean of zbar_c over the K' present classes.
    4. Fcrit = F^-1_{1-alpha}(K'-1, N-K'), N = B; MSW = sum_i (z_i - zbar_{y_i})^2 / (N - K');
       b_c = m_c (zbar_c - zbar)^2 (m_c batch count); C_c = Fcrit MSW (K'-1) - sum_{j!=c} b_j.
    5. n_lb <= n_ub: roots of zbar^2 n^2 - (2 zbar S_c + C_c) n + S_c^2, S_c = sum_{i in c} z_i.
    6. beta_c = beta0^(1/(n_lb - n_c)) if n_c < n_lb, beta0^(1/(n_c - n_ub)) if n_c > n_ub,
       else beta0.
    7. w_c = (1 - beta_c) / (1 - beta_c^{n_c}), scaled so that sum_c w_c = K.

    Degenerate cases use beta_c = beta0, never NaN: K' < 2 or N - K' < 1 (all classes),
    class c absent from the batch, zero spread (zbar = 0), no real root. Float64 in, float64
    out; float32 for float32/float16/bfloat16 features.
    """
    features = _check_features(features)
    n = check_class_counts(class_counts, features.device)
    check_labels(labels, features.shape[0], n.numel())
    alpha = check_fraction("alpha", alpha)
    beta0 = check_fraction("beta0", beta0)
    dtype = features.dtype if features.dtype in (torch.float32, torch.float64) else torch.float32
    f = features.detach().to(dtype)
    n_f = n.to(dtype)
    return _class_balanced_weights(_log_betas(f, labels, n_f, alpha, beta0), n_f)


def homovar_loss(features: Tensor, logits: Tensor, labels: Tensor, class_counts, alpha: float = HOMOVAR_ALPHA,
                 beta0: float = HOMOVAR_BETA0) -> Tensor:
    """HomoVar loss (algorithms.md §1c step 8): mean over (i, c) of w_{y_i} * BCE(softmax(logits)_ic, onehot_ic).

    BCE(p, t) = -(t * max(log p, -100) + (1 - t) * max(log(1 - p), -100)) (log clamped at -100
    like `torch.nn.functional.binary_cross_entropy`; log(1 - p) as log1p(-p)). w from
    `homovar_weights` (no gradient): gradients flow to `logits` only, by autograd through
    this formula. logits: (B, K) floating; computed and returned (0-d) in logits' dtype.
    Other arguments as in `homovar_weights`.
    """
    check_tensor("logits", logits, floating=True)
    features = _check_features(features)
    num_classes = check_class_counts(class_counts, logits.device).numel()
    if logits.shape != (features.shape[0], num_classes):
        raise ValueError(f"logits must have shape (B, K) = ({features.shape[0]}, {num_classes}), "
                         f"got {tuple(logits.shape)}")
    w = homovar_weights(features, labels, class_counts, alpha, beta0)
    return homovar_bce(w, logits, labels)


def homovar_bce(w: Tensor, logits: Tensor, labels: Tensor) -> Tensor:
    """Step 8 of algorithms.md §1c: mean over (i, c) of w_{y_i} * BCE(softmax(logits)_ic, onehot_ic).

    w: (K,) class weights (cast to logits' dtype, no gradient); logits (B, K); labels (B,).
    BCE as described in `homovar_loss`; 0-d result in logits' dtype.
    """
    num_classes = logits.shape[1]
    w = w.to(logits.dtype)
    index = labels.to(torch.int64)
    log_p = torch.log_softmax(logits, dim=1)
    # log(1 - p) as log(-expm1(log p)), accurate as p -> 1. Where p rounds to 1 it is -inf, which
    # BCE clamps to -100; computing the log there on a stand-in value keeps its gradient finite
    # (0 times an infinite derivative would be NaN, and saturated logits are common in training).
    saturated = log_p >= 0
    log_not_p = torch.where(saturated, -100.0, torch.log(-torch.expm1(torch.where(saturated, -1.0, log_p))))
    target = torch.nn.functional.one_hot(index, num_classes).to(logits.dtype)
    bce = -(target * log_p.clamp_min(-100) + (1 - target) * log_not_p.clamp_min(-100))
    return (w[index].unsqueeze(1) * bce).mean()
