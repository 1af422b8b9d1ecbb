"""The ClimbQ activation quantizer's fused variants (algorithms.md §1a) on every backend, against float64:
folded BN before and ReLU after, inference threshold bucketing, uint8 codes, channels-last."""

import pytest
import torch

import climbq_kernels as cq
from climbq_kernels import ops, reference
from climbq_kernels.constants import levels
from climbq_kernels.testing import assert_error_rule, poison_like

from .conftest import GPU, KERNEL_BACKENDS

ALL_BACKENDS = [("reference", "cpu")] + KERNEL_BACKENDS
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
SHAPES = [(1, 1), (1, 3, 5), (3, 4, 7), (2, 3, 5, 7), (5, 6, 3, 3)]
"""One element, one sample, odd sizes; 4-D shapes run contiguous and channels-last."""
NUM_CLASSES = 3


def _case(shape, dtype, device, gen):
    x = (torch.randn(shape, generator=gen) * 2 + 0.1).to(device, dtype)
    labels = torch.randint(0, NUM_CLASSES, (shape[0],), generator=gen).to(device)
    scale = (torch.rand(shape[1], generator=gen) + 0.5).to(device)
    shift = (torch.randn(shape[1], generator=gen) * 0.3).to(device)
    grad = torch.randn(shape, generator=gen).to(device, dtype)
    return x, labels, scale, shift, grad


def _layouts(shape):
    return ["contiguous", "channels_last"] if len(shape) == 4 else ["contiguous"]


def _in_layout(t, layout):
    return t.to(memory_format=torch.channels_last) if layout == "channels_last" else t


@pytest.mark.parametrize("backend,device", ALL_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("relu", [False, True])
def test_fused_bn_relu_forward_and_backward_match_float64(backend, device, dtype, shape, relu, gen):
    bits = 3
    x, labels, scale, shift, grad = _case(shape, dtype, device, gen)
    sigma = reference.class_sigma(labels.cpu(), NUM_CLASSES)[labels.cpu()]
    mu = torch.zeros_like(sigma)
    tables = dict(relu=relu)
    for layout in _layouts(shape):
        x_k = _in_layout(x, layout).clone().requires_grad_()
        scale_k, shift_k = scale.clone().requires_grad_(), shift.clone().requires_grad_()
        with cq.use_backend(backend):
            out = cq.climbq_act_quant(x_k, labels, num_classes=NUM_CLASSES, bits=bits, bn_scale=scale_k,
                                      bn_shift=shift_k, **tables)
            out.backward(_in_layout(grad, layout))
        assert out.dtype == dtype and out.shape == x.shape
        if layout == "channels_last":
            assert out.is_contiguous(memory_format=torch.channels_last)

        x64, g64 = x.cpu().double(), grad.cpu().double()
        bn64 = dict(bn_scale=scale.cpu().double(), bn_shift=shift.cpu().double(), **tables)
        bn_lowp = dict(bn_scale=scale.cpu(), bn_shift=shift.cpu(), **tables)
        out64 = reference.climbq_act_fused(x64, sigma.double(), mu.double(), bits, 2.0, **bn64)
        out_lowp = reference.climbq_act_fused(x.cpu(), sigma, mu, bits, 2.0, **bn_lowp)
        assert_error_rule(out.detach().cpu(), out64, out_lowp, step=4.0 / levels(bits), name="out")

        grads64 = reference.climbq_act_fused_backward(g64, x64, sigma.double(), mu.double(), bits, 2.0, **bn64)
        grads_lowp = reference.climbq_act_fused_backward(grad.cpu(), x.cpu(), sigma, mu, bits, 2.0, **bn_lowp)
        assert_error_rule(x_k.grad.cpu(), grads64[0], grads_lowp[0], name="dx")
        # The (C,) sums are float32 whatever x's dtype: judged against the low-precision reference's
        # per-element error, summed.
        for name, got, ref64, ref_lowp in (("dbn_scale", scale_k.grad, grads64[1], grads_lowp[1]),
                                           ("dbn_shift", shift_k.grad, grads64[2], grads_lowp[2])):
            assert_error_rule(got.cpu(), ref64, ref_lowp.float(), name=name)


@pytest.mark.parametrize("backend,device", ALL_BACKENDS)
def test_fused_gradients_reach_caller_sigma_and_mu(backend, device, gen):
    """With BN and ReLU, table gradients equal the float64 chain rule through y = folded_bn(x)."""
    x, labels, scale, shift, grad = _case((4, 3, 6), torch.float32, device, gen)
    sigma = (torch.rand(NUM_CLASSES, generator=gen) + 0.8).to(device).requires_grad_()
    mu = (torch.randn(NUM_CLASSES, generator=gen) * 0.3).to(device).requires_grad_()
    with cq.use_backend(backend):
        cq.climbq_act_quant(x, labels, sigma=sigma, mu=mu, bits=3, bn_scale=scale, bn_shift=shift,
                            relu=True).backward(grad)
    lab = labels.cpu()
    x64, g64 = x.cpu().double(), grad.cpu().double()
    s64, m64 = sigma.detach().cpu().double()[lab], mu.detach().cpu().double()[lab]
    bn = dict(bn_scale=scale.cpu().double(), bn_shift=shift.cpu().double(), relu=True)
    dy = reference.climbq_act_fused_grad_y(g64, x64, s64, m64, 3, 2.0, **bn)
    y = reference.folded_bn(x64, bn["bn_scale"], bn["bn_shift"])
    z = (y - m64.view(-1, 1, 1)) / s64.view(-1, 1, 1)
    dmu = torch.zeros(NUM_CLASSES, dtype=torch.float64).index_add_(0, lab, -dy.sum(dim=(1, 2)))
    dsigma = torch.zeros(NUM_CLASSES, dtype=torch.float64).index_add_(0, lab, -(dy * z).sum(dim=(1, 2)))
    torch.testing.assert_close(mu.grad.cpu().double(), dmu, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(sigma.grad.cpu().double(), dsigma, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("backend,device", ALL_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("bits", [1, 2, 4, 8])
def test_inference_buckets_like_the_threshold_reference(backend, device, dtype, bits, gen):
    x = (torch.randn(3, 5, 17, generator=gen) * 3).to(device, dtype)
    with cq.use_backend(backend):
        out = cq.climbq_act_quant(x, bits=bits, act_range=1.5, sigma=1.7, mu=0.2)
        codes = cq.climbq_act_codes(x, bits=bits, sigma=1.7, mu=0.2)
    ref64 = reference.climbq_act_quant_inference(x.cpu().double(), bits, 1.5, 1.7, 0.2)
    ref_lowp = reference.climbq_act_quant_inference(x.cpu(), bits, 1.5, 1.7, 0.2)
    assert_error_rule(out.cpu(), ref64, ref_lowp, step=3.0 / levels(bits), name="out")
    # The kernels compare x (widened to float32) with float32 thresholds: the same codes exactly.
    assert torch.equal(codes.cpu().long(), reference.climbq_act_inference_codes(x.cpu(), bits, 1.7, 0.2))


@pytest.mark.parametrize("backend,device", ALL_BACKENDS)
@pytest.mark.parametrize("bits", [1, 2, 3, 5, 7])
def test_inference_ties_follow_the_reference_convention(backend, device, bits):
    """x exactly on a threshold: above it for odd j, below for even j (rint's half-to-even)."""
    t = reference.climbq_act_thresholds(bits, 2.0, 0.0, dtype=torch.float32)
    x = torch.cat([t, torch.tensor([0.0, float("inf"), -float("inf")])]).reshape(1, -1).to(device)
    with cq.use_backend(backend):
        codes = cq.climbq_act_codes(x, bits=bits)
        out = cq.climbq_act_quant(x, bits=bits)
    expected = reference.climbq_act_quant_inference(x.cpu(), bits, 2.0)
    torch.testing.assert_close(out.cpu(), expected, rtol=0, atol=1e-6)
    assert torch.equal(codes.cpu().long(), reference.climbq_act_inference_codes(x.cpu(), bits))


@pytest.mark.parametrize("backend,device", ALL_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("bits", [1, 4, 8])
def test_codes_match_the_float64_codes(backend, device, dtype, bits, gen):
    x, labels, _, _, _ = _case((5, 4, 3, 7), dtype, device, gen)
    for layout in ("contiguous", "channels_last"):
        with cq.use_backend(backend):
            codes = cq.climbq_act_codes(_in_layout(x, layout), labels, num_classes=NUM_CLASSES, bits=bits)
        assert codes.dtype == torch.uint8 and codes.shape == x.shape
        sigma = reference.class_sigma(labels.cpu(), NUM_CLASSES)[labels.cpu()].double()
        ref64 = reference.climbq_act_codes(x.cpu().double(), sigma, torch.zeros_like(sigma), bits)
        ref_lowp = reference.climbq_act_codes(x.cpu(), sigma.float(), torch.zeros_like(sigma).float(), bits)
        assert_error_rule(codes.cpu().float(), ref64.double(), ref_lowp.float(), step=1.0, name="codes")


@pytest.mark.parametrize("backend,device", ALL_BACKENDS)
def test_channels_last_equals_contiguous_bitwise(backend, device, gen):
    x, labels, scale, shift, grad = _case((3, 5, 4, 6), torch.float32, device, gen)
    results = {}
    for layout in ("contiguous", "channels_last"):
        x_k = _in_layout(x, layout).clone().requires_grad_()
        with cq.use_backend(backend):
            out = cq.climbq_act_quant(x_k, labels, num_classes=NUM_CLASSES, bn_scale=scale, bn_shift=shift,
                                      relu=True)
            out.backward(_in_layout(grad, layout))
        results[layout] = (out.detach(), x_k.grad)
        if layout == "channels_last":
            assert out.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(results["channels_last"][0], results["contiguous"][0])
    assert torch.equal(results["channels_last"][1], results["contiguous"][1])


@pytest.mark.skipif(not any(b == "triton" for b, _ in KERNEL_BACKENDS), reason="no GPU and no TRITON_INTERPRET")
@pytest.mark.parametrize("shape,channels_last", [((1, 1), False), ((3, 4, 7), False), ((2, 3, 5, 7), True),
                                                 ((3, 1029), False)], ids=str)
def test_triton_launchers_write_every_element(shape, channels_last, gen):
    from climbq_kernels.triton import climbq_act as tk
    device = "cuda" if GPU else "cpu"
    x, labels, scale, shift, grad = _case(shape, torch.float16, device, gen)
    if channels_last:  # the kernels' view of a channels-last tensor
        x, grad = x.movedim(1, -1).contiguous(), grad.movedim(1, -1).contiguous()
    sigma = torch.rand(shape[0], generator=gen).to(device) + 1
    mu = torch.zeros_like(sigma)
    t = reference.climbq_act_thresholds(4, dtype=torch.float32).to(device)
    args = (sigma, mu, t, scale, shift, 4)
    out = tk.climbq_act_fused_forward(x, *args, 2.0, True, channels_last, out=poison_like(x))
    dx = tk.climbq_act_fused_backward(grad, x, *args, 2.0, True, channels_last, True, out=poison_like(x))
    codes = tk.climbq_act_fused_codes(x, *args, channels_last, out=poison_like(torch.empty_like(x, dtype=torch.uint8)))
    assert torch.isfinite(out).all() and torch.isfinite(dx).all()
    assert int(codes.max()) <= levels(4)


@pytest.mark.parametrize("backend,device", ALL_BACKENDS)
def test_opcheck_fused_ops(backend, device, gen):
    x, labels, scale, shift, grad = _case((3, 4, 5, 2), torch.float32, device, gen)
    sigma = (torch.rand(3, generator=gen) + 1).to(device)
    mu = (torch.randn(3, generator=gen) * 0.1).to(device)
    t = reference.climbq_act_thresholds(3, dtype=torch.float32).to(device)
    x_cl = x.to(memory_format=torch.channels_last)
    samples = {
        ops.climbq_act_fused: [(x.requires_grad_(), sigma, mu, None, scale.requires_grad_(), shift, 3, 2.0, True),
                               (x_cl, sigma, mu, t, None, None, 3, 1.0, False),
                               (x_cl.detach().requires_grad_(), sigma, mu, None, scale, shift, 2, 1.0, True)],
        ops.climbq_act_fused_backward: [(grad, x.detach(), sigma, mu, None, scale.detach(), shift, 3, 2.0, True, True),
                                        (grad, x.detach(), sigma, mu, t, None, None, 3, 2.0, True, False)],
        ops.climbq_act_codes: [(x.detach(), sigma, mu, None, 4), (x_cl.detach(), sigma, mu, t, 3)],
    }
    with cq.use_backend(backend):
        for op, cases in samples.items():
            for args in cases:
                torch.library.opcheck(op, args)


@pytest.mark.parametrize("backend,device", ALL_BACKENDS)
@pytest.mark.parametrize("kwargs,error,match", [
    (dict(bn_scale=torch.ones(3)), ValueError, r"bn_scale must have shape \(4,\)"),
    (dict(bn_shift=torch.ones(4, 1)), ValueError, r"bn_shift must have shape \(4,\)"),
    (dict(bn_scale=torch.ones(4, dtype=torch.int64)), TypeError, "bn_scale must be a floating tensor"),
    (dict(bn_shift=[0.0] * 4), TypeError, "bn_shift must be a torch.Tensor"),
    (dict(relu=1), TypeError, "relu must be a bool"),
])
def test_bad_fused_arguments_are_rejected(backend, device, kwargs, error, match, gen):
    x = torch.randn(2, 4, 3, generator=gen).to(device)
    labels = torch.tensor([0, 1], device=device)
    kwargs = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
    with cq.use_backend(backend), pytest.raises(error, match=match):
        cq.climbq_act_quant(x, labels, num_classes=2, **kwargs)


@pytest.mark.parametrize("backend,device", ALL_BACKENDS)
def test_bad_codes_arguments_are_rejected(backend, device, gen):
    x = torch.randn(2, 5, generator=gen).to(device)
    with cq.use_backend(backend):
        for bits in (9, 16, 32):
            with pytest.raises(ValueError, match="bits must be in"):
                cq.climbq_act_codes(x, bits=bits)
        with pytest.raises(ValueError, match="bn_scale needs x of shape"):
            cq.climbq_act_quant(x[:, 0], bn_scale=torch.ones(1, device=device))
        with pytest.raises(TypeError, match="x must be a floating tensor"):
            cq.climbq_act_codes(torch.ones(2, 5, dtype=torch.int32, device=device))


def test_full_precision_keeps_the_fused_bn_and_relu(gen):
    x, labels, scale, shift, _ = _case((3, 4, 5), torch.float32, "cpu", gen)
    out = cq.climbq_act_quant(x, labels, num_classes=NUM_CLASSES, bits=32, bn_scale=scale, bn_shift=shift,
                              relu=True)
    torch.testing.assert_close(out, torch.relu(x * scale.view(1, -1, 1) + shift.view(1, -1, 1)))


@pytest.mark.slow
def test_torch_compile_fullgraph_fused_and_inference(gen):
    """A conv -> folded BN -> ClimbQ -> ReLU block, trained and then run label-free, compiled whole."""
    torch._dynamo.reset()
    conv = torch.nn.Conv2d(3, 6, 3, padding=1)
    scale = (torch.rand(6, generator=gen) + 0.5).requires_grad_()
    shift = (torch.randn(6, generator=gen) * 0.1).requires_grad_()
    x = torch.randn(4, 3, 5, 5, generator=gen).to(memory_format=torch.channels_last)
    labels = torch.randint(0, NUM_CLASSES, (4,), generator=gen)

    def train_step(x, labels):
        h = cq.climbq_act_quant(conv(x), labels, num_classes=NUM_CLASSES, bn_scale=scale, bn_shift=shift, relu=True)
        return (h ** 2).mean()

    def infer(x):
        return cq.climbq_act_quant(conv(x), bits=3, bn_scale=scale, bn_shift=shift, relu=True)

    eager = train_step(x, labels)
    eager_grads = torch.autograd.grad(eager, (scale, shift, conv.weight))
    compiled = torch.compile(train_step, fullgraph=True)(x, labels)
    compiled_grads = torch.autograd.grad(compiled, (scale, shift, conv.weight))
    torch.testing.assert_close(compiled, eager)
    for got, want in zip(compiled_grads, eager_grads, strict=True):
        torch.testing.assert_close(got, want)
    with torch.no_grad():
        torch.testing.assert_close(torch.compile(infer, fullgraph=True)(x), infer(x))
