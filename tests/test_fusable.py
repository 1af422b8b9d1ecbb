"""The quantizers' fusable formulas (`climbq_kernels.nn.fusable`, algorithms.md §1a, §1b, §1e, §1f)
against the reference: forward and backward, every dtype, awkward shapes, ties, NaN, and under
torch.compile (fullgraph) with eager's numbers."""

from __future__ import annotations

import inspect
import math
import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import climbq_kernels as cq
from climbq_kernels import ops, reference
from climbq_kernels.constants import levels
from climbq_kernels.nn import fusable
from climbq_kernels.nn.quantizers import _positive_step
from climbq_kernels.reference import _normal as reference_normal
from climbq_kernels.reference._normal import normal_cdf, normal_pdf
from climbq_kernels.testing import assert_error_rule

EXACT_DTYPES = [torch.float32, torch.float64]
"""Where the formulas run the reference's arithmetic in the reference's dtype: bit for bit."""
HALF_DTYPES = [torch.float16, torch.bfloat16]
"""Computed in float32 and rounded once (as the kernels): judged by the error rule."""
DTYPES = EXACT_DTYPES + HALF_DTYPES
ACT_SHAPES = [(3, 5, 7), (1,), (1, 4), (0, 4), (2, 3, 4, 5)]
"""Odd sizes, one element, a batch of 1, an empty batch, a 4-D activation."""
WEIGHT_SHAPES = [(3, 5, 7), (2,), (1, 5), (4, 3, 3, 3)]
A = 1.5


def same_bits(got: torch.Tensor, expected: torch.Tensor) -> bool:
    """Equal dtype, shape and bit patterns (so -0.0 != 0.0 and NaN == NaN of the same payload)."""
    if got.dtype != expected.dtype or got.shape != expected.shape:
        return False
    ints = {2: torch.int16, 4: torch.int32, 8: torch.int64}[got.element_size()]
    return torch.equal(got.contiguous().view(ints), expected.contiguous().view(ints))


def _act_case(shape, dtype, gen):
    x = (torch.randn(shape, generator=gen) * 2.5 + 0.2).to(dtype)
    table = torch.float64 if dtype == torch.float64 else torch.float32
    sigma = (torch.rand(shape[0], generator=gen) + 1.0).to(table)
    mu = (torch.randn(shape[0], generator=gen) * 0.3).to(table)
    grad = torch.randn(shape, generator=gen).to(dtype)
    return x, sigma, mu, grad


def _grad_of(fn, inputs, grad):
    """fn(*inputs) and the gradients to every input that requires grad, eager autograd."""
    leaves = [t.detach().clone().requires_grad_(t.requires_grad) for t in inputs]
    out = fn(*leaves)
    out.backward(grad)
    return out.detach(), [t.grad for t in leaves if t.requires_grad]


ACT_FORMS = {
    "published": (fusable.climbq_act, reference.climbq_act_quant, reference.climbq_act_quant_backward),
    "relu": (fusable.climbq_act_relu, reference.climbq_act_quant_relu, reference.climbq_act_quant_relu_backward),
}


# --- algorithms.md §1a, §1f: the activation quantizer -----------------------------------------------

@pytest.mark.parametrize("form", ACT_FORMS)
@pytest.mark.parametrize("dtype", EXACT_DTYPES, ids=str)
@pytest.mark.parametrize("shape", ACT_SHAPES, ids=str)
@pytest.mark.parametrize("bits", [1, 2, 4, 8, 16])
def test_climbq_act_is_the_reference_bit_for_bit(form, dtype, shape, bits, gen):
    fn, ref, ref_backward = ACT_FORMS[form]
    x, sigma, mu, grad = _act_case(shape, dtype, gen)
    out, (dx,) = _grad_of(lambda t: fn(t, sigma, mu, bits, A), [x.requires_grad_()], grad)
    assert same_bits(out, ref(x.detach(), sigma.to(dtype), mu.to(dtype), bits, A))
    assert same_bits(dx, ref_backward(grad, x.detach(), sigma.to(dtype), mu.to(dtype), bits, A))


@pytest.mark.parametrize("form", ACT_FORMS)
@pytest.mark.parametrize("dtype", HALF_DTYPES + [torch.float32], ids=str)
@pytest.mark.parametrize("shape", ACT_SHAPES, ids=str)
@pytest.mark.parametrize("bits", [1, 3, 8, 16])
def test_climbq_act_meets_the_error_rule(form, dtype, shape, bits, gen):
    fn, ref, ref_backward = ACT_FORMS[form]
    x, sigma, mu, grad = _act_case(shape, dtype, gen)
    out, (dx,) = _grad_of(lambda t: fn(t, sigma, mu, bits, A), [x.requires_grad_()], grad)
    assert out.dtype == dtype and dx.dtype == dtype
    x64, s64, m64, g64 = x.detach().double(), sigma.double(), mu.double(), grad.double()
    step = A / levels(bits) * (2 if form == "published" else 1)
    assert_error_rule(out, ref(x64, s64, m64, bits, A), ref(x.detach(), sigma.to(dtype), mu.to(dtype), bits, A),
                      step=step, name="out")
    assert_error_rule(dx, ref_backward(g64, x64, s64, m64, bits, A),
                      ref_backward(grad, x.detach(), sigma.to(dtype), mu.to(dtype), bits, A), name="dx")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_climbq_act_agrees_with_the_library_op(dtype, gen):
    """The op the modules call in eager mode (here its C++ or reference backend): the same levels
    except at most a rare one-level flip at a tie decided by a different erf, and gradients to
    float32 rounding."""
    x, sigma, mu, grad = _act_case((4, 6, 5, 5), dtype, gen)
    out, (dx,) = _grad_of(lambda t: fusable.climbq_act(t, sigma, mu, 4, A), [x.requires_grad_()], grad)
    op_out, (op_dx,) = _grad_of(
        lambda t: ops.climbq_act_fused_eager(t, sigma, mu, None, None, None, 4, A, False), [x], grad)
    assert (out != op_out).sum() <= 1
    torch.testing.assert_close(dx, op_dx, rtol=1e-5 if dtype == torch.float32 else 1e-2, atol=1e-6)


def test_climbq_act_layouts_give_the_same_values(gen):
    x, sigma, mu, _ = _act_case((3, 4, 5, 6), torch.float32, gen)
    expected = fusable.climbq_act(x, sigma, mu, 4, A)
    assert torch.equal(fusable.climbq_act(x.to(memory_format=torch.channels_last), sigma, mu, 4, A), expected)
    xt = x.transpose(2, 3).contiguous().transpose(2, 3)
    assert torch.equal(fusable.climbq_act(xt, sigma, mu, 4, A), expected)


@pytest.mark.parametrize("bits", [1, 2, 3, 5, 8])
def test_climbq_act_tie_at_the_mean_rounds_half_to_even(bits):
    """x == mu: u = 1/2 exactly and u*N = N/2 is a tie, rint'ed half to even like torch.round:
    code 0 (-A) at 1 bit, 2**(b-1) otherwise."""
    mu = torch.tensor([0.25, -1.0])
    x = mu.reshape(2, 1).expand(2, 3).clone()
    out = fusable.climbq_act(x, torch.tensor([1.5, 2.0]), mu, bits, A)
    n = levels(bits)
    code = torch.round(torch.tensor(n / 2)).item()
    assert code == (0 if bits == 1 else 2 ** (bits - 1))
    torch.testing.assert_close(out, torch.full_like(out, A * (2 * code / n - 1)))
    assert torch.equal(out, reference.climbq_act_quant(x, torch.tensor([1.5, 2.0]), mu, bits, A))


@pytest.mark.parametrize("form", ACT_FORMS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_climbq_act_nan_stays_nan_and_inf_saturates(form, dtype):
    fn, ref, ref_backward = ACT_FORMS[form]
    x = torch.tensor([[float("nan"), float("inf"), -float("inf"), 0.3]], dtype=dtype, requires_grad=True)
    sigma, mu = torch.ones(1), torch.zeros(1)
    out = fn(x, sigma, mu, 3, A)
    out.backward(torch.ones_like(out))
    low = -A if form == "published" else 0.0
    assert out[0, 0].isnan() and out[0, 1].item() == A and out[0, 2].item() == low
    assert x.grad[0, 1].item() == 0 and x.grad[0, 2].item() == 0
    # dx at NaN: NaN in the published form; 0 in the ReLU form, whose mask z > 0 is false for NaN.
    args64 = (x.detach().double(), sigma.double(), mu.double(), 3, A)
    assert torch.equal(out.detach().double().isnan(), ref(*args64).isnan())
    ref_dx = ref_backward(torch.ones_like(args64[0]), *args64)
    assert torch.equal(x.grad.double().isnan(), ref_dx.isnan()) and x.grad[0, 0].isnan() == (form == "published")


def test_climbq_act_gives_no_gradient_to_the_statistics(gen):
    x, sigma, mu, grad = _act_case((2, 5), torch.float32, gen)
    x.requires_grad_()
    sigma.requires_grad_()
    mu.requires_grad_()
    fusable.climbq_act(x, sigma, mu, 3, A).backward(grad)
    assert x.grad is not None and sigma.grad is None and mu.grad is None


def test_the_literal_constants_are_the_reference_constants():
    """fusable writes the LSQ step floor, and reference/_normal.py sqrt(1/2) and 1/sqrt(2 pi), as
    literals (see their comments)."""
    source, normal_source = inspect.getsource(fusable), inspect.getsource(reference_normal)
    for value in (math.sqrt(0.5), 1.0 / math.sqrt(2.0 * math.pi)):
        assert repr(value) in normal_source
    assert fusable.MIN_STEP == 1e-8 and "clamp_min(1e-8)" in source
    assert _positive_step(torch.tensor(0.0)).item() == torch.tensor(fusable.MIN_STEP).item()
    t = torch.linspace(-5, 5, 101, dtype=torch.float64)
    assert torch.equal(normal_cdf(t), 0.5 * (1.0 + torch.erf(t * math.sqrt(0.5))))
    assert torch.equal(normal_pdf(t), torch.exp(-0.5 * t * t) * (1.0 / math.sqrt(2.0 * math.pi)))


def test_climbq_act_identity_and_argument_checks(gen):
    x, sigma, mu, _ = _act_case((2, 5), torch.float32, gen)
    assert torch.equal(fusable.climbq_act(x, sigma, mu, 32, A), x)
    assert torch.equal(fusable.climbq_act_relu(x, sigma, mu, 32, A), torch.relu(x))
    with pytest.raises(ValueError, match="sigma"):
        fusable.climbq_act(x, sigma[:1], mu, 3, A)
    with pytest.raises(ValueError, match="batch"):
        fusable.climbq_act(torch.tensor(1.0), sigma[:1], mu[:1], 3, A)
    with pytest.raises(ValueError, match="bits"):
        fusable.climbq_act(x, sigma, mu, 17, A)
    with pytest.raises(ValueError, match="act_range"):
        fusable.climbq_act(x, sigma, mu, 3, 0.0)


# --- algorithms.md §1b: the weight quantizer --------------------------------------------------------

@pytest.mark.parametrize("dtype", EXACT_DTYPES, ids=str)
@pytest.mark.parametrize("shape", WEIGHT_SHAPES, ids=str)
@pytest.mark.parametrize("bits", [1, 2, 4, 8])
def test_climbq_weight_is_the_reference_bit_for_bit(dtype, shape, bits, gen):
    w = (torch.randn(shape, generator=gen) * 0.1 + 0.02).to(dtype)
    grad = torch.randn(shape, generator=gen).to(dtype)
    out, (dw,) = _grad_of(lambda t: fusable.climbq_weight(t, bits), [w.requires_grad_()], grad)
    assert same_bits(out, reference.climbq_weight_quant(w.detach(), bits))
    assert same_bits(dw, reference.climbq_weight_quant_backward(grad, w.detach(), bits))


@pytest.mark.parametrize("dtype", HALF_DTYPES + [torch.float32], ids=str)
@pytest.mark.parametrize("shape", WEIGHT_SHAPES, ids=str)
@pytest.mark.parametrize("bits", [2, 4, 8])
def test_climbq_weight_meets_the_error_rule(dtype, shape, bits, gen):
    w = (torch.randn(shape, generator=gen) * 0.1 + 0.02).to(dtype)
    grad = torch.randn(shape, generator=gen).to(dtype)
    out, (dw,) = _grad_of(lambda t: fusable.climbq_weight(t, bits), [w.requires_grad_()], grad)
    assert out.dtype == dtype and dw.dtype == dtype
    w64, g64 = w.detach().double(), grad.double()
    assert_error_rule(out, reference.climbq_weight_quant(w64, bits), reference.climbq_weight_quant(w.detach(), bits),
                      step=2 / levels(bits), name="out")
    assert_error_rule(dw, reference.climbq_weight_quant_backward(g64, w64, bits),
                      reference.climbq_weight_quant_backward(grad, w.detach(), bits), name="dw")


def test_climbq_weight_tie_at_the_mean_rounds_half_to_even():
    """The middle of a symmetric weight has z = 0 exactly: u*N = N/2, rint'ed half to even."""
    w = torch.tensor([-0.5, 0.0, 0.5, -0.25, 0.25], dtype=torch.float64)
    for bits in (1, 2, 3):
        code = 0 if bits == 1 else 2 ** (bits - 1)
        out = fusable.climbq_weight(w, bits)
        assert out[1].item() == pytest.approx(2 * code / levels(bits) - 1, abs=1e-15)
        assert same_bits(out, reference.climbq_weight_quant(w, bits))


def test_climbq_weight_gradient_goes_through_mean_and_std(gen):
    """Against autograd of the smooth surrogate 2*Phi((w - mean)/std) - 1 (float64)."""
    w = torch.randn(4, 6, generator=gen, dtype=torch.float64, requires_grad=True)
    grad = torch.randn(4, 6, generator=gen, dtype=torch.float64)
    fusable.climbq_weight(w, 3).backward(grad)
    w2 = w.detach().clone().requires_grad_()
    (2 * torch.special.ndtr((w2 - w2.mean()) / w2.std()) - 1).backward(grad)
    torch.testing.assert_close(w.grad, w2.grad, rtol=1e-12, atol=1e-14)


def test_climbq_weight_zero_spread_and_non_finite_are_never_silently_finite_garbage():
    """No host read, so no ValueError as in the reference: zero spread gives the middle code
    and a zero gradient (the device kernels' convention); a non-finite weight gives NaN."""
    w = torch.full((3, 4), 0.1, requires_grad=True)
    out = fusable.climbq_weight(w, 3)
    out.backward(torch.ones_like(out))
    assert torch.equal(out, torch.full_like(out, 2 * 4 / 7 - 1)) and torch.equal(w.grad, torch.zeros_like(w))
    for bad in (float("nan"), float("inf")):
        w = torch.randn(3, 4)
        w[1, 2] = bad
        w.requires_grad_()
        out = fusable.climbq_weight(w, 3)
        out.backward(torch.ones_like(out))
        assert out.isnan().all() and w.grad.isnan().all()
        with pytest.raises(ValueError):
            reference.climbq_weight_quant(w.detach(), 3)


def test_climbq_weight_identity_and_argument_checks():
    w = torch.randn(3, 4)
    assert torch.equal(fusable.climbq_weight(w, 32), w)
    for shape in [(1,), (0, 4), ()]:
        with pytest.raises(ValueError, match="at least 2"):
            fusable.climbq_weight(torch.zeros(shape), 3)


# --- algorithms.md §1e: LSQ and affine fake quant ---------------------------------------------------

LSQ_CASES = [((3, 5, 7), None, ()), ((3, 5, 7), None, (1,)), ((1,), None, ()), ((0, 4), None, ()),
             ((3, 5, 7), 1, None), ((3, 5, 7), -1, None), ((1, 4), 0, None), ((6, 3, 3, 3), 0, None)]
"""(shape of x, axis, shape of a per-tensor step): 0-d and (1,) steps, one element, empty,
per channel along each kind of axis."""


def _lsq_case(shape, axis, step_shape, dtype, gen):
    x = (torch.randn(shape, generator=gen) * 2).to(dtype)
    channels = 1 if axis is None else shape[axis]
    step = torch.rand(channels, generator=gen) * 0.4 + 0.05
    step = step.reshape(step_shape) if axis is None else step
    return x, step, torch.randn(shape, generator=gen).to(dtype)


def _lsq_by_the_op(x, step, qmin, qmax, axis):
    """What the modules compute eagerly: the op on max(|step|, 1e-8), zero point 0."""
    s = step.abs().clamp_min(fusable.MIN_STEP)
    if axis is None:
        return ops.fake_quant_affine_eager(x, s.reshape(()), torch.zeros((), dtype=torch.int32), qmin, qmax, None)
    zp = torch.zeros(x.shape[axis], dtype=torch.int32)
    return ops.fake_quant_affine_eager(x, s, zp, qmin, qmax, axis)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape,axis,step_shape", LSQ_CASES, ids=str)
@pytest.mark.parametrize("qrange", [(-8, 7), (0, 15), (-128, 127)], ids=str)
def test_lsq_is_the_library_op_bit_for_bit(dtype, shape, axis, step_shape, qrange, gen):
    """Forward, dx and the step's gradient (chained through max(|step|, 1e-8)) equal the op run on
    its reference backend (torch's arithmetic, float32 inside for every dtype but float64), and
    forward and dx equal its C++ backend's too."""
    x, step, grad = _lsq_case(shape, axis, step_shape, dtype, gen)
    out, (dx, dstep) = _grad_of(lambda t, s: fusable.lsq(t, s, *qrange, axis),
                                [x.requires_grad_(), step.requires_grad_()], grad)
    if not x.numel():  # the op refuses an empty x in its backward (no gradient scale for 0 elements)
        assert out.shape == dx.shape == x.shape and torch.equal(dstep, torch.zeros_like(step))
        assert same_bits(out, _lsq_by_the_op(x.detach(), step.detach(), *qrange, axis))
        return
    with cq.use_backend("reference"):
        ref_out, (ref_dx, ref_dstep) = _grad_of(lambda t, s: _lsq_by_the_op(t, s, *qrange, axis), [x, step], grad)
    assert same_bits(out, ref_out) and same_bits(dx, ref_dx) and same_bits(dstep, ref_dstep)
    if dtype != torch.float64:  # float64 always runs on the reference
        op_out, (op_dx, op_dstep) = _grad_of(lambda t, s: _lsq_by_the_op(t, s, *qrange, axis), [x, step], grad)
        assert same_bits(out, op_out) and same_bits(dx, op_dx)
        torch.testing.assert_close(dstep, op_dstep, rtol=1e-5, atol=1e-6)  # a sum in another order


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_lsq_matches_torch_fake_quant_and_the_float64_reference(dtype, gen):
    x, step, grad = _lsq_case((4, 6, 5), 1, None, dtype, gen)
    out = fusable.lsq(x, step, -8, 7, 1)
    if dtype != torch.float64:
        expected = torch.fake_quantize_per_channel_affine(x, step, torch.zeros(6, dtype=torch.int32), 1, -8, 7)
        assert same_bits(out, expected)
    step_t = torch.tensor(0.23)
    out = fusable.lsq(x, step_t, 0, 15)
    if dtype != torch.float64:
        assert same_bits(out, torch.fake_quantize_per_tensor_affine(x, 0.23, 0, 0, 15))
    ref64 = reference.fake_quant_affine(x.double(), step_t.double(), 0, 0, 15)
    assert_error_rule(out, ref64, reference.fake_quant_affine(x, step_t, 0, 0, 15), step=0.23, name="out")


def test_lsq_step_is_used_as_its_magnitude_at_least_1e_8(gen):
    """Negative steps act as |step| with the gradient's sign flipped; a step below 1e-8 in
    magnitude acts as 1e-8 and gets no gradient (clamp_min's)."""
    x, _, grad = _lsq_case((3, 4, 5), 1, None, torch.float32, gen)
    x[:, 1], grad[:, 1] = x[:, 0], grad[:, 0]
    step = torch.tensor([0.1, -0.1, 0.0, -1e-9])
    out, (dstep,) = _grad_of(lambda s: fusable.lsq(x, s, -8, 7, 1), [step.requires_grad_()], grad)
    positive = torch.tensor([0.1, 0.1, 1e-8, 1e-8])
    assert torch.equal(out, fusable.lsq(x, positive, -8, 7, 1))
    assert dstep[0] == -dstep[1] and dstep[0] != 0 and dstep[2] == 0 and dstep[3] == 0


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_lsq_and_affine_ties_round_half_to_even(dtype):
    """x / s = k + 1/2 exactly (s a power of two): codes as torch.round, then clamped."""
    k = torch.arange(-6, 6, dtype=torch.float64)
    x = ((k + 0.5) * 0.5).to(dtype)
    codes = torch.round(k + 0.5).clamp(-4, 3)
    assert torch.equal(fusable.lsq(x, torch.tensor(0.5), -4, 3).double(), codes * 0.5)
    assert torch.equal(fusable.affine(x, torch.tensor(0.5), torch.tensor(0, dtype=torch.int32), -4, 3).double(),
                      codes * 0.5)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_lsq_and_affine_send_nan_to_quant_min_like_torch(dtype):
    """algorithms.md §1e: torch's clamp sends a NaN code to quant_min (so does the reference):
    forward (qmin - zp) * s, dx 0 and, for LSQ, a NaN step gradient (it is not hidden)."""
    x = torch.tensor([float("nan"), 0.3, float("inf"), -float("inf")], dtype=dtype, requires_grad=True)
    step = torch.tensor(0.25, requires_grad=True)
    out = fusable.lsq(x, step, -8, 7)
    out.backward(torch.ones_like(out))
    assert out.tolist() == [-2.0, 0.25, 1.75, -2.0]
    assert x.grad.tolist() == [0.0, 1.0, 0.0, 0.0] and step.grad.isnan()
    ref = reference.fake_quant_affine(x.detach(), 0.25, 0, -8, 7)
    assert same_bits(out.detach(), ref)
    x.grad = None
    out = fusable.affine(x, torch.tensor(0.25), torch.tensor(3, dtype=torch.int32), 0, 15)
    out.backward(torch.ones_like(out))
    assert same_bits(out.detach(), reference.fake_quant_affine(x.detach(), torch.tensor(0.25),
                                                               torch.tensor(3, dtype=torch.int32), 0, 15))
    assert out[0].item() == -0.75 and x.grad.tolist() == [0.0, 1.0, 0.0, 0.0]


AFFINE_CASES = [((3, 5, 7), None, torch.int32), ((3, 5, 7), None, "int"), ((3, 5, 7), None, "float"),
                ((1,), None, torch.int32), ((0, 4), None, torch.int32),
                ((3, 5, 7), 1, torch.int32), ((3, 5, 7), 1, torch.float32), ((3, 5, 7), 2, torch.float16),
                ((6, 3, 3, 3), 0, torch.int64), ((1, 4), 0, torch.int32)]
"""(shape, axis, zero point): integer and floating zero points (a float32 one is added by a fused
multiply-add in torch), Python numbers per tensor."""


def _affine_case(shape, axis, zp_kind, dtype, gen):
    x = (torch.randn(shape, generator=gen) * 3).to(dtype)
    channels = 1 if axis is None else shape[axis]
    scale = torch.rand(channels, generator=gen) * 0.3 + 0.02
    zp = torch.randint(2, 12, (channels,), generator=gen)
    if zp_kind == "int":
        return x, float(scale[0]), int(zp[0])
    if zp_kind == "float":
        return x, float(scale[0]), float(zp[0]) + 0.3
    if zp_kind.is_floating_point:
        zp = (zp + torch.rand(channels, generator=gen) - 0.5).to(zp_kind)
    zp = zp.to(zp_kind)
    return (x, scale.reshape(()), zp.reshape(())) if axis is None else (x, scale, zp)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape,axis,zp_kind", AFFINE_CASES, ids=str)
def test_affine_is_the_library_op_bit_for_bit(dtype, shape, axis, zp_kind, gen):
    x, scale, zp = _affine_case(shape, axis, zp_kind, dtype, gen)
    grad = torch.randn(shape, generator=gen).to(dtype)
    out, (dx,) = _grad_of(lambda t: fusable.affine(t, scale, zp, 0, 15, axis), [x.requires_grad_()], grad)
    ref = reference.fake_quant_affine(x.detach(), scale, zp, 0, 15, axis)
    ref_dx = reference.fake_quant_affine_backward(grad, x.detach(), scale, zp, 0, 15, axis)[0]
    assert same_bits(out, ref) and same_bits(dx, ref_dx)
    if isinstance(scale, torch.Tensor) and not zp.is_floating_point() and dtype != torch.float64:
        op_out, (op_dx,) = _grad_of(lambda t: ops.fake_quant_affine_eager(t, scale, zp, 0, 15, axis), [x], grad)
        assert same_bits(out, op_out) and same_bits(dx, op_dx)


def test_affine_gives_no_gradient_to_scale_or_zero_point(gen):
    x = torch.randn(3, 4, generator=gen, requires_grad=True)
    scale = torch.full((4,), 0.1, requires_grad=True)
    zp = torch.full((4,), 7.0, requires_grad=True)
    fusable.affine(x, scale, zp, 0, 15, 1).sum().backward()
    assert x.grad is not None and scale.grad is None and zp.grad is None


def test_lsq_and_affine_argument_checks():
    x = torch.randn(3, 4)
    with pytest.raises(ValueError, match="step"):
        fusable.lsq(x, torch.ones(2), -8, 7)
    with pytest.raises(ValueError, match="step"):
        fusable.lsq(x, torch.ones(3), -8, 7, axis=1)
    with pytest.raises(ValueError, match="axis"):
        fusable.lsq(x, torch.ones(4), -8, 7, axis=2)
    with pytest.raises(ValueError, match="quant_max"):
        fusable.lsq(x, torch.ones(()), -8, 0)
    with pytest.raises(ValueError, match="quant_min"):
        fusable.affine(x, 0.1, 0, 5, 4)
    with pytest.raises(ValueError, match="zero_point"):
        fusable.affine(x, torch.ones(4), torch.zeros(3, dtype=torch.int32), 0, 15, axis=1)
    with pytest.raises(TypeError, match="quant_min"):
        fusable.affine(x, 0.1, 0, 0.0, 15)


# --- torch.compile ----------------------------------------------------------------------------------

def _compile_cases(gen):
    """(name, function of tensors that may require grad, inputs): every formula, per tensor and
    per channel; the tables and fixed parameters are closed over, as in the modules."""
    sigma, mu = torch.rand(4, generator=gen) + 1.0, torch.randn(4, generator=gen) * 0.2
    x = torch.randn(4, 6, 5, generator=gen) * 2
    w = torch.randn(6, 3, 3, generator=gen) * 0.1
    step_c = torch.rand(6, generator=gen) * 0.2 + 0.05
    scale_c, zp_c = torch.rand(6, generator=gen) * 0.2 + 0.05, torch.randint(0, 16, (6,), generator=gen)
    return [
        ("climbq_act", lambda t: fusable.climbq_act(t, sigma, mu, 4, A), [x]),
        ("climbq_act_relu", lambda t: fusable.climbq_act_relu(t, sigma, mu, 4, A), [x]),
        ("climbq_weight", lambda t: fusable.climbq_weight(t, 4), [w]),
        ("lsq", lambda t, s: fusable.lsq(t, s, -8, 7), [x, torch.tensor(0.2)]),
        ("lsq_per_channel", lambda t, s: fusable.lsq(t, s, -8, 7, axis=1), [x, step_c]),
        ("affine", lambda t: fusable.affine(t, torch.tensor(0.07), torch.tensor(3), 0, 15), [x]),
        ("affine_per_channel", lambda t: fusable.affine(t, scale_c, zp_c, 0, 15, axis=1), [x]),
    ]


def _eager_and_compiled(fn, inputs, grad, **compile_args):
    expected = _grad_of(fn, [t.requires_grad_() for t in inputs], grad)
    torch._dynamo.reset()
    got = _grad_of(torch.compile(fn, fullgraph=True, **compile_args), inputs, grad)
    return expected, got


@pytest.mark.parametrize("dynamic", [False, True])
def test_every_formula_compiles_in_one_graph_with_eager_numbers(dynamic, gen):
    """aot_eager runs the traced graph on eager kernels: outputs and gradients bit for bit."""
    for name, fn, inputs in _compile_cases(gen):
        grad = torch.randn(inputs[0].shape, generator=gen)
        (out, grads), (c_out, c_grads) = _eager_and_compiled(fn, inputs, grad, backend="aot_eager", dynamic=dynamic)
        assert same_bits(c_out, out), name
        assert len(grads) == len(c_grads) and all(same_bits(a, b) for a, b in zip(c_grads, grads, strict=True)), name


def test_compiled_formulas_recompile_for_neither_a_new_batch_size_nor_a_new_act_range(gen):
    """dynamic=True: the batch size and act_range (a symbolic float, shared here by two
    quantizers as a model's config would share it) are graph inputs, not constants."""
    from torch._dynamo.testing import CompileCounterWithBackend

    counter = CompileCounterWithBackend("aot_eager")
    torch._dynamo.reset()
    step = torch.tensor(0.1, requires_grad=True)

    @torch.compile(backend=counter, fullgraph=True, dynamic=True)
    def f(x, sigma, mu, w, act_range):
        return (fusable.climbq_act(x, sigma, mu, 4, act_range).sum() + fusable.lsq(x, step, -8, 7).sum()
                + fusable.climbq_weight(w, 4).sum() + fusable.climbq_act_relu(x, sigma, mu, 2, act_range).sum())

    compiles = []
    for batch, act_range in ((3, 1.5), (5, 2.0), (8, 2.5)):
        x = torch.randn(batch, 7, generator=gen, requires_grad=True)
        sigma, mu, w = torch.rand(batch, generator=gen) + 1, torch.zeros(batch), torch.randn(4, 6, generator=gen)
        got = f(x, sigma, mu, w, act_range)
        expected = fusable.climbq_act(x, sigma, mu, 4, act_range).sum() + fusable.climbq_act_relu(
            x, sigma, mu, 2, act_range).sum() + fusable.lsq(x, step, -8, 7).sum() + fusable.climbq_weight(w, 4).sum()
        torch.testing.assert_close(got, expected)
        got.backward()
        compiles.append(counter.frame_count)
    # A first compile may call the backend twice (dynamo restarting its analysis); none after it.
    assert compiles[0] >= 1 and compiles[-1] == compiles[0], compiles


def _conv_bn_block(quantizer):
    torch.manual_seed(0)
    conv, bn = nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)

    def block(x):
        return torch.relu(quantizer(bn(F.conv2d(x, conv.weight, None, padding=1))))
    return block


def _kernel_counts(fn, x) -> dict[str, int]:
    """Generated (Inductor) kernels of fn's forward and backward graphs, from their output code."""
    from torch._inductor.utils import run_and_get_code

    def step():
        out = fn(x)
        out.backward(torch.ones_like(out))
    torch._dynamo.reset()
    _, codes = run_and_get_code(step)
    counts = {}
    for code in codes:
        assert "torch.ops.climbq" not in code
        kind = "backward" if "tangents_" in code else "forward"
        counts[kind] = counts.get(kind, 0) + len(re.findall(r"= async_compile\.(?:cpp_pybinding|triton)\(", code))
    return counts


@pytest.mark.slow
def test_inductor_matches_eager_and_fuses_the_quantizer_into_its_neighbours(gen):
    """Inductor: eager's numbers to an ulp (its own erf, exp and summation order), and a quantizer
    between a BatchNorm and a ReLU adds no kernel of its own."""
    for name, fn, inputs in _compile_cases(gen):
        grad = torch.randn(inputs[0].shape, generator=gen)
        (out, grads), (c_out, c_grads) = _eager_and_compiled(fn, inputs, grad)
        assert (c_out != out).sum() <= 1, name  # at most a tie decided by another erf
        for a, b in zip(c_grads, grads, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
    x = torch.randn(2, 3, 6, 6, generator=gen, requires_grad=True)
    sigma, mu = torch.rand(2, generator=gen) + 1.0, torch.zeros(2)
    plain = _kernel_counts(torch.compile(_conv_bn_block(lambda y: y), fullgraph=True), x)
    quantized = _kernel_counts(torch.compile(_conv_bn_block(lambda y: fusable.climbq_act(y, sigma, mu, 4, A)),
                                             fullgraph=True), x)
    assert quantized == plain, (quantized, plain)
