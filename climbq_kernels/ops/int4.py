"""INT4 group-wise weight ops (algorithms.md §6)."""

from __future__ import annotations

import torch
from torch import Tensor

from .. import reference
from ._dispatch import native, register_kernels, run, triton_launcher
from ._eager import custom_op, eager

register_kernels({"quantize_int4": {"reference": reference.quantize_int4}})
# Every int4_matmul backend copies to contiguous itself where it needs to (the native op in C++,
# the Triton launcher, the reference through torch ops): a serving call, whose GPU kernel may
# take only microseconds, skips the Python pass over its five tensors.
register_kernels({
    "int4_matmul": {
        "reference": reference.int4_matmul,
        "cpu": native("int4_matmul", direct=True),
        "triton": triton_launcher("int4_matmul", "int4_matmul"),
        "cuda": native("int4_matmul", direct=True),
    },
}, any_strides=True)


@torch.library.custom_op("climbq::quantize_int4", mutates_args=())
def quantize_int4(w: Tensor, group_size: int) -> tuple[Tensor, Tensor, Tensor]:
    """(packed uint8 (N, K/2), scales float32 (N, K/g), zeros float32 (N, K/g))."""
    return run("quantize_int4", w, w, group_size)


@quantize_int4.register_fake
def _(w, group_size):
    rows, cols = w.shape
    groups = cols // group_size
    return (w.new_empty(rows, cols // 2, dtype=torch.uint8), w.new_empty(rows, groups, dtype=torch.float32),
            w.new_empty(rows, groups, dtype=torch.float32))


@custom_op("climbq::int4_matmul")
def int4_matmul(x: Tensor, packed: Tensor, scales: Tensor, zeros: Tensor, group_size: int,
                bias: Tensor | None) -> Tensor:
    """x @ dequant(W)^T + bias in x's dtype; x (..., K)."""
    return run("int4_matmul", x, x, packed, scales, zeros, group_size, bias)


@int4_matmul.register_fake
def _(x, packed, scales, zeros, group_size, bias):
    return x.new_empty(*x.shape[:-1], packed.shape[0])


def _int4_matmul_setup(ctx, inputs, output):
    x, packed, scales, zeros, group_size, bias = inputs
    ctx.save_for_backward(packed, scales, zeros)
    ctx.group_size = group_size


def _int4_matmul_backward(ctx, grad_out):
    packed, scales, zeros = ctx.saved_tensors
    weight = reference.dequantize_int4(packed, scales, zeros, ctx.group_size, dtype=grad_out.dtype)
    dx = grad_out @ weight if ctx.needs_input_grad[0] else None
    dbias = grad_out.reshape(-1, grad_out.shape[-1]).sum(0) if ctx.needs_input_grad[5] else None
    return dx, None, None, None, None, dbias


# Serving calls are small: at batch 1 the custom op's dispatch costs as much as the kernel, and
# the eager twin (plain function call without grad) skips it.
int4_matmul_eager = eager(int4_matmul, _int4_matmul_setup, _int4_matmul_backward)
