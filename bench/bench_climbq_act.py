"""ClimbQ activation quantizer benchmarks, forward + backward (algorithms.md §1a), plain and fused with a
folded BatchNorm before and a ReLU after (ClimbQ's place in a network), contiguous and
channels-last.

CPU: python3 -m pytest bench/bench_climbq_act.py --benchmark-only (pytest-benchmark).
GPU: bench/gpu_bench.py runs GPU_CASES with do_bench.

Floor: every case moves 5 x numel x element size (forward reads x and writes out; backward reads
grad and x and writes dx; the (B,), (C,), (N,) tables are noise); "% of copy bandwidth" is floor
time / kernel time. On a 2-core CPU each pass is bound by erf/exp arithmetic (about 20 vector
instructions an element), not by memory, and the autograd and Python layer (sigma table,
gathers, output allocation) adds to the kernels' own time.

Measured numbers are in bench/results/ledger.jsonl (bench/results/README.md), not here.
"""

import torch

from cases import climbq_act_bn_relu_case, climbq_act_case, cpu_backends

CPU_CASES = [
    climbq_act_case("cpu", torch.float32, backends=cpu_backends()),
    climbq_act_bn_relu_case("cpu", torch.float32, backends=cpu_backends()),
    climbq_act_bn_relu_case("cpu", torch.float32, channels_last=True, backends=cpu_backends()),
]
GPU_CASES = [
    lambda backends: climbq_act_case("cuda", torch.bfloat16, shape=(256, 65536), backends=backends),
    lambda backends: climbq_act_case("cuda", torch.float32, shape=(128, 131072), backends=backends),
    lambda backends: climbq_act_bn_relu_case("cuda", torch.bfloat16, shape=(64, 64, 64, 64), backends=backends),
    lambda backends: climbq_act_bn_relu_case("cuda", torch.bfloat16, shape=(64, 64, 64, 64), channels_last=True,
                                             backends=backends),
]


def test_cpu(bench_case, benchmark, record):
    record(benchmark, *bench_case)
