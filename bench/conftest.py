"""CPU benchmark session: collects each candidate's median, prints the side-by-side table and
appends the rows to the results ledger (ledger.py; --ledger PATH or --no-ledger to redirect)."""

import pytest

import ledger
from climbq_kernels.testing import median_seconds
from report import CpuCacheFlush, copy_bandwidth_bytes_per_s, header, markdown

MEDIANS: dict[str, dict[str, float]] = {}
CASES: dict[str, object] = {}
ROUNDS = 5
SOURCE = "bench/conftest.py (pytest-benchmark)"


def pytest_addoption(parser):
    group = parser.getgroup("climbq ledger")
    group.addoption("--ledger", default=None, help="append the benchmark rows to this JSONL file "
                    f"(default: ${ledger.ENV_VAR} or bench/results/ledger.jsonl)")
    group.addoption("--no-ledger", action="store_true", help="append no benchmark rows")


def pytest_terminal_summary(terminalreporter, config):
    if not MEDIANS:
        return
    bandwidth = copy_bandwidth_bytes_per_s("cpu", median_seconds)
    path = ledger.resolve_path(config.getoption("--ledger"), enabled=not config.getoption("--no-ledger"))
    run = ledger.Ledger("cpu", SOURCE, path,
                        method=f"pytest-benchmark pedantic, {ROUNDS} rounds after 1 warm-up, "
                               "caches flushed before each")
    rows = run.append([row for name, timings in MEDIANS.items()
                       for row in run.case_rows(CASES[name], timings, bandwidth)])
    where = f"appended to {path}" if path else "not recorded (--no-ledger)"
    terminalreporter.write_line(markdown(rows, header("CPU benchmarks", run.context)))
    terminalreporter.write_line(f"{len(rows)} ledger rows {where}")


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
        benchmark.pedantic(case.candidates[label], setup=cache_flush, rounds=ROUNDS, warmup_rounds=1)
        CASES[case.name] = case
        MEDIANS.setdefault(case.name, {})[label] = benchmark.stats.stats.median
    return measure
