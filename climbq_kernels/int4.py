"""INT4 group-wise packed weights for inference (algorithms.md §6): `Int4Weight`, `quantize_int4`, `int4_matmul`.

Layout (the one every backend reads):
- `packed` uint8 (N, K/2): byte j of row n holds the code of input feature 2j in its low
  nibble and of feature 2j+1 in its high nibble; codes are unsigned, 0..15.
- `scales`, `zeros` float32 (N, K/g): feature k of row n dequantizes to
  (q - zeros[n, k // g]) * scales[n, k // g]. `zeros` is a float, so the group minimum is
  exact and a ClimbQ weight (zero N/2) converts losslessly.
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import ops, reference
from .checks import check_finite, check_group_size, check_same_device, check_tensor


class Int4Weight:
    """A packed INT4 weight of logical shape (out_features, in_features).

    Plain tensors inside, so `state_dict()` / `from_state_dict()` round-trip exactly and
    `.to(device)` moves all of them together.
    """

    def __init__(self, packed: Tensor, scales: Tensor, zeros: Tensor, group_size: int):
        if isinstance(group_size, bool) or not isinstance(group_size, int):
            raise TypeError(f"group_size must be an int (the stored weight's group size), got {group_size!r}")
        self.packed, self.scales, self.zeros, self.group_size = packed, scales, zeros, group_size
        self._validate()

    def _validate(self) -> None:
        for name, t, dtype in (("packed", self.packed, torch.uint8), ("scales", self.scales, torch.float32),
                               ("zeros", self.zeros, torch.float32)):
            check_tensor(name, t)
            if t.dtype != dtype:
                raise TypeError(f"{name} must be a 2-D {dtype} tensor, got dtype {t.dtype}")
            if t.dim() != 2:
                raise ValueError(f"{name} must be a 2-D {dtype} tensor, got {t.dim()}-D")
        rows, half = self.packed.shape
        in_features = 2 * half
        check_group_size(self.group_size, in_features)
        groups = (rows, in_features // self.group_size)
        for name, t in (("scales", self.scales), ("zeros", self.zeros)):
            if tuple(t.shape) != groups:
                raise ValueError(f"{name} must have shape {groups} for a packed weight of shape "
                                 f"{tuple(self.packed.shape)} and group_size {self.group_size}, got {tuple(t.shape)}")
        check_same_device(packed=self.packed, scales=self.scales, zeros=self.zeros)

    @property
    def shape(self) -> torch.Size:
        return torch.Size((self.packed.shape[0], 2 * self.packed.shape[1]))

    @property
    def device(self) -> torch.device:
        return self.packed.device

    def dequantize(self, dtype: torch.dtype = torch.float32) -> Tensor:
        """The (out_features, in_features) weight in `dtype`."""
        return reference.dequantize_int4(self.packed, self.scales, self.zeros, self.group_size, dtype=dtype)

    def to(self, device) -> Int4Weight:
        return Int4Weight(self.packed.to(device), self.scales.to(device), self.zeros.to(device), self.group_size)

    def state_dict(self) -> dict[str, Tensor]:
        return {"packed": self.packed, "scales": self.scales, "zeros": self.zeros,
                "group_size": torch.tensor(self.group_size)}

    @classmethod
    def from_state_dict(cls, state: dict[str, Tensor]) -> Int4Weight:
        missing = {"packed", "scales", "zeros", "group_size"} - set(state)
        if missing:
            raise ValueError(f"Int4Weight state dict is missing {sorted(missing)}")
        return cls(state["packed"], state["scales"], state["zeros"], int(state["group_size"]))

    def __repr__(self) -> str:
        return f"Int4Weight(shape={tuple(self.shape)}, group_size={self.group_size}, device={self.device})"


def quantize_int4(w: Tensor, group_size: int | None = 128) -> Int4Weight:
    """Group-wise asymmetric 4-bit quantization of a 2-D weight (out_features, in_features).

    `group_size` in {32, 64, 128, 256} dividing in_features, or None for one group per row.
    Per group: scale = (max - min)/15, zero = -min/scale, q = clamp(rint(w/scale + zero), 0, 15).
    """
    check_tensor("w", w, floating=True)
    if w.dim() != 2:
        raise ValueError(f"w must be 2-D (out_features, in_features), got shape {tuple(w.shape)}")
    if w.shape[1] % 2:
        raise ValueError(f"w's in_features must be even (two codes per byte), got {w.shape[1]}")
    group_size = check_group_size(group_size, w.shape[1])
    check_finite("w", w)
    return Int4Weight(*ops.quantize_int4(w, group_size), group_size)


def int4_matmul(x: Tensor, qweight: Int4Weight, bias: Tensor | None = None) -> Tensor:
    """y = x @ dequant(W)^T + bias for x (..., in_features) float32/float16/bfloat16; y in x's dtype."""
    check_tensor("x", x, floating=True)
    if not isinstance(qweight, Int4Weight):
        raise TypeError(f"qweight must be an Int4Weight (from quantize_int4), got {type(qweight).__name__}")
    packed = qweight.packed
    out_features, in_features = packed.shape[0], 2 * packed.shape[1]
    if x.dim() < 1 or x.shape[-1] != in_features:
        raise ValueError(f"x's last dimension must equal in_features {in_features}, got shape {tuple(x.shape)}")
    device = x.device
    if bias is not None:
        check_tensor("bias", bias, floating=True)
        if bias.dtype != x.dtype:
            raise TypeError(f"bias must have x's dtype {x.dtype}, got {bias.dtype}")
        if bias.shape != (out_features,):
            raise ValueError(f"bias must have shape ({out_features},), got {tuple(bias.shape)}")
    if packed.device != device or (bias is not None and bias.device != device):
        check_same_device(x=x, qweight=packed, bias=bias)  # raises, naming each tensor's device
    return ops.int4_matmul_eager(x, packed, qweight.scales, qweight.zeros, qweight.group_size, bias)
