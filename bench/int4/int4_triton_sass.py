"""Count the SASS instructions of the Triton INT4 kernels' K loop, compiled for sm_90 without a
GPU: what each thread issues per K step, and how many of those are global loads.

A static count, not a timing: it shows where a kernel spends instructions (per-byte scale
loads, per-step cross-thread reductions, integer-to-float conversions) before a GPU is at hand
to time it. Integer arguments that are multiples of 16 at run time (pointers, N, K, the group
count, the split's byte count) get Triton's divisibility hint, as its JIT would give them.

    python3 bench/int4/int4_triton_sass.py [--out DIR]     (no GPU needed; TRITON_INTERPRET unset)
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(BENCH_DIR), str(BENCH_DIR.parent)]

# (kernel, x dtype, constexprs, num_warps, num_stages): the tuned H100 configs of
# climbq_kernels/triton/int4_configs.json at M = 1 and 8 (GEMV) and 64 (GEMM), g = 128, and g = 32
# where a K step spans several groups; and two GEMM tiles for M >= 256 (K a multiple of BLOCK_K).
PLAN = [
    ("gemv", "bf16", dict(GROUP_SIZE=128, HAS_BIAS=False, SPLIT_K=8, BLOCK_M=1, BLOCK_N=64, BLOCK_K=64), 4, 2),
    ("gemv", "bf16", dict(GROUP_SIZE=32, HAS_BIAS=False, SPLIT_K=8, BLOCK_M=1, BLOCK_N=64, BLOCK_K=64), 4, 2),
    ("gemv", "bf16", dict(GROUP_SIZE=128, HAS_BIAS=False, SPLIT_K=8, BLOCK_M=8, BLOCK_N=16, BLOCK_K=64), 4, 2),
    ("gemm", "bf16", dict(GROUP_SIZE=128, HAS_BIAS=False, EMULATE_BF16=False, EVEN_K=True, SPLIT_K=1, BLOCK_M=64,
                          BLOCK_N=64, BLOCK_K=128), 4, 3),
    ("gemm", "bf16", dict(GROUP_SIZE=128, HAS_BIAS=False, EMULATE_BF16=False, EVEN_K=True, SPLIT_K=1, BLOCK_M=128,
                          BLOCK_N=128, BLOCK_K=128), 8, 4),
    ("gemm", "bf16", dict(GROUP_SIZE=128, HAS_BIAS=False, EMULATE_BF16=False, EVEN_K=True, SPLIT_K=1, BLOCK_M=256,
                          BLOCK_N=128, BLOCK_K=64), 8, 3),
]
HINTED = {"x_ptr", "packed_ptr", "scales_ptr", "zeros_ptr", "bias_ptr", "out_ptr", "partial_ptr", "N", "K", "groups",
          "bytes_per_split", "features_per_split"}
INSTRUCTION = re.compile(r"/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)")
LABEL = re.compile(r"\s*(\.L_x_\d+):")
BRANCH = re.compile(r"BRA\s+`?\(?(\.L_x_\d+)")


def sass_of(kernel_name: str, dtype: str, constexprs: dict, num_warps: int, num_stages: int) -> str:
    """The kernel compiled for sm_90, disassembled with the nvdisasm that ships with Triton."""
    import triton

    from climbq_kernels.triton.registry import TORCH_TO_TRITON, all_kernels, aot_stages

    entry = all_kernels()[f"int4_{kernel_name}"]
    torch_dtype = next(t for t, name in TORCH_TO_TRITON.items() if name == dtype)
    cubin_bytes = aot_stages(entry, torch_dtype, 90, constexprs=constexprs,
                             divisible_by_16=HINTED & set(entry.kernel.arg_names),
                             options={"num_warps": num_warps, "num_stages": num_stages})["cubin"]
    nvdisasm = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "nvdisasm"
    with tempfile.NamedTemporaryFile(suffix=".cubin") as cubin:
        cubin.write(cubin_bytes)
        cubin.flush()
        return subprocess.run([str(nvdisasm), "-c", cubin.name], capture_output=True, text=True, check=True).stdout


def k_loop(sass: str) -> list[str]:
    """The opcodes of the longest backward branch's body: the K loop in these kernels."""
    lines = sass.splitlines()
    labels = {m.group(1): i for i, line in enumerate(lines) if (m := LABEL.match(line))}
    loop = (0, -1)
    for i, line in enumerate(lines):
        m = BRANCH.search(line)
        if m and labels.get(m.group(1), i) < i and i - labels[m.group(1)] > loop[1] - loop[0]:
            loop = (labels[m.group(1)], i)
    return [m.group(1) for line in lines[loop[0]:loop[1] + 1] if (m := INSTRUCTION.search(line))]


def count(kernel_name: str, dtype: str, constexprs: dict, num_warps: int, num_stages: int) -> dict:
    body = k_loop(sass_of(kernel_name, dtype, constexprs, num_warps, num_stages))
    loads = [op for op in body if op.startswith(("LDG", "LDGSTS"))]
    opcodes = collections.Counter(op.split(".")[0] for op in body)
    weights = constexprs["BLOCK_N"] * constexprs["BLOCK_K"] // (32 * num_warps)
    # Multiply-adds of the program's K step per instruction a warp issues: an H100 SM issues 4
    # warp instructions and its tensor cores do about 2100 bf16 multiply-adds a cycle, so a GEMM
    # loop below ~530 is bound by instruction issue, not by the tensor cores.
    macs = constexprs["BLOCK_M"] * constexprs["BLOCK_N"] * constexprs["BLOCK_K"] / (len(body) * num_warps)
    return {"kernel": kernel_name, "dtype": dtype, **constexprs, "num_warps": num_warps, "num_stages": num_stages,
            "instructions_per_step": len(body), "weights_per_thread_per_step": weights,
            "macs_per_warp_instruction": round(macs), "local_memory_ops": opcodes["LDL"] + opcodes["STL"],
            "global_loads_per_step": len(loads), "loads": dict(collections.Counter(loads)),
            "shuffles": opcodes["SHFL"], "shared_stores": opcodes["STS"],
            "tensor_core_ops": opcodes["HGMMA"] + opcodes["HMMA"],
            "top": dict(opcodes.most_common(8))}


def markdown(rows: list[dict]) -> str:
    lines = ["| kernel | config | instructions / K step | weights / thread / step | MACs / warp instruction | "
             "global loads / step | shared stores / step | spills (LDL/STL) / step | tensor-core ops / step | "
             "most frequent |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        config = (f"g={r['GROUP_SIZE']} M{r['BLOCK_M']} N{r['BLOCK_N']} K{r['BLOCK_K']} "
                  f"w{r['num_warps']} s{r['num_stages']}")
        top = ", ".join(f"{op} {n}" for op, n in r["top"].items())
        lines.append(f"| {r['kernel']} {r['dtype']} | {config} | {r['instructions_per_step']} | "
                     f"{r['weights_per_thread_per_step']} | {r['macs_per_warp_instruction']} | "
                     f"{r['global_loads_per_step']} | {r['shared_stores']} | {r['local_memory_ops']} | "
                     f"{r['tensor_core_ops']} | {top} |")
    return "\n".join(lines) + "\n"


def report(rows: list[dict], table: str, out: Path | None, stem: str, title: str) -> None:
    """Print the table; with `out`, also write it as <stem>.md under `title` and the rows as <stem>.json."""
    print(table)
    if out:
        out.mkdir(parents=True, exist_ok=True)
        (out / f"{stem}.md").write_text(f"# {title}\n\n{table}")
        (out / f"{stem}.json").write_text(json.dumps(rows, indent=1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help="write int4_triton_sass.md and .json here")
    args = parser.parse_args()
    if os.environ.get("TRITON_INTERPRET") == "1":
        sys.exit("unset TRITON_INTERPRET: the interpreter cannot compile kernels")
    rows = [count(*entry) for entry in PLAN]
    report(rows, markdown(rows), args.out, "int4_triton_sass",
           "Triton INT4 kernels: SASS of the K loop (sm_90, static)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
