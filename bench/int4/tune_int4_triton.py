"""Tune the Triton INT4 matmul launch configs on a GPU and rewrite climbq_kernels/triton/int4_configs.json.

For each LLaMA-like weight (N x K = 4096x4096, 11008x4096, 4096x11008) and each row count M,
every candidate config (split-K GEMV for M <= 16, tiled GEMM for every M, its K split too up to
64 rows) is first checked against the float64 reference (error rule) and then timed with
triton.testing.do_bench (median). The fastest becomes that shape's bucket for M in `by_shape`;
the `default` table takes, per M, the candidate whose mean slowdown against each shape's winner
is smallest.
The device name and the date go into the file; `--raw` also saves every measured time, and each
shape and M's fastest config goes to the results ledger (bench/ledger.py; `--ledger PATH`,
`--no-ledger`).

Run on a GPU machine:  python3 bench/int4/tune_int4_triton.py [--dtype bf16] [--quick] [--raw out.json]
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import sys
from datetime import UTC, datetime
from pathlib import Path

import torch

BENCH_DIR = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(BENCH_DIR), str(BENCH_DIR.parent)]
import ledger  # noqa: E402
from cases import int4_case_name, int4_floor_bytes  # noqa: E402

SHAPES = [(4096, 4096), (11008, 4096), (4096, 11008)]
ROW_COUNTS = [1, 2, 4, 8, 16, 32, 64, 128, 256, 1024]
GEMV_MAX_M = 16
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
GROUP_SIZE = 128
GEMV_TILE_LIMIT = 16384
"""Most elements of the GEMV's (BLOCK_M, BLOCK_N, BLOCK_K / 2) product held per program."""


def _next_power_of_2(m: int) -> int:
    return 1 << (m - 1).bit_length()


GEMV_GRID = {"BLOCK_N": (32, 64, 128), "BLOCK_K": (64, 128, 256), "SPLIT_K": (1, 4, 8, 16), "num_warps": (4, 8),
             "num_stages": (2,)}
GEMM_GRID = {"BLOCK_N": (64, 128, 256), "BLOCK_K": (64, 128), "num_warps": (4, 8), "num_stages": (3, 4)}
GEMM_BLOCK_M = (16, 32, 64, 128, 256)
GEMM_TILE_LIMIT = 256 * 128
"""Most outputs (BLOCK_M x BLOCK_N) per GEMM tile: float32 accumulators in registers. On sm_90
256x128 tiles with BLOCK_K 64 and 8 warps compile without spills and carry 778-797 MMA
multiply-adds per warp instruction in the K loop, against 524-526 at 128x128x128
(bench/int4/int4_triton_sass.py: that loop is bound by instruction issue, not the tensor cores);
128x256 and 256x128 with BLOCK_K 128 spill."""
QUICK = {"BLOCK_N": (64, 128), "BLOCK_K": (64, 128), "SPLIT_K": (4, 8), "num_warps": (4,), "num_stages": (3,)}
"""--quick: each grid restricted to these values (about a tenth of the configs to compile and time)."""
QUICK_WIDE_TILE = 128 * 128
"""Quick GEMM tiles of this many outputs or more take 8 warps (4 would hold their accumulators in
half the threads' registers)."""
GEMM_SPLITS = {"full": (1, 2, 4), "quick": (1, 4)}
"""K slices tried for the GEMM up to GEMM_SPLIT_MAX_M rows, where its tiles alone do not fill the GPU."""
GEMM_SPLIT_MAX_M = 64


def _grid(grid: dict, quick: bool) -> list[dict]:
    if quick:
        grid = {key: tuple(v for v in values if v in QUICK[key]) or values[:1] for key, values in grid.items()}
    return [dict(zip(grid, values, strict=True)) for values in itertools.product(*grid.values())]


def _gemm_point(point: dict, outputs: int, quick: bool) -> dict:
    return dict(point, num_warps=8) if quick and outputs >= QUICK_WIDE_TILE else point


def candidates(m: int, quick: bool = False) -> list[dict]:
    """Launch configs worth timing for M rows (all pass `validate_config`)."""
    found = []
    if m <= GEMV_MAX_M:
        block_m = _next_power_of_2(m)
        found += [{"kernel": "gemv", "BLOCK_M": block_m, **point} for point in _grid(GEMV_GRID, quick)
                  if block_m * point["BLOCK_N"] * point["BLOCK_K"] // 2 <= GEMV_TILE_LIMIT]
    for block_m in (b for b in GEMM_BLOCK_M if b <= max(16, _next_power_of_2(m))):
        splits = GEMM_SPLITS["quick" if quick else "full"] if m <= GEMM_SPLIT_MAX_M else (1,)
        found += [{"kernel": "gemm", "BLOCK_M": block_m, "SPLIT_K": split,
                   **_gemm_point(point, block_m * point["BLOCK_N"], quick)}
                  for point in _grid(GEMM_GRID, quick) for split in splits
                  if block_m * point["BLOCK_N"] <= GEMM_TILE_LIMIT]
    return found


def _key(config: dict) -> str:
    return json.dumps(config, sort_keys=True)


def _table(winners: dict[int, dict]) -> list[dict]:
    """Buckets from {M: config}: max_m = M, the largest M unbounded."""
    last = max(winners)
    return [{"max_m": None if m == last else m, **winners[m]} for m in sorted(winners)]


def build_configs(times: dict[str, dict[int, dict[str, float]]], device: str, dtype: str, date: str) -> dict:
    """The config file from measured seconds times[shape][M][config key] (failed ones absent)."""
    by_shape = {shape: _table({m: json.loads(min(per_m[m], key=per_m[m].get)) for m in per_m})
                for shape, per_m in times.items()}
    default = {}
    for m in sorted({m for per_m in times.values() for m in per_m}):
        slowdowns: dict[str, list[float]] = {}
        for per_m in times.values():
            best = min(per_m[m].values())
            for key, seconds in per_m[m].items():
                slowdowns.setdefault(key, []).append(seconds / best)
        complete = {k: sum(v) / len(v) for k, v in slowdowns.items() if len(v) == len(times)}
        default[m] = json.loads(min(complete, key=complete.get))
    return {"note": f"Tuned by bench/int4/tune_int4_triton.py for {dtype} inputs, group size {GROUP_SIZE}: by_shape "
                    "holds each shape's fastest config per M; default the config with the smallest mean slowdown "
                    "over those shapes.",
            "device": device, "date": date, "default": _table(default), "by_shape": by_shape}


def dumps(configs: dict) -> str:
    """JSON with one bucket per line, so that a retune reads as a short diff."""
    def table(buckets, indent):
        rows = [indent + "  " + json.dumps(b) for b in buckets]
        return "[\n" + ",\n".join(rows) + "\n" + indent + "]"
    head = {k: configs[k] for k in ("note", "device", "date")}
    lines = [f"  {json.dumps(k)}: {json.dumps(v)}," for k, v in head.items()]
    lines.append(f'  "default": {table(configs["default"], "  ")},')
    shapes = [f"    {json.dumps(s)}: {table(t, '    ')}" for s, t in configs["by_shape"].items()]
    lines.append('  "by_shape": {' + ("\n" + ",\n".join(shapes) + "\n  }" if shapes else "}"))
    return "{\n" + "\n".join(lines) + "\n}\n"


def measure(dtype: torch.dtype, quick: bool, shapes=SHAPES,
            row_counts=ROW_COUNTS) -> dict[str, dict[int, dict[str, float]]]:
    from triton.compiler.errors import CompilationError
    from triton.runtime.errors import OutOfResources
    from triton.testing import do_bench

    from climbq_kernels import reference
    from climbq_kernels.testing import assert_error_rule
    from climbq_kernels.triton.int4_matmul import int4_matmul

    gen = torch.Generator().manual_seed(0)
    times = {}
    for n, k in shapes:
        packed, scales, zeros = (t.cuda() for t in reference.quantize_int4(torch.randn(n, k, generator=gen),
                                                                            GROUP_SIZE))
        times[f"{n}x{k}"] = {}
        for m in row_counts:
            x = torch.randn(m, k, generator=gen).to("cuda", dtype)
            ref64 = reference.int4_matmul(x.double(), packed, scales, zeros, GROUP_SIZE)
            ref_lowp = reference.int4_matmul(x, packed, scales, zeros, GROUP_SIZE)
            per_config = {}
            for config in candidates(m, quick):
                run = functools.partial(int4_matmul, x, packed, scales, zeros, GROUP_SIZE, None, config=config)
                try:
                    assert_error_rule(run().float(), ref64, ref_lowp)
                    per_config[_key(config)] = do_bench(run, warmup=10, rep=50, return_mode="median") / 1e3
                except (AssertionError, CompilationError, OutOfResources) as err:  # wrong or too big: not a candidate
                    print(f"skip {n}x{k} M={m} {config}: {type(err).__name__}: {str(err)[:200]}", file=sys.stderr)
            if not per_config:
                raise RuntimeError(f"no candidate config ran correctly for {n}x{k} M={m}")
            times[f"{n}x{k}"][m] = per_config
            best = min(per_config, key=per_config.get)
            print(f"{n}x{k} M={m}: {len(per_config)} configs, fastest {best} at {per_config[best] * 1e6:.1f} us",
                  flush=True)
    return times


def winner_rows(run: ledger.Ledger, times: dict[str, dict[int, dict[str, float]]], dtype: torch.dtype) -> list[dict]:
    """Ledger rows: each shape and M's fastest config (the config in the row), no baseline."""
    found = []
    for shape, per_m in times.items():
        n, k = (int(side) for side in shape.split("x"))
        for m, per_config in per_m.items():
            best = min(per_config, key=per_config.get)
            found.append(run.row(int4_case_name((n, k), GROUP_SIZE, int(m), dtype), "climbq triton (tuned config)",
                                 per_config[best], floor_bytes=int4_floor_bytes((n, k), GROUP_SIZE, int(m),
                                                                                dtype.itemsize),
                                 config=json.loads(best), configs_timed=len(per_config)))
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp16")
    parser.add_argument("--quick", action="store_true", help="a small candidate grid (see QUICK)")
    parser.add_argument("--raw", type=Path, help="also save every measured time (seconds) here")
    parser.add_argument("--out", type=Path, help="config file to write (default: the package's)")
    parser.add_argument("--shapes", nargs="+", default=[f"{n}x{k}" for n, k in SHAPES], metavar="NxK",
                        help="weight shapes to tune (default: %(default)s)")
    parser.add_argument("--rows", nargs="+", type=int, default=ROW_COUNTS, metavar="M",
                        help="row counts to tune (default: %(default)s)")
    ledger.add_arguments(parser)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to tune", file=sys.stderr)
        return 1
    from climbq_kernels.triton._int4_configs import CONFIG_PATH, validate_configs

    run = ledger.Ledger("cuda", "bench/int4/tune_int4_triton.py", ledger.resolve_path(args.ledger, not args.no_ledger),
                        method=f"triton.testing.do_bench median (warmup 10, rep 50); fastest of the "
                               f"{'quick' if args.quick else 'full'} grid")
    shapes = [tuple(int(side) for side in shape.split("x")) for shape in args.shapes]
    times = measure(DTYPES[args.dtype], args.quick, shapes, args.rows)
    if args.raw:
        args.raw.write_text(json.dumps(times, indent=1))
    run.append(winner_rows(run, times, DTYPES[args.dtype]))
    date = datetime.now(UTC).strftime("%Y-%m-%d")
    configs = validate_configs(build_configs(times, torch.cuda.get_device_name(), args.dtype, date))
    out = args.out or CONFIG_PATH
    out.write_text(dumps(configs))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
