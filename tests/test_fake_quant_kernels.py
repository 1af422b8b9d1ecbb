"""Affine fake quant and LSQ gradients (algorithms.md §1e) on every backend: bit identity with torch's
fake quant, gradients against the float64 reference, opcheck and bad input."""

import pytest
import torch

import climbq_kernels as cq
from climbq_kernels import ops, reference
from climbq_kernels.testing import assert_error_rule, poison_like

from .conftest import KERNEL_BACKENDS

ALL_BACKENDS = [("reference", "cpu")] + KERNEL_BACKENDS
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
# (shape, axis): one element, one sample, odd sizes, a row longer than a Triton block (1024)
# and a CPU chunk (16384) with a ragged end, every axis position, and short rows (< 16
# elements per channel per row: the CPU's position tables) in many row groups.
PER_CHANNEL = [((1,), 0), ((1, 7), 0), ((5, 3, 9, 11), 1), ((3, 4, 7), 2), ((3, 4, 7), 0), ((2, 3, 1031), 1),
               ((2, 16411), 0), ((300, 5, 3), 1)]
PER_TENSOR = [(1,), (1, 7), (5, 3, 9, 11), (2, 16411)]


def _cases(shapes):
    """(backend, device, shape, axis) for every backend; the Triton interpreter (no GPU) is slow,
    so it gets the shapes of at most 4000 elements."""
    interpreted = not torch.cuda.is_available()
    return [(b, d, s, a) for b, d in ALL_BACKENDS for s, a in shapes
            if not (b == "triton" and interpreted and torch.Size(s).numel() > 4000)]


def _inputs(shape, axis, dtype, device, gen, zp_dtype=torch.int32):
    x = (torch.randn(shape, generator=gen) * 3).to(device, dtype)
    channels = 1 if axis is None else shape[axis]
    scale = (torch.rand(channels, generator=gen) * 0.3 + 0.02).to(device)
    zero_point = torch.randint(-5, 6, (channels,), generator=gen).to(device, zp_dtype)
    if zp_dtype.is_floating_point:
        zero_point = zero_point + (torch.rand(channels, generator=gen).to(device) - 0.5).to(zp_dtype)
    if axis is None:
        scale, zero_point = scale.reshape(()), zero_point.reshape(())
    return x, scale, zero_point


def _torch_fake_quant(x, scale, zero_point, qmin, qmax, axis):
    if axis is None:
        return torch.fake_quantize_per_tensor_affine(x, float(scale), int(zero_point), qmin, qmax)
    return torch.fake_quantize_per_channel_affine(x, scale, zero_point, axis, qmin, qmax)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("backend,device,shape,axis", _cases(PER_CHANNEL + [(s, None) for s in PER_TENSOR]),
                         ids=str)
def test_forward_is_bit_identical_to_torch(backend, device, dtype, shape, axis, gen):
    zp_dtypes = [torch.int32] if axis is None else [torch.int32, torch.float32]
    for zp_dtype in zp_dtypes:
        x, scale, zero_point = _inputs(shape, axis, dtype, device, gen, zp_dtype)
        with cq.use_backend(backend):
            got = cq.fake_quant(x, scale, zero_point, -8, 7, axis=axis)
        expected = _torch_fake_quant(x.cpu(), scale.cpu(), zero_point.cpu(), -8, 7, axis)
        assert got.dtype == dtype and torch.equal(got.cpu(), expected), f"zero_point {zp_dtype}"


@pytest.mark.parametrize("backend,device", ALL_BACKENDS)
@pytest.mark.parametrize("axis", [None, 1])
def test_exact_ties_round_half_to_even_like_torch(backend, device, axis):
    """x / scale = k + 0.5 exactly (power-of-two scale): torch rounds to even, so must we."""
    halves = (torch.arange(-20, 20, dtype=torch.float32) + 0.5).reshape(2, 2, 10)
    scale = torch.full((2,), 0.25) if axis is not None else torch.tensor(0.25)
    zero_point = torch.tensor([1, -2], dtype=torch.int32) if axis is not None else torch.tensor(3)
    x = (halves * 0.25).to(device)
    with cq.use_backend(backend):
        got = cq.fake_quant(x, scale.to(device), zero_point.to(device), -16, 15, axis=axis)
    assert torch.equal(got.cpu(), _torch_fake_quant(x.cpu(), scale, zero_point, -16, 15, axis))


@pytest.mark.parametrize("backend,device", ALL_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape,axis", [((1,), None), ((5, 3, 9, 11), 1), ((3, 4, 7), 2), ((2, 3, 1031), None),
                                        ((4, 5, 33), 0),
                                        pytest.param((130, 6, 2), 1, marks=pytest.mark.slow)], ids=str)
def test_backward_matches_float64_reference(backend, device, dtype, shape, axis, gen):
    """dx exactly as the reference; LSQ dscale and dzero_point (one fused pass) within float32
    summation error of the float64 reference."""
    x, scale, zero_point = _inputs(shape, axis, dtype, device, gen, torch.float32)
    grad = torch.randn(shape, generator=gen).to(device, dtype)
    scale_leaf, zp_leaf = scale.clone().requires_grad_(), zero_point.clone().requires_grad_()
    x_leaf = x.clone().requires_grad_()
    with cq.use_backend(backend):
        cq.fake_quant(x_leaf, scale_leaf, zp_leaf, -8, 7, axis=axis).backward(grad)
    args64 = (grad.cpu().double(), x.cpu().double(), scale.cpu().double(), zero_point.cpu().double(), -8, 7)
    dx64, dscale64, dzp64 = reference.fake_quant_affine_backward(*args64, axis=axis, scale_requires_grad=True,
                                                                 zero_point_requires_grad=True)
    dx_lowp, _, _ = reference.fake_quant_affine_backward(grad.cpu(), x.cpu(), scale.cpu(), zero_point.cpu(), -8, 7,
                                                         axis=axis)
    assert x_leaf.grad.dtype == dtype
    assert_error_rule(x_leaf.grad.cpu(), dx64, dx_lowp, name="dx")
    if dtype == torch.float32:
        assert torch.equal(x_leaf.grad.cpu(), dx_lowp)
        # Codes on a rounding boundary may go either way between float32 and float64; with
        # float32 inputs the codes are float32's, so compare against the reference in float32.
        _, dscale32, dzp32 = reference.fake_quant_affine_backward(
            grad.cpu(), x.cpu(), scale.cpu(), zero_point.cpu(), -8, 7, axis=axis, scale_requires_grad=True,
            zero_point_requires_grad=True)
        torch.testing.assert_close(scale_leaf.grad.cpu(), dscale32, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(zp_leaf.grad.cpu(), dzp32, rtol=1e-4, atol=1e-5)
    assert scale_leaf.grad.shape == scale.shape and zp_leaf.grad.shape == zero_point.shape


@pytest.mark.parametrize("backend,device", KERNEL_BACKENDS)
def test_lsq_gradient_equals_torch_learnable_per_channel(backend, device, gen):
    x, scale, zero_point = _inputs((6, 5, 13), 1, torch.float32, device, gen, torch.int64)
    grad = torch.randn(6, 5, 13, generator=gen).to(device)
    scale_leaf = scale.clone().requires_grad_()
    with cq.use_backend(backend):
        cq.fake_quant(x, scale_leaf, zero_point, -8, 7, axis=1).backward(grad)
    scale_t = scale.cpu().clone().requires_grad_()
    torch._fake_quantize_learnable_per_channel_affine(x.cpu(), scale_t, zero_point.cpu().float(), 1, -8, 7,
                                                      reference.lsq_grad_scale(6 * 13, 7)).backward(grad.cpu())
    torch.testing.assert_close(scale_leaf.grad.cpu(), scale_t.grad, rtol=1e-4, atol=1e-5)


@pytest.mark.skipif(not any(b == "triton" for b, _ in KERNEL_BACKENDS), reason="no Triton backend here")
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_triton_launchers_write_every_element(dtype, gen):
    from climbq_kernels.triton import fake_quant as tfq
    device = dict(KERNEL_BACKENDS)["triton"]
    x, scale, zero_point = _inputs((3, 5, 71), 1, dtype, device, gen)
    out = tfq.fake_quant_affine_forward(x, scale, zero_point, -8, 7, 1, out=poison_like(x))
    assert torch.equal(out.cpu(), _torch_fake_quant(x.cpu(), scale.cpu(), zero_point.cpu(), -8, 7, 1))
    grad = torch.randn(x.shape, generator=gen).to(device, dtype)
    dx, dscale, dzp = tfq.fake_quant_affine_backward(grad, x, scale, zero_point, -8, 7, 1, True, False,
                                                     out=poison_like(x))
    ref_dx, ref_dscale, _ = reference.fake_quant_affine_backward(grad.cpu(), x.cpu(), scale.cpu(), zero_point.cpu(),
                                                                 -8, 7, axis=1, scale_requires_grad=True)
    assert torch.equal(dx.cpu(), ref_dx) and dzp is None
    torch.testing.assert_close(dscale.cpu(), ref_dscale.float(), rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("backend,device", ALL_BACKENDS)
def test_opcheck(backend, device, gen):
    x, scale, zero_point = _inputs((3, 4, 5), 1, torch.float32, device, gen, torch.float32)
    grad = torch.randn(3, 4, 5, generator=gen).to(device)
    with cq.use_backend(backend):
        torch.library.opcheck(ops.fake_quant_affine, (x.requires_grad_(), scale.requires_grad_(),
                                                      zero_point.requires_grad_(), -8, 7, 1))
        torch.library.opcheck(ops.fake_quant_affine_backward,
                              (grad, x.detach(), scale.detach(), zero_point.detach(), -8, 7, 1, True, True))
        torch.library.opcheck(ops.fake_quant_affine, (x.detach(), scale.detach()[0], torch.tensor(2, device=device),
                                                      0, 15, None))


@pytest.mark.parametrize("backend,device", ALL_BACKENDS)
def test_bad_input_raises_from_every_backend(backend, device, gen):
    x, scale, zero_point = _inputs((3, 4, 5), 1, torch.float32, device, gen)
    with cq.use_backend(backend):
        with pytest.raises(TypeError, match="x"):
            cq.fake_quant(x.long(), scale, zero_point, -8, 7, axis=1)
        with pytest.raises(ValueError, match="scale"):
            cq.fake_quant(x, -scale, zero_point, -8, 7, axis=1)
        with pytest.raises(ValueError, match="zero_point"):
            cq.fake_quant(x, scale, zero_point + 100, -8, 7, axis=1)
        with pytest.raises(ValueError, match="axis"):
            cq.fake_quant(x, scale, zero_point, -8, 7, axis=3)
        with pytest.raises(ValueError, match="scale"):
            cq.fake_quant(x, scale[:2], zero_point[:2], -8, 7, axis=1)
        with pytest.raises(ValueError, match="quant_min"):
            cq.fake_quant(x, scale, zero_point, 7, -8, axis=1)


@pytest.mark.parametrize("device", [d for b, d in KERNEL_BACKENDS if b in ("cpu", "cuda")])
def test_native_checks_are_a_second_line(device, gen):
    """Called directly, the native ops reject bad arguments with ValueError/TypeError too."""
    x, scale, zero_point = _inputs((3, 4, 5), 1, torch.float32, device, gen)
    native = torch.ops.climbq_native
    with pytest.raises(TypeError, match="x"):
        native.fake_quant_affine_forward(x.long(), scale, zero_point, -8, 7, 1)
    with pytest.raises(ValueError, match="scale"):
        native.fake_quant_affine_forward(x, scale[:2], zero_point, -8, 7, 1)
    with pytest.raises(ValueError, match="axis"):
        native.fake_quant_affine_forward(x, scale, zero_point, -8, 7, 5)
    with pytest.raises(ValueError, match="quant_min"):
        native.fake_quant_affine_forward(x, scale, zero_point, 7, -8, 1)
