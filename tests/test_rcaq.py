"""The RCAQ estimator, its decoder step and the DP baseline (algorithms.md §5): definitions against
direct implementations, the objective never increasing over alternations, DP against brute force,
and bad input named."""

import itertools
import math

import numpy as np
import pytest
import torch

import climbq_kernels as cq
from climbq_kernels.methods.rcaq import RCAQ, DPQuantizer, dp_baseline, make_task
from climbq_kernels.methods.rcaq.decoder import decoder_step
from climbq_kernels.reference.rcaq import decision

TOL = 1e-12


def _task(name="bivariate", n=300, seed=0):
    return make_task(name, n, n, seed)


def _nondecreasing_violations(values, tol=TOL):
    return [(i, a, b) for i, (a, b) in enumerate(itertools.pairwise(values)) if b > a + tol * max(1.0, abs(a))]


@pytest.mark.parametrize("name", ["bivariate", "mixture"])
@pytest.mark.parametrize("gamma", [0.0, 0.3, 0.7, 1.0])
def test_objective_never_increases(name, gamma):
    """Provable for every step: the encoder step is an exact coordinate minimisation and the
    decoder step keeps the current codeword among its candidates (keep_codeword=True)."""
    task = _task(name, seed=1)
    q = RCAQ((3, 4), gamma, task.w, prototypes=16).fit(task.x_train)
    assert not _nondecreasing_violations(q.objective_history_)
    assert q.objective_history_[-1] == pytest.approx(q.objective(task.x_train), rel=1e-12)
    if gamma == 1.0:  # the objective is the 0-1 training error itself
        assert q.objective_history_[-1] == pytest.approx(q.zero_one_error(task.x_train), abs=1e-12)


@pytest.mark.parametrize("gamma", [0.0, 0.5, 1.0])
def test_published_decoder_rule_keeps_the_encoder_steps_monotone(gamma):
    """With the two published candidates only, each encoder half-step still never increases the
    objective; the whole alternation is guaranteed monotone at gamma = 0 only (Lloyd)."""
    task = _task("mixture", seed=2)
    h = RCAQ((4, 3), gamma, task.w, prototypes=16, keep_codeword=False).fit(task.x_train).objective_history_
    encoder_steps = [(h[i], h[i + 1]) for i in range(0, len(h) - 1, 2)]
    assert all(after <= before + TOL * max(1.0, before) for before, after in encoder_steps)
    if gamma == 0.0:
        assert not _nondecreasing_violations(h)


def test_converged_tables_are_coordinate_optimal():
    """At convergence no single sensor's table can lower the objective: brute force over all of them."""
    task = _task("mixture", n=60, seed=3)
    q = RCAQ((2, 3), 0.6, task.w, prototypes=5, max_iter=100).fit(task.x_train)
    assert q.converged_
    base = q.objective(task.x_train)
    for i, rate in enumerate(q.rates):
        original = q.lookup_[i]
        for table in itertools.product(range(rate), repeat=original.shape[0]):
            q.lookup_[i] = torch.tensor(table)
            assert q.objective(task.x_train) >= base - 1e-12
        q.lookup_[i] = original


def test_backends_train_the_same_quantizer():
    task = _task(seed=4)
    fits = {}
    for backend in ("reference", "cpu"):
        with cq.use_backend(backend):
            fits[backend] = RCAQ((4, 4), 0.5, task.w).fit(task.x_train)
    a, b = fits["reference"], fits["cpu"]
    assert all(torch.equal(s, t) for s, t in zip(a.lookup_, b.lookup_, strict=True))
    assert torch.equal(a.codebook_, b.codebook_) and a.objective_history_ == pytest.approx(b.objective_history_)


def test_float64_working_dtype_runs_the_reference():
    task = _task(n=100, seed=5)
    q = RCAQ((3, 3), 0.5, task.w, dtype=torch.float64).fit(task.x_train)
    assert q.codebook_.dtype == torch.float64 and not _nondecreasing_violations(q.objective_history_)


def test_encode_decode_predict_score_follow_their_definitions():
    task = _task(n=200, seed=6)
    q = RCAQ((3, 5), 0.4, task.w, prototypes=8).fit(task.x_train)
    x = task.x_test.float().double()
    m = q.encode(task.x_test)
    for n in range(0, 200, 17):
        idx = []
        for i in range(2):
            p = int(torch.argmin((q.prototypes_[i] - x[n, i]).abs()))  # nearest; no ties in random data
            idx.append(int(q.lookup_[i][p]))
        assert int(m[n]) == idx[0] * 5 + idx[1]
    c = q.decode(m)
    assert torch.equal(c, q.codebook_[m])
    pred = q.predict(task.x_test)
    assert torch.equal(pred, torch.sign(c.double() @ q.w).long())
    agree = (pred == torch.sign(x @ q.w).long()).double().mean()
    assert q.score(task.x_test) == pytest.approx(float(agree))
    assert q.zero_one_error(task.x_test) == pytest.approx(1 - float(agree))
    assert q.mse(task.x_test) == pytest.approx(float(((x - c.double()) ** 2).sum(1).mean()))
    gamma = 0.4
    direct = ((1 - gamma) * ((x - c.double()) ** 2).sum(1) + gamma * (pred != torch.sign(x @ q.w).long())).mean()
    assert q.objective(task.x_test) == pytest.approx(float(direct))
    assert isinstance(q.fit(task.x_train.numpy()), RCAQ)  # NumPy in, self out


def _cell_loss(pts, c, w, gamma):
    y = torch.sign(pts @ w)
    return float(((1 - gamma) * ((pts - c) ** 2).sum(1) + gamma * (y != torch.sign(c @ w))).sum())


def test_decoder_step_picks_the_best_candidate_per_cell():
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(80, 2, generator=gen, dtype=torch.float64)
    w = torch.tensor([0.6, 0.8], dtype=torch.float64)
    q = torch.stack([torch.randint(0, 3, (80,), generator=gen), torch.randint(0, 2, (80,), generator=gen)], 1)
    q[q[:, 0] == 2, 1] = 0  # cell (2, 1) is empty
    m = q[:, 0] * 2 + q[:, 1]
    labels = decision(x, w)
    protos = [x[:, 0], x[:, 1]]
    for gamma in (0.0, 0.5, 1.0):
        code = decoder_step(x, labels, m, q, w, gamma, (3, 2), protos, [q[:, 0], q[:, 1]], torch.float64)
        for cell in range(6):
            pts = x[m == cell]
            if len(pts) == 0:
                marg0 = x[q[:, 0] == cell // 2, 0].mean()
                marg1 = x[q[:, 1] == cell % 2, 1].mean()
                torch.testing.assert_close(code[cell], torch.stack([marg0, marg1]))
                continue
            mean = pts.mean(0)
            refl = mean - 1.001 * (mean @ w) * w

            best = min(_cell_loss(pts, mean, w, gamma), _cell_loss(pts, refl, w, gamma))
            assert _cell_loss(pts, code[cell], w, gamma) == pytest.approx(best, rel=1e-12, abs=1e-12)
            if gamma == 0.0:
                torch.testing.assert_close(code[cell], mean)


def _brute_force_dp(x, labels, cells, gamma):
    order = sorted(range(len(x)), key=lambda i: x[i])
    xs, ys = [x[i] for i in order], [labels[i] for i in order]
    allowed = [c for c in range(1, len(xs)) if xs[c - 1] != xs[c]]
    best = math.inf
    for k in range(cells):
        for cuts in itertools.combinations(allowed, k):
            bounds = [0, *cuts, len(xs)]
            total = 0.0
            for a, b in itertools.pairwise(bounds):
                seg, lab = xs[a:b], ys[a:b]
                mean = sum(seg) / len(seg)
                total += (1 - gamma) * sum((v - mean) ** 2 for v in seg)
                total += gamma * (len(lab) - max(lab.count(c) for c in set(lab)))
            best = min(best, total)
    return best


@pytest.mark.parametrize("n", [1, 2, 5, 8])
@pytest.mark.parametrize("cells", [1, 2, 3, 4])
@pytest.mark.parametrize("gamma", [0.0, 0.35, 1.0])
def test_dp_matches_brute_force(n, cells, gamma):
    gen = torch.Generator().manual_seed(100 * n + cells)
    x = torch.randint(0, 5, (n,), generator=gen).double() + 0.1 * torch.randn(n, generator=gen, dtype=torch.float64)
    x[: n // 3] = x[n - 1]  # repeated values: a cut cannot separate them
    labels = torch.randint(-1, 2, (n,), generator=gen)
    result = dp_baseline(x, labels, cells, gamma)
    expected = _brute_force_dp(x.tolist(), labels.tolist(), cells, gamma)
    assert result.cost == pytest.approx(expected, rel=1e-9, abs=1e-9)
    assert result.cells <= cells and result.thresholds.shape == (result.cells - 1,)
    # The thresholds realise the cost they report.
    cell = torch.bucketize(x, result.thresholds)
    total = 0.0
    for c in range(result.cells):
        seg, lab = x[cell == c], labels[cell == c]
        assert len(seg) > 0
        total += (1 - gamma) * float(((seg - seg.mean()) ** 2).sum())
        total += gamma * (len(lab) - int(torch.bincount(lab + 1).max()))
    assert total == pytest.approx(result.cost, rel=1e-9, abs=1e-9)


def test_dp_quantizer_and_rcaq_share_the_evaluation():
    task = _task(n=200, seed=8)
    dp = DPQuantizer((3, 3), 0.5, task.w).fit(task.x_train)
    assert 0 <= dp.zero_one_error(task.x_test) <= 1 and dp.mse(task.x_test) > 0
    assert dp.score(task.x_test) == pytest.approx(1 - dp.zero_one_error(task.x_test))


@pytest.mark.parametrize("kwargs,error,name", [
    (dict(gamma=-0.1), ValueError, "gamma"),
    (dict(gamma=1.5), ValueError, "gamma"),
    (dict(gamma=float("nan")), ValueError, "gamma"),
    (dict(gamma="0.5"), TypeError, "gamma"),
    (dict(rates=(0, 2)), ValueError, "rates"),
    (dict(rates=(2.5, 2)), TypeError, "rates"),
    (dict(rates=()), ValueError, "rates"),
    (dict(rates=(2, 2, 2)), ValueError, "w"),
    (dict(w=torch.zeros(2)), ValueError, "w"),
    (dict(w=torch.tensor([float("nan"), 1.0])), ValueError, "w"),
    (dict(prototypes=0), ValueError, "prototypes"),
    (dict(dtype=torch.int32), TypeError, "dtype"),
])
def test_bad_constructor_arguments_are_named(kwargs, error, name):
    args = dict(rates=(2, 2), gamma=0.5, w=torch.tensor([1.0, 0.0]))
    args.update(kwargs)
    with pytest.raises(error, match=name):
        RCAQ(args.pop("rates"), args.pop("gamma"), args.pop("w"), **args)


def test_bad_data_is_named():
    q = RCAQ((2, 2), 0.5, torch.tensor([1.0, 1.0]))
    x = torch.randn(10, 2, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="fit"):
        q.encode(x)
    bad = x.clone()
    bad[3, 1] = float("nan")
    for value, error in [(bad, ValueError), (x[:, :1], ValueError), (x[0], ValueError), ([[1.0, 2.0]], TypeError),
                         (torch.zeros(0, 2), ValueError)]:
        with pytest.raises(error, match="X"):
            q.fit(value)
    q.fit(np.asarray(x))
    with pytest.raises(ValueError, match="X"):
        q.predict(torch.randn(4, 3))
    with pytest.raises(ValueError, match="m must"):
        q.decode(torch.tensor([7]))


def test_dp_bad_input_is_named():
    x, y = torch.randn(6, dtype=torch.float64), torch.tensor([0, 1, 0, 1, 1, 0])
    for args, error, name in [((x, y, 0, 0.5), ValueError, "cells"), ((x, y, 2, 2.0), ValueError, "gamma"),
                              ((x, y[:4], 2, 0.5), ValueError, "labels"),
                              ((x, y.double(), 2, 0.5), TypeError, "labels"),
                              ((x.reshape(2, 3), y, 2, 0.5), ValueError, "x"),
                              ((torch.full((6,), float("nan")), y, 2, 0.5), ValueError, "x")]:
        with pytest.raises(error, match=name):
            dp_baseline(*args)
