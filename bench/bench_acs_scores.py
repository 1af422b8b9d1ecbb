"""ACS per-sample score benchmarks: error vector score and disagreement score (algorithms.md §2).

CPU: python3 -m pytest bench/bench_acs_scores.py --benchmark-only (pytest-benchmark).
GPU: bench/gpu_bench.py runs GPU_CASES with do_bench.

Floors: one read of the (B, K) logits (two for DS, one per model) plus the (B,) labels and
scores. The scores carry no gradient, so only the forward is timed. No PyTorch op computes them:
the "PyTorch composition" candidate is softmax, one_hot (or a second softmax) and vector_norm,
the reference's math without its argument checks (which read the labels' min and max). Sizes run
from many rows of few classes (CIFAR-10) to few rows of a language model's vocabulary.

Measured numbers are in bench/results/ledger.jsonl (bench/results/README.md), not here.
"""

import torch

from cases import cpu_backends, disagreement_score_case, error_vector_score_case

CPU_SHAPES = ((4096, 10), (1024, 1000), (128, 32000))
CPU_CASES = [
    *(error_vector_score_case("cpu", torch.float32, shape=s, backends=cpu_backends()) for s in CPU_SHAPES),
    *(disagreement_score_case("cpu", torch.float32, shape=s, backends=cpu_backends()) for s in CPU_SHAPES),
]
GPU_CASES = [
    *(lambda backends, s=s: error_vector_score_case("cuda", torch.float32, shape=s, backends=backends)
      for s in ((65536, 10), (8192, 1000), (1024, 32000))),
    lambda backends: error_vector_score_case("cuda", torch.bfloat16, shape=(8192, 1000), backends=backends),
    lambda backends: disagreement_score_case("cuda", torch.float32, shape=(8192, 1000), backends=backends),
]


def test_cpu(bench_case, benchmark, record):
    record(benchmark, *bench_case)
