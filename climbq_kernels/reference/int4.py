"""INT4 group-wise packed weights (algorithms.md §6): the reference.

Format. A weight W (N, K) (out_features, in_features) is cut into groups of g consecutive
input features per row (g in INT4_GROUP_SIZES, or g = K: one group per row). Each group has a
float32 scale and a float32 (unrounded) zero; codes q in [0, 15] approximate
W ~= (q - zero) * scale.

Nibble order: byte j of a row holds code k = 2j in its LOW nibble (bits 0-3) and code
k = 2j + 1 in its HIGH nibble (bits 4-7); packed shape (N, K // 2), uint8. K must be even.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..checks import check_bits, check_finite, check_group_size, check_same_device, check_tensor
from ..constants import FLOAT_DTYPES, IDENTITY_BITS, INT4_QMAX, levels
from .climbq import climbq_weight_codes

_INT_DTYPES = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)
_LOW_NIBBLE = 0x0F
_NIBBLE_BITS = 4


def _check_in_features(name: str, in_features: int) -> int:
    if in_features % 2:
        raise ValueError(f"{name} must have an even number of input features (two codes per byte), got {in_features}")
    return in_features


def pack_int4(q: Tensor) -> Tensor:
    """Pack codes q (N, K) with values in [0, 15] into uint8 (N, K // 2), two per byte.

    Byte j = q[:, 2j] | (q[:, 2j + 1] << 4) (low nibble first). q: any integer dtype; K even.
    """
    check_tensor("q", q)
    if q.dtype not in _INT_DTYPES:
        raise TypeError(f"q must be an integer tensor of 4-bit codes, got dtype {q.dtype}")
    if q.dim() != 2:
        raise ValueError(f"q must have shape (N, K), got {tuple(q.shape)}")
    _check_in_features("q", q.shape[1])
    if q.numel() and not bool(((q >= 0) & (q <= INT4_QMAX)).all()):
        raise ValueError(f"q must hold codes in [0, {INT4_QMAX}]")
    wide = q.to(torch.int64)
    return (wide[:, 0::2] | (wide[:, 1::2] << _NIBBLE_BITS)).to(torch.uint8)


def unpack_int4(packed: Tensor) -> Tensor:
    """Inverse of `pack_int4`: uint8 (N, K // 2) -> uint8 codes (N, K) in [0, 15]."""
    check_tensor("packed", packed)
    if packed.dtype != torch.uint8:
        raise TypeError(f"packed must be a uint8 tensor, got dtype {packed.dtype}")
    if packed.dim() != 2:
        raise ValueError(f"packed must have shape (N, K // 2), got {tuple(packed.shape)}")
    low = packed & _LOW_NIBBLE
    high = packed >> _NIBBLE_BITS
    return torch.stack((low, high), dim=2).reshape(packed.shape[0], 2 * packed.shape[1])


def _check_weight(w) -> Tensor:
    check_tensor("w", w, floating=True)
    if w.dim() != 2:
        raise ValueError(f"w must be a 2-D (out_features, in_features) weight, got shape {tuple(w.shape)}")
    _check_in_features("w", w.shape[1])
    check_finite("w", w)
    return w


def quantize_int4(w: Tensor, group_size: int | None = 128) -> tuple[Tensor, Tensor, Tensor]:
    """Group-wise asymmetric INT4 quantization (algorithms.md §6): (packed, scales, zeros).

    w: (N, K) floating, finite, K even (ValueError naming `w`); group_size g from
    INT4_GROUP_SIZES dividing K, or None / K for one group per row (`checks.check_group_size`).
    Computed in float32 (w is cast) so the result does not depend on w's dtype. Per group:

        scale = (max - min) / 15          (1 where that is 0: max == min, the group is exact;
                                           max/15 - min/15 where max - min overflows float32)
        zero  = -min / scale              (float, not rounded)
        q     = clamp(rint(w / scale + zero), 0, 15)

    so |w - (q - zero) * scale| <= scale / 2 up to float32 rounding. Returns packed uint8
    (N, K // 2) (`pack_int4` nibble order) and scales, zeros float32 (N, K // g).
    """
    w = _check_weight(w)
    rows, cols = w.shape
    g = check_group_size(group_size, cols)
    groups = w.to(torch.float32).reshape(rows, cols // g, g)
    lo = groups.amin(dim=2)
    hi = groups.amax(dim=2)
    scale = (hi - lo) / INT4_QMAX
    # A range wider than float32's (weights near +-3e38) would give an infinite scale and NaN
    # weights; hi/15 - lo/15 is finite there (and not used elsewhere, so other groups keep their bits).
    scale = torch.where(torch.isinf(scale), hi / INT4_QMAX - lo / INT4_QMAX, scale)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    zero = -lo / scale
    q = torch.round(groups / scale.unsqueeze(2) + zero.unsqueeze(2)).clamp(0, INT4_QMAX)
    return pack_int4(q.to(torch.uint8).reshape(rows, cols)), scale, zero


def dequantize_int4(packed: Tensor, scales: Tensor, zeros: Tensor, group_size: int | None,
                    dtype: torch.dtype = torch.float32) -> Tensor:
    """W = (q - zero) * scale per group (algorithms.md §6), shape (N, K), `dtype`.

    Computed in float64 when dtype is float64 (the oracle), else in float32 and then rounded
    once to dtype (float16 / bfloat16 storage of a float32 result). packed: uint8 (N, K // 2);
    scales, zeros: floating (N, K // g); group_size as in `quantize_int4` (None: one per row).
    """
    codes = unpack_int4(packed)
    rows, cols = codes.shape
    g = check_group_size(group_size, cols)
    if dtype not in FLOAT_DTYPES:
        raise TypeError(f"dtype must be one of {FLOAT_DTYPES}, got {dtype}")
    for name, table in (("scales", scales), ("zeros", zeros)):
        check_tensor(name, table, floating=True)
        if table.shape != (rows, cols // g):
            raise ValueError(f"{name} must have shape ({rows}, {cols // g}) (one per group of {g}), "
                             f"got {tuple(table.shape)}")
    check_same_device(packed=packed, scales=scales, zeros=zeros)
    compute = torch.float64 if dtype == torch.float64 else torch.float32
    groups = codes.to(compute).reshape(rows, cols // g, g)
    w = (groups - zeros.to(compute).unsqueeze(2)) * scales.to(compute).unsqueeze(2)
    return w.reshape(rows, cols).to(dtype)


def int4_matmul(x: Tensor, packed: Tensor, scales: Tensor, zeros: Tensor, group_size: int | None,
                bias: Tensor | None = None) -> Tensor:
    """y = x @ dequant(W)^T + bias (algorithms.md §6), in x's dtype.

    x: (..., K) floating, any leading dims; W from `dequantize_int4(..., dtype=x.dtype)`
    (N, K); bias: (N,) floating or None, cast to x's dtype. Output (..., N), x's dtype. With a
    float64 x this is the oracle: dequantize in float64, then matmul.
    """
    check_tensor("x", x, floating=True)
    w = dequantize_int4(packed, scales, zeros, group_size, dtype=x.dtype)
    if x.dim() < 1 or x.shape[-1] != w.shape[1]:
        raise ValueError(f"x must have shape (..., {w.shape[1]}) (in_features last), got {tuple(x.shape)}")
    check_same_device(x=x, packed=packed)
    y = x @ w.T
    if bias is not None:
        check_tensor("bias", bias, floating=True)
        if bias.shape != (w.shape[0],):
            raise ValueError(f"bias must have shape ({w.shape[0]},), got {tuple(bias.shape)}")
        check_same_device(x=x, bias=bias)
        y = y + bias.to(x.dtype)
    return y


def int4_from_climbq_weight(w: Tensor, bits: int = 4) -> tuple[Tensor, Tensor, Tensor]:
    """Store a ClimbQ-quantized weight (algorithms.md §1b) as INT4 without loss: (packed, scales, zeros).

    w: (N, K) floating, K even; bits in [1, 4]. The codes are `climbq_weight_codes(w, bits)`
    in [0, N_b], N_b = 2**bits - 1 <= 15; one group per row with scale = 2 / N_b and
    zero = N_b / 2 (float32), so (q - zero) * scale = 2q/N_b - 1 = Wq.
    `dequantize_int4(packed, scales, zeros, None)` equals `climbq_weight_quant(w, bits)`
    bit for bit for a float32 w (both evaluate (q - N_b/2) * float32(2/N_b) in float32).
    """
    check_bits(bits)
    if bits == IDENTITY_BITS or bits > _NIBBLE_BITS:
        raise ValueError(f"bits must lie in [1, {_NIBBLE_BITS}] to fit a 4-bit code, got {bits}")
    check_tensor("w", w, floating=True)
    if w.dim() != 2:
        raise ValueError(f"w must be a 2-D (out_features, in_features) weight, got shape {tuple(w.shape)}")
    _check_in_features("w", w.shape[1])
    n = levels(bits)
    codes = climbq_weight_codes(w, bits)
    scales = torch.full((w.shape[0], 1), 2.0 / n, dtype=torch.float32, device=w.device)
    zeros = torch.full((w.shape[0], 1), n / 2, dtype=torch.float32, device=w.device)
    return pack_int4(codes), scales, zeros
