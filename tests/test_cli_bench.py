"""`climbq bench`: one command over every benchmark family (bench/run_all.py), its --only
selection, its report (results.md, results.json, PNG plots) and its error where bench/ is missing."""

import json
import subprocess
import sys

import pytest
import torch
from torch import nn

from climbq_kernels import cli

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def runner():
    """bench/run_all.py as `climbq bench` imports it (so that monkeypatching it reaches the command)."""
    return cli._bench_runner()


def _tiny_case(runner, name: str, numel: int):
    """A Case of two candidates moving `numel` floats: a copy and a slower copy (two of them)."""
    x = torch.randn(numel)
    candidates = {"two copies": lambda: (x.clone(), x.clone()), "one copy": lambda: x.clone()}
    return runner.Case(f"{name} ({numel},) float32", candidates, floor_bytes=2 * x.numel() * x.element_size())


def test_one_family_writes_its_table_and_bandwidth_plot(runner, monkeypatch, tmp_path):
    def quick_cases(family, device, backends):
        assert family == "climbq_weight"
        return [_tiny_case(runner, "copy", n) for n in (1 << 14, 1 << 16)]

    monkeypatch.setattr(runner, "quick_cases", quick_cases)
    ledger_file = tmp_path / "rows.jsonl"
    out = tmp_path / "out"
    assert cli.main(["bench", "--quick", "--only", "climbq_weight", "--out", str(out), "--ledger", str(ledger_file),
                     "--threads", "1"]) == 0
    table = (out / "results.md").read_text()
    assert "## climbq_weight" in table and "## qat_step" not in table and "## host_overhead" not in table
    for n in (1 << 14, 1 << 16):
        for candidate in ("two copies", "one copy"):
            assert f"| copy ({n},) float32 | {candidate} | " in table
    rows = json.loads((out / "results.json").read_text())
    assert len(rows) == 4 and all(r["family"] == "climbq_weight" and r["ratio_vs"] == "two copies" for r in rows)
    assert all(r["gb_s"] > 0 and r["pct_copy_bw"] > 0 and r["rounds"] == 5 for r in rows)
    assert [json.loads(line)["candidate"] for line in ledger_file.read_text().splitlines()] == \
        [r["candidate"] for r in rows]
    assert (out / "bandwidth.png").read_bytes()[:8] == PNG
    assert not (out / "int4_batch.png").exists()  # no INT4 batches in this run


def _tiny_model(image_size: int) -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(4, 10))


def test_qat_step_family_reports_every_candidate_and_plots_step_times(runner, monkeypatch, tmp_path):
    qat_step = runner.qat_step
    monkeypatch.setitem(qat_step.MODELS, "tiny", qat_step.ModelSpec(_tiny_model, cpu_image=8, cuda_image=8))
    monkeypatch.setattr(qat_step, "DEFAULT_MODELS", ("tiny",))
    assert cli.main(["bench", "--quick", "--only", "qat_step", "--out", str(tmp_path), "--no-ledger"]) == 0
    table = (tmp_path / "results.md").read_text()
    assert "## qat_step" in table
    for label, _, _ in qat_step.candidate_plan(compile=False):
        assert f"| QAT step tiny (16, 3, 8, 8) fp32 | {label} |" in table
    assert "skipped" not in table
    assert "float compiled |" not in table and "W4A4 compiled |" not in table  # --quick leaves torch.compile out
    assert (tmp_path / "qat_step.png").read_bytes()[:8] == PNG


@pytest.mark.parametrize(("only", "message"), [
    ("nope", "unknown benchmark 'nope' in --only: choose from climbq_act, climbq_weight"),
    ("int4,qat-step", "unknown benchmark 'qat-step' in --only"),
    (",", "unknown benchmark ',' in --only"),
])
def test_unknown_family_is_refused_naming_it(only, message, capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["bench", "--only", only, "--out", str(tmp_path / "out"), "--no-ledger"])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_only_takes_a_comma_list_run_in_the_suite_order(runner):
    assert runner.parse_only("qat_step, class_stats") == ["class_stats", "qat_step"]
    assert runner.parse_only(None) == list(runner.FAMILIES)
    assert set(runner.FAMILIES) == {"climbq_act", "climbq_weight", "fake_quant", "class_stats", "int4", "acs_scores",
                                    "rcaq_encoder", "host_overhead", "qat_step"}


def test_without_the_bench_folder_it_says_where_it_looked(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(cli, "_bench_dir", lambda: tmp_path / "no-bench")
    assert cli.main(["bench", "--quick", "--no-ledger", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "no-bench") in err and "bench/ folder" in err and "pip install" in err


def test_quick_cases_exist_for_every_kernel_family_at_two_sizes_or_batches(runner):
    for family in runner.KERNEL_FAMILIES:
        cases = runner.quick_cases(family, "cpu", ())
        assert len({case.name for case in cases}) >= 2, family
        assert all(case.candidates and case.floor_bytes > 0 for case in cases)


@pytest.mark.slow
def test_climbq_bench_quick_end_to_end_for_a_kernel_family(tmp_path):
    """The installed command on real cases: class_stats at --quick sizes, torch.compile included."""
    done = subprocess.run([sys.executable, "-m", "climbq_kernels.cli", "bench", "--quick", "--only", "class_stats",
                           "--out", str(tmp_path), "--no-ledger", "--threads", "1"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    table = (tmp_path / "results.md").read_text()
    for candidate in ("reference (eager)", "torch.compile(reference)"):
        for shape in ("(256, 512)", "(1024, 2048)"):
            assert f"class_stats {shape} K=100 float32 | {candidate} |" in table
    assert "skipped" not in table
    assert (tmp_path / "bandwidth.png").read_bytes()[:8] == PNG
