"""The README's usage example runs as written."""

import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_usage_example_runs():
    block = re.search(r"## Use\n\n```python\n(.*?)```", README.read_text(), re.S)
    assert block, "README.md lost its '## Use' python example"
    namespace: dict = {}
    exec(compile(block.group(1), "README.md", "exec"), namespace)
    assert namespace["y"].shape == namespace["x"].shape
    assert namespace["codes"].dtype.is_floating_point is False
