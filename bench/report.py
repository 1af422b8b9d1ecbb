"""Turn measured timings into the side-by-side table every runner prints and saves.

Each row: candidate, median time, speed-up against the case's first candidate (the
reference), and % of the copy-bandwidth floor (floor time / measured time).
"""

from __future__ import annotations

import json
import platform
import sys
from datetime import datetime, timezone
from pathlib import Path

import torch


def copy_bandwidth_bytes_per_s(device: str, timer, size_bytes: int = 256 * 2**20) -> float:
    """Measured device-to-device copy bandwidth: bytes read + written per second by `clone`."""
    src = torch.randn(size_bytes // 4, device=device)
    dst = torch.empty_like(src)
    seconds = timer(lambda: dst.copy_(src))
    return 2 * size_bytes / seconds


class CpuCacheFlush:
    """Called before each timed CPU call: reads a buffer several times the size of any server's
    last-level cache, so that the call finds its operands in DRAM, as a layer of a model does
    when the layers before it have run (the CPU counterpart of do_bench's L2 flush). Reading, not
    writing, leaves no dirty lines for the timed call to write back; the read runs on torch's
    threads, which it leaves awake as the ops between two layers would."""

    def __init__(self, size_bytes: int = 256 * 2**20):
        self.buffer = torch.ones(size_bytes // 4)

    def __call__(self) -> None:
        self.buffer.sum()


def do_bench_seconds(fn) -> float:
    """GPU time of fn in seconds: triton.testing.do_bench's median, L2 flushed between calls."""
    from triton.testing import do_bench
    return do_bench(fn, warmup=25, rep=100, return_mode="median") / 1e3


def gpu_copy_bandwidth(task: str) -> float | None:
    """The GPU's measured copy bandwidth (bytes/s, 1 GiB copied), or None with a message saying
    there is nothing to `task` where there is no CUDA device."""
    if not torch.cuda.is_available():
        print(f"no CUDA device: nothing to {task}", file=sys.stderr)
        return None
    return copy_bandwidth_bytes_per_s("cuda", do_bench_seconds, size_bytes=1 << 30)


def rows(case, timings: dict[str, float], bandwidth: float) -> list[dict]:
    baseline = timings[next(iter(case.candidates))]
    floor = case.floor_bytes / bandwidth
    return [{"case": case.name, "candidate": label, "median_ms": seconds * 1e3,
             "speedup_vs_reference": baseline / seconds, "pct_of_copy_bandwidth": 100 * floor / seconds}
            for label, seconds in timings.items()]


def markdown(all_rows: list[dict], header: str) -> str:
    lines = [header, "", "| case | candidate | median ms | x reference | % of copy bandwidth |", "|---|---|---|---|---|"]
    lines += [f"| {r['case']} | {r['candidate']} | {r['median_ms']:.3f} | {r['speedup_vs_reference']:.2f}x | "
              f"{r['pct_of_copy_bandwidth']:.1f}% |" for r in all_rows]
    return "\n".join(lines) + "\n"


def environment(device: str, bandwidth: float) -> dict:
    name = torch.cuda.get_device_name() if device == "cuda" else (platform.processor() or platform.machine())
    return {"device": name, "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "copy_bandwidth_GBps": bandwidth / 1e9}


def save(out_dir: Path, stem: str, env: dict, all_rows: list[dict]) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{stem}.json").write_text(json.dumps({"environment": env, "results": all_rows}, indent=2))
    header = (f"# {stem}: {env['device']}, {env['date']}, torch {env['torch']}, "
              f"copy bandwidth {env['copy_bandwidth_GBps']:.1f} GB/s")
    path = out_dir / f"{stem}.md"
    path.write_text(markdown(all_rows, header))
    return path
