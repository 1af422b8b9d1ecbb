"""ACS per-sample scores in Triton (algorithms.md §2): error vector score and disagreement score.

    EVS_i = || softmax(z_i) - onehot(y_i) ||_2,   DS_i = || softmax(zq_i) - softmax(zf_i) ||_2

One program per block of BLOCK_B rows of the (B, K) logits. A first loop over K in BLOCK_K
chunks keeps an online max m and sum of exp s (float32); a second loop reads the chunks again
and accumulates (exp(z - m) / s - target)^2, so the B x K softmax is never written to memory.
Where the running max is still -inf (so far only -inf or masked logits) the rescale uses a
shift of 0, so a row such as [-inf, 0] gives softmax [0, 1]; an all -inf row gives 0 / 0 = NaN
and a NaN or +inf logit a NaN score, as torch.softmax does. Outputs (B,) in the logits' dtype.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..reference import acs as reference
from ..testing import poison_like
from .math import cast_rne
from .registry import Example, KernelEntry, register

BLOCK_B = 16
"""Rows per program."""
MAX_BLOCK_K = 256
"""Logits per row per chunk: a K of up to 256 is one chunk, larger K loops."""


@triton.jit
def _online_softmax_stats(row_ptr, rows_mask, k, BLOCK_B: tl.constexpr, BLOCK_K: tl.constexpr):
    """(m, s): running max and sum of exp(z - m) of BLOCK_B rows starting at row_ptr (B, 1)."""
    m = tl.full([BLOCK_B], float("-inf"), tl.float32)
    s = tl.zeros([BLOCK_B], dtype=tl.float32)
    for k0 in range(0, k, BLOCK_K):
        cols = k0 + tl.arange(0, BLOCK_K)
        mask = rows_mask[:, None] & (cols < k)[None, :]
        z = tl.load(row_ptr + cols[None, :], mask=mask, other=float("-inf")).to(tl.float32)
        m_new = tl.maximum(m, tl.max(z, axis=1))
        shift = tl.where(m_new == float("-inf"), 0.0, m_new)  # no -inf - -inf before any finite logit
        s = s * tl.exp(m - shift) + tl.sum(tl.exp(z - shift[:, None]), axis=1)
        m = m_new
    return tl.where(m == float("-inf"), 0.0, m), s


@triton.jit
def error_vector_score_kernel(logits_ptr, labels_ptr, out_ptr, batch, k,
                              BLOCK_B: tl.constexpr, BLOCK_K: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    rows_mask = rows < batch
    row_ptr = logits_ptr + rows.to(tl.int64)[:, None] * k
    m, s = _online_softmax_stats(row_ptr, rows_mask, k, BLOCK_B, BLOCK_K)
    inv_s = 1.0 / tl.where(rows_mask, s, 1.0)  # rows past the batch: no 1 / 0
    y = tl.load(labels_ptr + rows, mask=rows_mask, other=-1)
    acc = tl.zeros([BLOCK_B], dtype=tl.float32)
    for k0 in range(0, k, BLOCK_K):
        cols = k0 + tl.arange(0, BLOCK_K)
        mask = rows_mask[:, None] & (cols < k)[None, :]
        z = tl.load(row_ptr + cols[None, :], mask=mask, other=float("-inf")).to(tl.float32)
        d = tl.exp(z - m[:, None]) * inv_s[:, None] - tl.where(cols[None, :] == y[:, None], 1.0, 0.0)
        acc += tl.sum(tl.where(mask, d * d, 0.0), axis=1)
    tl.store(out_ptr + rows, cast_rne(tl.sqrt(acc), out_ptr.dtype.element_ty), mask=rows_mask)


@triton.jit
def disagreement_score_kernel(logits_q_ptr, logits_fp_ptr, out_ptr, batch, k,
                              BLOCK_B: tl.constexpr, BLOCK_K: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    rows_mask = rows < batch
    offsets = rows.to(tl.int64)[:, None] * k
    m_q, s_q = _online_softmax_stats(logits_q_ptr + offsets, rows_mask, k, BLOCK_B, BLOCK_K)
    m_f, s_f = _online_softmax_stats(logits_fp_ptr + offsets, rows_mask, k, BLOCK_B, BLOCK_K)
    inv_q, inv_f = 1.0 / tl.where(rows_mask, s_q, 1.0), 1.0 / tl.where(rows_mask, s_f, 1.0)
    acc = tl.zeros([BLOCK_B], dtype=tl.float32)
    for k0 in range(0, k, BLOCK_K):
        cols = k0 + tl.arange(0, BLOCK_K)
        mask = rows_mask[:, None] & (cols < k)[None, :]
        zq = tl.load(logits_q_ptr + offsets + cols[None, :], mask=mask, other=float("-inf")).to(tl.float32)
        zf = tl.load(logits_fp_ptr + offsets + cols[None, :], mask=mask, other=float("-inf")).to(tl.float32)
        d = tl.exp(zq - m_q[:, None]) * inv_q[:, None] - tl.exp(zf - m_f[:, None]) * inv_f[:, None]
        acc += tl.sum(tl.where(mask, d * d, 0.0), axis=1)
    tl.store(out_ptr + rows, cast_rne(tl.sqrt(acc), out_ptr.dtype.element_ty), mask=rows_mask)


def _block_k(k: int) -> int:
    return min(triton.next_power_of_2(max(k, 1)), MAX_BLOCK_K)


def error_vector_score(logits, labels, *, out=None):
    """EVS per row of (B, K) logits with int64 labels (B,) in [0, K) (checked by the caller)."""
    logits, labels = logits.contiguous(), labels.contiguous()
    batch, k = logits.shape
    out = torch.empty(batch, dtype=logits.dtype, device=logits.device) if out is None else out
    if batch:
        error_vector_score_kernel[(triton.cdiv(batch, BLOCK_B),)](logits, labels, out, batch, k,
                                                                  BLOCK_B=BLOCK_B, BLOCK_K=_block_k(k))
    return out


def disagreement_score(logits_q, logits_fp, *, out=None):
    """DS per row of two (B, K) logits tensors of one dtype."""
    logits_q, logits_fp = logits_q.contiguous(), logits_fp.contiguous()
    batch, k = logits_q.shape
    out = torch.empty(batch, dtype=logits_q.dtype, device=logits_q.device) if out is None else out
    if batch:
        disagreement_score_kernel[(triton.cdiv(batch, BLOCK_B),)](logits_q, logits_fp, out, batch, k,
                                                                  BLOCK_B=BLOCK_B, BLOCK_K=_block_k(k))
    return out


def _logits(dtype, gen, device, shape):
    return (torch.randn(shape, generator=gen) * 3).to(device, dtype)


def _evs_example(dtype, gen, device) -> Example:
    z = _logits(dtype, gen, device, (37, 300))  # K > MAX_BLOCK_K: two chunks, a partial one
    y = torch.randint(0, 300, (37,), generator=gen).to(device)
    got = error_vector_score(z, y, out=poison_like(torch.empty(37, dtype=dtype, device=device)))
    return Example(got, reference.error_vector_score(z.double(), y), reference.error_vector_score(z, y))


def _ds_example(dtype, gen, device) -> Example:
    zq, zf = _logits(dtype, gen, device, (21, 13)), _logits(dtype, gen, device, (21, 13))
    got = disagreement_score(zq, zf, out=poison_like(torch.empty(21, dtype=dtype, device=device)))
    return Example(got, reference.disagreement_score(zq.double(), zf.double()), reference.disagreement_score(zq, zf))


def _signature(dtype: str) -> dict[str, str]:
    return {"logits_ptr": f"*{dtype}", "labels_ptr": "*i64", "logits_q_ptr": f"*{dtype}",
            "logits_fp_ptr": f"*{dtype}", "out_ptr": f"*{dtype}", "batch": "i64", "k": "i64",
            "BLOCK_B": "constexpr", "BLOCK_K": "constexpr"}


register(KernelEntry(
    name="error_vector_score",
    kernel=error_vector_score_kernel,
    signature=_signature,
    constexprs={"BLOCK_B": BLOCK_B, "BLOCK_K": MAX_BLOCK_K},
    example=_evs_example,
))
register(KernelEntry(
    name="disagreement_score",
    kernel=disagreement_score_kernel,
    signature=_signature,
    constexprs={"BLOCK_B": BLOCK_B, "BLOCK_K": 16},
    example=_ds_example,
))
