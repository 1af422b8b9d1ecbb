"""CPU benchmarks (pytest-benchmark): every case's candidates side by side, on this machine.

Run: python3 -m pytest bench/bench_cpu.py --benchmark-only
"""

import pytest
import torch

import climbq_kernels as cq
from cases import climbq_act_case

CPU_BACKENDS = tuple(name for name in ("cpu",) if cq.backends()[name].available)
CASES = [climbq_act_case("cpu", torch.float32, backends=CPU_BACKENDS)]
PARAMS = [(case, label) for case in CASES for label in case.candidates]


@pytest.mark.parametrize("case,label", PARAMS, ids=[f"{c.name}|{label}" for c, label in PARAMS])
def test_cpu(benchmark, record, case, label):
    benchmark.group = case.name
    benchmark.extra_info["floor_bytes"] = case.floor_bytes
    benchmark.pedantic(case.candidates[label], rounds=5, warmup_rounds=1)
    record(case, label, benchmark)
