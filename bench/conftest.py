"""CPU benchmark session: collects each candidate's median and prints the side-by-side table."""

import time
from pathlib import Path

import pytest

from report import copy_bandwidth_bytes_per_s, environment, markdown, rows, save

MEDIANS: dict[str, dict[str, float]] = {}
CASES: dict[str, object] = {}


def median_seconds(fn, repeats: int = 7) -> float:
    fn()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return sorted(samples)[len(samples) // 2]


def pytest_terminal_summary(terminalreporter):
    if not MEDIANS:
        return
    bandwidth = copy_bandwidth_bytes_per_s("cpu", median_seconds)
    all_rows = [row for name, timings in MEDIANS.items() for row in rows(CASES[name], timings, bandwidth)]
    env = environment("cpu", bandwidth)
    path = save(Path(__file__).parent / "results" / "cpu-latest", "cpu", env, all_rows)
    terminalreporter.write_line(markdown(all_rows, f"CPU benchmarks ({env['device']}, {env['date']}), saved to {path}"))


@pytest.fixture
def record():
    """record(case, label, benchmark): keep the benchmark's median for the summary table."""
    def keep(case, label, benchmark):
        CASES[case.name] = case
        MEDIANS.setdefault(case.name, {})[label] = benchmark.stats.stats.median
    return keep
