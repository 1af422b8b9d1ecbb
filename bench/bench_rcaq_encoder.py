"""RCAQ encoder step benchmarks: one sensor's exact step, the costs of every index for every
prototype and the new table (algorithms.md §5).

CPU: python3 -m pytest bench/bench_rcaq_encoder.py --benchmark-only (pytest-benchmark).
GPU: bench/gpu_bench.py runs GPU_CASES with do_bench (the reference and torch.compile of it: the
op has no GPU kernel).

Sizes as RCAQ trains: d = 2 sensors of R = 8 indices (64 codewords), P = 32 prototypes a sensor,
sensor 0 (stride R), float32 data. Floor: one read of the points (N, d) and of their int64
labels, prototypes and base indices; the codebook, the tables and the (P, R) float64 costs are a
few KB. torch.compile of the reference compiles with graph breaks at its argument checks (the
finiteness and range checks read tensors back to the host).

Measured numbers are in bench/results/ledger.jsonl (bench/results/README.md), not here.
"""

import torch

from cases import cpu_backends, rcaq_encoder_case

CPU_CASES = [rcaq_encoder_case("cpu", torch.float32, points=n, sensors=2, rate=8, prototypes=32,
                               backends=cpu_backends()) for n in (10_000, 100_000)]
GPU_CASES = [lambda backends: rcaq_encoder_case("cuda", torch.float32, points=1_000_000, sensors=2, rate=8,
                                                prototypes=32, backends=backends)]


def test_cpu(bench_case, benchmark, record):
    record(benchmark, *bench_case)
