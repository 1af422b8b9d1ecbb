"""The Triton backend of `int4_matmul` (algorithms.md §6): picks the GEMV or the GEMM kernel by shape.

x (..., K) float32/float16/bfloat16 is flattened to M rows; `_int4_configs.pick_config` maps
(M, N, K) to a launch config from int4_configs.json (split-K GEMV for a few rows, tiled GEMM
for many), and the output (..., N) comes back in x's dtype, accumulated in float32.
"""

from __future__ import annotations

import torch

from ._int4_configs import pick_config, validate_config
from .int4_gemm import int4_gemm
from .int4_gemv import int4_gemv

LAUNCHERS = {"gemv": int4_gemv, "gemm": int4_gemm}


def check_args(x, packed, scales, zeros, group_size: int, bias) -> None:
    """The argument contract of csrc/int4_args.h (what the C++ and CUDA kernels check), for the
    Triton kernels, which read every buffer through raw pointers: a table of the wrong shape (a
    module's buffer replaced, a tampered Int4Weight) is refused instead of read past its end."""
    op = "int4_matmul"
    if x.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise TypeError(f"{op}: x must be float32, float16 or bfloat16, got {x.dtype}")
    if packed.dtype != torch.uint8 or packed.dim() != 2:
        raise ValueError(f"{op}: packed must be a 2-D uint8 tensor (out_features, in_features / 2), got "
                         f"{packed.dtype} of shape {tuple(packed.shape)}")
    out_features, in_features = packed.shape[0], 2 * packed.shape[1]
    if x.dim() < 1 or x.shape[-1] != in_features:
        raise ValueError(f"{op}: x's last dimension must be in_features = {in_features}, got shape {tuple(x.shape)}")
    if not (group_size > 0 and in_features % group_size == 0 and (group_size % 32 == 0 or group_size == in_features)):
        raise ValueError(f"{op}: group_size must be a multiple of 32 dividing in_features {in_features}, or "
                         f"in_features itself, got {group_size}")
    groups = (out_features, in_features // group_size)
    for name, table in (("scales", scales), ("zeros", zeros)):
        if table.dtype != torch.float32 or tuple(table.shape) != groups:
            raise ValueError(f"{op}: {name} must be a float32 tensor of shape {groups}, got {table.dtype} of shape "
                             f"{tuple(table.shape)}")
    for name, t in (("packed", packed), ("scales", scales), ("zeros", zeros), ("bias", bias)):
        if t is not None and t.device != x.device:
            raise ValueError(f"{op}: {name} must be on x's device {x.device}, got {t.device}")
    if bias is not None and (bias.dim() != 1 or bias.shape[0] != out_features):
        raise ValueError(f"{op}: bias must have shape ({out_features},), got {tuple(bias.shape)}")


def int4_matmul(x, packed, scales, zeros, group_size: int | None, bias=None, *, out=None, config=None):
    """y = x @ dequant(W)^T + bias for packed W (N, K); `config` forces a launch config.

    packed uint8 (N, K / 2), scales and zeros float32 (N, K / g), g = group_size (None: K);
    bias (N,) or None, used in x's dtype; `out` an optional contiguous (..., N) buffer.
    """
    in_features = x.shape[-1]
    group_size = in_features if group_size is None else int(group_size)
    check_args(x, packed, scales, zeros, group_size, bias)
    rows = x.reshape(-1, in_features).contiguous()
    m, n = rows.shape[0], packed.shape[0]
    if out is None:
        out = torch.empty(*x.shape[:-1], n, dtype=x.dtype, device=x.device)
    if m == 0 or n == 0:
        return out
    if bias is not None:
        bias = bias.to(x.dtype).contiguous()
    config = pick_config(m, n, in_features) if config is None else validate_config(config)
    LAUNCHERS[config["kernel"]](rows, packed.contiguous(), scales.contiguous(), zeros.contiguous(), group_size,
                                bias, out.view(m, n), config)
    return out
