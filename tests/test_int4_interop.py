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


# --- PyTorch's CUDA (tinygemm) format --------------------------------------------------------

from torch._subclasses.fake_tensor import FakeTensorMode  # noqa: E402

from climbq_kernels.int4_interop import (  # noqa: E402
    TORCH_INT4_OFFSET,
    from_torch_int4pack_cuda,
    swap_nibbles,
    to_torch_int4pack_cuda,
    torch_scales_and_zeros,
)

cuda_only = pytest.mark.skipif(not torch.cuda.is_available(), reason="PyTorch's CUDA int4 kernel needs a CUDA device")


def test_swap_nibbles_gives_the_even_feature_high_packing_torch_cuda_expects(gen):
    codes = torch.randint(0, 16, (8, 64), generator=gen, dtype=torch.uint8)
    ours = reference.pack_int4(codes)
    theirs = (codes[:, ::2] << 4 | codes[:, 1::2]).to(torch.uint8)  # how torchao / gpt-fast build it
    assert torch.equal(swap_nibbles(ours), theirs)
    assert torch.equal(swap_nibbles(theirs), ours)


def test_scales_and_zeros_layout_reproduces_our_weight(gen):
    qw = cq.quantize_int4(torch.randn(16, 128, generator=gen), 32)
    table = torch_scales_and_zeros(qw, torch.float64)
    assert table.shape == (4, 16, 2) and table.is_contiguous()
    codes = reference.unpack_int4(qw.packed).double().reshape(16, 4, 32)
    theirs = (codes - TORCH_INT4_OFFSET) * table[..., 0].T.unsqueeze(2) + table[..., 1].T.unsqueeze(2)
    torch.testing.assert_close(theirs.reshape(16, 128), qw.dequantize(torch.float64), rtol=0, atol=1e-5)
    assert torch_scales_and_zeros(qw, torch.bfloat16).dtype == torch.bfloat16


def test_round_trip_through_a_bfloat16_table_keeps_codes(gen):
    # the CUDA format's table is bfloat16: the shared read-back keeps codes, rounds scales to it
    qw = cq.quantize_int4(torch.randn(32, 256, generator=gen), 64)
    back = from_torch_int4pack(*to_torch_int4pack(qw, torch.bfloat16), in_features=256)
    assert torch.equal(back.packed, qw.packed)
    assert torch.equal(back.scales, qw.scales.bfloat16().float())
    torch.testing.assert_close(back.dequantize(), qw.dequantize(), rtol=2e-2, atol=2e-2)


def _fake_cuda_int4_weight(out_features, in_features, group_size):
    like = {"device": "cuda"}
    groups = in_features // group_size
    return cq.Int4Weight(torch.zeros(out_features, in_features // 2, dtype=torch.uint8, **like),
                         torch.ones(out_features, groups, **like), torch.zeros(out_features, groups, **like),
                         group_size)


@pytest.mark.parametrize("inner_k_tiles", [2, 4, 8])
def test_cuda_conversion_runs_through_torch_ops_on_fake_cuda_tensors(inner_k_tiles):
    # FakeTensorMode runs the ops' meta functions: shapes, dtypes and the call signatures, no GPU.
    with FakeTensorMode():
        packed, table, group_size = to_torch_int4pack_cuda(_fake_cuda_int4_weight(24, 256, 64), inner_k_tiles)
        assert packed.shape == (3, 256 // (16 * inner_k_tiles), 32, inner_k_tiles // 2) and packed.dtype == torch.int32
        assert table.shape == (4, 24, 2) and table.dtype == torch.bfloat16 and group_size == 64
        y = torch.ops.aten._weight_int4pack_mm(torch.zeros(5, 256, dtype=torch.bfloat16, device="cuda"), packed,
                                               group_size, table)
        assert y.shape == (5, 24)


def test_cuda_format_bad_arguments(gen):
    with pytest.raises(ValueError, match="in_features divisible by 128"):
        to_torch_int4pack_cuda(cq.quantize_int4(torch.randn(16, 64, generator=gen), 32))
    with pytest.raises(ValueError, match="out_features divisible by 8"):
        to_torch_int4pack_cuda(cq.quantize_int4(torch.randn(12, 64, generator=gen), 32), inner_k_tiles=2)
    with pytest.raises(ValueError, match=r"group_size in \(32, 64, 128, 256\), got 96"):
        to_torch_int4pack_cuda(cq.quantize_int4(torch.randn(16, 96, generator=gen), None), inner_k_tiles=2)
    with pytest.raises(ValueError, match=r"inner_k_tiles must be one of \(2, 4, 8\), got 3"):
        to_torch_int4pack_cuda(cq.quantize_int4(torch.randn(16, 128, generator=gen), 32), inner_k_tiles=3)
    with pytest.raises(TypeError, match="qweight must be an Int4Weight"):
        to_torch_int4pack_cuda(torch.randn(16, 128))
    cpu_weight = cq.quantize_int4(torch.randn(16, 128, generator=gen), 32)
    with pytest.raises(ValueError, match="qweight must be on a CUDA device, got cpu"):
        to_torch_int4pack_cuda(cpu_weight)
    table = torch.zeros(4, 16, 2, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="4-D int32"):
        from_torch_int4pack_cuda(torch.zeros(16, 64, dtype=torch.uint8), table, 32, in_features=128)
    with pytest.raises(ValueError, match=r"packed must have shape \(2, 1, 32, 4\)"):
        from_torch_int4pack_cuda(torch.zeros(2, 2, 32, 4, dtype=torch.int32), table, 32, in_features=128)
    with pytest.raises(ValueError, match=r"scales_and_zeros must have shape \(4, out_features, 2\)"):
        from_torch_int4pack_cuda(torch.zeros(2, 1, 32, 4, dtype=torch.int32), table[:2], 32, in_features=128)
    with pytest.raises(ValueError, match="one CUDA device, got cpu"):
        from_torch_int4pack_cuda(torch.zeros(2, 1, 32, 4, dtype=torch.int32), table, 32, in_features=128)


@cuda_only
@pytest.mark.parametrize("group_size", [32, 64, 128, 256])
@pytest.mark.parametrize("inner_k_tiles", [2, 4, 8])
def test_torch_cuda_kernel_on_converted_weight_matches_ours(group_size, inner_k_tiles, gen):
    qw = cq.quantize_int4(torch.randn(48, 512, generator=gen), group_size).to("cuda")
    packed, scales_and_zeros, g = to_torch_int4pack_cuda(qw, inner_k_tiles)
    x = torch.randn(5, 512, generator=gen).to("cuda", torch.bfloat16)
    got = torch.ops.aten._weight_int4pack_mm(x, packed, g, scales_and_zeros)
    ref64 = x.double() @ qw.dequantize(torch.float64).T
    assert_error_rule(got, ref64, cq.int4_matmul(x, qw))


@cuda_only
@pytest.mark.parametrize("inner_k_tiles", [2, 8])
def test_cuda_round_trip_keeps_codes(inner_k_tiles, gen):
    qw = cq.quantize_int4(torch.randn(32, 256, generator=gen), 64).to("cuda")
    back = from_torch_int4pack_cuda(*to_torch_int4pack_cuda(qw, inner_k_tiles), in_features=256)
    assert torch.equal(back.packed, qw.packed), "codes must survive bit for bit"
    torch.testing.assert_close(back.scales, qw.scales.bfloat16().float(), rtol=0, atol=0)
    torch.testing.assert_close(back.dequantize(), qw.dequantize(), rtol=2e-2, atol=2e-2)


@cuda_only
def test_cuda_codes_read_back_from_torch_are_the_ones_it_was_given(gen):
    codes = torch.randint(0, 16, (16, 128), generator=gen, dtype=torch.uint8)
    high_first = (codes[:, ::2] << 4 | codes[:, 1::2]).to(torch.uint8).cuda()
    packed = torch.ops.aten._convert_weight_to_int4pack(high_first, 8)
    table = torch.stack([torch.ones(4, 16), torch.zeros(4, 16)], -1).to("cuda", torch.bfloat16)
    back = from_torch_int4pack_cuda(packed, table, 32, in_features=128)
    assert torch.equal(reference.unpack_int4(back.packed).cpu(), codes)
