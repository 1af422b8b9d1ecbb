"""Conversion between `Int4Weight` and PyTorch's own CPU int4 format (SPEC 6 interop).

PyTorch's `_weight_int4pack_mm_for_cpu(x, packed, group_size, scales_and_zeros)` computes
x @ W^T with W[n, k] = (q[n, k] - 8) * scale[g, n] + zero[g, n], g = k // group_size, where
`packed` comes from `_convert_weight_to_int4pack_for_cpu(q int32 (N, K), 1)` and
`scales_and_zeros` is (K/g, N, 2). Ours is W = (q - zero) * scale with the same unsigned codes,
so the codes carry over unchanged and only the offsets differ:

    torch_zero = (8 - zero) * scale        zero = 8 - torch_zero / scale

Both directions keep the codes bit for bit; the float offsets round once (exact where the
scale is a power of two).
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import reference
from .checks import check_group_size, check_tensor
from .int4 import Int4Weight

TORCH_INT4_OFFSET = 8
"""PyTorch's int4 format stores q - 8 times the scale, plus its zero."""
TORCH_INT4_ROW_MULTIPLE = 16
"""`_convert_weight_to_int4pack_for_cpu` packs rows in tiles of 16."""


def to_torch_int4pack(qweight: Int4Weight, dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor, int]:
    """(packed, scales_and_zeros, group_size) for `torch.ops.aten._weight_int4pack_mm_for_cpu`.

    `dtype` is the activation dtype the torch kernel will be called with (float32, bfloat16 or
    float16): its scales_and_zeros must match it. CPU weights only.
    """
    if not isinstance(qweight, Int4Weight):
        raise TypeError(f"qweight must be an Int4Weight, got {type(qweight).__name__}")
    if qweight.device.type != "cpu":
        raise ValueError(f"to_torch_int4pack converts to PyTorch's CPU format: qweight must be on the CPU, "
                         f"got {qweight.device}")
    if qweight.shape[0] % TORCH_INT4_ROW_MULTIPLE:
        raise ValueError(f"PyTorch's CPU int4 format needs out_features divisible by {TORCH_INT4_ROW_MULTIPLE}, "
                         f"got {qweight.shape[0]}")
    codes = reference.unpack_int4(qweight.packed).to(torch.int32)
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes, 1)
    torch_zero = (TORCH_INT4_OFFSET - qweight.zeros) * qweight.scales
    scales_and_zeros = torch.stack([qweight.scales.T, torch_zero.T], dim=-1).to(dtype).contiguous()
    return packed, scales_and_zeros, qweight.group_size


def from_torch_int4pack(packed: Tensor, scales_and_zeros: Tensor, group_size: int, in_features: int) -> Int4Weight:
    """The `Int4Weight` of a PyTorch CPU int4 weight (the inverse of `to_torch_int4pack`).

    The codes are read back through torch's own kernel (a matmul with the identity, scale 1 and
    zero 8, so each output is exactly a code): PyTorch exposes no unpacking op.
    """
    check_tensor("packed", packed)
    check_tensor("scales_and_zeros", scales_and_zeros, floating=True)
    group_size = check_group_size(group_size, in_features)
    groups = in_features // group_size
    if scales_and_zeros.dim() != 3 or scales_and_zeros.shape[0] != groups or scales_and_zeros.shape[2] != 2:
        raise ValueError(f"scales_and_zeros must have shape ({groups}, out_features, 2) for in_features "
                         f"{in_features} and group_size {group_size}, got {tuple(scales_and_zeros.shape)}")
    out_features = scales_and_zeros.shape[1]
    identity_params = torch.stack([torch.ones(groups, out_features), torch.full((groups, out_features), 8.0)], -1)
    codes = torch.ops.aten._weight_int4pack_mm_for_cpu(torch.eye(in_features), packed, group_size, identity_params)
    codes = codes.T.round().to(torch.uint8)
    scales = scales_and_zeros[..., 0].T.float().contiguous()
    zeros = (TORCH_INT4_OFFSET - scales_and_zeros[..., 1].T.float() / scales).contiguous()
    return Int4Weight(reference.pack_int4(codes), scales, zeros, group_size)
