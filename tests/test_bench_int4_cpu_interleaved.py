"""bench/int4/int4_cpu_interleaved.py (CPU INT4 ratios measured round-robin): every round calls every
candidate once, in an order that rotates, each after the untimed cache flush; ratios are taken
within a round; and the cache flush reads its buffer without changing it."""

import torch

from .conftest import load_bench_script


def _runner():
    return load_bench_script("int4/int4_cpu_interleaved")


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


def _recorded_rotation(runner, copies: int = 3):
    """Candidates "a" and "b" rotating over `copies` copies, and the list of (name, copy) calls."""
    calls = []

    class Copy:
        def __init__(self, index):
            self.candidates = {name: (lambda name=name: calls.append((name, index))) for name in ("a", "b")}

    return runner.rotating([Copy(i) for i in range(copies)]), calls


def test_rotation_calls_each_copy_in_turn_and_times_consecutive_calls():
    runner = _runner()
    candidates, calls = _recorded_rotation(runner)
    times = runner.interleaved_seconds(candidates, rounds=2, warmup=0, calls_per_turn=2)
    assert calls == [("a", 0), ("a", 1), ("b", 0), ("b", 1), ("b", 2), ("b", 0), ("a", 2), ("a", 0)]
    assert {name: len(seconds) for name, seconds in times.items()} == {"a": 4, "b": 4}


def test_enough_copies_that_four_caches_pass_between_uses():
    runner = _runner()
    assert runner.copies_to_rotate(weight_bytes=25 << 20, cache_bytes=48 << 20) == 8
    assert runner.copies_to_rotate(weight_bytes=1 << 30, cache_bytes=48 << 20) == 2
    assert runner.last_level_cache_bytes() > 0


def test_copies_capped_at_half_the_available_memory():
    runner = _runner()
    # A 480 MiB cache asks for 214 copies of 9 MiB of weights; at 80 MiB a copy, 8 GiB holds 51.
    assert runner.copies_to_rotate(9 << 20, 480 << 20, copy_bytes=80 << 20, memory_bytes=8 << 30) == 51
    assert runner.copies_to_rotate(9 << 20, 480 << 20, copy_bytes=80 << 20, memory_bytes=64 << 30) == 214
    assert runner.copies_to_rotate(9 << 20, 480 << 20, copy_bytes=4 << 30, memory_bytes=4 << 30) == 2
    assert runner.available_memory_bytes() > 0


def test_held_bytes_counts_each_tensor_once_and_looks_inside_objects():
    runner = _runner()
    weight, x = torch.zeros(1000, dtype=torch.float32), torch.zeros(10, dtype=torch.float64)

    class Holder:
        def __init__(self):
            self.codes = torch.zeros(300, dtype=torch.uint8)

    holder = Holder()
    candidates = {"a": lambda: (weight, x), "b": lambda: (weight[:10], holder), "c": lambda: None}
    assert runner.held_bytes(candidates) == 4000 + 80 + 300


def test_every_copy_read_once_before_the_timed_calls():
    runner = _runner()
    candidates, calls = _recorded_rotation(runner)
    runner.read_each_copy_once(candidates, 3)
    assert calls == [("a", 0), ("a", 1), ("a", 2), ("b", 0), ("b", 1), ("b", 2)]
    candidates["a"]()
    assert calls[-1] == ("a", 0)
