"""Int4Weight, quantize_int4 and int4_matmul through the public API: results, state dicts, gradients, bad input."""

import io

import pytest
import torch

import climbq_kernels as cq
from climbq_kernels import reference
from climbq_kernels.testing import assert_error_rule


@pytest.mark.parametrize("group_size", [32, 64, 128, 256, None])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("lead", [(1,), (3,), (2, 7)], ids=str)
def test_matmul_matches_float64_dequantize_then_matmul(group_size, dtype, lead, gen):
    w = torch.randn(33, 256, generator=gen)
    qw = cq.quantize_int4(w, group_size)
    x = torch.randn(*lead, 256, generator=gen).to(dtype)
    bias = torch.randn(33, generator=gen).to(dtype)
    got = cq.int4_matmul(x, qw, bias)
    assert got.dtype == dtype and got.shape == (*lead, 33)
    ref64 = x.double() @ qw.dequantize(torch.float64).T + bias.double()
    ref_lowp = x @ qw.dequantize(dtype).T + bias
    assert_error_rule(got, ref64, ref_lowp)


def test_state_dict_round_trips_exactly(gen):
    qw = cq.quantize_int4(torch.randn(16, 128, generator=gen), 64)
    buffer = io.BytesIO()
    torch.save(qw.state_dict(), buffer)
    buffer.seek(0)
    loaded = cq.Int4Weight.from_state_dict(torch.load(buffer))
    assert loaded.group_size == 64 and loaded.shape == qw.shape
    for name in ("packed", "scales", "zeros"):
        assert torch.equal(getattr(loaded, name), getattr(qw, name))


def test_truncated_or_wrong_shaped_packed_weight_fails_clearly(gen):
    state = cq.quantize_int4(torch.randn(16, 128, generator=gen), 64).state_dict()
    with pytest.raises(ValueError, match="scales must have shape"):
        cq.Int4Weight.from_state_dict({**state, "packed": state["packed"][:, :32]})
    with pytest.raises(ValueError, match="missing"):
        cq.Int4Weight.from_state_dict({k: v for k, v in state.items() if k != "zeros"})


def test_matmul_gradient_to_x_and_bias(gen):
    qw = cq.quantize_int4(torch.randn(8, 64, generator=gen), 32)
    x = torch.randn(3, 64, generator=gen, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(8, generator=gen, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: cq.int4_matmul(a, qw, b), (x, bias))


@pytest.mark.parametrize("make,error,match", [
    (lambda: cq.quantize_int4(torch.randn(4, 96), 64), ValueError, "group_size 64 must divide"),
    (lambda: cq.quantize_int4(torch.randn(4, 96), 48), ValueError, "group_size must be one of"),
    (lambda: cq.quantize_int4(torch.randn(96), 32), ValueError, "w must be 2-D"),
    (lambda: cq.quantize_int4(torch.randn(4, 33), None), ValueError, "in_features must be even"),
    (lambda: cq.quantize_int4(torch.tensor([[1.0, float("nan")] * 16]), 32), ValueError, "w must be finite"),
    (lambda: cq.int4_matmul(torch.randn(2, 63), cq.quantize_int4(torch.randn(4, 64), 32)), ValueError,
     "in_features 64"),
    (lambda: cq.int4_matmul(torch.ones(2, 64, dtype=torch.int32), cq.quantize_int4(torch.randn(4, 64), 32)),
     TypeError, "x must be a floating tensor"),
    (lambda: cq.int4_matmul(torch.randn(2, 64), torch.randn(4, 64)), TypeError, "qweight must be an Int4Weight"),
    (lambda: cq.int4_matmul(torch.randn(2, 64, device="meta"), cq.quantize_int4(torch.randn(4, 64), 32)),
     ValueError, "x is a meta tensor"),
    (lambda: cq.int4_matmul(torch.randn(2, 64), cq.quantize_int4(torch.randn(4, 64), 32),
                            torch.randn(4, device="meta")),
     ValueError, "bias is a meta tensor"),
    (lambda: cq.quantize_int4(torch.tensor([[1.0, float("inf")] * 16]), 32), ValueError, "w must be finite"),
])
def test_bad_int4_input(make, error, match):
    with pytest.raises(error, match=match):
        make()


def test_climbq_weight_converts_losslessly(gen):
    w = torch.randn(12, 64, generator=gen)
    packed, scales, zeros = reference.int4_from_climbq_weight(w, bits=4)
    qw = cq.Int4Weight(packed, scales, zeros, 64)
    assert torch.equal(qw.dequantize(), cq.climbq_weight_quant(w, bits=4))
