"""ClimbQ activation quantizer benchmarks, forward + backward (SPEC 1a).

CPU: python3 -m pytest bench/bench_climbq_act.py --benchmark-only (pytest-benchmark).
GPU: bench/gpu_bench.py runs GPU_CASES with do_bench.
"""

import torch

from cases import climbq_act_case, cpu_backends

CPU_CASES = [climbq_act_case("cpu", torch.float32, backends=cpu_backends())]
GPU_CASES = [
    lambda backends: climbq_act_case("cuda", torch.bfloat16, shape=(256, 65536), backends=backends),
    lambda backends: climbq_act_case("cuda", torch.float32, shape=(128, 131072), backends=backends),
]


def test_cpu(bench_case, benchmark, record):
    record(benchmark, *bench_case)
