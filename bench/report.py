"""Timing helpers every runner shares, and the side-by-side table it prints.

A table row is a ledger row (ledger.py): candidate, median time, ratio against the case's first
candidate, and % of the copy-bandwidth floor (floor time / measured time) where the run measured
the copy bandwidth.
"""

from __future__ import annotations

import json
import sys
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


def _cell(value, fmt: str) -> str:
    return "" if value is None else format(value, fmt)


def markdown(rows: list[dict], header: str) -> str:
    lines = [header, "", "| case | candidate | median ms | x first candidate | GB/s | % of copy bandwidth |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['case']} | {r['candidate']} | {r['median_ms']:.3f} | {_cell(r['ratio'], '.2f')}x | "
              f"{_cell(r['gb_s'], '.1f')} | {_cell(r['pct_copy_bw'], '.1f')}% |" for r in rows]
    return "\n".join(lines) + "\n"


def header(title: str, context: dict) -> str:
    """A table's title line: what ran, where, when, on which commit."""
    versions = ", ".join(f"{k} {v}" for k, v in context["versions"].items() if v)
    return f"# {title}: {context['device']}, {context['date']}, commit {str(context['commit'])[:12]}, {versions}"


def save(out_dir: Path, stem: str, title: str, rows: list[dict]) -> Path:
    """<stem>.json (the rows) and <stem>.md (the table) under out_dir; returns the .md path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{stem}.json").write_text(json.dumps(rows, indent=1))
    path = out_dir / f"{stem}.md"
    path.write_text(markdown(rows, title))
    return path
