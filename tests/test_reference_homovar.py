"""HomoVar reference (algorithms.md §1c) against an independent loop implementation of the 8 steps."""

import math
import time

import pytest
import torch
from scipy import stats

from climbq_kernels.reference import f_critical, homovar_loss, homovar_weights
from climbq_kernels.reference.homovar import f_critical_table


def make_gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def homovar_loop(F, labels, n, alpha=0.05, beta0=0.999):
    """algorithms.md §1c steps 1-7 with Python lists, loops and the textbook quadratic formula.
    Returns (weights, betas, branch per class)."""
    B, D, K = len(F), len(F[0]), len(n)
    members = {c: [i for i in range(B) if labels[i] == c] for c in range(K)}
    present = [c for c in range(K) if members[c]]
    kp = len(present)
    betas, branch = [beta0] * K, ["fallback"] * K
    if kp >= 2 and B - kp >= 1:
        xbar = {c: [sum(F[i][d] for i in members[c]) / len(members[c]) for d in range(D)] for c in present}
        z = [sum(abs(F[i][d] - xbar[labels[i]][d]) for d in range(D) if F[i][d] != 0) for i in range(B)]
        zbar_c = {c: sum(z[i] for i in members[c]) / len(members[c]) for c in present}
        zbar = sum(zbar_c.values()) / kp
        fcrit = stats.f.ppf(1 - alpha, kp - 1, B - kp)
        msw = sum((z[i] - zbar_c[labels[i]]) ** 2 for i in range(B)) / (B - kp)
        b = {c: len(members[c]) * (zbar_c[c] - zbar) ** 2 for c in present}
        for c in present:
            bound = fcrit * msw * (kp - 1) - sum(b[j] for j in present if j != c)
            s = sum(z[i] for i in members[c])
            qa, qb, qc = zbar ** 2, -(2 * zbar * s + bound), s ** 2
            disc = qb * qb - 4 * qa * qc
            if qa == 0 or disc < 0:
                branch[c] = "no root"
                continue
            lo, hi = (-qb - math.sqrt(disc)) / (2 * qa), (-qb + math.sqrt(disc)) / (2 * qa)
            if n[c] < lo:
                betas[c], branch[c] = beta0 ** (1 / (lo - n[c])), "below"
            elif n[c] > hi:
                betas[c], branch[c] = beta0 ** (1 / (n[c] - hi)), "above"
            else:
                branch[c] = "inside"
    w = [(1 - bt) / (1 - bt ** nc) for bt, nc in zip(betas, n, strict=True)]
    total = sum(w)
    return [wc * K / total for wc in w], betas, branch


def balanced(n, beta0=0.999):
    """Step 7 with every beta_c = beta0 (the degenerate fallback)."""
    w = [(1 - beta0) / (1 - beta0 ** nc) for nc in n]
    return [wc * len(n) / sum(w) for wc in w]


# A tiny batch one can follow by hand: 3 classes, 10 samples, 3 features (two exact zeros).
HAND_F = [[1.0, 2.0, 0.0], [1.5, 2.5, 0.5], [0.5, 1.0, 1.0], [2.0, 3.5, 0.0], [1.0, 1.5, 2.0],
          [-1.0, 0.5, 0.25], [-2.0, 1.5, 0.75], [-1.5, 0.0, 0.5],
          [3.0, -1.0, 1.0], [2.5, -2.0, 1.5]]
HAND_LABELS = [0, 0, 0, 0, 0, 1, 1, 1, 2, 2]


@pytest.mark.parametrize("counts,branches", [
    ([500, 3, 5], ["above", "inside", "inside"]),
    ([500, 50, 2], ["above", "above", "inside"]),
    ([1, 1000, 3], ["below", "above", "inside"]),
])
def test_hand_case(counts, branches):
    expected, _, branch = homovar_loop(HAND_F, HAND_LABELS, counts)
    assert branch == branches  # the case exercises the branches it claims to
    got = homovar_weights(torch.tensor(HAND_F, dtype=torch.float64), torch.tensor(HAND_LABELS), torch.tensor(counts))
    assert got.dtype == torch.float64 and got.shape == (3,)
    assert got.tolist() == pytest.approx(expected, rel=1e-9)
    assert got.sum().item() == pytest.approx(3.0, rel=1e-14)


def test_hand_case_intermediate_values():
    """Step 2 by hand for sample 0 of class 0: class means of features 0 and 1 are 1.2 and 2.1,
    and its feature 2 is exactly 0, so z_0 = |1 - 1.2| + |2 - 2.1| = 0.3. A class of one sample
    with n_c between the roots keeps beta0, whose step-7 weight is (1 - b0) / (1 - b0^n)."""
    F = torch.tensor(HAND_F, dtype=torch.float64)
    xbar0 = F[:5].mean(dim=0)
    assert xbar0[:2].tolist() == pytest.approx([1.2, 2.1])
    z0 = sum(abs(F[0, d] - xbar0[d]).item() for d in range(3) if F[0, d] != 0)
    assert z0 == pytest.approx(0.3)
    w = homovar_weights(F, torch.tensor(HAND_LABELS), [5, 3, 2])
    unnormalised = [(1 - 0.999) / (1 - 0.999 ** n) for n in (5, 3, 2)]
    assert w.tolist() == pytest.approx([u * 3 / sum(unnormalised) for u in unnormalised], rel=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_matches_loop(seed):
    gen = make_gen(seed)
    batch, dim, num_classes = 40, 6, 5
    F = torch.randn(batch, dim, generator=gen, dtype=torch.float64).relu()  # post-ReLU: real zeros
    labels = torch.randint(0, num_classes - 1, (batch,), generator=gen)  # last class absent
    counts = torch.randint(1, 3000, (num_classes,), generator=gen)
    expected, _, branch = homovar_loop(F.tolist(), labels.tolist(), counts.tolist())
    assert branch[-1] == "fallback"
    got = homovar_weights(F, labels, counts)
    assert got.tolist() == pytest.approx(expected, rel=1e-9)
    assert got.sum().item() == pytest.approx(num_classes, rel=1e-12)


@pytest.mark.parametrize("name,F,labels", [
    ("one class present", [[1.0, 2.0], [2.0, 0.5], [0.3, 0.4]], [1, 1, 1]),
    ("no within-class dof", [[1.0, 2.0], [2.0, 0.5], [0.3, 0.4]], [0, 1, 2]),
    ("zero spread", [[1.5, 2.5], [1.5, 2.5], [0.5, 3.0], [0.5, 3.0]], [0, 0, 2, 2]),
    ("no real root", [[1.0], [3.0], [1.0], [3.0], [10.0], [20.0], [10.0], [20.0]], [0, 0, 0, 0, 1, 1, 1, 1]),
])
def test_degenerate_cases_use_beta0(name, F, labels):
    counts = [7, 40, 300]
    _, _, branch = homovar_loop(F, labels, counts)
    assert all(b in ("fallback", "no root") for b in branch), name
    got = homovar_weights(torch.tensor(F, dtype=torch.float64), torch.tensor(labels), counts)
    assert not bool(got.isnan().any())
    assert got.tolist() == pytest.approx(balanced(counts), rel=1e-12)


def test_extreme_counts_no_nan():
    """beta_c rounding to 1 (huge distance) or to 0 (tiny distance) stays finite."""
    F = torch.tensor(HAND_F, dtype=torch.float64)
    for counts in ([10**15, 3, 5], [1, 10**12, 2], [5, 3, 10**9]):
        w = homovar_weights(F, torch.tensor(HAND_LABELS), torch.tensor(counts))
        assert bool(torch.isfinite(w).all()) and bool((w > 0).all())
        assert w.sum().item() == pytest.approx(3.0, rel=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_low_precision_features(dtype):
    F = torch.tensor(HAND_F, dtype=torch.float64)
    ref = homovar_weights(F, torch.tensor(HAND_LABELS), [500, 3, 5])
    got = homovar_weights(F.to(dtype), torch.tensor(HAND_LABELS), [500, 3, 5])
    assert got.dtype == torch.float32
    assert torch.allclose(got.double(), ref, rtol=1e-2 if dtype != torch.float32 else 1e-5)


def test_f_critical_cached():
    f_critical.cache_clear()
    assert f_critical(0.05, 3, 10) == pytest.approx(stats.f.ppf(0.95, 2, 7), rel=1e-15)
    f_critical(0.05, 3, 10)
    assert f_critical.cache_info().hits == 1


def test_f_critical_table_matches_the_scalar_quantiles():
    table = f_critical_table(0.05, 6, 9)
    assert table.shape == (7,) and table.dtype == torch.float64
    assert table[:2].tolist() == [1.0, 1.0]  # K' < 2: undefined, placeholder 1
    for k in range(2, 7):
        assert table[k].item() == f_critical(0.05, k, 9)
    assert f_critical_table(0.05, 6, 9) is table  # cached
    assert f_critical_table(0.05, 12, 10)[10:].tolist() == [1.0, 1.0, 1.0]  # N - K' < 1


@pytest.mark.parametrize("counts", [[500, 3, 5], (500.0, 3.0, 5.0), torch.tensor([500.0, 3.0, 5.0]),
                                    torch.tensor([500, 3, 5], dtype=torch.int16)])
def test_class_counts_of_any_real_kind(counts):
    F, labels = torch.tensor(HAND_F, dtype=torch.float64), torch.tensor(HAND_LABELS)
    expected = homovar_weights(F, labels, torch.tensor([500, 3, 5]))
    assert torch.equal(homovar_weights(F, labels, counts), expected)


def test_weights_read_nothing_on_the_host(monkeypatch):
    """Steps 3-7 keep K' on the device: no tensor is converted to a Python number."""
    F, labels = torch.tensor(HAND_F, dtype=torch.float64), torch.tensor(HAND_LABELS)
    counts = torch.tensor([500, 3, 5])
    expected = homovar_weights(F, labels, counts)
    from climbq_kernels.reference import homovar as module

    def refuse(*args, **kwargs):
        raise AssertionError("a host read")

    for name in ("__int__", "__bool__", "item", "__float__", "tolist"):
        monkeypatch.setattr(torch.Tensor, name, refuse)
    z = module.levene_deviations(F, labels, module.segment_sum(F, labels, 3) / torch.tensor([5.0, 3, 2]).unsqueeze(1))
    m = torch.tensor([5.0, 3.0, 2.0], dtype=torch.float64)
    zbar_c = module.segment_sum(z, labels, 3) / m
    got = module._class_balanced_weights(
        module.log_betas_from_levene(z, labels, zbar_c, m, counts.double(), 0.05, 0.999), counts.double())
    monkeypatch.undo()
    assert torch.equal(got, expected)


# --- step 8: the loss -----------------------------------------------------------------------

def test_loss_matches_loop():
    gen = make_gen(8)
    F = torch.tensor(HAND_F, dtype=torch.float64)
    labels = torch.tensor(HAND_LABELS)
    logits = torch.randn(10, 3, generator=gen, dtype=torch.float64) * 2
    counts = [500, 3, 5]
    w, _, _ = homovar_loop(HAND_F, HAND_LABELS, counts)
    total = 0.0
    for i, row in enumerate(logits.tolist()):
        denom = sum(math.exp(v) for v in row)
        for c, v in enumerate(row):
            p = math.exp(v) / denom
            t = 1.0 if c == HAND_LABELS[i] else 0.0
            total += w[HAND_LABELS[i]] * -(t * max(math.log(p), -100) + (1 - t) * max(math.log(1 - p), -100))
    expected = total / (10 * 3)
    assert homovar_loss(F, logits, labels, counts).item() == pytest.approx(expected, rel=1e-9)
    # the same number from torch's own BCE with per-row weights
    weights = torch.tensor(w, dtype=torch.float64)[labels].unsqueeze(1).expand(-1, 3)
    bce = torch.nn.functional.binary_cross_entropy(torch.softmax(logits, 1), torch.eye(3, dtype=torch.float64)[labels],
                                                   weight=weights)
    assert bce.item() == pytest.approx(expected, rel=1e-9)


def test_loss_gradient_reaches_logits_only():
    gen = make_gen(9)
    F = torch.tensor(HAND_F, dtype=torch.float64, requires_grad=True)
    logits = torch.randn(10, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    loss = homovar_loss(F, logits, torch.tensor(HAND_LABELS), [500, 3, 5])
    loss.backward()
    assert F.grad is None and logits.grad is not None and bool(torch.isfinite(logits.grad).all())
    assert loss.shape == () and loss.dtype == torch.float64


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=str)
def test_saturated_softmax_keeps_the_loss_clamped_and_its_gradient_finite(dtype):
    """A logit 40-400 above the rest rounds p to exactly 1 and the others to 0: BCE's -100
    clamp holds the loss (as torch's binary_cross_entropy), and the gradient stays finite."""
    labels = torch.tensor(HAND_LABELS)
    logits = torch.zeros(10, 3, dtype=torch.float64)
    logits[torch.arange(10), labels] = torch.linspace(40, 400, 10, dtype=torch.float64)
    logits[0, (labels[0] + 1) % 3] = 1000.0  # one row confidently wrong: log p = -1000 -> -100
    logits = logits.to(dtype).requires_grad_()
    F = torch.tensor(HAND_F, dtype=torch.float64)
    loss = homovar_loss(F.to(dtype), logits, labels, [500, 3, 5])
    loss.backward()
    assert bool(torch.isfinite(logits.grad).all())
    w = homovar_weights(F, labels, [500, 3, 5])
    weights = w[labels].unsqueeze(1).expand(-1, 3)
    expected = torch.nn.functional.binary_cross_entropy(torch.softmax(logits.detach().double(), 1),
                                                        torch.eye(3, dtype=torch.float64)[labels], weight=weights)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-2 if dtype == torch.bfloat16 else 1e-6)


def test_large_batch_is_fast_and_finite():
    """B=4096, K=1000, D=512 in seconds: steps 1-3 are segmented reductions, no (B, K, D)."""
    gen = make_gen(10)
    batch, num_classes, dim = 4096, 1000, 512
    F = torch.randn(batch, dim, generator=gen).relu()
    logits = torch.randn(batch, num_classes, generator=gen)
    labels = torch.randint(0, num_classes, (batch,), generator=gen)
    counts = torch.randint(1, 5000, (num_classes,), generator=gen)
    start = time.perf_counter()
    w = homovar_weights(F, labels, counts)
    loss = homovar_loss(F, logits, labels, counts)
    assert time.perf_counter() - start < 10.0
    assert bool(torch.isfinite(w).all()) and w.sum().item() == pytest.approx(num_classes, rel=1e-4)
    assert math.isfinite(loss.item())


# --- argument checks ------------------------------------------------------------------------

def test_bad_inputs():
    F = torch.tensor(HAND_F, dtype=torch.float64)
    labels = torch.tensor(HAND_LABELS)
    logits = torch.ones(10, 3, dtype=torch.float64) * 0.5
    with pytest.raises(ValueError, match="class_counts"):
        homovar_weights(F, labels, [5, 0, 3])
    with pytest.raises(ValueError, match="class_counts"):
        homovar_weights(F, labels, torch.tensor([5, -2, 3]))
    with pytest.raises(ValueError, match="class_counts"):
        homovar_weights(F, labels, torch.tensor([5.0, 2.5, 3.0]))
    with pytest.raises(ValueError, match="class_counts"):
        homovar_weights(F, labels, [5, 2.5, 3])
    with pytest.raises(ValueError, match="class_counts"):
        homovar_weights(F, labels, torch.tensor([5.0, float("inf"), 3.0]))
    with pytest.raises(TypeError, match="class_counts"):
        homovar_weights(F, labels, torch.tensor([True, True, True]))
    with pytest.raises(TypeError, match="class_counts"):
        homovar_weights(F, labels, [5, "2", 3])
    with pytest.raises(ValueError, match="labels"):
        homovar_weights(F, labels, [5, 3])  # label 2 out of range for K = 2
    with pytest.raises(ValueError, match="labels"):
        homovar_weights(F, labels[:4], [5, 3, 2])
    with pytest.raises(TypeError, match="labels"):
        homovar_weights(F, labels.double(), [5, 3, 2])
    with pytest.raises(ValueError, match="alpha"):
        homovar_weights(F, labels, [5, 3, 2], alpha=1.5)
    with pytest.raises(ValueError, match="beta0"):
        homovar_weights(F, labels, [5, 3, 2], beta0=1.0)
    with pytest.raises(ValueError, match="features"):
        homovar_weights(F[0], labels, [5, 3, 2])
    with pytest.raises(ValueError, match="logits"):
        homovar_loss(F, logits[:, :2], labels, [5, 3, 2])
    with pytest.raises(TypeError, match="logits"):
        homovar_loss(F, logits.long(), labels, [5, 3, 2])
    saved = (F.clone(), labels.clone(), logits.clone())
    homovar_loss(F, logits, labels, [5, 3, 2])
    assert all(torch.equal(a, b) for a, b in zip(saved, (F, labels, logits), strict=True))
