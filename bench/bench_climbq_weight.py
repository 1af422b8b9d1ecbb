"""ClimbQ weight quantizer benchmarks, forward + backward (algorithms.md §1b).

CPU: python3 -m pytest bench/bench_climbq_weight.py --benchmark-only (pytest-benchmark).
GPU: bench/gpu_bench.py runs GPU_CASES with do_bench.

Floor: forward must read w once for the mean/std reduction and once more to write Wq; backward
reads g and w for the (S1, S2) reduction, then g and w again to write dw: 7 n elements moved
with the statistics kept from forward (the case's `floor_bytes`; "% of copy bandwidth" in the
table is floor time / measured time). Our kernels recompute the statistics in backward (the op
takes only w), so they move 9 n and can reach at most 7/9 = 78% of it. Beyond the memory
traffic each element costs one erf (forward) and two exp (backward), which keeps a 2-core CPU
compute-bound.

Measured numbers are in bench/results/ledger.jsonl (bench/results/README.md), not here.
"""

import torch

from cases import climbq_weight_case, cpu_backends

CPU_CASES = [
    climbq_weight_case("cpu", torch.float32, shape=(512, 512, 3, 3), backends=cpu_backends()),
    climbq_weight_case("cpu", torch.float32, shape=(4096, 4096), backends=cpu_backends()),
]
GPU_CASES = [
    lambda backends: climbq_weight_case("cuda", torch.float32, shape=(512, 512, 3, 3), backends=backends),
    lambda backends: climbq_weight_case("cuda", torch.bfloat16, shape=(4096, 4096), backends=backends),
]


def test_cpu(bench_case, benchmark, record):
    record(benchmark, *bench_case)
