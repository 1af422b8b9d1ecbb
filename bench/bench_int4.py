"""INT4 packed-weight matmul benchmarks (algorithms.md §6): serving batch sizes against dense F.linear and
PyTorch's own int4 kernels on the same codes.

CPU: python3 -m pytest bench/bench_int4.py --benchmark-only (pytest-benchmark).
GPU: bench/gpu_bench.py runs GPU_CASES with do_bench.

Floor: the packed weight (K/2 bytes a row), its float32 scales and zeros, x and y, each moved
once. At batch 1 the kernels are memory-bound and "% of copy bandwidth" is the figure of merit;
from batch ~16 on they are compute-bound and the ratios against F.linear are.

CPU, this 2-core AVX-512 VM, 2026-11-22 15:26 UTC (bench/results/cpu-2026-11-22/int4.md; copy
bandwidth 22.5 GB/s), climbq cpu against F.linear float32 and against torch's int4 kernel in
bfloat16 (its fast path; in float32 torch's kernel is 10-90x slower than ours). Medians moved
up to 1.6x between runs minutes apart (F.linear 11008x4096 batch 1: 6.6-10.7 ms); compare
within one run. These were timed before the runner flushed the caches between rounds, so the
packed weights (8-22 MB) were read from the 48 MB last-level cache and F.linear's (64-180 MB)
were not; flushed, batch 1 is 2.6-3.5x F.linear and 0.81-0.97x torch's kernel
(bench/int4_cpu_interleaved.py, bench/results/cpu-2026-11-23/int4-interleaved.md). Warm:
  M=1    4096x4096: 0.59 ms fp32 (4.6x F.linear, 1.15x torch bf16); 0.74 ms bf16 (0.92x torch)
  M=1   11008x4096: 2.09-2.40 ms (4.4-5.1x F.linear, 1.13x torch)
  M=4   11008x4096: 3.2-3.6 ms (4.3-7.4x F.linear, 1.13x torch)
  M=16  11008x4096: 13.7-15.5 ms (1.6-3.0x F.linear, 1.51x torch)
  M=64  11008x4096: 43.5-48.2 ms (0.88x F.linear, 1.22x torch)
  M=256 11008x4096: 139 ms, dequantize + GEMM (0.88x F.linear, 1.49x torch)
"""

import torch

from cases import cpu_backends, int4_matmul_case

LLAMA_SHAPES = [(4096, 4096), (11008, 4096)]
CPU_CASES = [
    *(int4_matmul_case("cpu", dtype, shape, 1, backends=cpu_backends())
      for shape in LLAMA_SHAPES for dtype in (torch.float32, torch.bfloat16)),
    *(int4_matmul_case("cpu", dtype, (11008, 4096), batch, backends=cpu_backends())
      for batch in (4, 16, 64) for dtype in (torch.float32, torch.bfloat16)),
    # The GEMM path; bfloat16 only: torch's float32 int4 kernel takes ~15 s a call here.
    int4_matmul_case("cpu", torch.bfloat16, (11008, 4096), 256, backends=cpu_backends()),
]
GPU_CASES = [
    # >= 100 MB of packed weight: the memory-bound serving case.
    lambda backends: int4_matmul_case("cuda", torch.bfloat16, (16384, 16384), 1, backends=backends),
    *(lambda backends, batch=batch: int4_matmul_case("cuda", torch.bfloat16, (11008, 4096), batch, backends=backends)
      for batch in (1, 16, 32, 64, 256, 1024)),
    lambda backends: int4_matmul_case("cuda", torch.float16, (4096, 4096), 1, backends=backends),
]


def test_cpu(bench_case, benchmark, record):
    record(benchmark, *bench_case)
