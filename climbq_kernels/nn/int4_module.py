"""`Int4Module`: the packed INT4 weight storage shared by `Int4Linear` and `Int4Conv2d` (algorithms.md §6).

State. Buffers `packed` uint8 (out_features, W/2), `scales` and `zeros` float32
(out_features, W/group_size), where W = `packed_in_features` is in_features rounded up to even
(see `packing`); an optional `bias` parameter (frozen, in the float layer's dtype, cast to x's
dtype in forward); the group size in `_extra_state` as {"group_size": int}. So `state_dict()`
holds every tensor as stored, and a fresh module of the same shape loads it back exactly.

Loading checks each packed tensor's dtype and shape against the module, and that scales, zeros
and bias are finite, and names the tensor, the expected and the found value in PyTorch's
`load_state_dict` error (a RuntimeError); a checkpoint whose group size differs from the
module's is adopted (scales and zeros are resized to it), so a model converted with other group
sizes still loads. Scales and zeros are not bounded further: a learned ClimbQ channel scale may
make a scale negative, and `quantize_int4` gives zeros outside [0, 15] to groups that do not
straddle 0. A model from `convert_int4` checks all its modules before loading any
(`climbq_kernels.checkpoint`).

Moving the module (`.to(device)`, `.cuda()`) moves every buffer; casting it (`.half()`,
`.to(torch.bfloat16)`) casts the bias only: scales and zeros stay float32, the format's dtype.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .. import ops
from ..checkpoint import SelfChecking, value_errors
from ..checks import check_finite, check_tensor
from ..int4 import Int4Weight
from ..reference._args import check_int
from .packing import padded_width, resolve_group_size

_PACKED_DTYPES = {"packed": torch.uint8, "scales": torch.float32, "zeros": torch.float32}
_FINITE = {"scales": "finite", "zeros": "finite", "bias": "finite"}


class Int4Module(SelfChecking, nn.Module):
    """Packed INT4 weight (out_features, in_features) + optional bias; subclasses add `forward`."""

    _CHECKPOINT_OWN_SHAPES = tuple(_PACKED_DTYPES)
    """Tensors whose shape `_check_checkpoint` checks itself: the checkpoint's group size sets them."""

    def __init__(self, in_features: int, out_features: int, bias: bool, group_size, device=None, dtype=None):
        super().__init__()
        check_int("in_features", in_features, minimum=1)
        check_int("out_features", out_features, minimum=1)
        self.in_features, self.out_features = in_features, out_features
        self.group_size = resolve_group_size(group_size, in_features)
        width = self.packed_in_features
        self.register_buffer("packed", torch.zeros(out_features, width // 2, dtype=torch.uint8, device=device))
        self.register_buffer("scales", torch.ones(out_features, width // self.group_size, device=device))
        self.register_buffer("zeros", torch.zeros(out_features, width // self.group_size, device=device))
        if bias:
            self.bias = nn.Parameter(torch.zeros(out_features, dtype=dtype, device=device), requires_grad=False)
        else:
            self.register_parameter("bias", None)

    @property
    def packed_in_features(self) -> int:
        """The stored row width: in_features, plus one pad column when it is odd."""
        return padded_width(self.in_features)

    @property
    def qweight(self) -> Int4Weight:
        """The stored weight as an `Int4Weight` (shape (out_features, packed_in_features)); shares the buffers."""
        return Int4Weight(self.packed, self.scales, self.zeros, self.group_size)

    def _set_qweight(self, qweight: Int4Weight, bias: Tensor | None) -> None:
        expected = (self.out_features, self.packed_in_features)
        if tuple(qweight.shape) != expected:
            raise ValueError(f"qweight must have shape {expected}, got {tuple(qweight.shape)}")
        self.group_size = qweight.group_size
        self.packed, self.scales, self.zeros = qweight.packed, qweight.scales, qweight.zeros
        if bias is not None:
            check_finite("bias", bias.detach())  # as the weight: a NaN bias would serve NaN outputs
            self.bias = nn.Parameter(bias.detach().clone(), requires_grad=False)

    @property
    def weight_shape(self) -> tuple[int, ...]:
        """The float layer's weight shape (subclasses)."""
        raise NotImplementedError

    def dequantize(self, dtype: torch.dtype = torch.float32) -> Tensor:
        """The float weight this module computes with, in the float layer's shape (`weight_shape`) and `dtype`."""
        return self.qweight.dequantize(dtype)[:, :self.in_features].reshape(self.weight_shape)

    # --- forward --------------------------------------------------------------------------

    def _check_input(self, x) -> None:
        check_tensor("x", x, floating=True)
        if x.device != self.packed.device:
            raise ValueError(f"x is on {x.device} but {type(self).__name__}'s weights are on {self.packed.device}: "
                             f"move one of them (module.to(x.device))")

    def _matmul(self, x: Tensor) -> Tensor:
        """x (..., in_features) @ W^T + bias in x's dtype, through `int4_matmul`."""
        if x.shape[-1] != self.packed_in_features:
            x = nn.functional.pad(x, (0, 1))  # the zero that meets the weight's pad column
        bias = None if self.bias is None else self.bias.to(x.dtype)
        # The buffers were checked when set or loaded; x by the caller.
        return ops.int4_matmul_eager(x, self.packed, self.scales, self.zeros, self.group_size, bias)

    # --- state dict -----------------------------------------------------------------------

    def get_extra_state(self) -> dict:
        return {"group_size": self.group_size}

    def set_extra_state(self, state) -> None:
        self.group_size = resolve_group_size(state["group_size"], self.in_features)

    def _prepare_load(self, state_dict, prefix: str) -> None:
        group_size = self._checkpoint_group_size(state_dict, prefix)
        if group_size != self.group_size:  # adopt it: resize scales and zeros before PyTorch copies them
            like = {"dtype": torch.float32, "device": self.scales.device}
            groups = (self.out_features, self.packed_in_features // group_size)
            self.scales, self.zeros = torch.ones(groups, **like), torch.zeros(groups, **like)
            self.group_size = group_size

    def _checkpoint_group_size(self, state_dict, prefix: str) -> int:
        """The group size of the checkpoint's extra state (this module's when it has none); ValueError,
        TypeError or KeyError for an invalid one."""
        extra = state_dict.get(prefix + "_extra_state")
        return self.group_size if extra is None else resolve_group_size(extra["group_size"], self.in_features)

    def _check_checkpoint(self, state_dict, prefix: str) -> list[str]:
        """Messages for every tensor of `state_dict` under `prefix` this module cannot hold; changes nothing."""
        kind = f"{type(self).__name__}({self.extra_repr()})"
        if prefix + "weight" in state_dict and prefix + "packed" not in state_dict:
            return [(f"{prefix}weight is a float weight but {prefix[:-1] or 'this module'} is a packed {kind}: "
                     f"load the float checkpoint into the float model, then convert it (convert_int4)")]
        try:
            group_size = self._checkpoint_group_size(state_dict, prefix)
        except (KeyError, TypeError, ValueError) as err:
            return [f"{prefix}_extra_state must hold a valid group_size for {kind}: {err}"]
        width = self.packed_in_features
        shapes = {"packed": (self.out_features, width // 2),
                  "scales": (self.out_features, width // group_size),
                  "zeros": (self.out_features, width // group_size)}
        errors = []
        for name, shape in shapes.items():
            t = state_dict.get(prefix + name)
            if t is None:
                continue  # reported as a missing key
            if not isinstance(t, Tensor) or t.dtype != _PACKED_DTYPES[name] or tuple(t.shape) != shape:
                found = f"{t.dtype} {tuple(t.shape)}" if isinstance(t, Tensor) else type(t).__name__
                errors.append(f"{prefix}{name} must be a {_PACKED_DTYPES[name]} tensor of shape {shape} for "
                              f"{kind} with group_size {group_size}, got {found}"
                              + (" (a truncated or wrong-shaped packed weight)" if name == "packed" else ""))
        return errors or value_errors(state_dict, prefix, _FINITE, type(self).__name__)

    def _apply(self, fn, recurse=True):
        # A dtype cast must not round the float32 scales and zeros: move them, keep their dtype.
        kept = {name: self._buffers[name] for name in ("scales", "zeros")}
        super()._apply(fn, recurse)
        for name, t in kept.items():
            self._buffers[name] = t.to(self._buffers[name].device)
        return self

    def extra_repr(self) -> str:
        rows = " (one per row)" if self.group_size == self.packed_in_features else ""
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, group_size={self.group_size}{rows}")
