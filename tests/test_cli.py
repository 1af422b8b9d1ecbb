"""The `climbq` command."""

import subprocess
import sys


def test_info_prints_versions_backends_and_devices():
    out = subprocess.run([sys.executable, "-m", "climbq_kernels.cli", "info"], capture_output=True, text=True,
                         check=True).stdout
    assert "climbq-kernels" in out and "torch" in out
    for backend in ("reference", "cpu", "triton", "cuda"):
        assert f"  {backend}" in out
    assert "devices:" in out and "cpu:" in out
