"""ClimbQ weight quantizer benchmarks, forward + backward (SPEC 1b).

CPU: python3 -m pytest bench/bench_climbq_weight.py --benchmark-only (pytest-benchmark).
GPU: bench/gpu_bench.py runs GPU_CASES with do_bench.

Floor: forward must read w once for the mean/std reduction and once more to write Wq; backward
reads g and w for the (S1, S2) reduction, then g and w again to write dw: 7 n elements moved
with the statistics kept from forward (the `floor_bytes` of the case). Our kernels recompute the
statistics in backward (the op takes only w), so they move 9 n: at best 7/9 = 78% of the
floor's speed. CPU, this 2-core machine (measured copy bandwidth about 9 GB/s, see the table's
"% of floor" column): (512, 512, 3, 3) fp32 is 2.36M elements, floor 66 MB -> about 7 ms;
(4096, 4096) fp32 is 16.8M elements, floor 470 MB -> about 52 ms. The table below (measured
2026-11-22) gives how far the C++ kernel is from it; erf and exp cost more than the memory
traffic on two cores, so the CPU kernel is compute-bound, not at the floor.
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
