"""Without the built extension the package still imports, and the reference and Triton paths run."""

import os
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent("""
    import sys, warnings
    sys.modules["climbq_kernels._C"] = None          # as if the extension had never been built
    import torch, climbq_kernels as cq

    status = cq.backends()
    assert not status["cpu"].available and "pip install --no-build-isolation" in status["cpu"].reason
    assert not status["cuda"].available
    x, labels = torch.randn(4, 9), torch.randint(0, 3, (4,))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        auto = cq.climbq_act_quant(x, labels, num_classes=3)
    assert any("reference backend" in str(w.message) for w in caught), "the fallback must be announced"
    with cq.use_backend("reference"):
        assert torch.equal(auto, cq.climbq_act_quant(x, labels, num_classes=3))
    with cq.use_backend("triton"):
        cq.climbq_act_quant(x, labels, num_classes=3)
    try:
        with cq.use_backend("cpu"):
            cq.climbq_act_quant(x, labels, num_classes=3)
    except RuntimeError as err:
        assert "python setup.py build_ext --inplace" in str(err), err
    else:
        raise AssertionError("the cpu backend ran without the extension")
    print("ok")
""")


@pytest.mark.slow
def test_package_works_without_the_extension():
    env = {**os.environ, "TRITON_INTERPRET": "1", "CLIMBQ_BACKEND": ""}
    run = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True)
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr[-3000:]
