"""The per-op backend tables and the one function every op calls to run on a backend.

Backend functions take the op's arguments positionally and return what the op returns; the
reference backend is `climbq_kernels.reference`, which runs on any device and dtype.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable

import torch
from torch import Tensor

from .. import _native, dispatch
from ..constants import KERNEL_DTYPES

KERNELS: dict[str, dict[str, Callable]] = {}
"""op name -> {backend name -> implementation}. A backend missing from an op's table has no
kernel for it yet: automatic dispatch skips it, an explicit `use_backend` raises."""


_IMPLEMENTED: dict[str, frozenset[str]] = {}
_REFERENCE_ONLY = frozenset({"reference"})
_ANY_STRIDES: set[str] = set()
"""Ops whose every backend takes tensors of any strides: `run` passes them on as they are."""


def register_kernels(tables: dict[str, dict[str, Callable]], *, any_strides: bool = False) -> None:
    """Add ops' backend tables. `any_strides`: every backend makes its own contiguous copies where
    it needs them, so `run` skips its `.contiguous()` pass (a few microseconds a call, which
    counts for serving calls whose kernels take little more)."""
    for op, table in tables.items():
        if "reference" not in table:
            raise ValueError(f"op {op} needs a reference implementation")
        KERNELS[op] = table
        _IMPLEMENTED[op] = frozenset(table)
        if any_strides:
            _ANY_STRIDES.add(op)


def native(name: str, *, direct: bool = False) -> Callable:
    """The C++/CUDA op `climbq_native::name` (CPU or CUDA kernel chosen by the tensors' device),
    looked up on first use (the extension loads after this module) and kept, so that no call
    repeats the lookup through torch.ops. `direct`: call it through the extension's own binding
    of the same op (`climbq_kernels._C.name`, a typed dispatcher call from C++), skipping
    torch.ops' boxing of every argument (see csrc/int4.h)."""
    found = None

    def call(*args):
        nonlocal found
        if found is None:
            found = getattr(_native.require(), name) if direct else getattr(torch.ops.climbq_native, name)
        return found(*args)
    return call


def triton_launcher(module: str, name: str) -> Callable:
    """A Triton launcher, imported on first use so that importing the package needs no triton."""
    def call(*args):
        return getattr(_triton_module(module), name)(*args)
    return call


@functools.cache
def _triton_module(module: str):
    return importlib.import_module(f"climbq_kernels.triton.{module}")


def run(op: str, like: Tensor, *args):
    """Run `op` on the backend chosen for `like`'s device and dtype; tensors go in contiguous."""
    table = KERNELS[op]
    implemented = _IMPLEMENTED[op]
    if implemented == _REFERENCE_ONLY:
        # A one-time step with no kernel (quantize_int4's packing) runs under any backend choice.
        return table["reference"](*args)
    if like.dtype not in KERNEL_DTYPES:
        if not like.is_floating_point():
            # No backend takes it: the reference's argument checks refuse it, naming the argument.
            return table["reference"](*args)
        forced = dispatch.explicit_backend()
        if forced not in (None, "reference"):
            raise TypeError(f"{op}: the '{forced}' backend takes float32, float16 or bfloat16 tensors, "
                            f"got {like.dtype}; {like.dtype} runs on the 'reference' backend")
        implemented = _REFERENCE_ONLY
    if op not in _ANY_STRIDES:
        args = [a.contiguous() if isinstance(a, Tensor) else a for a in args]
    return table[dispatch.resolve(op, dispatch.tensor_device_type(like), implemented)](*args)


def trailing_sum(t: Tensor) -> Tensor:
    """Sum over every dimension but the first: (B, ...) -> (B,)."""
    return t.reshape(t.shape[0], -1).sum(dim=1) if t.dim() > 1 else t


def per_sample(t: Tensor, like: Tensor) -> Tensor:
    """A (B,) per-sample table viewed to broadcast against `like` (B, ...)."""
    return t.reshape(t.shape[0], *([1] * (like.dim() - 1)))
