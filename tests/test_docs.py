"""The project's documents hold together: every `algorithms.md §n` citation names a section that
exists, nothing cites the external spec, and relative links in the Markdown files resolve."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ALGORITHMS = ROOT / "docs" / "algorithms.md"
CITATION = re.compile(r"§\s?(\d+[a-z]?)\b")
"""A section number; counted on lines that name algorithms.md ("algorithms.md §1c steps 1-3, §4a")."""
HEADING = re.compile(r"^#{2,4} (\d+[a-z]?)\. ", re.MULTILINE)
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")
TEXT_SUFFIXES = {".py", ".md", ".cpp", ".h", ".cu", ".cuh", ".sh", ".toml", ".cfg", ".txt"}


def tracked_text_files() -> list[Path]:
    """Files under version control (or, outside a git checkout, every file) that hold text."""
    try:
        names = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                               check=True).stdout.split()
        paths = [ROOT / name for name in names]
    except (OSError, subprocess.CalledProcessError):
        paths = [p for p in ROOT.rglob("*") if ".git" not in p.parts]
    return [p for p in paths if p.suffix in TEXT_SUFFIXES and p.is_file()]


def algorithm_sections() -> set[str]:
    return set(HEADING.findall(ALGORITHMS.read_text()))


def test_algorithm_sections_are_numbered_as_cited():
    sections = algorithm_sections()
    assert {"0", "1", "1a", "1b", "1c", "1d", "1e", "1f", "2", "3", "3a", "4", "4a", "5", "6", "7"} <= sections


def test_every_cited_section_exists():
    sections = algorithm_sections()
    missing = []
    cited = 0
    for path in tracked_text_files():
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if "algorithms.md" not in line:
                continue
            for section in CITATION.findall(line):
                cited += 1
                if section not in sections:
                    missing.append(f"{path.relative_to(ROOT)}:{number} cites §{section}")
    assert cited > 100, "the citation pattern no longer matches how the code cites the algorithms"
    assert not missing, "sections missing from docs/algorithms.md:\n" + "\n".join(missing)


def test_nothing_cites_the_external_spec():
    offenders = [str(p.relative_to(ROOT)) for p in tracked_text_files()
                 if re.search(r"\bSPEC(\.md| \d)", p.read_text(errors="replace"))]
    assert not offenders, f"cite docs/algorithms.md instead of the external spec: {offenders}"


@pytest.mark.parametrize("document", ["README.md", "CONTRIBUTING.md", "docs/algorithms.md",
                                      "docs/design.md", "bench/results/README.md"])
def test_relative_links_resolve(document):
    path = ROOT / document
    broken = [target for target in LINK.findall(path.read_text())
              if "://" not in target and not (path.parent / target).exists()]
    assert not broken, f"{document} links to missing files: {broken}"
