"""GPU benchmarks: each case's candidates timed with triton.testing.do_bench (median, L2 flushed).

Also measures the device's copy bandwidth and a large bf16 matmul in the same run, so every
kernel is reported as % of the measured copy bandwidth. Appends its rows to the results ledger
(ledger.py) and writes gpu.json, gpu.md and gpu.png under --out.

Run on a GPU machine: python3 bench/gpu_bench.py --out bench/results/<device>-<date> [--ledger PATH | --no-ledger]
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

import torch
from tqdm import tqdm

BENCH_DIR = Path(__file__).parent
sys.path.insert(0, str(BENCH_DIR))
import climbq_kernels as cq  # noqa: E402
import ledger  # noqa: E402
from report import do_bench_seconds, gpu_copy_bandwidth, header, markdown, save  # noqa: E402


def gpu_case_builders() -> list:
    """Every bench_*.py module's GPU_CASES: callables (gpu backends) -> Case."""
    builders = []
    for path in sorted(BENCH_DIR.glob("bench_*.py")):
        builders += getattr(importlib.import_module(path.stem), "GPU_CASES", [])
    return builders


def bf16_matmul_tflops(n: int = 8192) -> float:
    a, b = (torch.randn(n, n, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    return 2 * n**3 / do_bench_seconds(lambda: a @ b) / 1e12


def plot(all_rows: list[dict], path: Path) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    labels = [f"{r['case']}\n{r['candidate']}" for r in all_rows]
    fig, ax = plt.subplots(figsize=(10, 0.5 * len(labels) + 1))
    ax.barh(labels, [r["pct_copy_bw"] or 0 for r in all_rows])
    ax.set_xlabel("% of measured copy bandwidth (higher is better)")
    ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--only", default="", help="run only the cases whose name contains this text")
    ledger.add_arguments(parser)
    args = parser.parse_args()
    bandwidth = gpu_copy_bandwidth("benchmark")
    if bandwidth is None:
        return 1
    gpu_backends = tuple(name for name in ("triton", "cuda") if cq.backends()[name].available)
    run = ledger.Ledger("cuda", "bench/gpu_bench.py", ledger.resolve_path(args.ledger, not args.no_ledger),
                        method="triton.testing.do_bench median, L2 flushed")
    tflops = bf16_matmul_tflops()
    all_rows = []
    for build in tqdm(gpu_case_builders(), desc="cases"):
        case = build(gpu_backends)
        if args.only not in case.name:
            continue
        timings = {label: do_bench_seconds(fn)
                   for label, fn in tqdm(case.candidates.items(), desc=case.name, leave=False)}
        all_rows += run.append(run.case_rows(case, timings, bandwidth, bf16_matmul_tflops=tflops))
    title = header("GPU benchmarks", run.context) + f", bf16 matmul {tflops:.0f} TFLOP/s"
    path = save(args.out, "gpu", title, all_rows)
    plot(all_rows, args.out / "gpu.png")
    print(markdown(all_rows, title))
    print(f"saved to {path}; {len(all_rows)} ledger rows appended to {run.path or '(none: --no-ledger)'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
