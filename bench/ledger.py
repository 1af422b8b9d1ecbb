"""The results ledger: bench/results/ledger.jsonl, one JSON object a line, one line a measurement.

Every runner (the pytest-benchmark CPU session, gpu_bench.py, the timing scripts under int4/)
appends its rows here through `Ledger`. A row holds:

  commit      the git commit of the code measured (`commit_is` says how sure that is:
              "measured" for a clean tree, "measured, tree modified" when the measured sources
              differed from it, "recorded-in" for rows copied from a result file, whose commit is
              the one that added the file)
  date        ISO 8601, UTC: when the run started
  device      "cpu: <model name>, <n> cores, <t> threads" or the GPU's name
  versions    torch, triton, cuda, python, and every peer package installed (bitsandbytes,
              gemlite, torchao): the peers a case times are the ones it can import
  case        the op, shape and dtype (the Case's name in cases.py)
  candidate   "climbq cpu", "reference (eager)", "torch.compile(reference)", a peer's name, ...
  median_ms   the candidate's median time
  gb_s        the case's floor traffic (Case.floor_bytes) over the median time
  pct_copy_bw gb_s as % of the copy bandwidth measured in the same run (copy_gb_s); null where
              the run measured none
  ratio       the baseline's median over this candidate's (> 1: faster than the baseline)
  ratio_vs    the baseline: the case's first candidate
  source      the runner that wrote the row
  method      how it was timed (pytest-benchmark rounds, do_bench, interleaved rounds, ...)

and whatever else a runner adds (per-round ratio quartiles, a forced kernel's settings).

Where rows go: `--ledger PATH` on a runner, else $CLIMBQ_LEDGER, else bench/results/ledger.jsonl;
`--no-ledger` or CLIMBQ_LEDGER=off writes none (tests point it at a temporary file). The commit
comes from $CLIMBQ_COMMIT where set (a GPU machine's copy of the tree has no .git), else git.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
DEFAULT_PATH = BENCH_DIR / "results" / "ledger.jsonl"
ENV_VAR = "CLIMBQ_LEDGER"
OFF = "off"
PEERS = ("bitsandbytes", "gemlite", "torchao")
MEASURED_SOURCES = ("climbq_kernels", "csrc", "setup.py")
"""The paths whose state is the code measured: a row's tree counts as modified where these differ from HEAD."""
FIELDS = ("commit", "commit_is", "date", "device", "versions", "case", "candidate", "median_ms", "gb_s",
          "pct_copy_bw", "ratio", "ratio_vs", "source", "method")
"""The fields every row has (null where a runner has no value)."""


def resolve_path(path: str | os.PathLike | None = None, enabled: bool = True) -> Path | None:
    """Where rows go: `path`, else $CLIMBQ_LEDGER, else the committed ledger; None when disabled."""
    if not enabled:
        return None
    chosen = str(path) if path is not None else os.environ.get(ENV_VAR, "")
    if chosen.lower() == OFF:
        return None
    return Path(chosen) if chosen else DEFAULT_PATH


def add_arguments(parser) -> None:
    """--ledger PATH and --no-ledger on an argparse runner."""
    parser.add_argument("--ledger", type=Path, help=f"append rows here (default: ${ENV_VAR} or {DEFAULT_PATH.name})")
    parser.add_argument("--no-ledger", action="store_true", help="append no rows")


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def commit() -> tuple[str | None, str]:
    """(commit, commit_is) of the tree being measured."""
    if os.environ.get("CLIMBQ_COMMIT"):
        return os.environ["CLIMBQ_COMMIT"], "measured (CLIMBQ_COMMIT)"
    head = _git("rev-parse", "HEAD")
    if head is None:
        return None, "unknown"
    modified = _git("status", "--porcelain", "--", *MEASURED_SOURCES)
    return head, "measured, tree modified" if modified else "measured"


def device_name(device: str) -> str:
    import torch

    if device == "cuda":
        return torch.cuda.get_device_name()
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"cpu: {model}, {os.cpu_count()} cores, {torch.get_num_threads()} threads"


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        module = sys.modules.get(package)
        return getattr(module, "__version__", None)


def versions() -> dict:
    import torch

    found = {"torch": torch.__version__, "triton": _version("triton"), "cuda": torch.version.cuda,
             "python": platform.python_version()}
    found.update({peer: v for peer in PEERS if (v := _version(peer))})
    return found


class Ledger:
    """One run's rows: the context (commit, date, device, versions) taken once, rows appended as
    they are measured. `path` None: rows are built (and returned) but written nowhere."""

    def __init__(self, device: str, source: str, path: Path | None, method: str = ""):
        self.path, self.source, self.method = path, source, method
        sha, sha_is = commit()
        self.context = {"commit": sha, "commit_is": sha_is,
                        "date": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
                        "device": device_name(device), "versions": versions()}

    def row(self, case: str, candidate: str, median_s: float, *, floor_bytes: float | None = None,
            copy_bytes_per_s: float | None = None, baseline_s: float | None = None, ratio_vs: str | None = None,
            **extra) -> dict:
        gb_s = floor_bytes / median_s / 1e9 if floor_bytes else None
        copy_gb_s = copy_bytes_per_s / 1e9 if copy_bytes_per_s else None
        return {**self.context, "case": case, "candidate": candidate, "median_ms": median_s * 1e3, "gb_s": gb_s,
                "pct_copy_bw": 100 * gb_s / copy_gb_s if gb_s and copy_gb_s else None, "copy_gb_s": copy_gb_s,
                "ratio": baseline_s / median_s if baseline_s else None, "ratio_vs": ratio_vs if baseline_s else None,
                "source": self.source, "method": extra.pop("method", self.method), **extra}

    def case_rows(self, case, timings: dict[str, float], copy_bytes_per_s: float | None = None, **extra) -> list[dict]:
        """Rows for one Case's {label: median seconds}, ratios against its first candidate."""
        baseline = next(iter(case.candidates))
        base_s = timings.get(baseline)
        return [self.row(case.name, label, seconds, floor_bytes=case.floor_bytes, copy_bytes_per_s=copy_bytes_per_s,
                         baseline_s=base_s, ratio_vs=baseline, **extra)
                for label, seconds in timings.items()]

    def append(self, rows: list[dict]) -> list[dict]:
        if self.path is not None and rows:
            append(self.path, rows)
        return rows


def append(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as out:
        for r in rows:
            out.write(json.dumps(r, sort_keys=False) + "\n")


def read(path: Path = DEFAULT_PATH) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
