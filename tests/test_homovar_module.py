"""`nn.HomoVarLoss` and `homovar_loss` (algorithms.md §1c) as a training step uses them: class
counts of any real kind, one sync-free graph under torch.compile, a module that round-trips."""

import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import climbq_kernels as cq
from climbq_kernels import checks, reference
from climbq_kernels.nn.homovar import HomoVarLoss

BATCH, DIM, NUM_CLASSES = 48, 37, 6
COUNTS = [1000, 500, 250, 125, 62, 31]


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _case(gen, dtype=torch.float32):
    features = torch.relu(torch.randn(BATCH, DIM, generator=gen) * 1.3 + 0.2).to(dtype)
    labels = torch.randint(0, NUM_CLASSES, (BATCH,), generator=gen)
    logits = torch.randn(BATCH, NUM_CLASSES, generator=gen).to(dtype)
    return features, logits, labels


# --- homovar_loss: class_counts of any real kind ------------------------------------------------

@pytest.mark.parametrize("counts", [
    torch.tensor(COUNTS, dtype=torch.float32), torch.tensor(COUNTS, dtype=torch.float64),
    torch.tensor(COUNTS, dtype=torch.int32), [float(c) for c in COUNTS], tuple(COUNTS)], ids=str)
def test_class_counts_of_any_real_kind_give_the_int64_result(counts, gen):
    features, logits, labels = _case(gen)
    expected = cq.homovar_loss(features, logits, labels, torch.tensor(COUNTS))
    assert torch.equal(cq.homovar_loss(features, logits, labels, counts), expected)


@pytest.mark.parametrize("counts,error", [
    (torch.tensor([1000.0, 500.5, 250, 125, 62, 31]), ValueError),
    ([1000, 500, 250, 125, 62, 0.0], ValueError),
    (torch.tensor([1000, 500, 250, 125, 62, -31]), ValueError),
    (torch.tensor([1000.0, float("nan"), 250, 125, 62, 31]), ValueError),
    (torch.ones(NUM_CLASSES, dtype=torch.bool), TypeError),
    (torch.ones(NUM_CLASSES, dtype=torch.complex64), TypeError),
    (["1000", 500, 250, 125, 62, 31], TypeError),
], ids=["half", "zero", "negative", "nan", "bool", "complex", "str"])
def test_bad_class_counts_are_refused_by_name(counts, error, gen):
    features, logits, labels = _case(gen)
    with pytest.raises(error, match="class_counts"):
        cq.homovar_loss(features, logits, labels, counts)


# --- homovar_loss under torch.compile ---------------------------------------------------------

def _loss(features, logits, labels):
    return cq.homovar_loss(features, logits, labels, torch.tensor(COUNTS))


def test_homovar_loss_is_one_graph(gen):
    explanation = torch._dynamo.explain(_loss)(*_case(gen))
    assert explanation.graph_break_count == 0 and explanation.graph_count == 1, explanation.break_reasons


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_compiled_homovar_loss_matches_eager(dtype, gen):
    features, logits, labels = _case(gen, dtype)
    compiled = torch.compile(_loss, fullgraph=True, backend="aot_eager")
    for batch in (BATCH, BATCH - 8):  # a new batch size is a new Fcrit table: compiled anew, still exact
        lc, le = logits[:batch].clone().requires_grad_(), logits[:batch].clone().requires_grad_()
        got, expected = compiled(features[:batch], lc, labels[:batch]), _loss(features[:batch], le, labels[:batch])
        (grad_got,), (grad_expected,) = torch.autograd.grad(got, lc), torch.autograd.grad(expected, le)
        tol = {"rtol": 1e-12, "atol": 1e-15} if dtype == torch.float64 else {}
        torch.testing.assert_close(got, expected, **tol)
        torch.testing.assert_close(grad_got, grad_expected, **tol)
    w = reference.homovar_weights(features.double(), labels, COUNTS)
    assert not torch.allclose(w, torch.ones_like(w)), "the case must exercise non-trivial class weights"


def test_compiled_homovar_loss_degenerate_batch_falls_back_like_eager(gen):
    """K' < 2 (one class present) and N - K' < 1 (one sample per class): the torch.where fallbacks."""
    features, logits, _ = _case(gen, torch.float64)
    compiled = torch.compile(_loss, fullgraph=True, backend="aot_eager")
    one_class = torch.full((BATCH,), 2)
    torch.testing.assert_close(compiled(features, logits, one_class), _loss(features, logits, one_class),
                               rtol=1e-12, atol=0)
    each_once = torch.arange(NUM_CLASSES)
    f6, l6 = features[:NUM_CLASSES], logits[:NUM_CLASSES]
    torch.testing.assert_close(compiled(f6, l6, each_once), _loss(f6, l6, each_once), rtol=1e-12, atol=0)


def test_compiled_homovar_loss_refuses_a_bad_label(gen, monkeypatch):
    features, logits, labels = _case(gen)
    bad = labels.clone()
    bad[5] = -1
    with pytest.raises(ValueError, match="labels"):
        _loss(features, logits, bad)
    compiled = torch.compile(_loss, fullgraph=True, backend="aot_eager")
    with pytest.raises(RuntimeError, match="labels"):
        compiled(features, logits, bad)
    torch._dynamo.reset()
    monkeypatch.setattr(checks, "device_assert_is_safe", lambda t: False)  # the CUDA path: poison, no assert
    assert torch.isnan(torch.compile(_loss, fullgraph=True, backend="aot_eager")(features, logits, bad))


# --- HomoVarLoss --------------------------------------------------------------------------------

def test_module_matches_homovar_loss_and_reaches_logits_only(gen):
    features, logits, labels = _case(gen)
    module = HomoVarLoss(COUNTS, alpha=0.1, beta0=0.99)
    features.requires_grad_()
    logits.requires_grad_()
    loss = module(features, logits, labels)
    assert torch.equal(loss, cq.homovar_loss(features, logits, labels, COUNTS, alpha=0.1, beta0=0.99))
    loss.backward()
    assert features.grad is None and logits.grad is not None and bool(torch.isfinite(logits.grad).all())
    assert list(module.parameters()) == []


def test_module_state_dict_round_trip(gen):
    module = HomoVarLoss(torch.tensor(COUNTS, dtype=torch.float64))
    assert module.class_counts.dtype == torch.int64 and module.class_counts.tolist() == COUNTS
    buffer = io.BytesIO()
    torch.save(module.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    fresh = HomoVarLoss([1] * NUM_CLASSES)
    fresh.load_state_dict(state)
    assert torch.equal(fresh.class_counts, module.class_counts)
    features, logits, labels = _case(gen)
    assert torch.equal(fresh(features, logits, labels), module(features, logits, labels))
    assert module.double().class_counts.dtype == torch.int64  # counts are not a floating buffer
    with pytest.raises(ValueError, match="class_counts"):
        fresh.load_state_dict({"class_counts": torch.tensor([5, 0, 3, 1, 1, 1])})
    with pytest.raises(ValueError, match="class_counts"):
        fresh.load_state_dict({"class_counts": torch.tensor([5, 3])})


def test_module_argument_checks(gen):
    features, logits, labels = _case(gen)
    with pytest.raises(ValueError, match="class_counts"):
        HomoVarLoss(COUNTS[:4])(features, logits, labels)
    with pytest.raises(ValueError, match="class_counts"):
        HomoVarLoss([3, 0.5])
    with pytest.raises(ValueError, match="alpha"):
        HomoVarLoss(COUNTS, alpha=1.0)
    with pytest.raises(ValueError, match="beta0"):
        HomoVarLoss(COUNTS, beta0=0.0)
    text = repr(HomoVarLoss(COUNTS))
    assert "num_classes=6" in text and "1000" in text and "alpha=0.05" in text and "beta0=0.999" in text
    assert "[1..20]" in repr(HomoVarLoss(list(range(1, 21))))


class _Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.body = torch.nn.Linear(DIM, 16)
        self.head = torch.nn.Linear(16, NUM_CLASSES)

    def forward(self, x):
        feats = torch.relu(self.body(x))
        return feats, self.head(feats)


@pytest.mark.parametrize("backend", ["aot_eager", pytest.param("inductor", marks=pytest.mark.slow)])
def test_module_in_a_compiled_training_step(backend, gen):
    """loss = cross-entropy + HomoVar, compiled whole (no graph break) and differentiated like eager."""
    torch.manual_seed(0)
    net, homovar = _Net(), HomoVarLoss(COUNTS)
    x, _, labels = _case(gen)

    def step(x, labels):
        feats, logits = net(x)
        return F.cross_entropy(logits, labels) + homovar(feats, logits, labels)

    explanation = torch._dynamo.explain(step)(x, labels)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    torch._dynamo.reset()
    eager = step(x, labels)
    eager_grads = torch.autograd.grad(eager, list(net.parameters()))
    compiled = torch.compile(step, fullgraph=True, backend=backend)(x, labels)
    compiled_grads = torch.autograd.grad(compiled, list(net.parameters()))
    torch.testing.assert_close(compiled, eager)
    for got, expected in zip(compiled_grads, eager_grads, strict=True):
        torch.testing.assert_close(got, expected)


def test_attach_feeds_the_classifier_input_to_the_loss():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 4))
    cq.quantize_(model, cq.ClimbQConfig())
    counts = torch.tensor([40, 20, 10, 5])
    homovar = cq.nn.HomoVarLoss(counts).attach(model)
    x, labels = torch.randn(32, 6), torch.arange(32) % 4
    features = {}
    model[3].register_forward_pre_hook(lambda m, inputs: features.setdefault("x", inputs[0]))
    with cq.class_labels(labels):
        logits = model(x)
    loss = torch.nn.functional.cross_entropy(logits, labels) + homovar(logits, labels)
    torch.testing.assert_close(homovar(logits, labels), cq.homovar_loss(features["x"], logits, labels, counts))
    loss.backward()
    homovar.detach()
    with pytest.raises(RuntimeError, match="attach"):
        homovar(logits, labels)
    with pytest.raises(ValueError, match="layer must name"):
        homovar.attach(model, "head")
