"""INT4 group-wise weight ops (SPEC 6)."""

from __future__ import annotations

import torch
from torch import Tensor

from .. import reference
from ._dispatch import native, register_kernels, run, triton_launcher

register_kernels({
    "quantize_int4": {"reference": reference.quantize_int4},
    "int4_matmul": {
        "reference": reference.int4_matmul,
        "cpu": native("int4_matmul"),
        "triton": triton_launcher("int4_matmul", "int4_matmul"),
        "cuda": native("int4_matmul"),
    },
})


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


@torch.library.custom_op("climbq::int4_matmul", mutates_args=())
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


int4_matmul.register_autograd(_int4_matmul_backward, setup_context=_int4_matmul_setup)


def int4_matmul_fast(x: Tensor, packed: Tensor, scales: Tensor, zeros: Tensor, group_size: int,
                     bias: Tensor | None) -> Tensor:
    """`int4_matmul`, skipping the custom-op layer (~30 us a call) where nothing needs it.

    Serving calls are small: at batch 1 the custom op's dispatch costs as much as the kernel.
    The op itself runs wherever autograd, torch.compile or a tensor subclass (fake tensors) may
    need its fake kernel and autograd formula; elsewhere the backend kernel is called directly,
    with the same arguments and the same result.
    """
    needs_grad = torch.is_grad_enabled() and (x.requires_grad or (bias is not None and bias.requires_grad))
    if needs_grad or torch.compiler.is_compiling() or type(x) is not Tensor:
        return int4_matmul(x, packed, scales, zeros, group_size, bias)
    return run("int4_matmul", x, x, packed, scales, zeros, group_size, bias)
