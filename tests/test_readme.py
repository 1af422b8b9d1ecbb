"""The README's quick starts run as written."""

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
QUICK_STARTS = ("quantization-aware training", "serving INT4", "testing kernels")


def quick_start(title: str) -> str:
    block = re.search(rf"## Quick start: {title}\n\n```python\n(.*?)```", README.read_text(), re.S)
    assert block, f"README.md lost its 'Quick start: {title}' python example"
    return block.group(1)


@pytest.mark.parametrize("title", QUICK_STARTS)
def test_quick_start_runs(title):
    namespace: dict = {}
    exec(compile(quick_start(title), "README.md", "exec"), namespace)
    if title == QUICK_STARTS[0]:
        assert namespace["y"].shape == namespace["x"].shape
        assert not namespace["codes"].dtype.is_floating_point
        assert namespace["x"].grad is not None and namespace["scale"].grad is not None
    if title == QUICK_STARTS[1]:
        assert namespace["out"].shape == (4, 256)
        assert type(namespace["model"][0]).__name__ == "Int4Linear"


def test_readme_is_short_and_starts_with_the_two_commands():
    text = README.read_text()
    assert len(text.splitlines()) <= 160
    assert text.startswith("```bash\n# 1. set up a fresh machine and run the main job\n")
