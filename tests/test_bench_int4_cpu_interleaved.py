"""bench/int4_cpu_interleaved.py (CPU INT4 ratios measured round-robin): every round calls every
candidate once, in an order that rotates, each after the untimed cache flush; ratios are taken
within a round; and the cache flush reads its buffer without changing it."""

import torch

from .conftest import load_bench_script


def _runner():
    return load_bench_script("int4_cpu_interleaved")


def test_rounds_rotate_the_order_and_flush_before_every_call():
    runner = _runner()
    calls = []
    candidates = {name: (lambda name=name: calls.append(name)) for name in ("a", "b", "c")}
    times = runner.interleaved_seconds(candidates, rounds=3, before_each=lambda: calls.append("flush"), warmup=1)
    assert calls[:3] == ["a", "b", "c"]  # the warm-up round, not flushed
    assert calls[3:] == ["flush", "a", "flush", "b", "flush", "c",
                         "flush", "b", "flush", "c", "flush", "a",
                         "flush", "c", "flush", "a", "flush", "b"]
    assert {name: len(seconds) for name, seconds in times.items()} == {"a": 3, "b": 3, "c": 3}


def test_ratios_are_taken_within_each_round():
    runner = _runner()
    # The machine slows down 4x over the rounds; within each round "ours" is 5x the baseline.
    baseline = [1.0, 2.0, 3.0, 4.0, 4.0]
    times = {"dense": baseline, "ours": [t / 5 for t in baseline]}
    ours = {row["candidate"]: row for row in runner.summarize("case", times)}["ours"]
    assert ours["ratio_q1"] == ours["ratio_median"] == ours["ratio_q3"] == 5.0
    assert ours["median_ms"] == 3.0 / 5 * 1e3


def test_cache_flush_reads_without_writing():
    report = load_bench_script("report")
    flush = report.CpuCacheFlush(size_bytes=1 << 20)
    before = flush.buffer.clone()
    flush()
    assert torch.equal(flush.buffer, before)


def test_rotation_calls_each_copy_in_turn_and_times_consecutive_calls():
    runner = _runner()
    calls = []

    class Copy:
        def __init__(self, index):
            self.candidates = {name: (lambda name=name: calls.append((name, index))) for name in ("a", "b")}

    candidates = runner.rotating([Copy(0), Copy(1), Copy(2)])
    times = runner.interleaved_seconds(candidates, rounds=2, warmup=0, calls_per_turn=2)
    assert calls == [("a", 0), ("a", 1), ("b", 0), ("b", 1), ("b", 2), ("b", 0), ("a", 2), ("a", 0)]
    assert {name: len(seconds) for name, seconds in times.items()} == {"a": 4, "b": 4}


def test_enough_copies_that_four_caches_pass_between_uses():
    runner = _runner()
    assert runner.copies_to_rotate(weight_bytes=25 << 20, cache_bytes=48 << 20) == 8
    assert runner.copies_to_rotate(weight_bytes=1 << 30, cache_bytes=48 << 20) == 2
    assert runner.last_level_cache_bytes() > 0
