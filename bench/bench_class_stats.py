"""Class-segmented statistics benchmarks, forward (algorithms.md §1c steps 1-3, algorithms.md §4).

CPU: python3 -m pytest bench/bench_class_stats.py --benchmark-only (pytest-benchmark).
GPU: bench/gpu_bench.py runs GPU_CASES with do_bench.

Floor: one read of x (the (K, F) outputs are negligible). The backward is the autograd formula
in ops/class_stats.py, shared by every backend, so it is not benchmarked here.

CPU, this 2-core VM, copy bandwidth measured 9.6 GB/s, 2026-11-22 (shared cores; medians
noisy):
  (1024, 2048) fp32, K = 100: floor 8.4 MB -> 0.87 ms; the C++ kernel took 7.9 ms (11% of the
      floor; 1.8 ms at best when the second core was free), 25x eager, 9.9x torch.compile.
      One float64 Welford update per element into the (class, feature) accumulator row of
      its sample: compute and the 3.2 MB accumulator traffic, not x, bound it.
  (256, 64, 28, 28) fp32, K = 10: floor 51 MB -> 5.4 ms; the C++ kernel took 8.6 ms (63%),
      27x eager, 5.6x torch.compile: rows of 784 positions are summarised in float32 vectors
      and merged once per (sample, channel).
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
