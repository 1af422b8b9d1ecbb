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


def int4_matmul(x, packed, scales, zeros, group_size: int | None, bias=None, *, out=None, config=None):
    """y = x @ dequant(W)^T + bias for packed W (N, K); `config` forces a launch config.

    packed uint8 (N, K / 2), scales and zeros float32 (N, K / g), g = group_size (None: K);
    bias (N,) or None, used in x's dtype; `out` an optional contiguous (..., N) buffer.
    """
    in_features = x.shape[-1]
    group_size = in_features if group_size is None else int(group_size)
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
