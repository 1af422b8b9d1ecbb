"""ClimbQ activation and weight quantizers (algorithms.md §1a, 1b): the reference.

Every function computes in its input's dtype (float64 on the CPU is the oracle; float32,
float16 and bfloat16 show that dtype's own rounding error) and never mutates its inputs.

Notation: b bits, N = 2**b - 1, Phi / phi the standard normal CDF / density, rint
round-half-to-even (`torch.round`). Integer codes q lie in [0, N]; the value of code q is

    level(q) = 2*q/N - 1, evaluated as (q - N/2) * (2/N)

in the working dtype. Both factors are exact or rounded once, the levels are exactly
antisymmetric (level(N - q) == -level(q)), the extremes are exactly -1 and +1, and the INT4
storage form (q - zero) * scale with zero = N/2, scale = 2/N (float32) reproduces them bit
for bit (see `int4.int4_from_climbq_weight`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..checks import (
    check_bits,
    check_finite,
    check_finite_number,
    check_labels,
    check_positive,
    check_positive_float,
    check_same_device,
    check_tensor,
)
from ..constants import DEFAULT_INFERENCE_SIGMA, FLOAT_DTYPES, IDENTITY_BITS, levels
from ._args import check_batched, check_grad, check_int
from ._normal import half_normal_cdf, normal_cdf, normal_pdf, normal_ppf

# --- shared pieces --------------------------------------------------------------------------

def _quant_bits(bits) -> int:
    """bits in [1, 16]: 32 (identity) has no codes or thresholds."""
    check_bits(bits)
    if bits == IDENTITY_BITS:
        raise ValueError(f"bits={IDENTITY_BITS} means full precision: there are no codes or thresholds")
    return bits


def _codes(u: Tensor, bits: int) -> Tensor:
    """q = rint(u * N), rounded in u's dtype, returned as exact float64 integers in [0, N].

    The clamp (done exactly, in float64) is a no-op wherever u * N is representable; it keeps
    the codes valid where the dtype cannot hold N (u * N rounds past N in bfloat16 for b > 8
    and overflows float16 for b = 16). NaN stays NaN.
    """
    n = levels(bits)
    return torch.round(u * n).to(torch.float64).clamp(0, n)


def _levels(q: Tensor, bits: int, dtype: torch.dtype) -> Tensor:
    """level(q) = 2*q/N - 1 as (q - N/2) * (2/N) in `dtype`, from integer-valued codes q.

    The centred code q - N/2 (a half-integer) is formed exactly (float64) and rounded once
    to dtype (a no-op up to float32; float16 cannot hold q itself for b = 16), then
    multiplied by 2/N rounded to dtype. The extreme levels are exactly -1 and +1.
    """
    n = levels(bits)
    step = torch.tensor(2.0 / n, dtype=dtype, device=q.device)
    return (q.to(torch.float64) - n / 2).to(dtype) * step


def _per_sample(name: str, table, x: Tensor) -> Tensor:
    """A per-sample (B,) table cast to x's dtype and viewed to broadcast over x (B, ...)."""
    check_tensor(name, table, floating=True)
    if table.shape != (x.shape[0],):
        raise ValueError(f"{name} must have shape ({x.shape[0]},) (one value per sample, gathered from "
                         f"the per-class table by label), got {tuple(table.shape)}")
    check_same_device(x=x, **{name: table})
    return table.to(x.dtype).reshape(x.shape[0], *([1] * (x.dim() - 1)))


def _standardized(x: Tensor, sigma: Tensor, mu: Tensor) -> tuple[Tensor, Tensor]:
    """(z, sigma_b): z = (x - mu_i) / sigma_i and sigma viewed for broadcasting, in x's dtype."""
    check_batched("x", x)
    sigma_b = _per_sample("sigma", sigma, x)
    check_positive("sigma", sigma)
    mu_b = _per_sample("mu", mu, x)
    return (x - mu_b) / sigma_b, sigma_b


# --- algorithms.md §1a: the scale table -----------------------------------------------------------------

def class_counts(labels: Tensor, num_classes: int) -> Tensor:
    """Label histogram n_c = #{i : labels_i = c}, int64 (K,), K = num_classes.

    labels: (B,) integer tensor with values in [0, K). Built with `scatter_add_` on the labels'
    device: no `.item()`, no host synchronisation (the range check itself syncs only where
    `checks.check_labels` says it may).
    """
    check_tensor("labels", labels)
    if labels.dim() != 1:
        raise ValueError(f"labels must be 1-D (B,), got shape {tuple(labels.shape)}")
    check_int("num_classes", num_classes, minimum=1)
    check_labels(labels, labels.shape[0], num_classes)
    return label_histogram(labels, num_classes)


def label_histogram(labels: Tensor, num_classes: int) -> Tensor:
    """`class_counts` of labels already checked to lie in [0, K): int64 (K,), one scatter-add."""
    index = labels.to(torch.int64)
    counts = torch.zeros(num_classes, dtype=torch.int64, device=labels.device)
    return counts.scatter_add_(0, index, torch.ones_like(index))


def class_sigma(labels: Tensor, num_classes: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """The default ClimbQ scale table (algorithms.md §1a, the authors' rule), shape (K,), `dtype`.

        sigma_c = 2 - n_c / sum_k n_k^2

    with n_c the batch label histogram (`class_counts`). Gathered by label this is the
    per-sample sigma_i = 2 - p_i, p_i = f_{y_i} / sum_j f_{y_j}. Classes absent from the
    batch get 2 - 0 = 2; an empty batch gives 2 everywhere. Counts and sum of squares are
    exact int64; the division and subtraction happen in `dtype`. No host synchronisation.
    """
    return class_sigma_from_counts(class_counts(labels, num_classes), dtype)


def class_sigma_from_counts(counts: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """sigma_c = 2 - n_c / sum_k n_k^2 from a label histogram `counts` (K,) int64 (algorithms.md §1a).

    The histogram may be summed over several processes first (data-parallel training): the
    table is then the one of the whole, concatenated batch. Counts and the sum of squares stay
    exact int64; the division and subtraction happen in `dtype`.
    """
    if dtype not in FLOAT_DTYPES:
        raise TypeError(f"dtype must be one of {FLOAT_DTYPES}, got {dtype}")
    sum_sq = (counts * counts).sum().clamp_min(1)
    return 2.0 - counts.to(dtype) / sum_sq.to(dtype)


# --- algorithms.md §1a: the activation quantizer --------------------------------------------------------

def climbq_act_project(x: Tensor, sigma: Tensor, mu: Tensor) -> Tensor:
    """Class-wise projection u = Phi((x - mu_i) / sigma_i) (algorithms.md §1a), in [0, 1].

    x: (B, ...) floating, any trailing shape. sigma, mu: per-sample (B,) floating tensors (the
    per-class tables already gathered by label), cast to x's dtype and broadcast over the
    trailing dims; sigma > 0. Returns u with x's shape and dtype.
    """
    z, _ = _standardized(x, sigma, mu)
    return normal_cdf(z)


def climbq_act_codes(x: Tensor, sigma: Tensor, mu: Tensor, bits: int) -> Tensor:
    """Integer codes q = rint(u * N) in [0, N], u = `climbq_act_project(x, sigma, mu)`.

    Shape of x, int64 (what an integer path would store, kept wide for simplicity).
    bits in [1, 16]; 32 (identity) raises ValueError. A NaN x has no meaningful code.
    """
    bits = _quant_bits(bits)
    return _codes(climbq_act_project(x, sigma, mu), bits).to(torch.int64)


def climbq_act_quant(x: Tensor, sigma: Tensor, mu: Tensor, bits: int, act_range: float) -> Tensor:
    """ClimbQ activation fake quant (algorithms.md §1a): out = A * (2q/N - 1), q = rint(Phi((x-mu_i)/sigma_i) * N).

    x: (B, ...) floating; sigma, mu: per-sample (B,) tensors; A = act_range > 0. Output has x's
    shape and dtype and takes the N + 1 values A * level(q) (see the module docstring).
    bits == 32 returns `x.clone()` (full precision).

    b = 1 does not collapse: N = 1, q = rint(u) in {0, 1}, out = -A where u < 1/2 and +A
    where u > 1/2. At x == mu exactly u = 1/2 and rint(1/2) = 0 (half to even): out = -A.
    x = +inf / -inf give +A / -A exactly; NaN stays NaN.
    """
    check_bits(bits)
    act_range = check_positive_float("act_range", act_range)
    check_batched("x", x)
    if bits == IDENTITY_BITS:
        return x.clone()
    codes = _codes(climbq_act_project(x, sigma, mu), bits)
    return act_range * _levels(codes, bits, x.dtype)


def climbq_act_quant_backward(grad_out: Tensor, x: Tensor, sigma: Tensor, mu: Tensor, bits: int,
                              act_range: float) -> Tensor:
    """Gradient of `climbq_act_quant` w.r.t. x (algorithms.md §1a): straight-through on rint only.

        dx = grad_out * 2A * phi((x - mu_i) / sigma_i) / sigma_i

    i.e. the exact derivative of the smooth surrogate A * (2u - 1). grad_out has x's shape and
    dtype; the result too. bits == 32 returns `grad_out.clone()`.
    """
    check_bits(bits)
    act_range = check_positive_float("act_range", act_range)
    check_batched("x", x)
    check_grad(grad_out, x, "x")
    if bits == IDENTITY_BITS:
        return grad_out.clone()
    z, sigma_b = _standardized(x, sigma, mu)
    return grad_out * (2.0 * act_range) * normal_pdf(z) / sigma_b


def climbq_act_thresholds(bits: int, sigma: float = DEFAULT_INFERENCE_SIGMA, mu: float = 0.0,
                          dtype: torch.dtype = torch.float64) -> Tensor:
    """Inference thresholds t_j = mu + sigma * Phi^-1((j + 0.5) / N), j = 0..N-1 (algorithms.md §1a).

    Shape (N,), strictly increasing. Computed in float64 (`torch.special.ndtri`) and rounded
    once to `dtype`: they are constants, folded once per layer. The middle threshold
    (j = (N-1)/2, probability exactly 1/2) is exactly mu.
    """
    bits = _quant_bits(bits)
    sigma = check_positive_float("sigma", sigma)
    mu = check_finite_number("mu", mu)
    if dtype not in FLOAT_DTYPES:
        raise TypeError(f"dtype must be one of {FLOAT_DTYPES}, got {dtype}")
    n = levels(bits)
    j = torch.arange(n, dtype=torch.float64)
    return (mu + sigma * normal_ppf((j + 0.5) / n)).to(dtype)


def climbq_act_quant_inference(x: Tensor, bits: int, act_range: float, sigma: float = DEFAULT_INFERENCE_SIGMA,
                               mu: float = 0.0) -> Tensor:
    """Label-free ClimbQ activation quant by threshold bucketing (algorithms.md §1a, inference): no erf.

        q = #{j : x > t_j} (+1 when x == t_j exactly for an odd j),   out = A * (2q/N - 1)

    with t = `climbq_act_thresholds(bits, sigma, mu)` rounded to x's dtype. x any shape,
    floating; output x's shape and dtype. bits == 32 returns `x.clone()`.

    Tie convention: x exactly on t_j counts as above it for odd j and below it for even j.
    That mirrors rint's half-to-even rule (u*N = j + 1/2 exactly rounds to j + 1 iff j is odd),
    so the two forms agree on exact ties too; in particular at x == mu (the middle threshold,
    exact) both give q = N//2 + 1 = 2**(b-1) for b >= 2 and q = 0 (-A) for b = 1. Elsewhere
    the forms can differ only within a rounding error of u from a threshold (float64: the
    tests see none farther than 1e-9). NaN stays NaN; +-inf give +-A.
    Memory O(x.numel()): `torch.searchsorted`, never an (x.numel(), N) comparison table.
    """
    check_bits(bits)
    act_range = check_positive_float("act_range", act_range)
    check_tensor("x", x, floating=True)
    if bits == IDENTITY_BITS:
        return x.clone()
    n = levels(bits)
    t = climbq_act_thresholds(bits, sigma, mu).to(device=x.device, dtype=x.dtype)
    below = torch.searchsorted(t, x.contiguous())  # #{j : t_j < x}
    next_t = t[below.clamp(max=n - 1)]
    odd_tie = (below < n) & (next_t == x) & (below % 2 == 1)
    out = act_range * _levels(below + odd_tie, bits, x.dtype)
    return torch.where(torch.isnan(x), x, out)  # NaN stays NaN, as in the erf form


# --- algorithms.md §1f: the ReLU-aware activation quantizer ---------------------------------------------

def climbq_act_quant_relu(x: Tensor, sigma: Tensor, mu: Tensor, bits: int, act_range: float) -> Tensor:
    """ReLU-aware ClimbQ activation fake quant (algorithms.md §1f): the ReLU folded into the quantizer.

        u = max(2 Phi(z) - 1, 0) = erf(max(z, 0) / sqrt 2),  z = (x - mu_i) / sigma_i
        out = A * rint(u * N) / N

    All N + 1 = 2**b codes land on [0, A], the half that survives the ReLU. x: (B, ...);
    sigma, mu: per-sample (B,) tables. Output in x's dtype. bits == 32 returns relu(x). NaN
    stays NaN; +inf gives A, -inf gives 0.
    """
    check_bits(bits)
    act_range = check_positive_float("act_range", act_range)
    check_batched("x", x)
    if bits == IDENTITY_BITS:
        return torch.relu(x)
    z, _ = _standardized(x, sigma, mu)
    return act_range * (_codes(half_normal_cdf(z), bits).to(x.dtype) / levels(bits))


def climbq_act_quant_relu_backward(grad_out: Tensor, x: Tensor, sigma: Tensor, mu: Tensor, bits: int,
                                   act_range: float) -> Tensor:
    """Gradient of `climbq_act_quant_relu` w.r.t. x: straight-through on rint only,

        dx = grad_out * 2A * phi(z) / sigma_i  where z > 0, else 0.
    """
    check_bits(bits)
    act_range = check_positive_float("act_range", act_range)
    check_batched("x", x)
    check_grad(grad_out, x, "x")
    if bits == IDENTITY_BITS:
        return grad_out * (x > 0)
    z, sigma_b = _standardized(x, sigma, mu)
    return torch.where(z > 0, grad_out * (2.0 * act_range) * normal_pdf(z) / sigma_b, torch.zeros_like(grad_out))


# --- algorithms.md §1b: the weight quantizer ------------------------------------------------------------

def climbq_weight_project(w: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Whole-tensor projection of a weight (algorithms.md §1b): (u, z, mean, std).

    mean = mean(w), std = unbiased (n - 1) standard deviation over ALL elements of w,
    z = (w - mean) / std, u = Phi(z). w: any shape, floating, finite, >= 2 elements, not all
    equal (ValueError naming `w` otherwise). u, z have w's shape; mean, std are 0-d; all in
    w's dtype.
    """
    check_tensor("w", w, floating=True)
    if w.numel() < 2:
        raise ValueError(f"w must have at least 2 elements (its unbiased std divides by n - 1), got {w.numel()}")
    check_finite("w", w)
    mean = w.mean()
    std = w.std()
    if not bool(std > 0):
        raise ValueError("w must have nonzero spread: all its elements are equal, so std(w) = 0")
    z = (w - mean) / std
    return normal_cdf(z), z, mean, std


def climbq_weight_codes(w: Tensor, bits: int) -> Tensor:
    """Integer codes q = rint(Phi((w - mean)/std) * N) in [0, N], w's shape, int64 (algorithms.md §1b)."""
    bits = _quant_bits(bits)
    u, _, _, _ = climbq_weight_project(w)
    return _codes(u, bits).to(torch.int64)


def climbq_weight_quant(w: Tensor, bits: int) -> Tensor:
    """ClimbQ weight fake quant (algorithms.md §1b): Wq = 2 * rint(Phi(z) * N) / N - 1, z = (w - mean)/std.

    Wq has w's shape and dtype, values in [-1, 1] on N + 1 evenly spaced levels (evaluated as
    (q - N/2) * (2/N), see the module docstring). bits == 32 returns `w.clone()`.
    """
    check_bits(bits)
    check_tensor("w", w, floating=True)
    if bits == IDENTITY_BITS:
        return w.clone()
    bits = _quant_bits(bits)
    u, _, _, _ = climbq_weight_project(w)
    return _levels(_codes(u, bits), bits, w.dtype)


def climbq_weight_quant_backward(grad_out: Tensor, w: Tensor, bits: int) -> Tensor:
    """Gradient of `climbq_weight_quant` w.r.t. w (algorithms.md §1b), through mean and std.

    Straight-through on rint, exact through Phi, mean and the unbiased std: with g = grad_out,
    phi_i = phi(z_i), n = w.numel(), S1 = sum g_i phi_i, S2 = sum g_i phi_i z_i,

        dw_i = (2 / s) * (g_i phi_i - S1 / n - z_i * S2 / (n - 1)),

    the exact derivative of the smooth surrogate 2 * Phi((w - mean(w)) / std(w)) - 1.
    grad_out has w's shape and dtype; so does the result. bits == 32 returns `grad_out.clone()`.
    """
    check_bits(bits)
    check_tensor("w", w, floating=True)
    check_grad(grad_out, w, "w")
    if bits == IDENTITY_BITS:
        return grad_out.clone()
    _, z, _, std = climbq_weight_project(w)
    n = w.numel()
    g_phi = grad_out * normal_pdf(z)
    s1 = g_phi.sum()
    s2 = (g_phi * z).sum()
    return (g_phi - s1 / n - z * (s2 / (n - 1))) * (2.0 / std)
