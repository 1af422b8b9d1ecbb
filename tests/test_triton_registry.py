"""Every registered Triton kernel: run against the reference and compiled to cubin for sm_80/sm_90.

Without a GPU the runs go through TRITON_INTERPRET=1 (set in conftest); the AOT compile, in a
subprocess without the interpreter, is what catches code the interpreter accepts but the
compiler rejects.
"""

import json

import pytest

from climbq_kernels import backends
from climbq_kernels.testing import assert_error_rule
from climbq_kernels.triton.registry import AOT_TARGETS, TORCH_TO_TRITON, all_kernels

from .conftest import GPU, run_with_compiler

ENTRIES = all_kernels()
CASES = [(name, dtype) for name, entry in ENTRIES.items() for dtype in entry.dtypes]
IDS = [f"{name}-{TORCH_TO_TRITON[dtype]}" for name, dtype in CASES]


def test_registry_lists_every_kernel_module():
    assert {"climbq_act_forward", "climbq_act_backward"} <= set(ENTRIES)


@pytest.mark.skipif(not backends()["triton"].available, reason="no GPU and no TRITON_INTERPRET")
@pytest.mark.parametrize("name,dtype", CASES, ids=IDS)
def test_kernel_matches_reference(name, dtype, gen):
    example = ENTRIES[name].example(dtype, gen, "cuda" if GPU else "cpu")
    assert_error_rule(example.got, example.ref64, example.ref_lowp, step=example.step, name=name)


@pytest.fixture(scope="module")
def compiled():
    run = run_with_compiler("-m", "climbq_kernels.triton.aot", timeout=900)
    try:
        return json.loads(run.stdout)
    except json.JSONDecodeError:
        pytest.fail(f"AOT compile crashed (exit {run.returncode}):\n{run.stderr[-4000:]}")


@pytest.mark.slow
@pytest.mark.parametrize("capability", AOT_TARGETS)
@pytest.mark.parametrize("name,dtype", CASES, ids=IDS)
def test_kernel_compiles_to_cubin(compiled, name, dtype, capability):
    assert compiled[f"{name}|{TORCH_TO_TRITON[dtype]}|sm_{capability}"] == "ok"
