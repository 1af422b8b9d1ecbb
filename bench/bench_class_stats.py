"""Class-segmented statistics benchmarks, forward (SPEC 1c steps 1-3, SPEC 4).

CPU: python3 -m pytest bench/bench_class_stats.py --benchmark-only (pytest-benchmark).
GPU: bench/gpu_bench.py runs GPU_CASES with do_bench.

Floor: one read of x (the (K, F) outputs are negligible): (1024, 2048) fp32 is 8.4 MB and
(256, 64, 28, 28) fp32 is 51 MB, about 1 ms and 6 ms at this machine's measured copy bandwidth
(about 9 GB/s). The backward is the autograd formula in ops/class_stats.py, shared by every
backend, so it is not benchmarked here. See the table (measured 2026-11-22) for how far each
kernel is from the floor.
"""

import torch

from cases import class_stats_case, cpu_backends

CPU_CASES = [
    class_stats_case("cpu", torch.float32, shape=(1024, 2048), num_classes=100, backends=cpu_backends()),
    class_stats_case("cpu", torch.float32, shape=(256, 64, 28, 28), num_classes=10, backends=cpu_backends()),
]
GPU_CASES = [
    lambda backends: class_stats_case("cuda", torch.float32, shape=(1024, 2048), num_classes=100,
                                      backends=backends),
    lambda backends: class_stats_case("cuda", torch.bfloat16, shape=(256, 64, 28, 28), num_classes=10,
                                      backends=backends),
]


def test_cpu(bench_case, benchmark, record):
    record(benchmark, *bench_case)
