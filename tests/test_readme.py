"""The README's quick starts run as written."""

import re
from pathlib import Path

import pytest

import climbq_kernels as cq

README = Path(__file__).resolve().parent.parent / "README.md"
QUICK_STARTS = ("quantization-aware training", "serving INT4", "testing kernels", "ACS and RCAQ")


def quick_start(title: str) -> str:
    """Every python block of the quick start's section, joined (later blocks reuse earlier names)."""
    section = re.search(rf"## Quick start: {title}\n(.*?)(?=\n## )", README.read_text(), re.S)
    assert section, f"README.md lost its 'Quick start: {title}' section"
    blocks = re.findall(r"```python\n(.*?)```", section.group(1), re.S)
    assert blocks, f"README.md's 'Quick start: {title}' has no python example"
    return "\n".join(blocks)


@pytest.mark.parametrize("title", QUICK_STARTS)
def test_quick_start_runs(title):
    namespace: dict = {}
    exec(compile(quick_start(title), "README.md", "exec"), namespace)
    if title == QUICK_STARTS[0]:
        assert any(isinstance(m, cq.nn.Int4Conv2d) for m in namespace["model"].modules())
    if title == QUICK_STARTS[1]:
        assert namespace["out"].shape == (4, 256)
        assert type(namespace["model"][0]).__name__ == "Int4Linear"
    if title == QUICK_STARTS[3]:
        batches = list(namespace["loader"])
        assert sum(len(labels) for _, labels in batches) >= 10  # 10% of 200, at least one per class
        assert 0 <= namespace["rcaq"].zero_one_error(namespace["task"].x_test) < 0.5


def test_readme_is_short_and_starts_with_the_two_commands():
    text = README.read_text()
    assert len(text.splitlines()) <= 160
    assert text.startswith("```bash\n# 1. set up a fresh machine and run the main job\n")
