"""INT4 packed-weight matmul benchmarks (SPEC 6): serving batch sizes against dense F.linear and
PyTorch's own int4 kernels on the same codes.

CPU: python3 -m pytest bench/bench_int4.py --benchmark-only (pytest-benchmark).
GPU: bench/gpu_bench.py runs GPU_CASES with do_bench.

Floor: the packed weight (K/2 bytes a row), its float32 scales and zeros, x and y, each moved
once. At batch 1 the kernels are memory-bound and "% of copy bandwidth" is the figure of merit;
from batch ~16 on they are compute-bound and the ratios against F.linear are.

CPU, this 2-core AVX-512 VM, 2026-11-22 (bench/results/cpu-2026-11-22/int4.md; copy bandwidth
22.5 GB/s; batch-1 medians moved up to 1.3x between runs minutes apart), climbq cpu against
F.linear float32 and against torch's int4 kernel in bfloat16 (its fast path; in float32 it is
10-90x slower than ours):
  M=1   4096x4096: 0.62 ms, 4.3x F.linear, 1.26x torch (0.48-0.50 ms, 5.3-5.5x, in other runs)
  M=1  11008x4096: 1.60 ms, 4.1x F.linear, 1.31x torch (1.31 ms, 5.2x, 1.43x in another run)
  M=4  11008x4096: 3.0-3.3 ms, 4.4-4.9x F.linear, 1.09x torch
  M=16 11008x4096: 17.2 ms, 1.2-1.3x F.linear, 0.87x torch (the fused tiles dequantize each
       weight vector once per 4 rows; torch's kernel is ahead here)
  M=64 11008x4096: 42-45 ms (dequantize + GEMM), 0.8-0.9x F.linear, 1.17x torch
"""

import torch

from cases import cpu_backends, int4_matmul_case

LLAMA_SHAPES = [(4096, 4096), (11008, 4096)]
CPU_CASES = [
    *(int4_matmul_case("cpu", dtype, shape, 1, backends=cpu_backends())
      for shape in LLAMA_SHAPES for dtype in (torch.float32, torch.bfloat16)),
    *(int4_matmul_case("cpu", dtype, (11008, 4096), batch, backends=cpu_backends())
      for batch in (4, 16, 64) for dtype in (torch.float32, torch.bfloat16)),
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
