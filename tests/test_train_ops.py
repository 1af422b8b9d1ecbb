"""The native training ops (csrc/train.cpp, csrc/class_table.h) against the paths they replace.

Each op runs the same kernels as the `climbq::` custom ops, so forward values and gradients must
be bit-identical to them (and those are tested against the float64 reference in the kernel
tests); the table ops must equal the reference table. CPU here; the CUDA kernels run the same
tests when a GPU is present.
"""

from __future__ import annotations

import pytest
import torch
from torch.library import opcheck

import climbq_kernels as cq
from climbq_kernels import ops, reference
from climbq_kernels.nn.quantizers import _positive_step
from climbq_kernels.ops import train as train_ops

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def grads(out: torch.Tensor, inputs: list[torch.Tensor], grad_out: torch.Tensor) -> tuple[torch.Tensor, ...]:
    return torch.autograd.grad(out, inputs, grad_out)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "strided"])
def test_climbq_act_train_equals_the_fused_op(layout, dtype, device, gen):
    x = torch.randn(5, 6, 3, 7, generator=gen).to(device, dtype) * 2
    if layout == "channels_last":
        x = x.to(memory_format=torch.channels_last)
    elif layout == "strided":
        x = x[..., ::2]
    x.requires_grad_()
    labels = torch.randint(0, 4, (5,), generator=gen).to(device)
    sigma, mu = train_ops.class_sigma_table(labels, 4)
    grad_out = torch.randn(x.shape, generator=gen).to(device, dtype)
    out = train_ops.climbq_act_train(x, sigma, mu, 3, 2.0)
    expected = ops.climbq_act_fused(x, sigma, mu, None, None, None, 3, 2.0, False)
    assert torch.equal(out, expected)
    if layout == "channels_last":
        assert out.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(grads(out, [x], grad_out)[0], grads(expected, [x], grad_out)[0])


def test_climbq_act_train_refuses_tables_that_require_grad(gen):
    x = torch.randn(4, 3, generator=gen, requires_grad=True)
    sigma = torch.full((4,), 2.0, requires_grad=True)
    with pytest.raises(ValueError, match="sigma and mu"):
        train_ops.climbq_act_train(x, sigma, torch.zeros(4), 4, 2.0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_climbq_weight_train_equals_the_public_op(dtype, device, gen):
    w = (torch.randn(6, 5, 3, generator=gen) * 0.1).to(device, dtype).requires_grad_()
    grad_out = torch.randn(w.shape, generator=gen).to(device, dtype)
    out, expected = train_ops.climbq_weight_train(w, 3), cq.climbq_weight_quant(w, 3)
    assert torch.equal(out, expected)
    assert torch.equal(grads(out, [w], grad_out)[0], grads(expected, [w], grad_out)[0])


@pytest.mark.parametrize("device", DEVICES)
def test_climbq_weight_train_with_a_channel_scale_equals_the_scaled_product(device, gen):
    w = (torch.randn(6, 5, 3, generator=gen) * 0.1).to(device).requires_grad_()
    scale = torch.linspace(0.5, 2.0, 6, device=device).requires_grad_()
    grad_out = torch.randn(w.shape, generator=gen).to(device)
    out = train_ops.climbq_weight_train(w, 3, scale)
    expected = cq.climbq_weight_quant(w, 3) * scale.reshape(-1, 1, 1)
    assert torch.equal(out, expected)
    for got, want in zip(grads(out, [w, scale], grad_out), grads(expected, [w, scale], grad_out), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)


STEPS = {"positive": 0.07, "negative": -0.07, "below the floor": 3e-9, "zero": 0.0}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("axis", [None, 0, 1])
@pytest.mark.parametrize("step_kind", list(STEPS))
def test_lsq_train_equals_the_affine_op_on_the_positive_step(step_kind, axis, dtype, device, gen):
    x = torch.randn(6, 5, 4, generator=gen).to(device, dtype).requires_grad_()
    channels = () if axis is None else (x.shape[axis],)
    step = torch.full(channels, STEPS[step_kind], device=device)
    if axis is not None:
        step = step * torch.linspace(0.5, 1.5, channels[0], device=device)
    step.requires_grad_()
    zero_point = torch.zeros(channels, dtype=torch.int32, device=device)
    grad_out = torch.randn(x.shape, generator=gen).to(device, dtype)
    out = train_ops.lsq_train(x, step, zero_point, -8, 7, axis)
    expected = ops.fake_quant_affine(x, _positive_step(step), zero_point, -8, 7, axis)
    assert torch.equal(out, expected)
    dx, dstep = grads(out, [x, step], grad_out)
    dx_expected, dstep_expected = grads(expected, [x, step], grad_out)
    assert torch.equal(dx, dx_expected)
    assert dstep.shape == step.shape and dstep.dtype == step.dtype
    torch.testing.assert_close(dstep, dstep_expected, rtol=1e-6, atol=0)
    if step_kind in ("below the floor", "zero"):
        assert not dstep.any()


def test_lsq_train_refuses_a_non_finite_step(gen):
    x = torch.randn(4, 3, generator=gen)
    with pytest.raises(ValueError, match="scale must be finite"):
        train_ops.lsq_train(x, torch.tensor(float("nan")), torch.zeros((), dtype=torch.int32), -8, 7)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("batch,classes", [(1, 1), (7, 3), (64, 10), (300, 1000)])
def test_class_sigma_table_equals_the_reference(batch, classes, device, gen):
    labels = torch.randint(0, classes, (batch,), generator=gen).to(device)
    sigma, mu = train_ops.class_sigma_table(labels, classes)
    counts = reference.label_histogram(labels, classes)
    assert torch.equal(train_ops._ops()[3](labels, classes), counts)
    assert torch.equal(sigma, reference.class_sigma_from_counts(counts, torch.float32)[labels])
    assert torch.equal(mu, torch.zeros_like(sigma))


def test_the_cpu_table_refuses_labels_out_of_range():
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 4\).*got 4 at index 1"):
        train_ops.class_sigma_table(torch.tensor([0, 4, 1]), 4)
    with pytest.raises(ValueError, match="got -1"):
        train_ops.class_sigma_table(torch.tensor([-1, 2]), 4)


def test_class_labels_out_of_range_fail_the_quantizer_with_a_clear_error(gen):
    quantizer = cq.nn.ClimbQActQuant(bits=4, num_classes=3)
    with cq.class_labels(torch.tensor([0, 1, 3])), pytest.raises(ValueError, match="labels must lie in"):
        quantizer(torch.randn(3, 5, generator=gen))


def test_the_native_ops_pass_opcheck(gen):
    x = torch.randn(4, 3, 5, generator=gen, requires_grad=True)
    labels = torch.randint(0, 3, (4,), generator=gen)
    sigma, mu = train_ops.class_sigma_table(labels, 3)
    step = torch.tensor(0.2, requires_grad=True)
    native = torch.ops.climbq_native
    cases = [
        (native.climbq_act_train.default, (x, sigma, mu, 4, 2.0)),
        (native.climbq_weight_train.default, (torch.randn(6, 4, generator=gen, requires_grad=True), 4)),
        (native.climbq_weight_train.default, (torch.randn(6, 4, generator=gen, requires_grad=True), 4,
                                              torch.rand(6, requires_grad=True))),
        (native.lsq_train.default, (x, step, torch.zeros((), dtype=torch.int32), -8, 7, None)),
        (native.label_histogram.default, (labels, 3)),
        (native.class_sigma_table.default, (labels, reference.label_histogram(labels, 3))),
    ]
    for op, args in cases:
        opcheck(op, args, test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))


def python_affine_act(module: cq.nn.AffineActQuant, x: torch.Tensor) -> torch.Tensor:
    """AffineActQuant's forward on the custom ops (the path the native op replaces)."""
    if module.training:
        module._observe(x)
    qmax = (1 << module.bits) - 1
    with torch.no_grad():
        lo, hi = module.min_val.clamp(max=0), module.max_val.clamp(min=0)
        scale = ((hi - lo) / qmax).clamp_min(torch.finfo(torch.float32).eps)
        zero_point = torch.round(-lo / scale).clamp(0, qmax).to(torch.int32)
    return ops.fake_quant_affine(x, scale, zero_point, 0, qmax, None)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("observer", ["ema", "minmax"])
def test_affine_act_train_equals_the_module_s_python_path(observer, dtype, device, gen):
    native, python = (cq.nn.AffineActQuant(bits=4, observer=observer, averaging_constant=0.1).to(device)
                      for _ in range(2))
    for step in range(4):  # the first batch sets the range, the next ones move it
        x = (torch.randn(5, 7, generator=gen) * (1 + step) + step - 1).to(device, dtype).requires_grad_()
        grad_out = torch.randn(x.shape, generator=gen).to(device, dtype)
        out = native(x)
        expected = python_affine_act(python, x)
        python._needs_init = False
        assert torch.equal(native.min_val, python.min_val) and torch.equal(native.max_val, python.max_val)
        assert torch.equal(out, expected)
        assert torch.equal(grads(out, [x], grad_out)[0], grads(expected, [x], grad_out)[0])
    native.eval()
    frozen = native.min_val.clone(), native.max_val.clone()
    native(torch.randn(3, 7, generator=gen).to(device, dtype) * 10)
    assert torch.equal(native.min_val, frozen[0]) and torch.equal(native.max_val, frozen[1])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_affine_weight_train_equals_the_module_s_python_path(dtype, device, gen):
    quantizer = cq.nn.AffineWeightQuant(bits=4, out_channels=6).to(device)
    w = (torch.randn(6, 3, 2, generator=gen) * torch.linspace(0.01, 2, 6).reshape(6, 1, 1)).to(device, dtype)
    w.requires_grad_()
    grad_out = torch.randn(w.shape, generator=gen).to(device, dtype)
    out = quantizer(w)
    expected = ops.fake_quant_affine(w, quantizer.scale_of(w), quantizer.zero_point, -8, 7, 0)
    assert torch.equal(out, expected)
    assert torch.equal(grads(out, [w], grad_out)[0], grads(expected, [w], grad_out)[0])


def test_the_affine_ops_refuse_a_non_finite_input(gen):
    quantizer = cq.nn.AffineActQuant(bits=4)
    with pytest.raises(ValueError, match="scale must be finite"):
        quantizer(torch.tensor([[0.5, float("nan")]]))
    with pytest.raises(ValueError, match="scale must be finite"):
        cq.nn.AffineWeightQuant(bits=4, out_channels=2)(torch.tensor([[0.5, 1.0], [float("inf"), 0.0]]))


def test_the_affine_ops_pass_opcheck(gen):
    x = torch.randn(4, 3, generator=gen, requires_grad=True)
    native = torch.ops.climbq_native
    for op, args in [
        (native.affine_act_train.default, (x, torch.zeros(()), torch.zeros(()), 15, True, 0.01, True, True)),
        (native.affine_weight_train.default, (torch.randn(5, 4, generator=gen, requires_grad=True), -8, 7)),
    ]:
        opcheck(op, args, test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))
