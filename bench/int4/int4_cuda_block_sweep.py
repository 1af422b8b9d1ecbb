"""Time the CUDA INT4 large-M path (dequantize a block of W, GEMM into its columns of y) for a
few block sizes, beside dense F.linear, on a GPU.

The block size is the kernel's CLIMBQ_INT4_DEQUANT_BLOCK_BYTES; "whole W" is one block (the
path before blocks). The path is forced (CLIMBQ_INT4_CUDA_PATH=dequantize): bf16 x up to M = 64
would otherwise take the tensor-core kernel. Timed with triton.testing.do_bench (median, L2
flushed between calls).

Run on a GPU machine:  python3 bench/int4_cuda_block_sweep.py [--shape 11008x4096] [--rows 16 64 256 1024]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

BLOCKS_MIB = {"4 MiB": 4, "16 MiB": 16, "32 MiB": 32, "whole W": 1 << 20}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="11008x4096", metavar="NxK")
    parser.add_argument("--rows", nargs="+", type=int, default=[16, 64, 256, 1024], metavar="M")
    parser.add_argument("--group-size", type=int, default=128)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to time", file=sys.stderr)
        return 1
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from report import do_bench_seconds

    import climbq_kernels as cq

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
        times = [do_bench_seconds(lambda: torch.nn.functional.linear(x, dense))]
        for mib in BLOCKS_MIB.values():
            os.environ["CLIMBQ_INT4_DEQUANT_BLOCK_BYTES"] = str(mib << 20)
            times.append(do_bench_seconds(lambda: op(x, qw.packed, qw.scales, qw.zeros, args.group_size, None)))
        print(f"| M={m} | " + " | ".join(f"{t * 1e6:.1f} us" for t in times) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
