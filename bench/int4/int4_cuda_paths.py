"""Time each path of the CUDA INT4 matmul (GEMV, tensor-core MMA, dequantize + cuBLAS) at every
batch size it takes, the MMA path's kernels and its splits of K, beside the peers of
bench/cases.py (dense F.linear, torch's _weight_int4pack_mm, bitsandbytes where installed), in
one run.

Each path is forced with CLIMBQ_INT4_CUDA_PATH (csrc/cuda/int4_matmul.cu), the MMA path's kernel
with CLIMBQ_INT4_MMA_KERNEL, the split with CLIMBQ_INT4_MMA_SPLIT_K, the GEMV's threads per block
with CLIMBQ_INT4_GEMV_THREADS; "climbq cuda" is the automatic choice. Timed with
triton.testing.do_bench (median, L2 flushed). What it shows is what int4_matmul.cu's thresholds
and int4_mma.cu's kernel choice are set from.

Rows go to the results ledger (bench/ledger.py; `--ledger PATH`, `--no-ledger`); `--out DIR`
also writes int4_cuda_paths.md and .json.

Run on a GPU machine:  python3 bench/int4/int4_cuda_paths.py [--out DIR] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch
from tqdm import tqdm

BENCH_DIR = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(BENCH_DIR), str(BENCH_DIR.parent)]
import ledger  # noqa: E402
from cases import int4_matmul_case  # noqa: E402
from report import do_bench_seconds, gpu_copy_bandwidth, header, markdown  # noqa: E402

PATHS = ("gemv", "mma", "dequantize")
SPLITS = (1, 2, 3, 4, 6, 8, 12, 16)
GEMV_THREADS = (64, 128, 256)
"""Threads per GEMV block (CLIMBQ_INT4_GEMV_THREADS), timed at every batch size the GEMV takes."""
MMA_KERNELS = ("registers", "pipelined")
# (dtype, (N, K), batch sizes, batch sizes that also sweep the MMA's split of K)
PLAN = [
    (torch.bfloat16, (16384, 16384), (1, 4, 16, 64), (16,)),
    (torch.bfloat16, (11008, 4096), (1, 2, 3, 4, 8, 16, 32, 64, 128, 256, 1024), (8, 16, 32, 64)),
    (torch.bfloat16, (4096, 4096), (1, 16, 64), (16,)),
    (torch.float16, (4096, 4096), (1, 16), ()),
]
QUICK_PLAN = [(torch.bfloat16, (11008, 4096), (1, 8, 16, 64, 256), (16,))]


def timed_with_env(fn, **env: str) -> float | None:
    """fn's median time with the environment variables set; None where the forced path does not
    apply (the kernel raises ValueError)."""
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    try:
        try:
            fn()
        except ValueError:
            return None
        return do_bench_seconds(fn)
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help="write int4_cuda_paths.md and .json here")
    parser.add_argument("--quick", action="store_true", help="one shape, five batch sizes")
    ledger.add_arguments(parser)
    args = parser.parse_args()
    bandwidth = gpu_copy_bandwidth("time")
    if bandwidth is None:
        return 1
    run = ledger.Ledger("cuda", "bench/int4/int4_cuda_paths.py", ledger.resolve_path(args.ledger, not args.no_ledger),
                        method="triton.testing.do_bench median, L2 flushed; paths forced by environment")
    all_rows = []
    plan = QUICK_PLAN if args.quick else PLAN
    for dtype, shape, batches, split_batches in tqdm(plan, desc="shapes"):
        for batch in tqdm(batches, desc=f"{shape}", leave=False):
            case = int4_matmul_case("cuda", dtype, shape, batch, backends=("cuda",))
            ours = case.candidates["climbq cuda"]
            timings = {label: do_bench_seconds(fn) for label, fn in case.candidates.items()}
            for path in PATHS:
                seconds = timed_with_env(ours, CLIMBQ_INT4_CUDA_PATH=path)
                if seconds is not None:
                    timings[f"climbq cuda path={path}"] = seconds
            for kernel in MMA_KERNELS:
                seconds = timed_with_env(ours, CLIMBQ_INT4_CUDA_PATH="mma", CLIMBQ_INT4_MMA_KERNEL=kernel)
                if seconds is not None:
                    timings[f"climbq cuda mma kernel={kernel}"] = seconds
            for threads in GEMV_THREADS:
                seconds = timed_with_env(ours, CLIMBQ_INT4_CUDA_PATH="gemv", CLIMBQ_INT4_GEMV_THREADS=str(threads))
                if seconds is not None:
                    timings[f"climbq cuda gemv threads={threads}"] = seconds
            if batch in split_batches:
                for split in SPLITS:
                    seconds = timed_with_env(ours, CLIMBQ_INT4_CUDA_PATH="mma", CLIMBQ_INT4_MMA_SPLIT_K=str(split))
                    if seconds is not None:
                        timings[f"climbq cuda mma split_k={split}"] = seconds
            case_rows = run.append(run.case_rows(case, timings, bandwidth))
            all_rows += case_rows
            print(markdown(case_rows, case.name), flush=True)
    print(f"{len(all_rows)} ledger rows appended to {run.path or '(none: --no-ledger)'}")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "int4_cuda_paths.json").write_text(json.dumps(all_rows, indent=1))
        (args.out / "int4_cuda_paths.md").write_text(markdown(all_rows, header("CUDA INT4 paths", run.context)))
        print(f"saved to {args.out / 'int4_cuda_paths.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
