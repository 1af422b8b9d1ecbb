"""Uniform fake quant benchmarks, forward + backward: per-channel LSQ (algorithms.md §1e) and per-sample
bit-width fake quant (algorithms.md §3a).

CPU: python -m pytest bench/bench_fake_quant.py --benchmark-only (pytest-benchmark).
GPU: bench/gpu_bench.py runs GPU_CASES with do_bench.

Floors (bytes a perfect fused kernel must move / measured copy bandwidth). Both kernels are
one pass forward (read x, write out) and one backward (read grad and x, write dx; the dscale
or dclip reduction rides along in that pass, its partials are a few KB), so
5 * numel * element_size bytes. The per-sample bits kernel divides where the reference divides
(c / s and (rint(v) - v) / L), which keeps it closest to the reference at the cost of vdivps;
first touch of the fresh outputs (csrc/cpu/fresh_output.h) is part of every candidate's time.

Measured numbers are in bench/results/ledger.jsonl (bench/results/README.md), not here.
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
