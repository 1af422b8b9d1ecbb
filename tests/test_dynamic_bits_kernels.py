"""Per-sample bit-width fake quant (algorithms.md §3a, DynaDFQ) on every backend against the float64
reference: forward, backward (dx and the clip gradient), opcheck and bad input."""

import pytest
import torch

import climbq_kernels as cq
from climbq_kernels import ops, reference
from climbq_kernels.testing import assert_error_rule, poison_like

from .conftest import KERNEL_BACKENDS

ALL_BACKENDS = [("reference", "cpu")] + KERNEL_BACKENDS
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
SHAPES = [(1, 1), (1, 7), (3, 5, 7), (5, 3, 9, 11), (4, 1031), (2, 16411)]


def _cases():
    interpreted = not torch.cuda.is_available()
    return [(b, d, s) for b, d in ALL_BACKENDS for s in SHAPES
            if not (b == "triton" and interpreted and torch.Size(s).numel() > 5000)]


def _inputs(shape, dtype, device, gen):
    x = (torch.randn(shape, generator=gen) * 1.5 + 0.4).to(device, dtype)
    # 2**16 - 1 overflows float16, where the reference computes: its float16 run (the error
    # rule's yardstick) is NaN at 16 bits; the kernels compute in float32 and handle 16 bits.
    max_bits = 15 if dtype == torch.float16 else 16
    bits = torch.randint(1, max_bits + 1, (shape[0],), generator=gen).to(device)
    clip = (torch.rand((), generator=gen) + 1.2).to(device)
    return x, bits, clip


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("backend,device,shape", _cases(), ids=str)
def test_forward_and_backward_match_float64(backend, device, dtype, shape, gen):
    x, bits, clip = _inputs(shape, dtype, device, gen)
    grad = torch.randn(shape, generator=gen).to(device, dtype)
    x_leaf, clip_leaf = x.clone().requires_grad_(), clip.clone().requires_grad_()
    with cq.use_backend(backend):
        out = cq.fake_quant_per_sample_bits(x_leaf, bits, clip_leaf)
        out.backward(grad)
    assert out.dtype == dtype and out.shape == x.shape
    x64, clip64, bits_cpu = x.cpu().double(), clip.cpu().double(), bits.cpu()
    ref64 = reference.fake_quant_per_sample_bits(x64, bits_cpu, clip64)
    ref_lowp = reference.fake_quant_per_sample_bits(x.cpu(), bits_cpu, clip.cpu())
    step = float(clip) / (2 ** bits_cpu.min().item() - 1)
    assert_error_rule(out.detach().cpu(), ref64, ref_lowp, step=step, name="out")

    dx64, dclip64 = reference.fake_quant_per_sample_bits_backward(grad.cpu().double(), x64, bits_cpu, clip64)
    dx_lowp, _ = reference.fake_quant_per_sample_bits_backward(grad.cpu(), x.cpu(), bits_cpu, clip.cpu())
    assert_error_rule(x_leaf.grad.cpu(), dx64, dx_lowp, name="dx")
    # dclip sums (rint(v) - v) / L: an element on a rounding boundary flips its term by 1/L, so
    # compare with the reference evaluated on the kernel's own float32 codes.
    _, dclip32 = reference.fake_quant_per_sample_bits_backward(grad.cpu().float(), x.cpu().float(), bits_cpu,
                                                               clip.cpu().float())
    assert clip_leaf.grad.shape == clip.shape
    # The reference computes in x's dtype; the kernels in float32.
    rel = torch.finfo(dtype).eps if backend == "reference" else 1e-5
    tol = rel * grad.abs().sum().item() + 1e-6
    assert abs(clip_leaf.grad.item() - dclip32.item()) <= tol, (clip_leaf.grad.item(), dclip32.item())
    if dtype == torch.float32:
        assert abs(dclip32.item() - dclip64.item()) <= 1e-3 * grad.abs().sum().item() + 1e-6


@pytest.mark.parametrize("backend,device", ALL_BACKENDS)
def test_python_number_clip_and_sixteen_bits(backend, device, gen):
    x = (torch.rand(2, 300, generator=gen) * 3 - 0.5).to(device)
    bits = torch.tensor([16, 1], device=device)
    with cq.use_backend(backend):
        out = cq.fake_quant_per_sample_bits(x, bits, 2.0)
    assert set(out[1].unique().tolist()) <= {0.0, 2.0}
    torch.testing.assert_close(out[0], x[0].clamp(0, 2.0), atol=2.0 / 65535, rtol=0)


@pytest.mark.skipif(not any(b == "triton" for b, _ in KERNEL_BACKENDS), reason="no Triton backend here")
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_triton_launchers_write_every_element(dtype, gen):
    from climbq_kernels.triton import dynamic_bits as tdb
    device = dict(KERNEL_BACKENDS)["triton"]
    x, bits, clip = _inputs((3, 1100), dtype, device, gen)
    out = tdb.fake_quant_per_sample_bits_forward(x, bits, clip, out=poison_like(x))
    assert torch.isfinite(out).all()
    grad = torch.randn(x.shape, generator=gen).to(device, dtype)
    dx, _ = tdb.fake_quant_per_sample_bits_backward(grad, x, bits, clip, out=poison_like(x))
    # The mask is exact in float64 (the reference in bfloat16 would round clip first).
    dx64, _ = reference.fake_quant_per_sample_bits_backward(grad.cpu().double(), x.cpu().double(), bits.cpu(),
                                                            clip.cpu().double())
    assert torch.equal(dx.cpu(), dx64.to(dtype))


@pytest.mark.parametrize("backend,device", ALL_BACKENDS)
def test_opcheck(backend, device, gen):
    x, bits, clip = _inputs((3, 4, 5), torch.float32, device, gen)
    grad = torch.randn(3, 4, 5, generator=gen).to(device)
    with cq.use_backend(backend):
        torch.library.opcheck(ops.fake_quant_per_sample_bits, (x.requires_grad_(), bits, clip.requires_grad_()))
        torch.library.opcheck(ops.fake_quant_per_sample_bits_backward, (grad, x.detach(), bits, clip.detach()))


@pytest.mark.parametrize("backend,device", ALL_BACKENDS)
def test_bad_input_raises_from_every_backend(backend, device, gen):
    x, bits, clip = _inputs((3, 4), torch.float32, device, gen)
    with cq.use_backend(backend):
        for bad_bits in (bits * 0, bits + 16, -bits):
            with pytest.raises(ValueError, match="bits"):
                cq.fake_quant_per_sample_bits(x, bad_bits, clip)
        with pytest.raises(TypeError, match="bits"):
            cq.fake_quant_per_sample_bits(x, bits.float(), clip)
        with pytest.raises(ValueError, match="bits"):
            cq.fake_quant_per_sample_bits(x, bits[:2], clip)
        with pytest.raises(ValueError, match="clip"):
            cq.fake_quant_per_sample_bits(x, bits, -clip)
        with pytest.raises(ValueError, match="clip"):
            cq.fake_quant_per_sample_bits(x, bits, 0.0)
        with pytest.raises(TypeError, match="x"):
            cq.fake_quant_per_sample_bits(x.long(), bits, clip)


@pytest.mark.parametrize("device", [d for b, d in KERNEL_BACKENDS if b in ("cpu", "cuda")])
def test_native_checks_are_a_second_line(device, gen):
    x, bits, clip = _inputs((3, 4), torch.float32, device, gen)
    native = torch.ops.climbq_native
    with pytest.raises(TypeError, match="bits"):
        native.fake_quant_per_sample_bits_forward(x, bits.float(), clip)
    with pytest.raises(ValueError, match="bits"):
        native.fake_quant_per_sample_bits_forward(x, bits[:2], clip)
    if device == "cpu":  # CUDA leaves value checks to the Python layer (no host sync)
        with pytest.raises(ValueError, match="bits"):
            native.fake_quant_per_sample_bits_forward(x, bits + 16, clip)


class _DynamicQuantBlock(torch.nn.Module):
    """conv -> BN -> ReLU -> per-sample bits (learned clip) -> conv with an LSQ per-channel weight."""

    def __init__(self):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, 6, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(6)
        self.clip = torch.nn.Parameter(torch.tensor(2.0))
        self.conv2 = torch.nn.Conv2d(6, 4, 3, padding=1)
        self.step = torch.nn.Parameter(torch.full((4,), 0.05))

    def forward(self, x, bits):
        h = cq.fake_quant_per_sample_bits(self.bn(self.conv1(x)).relu(), bits, self.clip)
        zero_point = torch.zeros(4, dtype=torch.int32, device=x.device)
        w = cq.fake_quant(self.conv2.weight, self.step, zero_point, -8, 7, axis=0)
        return torch.nn.functional.conv2d(h, w, self.conv2.bias, padding=1).mean(dim=(2, 3))


@pytest.mark.slow
@pytest.mark.parametrize("backend,device", ALL_BACKENDS)
def test_torch_compile_fullgraph_model(backend, device, gen):
    """Both fake quants in one small model, compiled whole: same outputs and gradients as eager."""
    torch._dynamo.reset()
    model = _DynamicQuantBlock().to(device)
    x = torch.randn(3, 3, 5, 5, generator=gen).to(device)
    bits = torch.tensor([2, 4, 8], device=device)
    with cq.use_backend(backend):
        eager = model(x, bits)
        eager_grads = torch.autograd.grad(eager.sum(), (model.clip, model.step))
        compiled = torch.compile(model, fullgraph=True)(x, bits)
        compiled_grads = torch.autograd.grad(compiled.sum(), (model.clip, model.step))
    torch.testing.assert_close(compiled, eager)
    for got, expected in zip(compiled_grads, eager_grads, strict=True):
        torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("backend,device", ALL_BACKENDS)
def test_channels_last_and_non_contiguous_inputs(backend, device, gen):
    x, bits, clip = _inputs((3, 4, 5, 6), torch.float32, device, gen)
    with cq.use_backend(backend):
        expected = cq.fake_quant_per_sample_bits(x, bits, clip)
        channels_last = cq.fake_quant_per_sample_bits(x.to(memory_format=torch.channels_last), bits, clip)
        transposed = cq.fake_quant_per_sample_bits(x.transpose(2, 3), bits, clip)
        per_tensor = cq.fake_quant(x.to(memory_format=torch.channels_last), clip / 8, 0, -8, 7)
    assert torch.equal(channels_last, expected)
    assert torch.equal(transposed, expected.transpose(2, 3))
    assert torch.equal(per_tensor, torch.fake_quantize_per_tensor_affine(x, float(clip / 8), 0, -8, 7))
