"""ClimbQ activation quantizer benchmarks, forward + backward (SPEC 1a), plain and fused with a
folded BatchNorm before and a ReLU after (ClimbQ's place in a network), contiguous and
channels-last.

CPU: python3 -m pytest bench/bench_climbq_act.py --benchmark-only (pytest-benchmark).
GPU: bench/gpu_bench.py runs GPU_CASES with do_bench.

Floors (bytes moved / measured copy bandwidth; the table's "% of floor" column):
- every case here moves 5 x numel x element size (forward reads x and writes out; backward
  reads grad and x and writes dx; the (B,), (C,) tables are noise): 168 MB for 8.4M fp32;
- the CPU floor on this 2-core VM is that traffic at its copy bandwidth (the table prints it);
  the CPU kernels are compute bound, not at that floor: erf and exp cost about 20 vector
  instructions an element, so two cores run near their arithmetic limit instead. Measured
  distances from the floor are in the table printed by the run (see the report for this
  branch's numbers).
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
