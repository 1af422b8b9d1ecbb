"""INT4 matmul for many rows in Triton: tiled GEMM on packed weights (algorithms.md §6).

y (M, N) = x (M, K) @ W^T + bias with W (N, K) packed two codes per byte. Program (p, s) owns
the (BLOCK_M, BLOCK_N) output tile of M block / N block picked by `_tile_of` and walks K slice s
(the whole of K unless the config splits it: int4_split_k.py) in steps of BLOCK_K features
(BLOCK_K / 2 packed bytes). Splitting K gives a few rows' worth of tiles enough programs to
fill the GPU, as the CUDA tensor-core kernel does. Per step it splits each byte's nibbles and
interleaves them back into natural feature order, dequantizes the (BLOCK_N, BLOCK_K) weight
tile with the step's one scale and zero per row, and accumulates one product

    acc^T (BLOCK_N, BLOCK_M) += W_tile @ x_tile^T

in float32: W is the left operand so that on Hopper the dequantized tile feeds the tensor cores
from registers (as the right operand it makes a round trip through shared memory, about 15% more
SASS instructions a step at 128x128x128; bench/int4/int4_triton_sass.py counts them). A step
never spans two groups: the launcher caps BLOCK_K at the group size.

Dequantization follows the reference's float32 (q - zero) * scale where x is float32. For 16-bit
x the weight is rounded to x's dtype before the product anyway, so it is formed with one FMA
from an offset code (climbq_kernels/triton/_int4_common.py, `offset_code_weights`), as the CUDA
tensor-core kernel does. float32 x multiplies with input_precision "ieee" (TF32 would break the
error rule), sums each K step apart and adds it to acc with Kahan compensation (the compiler
folds a plain acc += step back into one FMA chain over K, which breaks the error rule).

Under TRITON_INTERPRET bfloat16 is stored as raw bits: a bfloat16 tl.dot multiplies the bit
patterns (triton-lang/triton#11584, not supported there yet) and the float32 -> bfloat16 cast
truncates. The launcher sets EMULATE_BF16 there: weights are rounded by `cast_rne` and both
operands widened to float32, which keeps every product exact, as the GPU's bfloat16 MMA does.
Compiled kernels never take that branch.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..dispatch import triton_interpret
from ._int4_common import (
    LOW_NIBBLE,
    NIBBLE_BITS,
    ONE_GROUP_PER_ROW,
    group_constexpr,
    kernel_example,
    nibble_to_float,
    offset_code_weights,
)
from .int4_split_k import partials_for, reduce_slices, split_plan, store_slice
from .math import cast_rne
from .registry import KernelEntry, register

SWIZZLE_ROWS = tl.constexpr(8)
"""M blocks that take turns over the same N blocks, so a band of W tiles is read from L2 by
SWIZZLE_ROWS programs instead of once from memory per M block."""


@triton.jit
def _dot_operand(t, dtype: tl.constexpr, EMULATE_BF16: tl.constexpr):
    """t rounded to nearest even in x's `dtype`, for tl.dot (widened to float32 again when
    EMULATE_BF16)."""
    if EMULATE_BF16:
        if t.dtype != dtype:
            t = cast_rne(t, dtype)
        return t.to(tl.float32)
    return t.to(dtype)


@triton.jit
def _tile_of(pid, M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """(M block, N block) of program `pid`: bands of SWIZZLE_ROWS M blocks walk the N blocks
    together, M block fastest."""
    m_blocks = tl.cdiv(M, BLOCK_M)
    per_band = SWIZZLE_ROWS * tl.cdiv(N, BLOCK_N)
    first_m = (pid // per_band) * SWIZZLE_ROWS
    band_rows = tl.minimum(m_blocks - first_m, SWIZZLE_ROWS)
    return first_m + (pid % per_band) % band_rows, (pid % per_band) // band_rows


@triton.jit
def int4_gemm_kernel(x_ptr, packed_ptr, scales_ptr, zeros_ptr, bias_ptr, out_ptr, partial_ptr, M, N, K, groups,
                     features_per_split, GROUP_SIZE: tl.constexpr, HAS_BIAS: tl.constexpr, EMULATE_BF16: tl.constexpr,
                     EVEN_K: tl.constexpr, SPLIT_K: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                     BLOCK_K: tl.constexpr):
    m_block, n_block = _tile_of(tl.program_id(0), M, N, BLOCK_M, BLOCK_N)
    rows = m_block * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = n_block * BLOCK_N + tl.arange(0, BLOCK_N)
    x_dtype: tl.constexpr = x_ptr.dtype.element_ty
    k_bytes = K // 2
    row_valid = rows < M
    col_valid = cols < N
    w_rows = packed_ptr + cols.to(tl.int64)[:, None] * k_bytes
    x_rows = x_ptr + rows.to(tl.int64)[:, None] * K
    tables = cols.to(tl.int64) * groups
    split = tl.program_id(1)
    k_begin = split * features_per_split
    acc_t = tl.zeros([BLOCK_N, BLOCK_M], dtype=tl.float32)
    carry_t = tl.zeros([BLOCK_N, BLOCK_M], dtype=tl.float32)  # float32 x: what acc_t's rounding lost
    for k0 in range(k_begin, tl.minimum(k_begin + features_per_split, K), BLOCK_K):
        kb = k0 // 2 + tl.arange(0, BLOCK_K // 2)
        k = k0 + tl.arange(0, BLOCK_K)
        if EVEN_K:  # K a multiple of BLOCK_K: no step ends past K
            byte = tl.load(w_rows + kb[None, :], mask=col_valid[:, None], other=0)
            x = tl.load(x_rows + k[None, :], mask=row_valid[:, None], other=0.0)
        else:  # bytes past K read as code 0, x past K as 0
            byte = tl.load(w_rows + kb[None, :], mask=col_valid[:, None] & (kb < k_bytes)[None, :], other=0)
            x = tl.load(x_rows + k[None, :], mask=row_valid[:, None] & (k < K)[None, :], other=0.0)
        if GROUP_SIZE == ONE_GROUP_PER_ROW:
            table = tables
        else:
            table = tables + k0 // GROUP_SIZE
        scale = tl.load(scales_ptr + table, mask=col_valid, other=0.0)[:, None, None]
        zero = tl.load(zeros_ptr + table, mask=col_valid, other=0.0)[:, None, None]
        codes = tl.join(byte & LOW_NIBBLE, byte >> NIBBLE_BITS).to(tl.int32)  # (BLOCK_N, BLOCK_K / 2, 2)
        if x_dtype == tl.float32:
            w = (nibble_to_float(codes) - zero) * scale
        else:
            w = offset_code_weights(codes, scale, zero)
        w = _dot_operand(tl.reshape(w, [BLOCK_N, BLOCK_K]), x_dtype, EMULATE_BF16)
        x = _dot_operand(x, x_dtype, EMULATE_BF16)
        if x_dtype == tl.float32:
            # Each step's sum apart, added to acc with compensation (Kahan): one FMA chain over all
            # of K breaks the error rule at K = 512, and Triton's combiner folds a plain
            # acc + tl.dot(w, x) back into that chain (the subtraction is not folded).
            step = tl.dot(w, tl.trans(x), input_precision="ieee") - carry_t
            total = acc_t + step
            carry_t = (total - acc_t) - step
            # Once the sum is infinite the carry is inf - inf = NaN: drop it, acc keeps the inf.
            carry_t = tl.where(carry_t == carry_t, carry_t, 0.0)
            acc_t = total
        else:
            acc_t = tl.dot(w, tl.trans(x), acc_t, input_precision="ieee")
    store_slice(out_ptr, partial_ptr, tl.trans(acc_t), bias_ptr, rows, cols, split, M, N, HAS_BIAS, SPLIT_K)


def block_k_for(config: dict, group_size: int, in_features: int) -> int:
    """The config's BLOCK_K, capped at the group size so that a K step holds one group."""
    return config["BLOCK_K"] if group_size == in_features else min(config["BLOCK_K"], group_size)


def int4_gemm(x, packed, scales, zeros, group_size: int, bias, out, config: dict):
    """out (M, N) = x (M, K) @ dequant(W)^T (+ bias), launched with a "gemm" `config`."""
    m, k = x.shape
    n = packed.shape[0]
    block_k = block_k_for(config, group_size, k)
    splits, bytes_per_split = split_plan(k, block_k, config["SPLIT_K"])
    partials = partials_for(splits, out)
    grid = (triton.cdiv(m, config["BLOCK_M"]) * triton.cdiv(n, config["BLOCK_N"]), splits)
    int4_gemm_kernel[grid](
        x, packed, scales, zeros, out if bias is None else bias, out, partials, m, n, k, scales.shape[1],
        2 * bytes_per_split, GROUP_SIZE=group_constexpr(group_size, k), HAS_BIAS=bias is not None,
        EMULATE_BF16=triton_interpret() and x.dtype == torch.bfloat16, EVEN_K=k % block_k == 0, SPLIT_K=splits,
        BLOCK_M=config["BLOCK_M"], BLOCK_N=config["BLOCK_N"], BLOCK_K=block_k,
        num_warps=config["num_warps"], num_stages=config["num_stages"])
    reduce_slices(partials, bias, out)
    return out


EXAMPLE_CONFIG = {"kernel": "gemm", "BLOCK_M": 16, "BLOCK_N": 32, "BLOCK_K": 64, "SPLIT_K": 2, "num_warps": 4,
                  "num_stages": 2}


def _signature(dtype: str) -> dict[str, str]:
    return {"x_ptr": f"*{dtype}", "packed_ptr": "*u8", "scales_ptr": "*fp32", "zeros_ptr": "*fp32",
            "bias_ptr": f"*{dtype}", "out_ptr": f"*{dtype}", "partial_ptr": "*fp32", "M": "i64", "N": "i64",
            "K": "i64", "groups": "i64", "features_per_split": "i64",
            **{name: "constexpr" for name in ("GROUP_SIZE", "HAS_BIAS", "EMULATE_BF16", "EVEN_K", "SPLIT_K",
                                               "BLOCK_M", "BLOCK_N", "BLOCK_K")}}


register(KernelEntry(
    name="int4_gemm",
    kernel=int4_gemm_kernel,
    signature=_signature,
    constexprs={"GROUP_SIZE": 128, "HAS_BIAS": True, "EMULATE_BF16": False, "EVEN_K": False, "SPLIT_K": 2,
                "BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 64},
    example=lambda dtype, gen, device: kernel_example(int4_gemm, EXAMPLE_CONFIG, dtype, gen, device,
                                                      m=33, n=45, k=384, group_size=128),
))
