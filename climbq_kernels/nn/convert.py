"""`convert_int4`: swap a model's float linear and conv layers for their INT4 serving forms, in place."""

from __future__ import annotations

import sys
import warnings
from collections.abc import Iterable

from torch import nn
from tqdm import tqdm

from ..checkpoint import check_before_loading
from ..checks import check_bits, check_group_size_choice
from .conv import Int4Conv2d
from .linear import Int4Linear
from .packing import padded_width

PROGRESS_MIN_LAYERS = 16
"""With progress=None, a progress bar shows from this many layers on (and only on a terminal)."""
_LISTED = 8
"""Layers named in a warning before the rest are counted."""


def _listing(names: list[str]) -> str:
    shown = ", ".join(names[:_LISTED])
    return shown + (f" and {len(names) - _LISTED} more" if len(names) > _LISTED else "")


def _check_arguments(model, group_size, skip, climbq_bits) -> set[str]:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    check_group_size_choice(group_size)
    if climbq_bits is not None:
        check_bits(climbq_bits, "climbq_bits")
    if isinstance(skip, str) or not isinstance(skip, Iterable):
        raise TypeError(f"skip must be a collection of module names, got {type(skip).__name__}")
    skip = set(skip)
    unknown = skip - {name for name, _ in model.named_modules()}
    if unknown:
        raise ValueError(f"skip names modules the model does not have: {sorted(unknown)}")
    return skip


_READ_CHILD_WEIGHTS = (nn.MultiheadAttention, nn.TransformerEncoderLayer)
"""Modules whose own forward reads their linear children's `.weight` (MultiheadAttention's
out_proj; TransformerEncoderLayer's eval fast path reads linear1/linear2): a packed child would break them."""


def _targets(model: nn.Module, convs: bool, skip: set[str]) -> tuple[list[tuple[str, nn.Module]], list[str]]:
    """(name, layer) pairs to convert, in model order, and the names of layers kept in float (with why)."""
    targets, kept = [], []
    read_by_parent = {f"{name}.{child}".lstrip("."): type(m).__name__
                      for name, m in model.named_modules(remove_duplicate=False)
                      if isinstance(m, _READ_CHILD_WEIGHTS) for child, _ in m.named_children()}
    for name, module in model.named_modules(remove_duplicate=False):
        if any(name == s or name.startswith(s + ".") for s in skip):
            continue
        if isinstance(module, nn.Linear):
            if name in read_by_parent:
                kept.append(f"{name} (read by its nn.{read_by_parent[name]})")
                continue
            targets.append((name, module))
        elif convs and isinstance(module, nn.Conv2d):
            if module.groups != 1:
                kept.append(f"{name} (groups={module.groups})")
                continue
            targets.append((name, module))
    return targets, kept


def _layer_group_size(module: nn.Module, group_size):
    """The requested group size where it divides the layer's (padded) width, else None: one per row."""
    if isinstance(module, nn.Linear):
        width = padded_width(module.in_features)
    else:
        width = padded_width(module.in_channels * module.kernel_size[0] * module.kernel_size[1])
    return group_size if group_size is not None and width % group_size == 0 else None


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name), child, new)


def convert_int4(model: nn.Module, group_size: int | None = 128, *, convs: bool = True, skip: Iterable[str] = (),
                 climbq_bits: int | None = None, progress: bool | None = None) -> nn.Module:
    """Replace every `nn.Linear` (and `nn.Conv2d` when `convs`) of `model` by `Int4Linear` /
    `Int4Conv2d`, in place; returns `model`.

    Each new layer sits on its float layer's device, keeps its bias (and bias dtype) and its
    train/eval mode, and computes in its input's dtype.

    - group_size: 32, 64, 128, 256 or None. Per layer, the requested size is used where it
      divides the layer's input width (in_features, or C_in*kh*kw for a conv, padded to even
      when odd); elsewhere the layer stores one group per row (coarser, never an error). Each
      layer's choice is its `group_size` attribute, and one UserWarning names the layers that
      fell back.
    - skip: module names to keep in full precision; a name covers everything under it
      (skip=("head",) keeps head.fc too). Unknown names are a ValueError.
    - climbq_bits: the model was trained with the ClimbQ weight quantizer at that width
      (1..4); every converted layer stores `climbq_weight_quant(weight, climbq_bits)` without
      loss (one group per row; group_size unused).
    - progress: a tqdm bar; None shows it on a terminal from PROGRESS_MIN_LAYERS layers on.

    Kept in float, named in the same warning: grouped / depthwise convolutions (Int4Conv2d is
    groups=1) and the linear children of `nn.MultiheadAttention` and `nn.TransformerEncoderLayer`,
    whose forward reads their `.weight` itself (out_proj; the encoder layer's eval fast path).
    A layer shared by several parents is converted once and stays shared. Errors from a layer
    (say NaN weights) are raised naming it. The model's `load_state_dict` then checks every
    tensor before copying any (`climbq_kernels.checkpoint`).
    """
    skip = _check_arguments(model, group_size, skip, climbq_bits)
    targets, kept = _targets(model, convs, skip)
    if targets and targets[0][0] == "":
        raise ValueError(f"model is itself a {type(model).__name__}, which cannot be replaced in place: use "
                         f"Int4Linear.from_linear / Int4Conv2d.from_conv2d")
    if progress is None:
        progress = sys.stderr.isatty() and len(targets) >= PROGRESS_MIN_LAYERS
    converted: dict[int, nn.Module] = {}
    per_row = []
    for name, module in tqdm(targets, desc="convert_int4", unit="layer", disable=not progress):
        if id(module) not in converted:
            layer_group = group_size if climbq_bits is not None else _layer_group_size(module, group_size)
            if climbq_bits is None and layer_group != group_size:
                per_row.append(name)
            convert = Int4Linear.from_linear if isinstance(module, nn.Linear) else Int4Conv2d.from_conv2d
            try:
                converted[id(module)] = convert(module, layer_group, climbq_bits=climbq_bits)
            except (TypeError, ValueError) as err:
                raise type(err)(f"convert_int4: layer '{name}': {err}") from err
        _replace(model, name, converted[id(module)])
    notes = []
    if per_row:
        notes.append(f"group_size {group_size} does not divide the input width of {len(per_row)} layer(s), which "
                     f"store one group per row: {_listing(per_row)}")
    if kept:
        notes.append(f"kept in float: {_listing(kept)}")
    if notes:
        warnings.warn("convert_int4: " + "; ".join(notes), stacklevel=2)
    return check_before_loading(model)
