"""CPU INT4 matmul ratios measured round-robin: every candidate of a case once per round, rounds
repeated, and each ratio taken within its round.

On a shared VM the load moves between the minutes pytest-benchmark spends on one candidate and
the next, which moves the ratios the INT4 targets are stated in. Here every round times all
candidates back to back (their order rotating), so a ratio compares calls made within the same
second; the report gives each candidate's median time and, against the case's first candidate
(dense F.linear), the median and quartiles of the per-round ratios. Before each call the caches
are flushed (report.CpuCacheFlush), as in the pytest-benchmark runner: a packed weight of 8-22 MB
would otherwise be read from the last-level cache call after call while dense F.linear's
64-180 MB never is (`--hot` keeps them).

`--rotate` models a model's consecutive layers instead: no flush; each candidate runs
CALLS_PER_TURN calls in a row, each on the next of enough copies of its operands that every
call finds its weights evicted (4x the last-level cache between two uses of a copy, or as many
copies as half the free memory holds, printed per case), while its code, x and the allocator's
memory stay as warm as a serving loop keeps them. The flush also evicts those, charging every
call the cost of fetching its own code from memory. Every copy is called once, untimed, before
the rounds: a first read of memory after it was written can run well below the speed of later
reads from DRAM (on a VM it did, for INT4 and dense candidates alike), and a served layer's
weights have been read before.

Rows go to the results ledger (bench/ledger.py; `--ledger PATH`, `--no-ledger`), with the
per-round ratio quartiles beside the ratio of medians; `--out DIR` also writes the table.

    python3 bench/int4/int4_cpu_interleaved.py [--rounds 30] [--batches 1 4] [--hot | --rotate] [--out DIR]
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

BENCH_DIR = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(BENCH_DIR), str(BENCH_DIR.parent)]
import ledger  # noqa: E402
from cases import cpu_backends, int4_matmul_case  # noqa: E402
from report import CpuCacheFlush, header  # noqa: E402

SHAPES = [(4096, 4096), (11008, 4096)]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
SLOW_PEER = "torch _weight_int4pack_mm_for_cpu"
"""Left out for float32 x past batch 1: its float32 path takes seconds a call here."""
CALLS_PER_TURN = 3
"""--rotate: consecutive calls of one candidate, as consecutive layers of one kind are."""


def last_level_cache_bytes(default: int = 64 * 2**20) -> int:
    """The CPU's last-level cache as Linux reports it (cpu0's highest-level cache), else `default`."""
    caches = sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size"))
    if not caches:
        return default
    text = caches[-1].read_text().strip()
    units = {"K": 2**10, "M": 2**20, "G": 2**30}
    return int(text[:-1]) * units[text[-1]] if text[-1] in units else int(text)


def available_memory_bytes(default: int = 8 * 2**30) -> int:
    """MemAvailable from /proc/meminfo, else `default`."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 2**10
    except OSError:
        pass
    return default


def copies_to_rotate(weight_bytes: int, cache_bytes: int, copy_bytes: int = 0, memory_bytes: int = 0) -> int:
    """Copies of a case whose weights take `weight_bytes` so that 4x the cache is read between two
    uses of one copy, but no more than half of `memory_bytes` holds at `copy_bytes` a copy (a large
    last-level cache would otherwise ask for more copies of a case that holds a dense weight too
    than the memory takes)."""
    wanted = max(2, -(-4 * cache_bytes // max(weight_bytes, 1)))
    if copy_bytes > 0 and memory_bytes > 0:
        wanted = min(wanted, max(2, memory_bytes // 2 // copy_bytes))
    return wanted


def held_bytes(candidates: dict) -> int:
    """Bytes of the distinct tensors the candidates' closures hold, directly or as attributes of
    an object they hold (an Int4Weight's packed codes, scales and zeros). The process's resident
    memory cannot tell: a freed case's heap is reused without showing."""
    seen, total = set(), 0

    def visit(value):
        nonlocal total
        if isinstance(value, torch.Tensor):
            storage = value.untyped_storage()
            if storage.data_ptr() not in seen:
                seen.add(storage.data_ptr())
                total += storage.nbytes()

    for call in candidates.values():
        for cell in getattr(call, "__closure__", None) or ():
            try:
                value = cell.cell_contents
            except ValueError:  # an empty cell
                continue
            visit(value)
            for attribute in getattr(value, "__dict__", {}).values():
                visit(attribute)
    return total


def rotating(cases: list) -> dict:
    """Candidates that each call their label on the next case of `cases` (copies of one case)."""
    def turn(label):
        calls = itertools.cycle([case.candidates[label] for case in cases])
        return lambda: next(calls)()
    return {label: turn(label) for label in cases[0].candidates}


def read_each_copy_once(candidates: dict, copies: int) -> None:
    """Call every rotating candidate once on each of its `copies` copies, untimed, which leaves
    each at its first copy again: no timed call is a copy's first read (see the module docstring)."""
    for call in candidates.values():
        for _ in range(copies):
            call()


def interleaved_seconds(candidates: dict, rounds: int, before_each=lambda: None,
                        warmup: int = 2, calls_per_turn: int = 1) -> dict[str, list[float]]:
    """Per candidate, the wall-clock seconds of its calls: round r calls the candidates in their
    order rotated by r, `calls_per_turn` timed calls each, every one after an untimed
    `before_each()`."""
    labels = list(candidates)
    for _ in range(warmup):
        for label in labels:
            candidates[label]()
    times = {label: [] for label in labels}
    for r in range(rounds):
        for label in labels[r % len(labels):] + labels[:r % len(labels)]:
            for _ in range(calls_per_turn):
                before_each()
                start = time.perf_counter()
                candidates[label]()
                times[label].append(time.perf_counter() - start)
    return times


def summarize(name: str, times: dict[str, list[float]]) -> list[dict]:
    """Rows: median ms per candidate, and the per-round ratio baseline / candidate (quartiles)."""
    baseline = next(iter(times))
    out = []
    for label, seconds in times.items():
        ratios = [b / s for b, s in zip(times[baseline], seconds, strict=True)]
        q1, ratio, q3 = statistics.quantiles(ratios, n=4)
        out.append({"case": name, "candidate": label, "median_ms": statistics.median(seconds) * 1e3,
                    "ratio_median": ratio, "ratio_q1": q1, "ratio_q3": q3, "rounds": len(seconds)})
    return out


def markdown(all_rows: list[dict], title: str) -> str:
    """The table of ledger rows: median, GB/s of the floor traffic, and the per-round ratio."""
    lines = [title, "", "| case | candidate | median ms | GB/s | x first candidate, per round: median (quartiles) |",
             "|---|---|---|---|---|"]
    for r in all_rows:
        lines.append(f"| {r['case']} | {r['candidate']} | {r['median_ms']:.3f} | {r['gb_s']:.1f} | "
                     f"{r['round_ratio_median']:.2f}x ({r['round_ratio_q1']:.2f}-{r['round_ratio_q3']:.2f}) |")
    return "\n".join(lines) + "\n"


def ledger_rows(run: ledger.Ledger, case, summary: list[dict]) -> list[dict]:
    """summarize()'s rows as ledger rows: the ratio of medians, and the per-round ratio's quartiles."""
    baseline = summary[0]
    return [run.row(case.name, r["candidate"], r["median_ms"] / 1e3, floor_bytes=case.floor_bytes,
                    baseline_s=baseline["median_ms"] / 1e3, ratio_vs=baseline["candidate"],
                    round_ratio_median=r["ratio_median"], round_ratio_q1=r["ratio_q1"],
                    round_ratio_q3=r["ratio_q3"], rounds=r["rounds"]) for r in summary]


def warmth_name(args) -> str:
    if args.rotate:
        return f"weights rotated, {CALLS_PER_TURN} calls a turn"
    return "caches warm" if args.hot else "caches flushed"


def measure_case(shape, batch: int, dtype: torch.dtype, args, before_each, cache_bytes: int,
                 run: ledger.Ledger) -> list[dict]:
    """Ledger rows for one case; under --rotate timed on copies of it (copies_to_rotate)."""
    def make_case():
        case = int4_matmul_case("cpu", dtype, shape, batch, backends=cpu_backends())
        if dtype == torch.float32 and batch > 1:
            case.candidates.pop(SLOW_PEER, None)
        return case
    case = make_case()
    candidates, calls_per_turn = case.candidates, 1
    if args.rotate:
        count = copies_to_rotate(case.floor_bytes, cache_bytes, held_bytes(case.candidates), available_memory_bytes())
        copies = [case] + [make_case() for _ in range(count - 1)]
        read_between = count * case.floor_bytes / cache_bytes
        tqdm.write(f"{case.name}: {count} copies, {read_between:.1f}x the last-level cache read between two uses")
        candidates, calls_per_turn = rotating(copies), CALLS_PER_TURN
        read_each_copy_once(candidates, count)
    times = interleaved_seconds(candidates, args.rounds, before_each, calls_per_turn=calls_per_turn)
    return ledger_rows(run, case, summarize(case.name, times))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--batches", type=int, nargs="+", default=[1])
    parser.add_argument("--dtypes", nargs="+", choices=sorted(DTYPES), default=sorted(DTYPES))
    warmth = parser.add_mutually_exclusive_group()
    warmth.add_argument("--hot", action="store_true", help="no cache flush between calls")
    warmth.add_argument("--rotate", action="store_true", help="no flush; weights rotated through copies")
    parser.add_argument("--out", type=Path, help="write int4-interleaved[-hot|-rotated].md and .json here")
    ledger.add_arguments(parser)
    args = parser.parse_args()
    plan = [(shape, batch, DTYPES[d]) for batch in args.batches for shape in SHAPES for d in args.dtypes]
    before_each = (lambda: None) if args.hot or args.rotate else CpuCacheFlush()
    cache_bytes = last_level_cache_bytes()
    run = ledger.Ledger("cpu", "bench/int4/int4_cpu_interleaved.py",
                        ledger.resolve_path(args.ledger, not args.no_ledger),
                        method=f"interleaved, {args.rounds} rounds, {warmth_name(args)}")
    all_rows = []
    for shape, batch, dtype in tqdm(plan, desc="cases"):
        all_rows += run.append(measure_case(shape, batch, dtype, args, before_each, cache_bytes, run))
        gc.collect()  # the case's copies, before the next case counts the memory left
    table = markdown(all_rows, header(f"CPU INT4 matmul, candidates interleaved ({run.method})", run.context))
    print(table)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        stem = "int4-interleaved-rotated" if args.rotate else "int4-interleaved-hot" if args.hot else "int4-interleaved"
        (args.out / f"{stem}.md").write_text(table)
        (args.out / f"{stem}.json").write_text(json.dumps(all_rows, indent=1))
    print(f"{len(all_rows)} ledger rows appended to {run.path or '(none: --no-ledger)'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
