"""Which compute backends exist here, and which one a call uses.

Four backends implement the ops declared in `climbq_kernels.ops`:

- `reference`: the pure-PyTorch oracle (`climbq_kernels.reference`), any device, any dtype.
- `cpu`: the C++ extension `climbq_kernels._C` on CPU tensors.
- `triton`: Triton kernels on CUDA tensors, or on CPU tensors when `TRITON_INTERPRET=1`
  was set before triton was imported (that is how CI checks them without a GPU).
- `cuda`: the CUDA kernels of `climbq_kernels._C` on CUDA tensors.

Choice, first match wins: `use_backend(name)` (a context manager), the `CLIMBQ_BACKEND`
environment variable (read once, when the process first asks for it), then by device: CPU
tensors go to `cpu`, CUDA tensors to the faster GPU backend for the op (`triton`, then `cuda`;
`cuda` first for `int4_matmul`). An automatic choice falls through to the next backend that
implements the op, ending at `reference`; an explicit choice never falls through: it raises if
the backend is unavailable or lacks the op.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import os
import warnings
from dataclasses import dataclass

import torch

from . import _native

BACKEND_NAMES = ("reference", "cpu", "triton", "cuda")
_AUTO_ORDER = {"cpu": ("cpu", "reference"), "cuda": ("triton", "cuda", "reference")}
_AUTO_ORDER_BY_OP = {
    # The CUDA INT4 kernels beat the Triton ones at every batch size benchmarked (bench/results/).
    ("int4_matmul", "cuda"): ("cuda", "triton", "reference"),
}

_explicit: contextvars.ContextVar[str | None] = contextvars.ContextVar("climbq_backend", default=None)


@dataclass(frozen=True)
class BackendStatus:
    """Whether a backend can run here; `reason` says why not (or what it runs on)."""

    available: bool
    reason: str


def triton_interpret() -> bool:
    """True when Triton runs kernels on CPU tensors through its interpreter."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _triton_status() -> BackendStatus:
    try:
        import triton
    except ImportError as err:
        return BackendStatus(False, f"triton is not importable: {err}")
    if triton_interpret():
        return BackendStatus(True, f"triton {triton.__version__} interpreter (TRITON_INTERPRET=1): CPU tensors")
    if torch.cuda.is_available():
        return BackendStatus(True, f"triton {triton.__version__} on {torch.cuda.get_device_name()}")
    return BackendStatus(False, "no CUDA device (set TRITON_INTERPRET=1 to run Triton kernels on the CPU)")


def _cpu_status() -> BackendStatus:
    ok, reason = _native.available()
    return BackendStatus(ok, "C++ extension climbq_kernels._C" if ok else reason)


def _cuda_status() -> BackendStatus:
    ok, reason = _native.available()
    if not ok:
        return BackendStatus(False, reason)
    if not _native.built_with_cuda():
        return BackendStatus(False, "climbq_kernels._C was built without CUDA (CLIMBQ_BUILD_CUDA=0 or no toolkit)")
    if not torch.cuda.is_available():
        return BackendStatus(False, f"built for {_native.cuda_archs()} but no CUDA device is visible")
    return BackendStatus(True, f"CUDA kernels ({_native.cuda_archs()}) on {torch.cuda.get_device_name()}")


def backends() -> dict[str, BackendStatus]:
    """Every backend with whether it is available here and, if not, why."""
    return dict(_statuses())


@functools.cache
def _statuses() -> dict[str, BackendStatus]:
    return {
        "reference": BackendStatus(True, "pure PyTorch, every device and dtype"),
        "cpu": _cpu_status(),
        "triton": _triton_status(),
        "cuda": _cuda_status(),
    }


def _check_name(name: str) -> str:
    if not isinstance(name, str):
        raise TypeError(f"backend must be a str, one of {BACKEND_NAMES}, got {type(name).__name__}")
    if name not in BACKEND_NAMES:
        raise ValueError(f"backend must be one of {BACKEND_NAMES}, got {name!r}")
    return name


@contextlib.contextmanager
def use_backend(name: str):
    """Run the ops inside the `with` block on backend `name` (no fallback)."""
    token = _explicit.set(_check_name(name))
    try:
        yield
    finally:
        _explicit.reset(token)


def explicit_backend() -> str | None:
    """The backend forced by `use_backend` or `CLIMBQ_BACKEND`, if any."""
    name = _explicit.get()
    return _environment_backend() if name is None else name


@functools.cache
def _environment_backend() -> str | None:
    """CLIMBQ_BACKEND, read once per process (a bad name raises on every call): every op launch
    asks for it, and looking up an unset variable in os.environ raises and catches KeyErrors, a
    noticeable share of a batch-1 serving call."""
    env = os.environ.get("CLIMBQ_BACKEND", "").strip()
    return _check_name(env) if env else None


def tensor_device_type(t: torch.Tensor) -> str:
    """t.device.type without building a torch.device object (another per-launch cost that a
    batch-1 serving call notices)."""
    return "cpu" if t.is_cpu else "cuda" if t.is_cuda else t.device.type


def _runs_on(name: str, device_type: str) -> bool:
    if name == "reference":
        return True
    if name == "cpu":
        return device_type == "cpu"
    if name == "cuda":
        return device_type == "cuda"
    return device_type == "cuda" or (device_type == "cpu" and triton_interpret())


@functools.cache
def _warn_fallback(op: str, wanted: str, reason: str) -> None:
    warnings.warn(f"climbq: {op} runs on the reference backend: the '{wanted}' backend is unavailable ({reason})",
                  RuntimeWarning, stacklevel=4)


def resolve(op: str, device: torch.device | str, implemented: frozenset[str]) -> str:
    """The backend that runs `op` on `device` (a torch.device or its type, "cpu" or "cuda"),
    given the backends that implement it."""
    device_type = device if isinstance(device, str) else device.type
    return _resolve(op, device_type, frozenset(implemented), explicit_backend())


@functools.cache
def _resolve(op: str, device_type: str, implemented: frozenset[str], name: str | None) -> str:
    """`resolve`, memoised: ops call it on every launch, and serving launches are short."""
    status = _statuses()
    if name is not None:
        if not status[name].available:
            raise RuntimeError(f"climbq backend '{name}' is unavailable: {status[name].reason}")
        if not _runs_on(name, device_type):
            raise ValueError(f"climbq backend '{name}' cannot run on {device_type} tensors")
        if name not in implemented:
            raise NotImplementedError(
                f"op {op} has no '{name}' kernel yet; backends with it: {sorted(implemented)}")
        return name
    order = _AUTO_ORDER_BY_OP.get((op, device_type)) or _AUTO_ORDER.get(device_type, ("reference",))
    chosen = next((c for c in order if c in implemented and status[c].available and _runs_on(c, device_type)),
                  "reference")
    if chosen == "reference" and order[0] in implemented:
        _warn_fallback(op, order[0], status[order[0]].reason)
    return chosen
