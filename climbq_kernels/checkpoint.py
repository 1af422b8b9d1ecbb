"""Checkpoint safety: a state dict is checked whole before any of its tensors is copied.

PyTorch's `load_state_dict` copies module by module and raises at the end, so a tensor refused
in a later module leaves the earlier modules already overwritten, and a value that has the right
shape (a NaN step) is copied without a word. `quantize_`, `convert` and `convert_int4` therefore
call `check_before_loading` on the model they return. It registers a load-state-dict pre-hook on
that model which, before anything is copied, runs for every module under it

- PyTorch's own checks: each parameter and persistent buffer present in the state dict is a
  tensor of the model's shape (and a floating one where the model's is floating); with
  strict=True no key is missing or unexpected;
- each library module's `_check_checkpoint(state_dict, prefix)`: quantizer settings and INT4
  group size in its extra state, INT4 shapes and dtypes, finite steps, scales and ranges;

and refuses the load with one RuntimeError naming every bad tensor by its state-dict key. The
model (or, inside a wrapper such as nn.Sequential or DistributedDataParallel, everything under
it) is then unchanged. Library modules run their own check again when they load, so a module
used outside such a model still refuses a bad tensor, though only for itself.

Modules whose loading PyTorch or their author customised (their own `_load_from_state_dict` or
pre-hooks may rename or add keys, e.g. lazy modules) keep their checks inside the copy.
"""

from __future__ import annotations

import inspect
import sys

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _NormBase

__all__ = ["check_before_loading", "checkpoint_errors", "value_errors"]

_EXTRA_STATE = "_extra_state"
_PLAIN_LOADERS = (nn.Module._load_from_state_dict, _NormBase._load_from_state_dict)
"""Loaders that copy a module's tensors under their own names (the BatchNorm one also fills in
`num_batches_tracked` for checkpoints older than it, see `_missing`)."""
_LOAD_STATE_DICT = inspect.unwrap(nn.Module.load_state_dict).__code__


class SelfChecking:
    """Mixin for a library module: `load_state_dict` refuses the module's own bad tensors
    (`_check_checkpoint(state_dict, prefix) -> list[str]`) before copying any of them, also when
    the module is loaded alone; `_prepare_load` adapts it to a valid checkpoint first."""

    def _prepare_load(self, state_dict, prefix: str) -> None:
        """Called with a checkpoint `_check_checkpoint` accepted, before PyTorch copies it."""

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        errors = self._check_checkpoint(state_dict, prefix)
        if errors:
            error_msgs.extend(errors)
            return
        self._prepare_load(state_dict, prefix)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)


def value_errors(state_dict, prefix: str, rules: dict[str, str], owner: str) -> list[str]:
    """Messages for the tensors `prefix + name` of `state_dict` that break their rule.

    rules: name -> "finite" (floating, no NaN or Inf) or "positive" (also > 0). owner names the
    module kind in the message. Missing and non-tensor entries are left to the key and shape checks.
    """
    errors = []
    for name, rule in rules.items():
        key = prefix + name
        t = state_dict.get(key)
        if not isinstance(t, Tensor) or t.is_meta:
            continue
        if not t.is_floating_point():
            errors.append(f"{key} ({owner}.{name}) must be a floating tensor, got {t.dtype}")
            continue
        good = torch.isfinite(t) if rule == "finite" else torch.isfinite(t) & (t > 0)
        if not bool(good.all()):
            bad = t.detach()[~good]
            what = "finite" if rule == "finite" else "finite and > 0"
            errors.append(f"{key} ({owner}.{name}) must be {what}, got {bad.numel()} of {t.numel()} values that "
                          f"are not (first: {bad[0].item()})")
    return errors


def _customised(module: nn.Module) -> bool:
    """Whether the module loads through code that may rename, add or reshape its keys."""
    if hasattr(module, "_check_checkpoint"):
        return False
    if type(module)._load_from_state_dict not in _PLAIN_LOADERS:
        return True
    return any(getattr(hook, "hook", hook) is not _refuse_bad_checkpoint
               for hook in module._load_state_dict_pre_hooks.values())


def _local_tensors(module: nn.Module) -> dict[str, Tensor]:
    """What `_load_from_state_dict` copies: parameters and persistent buffers that are set."""
    local = {name: p for name, p in module._parameters.items() if p is not None}
    local.update({name: b for name, b in module._buffers.items()
                  if b is not None and name not in module._non_persistent_buffers_set})
    return local


def _has_extra_state(module: nn.Module) -> bool:
    return getattr(type(module), "set_extra_state", nn.Module.set_extra_state) is not nn.Module.set_extra_state


def _shape_errors(module: nn.Module, state_dict, prefix: str) -> list[str]:
    errors = []
    own = getattr(module, "_CHECKPOINT_OWN_SHAPES", ())
    for name, param in _local_tensors(module).items():
        key = prefix + name
        if key not in state_dict or name in own or nn.parameter.is_lazy(param):
            continue
        value = state_dict[key]
        if not torch.overrides.is_tensor_like(value):
            errors.append(f"{key} must be a tensor, got {type(value).__name__}")
            continue
        shape = value.shape
        if param.dim() == 0 and tuple(shape) == (1,):
            shape = torch.Size()  # PyTorch loads a one-element vector into a scalar
        if shape != param.shape:
            errors.append(f"{key} must have shape {tuple(param.shape)} as in the model, got {tuple(value.shape)} "
                          f"(size mismatch)")
        elif param.is_floating_point() != value.is_floating_point() or param.is_complex() != value.is_complex():
            errors.append(f"{key} must be a {param.dtype} tensor as in the model, got {value.dtype}")
    return errors


def _missing(module: nn.Module, state_dict, prefix: str) -> list[str]:
    missing = [prefix + name for name in _local_tensors(module) if prefix + name not in state_dict]
    if isinstance(module, _NormBase):  # filled in by BatchNorm's loader for older checkpoints
        missing = [key for key in missing if not key.endswith("num_batches_tracked")]
    if _has_extra_state(module) and prefix + _EXTRA_STATE not in state_dict:
        missing.append(prefix + _EXTRA_STATE)
    return missing


def _taken(root: nn.Module, rest: str, skipped: set[int]) -> bool:
    """Whether PyTorch's strict check takes the key `rest` (relative to root), or leaves it to a
    customised loader."""
    *path, leaf = rest.split(".")
    module = root
    for part in path:
        if id(module) in skipped:
            return True
        if part not in module._modules:
            return False
        module = module._modules[part]
        if module is None:  # a child set to None is never visited
            return True
    if id(module) in skipped:
        return True
    return _has_extra_state(module) if leaf == _EXTRA_STATE else leaf in _local_tensors(module)


def checkpoint_errors(model: nn.Module, state_dict, prefix: str = "", strict: bool = True) -> list[str]:
    """Every reason `model.load_state_dict(state_dict, strict)` would refuse a tensor, or an empty list.

    prefix: the model's own prefix in `state_dict` (as a load-state-dict hook receives it).
    """
    errors, missing, skipped = [], [], set()
    for name, module in model.named_modules(prefix=prefix[:-1], remove_duplicate=False):
        module_prefix = name + "." if name else ""
        if _customised(module):
            skipped.add(id(module))
            continue
        if hasattr(module, "_check_checkpoint"):
            errors += module._check_checkpoint(state_dict, module_prefix)
        errors += _shape_errors(module, state_dict, module_prefix)
        if strict:
            missing += _missing(module, state_dict, module_prefix)
    if strict:
        unexpected = [key for key in state_dict
                      if key.startswith(prefix) and not _taken(model, key[len(prefix):], skipped)]
        if unexpected:
            errors.insert(0, "Unexpected key(s) in state_dict: " + ", ".join(f'"{k}"' for k in unexpected) + ".")
        if missing:
            errors.insert(0, "Missing key(s) in state_dict: " + ", ".join(f'"{k}"' for k in missing) + ".")
    return errors


def _strict_of_current_load() -> bool:
    """The `strict` argument of the `load_state_dict` call running now (False when there is none).

    PyTorch passes strict=True to every module's hooks whatever the caller asked and applies the
    caller's value only after copying, so the hook reads it from that call's frame.
    """
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code is _LOAD_STATE_DICT:
            return bool(frame.f_locals.get("strict", False))
        frame = frame.f_back
    return False


def _refuse_bad_checkpoint(module, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                           error_msgs) -> None:
    errors = checkpoint_errors(module, state_dict, prefix, _strict_of_current_load())
    if errors:
        raise RuntimeError(f"Error(s) in loading state_dict for {type(module).__name__} (nothing was loaded into "
                           f"it):\n\t" + "\n\t".join(errors))


def check_before_loading(model: nn.Module) -> nn.Module:
    """Make `model.load_state_dict` (and a wrapper's) check every tensor before copying any; returns model.

    Registers the pre-hook once; it travels with `copy.deepcopy` and `torch.save(model)`.
    """
    hooks = model._load_state_dict_pre_hooks.values()
    if not any(getattr(hook, "hook", None) is _refuse_bad_checkpoint for hook in hooks):
        model.register_load_state_dict_pre_hook(_refuse_bad_checkpoint)
    return model
