"""The `climbq` command."""

import re
import subprocess
import sys

import pytest


def test_info_prints_versions_backends_and_devices():
    out = subprocess.run([sys.executable, "-m", "climbq_kernels.cli", "info"], capture_output=True, text=True,
                         check=True).stdout
    assert "climbq-kernels" in out and "torch" in out
    for backend in ("reference", "cpu", "triton", "cuda"):
        assert f"  {backend}" in out
    assert "devices:" in out and "cpu:" in out


@pytest.mark.slow
def test_demo_trains_converts_and_serves():
    """`climbq demo` end to end, shortened: both models train, the INT4 model predicts as the QAT
    model did, and the serving comparison prints."""
    run = subprocess.run([sys.executable, "-m", "climbq_kernels.cli", "demo", "--steps", "5"], capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    for row in ("float32", "ClimbQ W4A4 QAT", "serving one 4096x4096 layer at batch 1"):
        assert row in run.stdout
    agreement = re.search(r"INT4 served \(([\d.]+)% same predictions\)", run.stdout)
    assert agreement and float(agreement.group(1)) >= 99.0


def test_demo_rejects_a_step_count_below_one():
    run = subprocess.run([sys.executable, "-m", "climbq_kernels.cli", "demo", "--steps", "0"], capture_output=True,
                         text=True)
    assert run.returncode == 2 and "--steps must be >= 1" in run.stderr
