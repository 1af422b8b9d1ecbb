"""Per-sample bit-width fake quant reference (algorithms.md §3a, DynaDFQ)."""

import pytest
import torch

from climbq_kernels.reference import fake_quant_per_sample_bits, fake_quant_per_sample_bits_backward


def make_gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def inputs(shape, gen, dtype=torch.float64):
    x = (torch.randn(shape, generator=gen, dtype=torch.float64) * 1.5 + 0.5).to(dtype)
    bits = torch.randint(1, 9, (shape[0],), generator=gen)
    return x, bits


def test_forward_matches_scalar_loop():
    gen = make_gen(1)
    x, bits = inputs((4, 6), gen)
    clip = 2.3
    out = fake_quant_per_sample_bits(x, bits, clip)
    for i in range(4):
        n_levels = 2 ** int(bits[i]) - 1
        step = clip / n_levels
        for j in range(6):
            v = min(max(x[i, j].item(), 0.0), clip) / step
            assert out[i, j].item() == pytest.approx(round(v) * step, abs=1e-15)


@pytest.mark.parametrize("shape", [(1,), (1, 5), (5, 123, 7), (3, 2, 4, 4)])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
def test_forward_grid(shape, dtype):
    gen = make_gen(sum(shape))
    x64, bits = inputs(shape, gen)
    clip = torch.tensor(1.75)
    out64 = fake_quant_per_sample_bits(x64, bits, clip)
    out = fake_quant_per_sample_bits(x64.to(dtype), bits, clip)
    assert out.dtype == dtype and out.shape == x64.shape
    assert float(out.min()) >= 0 and float(out.max()) <= 1.75
    n_levels = (2 ** bits.double() - 1).reshape(-1, *([1] * (x64.dim() - 1)))
    codes = out64 / 1.75 * n_levels
    assert torch.allclose(codes, codes.round(), rtol=0, atol=1e-9)  # float64: on the grid
    # lower precision: the float64 answer up to one step (a rounding flip) and the dtype's rounding
    step = 1.75 / n_levels
    assert bool(((out.double() - out64).abs() <= step + 4 * 1.75 * torch.finfo(dtype).eps).all())


def test_b1_and_per_sample_bits():
    x = torch.tensor([[-0.5, 0.2, 0.6, 3.0], [-0.5, 0.2, 0.6, 3.0]], dtype=torch.float64)
    out = fake_quant_per_sample_bits(x, torch.tensor([1, 2]), 1.0)
    assert out[0].tolist() == [0.0, 0.0, 1.0, 1.0]  # b = 1: {0, clip}
    assert out[1].tolist() == pytest.approx([0.0, 1 / 3, 2 / 3, 1.0], abs=1e-15)


class ClampSurrogate(torch.autograd.Function):
    """Forward: clamp(x, 0, clip), the function the straight-through estimator differentiates
    w.r.t. x; backward: the reference's dx."""

    @staticmethod
    def forward(ctx, x, bits, clip):
        ctx.save_for_backward(x, bits)
        ctx.clip = clip
        return x.clamp(0, clip)

    @staticmethod
    def backward(ctx, grad_out):
        x, bits = ctx.saved_tensors
        return fake_quant_per_sample_bits_backward(grad_out, x, bits, ctx.clip)[0], None, None


def test_dx_gradcheck():
    gen = make_gen(2)
    x, bits = inputs((6, 17), gen)
    clip = 2.0
    x = torch.where(((x - clip).abs() < 1e-3) | (x.abs() < 1e-3), x + 0.01, x).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: ClampSurrogate.apply(t, bits, clip), (x,))


def ste_per_sample_bits(x, bits, clip):
    """Explicit straight-through formulation, differentiated by autograd."""
    n_levels = (2 ** bits.double() - 1).reshape(-1, *([1] * (x.dim() - 1)))
    step = clip / n_levels
    inside = (x >= 0) & (x <= clip)
    clamped = torch.where(inside, x, torch.where(x > clip, clip.expand_as(x), torch.zeros_like(x)))
    v = clamped / step
    return (torch.round(v).detach() + (v - v.detach())) * step


@pytest.mark.parametrize("shape", [(1,), (4, 9), (5, 123, 7)])
def test_grads_match_autograd_ste(shape):
    gen = make_gen(3)
    x, bits = inputs(shape, gen)
    x.requires_grad_(True)
    clip = torch.tensor(1.9, dtype=torch.float64, requires_grad=True)
    grad = torch.randn(shape, generator=gen, dtype=torch.float64)
    ste_per_sample_bits(x, bits, clip).backward(grad)
    dx, dclip = fake_quant_per_sample_bits_backward(grad, x.detach(), bits, clip.detach())
    assert torch.allclose(dx, x.grad, rtol=0, atol=1e-12)
    assert dclip.shape == clip.shape
    assert torch.allclose(dclip, clip.grad, rtol=1e-10, atol=1e-12)


def test_dclip_by_hand():
    x = torch.tensor([[-1.0, 0.4, 5.0]], dtype=torch.float64)
    dx, dclip = fake_quant_per_sample_bits_backward(torch.ones_like(x), x, torch.tensor([2]), 3.0)
    # L = 3, s = 1: inside v = 0.4 -> (0 - 0.4) / 3; above -> 1; below -> 0.
    assert dx.tolist() == [[0.0, 1.0, 0.0]]
    assert dclip.item() == pytest.approx(-0.4 / 3 + 1.0, abs=1e-15)


@pytest.mark.parametrize("bits,error", [
    (torch.tensor([0, 2]), ValueError), (torch.tensor([17, 2]), ValueError),
    (torch.tensor([2.0, 4.0]), TypeError), (torch.tensor([2, 4, 8]), ValueError), ([2, 4], TypeError),
])
def test_bad_bits(bits, error):
    x = torch.linspace(-1, 2, 8).reshape(2, 4)
    with pytest.raises(error, match="bits"):
        fake_quant_per_sample_bits(x, bits, 1.0)
    with pytest.raises(error, match="bits"):
        fake_quant_per_sample_bits_backward(torch.ones_like(x), x, bits, 1.0)


def test_bad_inputs_and_purity():
    x = torch.linspace(-1, 2, 8).reshape(2, 4)
    bits = torch.tensor([2, 4])
    for clip in (0.0, -1.0, torch.tensor(-0.5)):
        with pytest.raises(ValueError, match="clip"):
            fake_quant_per_sample_bits(x, bits, clip)
    with pytest.raises(ValueError, match="clip"):
        fake_quant_per_sample_bits(x, bits, torch.tensor([1.0, 2.0]))
    with pytest.raises(TypeError, match="x"):
        fake_quant_per_sample_bits(torch.ones(2, 4, dtype=torch.int64), bits, 1.0)
    saved = (x.clone(), bits.clone())
    fake_quant_per_sample_bits(x, bits, 1.0)
    fake_quant_per_sample_bits_backward(torch.ones_like(x), x, bits, 1.0)
    assert torch.equal(saved[0], x) and torch.equal(saved[1], bits)
