"""Class-segmented statistics in Triton (algorithms.md §1c steps 1-3, §4a): one pass over x, then a
(K, F) epilogue.

x (B, F, S) (F = x.shape[1], 1 for 1-D x; S the product of the trailing sizes). Program
(fb, i) reduces sample i's rows x[i, f, :] for BLOCK_F features f of block fb in float64
after shifting by the first sample's value, d = x - x[0, f, 0] (exact in float64; the shift is 0
where x[0, f, 0] is NaN or Inf, so that it stays in its own class), and adds sum d and sum d^2
to the (class labels[i], feature f) accumulators with float64 atomics. The finalize kernel
then writes, with n_k = counts_k (samples of class k times S):

    mean_kf = x[0, f, 0] + sum d / n_k,   var_kf = sum d^2 / n_k - (sum d / n_k)^2   (biased)

and 0, 0 for absent classes. Shifted float64 sums lose nothing to cancellation unless a class
mean sits ~1e4 standard deviations from the shift. Labels must lie in [0, K): the ops layer
checks them before launching (the kernel masks out others rather than writing out of
bounds). Outputs in x's dtype; counts int64 from a label histogram on the device (no sync).
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from .. import reference
from ..testing import poison_like
from .registry import Example, KernelEntry, register

BLOCK_ELEMENTS = 1024
"""Elements per tile of the accumulation kernel: BLOCK_F features x BLOCK_S positions."""
FINALIZE_BLOCK = 256


@triton.jit
def class_stats_sums_kernel(x_ptr, labels_ptr, sum_d_ptr, sum_d2_ptr, features, positions, num_classes,
                            BLOCK_F: tl.constexpr, BLOCK_S: tl.constexpr):
    f = tl.program_id(0) * BLOCK_F + tl.arange(0, BLOCK_F)
    sample = tl.program_id(1).to(tl.int64)
    f_mask = f < features
    shift = tl.load(x_ptr + f * positions, mask=f_mask, other=0.0).to(tl.float32)
    shift = tl.where(tl.abs(shift) < float("inf"), shift, 0.0).to(tl.float64)  # NaN/Inf would reach every class
    row = x_ptr + (sample * features + f) * positions  # (BLOCK_F,) row starts
    acc_a = tl.zeros([BLOCK_F], dtype=tl.float64)
    acc_b = tl.zeros([BLOCK_F], dtype=tl.float64)
    for s0 in range(0, positions, BLOCK_S):
        s = s0 + tl.arange(0, BLOCK_S)
        mask = f_mask[:, None] & (s < positions)[None, :]
        x = tl.load(row[:, None] + s[None, :], mask=mask, other=0.0).to(tl.float32)
        d = tl.where(mask, x.to(tl.float64) - shift[:, None], 0.0)  # exact: two float32 values in float64
        acc_a += tl.sum(d, axis=1)
        acc_b += tl.sum(d * d, axis=1)
    k = tl.load(labels_ptr + sample)
    mask = f_mask & (k >= 0) & (k < num_classes)
    tl.atomic_add(sum_d_ptr + k * features + f, acc_a, mask=mask)
    tl.atomic_add(sum_d2_ptr + k * features + f, acc_b, mask=mask)


@triton.jit
def class_stats_finalize_kernel(x_ptr, sum_d_ptr, sum_d2_ptr, counts_ptr, mean_ptr, var_ptr, features, positions,
                                total, BLOCK: tl.constexpr):
    j = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = j < total
    k = j // features
    f = j % features
    n = tl.load(counts_ptr + k, mask=mask, other=0).to(tl.float64)
    present = mask & (n > 0)
    n_safe = tl.where(present, n, 1.0)
    mean_d = tl.load(sum_d_ptr + j, mask=mask, other=0.0) / n_safe
    shift = tl.load(x_ptr + f * positions, mask=present, other=0.0).to(tl.float32)
    shift = tl.where(tl.abs(shift) < float("inf"), shift, 0.0).to(tl.float64)
    var = tl.load(sum_d2_ptr + j, mask=mask, other=0.0) / n_safe - mean_d * mean_d
    var = tl.where(var < 0.0, 0.0, var)  # rounding below 0 clipped; NaN kept (tl.maximum drops it)
    mean = tl.where(present, shift + mean_d, 0.0)
    var = tl.where(present, var, 0.0)
    tl.store(mean_ptr + j, mean.to(tl.float32).to(mean_ptr.dtype.element_ty), mask=mask)
    tl.store(var_ptr + j, var.to(tl.float32).to(var_ptr.dtype.element_ty), mask=mask)


def _blocks(positions: int) -> tuple[int, int]:
    """(BLOCK_F, BLOCK_S): a tile of about BLOCK_ELEMENTS, long rows reduced BLOCK_S at a time."""
    block_s = min(triton.next_power_of_2(max(positions, 1)), BLOCK_ELEMENTS // 4)
    return BLOCK_ELEMENTS // block_s, block_s


def class_stats(x, labels, num_classes: int, *, out=None):
    """(counts int64 (K,), mean, var) of x (B,), (B, D) or (B, C, *spatial) by int64 labels (B,).

    mean and var have shape (K, F) ((K,) for 1-D x) and x's dtype; `out` = (mean, var) buffers.
    """
    x, labels = x.contiguous(), labels.contiguous()
    batch = x.shape[0]
    features = x.shape[1] if x.dim() > 1 else 1
    positions = math.prod(x.shape[2:])
    stats_shape = (num_classes, features) if x.dim() > 1 else (num_classes,)
    mean, var = (torch.empty(stats_shape, dtype=x.dtype, device=x.device) for _ in range(2)) if out is None else out
    samples = torch.zeros(num_classes, dtype=torch.int64, device=x.device)
    counts = samples.scatter_add_(0, labels, torch.ones_like(labels)) * positions
    sum_d = torch.zeros(num_classes * features, dtype=torch.float64, device=x.device)
    sum_d2 = torch.zeros_like(sum_d)
    if x.numel():
        block_f, block_s = _blocks(positions)
        grid = (triton.cdiv(features, block_f), batch)
        class_stats_sums_kernel[grid](x, labels, sum_d, sum_d2, features, positions, num_classes,
                                      BLOCK_F=block_f, BLOCK_S=block_s)
    total = num_classes * features
    class_stats_finalize_kernel[(triton.cdiv(total, FINALIZE_BLOCK),)](
        x, sum_d, sum_d2, counts, mean, var, features, max(positions, 1), total, BLOCK=FINALIZE_BLOCK)
    return counts, mean, var


def _example(dtype, gen, device, shape, which: int) -> Example:
    x = (torch.randn(shape, generator=gen) * 1.5 + 0.7).to(device, dtype)
    labels = torch.randint(0, 4, (shape[0],), generator=gen).to(device)
    got = class_stats(x, labels, 5, out=tuple(poison_like(t) for t in reference.class_stats(x, labels, 5)[1:]))
    return Example(got[which], reference.class_stats(x.double(), labels, 5)[which],
                   reference.class_stats(x, labels, 5)[which])


def _signature(dtype: str) -> dict[str, str]:
    return {"x_ptr": f"*{dtype}", "labels_ptr": "*i64", "sum_d_ptr": "*fp64", "sum_d2_ptr": "*fp64",
            "counts_ptr": "*i64", "mean_ptr": f"*{dtype}", "var_ptr": f"*{dtype}", "features": "i64",
            "positions": "i64", "num_classes": "i64", "total": "i64", "BLOCK_F": "constexpr",
            "BLOCK_S": "constexpr", "BLOCK": "constexpr"}


register(KernelEntry(
    name="class_stats_sums",
    kernel=class_stats_sums_kernel,
    signature=_signature,
    constexprs={"BLOCK_F": 16, "BLOCK_S": 64},
    example=lambda dtype, gen, device: _example(dtype, gen, device, (9, 3, 5, 7), which=1),
))
register(KernelEntry(
    name="class_stats_finalize",
    kernel=class_stats_finalize_kernel,
    signature=_signature,
    constexprs={"BLOCK": FINALIZE_BLOCK},
    example=lambda dtype, gen, device: _example(dtype, gen, device, (13, 6), which=2),
))
