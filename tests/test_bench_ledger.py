"""bench/ledger.py and the runners that append to it: every row has every ledger field, rows go
where --ledger / CLIMBQ_LEDGER say (never to the committed ledger from a test), and the committed
ledger's rows are complete."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import load_bench_script

ROOT = Path(__file__).resolve().parents[1]
COMMITTED = ROOT / "bench" / "results" / "ledger.jsonl"


@pytest.fixture
def ledger():
    return load_bench_script("ledger")


def _assert_complete(ledger, rows):
    assert rows
    for row in rows:
        missing = [field for field in ledger.FIELDS if field not in row]
        assert not missing, (missing, row)
        assert row["median_ms"] > 0 and row["case"] and row["candidate"] and row["source"] and row["date"]
        assert {"torch", "triton", "cuda", "python"} <= set(row["versions"])
        assert (row["ratio"] is None) == (row["ratio_vs"] is None)


def _committed_size():
    return COMMITTED.stat().st_size if COMMITTED.exists() else None


def test_rows_have_every_field_and_ratios_against_the_first_candidate(ledger):
    class Case:
        name, floor_bytes = "op (4,) float32", 4e9
        candidates = {"reference": None, "ours": None}

    run = ledger.Ledger("cpu", "a test", None)
    rows = run.case_rows(Case, {"reference": 2.0, "ours": 0.5}, copy_bytes_per_s=8e9)
    _assert_complete(ledger, rows)
    ours = rows[1]
    assert ours["ratio"] == 4.0 and ours["ratio_vs"] == "reference"
    assert ours["gb_s"] == 8.0 and ours["pct_copy_bw"] == 100.0 and ours["median_ms"] == 500.0
    assert rows[0]["device"].startswith("cpu: ")
    assert run.append(rows) == rows  # no path: nothing written


def test_where_rows_go(ledger, monkeypatch, tmp_path):
    monkeypatch.delenv(ledger.ENV_VAR, raising=False)
    assert ledger.resolve_path() == ledger.DEFAULT_PATH == COMMITTED
    assert ledger.resolve_path(tmp_path / "x.jsonl") == tmp_path / "x.jsonl"
    assert ledger.resolve_path(tmp_path / "x.jsonl", enabled=False) is None
    monkeypatch.setenv(ledger.ENV_VAR, str(tmp_path / "env.jsonl"))
    assert ledger.resolve_path() == tmp_path / "env.jsonl"
    monkeypatch.setenv(ledger.ENV_VAR, "off")
    assert ledger.resolve_path() is None


def test_interleaved_runner_appends_complete_rows_to_the_given_ledger(ledger, monkeypatch, tmp_path):
    runner = load_bench_script("int4/int4_cpu_interleaved")
    monkeypatch.setattr(runner, "SHAPES", [(256, 256)])
    out = tmp_path / "rows.jsonl"
    monkeypatch.setattr("sys.argv", ["int4_cpu_interleaved.py", "--rounds", "3", "--dtypes", "fp32", "--hot",
                                     "--ledger", str(out)])
    before = _committed_size()
    assert runner.main() == 0
    rows = ledger.read(out)
    _assert_complete(ledger, rows)
    assert {row["source"] for row in rows} == {"bench/int4/int4_cpu_interleaved.py"}
    assert rows[0]["candidate"] == "F.linear float32 (dense)" and rows[0]["ratio"] == 1.0
    assert all(row["ratio_vs"] == "F.linear float32 (dense)" and row["gb_s"] > 0 for row in rows)
    assert all(row["pct_copy_bw"] is None for row in rows)  # this runner measures no copy bandwidth
    assert _committed_size() == before


TINY_BENCH = """
import torch
from cases import Case

x = torch.randn(1 << 14)
CPU_CASES = [Case("tiny (16384,) float32", {"clone": lambda: x.clone(), "mul": lambda: x * 2},
                  floor_bytes=2 * x.numel() * 4)]


def test_cpu(bench_case, benchmark, record):
    record(benchmark, *bench_case)
"""


def test_pytest_benchmark_runner_appends_complete_rows(ledger, tmp_path):
    """bench/conftest.py as a plugin over a tiny bench file: the session's rows reach --ledger."""
    (tmp_path / "bench_tiny.py").write_text(TINY_BENCH)
    out = tmp_path / "rows.jsonl"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "bench"), str(ROOT)]))
    before = _committed_size()
    done = subprocess.run([sys.executable, "-m", "pytest", "bench_tiny.py", "-p", "conftest", "--benchmark-only",
                           "--ledger", str(out), "-q", "-p", "no:cacheprovider"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    rows = ledger.read(out)
    _assert_complete(ledger, rows)
    assert [row["candidate"] for row in rows] == ["clone", "mul"]
    assert all(row["source"] == "bench/conftest.py (pytest-benchmark)" and row["pct_copy_bw"] > 0 for row in rows)
    assert _committed_size() == before


def test_no_ledger_writes_nothing(tmp_path):
    (tmp_path / "bench_tiny.py").write_text(TINY_BENCH)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "bench"), str(ROOT)]),
               CLIMBQ_LEDGER=str(tmp_path / "env.jsonl"))
    done = subprocess.run([sys.executable, "-m", "pytest", "bench_tiny.py", "-p", "conftest", "--benchmark-only",
                           "--no-ledger", "-q", "-p", "no:cacheprovider"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "not recorded" in done.stdout
    assert not (tmp_path / "env.jsonl").exists()


def test_committed_ledger_rows_are_complete(ledger):
    rows = ledger.read(COMMITTED)
    _assert_complete(ledger, rows)
    for row in rows:
        json.dumps(row)
        assert row["commit_is"] in ("recorded-in", "measured") or row["commit_is"].startswith("measured")
        if row["commit_is"] == "recorded-in":
            assert row["recorded_in"].startswith("bench/results/") and (ROOT / row["recorded_in"]).exists()
