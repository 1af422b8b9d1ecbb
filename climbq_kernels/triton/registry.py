"""Every Triton kernel of the package, with what CI needs to check it without a GPU.

Each kernel module registers a `KernelEntry` at import: the JIT function, one AOT signature
per dtype it supports, and an `example` that launches it through its Python launcher on small
random inputs and returns the result beside the reference's (float64 and the kernel's dtype).
`tests/test_triton_registry.py` runs every example under `TRITON_INTERPRET=1` against the
error rule and compiles every signature to cubin for sm_80 and sm_90, so a new kernel is
checked as soon as it registers.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

import torch

_NOT_KERNEL_MODULES = {"aot", "math", "registry", "int4_matmul"}
"""Every other module under climbq_kernels.triton not named _* holds kernels and registers them
on import (int4_matmul only launches the kernels of int4_gemv and int4_gemm)."""

AOT_TARGETS = (80, 90)
TORCH_TO_TRITON = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


class Example(NamedTuple):
    """One checked launch: kernel output, float64 reference, reference in the kernel's dtype."""

    got: torch.Tensor
    ref64: torch.Tensor
    ref_lowp: torch.Tensor
    step: float | None = None
    """Level spacing when the output is quantized (see `testing.assert_error_rule`)."""


@dataclass(frozen=True)
class KernelEntry:
    name: str
    kernel: object
    signature: Callable[[str], dict[str, str]]
    """Triton dtype name ('fp32', 'fp16', 'bf16') -> full AOT signature, constexprs included."""
    constexprs: dict[str, object]
    example: Callable[[torch.dtype, torch.Generator, str], Example]
    """(dtype, generator, device) -> one checked launch on fresh random inputs."""
    dtypes: tuple[torch.dtype, ...] = field(default=tuple(TORCH_TO_TRITON))


_REGISTRY: dict[str, KernelEntry] = {}


def register(entry: KernelEntry) -> KernelEntry:
    if entry.name in _REGISTRY:
        raise ValueError(f"Triton kernel {entry.name!r} registered twice")
    _REGISTRY[entry.name] = entry
    return entry


def all_kernels() -> dict[str, KernelEntry]:
    """Import every kernel module of this package and return the registry."""
    package = importlib.import_module(__package__)
    for module in pkgutil.iter_modules(package.__path__):
        if module.name not in _NOT_KERNEL_MODULES and not module.name.startswith("_"):
            importlib.import_module(f"{__package__}.{module.name}")
    return dict(_REGISTRY)


def aot_compile(entry: KernelEntry, dtype: torch.dtype, capability: int) -> bytes:
    """Compile `entry` for `dtype` to a cubin for compute capability `capability` (80, 90)."""
    return aot_stages(entry, dtype, capability)["cubin"]


def aot_stages(entry: KernelEntry, dtype: torch.dtype, capability: int, *, constexprs: dict | None = None,
               divisible_by_16: frozenset[str] = frozenset(), options: dict | None = None) -> dict[str, object]:
    """Every stage the compiler leaves for `entry` at `dtype` ("ttir", "ttgir", "ptx", "cubin", ...):
    what a test inspects to pin down code shape, which the interpreter cannot show.

    `constexprs` replaces the entry's example constexprs, `divisible_by_16` names the integer and
    pointer arguments that get the divisibility hint Triton's JIT gives values that are multiples
    of 16 at run time, and `options` (num_warps, num_stages, ...) go to the compiler."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    by_name = entry.signature(TORCH_TO_TRITON[dtype])
    names = entry.kernel.arg_names
    unknown = set(divisible_by_16) - set(names)
    if unknown:
        raise ValueError(f"divisible_by_16 names arguments {sorted(unknown)} that {entry.name} does not take")
    attrs = {(i,): [["tt.divisibility", 16]] for i, name in enumerate(names) if name in divisible_by_16}
    source = ASTSource(fn=entry.kernel, signature={name: by_name[name] for name in names},
                       constexprs=entry.constexprs if constexprs is None else constexprs, attrs=attrs)
    return triton.compile(source, target=GPUTarget("cuda", capability, 32), options=options).asm
