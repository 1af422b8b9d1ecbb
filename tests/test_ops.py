"""torch.library registration: opcheck on every op and backend, torch.compile, dispatch rules."""

import os
import subprocess
import sys

import pytest
import torch

import climbq_kernels as cq
from climbq_kernels import ops

from .conftest import KERNEL_BACKENDS

ALL_BACKENDS = [("reference", "cpu")] + KERNEL_BACKENDS


def _act_args(device, gen, requires_grad=True):
    x = torch.randn(3, 4, 5, generator=gen).to(device).requires_grad_(requires_grad)
    sigma = (torch.rand(3, generator=gen) + 1).to(device)
    mu = (torch.randn(3, generator=gen) * 0.1).to(device)
    return x, sigma, mu


def _samples(device, gen):
    """op -> list of (args) with fresh random tensors, for opcheck."""
    x, sigma, mu = _act_args(device, gen)
    w = torch.randn(8, 6, generator=gen).to(device).requires_grad_()
    y = torch.randn(5, 4, 3, generator=gen).to(device).requires_grad_()
    scale = (torch.rand(4, generator=gen) * 0.1 + 0.05).to(device).requires_grad_()
    zero_point = torch.randint(-3, 3, (4,), generator=gen).to(device)
    labels = torch.randint(0, 3, (5,), generator=gen).to(device)
    weight = torch.randn(6, 64, generator=gen).to(device)
    packed, scales, zeros = ops.quantize_int4(weight, 32)
    grad = torch.randn(3, 4, 5, generator=gen).to(device)
    return {
        ops.climbq_act_quant: [(x, sigma, mu, 4, 2.0), (x, sigma.requires_grad_(), mu, 2, 1.0)],
        ops.climbq_act_quant_backward: [(grad, x.detach(), sigma.detach(), mu, 4, 2.0)],
        ops.climbq_weight_quant: [(w, 4), (w, 1)],
        ops.fake_quant_affine: [(y, scale, zero_point, -8, 7, 1),
                                (y, torch.tensor(0.1, device=device), torch.tensor(0, device=device), 0, 255, None)],
        ops.class_stats: [(y, labels, 3), (y[:, :, 0], labels, 4)],
        ops.quantize_int4: [(weight, 32), (weight, 64)],
        ops.int4_matmul: [(torch.randn(2, 3, 64, generator=gen).to(device).requires_grad_(), packed, scales, zeros,
                           32, torch.randn(6, generator=gen).to(device))],
    }


@pytest.mark.parametrize("backend,device", ALL_BACKENDS)
def test_opcheck_every_op(backend, device, gen):
    for op, samples in _samples(device, gen).items():
        if backend not in ops.KERNELS[op._name.split("::")[-1]]:
            continue
        for args in samples:
            with cq.use_backend(backend):
                torch.library.opcheck(op, args)


def test_every_op_has_a_reference_kernel():
    for name, table in ops.KERNELS.items():
        assert "reference" in table, name
        assert hasattr(torch.ops.climbq, name), f"{name} is not registered as torch.ops.climbq.{name}"


class _TinyQuantNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(8)
        self.scale = torch.nn.Parameter(torch.tensor(0.05))

    def forward(self, x, labels):
        w = cq.climbq_weight_quant(self.conv.weight, bits=4)
        h = torch.nn.functional.conv2d(x, w, self.conv.bias, padding=1)
        h = cq.climbq_act_quant(self.bn(h), labels, num_classes=4, bits=4).relu()
        return cq.fake_quant(h, self.scale, 0, 0, 255).mean(dim=(2, 3))


@pytest.mark.slow
def test_torch_compile_fullgraph_model(gen):
    """A small QAT model with every differentiable op, compiled whole, on the automatic backends."""
    torch._dynamo.reset()
    model = _TinyQuantNet()
    x = torch.randn(4, 3, 6, 6, generator=gen)
    labels = torch.randint(0, 4, (4,), generator=gen)
    eager = model(x, labels)
    compiled = torch.compile(model, fullgraph=True)(x, labels)
    compiled.sum().backward()
    torch.testing.assert_close(compiled, eager)
    assert model.scale.grad is not None and model.conv.weight.grad is not None


@pytest.mark.slow
@pytest.mark.parametrize("backend,device", ALL_BACKENDS)
def test_torch_compile_fullgraph_on_each_backend(backend, device, gen):
    torch._dynamo.reset()
    x = torch.randn(4, 8, 5, generator=gen).to(device).requires_grad_()
    labels = torch.randint(0, 3, (4,), generator=gen).to(device)

    def step(x, labels):
        return (cq.climbq_act_quant(x * 1.5, labels, num_classes=3, bits=3).relu() ** 2).sum()

    with cq.use_backend(backend):
        eager = step(x, labels)
        (eager_grad,) = torch.autograd.grad(eager, x)
        compiled = torch.compile(step, fullgraph=True)(x, labels)
        (compiled_grad,) = torch.autograd.grad(compiled, x)
    torch.testing.assert_close(compiled, eager)
    torch.testing.assert_close(compiled_grad, eager_grad)


def test_backends_report_every_backend_with_a_reason():
    status = cq.backends()
    assert list(status) == ["reference", "cpu", "triton", "cuda"]
    for name, entry in status.items():
        assert isinstance(entry.available, bool) and entry.reason, name
    assert status["reference"].available


def test_every_backend_the_tests_can_check_is_available():
    """The test command builds the C++ extension and Triton runs (interpreted without a GPU):
    neither may silently drop out of the backend-parametrised tests."""
    status = cq.backends()
    assert status["cpu"].available, status["cpu"].reason
    assert status["triton"].available, status["triton"].reason


def test_use_backend_forces_and_restores(gen):
    x, sigma, mu = _act_args("cpu", gen, requires_grad=False)
    with cq.use_backend("reference"):
        assert cq.backends()["reference"].available
        from climbq_kernels.dispatch import explicit_backend
        assert explicit_backend() == "reference"
        ops.climbq_act_quant(x, sigma, mu, 4, 2.0)
    assert explicit_backend() is None or os.environ.get("CLIMBQ_BACKEND")
    with pytest.raises(ValueError, match="backend must be one of"):
        with cq.use_backend("tpu"):
            pass


def test_explicit_backend_without_kernel_or_dtype_raises(gen):
    w = torch.randn(4, 64, generator=gen)
    if cq.backends()["cpu"].available:
        with cq.use_backend("cpu"), pytest.raises(NotImplementedError, match="no 'cpu' kernel"):
            cq.dispatch.resolve("an_op", "cpu", frozenset({"reference", "triton"}))
        with cq.use_backend("cpu"):  # an op with no kernel at all (a packing step) runs its reference
            assert cq.quantize_int4(w, 32).shape == (4, 64)
        with cq.use_backend("cpu"), pytest.raises(TypeError, match="float64 runs on the 'reference'"):
            cq.climbq_act_quant(torch.randn(2, 3, dtype=torch.float64), bits=4)
    with cq.use_backend("cuda"), pytest.raises((RuntimeError, ValueError), match="cuda"):
        cq.climbq_act_quant(torch.randn(2, 3), bits=4)


@pytest.mark.slow
def test_climbq_backend_environment_variable_sets_the_default():
    """Read once per process: changing it later leaves the choice as it was (use_backend is the
    run-time switch)."""
    code = ("import os, torch, climbq_kernels as cq; from climbq_kernels.dispatch import resolve;"
            "print(resolve('climbq_act_quant', torch.device('cpu'), {'reference', 'cpu'}));"
            "os.environ['CLIMBQ_BACKEND'] = 'cpu';"
            "print(resolve('climbq_act_quant', 'cpu', {'reference', 'cpu'}))")
    env = {**os.environ, "CLIMBQ_BACKEND": "reference"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["reference", "reference"]
    env["CLIMBQ_BACKEND"] = "nonsense"
    bad = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert bad.returncode != 0 and "backend must be one of" in bad.stderr


def test_tensor_device_type_names_the_device_without_a_device_object():
    from climbq_kernels.dispatch import tensor_device_type

    assert tensor_device_type(torch.empty(2)) == "cpu"
    assert tensor_device_type(torch.empty(2, device="meta")) == "meta"
    if torch.cuda.is_available():
        assert tensor_device_type(torch.empty(2, device="cuda")) == "cuda"


def test_int4_matmul_prefers_cuda_on_gpus_and_other_ops_prefer_triton(monkeypatch):
    """Automatic order on CUDA tensors when every backend is available: the backend the GPU
    benchmarks found faster for each op."""
    from climbq_kernels import dispatch

    everything = {name: dispatch.BackendStatus(True, "test") for name in dispatch.BACKEND_NAMES}
    monkeypatch.setattr(dispatch, "_statuses", lambda: everything)
    dispatch._resolve.cache_clear()
    try:
        gpu = torch.device("cuda")
        assert dispatch.resolve("int4_matmul", gpu, frozenset(dispatch.BACKEND_NAMES)) == "cuda"
        assert dispatch.resolve("int4_matmul", gpu, frozenset({"reference", "triton"})) == "triton"
        assert dispatch.resolve("climbq_act_quant", gpu, frozenset(dispatch.BACKEND_NAMES)) == "triton"
        assert dispatch.resolve("int4_matmul", torch.device("cpu"), frozenset(dispatch.BACKEND_NAMES)) == "cpu"
    finally:
        dispatch._resolve.cache_clear()
