"""Uniform fake quant benchmarks, forward + backward: per-channel LSQ (SPEC 1e) and per-sample
bit-width fake quant (SPEC 3).

CPU: python -m pytest bench/bench_fake_quant.py --benchmark-only (pytest-benchmark).
GPU: bench/gpu_bench.py runs GPU_CASES with do_bench.

Floors (bytes a perfect fused kernel must move / measured copy bandwidth). Both kernels are
one read-modify-write pass forward (read x, write out) and one backward (read grad and x,
write dx; the dscale / dclip reductions ride along), so 5 * numel * element_size bytes:
8.4M fp32 elements (128, 64, 32, 32) -> 168 MB. FILLED IN FROM THE MEASURED RUN BELOW.
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
