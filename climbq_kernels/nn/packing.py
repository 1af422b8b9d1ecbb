"""From a float layer's weight to the packed INT4 weight that `Int4Linear` / `Int4Conv2d` serve.

Both modules see their weight as a matrix (out_features, in_features); a convolution's weight
(C_out, C_in, kh, kw) is flattened to (C_out, C_in*kh*kw), the column order of `F.unfold`.

Odd in_features. Two codes share a byte (algorithms.md §6), so an odd width is stored padded by one
column. The weight's pad column repeats its last real column, so it never widens a group's
range (a zero column would, and would coarsen that group's scale); the modules pad x with a
zero column, so the pad adds exactly nothing to the output. The group size then has to divide
the padded width.

Two ways to quantize:
- `quantize_weight`: group-wise asymmetric INT4 (`quantize_int4`) of any float weight.
- `climbq_weight`: lossless storage of a ClimbQ-trained weight (algorithms.md §1b).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from ..checks import check_bits, check_finite, check_group_size, check_tensor
from ..constants import IDENTITY_BITS, levels
from ..functional import climbq_weight_quant
from ..int4 import Int4Weight, quantize_int4
from ..reference import pack_int4

MAX_CLIMBQ_BITS = 4
"""A ClimbQ code fits a nibble up to 4 bits (N = 15 levels above zero)."""


def padded_width(in_features: int) -> int:
    """The stored row width: in_features rounded up to even."""
    return in_features + in_features % 2


def resolve_group_size(group_size, in_features: int) -> int:
    """The group size as an int (None: one group per row), checked against the padded width."""
    width = padded_width(in_features)
    try:
        return check_group_size(group_size, width)
    except ValueError as err:
        if width == in_features:
            raise
        raise ValueError(f"{err} (in_features {in_features} is odd and is stored padded to {width}: "
                         f"two codes per byte)") from None


def pad_columns(w: Tensor) -> Tensor:
    """w (rows, K) with its last column repeated once when K is odd (see the module docstring)."""
    return torch.cat([w, w[:, -1:]], dim=1) if w.shape[1] % 2 else w


def _as_matrix(name: str, w) -> Tensor:
    check_tensor(name, w, floating=True)
    if w.dim() < 2:
        raise ValueError(f"{name} must have at least 2 dimensions (out_features, ...), got shape {tuple(w.shape)}")
    check_finite(name, w)
    return w.detach().reshape(w.shape[0], -1)


def quantize_weight(name: str, w: Tensor, group_size) -> Int4Weight:
    """Group-wise asymmetric INT4 (algorithms.md §6) of a float weight (out_features, ...), on w's device.

    `name` labels errors (e.g. 'linear.weight'); group_size as `resolve_group_size`.
    """
    matrix = _as_matrix(name, w)
    group_size = resolve_group_size(group_size, matrix.shape[1])
    return quantize_int4(pad_columns(matrix), group_size)


def climbq_weight(name: str, latent: Tensor, bits: int) -> Int4Weight:
    """A ClimbQ-trained weight stored without loss: dequantizes to `climbq_weight_quant(latent, bits)`.

    latent: the float weight the ClimbQ quantizer reads (out_features, ...); its mean and std
    are taken over the whole tensor, as in training. bits in [1, 4]. One group per row with
    scale = 2/N and zero = N/2 (float32), codes q in [0, N]: (q - N/2) * (2/N) is the level.

    The codes are read off the output of `climbq_weight_quant` itself, q = rint((Wq + 1) * N/2),
    exact since Wq sits on a level. Recomputing them with the reference
    (`reference.int4_from_climbq_weight`) would not do: on large weights the reference and the
    dispatched kernel round a few elements that sit on a level boundary differently, and the
    served model must reproduce the one the kernels ran.
    """
    check_bits(bits, "climbq_bits")
    if bits == IDENTITY_BITS or bits > MAX_CLIMBQ_BITS:
        raise ValueError(f"climbq_bits must lie in [1, {MAX_CLIMBQ_BITS}] to fit a 4-bit code, got {bits}")
    matrix = _as_matrix(name, latent)
    n = levels(bits)
    with torch.no_grad():
        wq = climbq_weight_quant(latent.detach(), bits).reshape(matrix.shape)
        codes = torch.round((wq.float() + 1) * (n / 2)).clamp_(0, n).to(torch.uint8)
    rows = matrix.shape[0]
    scales = torch.full((rows, 1), 2.0 / n, dtype=torch.float32, device=latent.device)
    zeros = torch.full((rows, 1), n / 2, dtype=torch.float32, device=latent.device)
    return per_row_codes(codes, scales, zeros)


def per_row_codes(codes: Tensor, scales: Tensor, zeros: Tensor) -> Int4Weight:
    """An Int4Weight from codes (rows, K) in [0, 15] with one float32 scale and zero per row
    (rows, 1): the storage of a weight trained on a per-row 4-bit grid, packed without loss."""
    return Int4Weight(pack_int4(pad_columns(codes)), scales, zeros, padded_width(codes.shape[1]))


def latent_weight(module: nn.Module) -> Tensor:
    """The float weight a quantizer reads: a weight parametrization's `original`, else `weight`."""
    if parametrize.is_parametrized(module, "weight"):
        return module.parametrizations.weight.original
    return module.weight
