"""`climbq demo acs` (climbq_kernels.methods.acs.demo): a tiny run writes its table, JSON and plot;
the quick run finishes in under two minutes on a CPU."""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from climbq_kernels.methods.acs import demo

ROOT = Path(__file__).resolve().parent.parent


def test_tiny_run_writes_table_json_and_plot(tmp_path, capsys):
    assert demo.main(["--quick", "--seeds", "1", "--epochs", "3", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    report = json.loads((tmp_path / "acs.json").read_text())
    assert (tmp_path / "acs.png").stat().st_size > 0
    keys = ["float32", "full", "acs_10", "random_10", "acs_30", "random_30"]
    assert list(report["summary"]) == keys
    rows = report["per_seed"][0]["rows"]
    assert rows["acs_10"]["coreset_size"] == rows["random_10"]["coreset_size"] < rows["acs_30"]["coreset_size"]
    assert rows["acs_10"]["scoring_seconds"] > 0 and rows["random_10"]["scoring_seconds"] == 0
    assert rows["acs_10"]["steps"] < rows["full"]["steps"]
    for key in keys:
        assert 0 <= rows[key]["overall"] <= 100 and rows[key]["name"] in printed


@pytest.mark.parametrize("argv", [["--interval", "0"], ["--epochs", "0"], ["--model", "vit"]])
def test_bad_options_exit_with_usage(argv, tmp_path):
    with pytest.raises(SystemExit):
        demo.main([*argv, "--out", str(tmp_path)])


@pytest.mark.slow
def test_quick_demo_under_two_minutes(tmp_path):
    start = time.perf_counter()
    run = subprocess.run([sys.executable, "-m", "climbq_kernels.methods.acs.demo", "--quick", "--out", str(tmp_path)],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert time.perf_counter() - start < 120
    assert "ACS 10%" in run.stdout and (tmp_path / "acs.json").exists()
