"""The compiled extension `climbq_kernels._C`, imported lazily and never required to import.

Loading `_C` registers the `torch.ops.climbq_native.*` operators (CPU kernels always, CUDA
kernels when it was built with CUDA). Build it with

    pip install --no-build-isolation --no-deps -e .      or
    python setup.py build_ext --inplace

Importing this module never fails; `available()` says whether the extension loads and, if
not, why; `require()` raises with the build command.
"""

from __future__ import annotations

import functools
import importlib
from types import ModuleType

BUILD_COMMAND = (
    "pip install --no-build-isolation --no-deps -e .  (or: python setup.py build_ext --inplace)"
)


@functools.cache
def _load() -> tuple[ModuleType | None, str]:
    try:
        import torch  # noqa: F401  (_C links against torch's libraries: load them first)

        module = importlib.import_module("climbq_kernels._C")
    except Exception as exc:  # ImportError, or OSError from the dynamic loader
        return None, (f"climbq_kernels._C is not importable ({type(exc).__name__}: {exc}); "
                      f"build it with: {BUILD_COMMAND}")
    return module, "loaded"


def load() -> ModuleType | None:
    """The `climbq_kernels._C` module (imported once, after torch), or None if it does not load."""
    return _load()[0]


def available() -> tuple[bool, str]:
    """(True, "loaded") once the extension is loaded, else (False, the import error)."""
    module, reason = _load()
    return module is not None, reason


def require() -> ModuleType:
    """The loaded extension; RuntimeError naming the build command and the error otherwise."""
    module, reason = _load()
    if module is None:
        raise RuntimeError(reason)
    return module


def built_with_cuda() -> bool:
    """True when the extension loads and holds the CUDA kernels."""
    module = load()
    return module is not None and bool(module.built_with_cuda())


def cuda_archs() -> str:
    """The CUDA targets compiled in, e.g. "sm_80,sm_90a"; "" without CUDA or extension."""
    module = load()
    return module.cuda_archs() if module is not None else ""


def build_info() -> dict:
    """How the extension was built (see `_C.build_info`), or {} when it does not load."""
    module = load()
    return dict(module.build_info()) if module is not None else {}
