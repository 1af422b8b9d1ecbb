"""Every benchmark family in one run: what `climbq bench` drives.

Families (`--only` takes a comma list of these names):

  climbq_act, climbq_weight, fake_quant, class_stats, int4, acs_scores, rcaq_encoder
      the kernel cases of bench/bench_<family>.py (CPU_CASES; on CUDA its GPU_CASES): each
      candidate (reference, torch.compile of it, PyTorch's native op, peers, ours) against the
      case's first candidate, with GB/s of the case's floor traffic and % of the copy bandwidth
      measured at the start of the same run. `--quick` builds the same cases from bench/cases.py
      at smaller sizes (two sizes a kernel, INT4 at three batch sizes).
  host_overhead
      bench/host_overhead.py: host time of one quantizer call against PyTorch's fake quant.
  qat_step
      bench/qat_step.py: one QAT training step, resnet18 and a small ViT, against float, plain
      PyTorch modules and torch.ao.

Timing. CPU kernel cases as bench/int4/int4_cpu_interleaved.py times them: rounds in which
every candidate runs back to back (order rotating), caches flushed before each call
(report.CpuCacheFlush, as the pytest-benchmark runner does), ratios taken within a round. CUDA
kernel cases as bench/gpu_bench.py times them: triton.testing.do_bench's median, L2 flushed.
host_overhead and qat_step keep their own interleaved methods.

Output: rows to the results ledger (bench/ledger.py: `--ledger PATH`, `--no-ledger`), and under
`--out`: results.md (one table per family), results.json (the rows), bandwidth.png (GB/s against
the case's traffic per kernel and candidate), int4_batch.png (INT4 speed-up against batch size,
where the run has several) and qat_step.png (step time per model and candidate).

    climbq bench [--quick] [--only climbq_act,qat_step] [--out DIR] [--ledger PATH | --no-ledger]
    python3 bench/run_all.py [the same options]
"""

from __future__ import annotations

import argparse
import importlib
import json
import re
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

BENCH_DIR = Path(__file__).resolve().parent
sys.path[:0] = [str(BENCH_DIR), str(BENCH_DIR.parent)]

import climbq_kernels as cq  # noqa: E402
import ledger  # noqa: E402
import qat_step  # noqa: E402
from cases import (  # noqa: E402
    Case,
    class_stats_case,
    climbq_act_case,
    climbq_weight_case,
    cpu_backends,
    disagreement_score_case,
    error_vector_score_case,
    int4_matmul_case,
    lsq_per_channel_case,
    per_sample_bits_case,
    rcaq_encoder_case,
)
from climbq_kernels.testing import median_seconds  # noqa: E402
from int4.int4_cpu_interleaved import SLOW_PEER, interleaved_seconds, summarize  # noqa: E402
from report import CpuCacheFlush, copy_bandwidth_bytes_per_s, do_bench_seconds, gpu_copy_bandwidth, header  # noqa: E402

SOURCE = "bench/run_all.py (climbq bench)"
KERNEL_FAMILIES = ("climbq_act", "climbq_weight", "fake_quant", "class_stats", "int4", "acs_scores", "rcaq_encoder")
FAMILIES = (*KERNEL_FAMILIES, "host_overhead", "qat_step")


def quick_cases(family: str, device: str, backends: tuple[str, ...]) -> list[Case]:
    """The family's cases at `--quick` sizes, from the builders its bench_<family>.py uses."""
    f32, bf16 = torch.float32, torch.bfloat16
    if family == "climbq_act":
        return [climbq_act_case(device, f32, shape=(32, n), backends=backends) for n in (8192, 32768)]
    if family == "climbq_weight":
        return [climbq_weight_case(device, f32, shape=s, backends=backends) for s in ((128, 128, 3, 3), (1024, 1024))]
    if family == "fake_quant":
        return [*(lsq_per_channel_case(device, f32, shape=(b, 32, 16, 16), backends=backends) for b in (8, 32)),
                per_sample_bits_case(device, f32, shape=(16, 32, 16, 16), backends=backends)]
    if family == "class_stats":
        return [class_stats_case(device, f32, shape=s, num_classes=100, backends=backends)
                for s in ((256, 512), (1024, 2048))]
    if family == "int4":
        return [int4_matmul_case(device, bf16, (2048, 2048), batch, backends=backends) for batch in (1, 4, 16)]
    if family == "acs_scores":
        return [*(error_vector_score_case(device, f32, shape=s, backends=backends) for s in ((1024, 10), (256, 1000))),
                disagreement_score_case(device, f32, shape=(256, 1000), backends=backends)]
    if family == "rcaq_encoder":
        return [rcaq_encoder_case(device, f32, points=n, backends=backends) for n in (1000, 10_000)]
    raise ValueError(f"{family} is not a kernel family")


def kernel_cases(family: str, device: str, quick: bool) -> list[Case]:
    """The family's cases: quick sizes, or bench_<family>.py's own CPU_CASES / GPU_CASES."""
    backends = cpu_backends() if device == "cpu" else \
        tuple(name for name in ("triton", "cuda") if cq.backends()[name].available)
    if quick:
        return quick_cases(family, device, backends)
    module = importlib.import_module(f"bench_{family}")
    if device != "cpu":
        return [build(backends) for build in module.GPU_CASES]
    for case in module.CPU_CASES:
        if family == "int4" and case.name.endswith("float32") and " M=1 " not in case.name:
            case.candidates.pop(SLOW_PEER, None)  # seconds a call, as int4_cpu_interleaved.py leaves it out
    return list(module.CPU_CASES)


def _runnable(case, log: Callable[[str], None]) -> tuple[dict, dict[str, str]]:
    """The case's candidates that run (each called once: compiles happen here), and why the rest did not."""
    ready, skipped = {}, {}
    for label, call in case.candidates.items():
        try:
            call()
        except Exception as error:  # reported beside the table; the run goes on
            skipped[label] = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"[:300]
            log(f"  {case.name} | {label}: skipped ({skipped[label]})")
            continue
        ready[label] = call
    return ready, skipped


def _compile_label(labels) -> str | None:
    return next((label for label in labels if label.startswith("torch.compile")), None)


def _torch_op_label(labels) -> str | None:
    """The candidate that is PyTorch's own op ("torch learnable fake quant", "torch _weight_int4pack_mm...")."""
    return next((label for label in labels if label.startswith("torch ")), None)


def time_kernel_case(case, device: str, rounds: int, run: ledger.Ledger, copy_bytes_per_s: float | None,
                     family: str, flush, log: Callable[[str], None]) -> tuple[list[dict], dict[str, str]]:
    """Ledger rows of one case: median, GB/s, % of copy bandwidth, ratio against its first
    candidate (per-round quartiles on the CPU), its torch.compile candidate and PyTorch's op."""
    candidates, skipped = _runnable(case, log)
    if not candidates:
        return [], skipped
    if device == "cpu":
        times = interleaved_seconds(candidates, rounds, before_each=flush, warmup=1)
        summary = {r["candidate"]: r for r in summarize(case.name, times)} if rounds > 1 else {}
        medians = {label: statistics.median(seconds) for label, seconds in times.items()}
        method = f"interleaved rounds ({rounds}), caches flushed before each call, ratios within a round"
    else:
        medians = {label: do_bench_seconds(call) for label, call in candidates.items()}
        summary, method = {}, "triton.testing.do_bench median, L2 flushed"
    baseline = next(iter(medians))
    compiled, torch_op = _compile_label(medians), _torch_op_label(medians)
    rows = []
    for label, seconds in medians.items():
        extra = {"family": family, "method": method}
        if label in summary:
            extra.update(round_ratio_q1=summary[label]["ratio_q1"], round_ratio_median=summary[label]["ratio_median"],
                         round_ratio_q3=summary[label]["ratio_q3"], rounds=rounds)
        if compiled:
            extra.update(ratio_vs_compile=medians[compiled] / seconds, compile_candidate=compiled)
        if torch_op:
            extra.update(ratio_vs_torch_op=medians[torch_op] / seconds, torch_op_candidate=torch_op)
        rows.append(run.row(case.name, label, seconds, floor_bytes=case.floor_bytes, copy_bytes_per_s=copy_bytes_per_s,
                            baseline_s=medians[baseline], ratio_vs=baseline, **extra))
    return rows, skipped


def run_kernel_family(family: str, device: str, quick: bool, run: ledger.Ledger, copy_bytes_per_s: float | None,
                      flush, log: Callable[[str], None]) -> tuple[list[dict], dict[str, str]]:
    rows, skipped = [], {}
    rounds = 5 if quick else 15
    for case in kernel_cases(family, device, quick):
        log(f"  {case.name}")
        case_rows, case_skipped = time_kernel_case(case, device, rounds, run, copy_bytes_per_s, family, flush, log)
        rows += case_rows
        skipped.update({f"{case.name} | {label}": reason for label, reason in case_skipped.items()})
    return rows, skipped


def run_host_overhead(quick: bool, run: ledger.Ledger) -> list[dict]:
    """bench/host_overhead.py's cases as ledger rows (its own interleaved method, one thread)."""
    import host_overhead

    rounds, calls = (5, 20) if quick else (15, 50)
    method = (f"interleaved rounds ({rounds}) of the median of {calls} calls, 1 thread, ratios within a round "
              "(bench/host_overhead.py)")
    rows = []
    for case, candidates in host_overhead.run(rounds, calls).items():
        baseline = next(iter(candidates))
        for name, result in candidates.items():
            q1, median, q3 = statistics.quantiles(result["ratios"], n=4, method="inclusive")
            rows.append(run.row(case, name, result["median_s"], baseline_s=candidates[baseline]["median_s"],
                                ratio_vs=baseline, family="host_overhead", method=method, round_ratio_q1=q1,
                                round_ratio_median=median, round_ratio_q3=q3, rounds=rounds))
    return rows


def _cell(value, fmt: str, suffix: str = "") -> str:
    return "" if value is None else f"{format(value, fmt)}{suffix}"


def kernel_markdown(rows: list[dict], title: str, skipped: dict[str, str]) -> str:
    """The table of a kernel or host family: ratios are the other candidate's time / this one's
    (> 1: this one is faster); "x PyTorch's op" against the candidate that is PyTorch's own op."""
    lines = [title, "", "| case | candidate | median ms | x first candidate, per round: median (quartiles) | "
             "x torch.compile | x PyTorch's op | GB/s | % of copy bandwidth |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "round_ratio_median" in r:
            first = f"{r['round_ratio_median']:.2f}x ({r['round_ratio_q1']:.2f}-{r['round_ratio_q3']:.2f})"
        else:
            first = _cell(r["ratio"], ".2f", "x")
        against = " | ".join(_cell(r.get(key), ".2f", "x") for key in ("ratio_vs_compile", "ratio_vs_torch_op"))
        lines.append(f"| {r['case']} | {r['candidate']} | {r['median_ms']:.4g} | {first} | {against} | "
                     f"{_cell(r['gb_s'], '.1f')} | {_cell(r['pct_copy_bw'], '.1f', '%')} |")
    lines += [f"| {what} | skipped: {reason} | | | | | |" for what, reason in skipped.items()]
    return "\n".join(lines) + "\n"


def _kind(case: str) -> str:
    """A case name without its sizes: the line a case belongs to in the bandwidth plot."""
    return re.sub(r"\s*\([\d, ]+\)|\s*\d+x\d+|\s*M=\d+", "", case)


def plot_bandwidth(rows: list[dict], path: Path) -> Path | None:
    """GB/s against the case's floor traffic, one panel per family, one line per (kind, candidate).
    INT4 at batch 1 only: the memory-bound case, where bandwidth is the measure (int4_batch.png
    has the batches)."""
    plt = _pyplot()
    kernel_rows = [r for r in rows if r.get("family") in KERNEL_FAMILIES and r["gb_s"]
                   and not (r["family"] == "int4" and "M=1 " not in r["case"])]
    if plt is None or not kernel_rows:
        return None
    families = list(dict.fromkeys(r["family"] for r in kernel_rows))
    fig, axes = plt.subplots(len(families), 1, figsize=(9, 3.2 * len(families)), squeeze=False)
    for ax, family in zip(axes[:, 0], families, strict=True):
        lines: dict[str, list[tuple[float, float]]] = {}
        for r in (r for r in kernel_rows if r["family"] == family):
            size = r["gb_s"] * r["median_ms"] / 1e3 * 1e9  # the floor bytes back from GB/s and time
            lines.setdefault(f"{_kind(r['case'])} | {r['candidate']}", []).append((size / 2**20, r["gb_s"]))
        for label, points in lines.items():
            points.sort()
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=label)
        copy = next((r["copy_gb_s"] for r in kernel_rows if r.get("copy_gb_s")), None)
        if copy:
            ax.axhline(copy, color="grey", linestyle="--", linewidth=1, label=f"copy bandwidth {copy:.0f} GB/s")
        ax.set_xscale("log")
        ax.set_xlabel("floor traffic, MiB")
        ax.set_ylabel("GB/s")
        ax.set_title(family, fontsize=9)
        ax.legend(fontsize=6)
    return _save(fig, path)


def plot_int4_batches(rows: list[dict], path: Path) -> Path | None:
    """INT4 speed-up (first candidate's time / this one's) against batch size, where there are several."""
    plt = _pyplot()
    lines: dict[str, list[tuple[int, float]]] = {}
    for r in rows:
        batch = re.search(r"M=(\d+)", r["case"])
        if r.get("family") == "int4" and batch and r["ratio"] and r["candidate"] != r["ratio_vs"]:
            shape = re.sub(r"\s*M=\d+", "", r["case"])
            lines.setdefault(f"{shape} | {r['candidate']} vs {r['ratio_vs']}", []).append(
                (int(batch.group(1)), r["ratio"]))
    if plt is None or not any(len({b for b, _ in points}) > 1 for points in lines.values()):
        return None
    fig, ax = plt.subplots(figsize=(9, 4.5))
    for label, points in lines.items():
        points.sort()
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=label)
    ax.axhline(1.0, color="grey", linewidth=1)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("batch size M")
    ax.set_ylabel("speed-up (baseline time / candidate's)")
    ax.legend(fontsize=6)
    return _save(fig, path)


def _pyplot():
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    fig.clear()
    return path


def run(families=FAMILIES, quick: bool = False, out: Path | None = None, ledger_path: Path | None = None,
        device: str | None = None, threads: int | None = None, log: Callable[[str], None] = print) -> dict:
    """Run `families` in order; returns {"rows", "markdown", "files", "skipped"}; rows to `ledger_path`.

    threads: torch's thread count for the run (None: torch's default, all cores; host_overhead
    always runs on one)."""
    unknown = [f for f in families if f not in FAMILIES]
    if unknown:
        raise ValueError(f"unknown benchmark(s) {', '.join(unknown)}: choose from {', '.join(FAMILIES)}")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return _run(families, quick, out, ledger_path, device, log)
    finally:
        torch.set_num_threads(before)


def _run(families, quick: bool, out: Path | None, ledger_path: Path | None, device: str,
         log: Callable[[str], None]) -> dict:
    if device == "cpu":
        qat_step.warn_if_loaded(log)
    run_ledger = ledger.Ledger(device, SOURCE, ledger_path, method="per family (see each row)")
    copy_bytes_per_s = flush = None
    if any(f in KERNEL_FAMILIES for f in families):
        if device == "cpu":
            copy_bytes_per_s, flush = copy_bandwidth_bytes_per_s("cpu", median_seconds), CpuCacheFlush()
        else:
            copy_bytes_per_s = gpu_copy_bandwidth("benchmark")
        log(f"copy bandwidth: {_cell(copy_bytes_per_s and copy_bytes_per_s / 1e9, '.1f')} GB/s")
    sections = [header(f"climbq bench{' --quick' if quick else ''}", run_ledger.context), ""]
    all_rows, skipped, qat_results = [], {}, None
    for family in families:
        start = time.perf_counter()
        log(f"{family}:")
        if family in KERNEL_FAMILIES:
            rows, family_skipped = run_kernel_family(family, device, quick, run_ledger, copy_bytes_per_s, flush, log)
            sections.append(kernel_markdown(rows, f"## {family}", family_skipped))
            skipped.update(family_skipped)
        elif family == "host_overhead":
            rows = run_host_overhead(quick, run_ledger)
            sections.append(kernel_markdown(rows, "## host_overhead", {}))
        else:
            qat_results = qat_step.run(quick=quick, device=device, log=lambda text: log(f"  {text}"))
            rows = [dict(r, family="qat_step") for r in qat_step.ledger_rows(run_ledger, qat_results)]
            sections.append(qat_step.markdown(qat_results, "## qat_step"))
        all_rows += run_ledger.append(rows)
        log(f"{family}: {len(rows)} rows in {time.perf_counter() - start:.0f} s")
    text = "\n".join(sections)
    files = []
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.md").write_text(text)
        (out / "results.json").write_text(json.dumps(all_rows, indent=1, default=str))
        files = [out / "results.md", out / "results.json"]
        files += [p for p in (plot_bandwidth(all_rows, out / "bandwidth.png"),
                              plot_int4_batches(all_rows, out / "int4_batch.png")) if p]
        if qat_results:
            files += [p for p in (qat_step.plot(qat_results, out / "qat_step.png"),) if p]
    return {"rows": all_rows, "markdown": text, "files": files, "skipped": skipped}


def parse_only(text: str | None) -> list[str]:
    """--only's comma list as family names, in FAMILIES order; ValueError naming unknown ones."""
    if not text:
        return list(FAMILIES)
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in FAMILIES]
    if unknown or not names:
        raise ValueError(f"unknown benchmark {', '.join(map(repr, unknown)) or repr(text)} in --only: "
                         f"choose from {', '.join(FAMILIES)}")
    return [family for family in FAMILIES if family in names]


def main(args: argparse.Namespace) -> int:
    """Run what `climbq bench`'s parsed options ask for; print the tables and where files went."""
    families = parse_only(args.only)
    path = ledger.resolve_path(args.ledger, not args.no_ledger)
    result = run(families, args.quick, args.out, path, threads=args.threads)
    print(result["markdown"])
    print("wrote " + ", ".join(str(p) for p in result["files"]))
    print(f"{len(result['rows'])} ledger rows appended to {path or '(none: --no-ledger)'}")
    return 0


if __name__ == "__main__":  # the same options as `climbq bench`, parsed there
    from climbq_kernels.cli import main as climbq

    sys.exit(climbq(["bench", *sys.argv[1:]]))
