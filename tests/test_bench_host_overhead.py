"""bench/host_overhead.py: every candidate timed in every round, ratios within a round."""

import math

from .conftest import load_bench_script


def test_every_candidate_of_every_case_is_timed_against_its_baseline():
    bench = load_bench_script("host_overhead")
    results = bench.run(rounds=2, calls=2)
    assert len(results) == 2
    assert [len(candidates) for candidates in results.values()] == [4, 3]
    for candidates in results.values():
        baseline = next(iter(candidates.values()))
        assert baseline["ratios"] == [1.0, 1.0]
        for result in candidates.values():
            assert result["median_s"] > 0 and len(result["ratios"]) == 2
            assert all(math.isfinite(r) and r > 0 for r in result["ratios"])
