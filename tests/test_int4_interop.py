"""Int4Weight <-> PyTorch's CPU int4 format: same codes, same results, both ways."""

import pytest
import torch

import climbq_kernels as cq
from climbq_kernels import reference
from climbq_kernels.int4_interop import from_torch_int4pack, to_torch_int4pack
from climbq_kernels.testing import assert_error_rule


@pytest.mark.parametrize("group_size", [32, 64, 128, 256])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_torch_kernel_on_converted_weight_matches_ours(group_size, dtype, gen):
    qw = cq.quantize_int4(torch.randn(48, 256, generator=gen), group_size)
    packed, scales_and_zeros, g = to_torch_int4pack(qw, dtype)
    x = torch.randn(5, 256, generator=gen).to(dtype)
    got = torch.ops.aten._weight_int4pack_mm_for_cpu(x, packed, g, scales_and_zeros)
    ref64 = x.double() @ qw.dequantize(torch.float64).T
    assert_error_rule(got, ref64, cq.int4_matmul(x, qw))


@pytest.mark.parametrize("group_size", [32, 128])
def test_round_trip_keeps_codes_and_values(group_size, gen):
    qw = cq.quantize_int4(torch.randn(32, 256, generator=gen), group_size)
    back = from_torch_int4pack(*to_torch_int4pack(qw), in_features=256)
    assert torch.equal(back.packed, qw.packed), "codes must survive bit for bit"
    assert torch.equal(back.scales, qw.scales)
    torch.testing.assert_close(back.dequantize(), qw.dequantize(), rtol=0, atol=1e-5)


def test_codes_read_back_from_torch_are_the_ones_it_was_given(gen):
    codes = torch.randint(0, 16, (16, 64), generator=gen, dtype=torch.int32)
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes, 1)
    params = torch.stack([torch.ones(2, 16), torch.zeros(2, 16)], -1)
    back = from_torch_int4pack(packed, params, 32, in_features=64)
    assert torch.equal(reference.unpack_int4(back.packed).to(torch.int32), codes)


def test_bad_arguments():
    qw = cq.quantize_int4(torch.randn(16, 64), 32)
    with pytest.raises(ValueError, match="out_features divisible by 16"):
        to_torch_int4pack(cq.quantize_int4(torch.randn(8, 64), 32))
    with pytest.raises(TypeError, match="qweight must be an Int4Weight"):
        to_torch_int4pack(torch.randn(8, 64))
    packed, params, _ = to_torch_int4pack(qw)
    with pytest.raises(ValueError, match=r"scales_and_zeros must have shape \(2, out_features, 2\)"):
        from_torch_int4pack(packed, params[:1], 32, in_features=64)
    with pytest.raises(ValueError, match="group_size"):
        from_torch_int4pack(packed, params, 48, in_features=64)
