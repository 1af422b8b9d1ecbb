"""INT4 matmul for a few rows (M up to ~16) in Triton: split-K GEMV on packed weights (algorithms.md §6).

y (M, N) = x (M, K) @ W^T + bias with W (N, K) packed two codes per byte. Program
(mn, s) takes BLOCK_M rows of x, BLOCK_N rows of W and K slice s (`bytes_per_split` packed
bytes, a whole number of BLOCK_K / 2 byte steps). Per step it loads the bytes once, splits the
nibbles into the float32 weights of the even and odd features (group tables loaded once per row
and group of the step; for 16-bit x one FMA a weight from offset codes), and adds

    lanes[m, n, j] += x[m, 2j] * W[n, 2j] + x[m, 2j + 1] * W[n, 2j + 1]

in float32, one sum per byte lane j; the lanes are added once after the loop (a sum over j per
step would cost cross-thread shuffles every step: bench/int4/int4_triton_sass.py counts them).
With one slice the program writes the sum + bias to the output directly; otherwise float32
partials that int4_split_k.py adds in slice order.
"""

from __future__ import annotations

import triton
import triton.language as tl

from ._int4_common import ONE_GROUP_PER_ROW, dequantize_bytes, group_constexpr, kernel_example, load_x_pairs
from .int4_split_k import REDUCE_BLOCK, int4_splitk_reduce_kernel, partials_for, reduce_slices, split_plan, store_slice
from .registry import KernelEntry, register


@triton.jit
def int4_gemv_kernel(x_ptr, packed_ptr, scales_ptr, zeros_ptr, bias_ptr, out_ptr, partial_ptr, M, N, K, groups,
                     bytes_per_split, GROUP_SIZE: tl.constexpr, HAS_BIAS: tl.constexpr, SPLIT_K: tl.constexpr,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    n_blocks = tl.cdiv(N, BLOCK_N)
    rows = (tl.program_id(0) // n_blocks) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = (tl.program_id(0) % n_blocks) * BLOCK_N + tl.arange(0, BLOCK_N)
    split = tl.program_id(1)
    k_bytes = K // 2
    k_begin = split * bytes_per_split
    k_end = tl.minimum(k_begin + bytes_per_split, k_bytes)
    x_rows = x_ptr + rows.to(tl.int64)[:, None] * K
    row_mask = (rows < M)[:, None]
    w_row_mask = (cols < N)[:, None]
    # One float32 sum per (x row, W row, byte lane), reduced over the lanes once after the loop:
    # a reduction per step would cost cross-thread shuffles every step. One x row keeps the sums
    # in the weight tile's own shape: with a unit leading axis the compiler dequantizes in the
    # products' layout (16 rows a thread: 8x the group-table loads a step) or moves the tile
    # through shared memory.
    if BLOCK_M == 1:
        lanes = tl.zeros([BLOCK_N, BLOCK_K // 2], dtype=tl.float32)
    else:
        lanes = tl.zeros([BLOCK_M, BLOCK_N, BLOCK_K // 2], dtype=tl.float32)
    for start in range(k_begin, k_end, BLOCK_K // 2):
        kb = start + tl.arange(0, BLOCK_K // 2)
        k_mask = (kb < k_end)[None, :]
        w_even, w_odd = dequantize_bytes(packed_ptr, scales_ptr, zeros_ptr, cols[:, None], kb[None, :], start,
                                         w_row_mask, w_row_mask & k_mask, k_bytes, groups, GROUP_SIZE, BLOCK_K,
                                         OFFSET_CODES=x_ptr.dtype.element_ty != tl.float32)
        x_even, x_odd = load_x_pairs(x_rows, start, row_mask, k_end, BLOCK_M, BLOCK_K)
        if BLOCK_M == 1:  # two FMAs a byte
            lanes += x_even.to(tl.float32) * w_even
            lanes += x_odd.to(tl.float32) * w_odd
        else:
            lanes += x_even.to(tl.float32)[:, None, :] * w_even[None, :, :]
            lanes += x_odd.to(tl.float32)[:, None, :] * w_odd[None, :, :]
    if BLOCK_M == 1:
        sums = tl.sum(lanes, axis=1)[None, :]
    else:
        sums = tl.sum(lanes, axis=2)
    store_slice(out_ptr, partial_ptr, sums, bias_ptr, rows, cols, split, M, N, HAS_BIAS, SPLIT_K)


def int4_gemv(x, packed, scales, zeros, group_size: int, bias, out, config: dict):
    """out (M, N) = x (M, K) @ dequant(W)^T (+ bias), launched with a "gemv" `config`."""
    m, k = x.shape
    n = packed.shape[0]
    splits, bytes_per_split = split_plan(k, config["BLOCK_K"], config["SPLIT_K"])
    partials = partials_for(splits, out)
    grid = (triton.cdiv(m, config["BLOCK_M"]) * triton.cdiv(n, config["BLOCK_N"]), splits)
    int4_gemv_kernel[grid](
        x, packed, scales, zeros, out if bias is None else bias, out, partials, m, n, k, scales.shape[1],
        bytes_per_split, GROUP_SIZE=group_constexpr(group_size, k), HAS_BIAS=bias is not None, SPLIT_K=splits,
        BLOCK_M=config["BLOCK_M"], BLOCK_N=config["BLOCK_N"], BLOCK_K=config["BLOCK_K"],
        num_warps=config["num_warps"], num_stages=config["num_stages"])
    reduce_slices(partials, bias, out)
    return out


EXAMPLE_CONFIG = {"kernel": "gemv", "BLOCK_M": 2, "BLOCK_N": 16, "BLOCK_K": 64, "SPLIT_K": 4, "num_warps": 4,
                  "num_stages": 2}


def _signature(dtype: str) -> dict[str, str]:
    return {"x_ptr": f"*{dtype}", "packed_ptr": "*u8", "scales_ptr": "*fp32", "zeros_ptr": "*fp32",
            "bias_ptr": f"*{dtype}", "out_ptr": f"*{dtype}", "partial_ptr": "*fp32", "M": "i64", "N": "i64",
            "K": "i64", "groups": "i64", "bytes_per_split": "i64", "outputs": "i64",
            **{name: "constexpr" for name in ("GROUP_SIZE", "HAS_BIAS", "SPLIT_K", "BLOCK_M", "BLOCK_N",
                                               "BLOCK_K", "BLOCK")}}


register(KernelEntry(
    name="int4_gemv",
    kernel=int4_gemv_kernel,
    signature=_signature,
    constexprs={"GROUP_SIZE": ONE_GROUP_PER_ROW.value, "HAS_BIAS": True, "SPLIT_K": 4, "BLOCK_M": 4, "BLOCK_N": 32,
                "BLOCK_K": 64},
    # One group per row of a K that is no power of two: 511 packed bytes, the last step partial.
    example=lambda dtype, gen, device: kernel_example(int4_gemv, EXAMPLE_CONFIG, dtype, gen, device,
                                                      m=3, n=45, k=1022, group_size=1022),
))
register(KernelEntry(
    name="int4_splitk_reduce",
    kernel=int4_splitk_reduce_kernel,
    signature=_signature,
    constexprs={"HAS_BIAS": True, "SPLIT_K": 4, "BLOCK": REDUCE_BLOCK},
    example=lambda dtype, gen, device: kernel_example(int4_gemv, EXAMPLE_CONFIG, dtype, gen, device,
                                                      m=2, n=17, k=256, group_size=64),
))
