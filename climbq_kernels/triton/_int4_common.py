"""What the INT4 matmul kernels share: nibble dequantization, the group constexpr, test cases.

Packed layout (climbq_kernels/int4.py): byte j of row n holds the code of feature 2j in its
low nibble and of feature 2j + 1 in its high nibble; scales and zeros are float32 (N, K / g).
Both features of a byte share a group, because every group size is even.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .. import reference
from ..testing import poison_like
from .math import cast_rne
from .registry import Example

ONE_GROUP_PER_ROW = tl.constexpr(0)
"""GROUP_SIZE constexpr for g == K: every feature reads group 0, so a K that is no power of two
(one group per row) costs no integer division and no recompile per K."""
LOW_NIBBLE = tl.constexpr(0xF)
NIBBLE_BITS = tl.constexpr(4)
TWO_POW_23_BITS = tl.constexpr(0x4B000000)
TWO_POW_23 = tl.constexpr(8388608.0)
OFFSET_CODE_BITS = tl.constexpr(0x3F000000)
OFFSET_CODE_SHIFT = tl.constexpr(16)
OFFSET_CODE_SCALE = tl.constexpr(256.0)
OFFSET_CODE_BIAS = tl.constexpr(128.0)


def group_constexpr(group_size: int, in_features: int) -> int:
    """The kernels' GROUP_SIZE for a weight of `in_features` with groups of `group_size`."""
    return ONE_GROUP_PER_ROW.value if group_size == in_features else group_size


@triton.jit
def nibble_to_float(nibble):
    """An int32 tensor of codes 0..15 as exact float32: OR-ing q into the mantissa of 2^23 gives
    the float 2^23 + q, and subtracting 2^23 leaves q; two full-rate instructions where an
    integer-to-float conversion runs at a quarter of the rate."""
    return (nibble | TWO_POW_23_BITS).to(tl.float32, bitcast=True) - TWO_POW_23


@triton.jit
def offset_code_weights(codes, scale, zero):
    """(codes - zero) * scale for int32 codes 0..15 in one FMA a weight, to within about 2^-17
    scale: for 16-bit operands, whose own rounding of the weight is far coarser.

    With q in bits 16..19 of the float 0.5 the value is v = 0.5 + q / 256 exactly, and
    (q - z) s = v (256 s) - (128 + z) s; only the constant's rounding enters. The CUDA kernels
    use the same offset codes (csrc/cuda/int4_codes.cuh)."""
    v = ((codes << OFFSET_CODE_SHIFT) | OFFSET_CODE_BITS).to(tl.float32, bitcast=True)
    big_scale = tl.broadcast_to(scale * OFFSET_CODE_SCALE, v.shape)
    bias = tl.broadcast_to((zero + OFFSET_CODE_BIAS) * scale, v.shape)
    return tl.fma(v, big_scale, -bias)


@triton.jit
def dequantize_bytes(packed_ptr, scales_ptr, zeros_ptr, n, kb, start, row_mask, mask, k_bytes, groups,
                     GROUP_SIZE: tl.constexpr, BLOCK_K: tl.constexpr, OFFSET_CODES: tl.constexpr):
    """(W[n, 2 kb], W[n, 2 kb + 1]) in float32 for broadcastable row indices n and byte indices
    kb, the bytes of one K step of BLOCK_K features from packed byte `start` (a multiple of
    BLOCK_K / 2). W = (q - zero) * scale, as `reference.dequantize_int4` does. `mask` (rows and
    bytes) guards the loads and `row_mask` its rows' part, shaped like n: rows outside it come
    out 0; bytes past K inside a row may come out as -zero * scale (finite), so callers must
    zero the x they meet. OFFSET_CODES forms each weight with one FMA (`offset_code_weights`),
    within about 2^-17 scale of the reference's: for 16-bit x only.

    Group tables are loaded once per row and group of the step, not once per byte: a step no
    longer than a group lies inside one (both are powers of two and steps start at multiples of
    BLOCK_K); a longer one spans BLOCK_K / GROUP_SIZE whole groups."""
    rows = n.to(tl.int64)
    byte = tl.load(packed_ptr + rows * k_bytes + kb, mask=mask, other=0)
    if GROUP_SIZE == ONE_GROUP_PER_ROW:
        table = rows * groups
    else:
        table = rows * groups + (2 * start) // GROUP_SIZE  # the step's first group
    scale = tl.load(scales_ptr + table, mask=row_mask, other=0.0)
    zero = tl.load(zeros_ptr + table, mask=row_mask, other=0.0)
    if GROUP_SIZE != ONE_GROUP_PER_ROW and BLOCK_K > GROUP_SIZE:
        # A step of several groups: one table load per row and group, picked per byte by select.
        group_in_step = (2 * (kb - start)) // GROUP_SIZE
        scale += tl.zeros(byte.shape, tl.float32)
        zero += tl.zeros(byte.shape, tl.float32)
        for i in tl.static_range(1, BLOCK_K // GROUP_SIZE):
            next_mask = row_mask & ((2 * start) // GROUP_SIZE + i < groups)
            scale = tl.where(group_in_step == i, tl.load(scales_ptr + table + i, mask=next_mask, other=0.0), scale)
            zero = tl.where(group_in_step == i, tl.load(zeros_ptr + table + i, mask=next_mask, other=0.0), zero)
    low_codes = (byte & LOW_NIBBLE).to(tl.int32)
    high_codes = (byte >> NIBBLE_BITS).to(tl.int32)
    if OFFSET_CODES:
        return offset_code_weights(low_codes, scale, zero), offset_code_weights(high_codes, scale, zero)
    return (nibble_to_float(low_codes) - zero) * scale, (nibble_to_float(high_codes) - zero) * scale


@triton.jit
def load_x_pairs(x_rows, start, row_mask, k_end, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
    """(x[:, 2 kb], x[:, 2 kb + 1]) for the step's bytes kb = start + arange(BLOCK_K / 2), bytes
    from k_end on read as 0: one contiguous load of BLOCK_K features split into the even and
    odd ones (two stride-2 loads cost one instruction per element)."""
    features = 2 * start + tl.arange(0, BLOCK_K)
    x = tl.load(x_rows + features[None, :], mask=row_mask & (features < 2 * k_end)[None, :], other=0.0)
    return tl.split(tl.reshape(x, [BLOCK_M, BLOCK_K // 2, 2]))


@triton.jit
def store_output(out_ptr, acc, bias_ptr, rows, cols, M, N, HAS_BIAS: tl.constexpr):
    """out[rows, cols] = acc (+ bias[cols]) rounded to nearest even into out's dtype."""
    col_mask = cols < N
    if HAS_BIAS:
        acc += tl.load(bias_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)[None, :]
    offs = rows.to(tl.int64)[:, None] * N + cols[None, :]
    tl.store(out_ptr + offs, cast_rne(acc, out_ptr.dtype.element_ty), mask=(rows < M)[:, None] & col_mask[None, :])


def random_case(dtype: torch.dtype, gen: torch.Generator, device: str, m: int, n: int, k: int,
                group_size: int, with_bias: bool, batch: tuple[int, ...] = ()):
    """(x (*batch, m, k), packed, scales, zeros, bias or None) from a random float weight."""
    w = torch.randn(n, k, generator=gen)
    packed, scales, zeros = reference.quantize_int4(w, group_size)
    x = torch.randn(*batch, m, k, generator=gen).to(device, dtype)
    bias = torch.randn(n, generator=gen).to(device, dtype) if with_bias else None
    return x, packed.to(device), scales.to(device), zeros.to(device), bias


def references(x, packed, scales, zeros, group_size, bias):
    """(float64 reference, reference in x's dtype) of int4_matmul."""
    ref64 = reference.int4_matmul(x.double(), packed, scales, zeros, group_size,
                                  None if bias is None else bias.double())
    return ref64, reference.int4_matmul(x, packed, scales, zeros, group_size, bias)


def kernel_example(launch, config: dict, dtype, gen, device, m: int, n: int, k: int, group_size: int) -> Example:
    """One registry example: `launch(x2d, packed, scales, zeros, g, bias, out2d, config)` into a
    poisoned output, beside the references."""
    x, packed, scales, zeros, bias = random_case(dtype, gen, device, m, n, k, group_size, with_bias=True)
    out = poison_like(torch.empty(m, n, dtype=dtype, device=device))
    launch(x, packed, scales, zeros, group_size, bias, out, config)
    return Example(out, *references(x, packed, scales, zeros, group_size, bias))
