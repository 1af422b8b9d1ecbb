"""Uniform fake quant benchmarks, forward + backward: per-channel LSQ (SPEC 1e) and per-sample
bit-width fake quant (SPEC 3).

CPU: python -m pytest bench/bench_fake_quant.py --benchmark-only (pytest-benchmark).
GPU: bench/gpu_bench.py runs GPU_CASES with do_bench.

Floors (bytes a perfect fused kernel must move / measured copy bandwidth). Both kernels are
one pass forward (read x, write out) and one backward (read grad and x, write dx; the dscale
or dclip reduction rides along in that pass, its partials are a few KB), so
5 * numel * element_size bytes: 8.4M fp32 elements (128, 64, 32, 32) -> 168 MB.

Measured 2026-11-22 on the shared 2-core AVX-512 VM (copy bandwidth 5.8 GB/s that run, other
jobs on the same cores, so single runs vary by +-30%), floor = 168 MB / 5.8 GB/s = 29 ms:

| case (8.4M fp32)          | candidate                  | median ms | vs first | % of floor |
|---------------------------|----------------------------|-----------|----------|------------|
| LSQ per-channel fwd+bwd   | torch learnable fake quant | 421.0     | 1.00x    | 6.9%       |
|                           | torch.compile(eager LSQ)   | 103.7     | 4.06x    | 28.1%      |
|                           | climbq cpu                 | 54.5      | 7.73x    | 53.6%      |
| per-sample bits fwd+bwd   | reference (eager)          | 912.7     | 1.00x    | 3.2%       |
|                           | torch.compile(reference)   | 80.6      | 11.33x   | 36.2%      |
|                           | climbq cpu                 | 62.9      | 14.51x   | 46.4%      |

So the CPU LSQ kernel is 7.7x torch's learnable fake quant (target 3x) and 1.9x
torch.compile of an eager LSQ (target 1.0x), at 54% of its floor: about 1.9x the floor. The
per-sample bits kernel is at 46% (2.2x the floor); it divides where the reference divides
(c / s and (rint(v) - v) / L), which keeps it closest to the reference but costs vdivps.
What remains is mostly first-touch of the two fresh 33 MB outputs (see
csrc/cpu/empty_output.h) and the read of grad and x in the backward.
"""

import torch

from cases import cpu_backends, lsq_per_channel_case, per_sample_bits_case

CPU_CASES = [lsq_per_channel_case("cpu", torch.float32, backends=cpu_backends()),
             per_sample_bits_case("cpu", torch.float32, backends=cpu_backends())]
GPU_CASES = [
    lambda backends: lsq_per_channel_case("cuda", torch.float32, shape=(256, 64, 32, 32), backends=backends),
    lambda backends: lsq_per_channel_case("cuda", torch.bfloat16, shape=(256, 64, 32, 32), backends=backends),
    lambda backends: per_sample_bits_case("cuda", torch.bfloat16, shape=(256, 64, 32, 32), backends=backends),
]


def test_cpu(bench_case, benchmark, record):
    record(benchmark, *bench_case)
