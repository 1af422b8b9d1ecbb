"""Class-segmented statistics benchmarks, forward (algorithms.md §1c steps 1-3, §4a).

CPU: python3 -m pytest bench/bench_class_stats.py --benchmark-only (pytest-benchmark).
GPU: bench/gpu_bench.py runs GPU_CASES with do_bench.

Floor: one read of x (the (K, F) outputs are negligible). The backward is the autograd formula
in ops/class_stats.py, shared by every backend, so it is not benchmarked here. With 100 classes
the CPU kernel is bound by its float64 Welford update per element into the (class, feature)
accumulator row of its sample, not by the read of x; with 10 classes and rows of 784 positions
it summarises rows in float32 vectors and merges them once per (sample, channel).

Measured numbers are in bench/results/ledger.jsonl (bench/results/README.md), not here.
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
