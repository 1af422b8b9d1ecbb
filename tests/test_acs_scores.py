"""ACS score ops (algorithms.md §2): the reference against a direct implementation, every backend
against the float64 reference by the error rule, NaN and bad-input behaviour, torch.library."""

import math

import pytest
import torch

import climbq_kernels as cq
from climbq_kernels import ops
from climbq_kernels.methods import acs
from climbq_kernels.reference import acs as reference
from climbq_kernels.testing import assert_error_rule

from .conftest import KERNEL_BACKENDS

ALL_BACKENDS = [("reference", "cpu")] + KERNEL_BACKENDS
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
SHAPES = [(1, 1), (1, 2), (7, 2), (13, 1), (5, 13), (37, 300), (3, 1000), (17, 257)]
"""B = 1, primes, K = 1 and 2, K above one Triton chunk (256) and a large K (1000)."""


def _logits(shape, dtype, gen, scale=3.0):
    return (torch.randn(shape, generator=gen) * scale).to(dtype)


def _direct_evs(z, y):
    """sqrt(sum_k (exp(z_k) / sum_j exp(z_j) - [k == y])^2), row by row in Python floats."""
    out = []
    for row, label in zip(z.tolist(), y.tolist(), strict=True):
        top = max(row)
        e = [math.exp(v - top) for v in row]
        p = [v / sum(e) for v in e]
        out.append(math.sqrt(sum((pk - (k == label)) ** 2 for k, pk in enumerate(p))))
    return torch.tensor(out, dtype=torch.float64)


def _direct_ds(zq, zf):
    def softmax(row):
        e = [math.exp(v - max(row)) for v in row]
        return [v / sum(e) for v in e]
    return torch.tensor([math.sqrt(sum((a - b) ** 2 for a, b in zip(softmax(q), softmax(f), strict=True)))
                         for q, f in zip(zq.tolist(), zf.tolist(), strict=True)], dtype=torch.float64)


@pytest.mark.parametrize("shape", [(1, 1), (4, 2), (6, 7)], ids=str)
def test_reference_matches_direct_definition(shape, gen):
    z, zf = _logits(shape, torch.float64, gen), _logits(shape, torch.float64, gen)
    y = torch.randint(0, shape[1], (shape[0],), generator=gen)
    torch.testing.assert_close(reference.error_vector_score(z, y), _direct_evs(z, y), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(reference.disagreement_score(z, zf), _direct_ds(z, zf), rtol=1e-12, atol=1e-12)


def test_hand_values():
    z = torch.tensor([[0.0, 0.0], [100.0, 0.0], [-100.0, 0.0]], dtype=torch.float64)
    y = torch.tensor([0, 0, 0])
    # softmax [.5, .5] vs [1, 0]: sqrt(.25 + .25); a confident right answer 0; a confident wrong one sqrt(2).
    root2 = math.sqrt(2)
    evs = torch.tensor([math.sqrt(0.5), 0.0, root2], dtype=torch.float64)
    torch.testing.assert_close(reference.error_vector_score(z, y), evs)
    ds = torch.tensor([0.0, root2, root2], dtype=torch.float64)
    torch.testing.assert_close(reference.disagreement_score(z, z.flip(1)), ds)


@pytest.mark.parametrize("backend,device", ALL_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_scores_match_float64(backend, device, dtype, shape, gen):
    zq, zf = _logits(shape, dtype, gen), _logits(shape, dtype, gen)
    y = torch.randint(0, shape[1], (shape[0],), generator=gen)
    with cq.use_backend(backend):
        evs = acs.error_vector_score(zq.to(device), y.to(device))
        ds = acs.disagreement_score(zq.to(device), zf.to(device))
    assert evs.dtype == dtype and evs.shape == (shape[0],) and ds.dtype == dtype
    assert_error_rule(evs.cpu(), reference.error_vector_score(zq.double(), y),
                      reference.error_vector_score(zq, y), name="evs")
    assert_error_rule(ds.cpu(), reference.disagreement_score(zq.double(), zf.double()),
                      reference.disagreement_score(zq, zf), name="ds")


@pytest.mark.parametrize("backend,device", ALL_BACKENDS)
def test_large_logits_and_non_contiguous(backend, device, gen):
    """Logits around 1e4 (softmax of unshifted exp would overflow) and a transposed view."""
    zq = _logits((11, 40), torch.float32, gen).t() + 1e4  # (40, 11), non-contiguous
    zf = _logits((40, 11), torch.float32, gen)
    y = torch.randint(0, 11, (40,), generator=gen)
    with cq.use_backend(backend):
        evs = acs.error_vector_score(zq.to(device), y.to(device)).cpu()
        ds = acs.disagreement_score(zq.to(device), zf.to(device)).cpu()
    assert_error_rule(evs, reference.error_vector_score(zq.double(), y), reference.error_vector_score(zq, y))
    assert_error_rule(ds, reference.disagreement_score(zq.double(), zf.double()), reference.disagreement_score(zq, zf))


def test_native_cpu_kernel_float64_matches_reference(gen):
    pytest.importorskip("climbq_kernels._C")
    z, zf = _logits((9, 29), torch.float64, gen), _logits((9, 29), torch.float64, gen)
    y = torch.randint(0, 29, (9,), generator=gen)
    torch.testing.assert_close(torch.ops.climbq_native.error_vector_score(z, y), reference.error_vector_score(z, y))
    torch.testing.assert_close(torch.ops.climbq_native.disagreement_score(z, zf), reference.disagreement_score(z, zf))


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the Triton interpreter's numpy warns of inf - inf
@pytest.mark.parametrize("backend,device", ALL_BACKENDS)
def test_non_finite_logits_give_nan_only_in_their_row(backend, device):
    inf, nan = float("inf"), float("nan")
    z = torch.tensor([[0.0, nan, 1.0], [-inf, 0.0, -inf], [-inf, -inf, -inf], [inf, 0.0, 1.0], [1.0, 2.0, 3.0]])
    y = torch.tensor([0, 1, 0, 0, 2])
    with cq.use_backend(backend):
        evs = acs.error_vector_score(z.to(device), y.to(device)).cpu()
        ds = acs.disagreement_score(z.to(device), torch.zeros(5, 3, device=device)).cpu()
    expected = reference.error_vector_score(z.double(), y)
    assert torch.isnan(evs).tolist() == [True, False, True, True, False]
    assert evs[1].item() == 0.0  # [-inf, 0, -inf] is a certain class 1
    torch.testing.assert_close(evs[4].double(), expected[4])
    assert torch.isnan(ds).tolist() == [True, False, True, True, False]


@pytest.mark.parametrize("backend,device", ALL_BACKENDS)
def test_scores_take_no_gradient(backend, device, gen):
    z = _logits((4, 5), torch.float32, gen).to(device).requires_grad_()
    with cq.use_backend(backend):
        s = acs.acs_score(z, z * 2, torch.tensor([0, 1, 2, 3], device=device), epoch=3, epochs=10)
    assert not s.requires_grad and s.shape == (4,)


@pytest.mark.parametrize("backend,device", ALL_BACKENDS)
def test_empty_batch(backend, device):
    with cq.use_backend(backend):
        evs = acs.error_vector_score(torch.empty(0, 4, device=device), torch.empty(0, dtype=torch.long, device=device))
        ds = acs.disagreement_score(torch.empty(0, 4, device=device), torch.empty(0, 4, device=device))
    assert evs.shape == (0,) and ds.shape == (0,)


@pytest.mark.parametrize("backend,device,dtype", [(b, d, torch.float32) for b, d in KERNEL_BACKENDS]
                         + [(b, d, torch.bfloat16) for b, d in KERNEL_BACKENDS if b == "cpu"])
def test_opcheck(backend, device, dtype, gen):
    z, zf = _logits((6, 7), dtype, gen).to(device), _logits((6, 7), dtype, gen).to(device)
    y = torch.randint(0, 7, (6,), generator=gen).to(device)
    with cq.use_backend(backend):
        torch.library.opcheck(ops.error_vector_score, (z, y))
        torch.library.opcheck(ops.disagreement_score, (z, zf))


@pytest.mark.parametrize("backend,device", ALL_BACKENDS)
def test_torch_compile_fullgraph(backend, device, gen):
    z, zf = _logits((8, 5), torch.float32, gen).to(device), _logits((8, 5), torch.float32, gen).to(device)
    y = torch.randint(0, 5, (8,), generator=gen).to(device)

    def score(zq, zfp, labels):
        return acs.error_vector_score(zq, labels) * 0.7 + acs.disagreement_score(zq, zfp) * 0.3

    with cq.use_backend(backend):
        compiled = torch.compile(score, fullgraph=True, backend="aot_eager")(z, zf, y)
        torch.testing.assert_close(compiled, score(z, zf, y))


def test_schedule_endpoints_and_forms():
    assert acs.acs_beta(0, 10) == 1.0 and acs.acs_beta(10, 10) == 0.0
    assert acs.acs_beta(5, 10) == pytest.approx(math.cos(math.pi / 4))
    assert acs.acs_beta(5, 10, "cos2") == pytest.approx(0.5)
    assert all(acs.acs_beta(t, 10, "cos2") <= acs.acs_beta(t, 10) for t in range(11))


def test_acs_score_blends_evs_into_ds(gen):
    zq, zf = _logits((9, 4), torch.float64, gen), _logits((9, 4), torch.float64, gen)
    y = torch.randint(0, 4, (9,), generator=gen)
    evs, ds = reference.error_vector_score(zq, y), reference.disagreement_score(zq, zf)
    torch.testing.assert_close(acs.acs_score(zq, zf, y, 0, 8), evs)
    torch.testing.assert_close(acs.acs_score(zq, zf, y, 8, 8), ds)
    beta = math.cos(math.pi * 3 / 16) ** 2
    torch.testing.assert_close(acs.acs_score(zq, zf, y, 3, 8, schedule="cos2"), beta * evs + (1 - beta) * ds)


@pytest.mark.parametrize("call,error,match", [
    (lambda: acs.error_vector_score(torch.randn(4), torch.zeros(4, dtype=torch.long)), ValueError, "logits_q"),
    (lambda: acs.error_vector_score(torch.randn(4, 3), torch.zeros(5, dtype=torch.long)), ValueError, "labels"),
    (lambda: acs.error_vector_score(torch.randn(4, 3), torch.tensor([0, 1, 3, 0])), ValueError, "labels"),
    (lambda: acs.error_vector_score(torch.randn(4, 3), torch.zeros(4)), TypeError, "labels"),
    (lambda: acs.error_vector_score(torch.ones(4, 3, dtype=torch.long), torch.zeros(4, dtype=torch.long)),
     TypeError, "logits_q"),
    (lambda: acs.disagreement_score(torch.randn(4, 3), torch.randn(4, 2)), ValueError, "logits_fp"),
    (lambda: acs.disagreement_score(torch.randn(4, 3), [1, 2]), TypeError, "logits_fp"),
    (lambda: acs.acs_beta(11, 10), ValueError, "epoch"),
    (lambda: acs.acs_beta(0, 0), ValueError, "epochs"),
    (lambda: acs.acs_beta(1.5, 10), TypeError, "epoch"),
    (lambda: acs.acs_beta(1, 10, "linear"), ValueError, "schedule"),
])
def test_bad_input_names_the_argument(call, error, match):
    with pytest.raises(error, match=match):
        call()
