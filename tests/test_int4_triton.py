"""The Triton INT4 matmul kernels (algorithms.md §6): each kernel forced on awkward shapes, the shape-based
choice through the op, split-K determinism, and the launch-config file.

Without a GPU the kernels run under TRITON_INTERPRET=1 (set in conftest) on CPU tensors, so the
shapes stay small; tests/test_triton_registry.py compiles the same kernels for sm_80 / sm_90.
"""

import json

import pytest
import torch

import climbq_kernels as cq
from climbq_kernels import backends
from climbq_kernels.testing import assert_error_rule, poison_like
from climbq_kernels.triton._int4_common import random_case, references
from climbq_kernels.triton._int4_configs import (
    CONFIG_PATH,
    load_configs,
    pick_config,
    validate_config,
    validate_configs,
)
from climbq_kernels.triton.int4_matmul import int4_matmul
from climbq_kernels.triton.int4_split_k import split_plan

from .conftest import GPU, load_bench_script, run_with_compiler

DEVICE = "cuda" if GPU else "cpu"
needs_triton = pytest.mark.skipif(not backends()["triton"].available, reason="no GPU and no TRITON_INTERPRET")
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
FORCED = {
    # Tiles smaller than the shapes below, so every mask and both split-K paths are exercised:
    # gemv: K = 256 runs as 2 slices of one 64-byte step, K = 18 and K = 64 as a single slice;
    # gemm-split: K = 256 at g = 32 as 3 slices of 32-feature steps (the last one shorter), K = 64
    # as 2, K = 18 as one.
    "gemv": {"kernel": "gemv", "BLOCK_M": 4, "BLOCK_N": 32, "BLOCK_K": 128, "SPLIT_K": 3, "num_warps": 4,
             "num_stages": 2},
    # One x row a program: the GEMV keeps its sums in the weight tile's shape (int4_gemv.py).
    "gemv-row": {"kernel": "gemv", "BLOCK_M": 1, "BLOCK_N": 32, "BLOCK_K": 128, "SPLIT_K": 3, "num_warps": 4,
                 "num_stages": 2},
    "gemm": {"kernel": "gemm", "BLOCK_M": 16, "BLOCK_N": 32, "BLOCK_K": 64, "SPLIT_K": 1, "num_warps": 4,
             "num_stages": 2},
    "gemm-split": {"kernel": "gemm", "BLOCK_M": 16, "BLOCK_N": 32, "BLOCK_K": 64, "SPLIT_K": 3, "num_warps": 4,
                   "num_stages": 2},
}
SHAPE_FOR_M = {
    # rows: (n, k, group_size, how x's leading dims hold the rows); the interpreter is slow, so
    # many rows get small N and K.
    1: (45, 256, 32, (1,)),
    2: (17, 256, 64, (1, 2)),
    3: (45, 256, 128, (3,)),
    7: (17, 256, 256, (7, 1)),
    16: (45, 18, 18, (2, 8)),
    33: (17, 64, 32, (3, 11)),
    128: (1, 64, 64, (128,)),
}


def _check(x, packed, scales, zeros, group_size, bias, config=None):
    out = poison_like(torch.empty(*x.shape[:-1], packed.shape[0], dtype=x.dtype, device=x.device))
    got = int4_matmul(x, packed, scales, zeros, group_size, bias, out=out, config=config)
    assert got is out and got.dtype == x.dtype
    cpu = [t.cpu() if isinstance(t, torch.Tensor) else t for t in (x, packed, scales, zeros, group_size, bias)]
    assert_error_rule(got.float().cpu(), *references(*cpu))
    return got


@needs_triton
@pytest.mark.parametrize("m", sorted(SHAPE_FOR_M))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kernel", sorted(FORCED))
def test_forced_kernel_matches_reference(kernel, dtype, m, gen):
    n, k, group_size, leading = SHAPE_FOR_M[m]
    x, packed, scales, zeros, bias = random_case(dtype, gen, DEVICE, m, n, k, group_size, with_bias=m % 2 == 1)
    _check(x.reshape(*leading, k), packed, scales, zeros, group_size, bias, FORCED[kernel])


@needs_triton
@pytest.mark.parametrize("group_size,dtype", [(32, torch.float32), (64, torch.float16), (128, torch.bfloat16),
                                              (256, torch.float32), (None, torch.bfloat16)],
                         ids=["g32", "g64", "g128", "g256", "gK"])
@pytest.mark.parametrize("kernel", sorted(FORCED))
def test_every_group_size(kernel, group_size, dtype, gen):
    k = 1022 if group_size is None else 512  # one group per row: a K that is no power of two
    x, packed, scales, zeros, bias = random_case(dtype, gen, DEVICE, 3, 17, k, group_size, with_bias=True)
    _check(x, packed, scales, zeros, k if group_size is None else group_size, bias, FORCED[kernel])


DOT_ACCUMULATORS = """
import json, re, sys, torch
from climbq_kernels.triton.registry import aot_stages, all_kernels
ttir = aot_stages(all_kernels()["int4_gemm"], getattr(torch, sys.argv[1]), 90)["ttir"]
zeros = set(re.findall(r"(%[\\w.]+) = arith.constant dense<0.000000e\\+00>", ttir))
print(json.dumps([accumulator in zeros for accumulator in re.findall(r"tt.dot %[\\w.]+, %[\\w.]+, (%[\\w.]+)", ttir)]))
"""


@pytest.mark.slow
@pytest.mark.parametrize("dtype,each_step_apart", [("float32", True), ("bfloat16", False)])
def test_float32_gemm_sums_each_k_step_apart(dtype, each_step_apart):
    """A compiled float32 tl.dot is one FMA chain. Carried across K steps (Triton's combiner folds
    acc + tl.dot(w, x) into tl.dot(w, x, acc)) it breaks the error rule on a GPU from K = 512 (a
    mean error about 3x the float32 reference's), while the interpreter, which multiplies with
    numpy, passes. So in the compiled float32 GEMM every dot starts from zero; 16-bit x keeps the
    tensor cores' accumulator, which shows that the check can see a carried one."""
    run = run_with_compiler("-c", DOT_ACCUMULATORS, dtype)
    assert run.returncode == 0, run.stderr[-4000:]
    starts_from_zero = json.loads(run.stdout.strip().splitlines()[-1])
    assert starts_from_zero and all(flag == each_step_apart for flag in starts_from_zero)


@needs_triton
@pytest.mark.parametrize("k", [96, 160, 288])
@pytest.mark.parametrize("kernel", sorted(FORCED))
def test_k_step_spanning_groups_and_ending_past_k(kernel, k, gen):
    """BLOCK_K = 128 over groups of 32: a step holds four groups' tables, and the last step ends
    inside a group run (K = 96: three of four, 160 and 288: one of four)."""
    x, packed, scales, zeros, bias = random_case(torch.bfloat16, gen, DEVICE, 3, 19, k, 32, with_bias=True)
    _check(x, packed, scales, zeros, 32, bias, dict(FORCED[kernel], BLOCK_K=128))


@needs_triton
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("leading", [(2, 3), (5, 7)], ids=["gemv-rows", "gemm-rows"])
def test_op_on_triton_backend_picks_kernel_by_shape(dtype, leading, gen):
    x, packed, scales, zeros, bias = random_case(dtype, gen, DEVICE, leading[-1], 24, 128, 64, with_bias=True,
                                                 batch=leading[:-1])
    qweight = cq.Int4Weight(packed, scales, zeros, 64)
    with cq.use_backend("triton"):
        got = cq.int4_matmul(x, qweight, bias)
    assert got.shape == (*leading, 24) and got.dtype == dtype
    assert_error_rule(got.float().cpu(), *references(x.cpu(), packed.cpu(), scales.cpu(), zeros.cpu(), 64,
                                                     bias.cpu()))


@needs_triton
@pytest.mark.parametrize("kernel", ["gemv", "gemm"])
def test_split_k_is_deterministic(kernel, gen):
    config = dict(FORCED[kernel], BLOCK_K=64, SPLIT_K=8)
    assert split_plan(1024, 64, 8)[0] == 8
    x, packed, scales, zeros, bias = random_case(torch.float32, gen, DEVICE, 2, 33, 1024, 128, with_bias=True)
    first = _check(x, packed, scales, zeros, 128, bias, config)
    again = int4_matmul(x, packed, scales, zeros, 128, bias, config=config)
    assert torch.equal(first, again)


@needs_triton
def test_no_rows_launches_nothing(gen):
    x, packed, scales, zeros, _ = random_case(torch.float16, gen, DEVICE, 0, 5, 64, 32, with_bias=False)
    assert int4_matmul(x, packed, scales, zeros, 32, None).shape == (0, 5)


@pytest.mark.parametrize("in_features,block_k,max_splits", [(18, 128, 4), (256, 64, 3), (1022, 64, 8),
                                                            (4096, 128, 8), (2, 32, 16)])
def test_split_plan_covers_k_without_empty_slices(in_features, block_k, max_splits):
    slices, bytes_per_split = split_plan(in_features, block_k, max_splits)
    k_bytes = in_features // 2
    assert 1 <= slices <= max_splits and bytes_per_split % (block_k // 2) == 0
    assert (slices - 1) * bytes_per_split < k_bytes <= slices * bytes_per_split


def test_config_file_holds_valid_tables():
    configs = load_configs()
    assert "untuned" in configs["note"].lower() or configs["device"]
    for table in [configs["default"], *configs["by_shape"].values()]:
        assert table[-1]["max_m"] is None  # every M has a bucket
        for bucket in table:
            validate_config(bucket)


@needs_triton
def test_every_config_in_the_file_launches(gen):
    configs = load_configs()
    buckets = {json.dumps(b, sort_keys=True): b for t in [configs["default"], *configs["by_shape"].values()]
               for b in t}
    x, packed, scales, zeros, bias = random_case(torch.float16, gen, DEVICE, 3, 19, 66, 66, with_bias=True)
    for bucket in buckets.values():
        _check(x, packed, scales, zeros, 66, bias, bucket)


def test_pick_config_falls_back():
    gemv = {"kernel": "gemv", "BLOCK_M": 1, "BLOCK_N": 32, "BLOCK_K": 64, "SPLIT_K": 2, "num_warps": 4,
            "num_stages": 2}
    gemm = {"kernel": "gemm", "BLOCK_M": 32, "BLOCK_N": 32, "BLOCK_K": 64, "SPLIT_K": 1, "num_warps": 4,
            "num_stages": 2}
    configs = validate_configs({"default": [dict(gemv, max_m=4), dict(gemm, max_m=64)],
                                "by_shape": {"24x128": [dict(gemm, BLOCK_N=64, max_m=2)]}})
    assert pick_config(3, 8, 128, configs)["kernel"] == "gemv"
    assert pick_config(64, 8, 128, configs)["kernel"] == "gemm"
    assert pick_config(1000, 8, 128, configs)["max_m"] == 64  # beyond every bucket: the largest one
    assert pick_config(2, 24, 128, configs)["BLOCK_N"] == 64  # the shape's own table
    assert pick_config(3, 24, 128, configs)["kernel"] == "gemv"  # not in the shape's table: default
    assert pick_config(1, 4096, 4096)["kernel"] in ("gemv", "gemm")


@pytest.mark.parametrize("change", [{"kernel": "gemx"}, {"BLOCK_N": 48}, {"SPLIT_K": 0}, {"num_stages": 0},
                                    {"kernel": "gemm", "BLOCK_M": 8}],
                         ids=str)
def test_validate_config_rejects(change):
    good = {"kernel": "gemv", "BLOCK_M": 16, "BLOCK_N": 32, "BLOCK_K": 64, "SPLIT_K": 1, "num_warps": 4,
            "num_stages": 2}
    validate_config(good)
    with pytest.raises(ValueError):
        validate_config(dict(good, **change))


def test_validate_configs_rejects_unordered_buckets():
    bucket = dict(FORCED["gemm"])
    with pytest.raises(ValueError):
        validate_configs({"default": [dict(bucket, max_m=None), dict(bucket, max_m=8)]})
    with pytest.raises(ValueError):
        validate_configs({"default": [dict(bucket, max_m=8), dict(bucket, max_m=8)]})
    assert CONFIG_PATH.exists()


def _tuner():
    return load_bench_script("int4/tune_int4_triton")


def test_tuner_candidates_and_output_are_valid_configs():
    tuner = _tuner()
    for m in tuner.ROW_COUNTS:
        kernels = {validate_config(c)["kernel"] for c in tuner.candidates(m)}
        assert kernels == ({"gemv", "gemm"} if m <= tuner.GEMV_MAX_M else {"gemm"})
    # Placeholder seconds (not measurements): only the table building is under test.
    times = {shape: {m: {json.dumps(c, sort_keys=True): float(i + 1) for i, c in enumerate(tuner.candidates(m)[:3])}
                     for m in (1, 64)} for shape in ("4096x4096", "11008x4096")}
    configs = validate_configs(json.loads(tuner.dumps(tuner.build_configs(times, "some GPU", "fp16", "2026-01-01"))))
    assert configs["device"] == "some GPU" and configs["default"][-1]["max_m"] is None
    assert set(configs["by_shape"]) == set(times)
    assert pick_config(64, 4096, 4096, configs) == dict(tuner.candidates(64)[0], max_m=None)
