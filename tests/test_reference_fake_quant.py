"""Affine fake quant and LSQ reference (algorithms.md §1e) against torch's own fake-quant ops."""

import math

import pytest
import torch

from climbq_kernels.reference import fake_quant_affine, fake_quant_affine_backward, lsq_grad_scale, lsq_init_scale

LOW_DTYPES = [torch.float32, torch.float16, torch.bfloat16]
SCALES = [0.125, 0.0173, 0.3, 1.7]
RANGES = [(0, 255, 3), (-128, 127, 0), (0, 15, 7), (-8, 7, -2)]  # (qmin, qmax, zero point)


def make_gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def awkward_inputs(gen, scale: float, zp: int, qmin: int, qmax: int, n: int = 6000) -> torch.Tensor:
    """Random values across (and far beyond) the range, plus values placed on .5 ties."""
    span = (qmax - qmin) * scale
    random = torch.randn(n, generator=gen) * span
    ties = (torch.randint(qmin - 3, qmax + 3, (n,), generator=gen) - zp + 0.5) * scale
    far = torch.tensor([1e4, -1e4, 1e9, -1e9]) * scale
    return torch.cat([random, ties.float(), far])


# --- forward: bit identity with torch -------------------------------------------------------

@pytest.mark.parametrize("dtype", LOW_DTYPES)
@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("qmin,qmax,zp", RANGES)
def test_per_tensor_bit_identical(dtype, scale, qmin, qmax, zp):
    gen = make_gen(hash((scale, qmin, zp)) % 1000)
    x = awkward_inputs(gen, scale, zp, qmin, qmax).to(dtype)
    expected = torch.fake_quantize_per_tensor_affine(x, scale, zp, qmin, qmax)
    assert torch.equal(fake_quant_affine(x, scale, zp, qmin, qmax), expected)
    # 0-d and one-element tensor parameters.
    got = fake_quant_affine(x, torch.tensor(scale), torch.tensor([zp], dtype=torch.int32), qmin, qmax)
    assert torch.equal(got, expected)


def test_per_tensor_special_values():
    x = torch.tensor([float("nan"), float("inf"), -float("inf"), 1e30, -1e30, 0.0, -0.0])
    for dtype in LOW_DTYPES:
        expected = torch.fake_quantize_per_tensor_affine(x.to(dtype), 0.1, 3, 0, 255)
        assert torch.equal(fake_quant_affine(x.to(dtype), 0.1, 3, 0, 255), expected)


@pytest.mark.parametrize("dtype", LOW_DTYPES)
@pytest.mark.parametrize("shape,axis", [((6, 50), 0), ((5, 123, 7), 1), ((5, 123, 7), -1), ((3, 4, 5, 6), 2),
                                        ((1, 9), 0), ((7,), 0)])
@pytest.mark.parametrize("zp_dtype", [torch.int32, torch.float32, torch.float16])
def test_per_channel_bit_identical(dtype, shape, axis, zp_dtype):
    gen = make_gen(sum(shape) + axis)
    channels = shape[axis]
    qmin, qmax = 0, 255
    scale = torch.rand(channels, generator=gen) * 0.2 + 1e-3
    zp = torch.randint(0, 40, (channels,), generator=gen).to(zp_dtype)
    if zp_dtype.is_floating_point:
        zp = (zp + torch.rand(channels, generator=gen)).to(zp_dtype)
    x = torch.randn(shape, generator=gen) * 20
    # ties in the code space of channel 0 (exact for an integer zero point)
    x.select(axis, 0).copy_((torch.randint(-10, 300, x.select(axis, 0).shape, generator=gen) + 0.5) * scale[0])
    x = x.to(dtype)
    expected = torch.fake_quantize_per_channel_affine(x, scale, zp, axis % x.dim(), qmin, qmax)  # torch: axis >= 0
    assert torch.equal(fake_quant_affine(x, scale, zp, qmin, qmax, axis=axis), expected)


def test_float64_agrees_with_torch_to_float32_precision():
    """torch's float64 path rounds scale, 1/scale and the product to float32; ours stays float64.
    Away from rounding ties the two agree to float32 precision."""
    gen = make_gen(9)
    scale, zp = 0.0173, 3
    x = torch.randn(20000, generator=gen, dtype=torch.float64) * 2
    got = fake_quant_affine(x, scale, zp, 0, 255)
    expected = torch.fake_quantize_per_tensor_affine(x, scale, zp, 0, 255)
    frac = (x / scale) - torch.floor(x / scale)
    away_from_tie = (frac - 0.5).abs() > 1e-5
    diff = (got - expected).abs()[away_from_tie]
    assert float(diff.max()) <= 1e-6 * 255 * scale
    assert got.dtype == torch.float64
    # and our float64 values are the exact grid points (q - zp) * scale
    codes = torch.round(got / scale) + zp
    assert torch.allclose(got, (codes - zp) * scale, rtol=0, atol=1e-15)


# --- backward: dx mask ----------------------------------------------------------------------

@pytest.mark.parametrize("dtype", LOW_DTYPES)
def test_dx_matches_torch(dtype):
    gen = make_gen(11)
    x = awkward_inputs(gen, 0.05, 3, 0, 255, n=3000).to(dtype).requires_grad_(True)
    grad = torch.randn(x.shape, generator=gen).to(dtype)
    torch.fake_quantize_per_tensor_affine(x, 0.05, 3, 0, 255).backward(grad)
    dx, dscale, dzp = fake_quant_affine_backward(grad, x.detach(), 0.05, 3, 0, 255)
    assert torch.equal(dx, x.grad) and dscale is None and dzp is None
    # per channel
    xc = x.detach()[:3000].reshape(30, 100).requires_grad_(True)
    scale = torch.rand(30, generator=gen) * 0.1 + 0.01
    zp = torch.randint(0, 10, (30,), generator=gen, dtype=torch.int32)
    gc = grad[:3000].reshape(30, 100)
    torch.fake_quantize_per_channel_affine(xc, scale, zp, 0, 0, 255).backward(gc)
    assert torch.equal(fake_quant_affine_backward(gc, xc.detach(), scale, zp, 0, 255, axis=0)[0], xc.grad)


class MaskSurrogate(torch.autograd.Function):
    """Forward: clamp(x, lo, hi) with lo/hi the x where the pre-clamp code leaves [qmin, qmax]
    (a smooth-almost-everywhere function whose derivative is the straight-through mask);
    backward: the reference's dx."""

    @staticmethod
    def forward(ctx, x, scale, zp, qmin, qmax):
        ctx.save_for_backward(x)
        ctx.args = (scale, zp, qmin, qmax)
        return x.clamp((qmin - zp - 0.5) * scale, (qmax - zp + 0.5) * scale)

    @staticmethod
    def backward(ctx, grad_out):
        (x,) = ctx.saved_tensors
        return fake_quant_affine_backward(grad_out, x, *ctx.args)[0], None, None, None, None


def test_dx_gradcheck():
    gen = make_gen(12)
    scale, zp, qmin, qmax = 0.25, 2, -8, 7
    x = torch.randn(200, generator=gen, dtype=torch.float64) * 3
    # keep the finite-difference stencil off the range boundaries
    boundaries = torch.tensor([(qmin - zp - 0.5) * scale, (qmax - zp + 0.5) * scale], dtype=torch.float64)
    x = x[(x.unsqueeze(1) - boundaries).abs().min(dim=1).values > 1e-3].requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: MaskSurrogate.apply(t, scale, zp, qmin, qmax), (x,))


# --- LSQ gradients --------------------------------------------------------------------------

def ste_fake_quant(x, scale, zp, qmin, qmax, axis=None):
    """An explicit straight-through formulation: rint with identity gradient, clamp as is."""
    if axis is not None:
        shape = [-1 if d == axis % x.dim() else 1 for d in range(x.dim())]
        scale, zp = scale.reshape(shape), zp.reshape(shape)
    t = x / scale + zp
    q = torch.round(t).detach() + (t - t.detach())  # value exactly rint(t), gradient of t
    # clamp with the inclusive mask of algorithms.md §1e (torch.clamp's own gradient is 0 at the bounds)
    clamped = torch.where((q >= qmin) & (q <= qmax), q, q.detach().clamp(qmin, qmax))
    return (clamped - zp) * scale


@pytest.mark.parametrize("shape,axis", [((5, 123, 7), None), ((1,), None), ((6, 40), 0), ((5, 123, 7), 1),
                                        ((4, 5, 6), -1)])
def test_lsq_grads_match_autograd_ste(shape, axis):
    gen = make_gen(13 + len(shape))
    qmin, qmax = -8, 7
    x = (torch.randn(shape, generator=gen, dtype=torch.float64) * 0.6).requires_grad_(True)
    channels = () if axis is None else (shape[axis],)
    scale = (torch.rand(channels, generator=gen, dtype=torch.float64) * 0.1 + 0.05).requires_grad_(True)
    zp = torch.randint(-3, 3, channels, generator=gen).double().add(0.3).requires_grad_(True)
    grad = torch.randn(shape, generator=gen, dtype=torch.float64)
    ste_fake_quant(x, scale, zp, qmin, qmax, axis).backward(grad)
    numel_per_scale = x.numel() // (1 if axis is None else shape[axis])
    g = lsq_grad_scale(numel_per_scale, qmax)
    dx, dscale, dzp = fake_quant_affine_backward(grad, x.detach(), scale.detach(), zp.detach(), qmin, qmax,
                                                 axis=axis, scale_requires_grad=True, zero_point_requires_grad=True)
    assert torch.allclose(dx, x.grad, rtol=0, atol=1e-12)
    assert dscale.shape == scale.shape and dzp.shape == zp.shape
    assert torch.allclose(dscale, scale.grad * g, rtol=1e-10, atol=1e-12)
    assert torch.allclose(dzp, zp.grad * g, rtol=1e-10, atol=1e-12)


def test_lsq_grads_match_torch_learnable_per_tensor():
    """torch's learnable op: dx exactly; dscale/dzp to float32 rounding (it forms the inside
    term as ((q - zp) * s - x) / s and sums in its own order)."""
    gen = make_gen(14)
    qmin, qmax = 0, 255
    x = (torch.randn(5, 123, 7, generator=gen) * 2).requires_grad_(True)
    scale = torch.tensor([0.0173], requires_grad=True)
    zp = torch.tensor([37.0], requires_grad=True)
    g = lsq_grad_scale(x.numel(), qmax)
    grad = torch.randn(x.shape, generator=gen)
    torch._fake_quantize_learnable_per_tensor_affine(x, scale, zp, qmin, qmax, g).backward(grad)
    dx, dscale, dzp = fake_quant_affine_backward(grad, x.detach(), scale.detach(), zp.detach(), qmin, qmax,
                                                 scale_requires_grad=True, zero_point_requires_grad=True)
    assert torch.equal(dx, x.grad)
    assert torch.allclose(dscale, scale.grad, rtol=1e-4, atol=1e-6)
    assert torch.allclose(dzp, zp.grad, rtol=1e-4, atol=1e-6)


def test_lsq_grads_match_torch_learnable_per_channel():
    gen = make_gen(15)
    qmin, qmax, axis = -128, 127, 1
    x = (torch.randn(4, 9, 33, generator=gen) * 0.5).requires_grad_(True)
    scale = (torch.rand(9, generator=gen) * 0.005 + 0.002).requires_grad_(True)
    zp = torch.randint(-5, 5, (9,), generator=gen).float().requires_grad_(True)
    g = lsq_grad_scale(4 * 33, qmax)
    grad = torch.randn(x.shape, generator=gen)
    torch._fake_quantize_learnable_per_channel_affine(x, scale, zp, axis, qmin, qmax, g).backward(grad)
    dx, dscale, dzp = fake_quant_affine_backward(grad, x.detach(), scale.detach(), zp.detach(), qmin, qmax,
                                                 axis=axis, scale_requires_grad=True, zero_point_requires_grad=True)
    assert torch.equal(dx, x.grad)
    assert torch.allclose(dscale, scale.grad, rtol=1e-4, atol=1e-6)
    assert torch.allclose(dzp, zp.grad, rtol=1e-4, atol=1e-6)


def test_only_requested_grads():
    gen = make_gen(16)
    x = torch.randn(3, 4, generator=gen)
    dx, dscale, dzp = fake_quant_affine_backward(torch.ones_like(x), x, 0.1, 0.0, -8, 7, scale_requires_grad=True)
    assert dscale is not None and dscale.shape == () and dzp is None
    with pytest.raises(ValueError, match="zero_point"):
        fake_quant_affine_backward(torch.ones_like(x), x, 0.1, 0, -8, 7, zero_point_requires_grad=True)


def test_lsq_scale_helpers():
    assert lsq_grad_scale(100, 7) == 1 / math.sqrt(700)
    gen = make_gen(17)
    x = torch.randn(6, 5, generator=gen, dtype=torch.float64)
    assert lsq_init_scale(x, 7).item() == pytest.approx(2 * x.abs().mean().item() / math.sqrt(7), rel=1e-15)
    per_channel = lsq_init_scale(x, 7, axis=1)
    assert per_channel.shape == (5,)
    for c in range(5):
        expected = 2 * sum(abs(v) for v in x[:, c].tolist()) / 6 / math.sqrt(7)
        assert per_channel[c].item() == pytest.approx(expected, rel=1e-14)
    with pytest.raises(ValueError, match="quant_max"):
        lsq_grad_scale(10, 0)
    with pytest.raises(ValueError, match="numel_per_scale"):
        lsq_grad_scale(0, 7)


# --- argument checks ------------------------------------------------------------------------

def test_bad_inputs():
    x = torch.linspace(-1, 1, 12).reshape(3, 4)
    with pytest.raises(TypeError, match="x"):
        fake_quant_affine(torch.ones(3, dtype=torch.int32), 0.1, 0, 0, 255)
    with pytest.raises(ValueError, match="scale"):
        fake_quant_affine(x, 0.0, 0, 0, 255)
    with pytest.raises(ValueError, match="scale"):
        fake_quant_affine(x, torch.tensor([0.1, 0.2]), 0, 0, 255)
    with pytest.raises(ValueError, match="zero_point"):
        fake_quant_affine(x, 0.1, 300, 0, 255)
    with pytest.raises(ValueError, match="quant_min"):
        fake_quant_affine(x, 0.1, 0, 10, 5)
    with pytest.raises(ValueError, match="axis"):
        fake_quant_affine(x, torch.ones(4), torch.zeros(4, dtype=torch.int32), 0, 255, axis=2)
    with pytest.raises(ValueError, match="scale"):
        fake_quant_affine(x, torch.ones(3), torch.zeros(4, dtype=torch.int32), 0, 255, axis=1)
    with pytest.raises(TypeError, match="scale"):
        fake_quant_affine(x, "0.1", 0, 0, 255)
    with pytest.raises(ValueError, match="grad_out"):
        fake_quant_affine_backward(x[:1], x, 0.1, 0, 0, 255)
    saved = x.clone()
    fake_quant_affine(x, 0.1, 3, 0, 255)
    fake_quant_affine_backward(torch.ones_like(x), x, 0.1, 3.0, 0, 255, None, True, True)
    assert torch.equal(x, saved)
