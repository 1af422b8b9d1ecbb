"""CPU benchmark session: collects each candidate's median and prints the side-by-side table."""

from pathlib import Path

import pytest

from climbq_kernels.testing import median_seconds
from report import CpuCacheFlush, copy_bandwidth_bytes_per_s, environment, markdown, rows, save

MEDIANS: dict[str, dict[str, float]] = {}
CASES: dict[str, object] = {}


def pytest_terminal_summary(terminalreporter):
    if not MEDIANS:
        return
    bandwidth = copy_bandwidth_bytes_per_s("cpu", median_seconds)
    all_rows = [row for name, timings in MEDIANS.items() for row in rows(CASES[name], timings, bandwidth)]
    env = environment("cpu", bandwidth)
    path = save(Path(__file__).parent / "results" / "cpu-latest", "cpu", env, all_rows)
    terminalreporter.write_line(markdown(all_rows, f"CPU benchmarks ({env['device']}, {env['date']}), saved to {path}"))


def pytest_generate_tests(metafunc):
    """Parametrise `bench_case` with every (case, candidate) of the module's CPU_CASES."""
    if "bench_case" in metafunc.fixturenames:
        params = [(case, label) for case in metafunc.module.CPU_CASES for label in case.candidates]
        metafunc.parametrize("bench_case", params, ids=[f"{case.name}|{label}" for case, label in params])


@pytest.fixture(scope="session")
def cache_flush():
    return CpuCacheFlush()


@pytest.fixture
def record(cache_flush):
    """record(benchmark, case, label): time one candidate, its operands flushed from the caches
    before every round, and keep its median for the summary table."""
    def measure(benchmark, case, label):
        benchmark.group = case.name
        benchmark.extra_info["floor_bytes"] = case.floor_bytes
        benchmark.pedantic(case.candidates[label], setup=cache_flush, rounds=5, warmup_rounds=1)
        CASES[case.name] = case
        MEDIANS.setdefault(case.name, {})[label] = benchmark.stats.stats.median
    return measure
