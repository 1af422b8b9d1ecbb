"""The ClimbQ reference (algorithms.md §1a, 1b) against independent scalar math, autograd and itself."""

import math
import statistics

import pytest
import torch

from climbq_kernels.constants import levels
from climbq_kernels.reference import (
    class_counts,
    class_sigma,
    climbq_act_codes,
    climbq_act_project,
    climbq_act_quant,
    climbq_act_quant_backward,
    climbq_act_quant_inference,
    climbq_act_thresholds,
    climbq_weight_codes,
    climbq_weight_project,
    climbq_weight_quant,
    climbq_weight_quant_backward,
)

A = 2.0
SHAPES = [(1,), (1, 3), (4, 7), (5, 123, 7), (3, 2, 5, 4)]


def make_gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def act_inputs(shape, gen, dtype=torch.float64, num_classes=5):
    """x (B, ...), labels, and per-sample sigma / mu gathered from random class tables."""
    x = (torch.randn(shape, generator=gen, dtype=torch.float64) * 2.5).to(dtype)
    labels = torch.randint(0, num_classes, (shape[0],), generator=gen)
    sigma_table = class_sigma(labels, num_classes, dtype=torch.float64) * (
        0.5 + torch.rand(num_classes, generator=gen, dtype=torch.float64))
    mu_table = torch.randn(num_classes, generator=gen, dtype=torch.float64) * 0.3
    return x, labels, sigma_table[labels], mu_table[labels]


def phi_cdf(t: float) -> float:
    return 0.5 * (1.0 + math.erf(t / math.sqrt(2.0)))


# --- algorithms.md §1a: scale table -------------------------------------------------------------------

def test_class_counts_and_sigma_by_hand():
    labels = torch.tensor([0, 0, 2, 0, 2, 3])
    assert class_counts(labels, 5).tolist() == [3, 0, 2, 1, 0]
    sigma = class_sigma(labels, 5, dtype=torch.float64)
    # sum_k n_k^2 = 9 + 4 + 1 = 14; absent classes get 2.
    assert sigma.tolist() == [2 - 3 / 14, 2.0, 2 - 2 / 14, 2 - 1 / 14, 2.0]
    # Per-sample form of the rule: sigma_i = 2 - f_{y_i} / sum_j f_{y_j}, f_c = n_c / B.
    freq = {0: 3 / 6, 2: 2 / 6, 3: 1 / 6}
    total = sum(freq[int(y)] for y in labels)
    for i, y in enumerate(labels.tolist()):
        assert sigma[labels][i].item() == pytest.approx(2 - freq[y] / total, abs=1e-15)
    assert class_sigma(labels, 5).dtype == torch.float32


def test_class_sigma_empty_batch_and_int_dtypes():
    assert class_sigma(torch.empty(0, dtype=torch.int64), 3).tolist() == [2.0, 2.0, 2.0]
    labels = torch.tensor([1, 1, 0], dtype=torch.uint8)
    assert class_counts(labels, 2).tolist() == [1, 2]


# --- algorithms.md §1a: activation forward ------------------------------------------------------------

@pytest.mark.parametrize("bits", [1, 2, 4, 8])
def test_act_matches_scalar_erf(bits):
    gen = make_gen(10 + bits)
    x, _, sigma, mu = act_inputs((6, 5, 4), gen)
    u = climbq_act_project(x, sigma, mu)
    q = climbq_act_codes(x, sigma, mu, bits)
    out = climbq_act_quant(x, sigma, mu, bits, A)
    n = levels(bits)
    for idx in [(0, 0, 0), (5, 4, 3), (2, 1, 3), (3, 3, 0), (1, 2, 2)]:
        b = idx[0]
        u_ref = phi_cdf((x[idx].item() - mu[b].item()) / sigma[b].item())
        q_ref = round(u_ref * n)  # Python round is half-to-even, like torch.round
        assert u[idx].item() == pytest.approx(u_ref, abs=1e-15)
        assert q[idx].item() == q_ref
        assert out[idx].item() == pytest.approx(A * (2 * q_ref / n - 1), abs=1e-15)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
def test_act_levels_and_dtype(shape, dtype):
    gen = make_gen(sum(shape))
    x, _, sigma, mu = act_inputs(shape, gen, dtype)
    bits = 3
    n = levels(bits)
    out = climbq_act_quant(x, sigma, mu, bits, A)
    q = climbq_act_codes(x, sigma, mu, bits)
    assert out.dtype == dtype and out.shape == x.shape
    assert q.dtype == torch.int64 and int(q.min()) >= 0 and int(q.max()) <= n
    # Each output is exactly A * level(q) of its own code, level = (q - N/2) * (2/N) in dtype...
    step = torch.tensor(2.0 / n, dtype=dtype)
    assert torch.equal(out, A * ((q.to(dtype) - n / 2) * step))
    # ... which is 2q/N - 1 up to the dtype's rounding.
    exact = A * (2 * q.double() / n - 1)
    assert torch.allclose(out.double(), exact, rtol=0, atol=4 * A * torch.finfo(dtype).eps)


def test_act_levels_antisymmetric():
    """level(N - q) == -level(q) exactly, in every dtype (the (q - N/2) * (2/N) evaluation)."""
    for dtype in (torch.float64, torch.float32, torch.float16, torch.bfloat16):
        for bits in (1, 2, 4, 8):
            n = levels(bits)
            x = torch.linspace(-12, 12, 20001, dtype=torch.float64).to(dtype).reshape(1, -1)
            ones = torch.ones(1, dtype=dtype)
            out = climbq_act_quant(x, 2 * ones, 0 * ones, bits, A).flatten()
            q = climbq_act_codes(x, 2 * ones, 0 * ones, bits).flatten()
            level = {int(code): value for code, value in zip(q.tolist(), out.tolist(), strict=True)}
            if dtype == torch.float64:
                assert sorted(level) == list(range(n + 1))
            assert all(level[n - code] == -level[code] for code in level if n - code in level)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_act_low_precision_tracks_float64(dtype):
    gen = make_gen(7)
    x, _, sigma, mu = act_inputs((64, 33), gen)
    q64 = climbq_act_codes(x, sigma, mu, 4)
    q_low = climbq_act_codes(x.to(dtype), sigma.to(dtype), mu.to(dtype), 4)
    assert int((q64 - q_low).abs().max()) <= 1
    assert (q64 != q_low).double().mean().item() < 0.05


def test_b1_two_values():
    gen = make_gen(3)
    x, _, sigma, mu = act_inputs((16, 9), gen)
    out = climbq_act_quant(x, sigma, mu, 1, A)
    assert sorted(out.unique().tolist()) == [-A, A]
    # x == mu exactly: u = 1/2, rint(1/2) = 0 -> -A.
    at_mu = mu.unsqueeze(1).expand(-1, 3).clone()
    assert (climbq_act_quant(at_mu, sigma, mu, 1, A) == -A).all()


def test_special_values_and_extreme_levels():
    x = torch.tensor([[float("inf"), -float("inf"), float("nan"), 50.0, -50.0]])
    ones = torch.ones(1)
    for dtype in (torch.float64, torch.float32, torch.float16, torch.bfloat16):
        for bits in (1, 4, 8, 16):
            for out in (climbq_act_quant(x.to(dtype), 2 * ones, 0 * ones, bits, A),
                        climbq_act_quant_inference(x.to(dtype), bits, A)):
                assert out[0, [0, 3]].tolist() == [A, A] and out[0, [1, 4]].tolist() == [-A, -A]
                assert out[0, 2].isnan()


def test_b32_identity():
    gen = make_gen(4)
    x, _, sigma, mu = act_inputs((3, 4), gen)
    out = climbq_act_quant(x, sigma, mu, 32, A)
    assert torch.equal(out, x) and out.data_ptr() != x.data_ptr()
    grad = torch.randn(x.shape, generator=gen, dtype=x.dtype)
    dx = climbq_act_quant_backward(grad, x, sigma, mu, 32, A)
    assert torch.equal(dx, grad) and dx.data_ptr() != grad.data_ptr()
    assert torch.equal(climbq_act_quant_inference(x, 32, A), x)
    w = torch.randn(4, 3, generator=gen)
    assert torch.equal(climbq_weight_quant(w, 32), w)
    assert torch.equal(climbq_weight_quant_backward(w, w, 32), w)


# --- algorithms.md §1a: inference thresholds ----------------------------------------------------------

def test_thresholds_by_hand():
    t = climbq_act_thresholds(2, sigma=1.5, mu=0.25)
    probs = [(j + 0.5) / 3 for j in range(3)]
    expected = [0.25 + 1.5 * statistics.NormalDist().inv_cdf(p) for p in probs]
    assert t.dtype == torch.float64 and t.tolist() == pytest.approx(expected, abs=1e-14)
    for bits in (1, 2, 5, 9):
        t = climbq_act_thresholds(bits, sigma=2.0, mu=0.3)
        assert t[(t.numel() - 1) // 2].item() == 0.3  # the middle threshold is mu, exactly
        assert bool((t[1:] > t[:-1]).all())
    assert climbq_act_thresholds(3, dtype=torch.float32).dtype == torch.float32


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 6, 8])
def test_threshold_form_equals_erf_form(bits):
    gen = make_gen(100 + bits)
    sigma, mu = 1.7, 0.3
    t = climbq_act_thresholds(bits, sigma, mu)
    x = torch.cat([torch.randn(4000, generator=gen, dtype=torch.float64) * 3 + mu,
                   t,  # exactly on every threshold
                   torch.full((5,), mu, dtype=torch.float64)])  # exactly at mu
    x = x.reshape(1, -1)
    ones = torch.ones(1, dtype=torch.float64)
    erf_form = climbq_act_quant(x, sigma * ones, mu * ones, bits, A)
    bucketed = climbq_act_quant_inference(x, bits, A, sigma=sigma, mu=mu)
    near_threshold = (x.reshape(-1, 1) - t).abs().min(dim=1).values.reshape(x.shape) < 1e-9
    differ = erf_form != bucketed
    assert not bool((differ & ~near_threshold).any())
    # x == mu is an exact tie in both forms (u = 1/2): they agree there for every b.
    assert torch.equal(erf_form[0, -5:], bucketed[0, -5:])


def test_inference_b1_and_shapes():
    gen = make_gen(5)
    x = torch.randn(5, 123, 7, generator=gen)
    out = climbq_act_quant_inference(x, 1, A)
    assert sorted(out.unique().tolist()) == [-A, A]
    assert out.dtype == x.dtype and out.shape == x.shape
    assert climbq_act_quant_inference(torch.zeros(3), 1, A).tolist() == [-A] * 3  # x == mu -> -A
    one = climbq_act_quant_inference(torch.tensor([0.7]), 4, A)
    assert one.shape == (1,)


# --- algorithms.md §1a: activation gradient -----------------------------------------------------------

class ActSurrogate(torch.autograd.Function):
    """Forward: the smooth A*(2u - 1) the straight-through estimator differentiates; backward:
    the reference's hand-written gradient."""

    @staticmethod
    def forward(ctx, x, sigma, mu, bits):
        ctx.save_for_backward(x, sigma, mu)
        ctx.bits = bits
        return A * (2 * climbq_act_project(x, sigma, mu) - 1)

    @staticmethod
    def backward(ctx, grad_out):
        x, sigma, mu = ctx.saved_tensors
        return climbq_act_quant_backward(grad_out, x, sigma, mu, ctx.bits, A), None, None, None


@pytest.mark.parametrize("shape", [(1,), (3, 4), (2, 3, 5)])
def test_act_backward_gradcheck(shape):
    gen = make_gen(21)
    x, _, sigma, mu = act_inputs(shape, gen)
    x.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: ActSurrogate.apply(t, sigma, mu, 4), (x,))


def test_act_backward_low_precision():
    gen = make_gen(22)
    x, _, sigma, mu = act_inputs((8, 16), gen)
    grad = torch.randn(x.shape, generator=gen, dtype=torch.float64)
    ref = climbq_act_quant_backward(grad, x, sigma, mu, 4, A)
    for dtype, tol in [(torch.float32, 1e-6), (torch.float16, 1e-2), (torch.bfloat16, 5e-2)]:
        got = climbq_act_quant_backward(grad.to(dtype), x.to(dtype), sigma, mu, 4, A)
        assert got.dtype == dtype
        assert torch.allclose(got.double(), ref, rtol=tol, atol=tol)


# --- algorithms.md §1b: weight quantizer --------------------------------------------------------------

def test_weight_project_matches_statistics():
    gen = make_gen(30)
    w = torch.randn(3, 5, generator=gen, dtype=torch.float64)
    values = w.flatten().tolist()
    mean, std = statistics.fmean(values), statistics.stdev(values)  # stdev: n - 1
    u, z, m, s = climbq_weight_project(w)
    assert m.item() == pytest.approx(mean, abs=1e-15) and s.item() == pytest.approx(std, rel=1e-14)
    for i in (0, 7, 14):
        z_ref = (values[i] - mean) / std
        assert z.flatten()[i].item() == pytest.approx(z_ref, abs=1e-14)
        assert u.flatten()[i].item() == pytest.approx(phi_cdf(z_ref), abs=1e-15)


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
@pytest.mark.parametrize("shape", [(2,), (4, 3, 3, 3), (5, 123, 7)])
def test_weight_quant_levels(bits, shape):
    gen = make_gen(31 + bits)
    w = torch.randn(shape, generator=gen, dtype=torch.float64) * 0.05
    n = levels(bits)
    wq = climbq_weight_quant(w, bits)
    q = climbq_weight_codes(w, bits)
    assert wq.shape == w.shape and wq.dtype == w.dtype
    assert torch.allclose(wq, 2 * q.double() / n - 1, rtol=0, atol=1e-15)
    assert float(wq.min()) >= -1 and float(wq.max()) <= 1
    if bits == 1 and w.numel() > 2:
        assert sorted(wq.unique().tolist()) == [-1.0, 1.0]
    values = w.flatten().tolist()
    mean, std = statistics.fmean(values), statistics.stdev(values)
    q_ref = round(phi_cdf((values[-1] - mean) / std) * n)
    assert q.flatten()[-1].item() == q_ref


class WeightSurrogate(torch.autograd.Function):
    """Forward: 2u - 1 with u from climbq_weight_project (mean and std recomputed from w, so
    the numerical Jacobian sees them move); backward: the reference's hand-written gradient."""

    @staticmethod
    def forward(ctx, w, bits):
        ctx.save_for_backward(w)
        ctx.bits = bits
        u, _, _, _ = climbq_weight_project(w)
        return 2 * u - 1

    @staticmethod
    def backward(ctx, grad_out):
        (w,) = ctx.saved_tensors
        return climbq_weight_quant_backward(grad_out, w, ctx.bits), None


@pytest.mark.parametrize("shape", [(2,), (3,), (4, 3), (2, 3, 2, 2)])
def test_weight_backward_gradcheck(shape):
    gen = make_gen(40)
    w = (torch.randn(shape, generator=gen, dtype=torch.float64) * 0.1).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: WeightSurrogate.apply(t, 4), (w,))


def test_weight_backward_matches_autograd_with_live_stats():
    gen = make_gen(41)
    w = torch.randn(5, 123, 7, generator=gen, dtype=torch.float64).requires_grad_(True)
    grad = torch.randn(w.shape, generator=gen, dtype=torch.float64)
    z = (w - w.mean()) / w.std()  # mean and std NOT detached
    (2 * 0.5 * (1 + torch.erf(z / math.sqrt(2))) - 1).backward(grad)
    got = climbq_weight_quant_backward(grad, w.detach(), 3)
    assert torch.allclose(got, w.grad, rtol=1e-10, atol=1e-12)


# --- argument checks and purity -------------------------------------------------------------

@pytest.mark.parametrize("bits,error", [(0, ValueError), (17, ValueError), (2.0, TypeError), (True, TypeError)])
def test_bad_bits(bits, error):
    gen = make_gen(50)
    x, _, sigma, mu = act_inputs((2, 3), gen)
    with pytest.raises(error, match="bits"):
        climbq_act_quant(x, sigma, mu, bits, A)
    with pytest.raises(error, match="bits"):
        climbq_weight_quant(x, bits)
    with pytest.raises(error, match="bits"):
        climbq_act_quant_inference(x, bits, A)


def test_bad_inputs():
    gen = make_gen(51)
    x, _, sigma, mu = act_inputs((2, 3), gen)
    with pytest.raises(TypeError, match="x"):
        climbq_act_quant(torch.ones(2, 3, dtype=torch.int64), sigma, mu, 4, A)
    with pytest.raises(ValueError, match="sigma"):
        climbq_act_quant(x, sigma[:1], mu, 4, A)
    with pytest.raises(ValueError, match="sigma"):
        climbq_act_quant(x, -sigma, mu, 4, A)
    with pytest.raises(ValueError, match="mu"):
        climbq_act_quant(x, sigma, mu.reshape(2, 1), 4, A)
    with pytest.raises(ValueError, match="act_range"):
        climbq_act_quant(x, sigma, mu, 4, 0.0)
    with pytest.raises(ValueError, match="grad_out"):
        climbq_act_quant_backward(x[:1], x, sigma, mu, 4, A)
    with pytest.raises(ValueError, match="bits"):
        climbq_act_codes(x, sigma, mu, 32)
    with pytest.raises(ValueError, match="w"):
        climbq_weight_quant(torch.tensor([0.5]), 4)
    with pytest.raises(ValueError, match="w"):
        climbq_weight_quant(torch.full((3, 3), 0.25), 4)
    with pytest.raises(ValueError, match="w"):
        climbq_weight_quant_backward(torch.ones(3, 3), torch.full((3, 3), 0.25), 4)
    with pytest.raises(ValueError, match="w"):
        climbq_weight_quant(torch.tensor([0.5, float("nan")]), 4)


@pytest.mark.parametrize("labels,error", [
    (torch.tensor([0, 5, 1]), ValueError),  # out of range
    (torch.tensor([0, -1, 1]), ValueError),  # negative
    (torch.tensor([0.0, 1.0, 1.0]), TypeError),  # float dtype
    (torch.tensor([[0, 1, 1]]), ValueError),  # not 1-D
    ([0, 1, 1], TypeError),  # not a tensor
])
def test_bad_labels(labels, error):
    with pytest.raises(error, match="labels"):
        class_sigma(labels, 5)
    with pytest.raises(error, match="labels"):
        class_counts(labels, 5)


def test_inputs_not_mutated():
    gen = make_gen(52)
    x, labels, sigma, mu = act_inputs((4, 6), gen)
    grad = torch.randn(x.shape, generator=gen, dtype=x.dtype)
    saved = [t.clone() for t in (x, labels, sigma, mu, grad)]
    class_sigma(labels, 5)
    climbq_act_quant(x, sigma, mu, 4, A)
    climbq_act_quant_backward(grad, x, sigma, mu, 4, A)
    climbq_act_quant_inference(x, 4, A)
    climbq_weight_quant(x, 4)
    climbq_weight_quant_backward(grad, x, 4)
    for before, after in zip(saved, (x, labels, sigma, mu, grad), strict=True):
        assert torch.equal(before, after)
