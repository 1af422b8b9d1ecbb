"""INT4 packed-weight reference (algorithms.md §6): packing, quantization bound, ClimbQ conversion, matmul."""

import pytest
import torch

from climbq_kernels.reference import (
    climbq_weight_quant,
    dequantize_int4,
    int4_from_climbq_weight,
    int4_matmul,
    pack_int4,
    quantize_int4,
    unpack_int4,
)


def make_gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_nibble_order_on_a_known_byte():
    q = torch.tensor([[1, 2, 15, 0], [7, 8, 0, 15]], dtype=torch.uint8)
    packed = pack_int4(q)
    # byte j holds code 2j in its low nibble and code 2j + 1 in its high nibble
    assert packed.dtype == torch.uint8 and packed.tolist() == [[0x21, 0x0F], [0x87, 0xF0]]
    assert torch.equal(unpack_int4(packed), q)


@pytest.mark.parametrize("shape", [(1, 2), (3, 10), (7, 256)])
def test_pack_round_trip(shape):
    gen = make_gen(sum(shape))
    q = torch.randint(0, 16, shape, generator=gen)
    packed = pack_int4(q)
    assert packed.shape == (shape[0], shape[1] // 2)
    assert torch.equal(unpack_int4(packed), q.to(torch.uint8))


@pytest.mark.parametrize("group_size", [32, 64, 128, None])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_quantize_error_bound(group_size, dtype):
    gen = make_gen(3)
    w = (torch.randn(5, 256, generator=gen) * 0.05 + 0.01).to(dtype)
    packed, scales, zeros = quantize_int4(w, group_size)
    groups = 256 // (group_size or 256)
    assert packed.shape == (5, 128) and scales.shape == (5, groups) and zeros.shape == (5, groups)
    assert scales.dtype == torch.float32 and zeros.dtype == torch.float32
    deq = dequantize_int4(packed, scales, zeros, group_size, dtype=torch.float64)
    step = scales.double().repeat_interleave(256 // groups, dim=1)
    error = (w.double() - deq).abs()
    assert bool((error <= step / 2 + 1e-6 * step + 1e-7).all())
    codes = unpack_int4(packed)
    assert int(codes.max()) == 15 and int(codes.min()) == 0  # each group's extremes hit both ends


def test_quantize_float32_determinism_and_constant_group():
    gen = make_gen(4)
    w = torch.randn(2, 64, generator=gen)
    w[1, :32] = 0.37  # a constant group is stored exactly (scale 1, zero = -value)
    packed, scales, zeros = quantize_int4(w, 32)
    assert scales[1, 0].item() == 1.0
    deq = dequantize_int4(packed, scales, zeros, 32)
    assert bool((deq[1, :32] == torch.tensor(0.37)).all())
    again = quantize_int4(w.double(), 32)  # cast to float32 first: same result
    assert all(torch.equal(a, b) for a, b in zip(again, (packed, scales, zeros), strict=True))


@pytest.mark.parametrize("bits", [1, 2, 3, 4])
@pytest.mark.parametrize("shape", [(1, 2), (8, 64), (5, 122)])
def test_climbq_weight_converts_losslessly(bits, shape):
    gen = make_gen(bits)
    w = torch.randn(shape, generator=gen) * 0.1
    packed, scales, zeros = int4_from_climbq_weight(w, bits)
    assert scales.shape == (shape[0], 1)
    deq = dequantize_int4(packed, scales, zeros, None, dtype=torch.float32)
    assert torch.equal(deq, climbq_weight_quant(w, bits))


def test_matmul_matches_float64_loop():
    gen = make_gen(5)
    n_out, k_in = 3, 64
    w = torch.randn(n_out, k_in, generator=gen)
    packed, scales, zeros = quantize_int4(w, 32)
    x = torch.randn(2, k_in, generator=gen, dtype=torch.float64)
    bias = torch.randn(n_out, generator=gen, dtype=torch.float64)
    codes = unpack_int4(packed).tolist()
    y = int4_matmul(x, packed, scales, zeros, 32, bias)
    for i in range(2):
        for o in range(n_out):
            acc = bias[o].item()
            for k in range(k_in):
                g = k // 32
                weight = (codes[o][k] - zeros[o, g].item()) * scales[o, g].item()
                acc += x[i, k].item() * weight
            assert y[i, o].item() == pytest.approx(acc, rel=1e-12, abs=1e-12)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-4), (torch.float16, 2e-2), (torch.bfloat16, 1e-1)])
def test_matmul_dtypes_and_leading_dims(dtype, tol):
    gen = make_gen(6)
    w = torch.randn(7, 128, generator=gen)
    packed, scales, zeros = quantize_int4(w, 64)
    x = torch.randn(2, 3, 128, generator=gen)
    bias = torch.randn(7, generator=gen)
    ref = int4_matmul(x.double(), packed, scales, zeros, 64, bias.double())
    got = int4_matmul(x.to(dtype), packed, scales, zeros, 64, bias)
    assert got.dtype == dtype and got.shape == (2, 3, 7)
    assert torch.allclose(got.double(), ref, rtol=tol, atol=tol * ref.abs().max().item())
    assert int4_matmul(x[0, 0], packed, scales, zeros, 64).shape == (7,)


def test_bad_inputs():
    w = torch.randn(4, 64, generator=make_gen(7))
    with pytest.raises(ValueError, match="w"):
        quantize_int4(torch.randn(4, 63), None)
    with pytest.raises(ValueError, match="group_size"):
        quantize_int4(torch.randn(4, 96), 64)
    with pytest.raises(ValueError, match="group_size"):
        quantize_int4(w, 48)
    bad = w.clone()
    bad[1, 3] = float("nan")
    with pytest.raises(ValueError, match="w"):
        quantize_int4(bad, 32)
    bad[1, 3] = float("inf")
    with pytest.raises(ValueError, match="w"):
        quantize_int4(bad, 32)
    with pytest.raises(ValueError, match="w"):
        quantize_int4(torch.randn(64), 32)
    with pytest.raises(TypeError, match="w"):
        quantize_int4(torch.ones(4, 64, dtype=torch.int32), 32)
    with pytest.raises(ValueError, match="q"):
        pack_int4(torch.tensor([[3, 16]]))
    with pytest.raises(ValueError, match="q"):
        pack_int4(torch.tensor([[3, 1, 2]]))
    with pytest.raises(TypeError, match="packed"):
        unpack_int4(torch.tensor([[3, 1]], dtype=torch.int32))
    packed, scales, zeros = quantize_int4(w, 32)
    with pytest.raises(ValueError, match="scales"):
        dequantize_int4(packed, scales[:, :1], zeros, 32)
    with pytest.raises(ValueError, match="x"):
        int4_matmul(torch.randn(2, 32), packed, scales, zeros, 32)
    with pytest.raises(ValueError, match="bias"):
        int4_matmul(torch.randn(2, 64), packed, scales, zeros, 32, torch.randn(3))
    with pytest.raises(ValueError, match="bits"):
        int4_from_climbq_weight(w, 5)
    saved = w.clone()
    quantize_int4(w, 32)
    int4_from_climbq_weight(w, 4)
    assert torch.equal(saved, w)
