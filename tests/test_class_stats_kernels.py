"""Class-segmented statistics kernels (algorithms.md §1c steps 1-3, §4a) and the HomoVar loss built on
them, on every backend against the float64 reference."""

import pytest
import torch

import climbq_kernels as cq
from climbq_kernels import ops, reference
from climbq_kernels.testing import assert_error_rule, poison_like

from .conftest import KERNEL_BACKENDS

ALL_BACKENDS = [("reference", "cpu")] + KERNEL_BACKENDS
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
NUM_CLASSES = 5
SHAPES = [(1, 1), (1, 6), (7,), (9, 3), (17, 33), (6, 3, 5, 7), (5, 4, 40), (3, 2, 17, 19)]
"""One element, one sample, 1-D, (B, D), rows of 1 / 35 / 40 / 323 positions (>= 32: the CUDA
warp-per-row path; 323 > 256: several Triton tiles per row), odd sizes throughout."""


def _case(shape, dtype, device, gen, offset=0.7):
    x = (torch.randn(shape, generator=gen) * 1.5 + offset).to(device, dtype)
    labels = torch.randint(0, NUM_CLASSES - 1, (shape[0],), generator=gen).to(device)  # class K-1 absent
    return x, labels


def _stats_loss(mean, var, grad_mean, grad_var):
    return (mean * grad_mean).sum() + (var * grad_var).sum()


@pytest.mark.parametrize("backend,device", ALL_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_forward_and_backward_match_float64(backend, device, dtype, shape, gen):
    x, labels = _case(shape, dtype, device, gen)
    x_k = x.clone().requires_grad_()
    with cq.use_backend(backend):
        counts, mean, var = cq.class_stats(x_k, labels, NUM_CLASSES)
    ref_counts, mean64, var64 = reference.class_stats(x.cpu().double(), labels.cpu(), NUM_CLASSES)
    _, mean_lowp, var_lowp = reference.class_stats(x.cpu(), labels.cpu(), NUM_CLASSES)
    assert torch.equal(counts.cpu(), ref_counts)
    assert mean.dtype == dtype and mean.shape == mean64.shape and mean.device == x.device
    assert_error_rule(mean.detach().cpu(), mean64, mean_lowp, name="mean")
    assert_error_rule(var.detach().cpu(), var64, var_lowp, name="var")

    grad_mean = torch.randn(mean.shape, generator=gen)
    grad_var = torch.randn(var.shape, generator=gen)
    _stats_loss(mean, var, grad_mean.to(device, dtype), grad_var.to(device, dtype)).backward()
    x64 = x.detach().cpu().double().requires_grad_()
    with cq.use_backend("reference"):
        _, m64, v64 = cq.class_stats(x64, labels.cpu(), NUM_CLASSES)
        _stats_loss(m64, v64, grad_mean.double(), grad_var.double()).backward()
        x_lowp = x.detach().cpu().requires_grad_()
        _, m_lp, v_lp = cq.class_stats(x_lowp, labels.cpu(), NUM_CLASSES)
        _stats_loss(m_lp, v_lp, grad_mean.to(dtype), grad_var.to(dtype)).backward()
    assert_error_rule(x_k.grad.cpu(), x64.grad, x_lowp.grad, name="dx")


@pytest.mark.parametrize("backend,device", ALL_BACKENDS)
def test_class_means_far_from_zero(backend, device, gen):
    """Accumulation soundness: variances of 1 around means of 1000 (float32 holds ~1e-4 of them)."""
    x, labels = _case((31, 6, 9), torch.float32, device, gen, offset=1000.0)
    with cq.use_backend(backend):
        _, mean, var = cq.class_stats(x, labels, NUM_CLASSES)
    _, mean64, var64 = reference.class_stats(x.cpu().double(), labels.cpu(), NUM_CLASSES)
    _, mean_lowp, var_lowp = reference.class_stats(x.cpu(), labels.cpu(), NUM_CLASSES)
    assert_error_rule(mean.cpu(), mean64, mean_lowp, name="mean")
    assert_error_rule(var.cpu(), var64, var_lowp, name="var")


@pytest.mark.parametrize("backend,device", ALL_BACKENDS)
def test_empty_batch_gives_zeros(backend, device):
    with cq.use_backend(backend):
        counts, mean, var = cq.class_stats(torch.empty(0, 3, device=device), torch.empty(0, dtype=torch.int64,
                                                                                       device=device), 2)
    assert counts.tolist() == [0, 0] and not mean.any() and not var.any() and mean.shape == (2, 3)


@pytest.mark.parametrize("backend,device", [bd for bd in KERNEL_BACKENDS if bd[0] == "triton"])
def test_triton_launcher_writes_every_element(backend, device, gen):
    from climbq_kernels.triton.class_stats import class_stats
    x, labels = _case((11, 7, 3), torch.bfloat16, device, gen)
    out = (poison_like(torch.empty(NUM_CLASSES, 7, dtype=x.dtype, device=device)) for _ in range(2))
    counts, mean, var = class_stats(x, labels, NUM_CLASSES, out=tuple(out))
    ref = reference.class_stats(x.cpu().double(), labels.cpu(), NUM_CLASSES)
    lowp = reference.class_stats(x.cpu(), labels.cpu(), NUM_CLASSES)
    assert torch.equal(counts.cpu(), ref[0])
    assert_error_rule(mean.cpu(), ref[1], lowp[1], name="mean")
    assert_error_rule(var.cpu(), ref[2], lowp[2], name="var")


@pytest.mark.parametrize("backend,device", KERNEL_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_opcheck(backend, device, dtype, gen):
    x, labels = _case((6, 3, 4), dtype, device, gen)
    with cq.use_backend(backend):
        torch.library.opcheck(ops.class_stats, (x.requires_grad_(), labels.long(), NUM_CLASSES))
        torch.library.opcheck(ops.class_stats, (x.detach()[:, :, 0], labels.long(), NUM_CLASSES - 1))


@pytest.mark.parametrize("backend,device", ALL_BACKENDS)
@pytest.mark.parametrize("labels,error,match", [
    ([0, 1, 3, 2], ValueError, r"labels must lie in \[0, 3\)"),
    ([0, -1, 2, 2], ValueError, r"labels must lie in \[0, 3\)"),
    ([0, 1, 2], ValueError, r"labels must have shape \(4,\)"),
    ([0.0, 1.0, 2.0, 1.0], TypeError, "labels must be an integer tensor"),
])
def test_bad_labels_raise_on_every_backend(backend, device, labels, error, match, gen):
    x = torch.randn(4, 6, generator=gen).to(device)
    with cq.use_backend(backend), pytest.raises(error, match=match):
        cq.class_stats(x, torch.tensor(labels, device=device), 3)
        cq.raise_pending_label_errors(wait=True)  # CUDA labels are range-checked without a sync


@pytest.mark.parametrize("backend,device", ALL_BACKENDS)
def test_non_floating_input_raises(backend, device):
    with cq.use_backend(backend):
        with pytest.raises(TypeError, match="floating"):
            cq.class_stats(torch.arange(8, device=device).reshape(4, 2), torch.zeros(4, dtype=torch.int64,
                                                                                     device=device), 2)


@pytest.mark.parametrize("backend,device", [bd for bd in KERNEL_BACKENDS if bd[0] == "cpu"])
def test_native_cpu_op_checks_labels_itself(backend, device):
    """The C++ op's second line: out-of-range labels raise ValueError without the Python layer."""
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\)"):
        torch.ops.climbq_native.class_stats(torch.randn(3, 2), torch.tensor([0, 2, 1]), 2)
    with pytest.raises(TypeError, match="labels must be int64"):
        torch.ops.climbq_native.class_stats(torch.randn(3, 2), torch.tensor([0, 1, 1], dtype=torch.int32), 2)


# --- HomoVar loss: steps 1-3 through the class_stats op ---------------------------------------

def _homovar_case(gen, device, batch=48, dim=37, num_classes=6):
    features = torch.relu(torch.randn(batch, dim, generator=gen) * 1.3 + 0.2)  # exact zeros, as after a ReLU
    labels = torch.randint(0, num_classes, (batch,), generator=gen)
    logits = torch.randn(batch, num_classes, generator=gen)
    class_counts = (1000 * 0.5 ** torch.arange(num_classes, dtype=torch.float64)).long()
    return features.to(device), labels.to(device), logits.to(device), class_counts.to(device)


@pytest.mark.parametrize("backend,device", ALL_BACKENDS)
def test_homovar_loss_matches_reference_float64(backend, device, gen):
    features, labels, logits, class_counts = _homovar_case(gen, device)
    logits_k = logits.clone().requires_grad_()
    with cq.use_backend(backend):
        loss = cq.homovar_loss(features, logits_k, labels, class_counts)
    loss.backward()
    logits64 = logits.cpu().double().requires_grad_()
    loss64 = reference.homovar_loss(features.cpu().double(), logits64, labels.cpu(), class_counts.cpu())
    loss64.backward()
    torch.testing.assert_close(loss.detach().cpu().double(), loss64.detach(), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(logits_k.grad.cpu().double(), logits64.grad, rtol=1e-4, atol=1e-7)
    w = reference.homovar_weights(features.cpu().double(), labels.cpu(), class_counts.cpu())
    assert not torch.allclose(w, torch.ones_like(w)), "the case must exercise non-trivial class weights"


def test_homovar_loss_builds_no_batch_by_class_by_dim_tensor(gen, monkeypatch):
    """Steps 1-3 go through the class_stats op (its eager entry point, ops.class_stats_eager);
    nothing of size B*K*D is allocated on the way."""
    features, labels, logits, class_counts = _homovar_case(gen, "cpu", batch=40, dim=50, num_classes=7)
    calls = []
    original = ops.class_stats_eager

    def spy(x, labels_, num_classes):
        calls.append(tuple(x.shape))
        return original(x, labels_, num_classes)

    monkeypatch.setattr(ops, "class_stats_eager", spy)
    with torch.profiler.profile(profile_memory=True, record_shapes=True) as prof:
        cq.homovar_loss(features, logits, labels, class_counts)
    assert calls == [(40, 50), (40,)]
    largest = max((evt.cpu_memory_usage for evt in prof.events()), default=0)
    assert largest < 40 * 7 * 50 * 4


@pytest.mark.slow
@pytest.mark.parametrize("backend,device", ALL_BACKENDS)
def test_torch_compile_fullgraph_with_weight_quant_and_class_stats(backend, device, gen):
    """A quantized conv whose per-class channel statistics feed a loss (as in ClusterQ's L_FDA),
    traced whole (fullgraph; aot_eager keeps the test fast) and differentiated like eager."""
    torch._dynamo.reset()
    conv = torch.nn.Conv2d(3, 5, 3).to(device)
    x = torch.randn(6, 3, 7, 7, generator=gen).to(device)
    labels = torch.randint(0, 3, (6,), generator=gen).to(device)

    def step(x, labels):
        h = torch.nn.functional.conv2d(x, cq.climbq_weight_quant(conv.weight, 4), conv.bias)
        _, mean, var = cq.class_stats(h, labels, 3)
        return (mean * mean).sum() + var.sum()

    with cq.use_backend(backend):
        eager = step(x, labels)
        (eager_grad,) = torch.autograd.grad(eager, conv.weight)
        compiled = torch.compile(step, fullgraph=True, backend="aot_eager")(x, labels)
        (compiled_grad,) = torch.autograd.grad(compiled, conv.weight)
    torch.testing.assert_close(compiled, eager)
    torch.testing.assert_close(compiled_grad, eager_grad)
    assert eager_grad.abs().sum() > 0
