"""Test-session setup: without a GPU, Triton kernels run under its interpreter on CPU tensors.

TRITON_INTERPRET must be set before triton is first imported, hence here, at collection.
"""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from climbq_kernels import backends

GPU = torch.cuda.is_available()
_BACKEND_DEVICE = {"cpu": "cpu", "triton": "cuda" if GPU else "cpu", "cuda": "cuda"}
KERNEL_BACKENDS = [(name, _BACKEND_DEVICE[name]) for name in ("cpu", "triton", "cuda")
                   if backends()[name].available]
"""(backend, device) pairs that run here: the C++ path on CPU tensors, Triton on the GPU or
interpreted on CPU tensors, CUDA on the GPU. Absent hardware removes a pair; the reference
is the oracle they are compared with."""


@pytest.fixture(autouse=True)
def no_pending_label_checks():
    """A deferred CUDA label check belongs to the test that made it: none leaks into the next."""
    yield
    from climbq_kernels import checks
    checks._pending_label_checks.clear()


@pytest.fixture
def gen():
    """A fresh, seeded generator per test: random inputs, reproducible failures."""
    return torch.Generator().manual_seed(20261122)


def assert_same_state(got: dict, expected: dict) -> None:
    """Two state dicts hold the same keys, and every tensor the same dtype and bits."""
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        if isinstance(value, torch.Tensor):
            assert got[key].dtype == value.dtype and torch.equal(got[key], value), key
        else:
            assert got[key] == value, key


def load_bench_script(stem: str):
    """bench/<stem>.py as a module (bench/ is no package; its scripts import their neighbours)."""
    path = Path(__file__).resolve().parent.parent / "bench" / f"{stem}.py"
    spec = importlib.util.spec_from_file_location(stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_with_compiler(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """`python args...` from the project root in a process without TRITON_INTERPRET, so that
    Triton compiles (under the interpreter `@triton.jit` yields functions the compiler cannot
    take); stdout and stderr captured as text."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    return subprocess.run([sys.executable, *args], cwd=Path(__file__).resolve().parents[1], env=env,
                          capture_output=True, text=True, timeout=timeout)
