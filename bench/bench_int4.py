"""INT4 packed-weight matmul benchmarks (algorithms.md §6): serving batch sizes against dense F.linear and
PyTorch's own int4 kernels on the same codes.

CPU: python3 -m pytest bench/bench_int4.py --benchmark-only (pytest-benchmark; the caches
flushed before every round, so every weight is read from memory, as a model's layer reads it).
GPU: bench/gpu_bench.py runs GPU_CASES with do_bench. bench/int4/int4_cpu_interleaved.py times
the CPU cases round-robin, for ratios that a shared machine's load does not move.

Floor: the packed weight (K/2 bytes a row), its float32 scales and zeros, x and y, each moved
once. At batch 1 the kernels are memory-bound and "% of copy bandwidth" is the figure of merit;
from batch ~16 on they are compute-bound and the ratios against F.linear are. PyTorch's CPU int4
kernel is timed in bfloat16, its fast path: its float32 path takes seconds a call.

Measured numbers are in bench/results/ledger.jsonl (bench/results/README.md), not here.
"""

import torch

from cases import cpu_backends, int4_matmul_case

LLAMA_SHAPES = [(4096, 4096), (11008, 4096)]
CPU_CASES = [
    *(int4_matmul_case("cpu", dtype, shape, 1, backends=cpu_backends())
      for shape in LLAMA_SHAPES for dtype in (torch.float32, torch.bfloat16)),
    *(int4_matmul_case("cpu", dtype, (11008, 4096), batch, backends=cpu_backends())
      for batch in (4, 16, 64) for dtype in (torch.float32, torch.bfloat16)),
    # The GEMM path; bfloat16 only: torch's float32 int4 kernel takes seconds a call.
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
