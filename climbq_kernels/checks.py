"""Argument checks shared by every public function and backend.

Each check raises `TypeError` (wrong kind of thing) or `ValueError` (right kind, wrong value)
with a message that names the argument and says what was expected. None of them mutates
its input.

Value checks (positive sigma or scale) read the tensor on the host, which for a CUDA tensor
is a device-to-host sync. They run eagerly on every device, but not while `torch.compile`
traces (the value is unknown there; the compiled graph skips the check) nor while a CUDA
graph is captured (a sync is impossible).

Label range, the one check on the training hot path, never syncs on CUDA: the check runs on
the device, its verdict comes back by a non-blocking copy, and a bad label raises ValueError
at the start of the next public climbq call that takes labels (or at
`raise_pending_label_errors(wait=True)`).
Meanwhile the kernels see labels clamped into range, so nothing reads out of bounds; the
output of the offending call is not to be used. `CLIMBQ_SYNC_CHECKS=1` makes the CUDA check
synchronous (immediate error, one sync per call), for debugging. CPU labels are always checked
at once.
"""

from __future__ import annotations

import os
import sys

import torch
from torch import Tensor
from torch.fx.experimental.symbolic_shapes import has_static_value

from .constants import FLOAT_DTYPES, IDENTITY_BITS, INT4_GROUP_SIZES, MAX_BITS, MIN_BITS


def check_tensor(name: str, value, *, floating: bool = False) -> torch.Tensor:
    """Require a tensor with values (not on the meta device), of a floating dtype when `floating`."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if value.is_meta:
        raise ValueError(f"{name} is a meta tensor, which has no values to quantize or check: move it to a CPU "
                         "or CUDA device first (torch.compile's fake tensors need nothing of the kind)")
    if floating and value.dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"{name} must be a floating tensor (float32, float16, bfloat16 or float64), "
            f"got dtype {value.dtype}"
        )
    return value


def check_bits(bits, name: str = "bits") -> int:
    """Require an integer bit-width in [1, 16], or 32 for identity."""
    if isinstance(bits, bool) or not isinstance(bits, int):
        raise TypeError(f"{name} must be an int, got {type(bits).__name__}")
    if not (MIN_BITS <= bits <= MAX_BITS or bits == IDENTITY_BITS):
        raise ValueError(
            f"{name} must be in [{MIN_BITS}, {MAX_BITS}] or {IDENTITY_BITS} (identity), got {bits}"
        )
    return bits


_SYMBOLIC_NUMBERS = (torch.SymInt, torch.SymFloat)
NUMBER_TYPES = (int, float, *_SYMBOLIC_NUMBERS)
"""What a number argument may be: a Python int or float (bool is refused separately), or the
symbolic int or float torch.compile passes in its place."""
_FLOAT_MAX = sys.float_info.max


def is_symbolic(value) -> bool:
    """Whether `value` is a symbolic number without a fixed value: what torch.compile passes for
    a Python int or float argument that it traces as a graph input instead of a constant (see
    `check_positive_float`). Decided by torch's `has_static_value`, which dynamo answers while
    tracing (there an isinstance test cannot tell a symbolic float from a float)."""
    if isinstance(value, bool) or not isinstance(value, NUMBER_TYPES):
        return False
    return not has_static_value(value)


def check_number(name: str, value) -> None:
    """Require a real number: int or float (not bool), or a symbolic int or float."""
    if isinstance(value, bool) or not isinstance(value, NUMBER_TYPES):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")


def check_finite_number(name: str, value) -> float | torch.SymFloat:
    """Require a finite number; returns it as a float (a symbolic float stays symbolic).

    Works on the values torch.compile traces symbolically (see `check_positive_float`).
    """
    check_number(name, value)
    if not -_FLOAT_MAX <= value <= _FLOAT_MAX:
        raise ValueError(f"{name} must be finite, got {value}")
    return torch.sym_float(value) if is_symbolic(value) else float(value)


def check_positive_float(name: str, value) -> float | torch.SymFloat:
    """Require a finite number > 0; returns it as a float (a symbolic float stays symbolic).

    Under torch.compile a Python float argument whose value changes between calls becomes a
    `torch.SymFloat` (dynamo's automatic dynamic; `torch._dynamo.config.specialize_float` is
    False), which has no `math.isfinite`. The range test is therefore one chained comparison,
    0 < value <= the largest finite float (false for NaN and inf), valid on both: on a number
    it is a plain test; on a symbolic float dynamo records it as a guard of the graph, so a new
    value that passes runs the same graph (no graph break, no recompilation), and one that fails
    is refused with this ValueError when dynamo retraces for it (with fullgraph=True dynamo
    reports it as `torch._dynamo.exc.Unsupported` quoting the ValueError). The upper bound is
    the largest float rather than inf because dynamo's symbolic floats are taken as finite, and
    a guard `value < inf` would be dropped as always true.
    """
    check_number(name, value)
    if not 0 < value <= _FLOAT_MAX:
        raise ValueError(f"{name} must be finite and > 0, got {value}")
    return torch.sym_float(value) if is_symbolic(value) else float(value)


def check_same_device(**tensors: torch.Tensor | None) -> None:
    """Require every given tensor to live on one device."""
    present = {name: t for name, t in tensors.items() if t is not None}
    devices = {t.device for t in present.values()}
    if len(devices) > 1:
        listing = ", ".join(f"{name} on {t.device}" for name, t in present.items())
        raise ValueError(f"tensors must be on one device, got {listing}")


def can_sync(t: torch.Tensor) -> bool:
    """Whether a value check may read `t` on the host: not while torch.compile traces, nor
    on a CUDA tensor while a CUDA graph is captured."""
    if torch.compiler.is_compiling():
        return False
    return not (t.is_cuda and torch.cuda.is_current_stream_capturing())


_INTEGER_DTYPES = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)
_pending_label_checks: list[tuple[torch.cuda.Event | None, torch.Tensor, int]] = []


def label_checks_are_synchronous(labels: torch.Tensor) -> bool:
    """CPU labels are checked at once; CUDA labels too when CLIMBQ_SYNC_CHECKS=1."""
    return labels.device.type == "cpu" or os.environ.get("CLIMBQ_SYNC_CHECKS", "0") == "1"


def _label_error(num_classes: int, detail: str) -> ValueError:
    return ValueError(f"labels must lie in [0, {num_classes}), {detail}")


def raise_pending_label_errors(wait: bool = False) -> None:
    """Raise ValueError if a finished device-side label check found a label out of range.

    `wait=True` waits for every pending check first (a sync), for a definite answer. Nothing
    happens while torch.compile traces: the pending checks are host state, read in eager calls.
    """
    if torch.compiler.is_compiling():
        return
    still_running = []
    failed = None
    for event, flag, num_classes in _pending_label_checks:
        if event is not None and not wait and not event.query():
            still_running.append((event, flag, num_classes))
            continue
        if event is not None:
            event.synchronize()
        if failed is None and bool(flag):
            failed = num_classes
    _pending_label_checks[:] = still_running
    if failed is not None:
        raise _label_error(failed, "got a label outside that range in an earlier call on the GPU "
                                   "(its output is invalid; CLIMBQ_SYNC_CHECKS=1 pinpoints the call)")


def _check_label_range_on_device(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    bad = ((labels < 0) | (labels >= num_classes)).any()
    flag = torch.empty((), dtype=torch.bool, pin_memory=labels.is_cuda)
    flag.copy_(bad, non_blocking=True)
    event = None
    if labels.is_cuda:
        event = torch.cuda.Event()
        event.record()
    _pending_label_checks.append((event, flag, num_classes))
    return labels.clamp(0, num_classes - 1)


def check_labels(labels, batch: int, num_classes: int) -> torch.Tensor:
    """Require int labels of shape (batch,) with values in [0, num_classes), num_classes an int
    >= 1; returns the labels the kernels may index with (clamped into range where the range
    check is deferred)."""
    check_tensor("labels", labels)
    if labels.dtype not in _INTEGER_DTYPES:
        raise TypeError(f"labels must be an integer tensor (int64 preferred), got dtype {labels.dtype}")
    if labels.dim() != 1 or labels.shape[0] != batch:
        raise ValueError(f"labels must have shape ({batch},) to match x's batch, got {tuple(labels.shape)}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int):
        raise TypeError(f"num_classes must be an int (the number of classes), got {type(num_classes).__name__}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be an int >= 1, got {num_classes!r}")
    if not labels.numel():
        return labels
    if not can_sync(labels):
        return labels.clamp(0, num_classes - 1) if labels.is_cuda else labels
    if label_checks_are_synchronous(labels):
        lo, hi = int(labels.min()), int(labels.max())
        if lo < 0 or hi >= num_classes:
            raise _label_error(num_classes, f"got values in [{lo}, {hi}]")
        return labels
    return _check_label_range_on_device(labels, num_classes)


def device_assert_is_safe(t: Tensor) -> bool:
    """Whether a failing in-graph assert on `t` (`torch._assert_async`) just raises: on CPU. A
    CUDA device-side assert leaves the CUDA context unusable for the rest of the process."""
    return t.device.type == "cpu"


def unchecked_label_mask(labels: Tensor, num_classes: int) -> Tensor | None:
    """For labels whose range `check_labels` cannot read on the host (`can_sync` is False: while
    torch.compile traces, or on a CUDA tensor during CUDA graph capture): the (B,) bool mask of
    the labels in [0, num_classes), computed on the device, for the caller to poison the results
    of the other samples with NaN. On a CPU tensor, where reading the verdict costs no device
    sync, the graph also asserts it (`torch._assert_async`: RuntimeError naming `labels` when
    the compiled code runs). None where the host check runs (labels were checked already).

    A device-side assert on CUDA would abort the whole process, hence the NaN there; no sync
    either way, so a compiled training step stays asynchronous."""
    if can_sync(labels):
        return None
    in_range = (labels >= 0) & (labels < num_classes)
    if device_assert_is_safe(labels):
        torch._assert_async(in_range.all(), f"labels must lie in [0, {num_classes}) (checked in a compiled graph)")
    return in_range


def check_sample_bits(bits, batch: int) -> torch.Tensor:
    """Require an integer (batch,) tensor of bit-widths in [MIN_BITS, MAX_BITS] (algorithms.md §3a)."""
    check_tensor("bits", bits)
    if bits.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
        raise TypeError(f"bits must be an integer tensor (one bit-width per sample), got dtype {bits.dtype}")
    if bits.shape != (batch,):
        raise ValueError(f"bits must have shape ({batch},) (one bit-width per sample), got {tuple(bits.shape)}")
    if bits.numel() and can_sync(bits) and not bool(((bits >= MIN_BITS) & (bits <= MAX_BITS)).all()):
        raise ValueError(f"bits must lie in [{MIN_BITS}, {MAX_BITS}], got values in "
                         f"[{int(bits.min())}, {int(bits.max())}]")
    return bits


def check_class_table(name: str, table, num_classes: int, like: torch.Tensor) -> torch.Tensor:
    """Require a floating (num_classes,) table on `like`'s device."""
    check_tensor(name, table, floating=True)
    if table.shape != (num_classes,):
        raise ValueError(f"{name} must have shape ({num_classes},) (one entry per class), got {tuple(table.shape)}")
    check_same_device(x=like, **{name: table})
    return table


def check_finite(name: str, t: torch.Tensor) -> None:
    """Require no NaN or Inf (used where a NaN would silently poison a whole group or table)."""
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} must be finite: found NaN or Inf")


def check_positive(name: str, t: torch.Tensor) -> None:
    """Require every element finite and > 0 (a scale, a sigma, a clip). Skipped where a host
    sync is impossible (see `can_sync`)."""
    if can_sync(t) and not bool((torch.isfinite(t) & (t > 0)).all()):
        raise ValueError(f"{name} must be finite and > 0 everywhere")


def check_group_size_choice(group_size) -> None:
    """Require None (one group per row) or an int from INT4_GROUP_SIZES."""
    if group_size is None:
        return
    if isinstance(group_size, bool) or not isinstance(group_size, int):
        raise TypeError(f"group_size must be an int or None, got {type(group_size).__name__}")
    if group_size not in INT4_GROUP_SIZES:
        raise ValueError(f"group_size must be one of {INT4_GROUP_SIZES} or None (one group per row), got {group_size}")


def check_group_size(group_size, in_features: int) -> int:
    """Require an INT4 group size from INT4_GROUP_SIZES dividing in_features (None: one per row)."""
    if group_size is None or group_size == in_features:
        return in_features
    check_group_size_choice(group_size)
    if in_features % group_size:
        raise ValueError(f"group_size {group_size} must divide in_features {in_features}")
    return group_size
