"""Split-K for the Triton INT4 matmul kernels (algorithms.md §6): the plan of K slices, each slice's store,
and the reduction that adds the slices.

A kernel launched with S > 1 slices of K writes float32 partial sums (S, M, N);
`int4_splitk_reduce_kernel` adds the S partials of each output in slice order, adds the bias and
rounds once to the output dtype. No atomics, so results are bitwise reproducible.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._int4_common import store_output
from .math import cast_rne

REDUCE_BLOCK = 256
"""Outputs per program of the split-K reduction."""


def split_plan(in_features: int, block_k: int, max_splits: int) -> tuple[int, int]:
    """(slices, packed bytes per slice): at most `max_splits` slices of whole BLOCK_K steps,
    none empty."""
    steps = max(triton.cdiv(in_features // 2, block_k // 2), 1)
    steps_per_split = triton.cdiv(steps, max(1, min(max_splits, steps)))
    return triton.cdiv(steps, steps_per_split), steps_per_split * (block_k // 2)


def partials_for(splits: int, out: torch.Tensor) -> torch.Tensor:
    """The (splits, M, N) float32 partial sums for an (M, N) `out`; `out` itself for one slice."""
    return torch.empty(splits, *out.shape, dtype=torch.float32, device=out.device) if splits > 1 else out


@triton.jit
def store_slice(out_ptr, partial_ptr, acc, bias_ptr, rows, cols, split, M, N, HAS_BIAS: tl.constexpr,
                SPLIT_K: tl.constexpr):
    """A program's float32 (rows, cols) sums of K slice `split`: the output itself (+ bias) when
    K is not split, else the slice's partials."""
    if SPLIT_K == 1:
        store_output(out_ptr, acc, bias_ptr, rows, cols, M, N, HAS_BIAS)
    else:
        offs = (rows.to(tl.int64) + split * M)[:, None] * N + cols[None, :]
        tl.store(partial_ptr + offs, acc, mask=(rows < M)[:, None] & (cols < N)[None, :])


@triton.jit
def int4_splitk_reduce_kernel(partial_ptr, bias_ptr, out_ptr, N, outputs, HAS_BIAS: tl.constexpr,
                              SPLIT_K: tl.constexpr, BLOCK: tl.constexpr):
    """out[e] = sum over slices s = 0, 1, ... of partial[s, e] (+ bias[e % N]), e a flat (M, N) index."""
    e = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = e < outputs
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    slice_ptrs = partial_ptr + e
    for _ in tl.static_range(SPLIT_K):
        acc += tl.load(slice_ptrs, mask=mask, other=0.0)
        slice_ptrs += outputs
    if HAS_BIAS:
        acc += tl.load(bias_ptr + e % N, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + e, cast_rne(acc, out_ptr.dtype.element_ty), mask=mask)


def reduce_slices(partials: torch.Tensor, bias, out: torch.Tensor) -> None:
    """out (M, N) = the slices of `partials` added in order (+ bias); nothing when K was not split
    (`partials` is `out`)."""
    if partials is out:
        return
    splits, m, n = partials.shape
    int4_splitk_reduce_kernel[(triton.cdiv(m * n, REDUCE_BLOCK),)](
        partials, out if bias is None else bias, out, n, m * n, HAS_BIAS=bias is not None, SPLIT_K=splits,
        BLOCK=REDUCE_BLOCK)
