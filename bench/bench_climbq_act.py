"""ClimbQ activation quantizer benchmarks, forward + backward (algorithms.md §1a), plain and fused with a
folded BatchNorm before and a ReLU after (ClimbQ's place in a network), contiguous and
channels-last.

CPU: python3 -m pytest bench/bench_climbq_act.py --benchmark-only (pytest-benchmark).
GPU: bench/gpu_bench.py runs GPU_CASES with do_bench.

Floors (bytes moved / measured copy bandwidth; the table's "% of copy bandwidth" column is
floor time / kernel time):
- every case here moves 5 x numel x element size (forward reads x and writes out; backward
  reads grad and x and writes dx; the (B,), (C,), (N,) tables are noise): 168 MB for the
  8.4M fp32 elements of each case.
- CPU, this 2-core VM, 2026-11-22 (load average about 3 from parallel sessions, so medians
  swing by 2x between runs): copy bandwidth measured 4.9 GB/s, floor 34 ms. Medians measured:
  plain fwd+bwd 103-116 ms (3.0-3.4x the floor; best single round 53 ms, 1.5x), folded
  BN + ReLU fwd+bwd 71-118 ms (2.1-3.5x; best 70 ms), channels-last 95-119 ms (2.8-3.5x;
  best 61 ms). The kernels alone (torch.ops.climbq_native, no autograd) take 17-25 ms forward
  and 16-24 ms backward: each pass is bound by erf/exp arithmetic on two cores (about 20
  vector instructions an element), not by memory; the rest is the autograd and Python layer
  (sigma table, gathers, output allocation).
- Inference bucketing (no erf; not a row here) runs at about the copy time (27 ms forward
  for 8.4M fp32 at 4 bits, vs 25-39 ms for a clone in the same run).
- GPU: no device was lent to this branch; gpu_bench.py reports % of the measured
  device-to-device copy bandwidth for GPU_CASES when one is.
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
