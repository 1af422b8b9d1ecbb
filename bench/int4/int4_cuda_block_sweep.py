"""Time the CUDA INT4 large-M path (dequantize a block of W, GEMM into its columns of y) for a
few block sizes, beside dense F.linear, on a GPU.

The block size is the kernel's CLIMBQ_INT4_DEQUANT_BLOCK_BYTES; "whole W" is one block. The path
is forced (CLIMBQ_INT4_CUDA_PATH=dequantize): bf16 x up to M = 64 would otherwise take the
tensor-core kernel. Timed with triton.testing.do_bench (median, L2 flushed between calls). Rows
go to the results ledger (bench/ledger.py; `--ledger PATH`, `--no-ledger`); the table is printed.

Run on a GPU machine:  python3 bench/int4/int4_cuda_block_sweep.py [--shape 11008x4096] [--rows 16 64 256 1024]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

BENCH_DIR = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(BENCH_DIR), str(BENCH_DIR.parent)]
import ledger  # noqa: E402
from cases import int4_case_name, int4_floor_bytes  # noqa: E402
from report import do_bench_seconds, gpu_copy_bandwidth  # noqa: E402

BLOCKS_MIB = {"4 MiB": 4, "16 MiB": 16, "32 MiB": 32, "whole W": 1 << 20}
DENSE = "F.linear bfloat16 (dense)"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="11008x4096", metavar="NxK")
    parser.add_argument("--rows", nargs="+", type=int, default=[16, 64, 256, 1024], metavar="M")
    parser.add_argument("--group-size", type=int, default=128)
    ledger.add_arguments(parser)
    args = parser.parse_args()
    bandwidth = gpu_copy_bandwidth("time")
    if bandwidth is None:
        return 1
    import climbq_kernels as cq

    run = ledger.Ledger("cuda", "bench/int4/int4_cuda_block_sweep.py",
                        ledger.resolve_path(args.ledger, not args.no_ledger),
                        method="triton.testing.do_bench median, L2 flushed; dequantize path forced")
    n, k = (int(side) for side in args.shape.split("x"))
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(n, k, generator=gen)
    qw = cq.quantize_int4(weight, args.group_size).to("cuda")
    dense = weight.to("cuda", torch.bfloat16)
    op = torch.ops.climbq_native.int4_matmul
    os.environ["CLIMBQ_INT4_CUDA_PATH"] = "dequantize"
    print(f"| {args.shape} bf16 g={args.group_size} | F.linear | " + " | ".join(BLOCKS_MIB) + " |")
    print("|---|---|" + "---|" * len(BLOCKS_MIB))
    for m in args.rows:
        x = torch.randn(m, k, generator=gen).to("cuda", torch.bfloat16)
        timings = {DENSE: do_bench_seconds(lambda x=x: torch.nn.functional.linear(x, dense))}
        for label, mib in BLOCKS_MIB.items():
            os.environ["CLIMBQ_INT4_DEQUANT_BLOCK_BYTES"] = str(mib << 20)
            timings[f"climbq cuda path=dequantize block={label}"] = do_bench_seconds(
                lambda x=x: op(x, qw.packed, qw.scales, qw.zeros, args.group_size, None))
        name = int4_case_name((n, k), args.group_size, m, torch.bfloat16)
        floor = int4_floor_bytes((n, k), args.group_size, m, x.element_size())
        run.append([run.row(name, label, seconds, floor_bytes=floor, copy_bytes_per_s=bandwidth,
                             baseline_s=timings[DENSE], ratio_vs=DENSE) for label, seconds in timings.items()])
        print(f"| M={m} | " + " | ".join(f"{t * 1e6:.1f} us" for t in timings.values()) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
