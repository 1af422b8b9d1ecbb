"""Count the SASS of the CUDA INT4 tensor-core kernels' K loop (sm_90a) without a GPU: what a lane
issues per k-block and per weight, the loads and barriers among it, and each kernel's registers
and spills.

Reads the object file the extension build leaves (`python3 setup.py build_ext --inplace` puts it
under build/temp*/csrc/cuda/int4_mma.o) with cuobjdump, from the CUDA toolkit or the copy Triton
ships. Static counts, not timings: they show what a change costs in instructions before a GPU is
at hand to time it.

    python3 bench/int4/int4_cuda_sass.py [--object PATH] [--dtype BFloat16|Half] [--out DIR]
"""

from __future__ import annotations

import argparse
import collections
import re
import shutil
import subprocess
import sys
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(BENCH_DIR), str(BENCH_DIR.parent)]
from int4.int4_triton_sass import INSTRUCTION, report  # noqa: E402

KERNEL = re.compile(r"\b(int4_mma_kernel|int4_mma_registers_kernel)<c10::(\w+), ([^<>]*)>")
"""An MMA kernel instantiation: its name, x's c10 dtype, and the rest of its template arguments
(pipelined: n-tiles, stages, row tables; registers: n-tiles)."""
ADDRESS = re.compile(r"/\*([0-9a-f]{4,})\*/")
BRANCH_TARGET = re.compile(r"\bBRA\s+(?:`\(\.L_x_\d+\)|0x([0-9a-f]+))")
RESOURCES = re.compile(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)")
ROWS_PER_LANE = 2           # a lane's rows in each 16-row tile: g and g + 8
FEATURES_PER_K_BLOCK = 32   # a lane's features of each row per k-block


def template_arguments(kernel: str, arguments: str) -> tuple[int, bool | None] | None:
    """(n-tiles, row tables or None) of an instantiation's template arguments after the dtype;
    None where they carry a count of 16-row tiles a warp other than 1: what is counted is the
    kernels the dispatcher launches, one tile a warp."""
    values = [value.strip() for value in arguments.split(",")]
    numbers = [int(value) for value in values if value.isdigit()]
    flags = [value == "true" for value in values if value in ("true", "false")]
    with_tile_count = len(numbers) == (3 if kernel == "int4_mma_kernel" else 2)
    if with_tile_count and numbers[1] != 1:
        return None
    return numbers[0], (flags[0] if flags else None)


def _cuobjdump() -> str:
    found = shutil.which("cuobjdump")
    if found:
        return found
    import triton
    return str(Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump")


def _demangle(names: list[str]) -> list[str]:
    done = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True, check=True)
    return done.stdout.splitlines()


def _k_loop(lines: list[str]) -> list[str]:
    """Opcodes of the longest backward branch's body: the kernels' loop over k-blocks."""
    at = {int(m.group(1), 16): i for i, line in enumerate(lines) if (m := ADDRESS.search(line))}
    loop = (0, -1)
    for i, line in enumerate(lines):
        m = BRANCH_TARGET.search(line)
        target = at.get(int(m.group(1), 16)) if m and m.group(1) else None
        if target is not None and target < i and i - target > loop[1] - loop[0]:
            loop = (target, i)
    return [m.group(1) for line in lines[loop[0]:loop[1] + 1] if (m := INSTRUCTION.search(line))]


def count(object_path: Path, dtype: str) -> list[dict]:
    """One row per MMA kernel instantiation for x's `dtype` (c10 name) in the object."""
    tool = _cuobjdump()
    sass = subprocess.run([tool, "-sass", "-arch", "sm_90a", str(object_path)], capture_output=True, text=True,
                          check=True).stdout
    usage = subprocess.run([tool, "-res-usage", "-arch", "sm_90a", str(object_path)], capture_output=True, text=True,
                           check=True).stdout
    resources = dict(re.findall(r"Function (\S+):\s*\n\s*(REG:[^\n]*)", usage))
    bodies = re.split(r"\n\s*Function : ", sass)[1:]
    names = [body.split("\n", 1)[0].strip() for body in bodies]
    rows = []
    for mangled, demangled, body in zip(names, _demangle(names), bodies, strict=True):
        m = KERNEL.search(demangled)
        if not m or m.group(2) != dtype:
            continue
        kernel = m.group(1)
        parsed = template_arguments(kernel, m.group(3))
        if parsed is None:
            continue
        n_tiles, row_tables = parsed
        loop = _k_loop(body.splitlines())
        ops = collections.Counter(op.split(".")[0] for op in loop)
        reg, stack, _, local = (int(v) for v in RESOURCES.search(resources.get(mangled, "")).groups())
        weights = ROWS_PER_LANE * FEATURES_PER_K_BLOCK
        rows.append({
            "kernel": "pipelined" if kernel == "int4_mma_kernel" else "registers",
            "n_tiles": n_tiles, "row_tables": row_tables,
            "registers": reg, "spill_bytes": stack + local, "instructions_per_k_block": len(loop),
            "weights_per_lane": weights, "instructions_per_weight": round(len(loop) / weights, 2),
            "global_loads": ops["LDG"] + ops["LDGSTS"], "shared_loads": ops["LDS"] + ops["LDSM"],
            "barriers": ops["BAR"], "mma": ops["HMMA"],
        })
    return sorted(rows, key=lambda r: (r["kernel"], r["n_tiles"], bool(r["row_tables"])))


def markdown(rows: list[dict]) -> str:
    lines = ["| kernel | n-tiles (M <= 8n) | row tables | registers | spill bytes | "
             "instructions / k-block | weights / lane | instructions / weight | global loads | shared loads | "
             "barriers | MMAs |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        tables = "" if r["row_tables"] is None else ("yes" if r["row_tables"] else "no")
        lines.append(f"| {r['kernel']} | {r['n_tiles']} | {tables} | {r['registers']} | "
                     f"{r['spill_bytes']} | {r['instructions_per_k_block']} | {r['weights_per_lane']} | "
                     f"{r['instructions_per_weight']} | {r['global_loads']} | {r['shared_loads']} | "
                     f"{r['barriers']} | {r['mma']} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--object", type=Path, help="int4_mma.o (default: the build's, under build/)")
    parser.add_argument("--dtype", default="BFloat16", choices=("BFloat16", "Half"))
    parser.add_argument("--out", type=Path, help="write int4_cuda_sass.md and .json here")
    args = parser.parse_args()
    objects = [args.object] if args.object else sorted(BENCH_DIR.parent.glob("build/temp*/csrc/cuda/int4_mma.o"))
    if not objects or not objects[0].exists():
        sys.exit("no int4_mma.o: build the extension first (python3 setup.py build_ext --inplace) or pass --object")
    rows = count(objects[0], args.dtype)
    report(rows, markdown(rows), args.out, "int4_cuda_sass",
           "CUDA INT4 MMA kernels: SASS of the K loop (sm_90a, static)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
