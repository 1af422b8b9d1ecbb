"""Conversion between `Int4Weight` and PyTorch's own int4 formats, CPU and CUDA (algorithms.md §6 interop).

PyTorch's int4 kernels compute x @ W^T with W[n, k] = (q[n, k] - 8) * scale[g, n] + zero[g, n],
g = k // group_size, `scales_and_zeros` (K/g, N, 2) holding (scale, zero) pairs. Ours is
W = (q - zero) * scale with the same unsigned codes, so the codes carry over unchanged and only
the offsets differ:

    torch_zero = (8 - zero) * scale        zero = 8 - torch_zero / scale

- CPU: `_weight_int4pack_mm_for_cpu(x, packed, group_size, scales_and_zeros)`, `packed` from
  `_convert_weight_to_int4pack_for_cpu(q int32 (N, K), 1)`; x and scales_and_zeros in one of
  float32 / bfloat16 / float16.
- CUDA (tinygemm, aten/src/ATen/native/cuda/int4mm.cu): `_weight_int4pack_mm(x, packed,
  group_size, scales_and_zeros)` with x bfloat16 (M, K) and scales_and_zeros bfloat16;
  `packed` int32 (N/8, K/(16*inner_k_tiles), 32, inner_k_tiles/2) from
  `_convert_weight_to_int4pack(uint8 (N, K/2), inner_k_tiles)`. That uint8 input holds the
  EVEN feature in the HIGH nibble (the kernel's repacking puts a byte's high nibble in the
  first, even, slot of each bf16 pair; torchao and gpt-fast build it as q[:, ::2] << 4 |
  q[:, 1::2]), the opposite of our `packed`, so the nibbles are swapped on the way in.

Both directions keep the codes bit for bit; the float offsets round once (exact where the scale
is a power of two), and the CUDA format also rounds scales and zeros to bfloat16. PyTorch has no
op that unpacks either format: the codes are read back through its own kernel, a matmul of the
identity with scale 1 and zero 8, where every output is exactly one code (`_read_codes`).

One exception: in a group whose scale is 0, PyTorch's weight is its zero alone, whatever the
codes, which `zero = 8 - torch_zero / scale` cannot express. Such a group comes back as code 8
everywhere with scale |torch_zero| and zero 8 - sign(torch_zero): (8 - zero) * scale =
torch_zero exactly, the value PyTorch's kernels compute.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from . import reference
from .checks import check_finite, check_group_size, check_tensor
from .int4 import Int4Weight
from .reference._args import check_int

TORCH_INT4_OFFSET = 8
"""PyTorch's int4 format stores q - 8 times the scale, plus its zero."""
TORCH_INT4_ROW_MULTIPLE = 16
"""`_convert_weight_to_int4pack_for_cpu` packs rows in tiles of 16."""
TORCH_INT4_CPU_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
"""The activation (and scales_and_zeros) dtypes `_weight_int4pack_mm_for_cpu` takes."""
TORCH_INT4_CUDA_INNER_K_TILES = (2, 4, 8)
"""`_convert_weight_to_int4pack` packs 2, 4 or 8 k-tiles per 4/8/16-byte load."""
TORCH_INT4_CUDA_N_TILE = 8
"""Rows per tile of the CUDA layout (the n of the m16n8k16 tensor-core tile)."""
TORCH_INT4_CUDA_K_TILE = 16
"""Input features per k-tile of the CUDA layout (the k of m16n8k16)."""
TORCH_INT4_CUDA_LANES = 32
"""Lanes of a warp: the third dimension of the CUDA layout (one int32 group of codes per lane)."""
TORCH_INT4_CUDA_GROUP_SIZES = (32, 64, 128, 256)
"""The group sizes `_weight_int4pack_mm` instantiates (no one-group-per-row form)."""

_LOW_NIBBLE = 0x0F
_NIBBLE_BITS = 4


def _check_qweight(qweight) -> Int4Weight:
    if not isinstance(qweight, Int4Weight):
        raise TypeError(f"qweight must be an Int4Weight, got {type(qweight).__name__}")
    return qweight


def swap_nibbles(packed: Tensor) -> Tensor:
    """uint8 bytes with their two 4-bit halves exchanged: our low-nibble-first order <-> the
    high-nibble-first order of `_convert_weight_to_int4pack` (its own inverse)."""
    check_tensor("packed", packed)
    if packed.dtype != torch.uint8:
        raise TypeError(f"packed must be a uint8 tensor, got dtype {packed.dtype}")
    return ((packed & _LOW_NIBBLE) << _NIBBLE_BITS) | (packed >> _NIBBLE_BITS)


def torch_scales_and_zeros(qweight: Int4Weight, dtype: torch.dtype) -> Tensor:
    """PyTorch's (K/g, N, 2) table of (scale, torch_zero) for `qweight`, in `dtype`, contiguous."""
    torch_zero = (TORCH_INT4_OFFSET - qweight.zeros) * qweight.scales
    return torch.stack([qweight.scales.T, torch_zero.T], dim=-1).to(dtype).contiguous()


def _check_scales_and_zeros(scales_and_zeros, group_size, in_features) -> tuple[int, int]:
    """(group_size, out_features) of a finite (K/g, N, 2) table for an even in_features K, with
    clear errors."""
    check_int("in_features", in_features, minimum=2)
    if in_features % 2:
        raise ValueError(f"in_features must be even (two codes per byte), got {in_features}")
    check_tensor("scales_and_zeros", scales_and_zeros, floating=True)
    group_size = check_group_size(group_size, in_features)
    groups = in_features // group_size
    if scales_and_zeros.dim() != 3 or scales_and_zeros.shape[0] != groups or scales_and_zeros.shape[2] != 2:
        raise ValueError(f"scales_and_zeros must have shape ({groups}, out_features, 2) for in_features "
                         f"{in_features} and group_size {group_size}, got {tuple(scales_and_zeros.shape)}")
    check_finite("scales_and_zeros", scales_and_zeros)
    return group_size, scales_and_zeros.shape[1]


def _read_codes(int4pack_mm: Callable, packed: Tensor, group_size: int, in_features: int, out_features: int,
                dtype: torch.dtype) -> Tensor:
    """uint8 codes (N, K) of a PyTorch int4 weight, through its own matmul kernel.

    identity (K, K) @ W^T with scale 1 and zero 8 gives W[n, k] = q[n, k] - 8 + 8 = q[n, k]:
    small integers, exact in every dtype the kernels take, summed with exact zeros.
    """
    groups = in_features // group_size
    like = {"dtype": dtype, "device": packed.device}
    identity_params = torch.stack([torch.ones(groups, out_features, **like),
                                   torch.full((groups, out_features), float(TORCH_INT4_OFFSET), **like)], -1)
    codes = int4pack_mm(torch.eye(in_features, **like), packed, group_size, identity_params)
    return codes.T.round().to(torch.uint8)


def _int4_weight_from_torch(codes: Tensor, scales_and_zeros: Tensor, group_size: int) -> Int4Weight:
    """Our (packed, scales, zeros) for codes (N, K) and PyTorch's table; zero-scale groups as the
    module docstring says."""
    scales = scales_and_zeros[..., 0].T.float()
    torch_zeros = scales_and_zeros[..., 1].T.float()
    constant = scales == 0  # (N, K/g): groups whose weight is torch_zero alone
    zeros = torch.where(constant, TORCH_INT4_OFFSET - torch.sign(torch_zeros),
                        TORCH_INT4_OFFSET - torch_zeros / torch.where(constant, 1.0, scales))
    scales = torch.where(constant, torch_zeros.abs(), scales)
    codes = codes.masked_fill(constant.repeat_interleave(group_size, dim=1), TORCH_INT4_OFFSET)
    return Int4Weight(reference.pack_int4(codes), scales.contiguous(), zeros.contiguous(), group_size)


# --- CPU ------------------------------------------------------------------------------------

def to_torch_int4pack(qweight: Int4Weight, dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor, int]:
    """(packed, scales_and_zeros, group_size) for `torch.ops.aten._weight_int4pack_mm_for_cpu`.

    `dtype` is the activation dtype the torch kernel will be called with (float32, bfloat16 or
    float16): its scales_and_zeros must match it. CPU weights only.
    """
    _check_qweight(qweight)
    if dtype not in TORCH_INT4_CPU_DTYPES:
        raise TypeError(f"dtype must be one of {TORCH_INT4_CPU_DTYPES} (the activation dtypes of PyTorch's CPU "
                        f"int4 kernel), got {dtype!r}")
    if qweight.device.type != "cpu":
        raise ValueError(f"to_torch_int4pack converts to PyTorch's CPU format: qweight must be on the CPU, "
                         f"got {qweight.device} (to_torch_int4pack_cuda makes the CUDA format)")
    if qweight.shape[0] % TORCH_INT4_ROW_MULTIPLE:
        raise ValueError(f"qweight must have out_features divisible by {TORCH_INT4_ROW_MULTIPLE} for PyTorch's "
                         f"CPU int4 format, got {qweight.shape[0]}")
    codes = reference.unpack_int4(qweight.packed).to(torch.int32)
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes, 1)
    return packed, torch_scales_and_zeros(qweight, dtype), qweight.group_size


def from_torch_int4pack(packed: Tensor, scales_and_zeros: Tensor, group_size: int, in_features: int) -> Int4Weight:
    """The `Int4Weight` of a PyTorch CPU int4 weight (the inverse of `to_torch_int4pack`).

    packed: uint8 (N, in_features / 2) from `_convert_weight_to_int4pack_for_cpu`, N a multiple
    of 16; scales_and_zeros: finite floating (in_features / group_size, N, 2). TypeError or
    ValueError naming the argument otherwise.
    """
    check_tensor("packed", packed)
    if packed.dtype != torch.uint8:
        raise TypeError(f"packed must be a uint8 tensor (PyTorch's CPU int4 layout), got dtype {packed.dtype}")
    group_size, out_features = _check_scales_and_zeros(scales_and_zeros, group_size, in_features)
    if out_features % TORCH_INT4_ROW_MULTIPLE:
        raise ValueError(f"scales_and_zeros must have out_features divisible by {TORCH_INT4_ROW_MULTIPLE} for "
                         f"PyTorch's CPU int4 format, got {out_features}")
    expected = (out_features, in_features // 2)
    if tuple(packed.shape) != expected:
        raise ValueError(f"packed must have shape {expected} for out_features {out_features} (of scales_and_zeros) "
                         f"and in_features {in_features}, got {tuple(packed.shape)}")
    if packed.device.type != "cpu" or scales_and_zeros.device.type != "cpu":
        raise ValueError(f"packed and scales_and_zeros must be on the CPU (PyTorch's CPU int4 format; "
                         f"from_torch_int4pack_cuda reads the CUDA one), got {packed.device} and "
                         f"{scales_and_zeros.device}")
    codes = _read_codes(torch.ops.aten._weight_int4pack_mm_for_cpu, packed.contiguous(), group_size, in_features,
                        out_features, torch.float32)
    return _int4_weight_from_torch(codes, scales_and_zeros, group_size)


# --- CUDA -----------------------------------------------------------------------------------

def check_torch_int4pack_cuda_shape(out_features: int, in_features: int, group_size: int, inner_k_tiles: int) -> None:
    """Raise ValueError unless PyTorch's CUDA int4 kernel takes this weight shape.

    From int4mm.cu: inner_k_tiles in {2, 4, 8}; K a multiple of 16 * inner_k_tiles (whole
    packed k-tiles, which the kernel assumes); N a multiple of 8 (its scales table is read for
    N rounded up to whole tiles); group_size in {32, 64, 128, 256}.
    """
    check_int("inner_k_tiles", inner_k_tiles)
    if inner_k_tiles not in TORCH_INT4_CUDA_INNER_K_TILES:
        raise ValueError(f"inner_k_tiles must be one of {TORCH_INT4_CUDA_INNER_K_TILES}, got {inner_k_tiles!r}")
    k_multiple = TORCH_INT4_CUDA_K_TILE * inner_k_tiles
    if in_features % k_multiple:
        raise ValueError(f"PyTorch's CUDA int4 format needs in_features divisible by {k_multiple} "
                         f"(16 * inner_k_tiles={inner_k_tiles}), got {in_features}; a smaller inner_k_tiles may fit")
    if out_features % TORCH_INT4_CUDA_N_TILE:
        raise ValueError(f"PyTorch's CUDA int4 format needs out_features divisible by {TORCH_INT4_CUDA_N_TILE}, "
                         f"got {out_features}")
    if group_size not in TORCH_INT4_CUDA_GROUP_SIZES:
        raise ValueError(f"PyTorch's CUDA int4 kernel takes group_size in {TORCH_INT4_CUDA_GROUP_SIZES}, got "
                         f"{group_size} (one group per row of {in_features} features?); re-quantize with "
                         f"quantize_int4(w, group_size) using one of those sizes")


def to_torch_int4pack_cuda(qweight: Int4Weight, inner_k_tiles: int = 8) -> tuple[Tensor, Tensor, int]:
    """(packed, scales_and_zeros, group_size) for `torch.ops.aten._weight_int4pack_mm` on CUDA.

    packed: int32 (N/8, K/(16*inner_k_tiles), 32, inner_k_tiles/2); scales_and_zeros: bfloat16
    (K/g, N, 2) (the kernel reads bfloat16, so scales and zeros round to it); x must be bfloat16
    (M, K), contiguous. Constraints as `check_torch_int4pack_cuda_shape`; qweight on a CUDA device.
    """
    _check_qweight(qweight)
    out_features, in_features = qweight.shape
    check_torch_int4pack_cuda_shape(out_features, in_features, qweight.group_size, inner_k_tiles)
    if qweight.device.type != "cuda":
        raise ValueError(f"to_torch_int4pack_cuda converts to PyTorch's CUDA format: qweight must be on a CUDA "
                         f"device, got {qweight.device} (move it with qweight.to('cuda'), or use "
                         f"to_torch_int4pack for the CPU format)")
    high_nibble_first = swap_nibbles(qweight.packed).contiguous()
    packed = torch.ops.aten._convert_weight_to_int4pack(high_nibble_first, inner_k_tiles)
    return packed, torch_scales_and_zeros(qweight, torch.bfloat16), qweight.group_size


def from_torch_int4pack_cuda(packed: Tensor, scales_and_zeros: Tensor, group_size: int,
                             in_features: int) -> Int4Weight:
    """The `Int4Weight` of a PyTorch CUDA int4 weight (the inverse of `to_torch_int4pack_cuda`).

    Codes come back bit for bit; scales and zeros are those of the bfloat16 table.
    """
    check_tensor("packed", packed)
    if packed.dim() != 4:
        raise ValueError(f"packed must be PyTorch's 4-D int32 CUDA int4 layout, got {packed.dim()}-D {packed.dtype}")
    if packed.dtype != torch.int32:
        raise TypeError(f"packed must be PyTorch's 4-D int32 CUDA int4 layout, got dtype {packed.dtype}")
    group_size, out_features = _check_scales_and_zeros(scales_and_zeros, group_size, in_features)
    inner_k_tiles = 2 * packed.shape[3]
    check_torch_int4pack_cuda_shape(out_features, in_features, group_size, inner_k_tiles)
    expected = (out_features // TORCH_INT4_CUDA_N_TILE, in_features // (TORCH_INT4_CUDA_K_TILE * inner_k_tiles),
                TORCH_INT4_CUDA_LANES, inner_k_tiles // 2)
    if tuple(packed.shape) != expected:
        raise ValueError(f"packed must have shape {expected} for out_features {out_features}, in_features "
                         f"{in_features} and inner_k_tiles {inner_k_tiles}, got {tuple(packed.shape)}")
    if packed.device.type != "cuda" or scales_and_zeros.device != packed.device:
        raise ValueError(f"packed and scales_and_zeros must be on one CUDA device, got {packed.device} and "
                         f"{scales_and_zeros.device}")
    codes = _read_codes(torch.ops.aten._weight_int4pack_mm, packed, group_size, in_features, out_features,
                        torch.bfloat16)
    return _int4_weight_from_torch(codes, scales_and_zeros, group_size)
