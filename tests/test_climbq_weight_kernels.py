"""ClimbQ weight quantizer kernels (algorithms.md §1b) on every backend against the float64 reference."""

import pytest
import torch

import climbq_kernels as cq
from climbq_kernels import ops, reference
from climbq_kernels.testing import assert_error_rule, poison_like

from .conftest import KERNEL_BACKENDS

ALL_BACKENDS = [("reference", "cpu")] + KERNEL_BACKENDS
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
SHAPES = [(2,), (3,), (7, 5, 3, 3), (17, 1031)]
LARGE = (300, 4099)
"""More than one reduction chunk of the CPU kernel (65536) and of the Triton launcher's
first level (one BLOCK per program up to 512 programs); too slow for the interpreter."""


def _weight(shape, dtype, device, gen, offset=0.01):
    return (torch.randn(shape, generator=gen) * 0.05 + offset).to(device, dtype)


def _check(backend, device, dtype, shape, bits, gen, offset=0.01):
    w = _weight(shape, dtype, device, gen, offset)
    grad = torch.randn(shape, generator=gen).to(device, dtype)
    w_k = w.clone().requires_grad_()
    with cq.use_backend(backend):
        out = cq.climbq_weight_quant(w_k, bits)
        out.backward(grad)
    assert out.dtype == dtype and out.shape == w.shape and out.device == w.device
    w_cpu, g_cpu = w.cpu(), grad.cpu()
    assert_error_rule(out.detach().cpu(), reference.climbq_weight_quant(w_cpu.double(), bits),
                      reference.climbq_weight_quant(w_cpu, bits), step=2.0 / (2**bits - 1), name="Wq")
    assert_error_rule(w_k.grad.cpu(), reference.climbq_weight_quant_backward(g_cpu.double(), w_cpu.double(), bits),
                      reference.climbq_weight_quant_backward(g_cpu, w_cpu, bits), name="dw")


@pytest.mark.parametrize("backend,device", ALL_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("bits", [1, 4, 8])
def test_forward_and_backward_match_float64(backend, device, dtype, shape, bits, gen):
    _check(backend, device, dtype, shape, bits, gen)


@pytest.mark.parametrize("backend,device", [bd for bd in KERNEL_BACKENDS if bd != ("triton", "cpu")])
def test_large_weight_over_many_reduction_chunks(backend, device, gen):
    _check(backend, device, torch.float32, LARGE, 4, gen)


@pytest.mark.parametrize("backend,device", [bd for bd in KERNEL_BACKENDS if bd[0] == "triton"])
def test_triton_programs_looping_over_several_blocks(backend, device, gen, monkeypatch):
    """Few partials force chunks of several BLOCKs per program, as for weights over 512 BLOCKs."""
    from climbq_kernels.triton import climbq_weight as tw
    monkeypatch.setattr(tw, "MAX_PARTIALS", 4)
    assert tw._chunking(17 * 1031) == (4, 5 * tw.BLOCK)
    _check(backend, device, torch.float32, (17, 1031), 4, gen)


@pytest.mark.parametrize("backend,device", ALL_BACKENDS)
def test_mean_far_from_zero_keeps_std_accurate(backend, device, gen):
    """The shifted float64 sums: mean 50 standard deviations away from 0."""
    _check(backend, device, torch.float32, (9, 131), 4, gen, offset=2.5)


@pytest.mark.parametrize("backend,device", ALL_BACKENDS)
def test_levels_are_exact_and_symmetric(backend, device, gen):
    """Extremes are exactly -1 and +1; every output is bit for bit one of the reference's N + 1 levels."""
    w = torch.cat([torch.tensor([-9.0, 9.0]), torch.randn(400, generator=gen)]).to(device)
    with cq.use_backend(backend):
        out = cq.climbq_weight_quant(w, 3).cpu()
    assert out[0] == -1 and out[1] == 1
    levels = (torch.arange(8, dtype=torch.float32) - 3.5) * torch.tensor(2 / 7, dtype=torch.float32)
    assert torch.isin(out, levels).all() and torch.equal(levels, -levels.flip(0))


@pytest.mark.parametrize("backend,device", [bd for bd in KERNEL_BACKENDS if bd[0] == "triton"])
def test_triton_launchers_write_every_element(backend, device, gen):
    """Poisoned out= buffers: an element the kernels forget stays NaN and fails."""
    from climbq_kernels.triton import climbq_weight as tw
    w = _weight((3, 1027), torch.float16, device, gen)
    grad = torch.randn(w.shape, generator=gen).to(device, w.dtype)
    out = tw.climbq_weight_quant_forward(w, 2, out=poison_like(w))
    dw = tw.climbq_weight_quant_backward(grad, w, 2, out=poison_like(w))
    assert_error_rule(out.cpu(), reference.climbq_weight_quant(w.cpu().double(), 2),
                      reference.climbq_weight_quant(w.cpu(), 2), step=2 / 3, name="Wq")
    assert_error_rule(dw.cpu(), reference.climbq_weight_quant_backward(grad.cpu().double(), w.cpu().double(), 2),
                      reference.climbq_weight_quant_backward(grad.cpu(), w.cpu(), 2), name="dw")


@pytest.mark.parametrize("backend,device", KERNEL_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_opcheck(backend, device, dtype, gen):
    w = _weight((6, 5, 3), dtype, device, gen).requires_grad_()
    grad = torch.randn(w.shape, generator=gen).to(device, dtype)
    with cq.use_backend(backend):
        torch.library.opcheck(ops.climbq_weight_quant, (w, 3))
        torch.library.opcheck(ops.climbq_weight_quant_backward, (grad, w.detach(), 3))


@pytest.mark.parametrize("backend,device", ALL_BACKENDS)
def test_bad_weights_raise_on_every_backend(backend, device):
    with cq.use_backend(backend):
        with pytest.raises(ValueError, match="nonzero spread"):
            cq.climbq_weight_quant(torch.full((4, 3), 0.25, device=device), 4)
        with pytest.raises(ValueError, match="nonzero spread"):
            ops.climbq_weight_quant_backward(torch.ones(5, device=device), torch.full((5,), -1.0, device=device), 4)
        with pytest.raises(ValueError, match="at least 2 elements"):
            cq.climbq_weight_quant(torch.tensor([1.5], device=device), 4)
        with pytest.raises(TypeError, match="floating"):
            cq.climbq_weight_quant(torch.arange(6, device=device), 4)
        with pytest.raises(ValueError, match="bits"):
            cq.climbq_weight_quant(torch.randn(6, device=device), 0)


@pytest.mark.parametrize("backend,device", [bd for bd in KERNEL_BACKENDS if bd[0] != "triton"])
def test_native_kernels_check_their_arguments(backend, device):
    """The second line: the C++/CUDA ops raise ValueError/TypeError themselves."""
    native = torch.ops.climbq_native
    with pytest.raises(ValueError, match="at least 2 elements"):
        native.climbq_weight_quant_forward(torch.ones(1, device=device), 4)
    with pytest.raises(ValueError, match="bits must be in"):
        native.climbq_weight_quant_forward(torch.randn(4, device=device), 17)
    with pytest.raises(TypeError, match="float32, float16 or bfloat16"):
        native.climbq_weight_quant_forward(torch.randn(4, device=device, dtype=torch.float64), 4)
    with pytest.raises(ValueError, match="grad_out must have w's shape"):
        native.climbq_weight_quant_backward(torch.randn(3, device=device), torch.randn(4, device=device), 4)
    if device == "cpu":
        with pytest.raises(ValueError, match="nonzero spread"):
            native.climbq_weight_quant_forward(torch.full((3, 3), 2.0), 4)
        with pytest.raises(ValueError, match="finite"):
            native.climbq_weight_quant_forward(torch.tensor([1.0, float("nan"), 2.0]), 4)
