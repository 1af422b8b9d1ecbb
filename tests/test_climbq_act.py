"""ClimbQ activation quantizer through the public API, on every backend, against float64."""

import math

import pytest
import torch

import climbq_kernels as cq
from climbq_kernels import reference
from climbq_kernels.testing import assert_error_rule

from .conftest import KERNEL_BACKENDS

SHAPES = [(1, 1), (1, 7), (3, 5, 7), (5, 3, 9, 11), (17, 1031)]
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
ALL_BACKENDS = [("reference", "cpu")] + KERNEL_BACKENDS


def _case(shape, dtype, device, gen, num_classes=4):
    x = (torch.randn(shape, generator=gen) * 2 + 0.1).to(device, dtype)
    labels = torch.randint(0, num_classes, (shape[0],), generator=gen).to(device)
    return x, labels


def _ref_act(x, labels, num_classes, bits, act_range, sigma=None, mu=None):
    """The public function's math on the reference functions, in x's dtype."""
    sigma = reference.class_sigma(labels, num_classes) if sigma is None else sigma
    mu = torch.zeros(num_classes, dtype=torch.float64) if mu is None else mu
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    return reference.climbq_act_quant(x, sigma[labels].to(dtype), mu[labels].to(dtype), bits, act_range)


@pytest.mark.parametrize("backend,device", ALL_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("bits", [2, 4, 8])
def test_forward_and_backward_match_float64(backend, device, dtype, shape, bits, gen):
    x, labels = _case(shape, dtype, device, gen)
    grad = torch.randn(shape, generator=gen).to(device, dtype)
    x_k = x.clone().requires_grad_()
    with cq.use_backend(backend):
        out = cq.climbq_act_quant(x_k, labels, num_classes=4, bits=bits)
        out.backward(grad)
    assert out.dtype == dtype and out.shape == x.shape and out.device == x.device

    x64 = x.detach().cpu().double().requires_grad_()
    labels_cpu = labels.cpu()
    with cq.use_backend("reference"):
        out64 = cq.climbq_act_quant(x64, labels_cpu, num_classes=4, bits=bits)
        out64.backward(grad.cpu().double())
    out_lowp = _ref_act(x.cpu(), labels_cpu, 4, bits, 2.0)
    assert_error_rule(out.detach().cpu(), out64.detach(), out_lowp, step=4.0 / (2**bits - 1), name="out")

    sigma = reference.class_sigma(labels_cpu, 4)[labels_cpu]
    zeros = torch.zeros_like(sigma)
    dx_lowp = reference.climbq_act_quant_backward(grad.cpu(), x.cpu(), sigma, zeros, bits, 2.0)
    assert_error_rule(x_k.grad.cpu(), x64.grad, dx_lowp, name="dx")


@pytest.mark.parametrize("backend,device", ALL_BACKENDS)
def test_caller_sigma_and_mu_get_gradients(backend, device, gen):
    """Gradients to caller-given sigma/mu tables equal autograd through an explicit STE formula."""
    x, labels = _case((6, 3, 5), torch.float32, device, gen, num_classes=3)
    sigma = (torch.rand(3, generator=gen) + 0.8).to(device).requires_grad_()
    mu = (torch.randn(3, generator=gen) * 0.3).to(device).requires_grad_()
    grad = torch.randn(x.shape, generator=gen).to(device)
    with cq.use_backend(backend):
        cq.climbq_act_quant(x, labels, sigma=sigma, mu=mu, bits=3).backward(grad)

    sigma64 = sigma.detach().cpu().double().requires_grad_()
    mu64 = mu.detach().cpu().double().requires_grad_()
    lab = labels.cpu()
    z = (x.cpu().double() - mu64[lab].view(-1, 1, 1)) / sigma64[lab].view(-1, 1, 1)
    scaled = 0.5 * (1 + torch.erf(z / math.sqrt(2))) * 7
    straight_through = scaled + (torch.round(scaled) - scaled).detach()
    (2.0 * (2 * straight_through / 7 - 1)).backward(grad.cpu().double())
    torch.testing.assert_close(sigma.grad.cpu().double(), sigma64.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(mu.grad.cpu().double(), mu64.grad, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("backend,device", ALL_BACKENDS)
def test_inference_mode_uses_constant_sigma_and_matches_thresholds(backend, device, gen):
    x = (torch.randn(4, 33, generator=gen) * 3).to(device)
    with cq.use_backend(backend):
        out = cq.climbq_act_quant(x, bits=4, act_range=1.5)
    by_thresholds = reference.climbq_act_quant_inference(x.cpu().double(), 4, 1.5, sigma=2.0, mu=0.0)
    mismatched = (out.cpu().double() - by_thresholds).abs() > 1e-5
    assert mismatched.float().mean() < 1e-3, "erf form and threshold form disagree beyond ties"


@pytest.mark.parametrize("backend,device", ALL_BACKENDS)
def test_one_bit_gives_two_values_and_32_bits_is_identity(backend, device, gen):
    x, labels = _case((8, 50), torch.float32, device, gen)
    with cq.use_backend(backend):
        one_bit = cq.climbq_act_quant(x, labels, num_classes=4, bits=1)
        full = cq.climbq_act_quant(x, labels, num_classes=4, bits=32)
    assert set(one_bit.unique().tolist()) == {-2.0, 2.0}
    assert full is x


def test_inputs_are_not_mutated(gen):
    x, labels = _case((4, 9), torch.float32, "cpu", gen)
    x_before, labels_before = x.clone(), labels.clone()
    cq.climbq_act_quant(x, labels, num_classes=4)
    assert torch.equal(x, x_before) and torch.equal(labels, labels_before)


@pytest.mark.parametrize("backend,device", ALL_BACKENDS)
def test_channels_last_and_non_contiguous_inputs(backend, device, gen):
    x, labels = _case((3, 4, 5, 6), torch.float32, device, gen)
    with cq.use_backend(backend):
        expected = cq.climbq_act_quant(x, labels, num_classes=4)
        channels_last = cq.climbq_act_quant(x.to(memory_format=torch.channels_last), labels, num_classes=4)
        transposed = cq.climbq_act_quant(x.transpose(2, 3), labels, num_classes=4)
    assert torch.equal(channels_last, expected)
    assert torch.equal(transposed, expected.transpose(2, 3))
