"""Public `fake_quant`: bit-identical to torch's fake quant, LSQ gradients when the scale learns."""

import pytest
import torch

import climbq_kernels as cq
from climbq_kernels import reference

from .conftest import KERNEL_BACKENDS


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_per_tensor_is_bit_identical_to_torch(dtype, gen):
    x = (torch.randn(7, 33, generator=gen) * 3).to(dtype)
    for scale, zero_point, qmin, qmax in [(0.1, 3, 0, 255), (0.037, 0, -8, 7), (0.5, -2, -128, 127)]:
        expected = torch.fake_quantize_per_tensor_affine(x, scale, zero_point, qmin, qmax)
        assert torch.equal(cq.fake_quant(x, scale, zero_point, qmin, qmax), expected)


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_per_channel_is_bit_identical_to_torch(axis, gen):
    x = torch.randn(5, 6, 7, generator=gen) * 2
    channels = x.shape[axis]
    scale = torch.rand(channels, generator=gen) * 0.2 + 0.01
    zero_point = torch.randint(-4, 4, (channels,), generator=gen, dtype=torch.int32)
    expected = torch.fake_quantize_per_channel_affine(x, scale, zero_point, axis, -8, 7)
    assert torch.equal(cq.fake_quant(x, scale, zero_point, -8, 7, axis=axis), expected)


def test_learned_scale_gets_the_lsq_gradient(gen):
    x = torch.randn(4, 6, 5, generator=gen, requires_grad=True)
    scale = (torch.rand(6, generator=gen) * 0.1 + 0.05).requires_grad_()
    zero_point = torch.zeros(6, dtype=torch.int64)
    grad = torch.randn(4, 6, 5, generator=gen)
    cq.fake_quant(x, scale, zero_point, -8, 7, axis=1).backward(grad)
    dx, dscale, _ = reference.fake_quant_affine_backward(grad, x.detach(), scale.detach(), zero_point, -8, 7, axis=1,
                                                         scale_requires_grad=True)
    assert torch.equal(x.grad, dx)
    torch.testing.assert_close(scale.grad, dscale)
    # LSQ's gradient scale: 1/sqrt(elements per scale * qmax), as torch's learnable op with that grad_factor.
    x_t = x.detach().clone().requires_grad_()
    scale_t = scale.detach().clone().requires_grad_()
    torch._fake_quantize_learnable_per_channel_affine(
        x_t, scale_t, zero_point.float(), 1, -8, 7, reference.lsq_grad_scale(4 * 5, 7)).backward(grad)
    torch.testing.assert_close(scale.grad, scale_t.grad, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("backend,device,dtype", [("reference", "cpu", torch.float64)] + [
    (backend, device, dtype) for backend, device in [("reference", "cpu")] + KERNEL_BACKENDS
    for dtype in (torch.float32, torch.bfloat16)])
def test_a_zero_code_is_positive_zero(backend, device, dtype):
    """A floating zero point of 0 rounds small negative x to the code -0.0; the output is +0.0 as in
    torch's fake quant (per tensor and per channel, fused and unfused zero-point paths)."""
    x = torch.tensor([[-0.01, -0.0, -0.04, 0.02, -0.3]] * 2, dtype=dtype, device=device)
    expected = torch.fake_quantize_per_channel_affine(x.float().cpu(), torch.full((2,), 0.1), torch.zeros(2), 0, 0,
                                                      255)
    assert not torch.signbit(expected).any()
    scales = torch.full((2,), 0.1, device=device)
    with cq.use_backend(backend):
        outputs = [cq.fake_quant(x, 0.1, 0.0, 0, 255),
                   cq.fake_quant(x, 0.1, torch.tensor(0.0, device=device), 0, 255),
                   cq.fake_quant(x, scales, torch.zeros(2, device=device), 0, 255, axis=0),
                   cq.fake_quant(x, scales, torch.zeros(2, dtype=torch.float16, device=device), -8, 7, axis=0)]
    for out in outputs:
        assert not torch.signbit(out[out == 0]).any(), f"-0.0 in {out.tolist()}"
