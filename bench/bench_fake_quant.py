"""Uniform fake quant benchmarks, forward + backward: per-channel LSQ (algorithms.md §1e) and per-sample
bit-width fake quant (algorithms.md §3).

CPU: python -m pytest bench/bench_fake_quant.py --benchmark-only (pytest-benchmark).
GPU: bench/gpu_bench.py runs GPU_CASES with do_bench.

Floors (bytes a perfect fused kernel must move / measured copy bandwidth). Both kernels are
one pass forward (read x, write out) and one backward (read grad and x, write dx; the dscale
or dclip reduction rides along in that pass, its partials are a few KB), so
5 * numel * element_size bytes: 8.4M fp32 elements (128, 64, 32, 32) -> 168 MB.

Measured 2026-11-22 12:21 UTC on the shared 2-core AVX-512 VM (other jobs on the same cores,
so single runs vary by +-30%; an earlier run gave 7.7x / 1.9x / 14.5x / 1.3x). Copy bandwidth
that run 10.0 GB/s, floor = 168 MB / 10.0 GB/s = 16.8 ms:

| case (8.4M fp32)          | candidate                  | median ms | vs first | % of floor |
|---------------------------|----------------------------|-----------|----------|------------|
| LSQ per-channel fwd+bwd   | torch learnable fake quant | 222.2     | 1.00x    | 7.6%       |
|                           | torch.compile(eager LSQ)   | 71.7      | 3.10x    | 23.4%      |
|                           | climbq cpu                 | 39.7      | 5.59x    | 42.2%      |
| per-sample bits fwd+bwd   | reference (eager)          | 520.1     | 1.00x    | 3.2%       |
|                           | torch.compile(reference)   | 43.2      | 12.05x   | 38.9%      |
|                           | climbq cpu                 | 31.7      | 16.40x   | 52.9%      |

So the CPU LSQ kernel is 5.6x torch's learnable fake quant (target 3x) and 1.8x
torch.compile of an eager LSQ (target 1.0x), at 42% of its floor: 2.4x the floor's time. The
per-sample bits kernel is at 53% (1.9x the floor's time); it divides where the reference divides
(c / s and (rint(v) - v) / L), which keeps it closest to the reference but costs vdivps.
What remains is mostly first-touch of the two fresh 33 MB outputs (see
csrc/cpu/empty_output.h) and the read of grad and x in the backward.

GPU: the same 5 * numel * element_size floor; no GPU was lent to the session that wrote these
kernels, so GPU_CASES (run by bench/gpu_run.sh) have no committed numbers yet.
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
