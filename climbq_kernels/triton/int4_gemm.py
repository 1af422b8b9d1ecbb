"""INT4 matmul for many rows in Triton: tiled GEMM on packed weights (SPEC 6).

y (M, N) = x (M, K) @ W^T + bias with W (N, K) packed two codes per byte. Program p owns
the (BLOCK_M, BLOCK_N) output tile (p // n_blocks, p % n_blocks) and walks K in steps of
BLOCK_K features (BLOCK_K / 2 packed bytes). Per step it dequantizes the (BLOCK_K / 2,
BLOCK_N) bytes into the weights of the even and the odd features, rounds them to x's dtype
(as the reference does) and accumulates two tl.dot products in float32:

    acc += x[:, 0::2] @ W[:, 0::2]^T + x[:, 1::2] @ W[:, 1::2]^T

so the nibbles never need interleaving. float32 x multiplies with input_precision "ieee"
(TF32 would break the error rule) and sums each K step apart before adding it to acc. The
epilogue adds bias and rounds once to x's dtype.

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
from ._int4_common import dequantize_bytes, group_constexpr, kernel_example, load_x_pairs, store_output
from .math import cast_rne
from .registry import KernelEntry, register


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
def _accumulate_step(acc, x_even, w_even, x_odd, w_odd, dtype: tl.constexpr, EMULATE_BF16: tl.constexpr):
    """acc + x_even @ w_even + x_odd @ w_odd in float32, operands in x's `dtype`.

    float32 multiplies exactly (IEEE, no TF32) and sums the step apart before adding it to acc:
    its dot is a chain of FMAs, and one chain over all of K breaks the error rule at K = 512
    (acc + tl.dot(x, w) would be folded back into that one chain by Triton's combiner). Other
    dtypes accumulate into acc on the tensor cores."""
    if dtype == tl.float32:
        step = tl.dot(x_even, w_even, input_precision="ieee")
        return acc + tl.dot(x_odd, w_odd, step, input_precision="ieee")
    acc = tl.dot(_dot_operand(x_even, dtype, EMULATE_BF16), _dot_operand(w_even, dtype, EMULATE_BF16), acc,
                 input_precision="ieee")
    return tl.dot(_dot_operand(x_odd, dtype, EMULATE_BF16), _dot_operand(w_odd, dtype, EMULATE_BF16), acc,
                  input_precision="ieee")


@triton.jit
def int4_gemm_kernel(x_ptr, packed_ptr, scales_ptr, zeros_ptr, bias_ptr, out_ptr, M, N, K, groups,
                     GROUP_SIZE: tl.constexpr, HAS_BIAS: tl.constexpr, EMULATE_BF16: tl.constexpr,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    n_blocks = tl.cdiv(N, BLOCK_N)
    rows = (tl.program_id(0) // n_blocks) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = (tl.program_id(0) % n_blocks) * BLOCK_N + tl.arange(0, BLOCK_N)
    x_dtype: tl.constexpr = x_ptr.dtype.element_ty
    k_bytes = K // 2
    x_rows = x_ptr + rows.to(tl.int64)[:, None] * K
    row_mask = (rows < M)[:, None]
    col_mask = (cols < N)[None, :]
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for start in range(0, k_bytes, BLOCK_K // 2):
        kb = start + tl.arange(0, BLOCK_K // 2)
        k_mask = kb < k_bytes
        w_even, w_odd = dequantize_bytes(packed_ptr, scales_ptr, zeros_ptr, cols[None, :], kb[:, None], start,
                                         col_mask, col_mask & k_mask[:, None], k_bytes, groups, GROUP_SIZE, BLOCK_K)
        x_even, x_odd = load_x_pairs(x_rows, start, row_mask, k_bytes, BLOCK_M, BLOCK_K)
        acc = _accumulate_step(acc, x_even, w_even, x_odd, w_odd, x_dtype, EMULATE_BF16)
    store_output(out_ptr, acc, bias_ptr, rows, cols, M, N, HAS_BIAS)


def int4_gemm(x, packed, scales, zeros, group_size: int, bias, out, config: dict):
    """out (M, N) = x (M, K) @ dequant(W)^T (+ bias), launched with a "gemm" `config`."""
    m, k = x.shape
    n = packed.shape[0]
    grid = (triton.cdiv(m, config["BLOCK_M"]) * triton.cdiv(n, config["BLOCK_N"]),)
    int4_gemm_kernel[grid](
        x, packed, scales, zeros, out if bias is None else bias, out, m, n, k, scales.shape[1],
        GROUP_SIZE=group_constexpr(group_size, k), HAS_BIAS=bias is not None,
        EMULATE_BF16=triton_interpret() and x.dtype == torch.bfloat16,
        BLOCK_M=config["BLOCK_M"], BLOCK_N=config["BLOCK_N"], BLOCK_K=config["BLOCK_K"],
        num_warps=config["num_warps"], num_stages=config["num_stages"])
    return out


EXAMPLE_CONFIG = {"kernel": "gemm", "BLOCK_M": 16, "BLOCK_N": 32, "BLOCK_K": 64, "SPLIT_K": 1, "num_warps": 4,
                  "num_stages": 2}


def _signature(dtype: str) -> dict[str, str]:
    return {"x_ptr": f"*{dtype}", "packed_ptr": "*u8", "scales_ptr": "*fp32", "zeros_ptr": "*fp32",
            "bias_ptr": f"*{dtype}", "out_ptr": f"*{dtype}", "M": "i64", "N": "i64", "K": "i64", "groups": "i64",
            **{name: "constexpr" for name in ("GROUP_SIZE", "HAS_BIAS", "EMULATE_BF16", "BLOCK_M", "BLOCK_N",
                                               "BLOCK_K")}}


register(KernelEntry(
    name="int4_gemm",
    kernel=int4_gemm_kernel,
    signature=_signature,
    constexprs={"GROUP_SIZE": 128, "HAS_BIAS": True, "EMULATE_BF16": False, "BLOCK_M": 64, "BLOCK_N": 64,
                "BLOCK_K": 64},
    example=lambda dtype, gen, device: kernel_example(int4_gemm, EXAMPLE_CONFIG, dtype, gen, device,
                                                      m=33, n=45, k=384, group_size=128),
))
