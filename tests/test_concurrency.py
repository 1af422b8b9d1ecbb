"""Thread safety and memory (docs/reliability.md): public calls from several Python threads at once
give the bits of a call made alone, and a long run of training steps does not grow the process."""

from __future__ import annotations

import gc
import os
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

import climbq_kernels as cq

from .conftest import KERNEL_BACKENDS

# Triton's CPU interpreter keeps the launch grid in global state: interpreted launches cannot
# overlap, so Triton joins where it compiles (a GPU).
CONCURRENT_BACKENDS = [("reference", "cpu")] + [(b, d) for b, d in KERNEL_BACKENDS if (b, d) != ("triton", "cpu")]
THREADS = 4


def _calls(device: str, gen: torch.Generator) -> dict:
    """One closure per public op, each computing outputs and gradients from fixed inputs."""
    x = torch.randn(16, 3, 5, 5, generator=gen).to(device)
    labels = torch.randint(0, 4, (16,), generator=gen).to(device)
    w = torch.randn(8, 3, 3, 3, generator=gen).to(device)
    qweight = cq.quantize_int4(torch.randn(8, 64, generator=gen), group_size=32).to(device)
    rows = torch.randn(5, 64, generator=gen).to(device)

    def with_grad(fn, *inputs):
        leaves = [t.detach().clone().requires_grad_() for t in inputs]
        out = fn(*leaves)
        out.backward(torch.ones_like(out))
        return [out.detach(), *(leaf.grad for leaf in leaves)]

    return {
        "climbq_act_quant": lambda: with_grad(lambda t: cq.climbq_act_quant(t, labels, num_classes=4, bits=3), x),
        "climbq_weight_quant": lambda: with_grad(lambda t: cq.climbq_weight_quant(t, bits=4), w),
        "fake_quant_lsq": lambda: with_grad(lambda t, s: cq.fake_quant(t, s, 0, -8, 7), x,
                                            torch.tensor(0.1, device=device)),
        "class_stats": lambda: list(cq.class_stats(x, labels, 4)),
        "int4_matmul": lambda: [cq.int4_matmul(rows, qweight)],
    }


@pytest.mark.parametrize("backend,device", CONCURRENT_BACKENDS)
def test_concurrent_calls_give_the_bits_of_a_call_alone(backend, device, gen):
    calls = _calls(device, gen)
    with cq.use_backend(backend):
        alone = {name: call() for name, call in calls.items()}

    def run(name):
        with cq.use_backend(backend):  # the backend choice is per thread (a context variable)
            return name, calls[name]()

    names = [name for name in calls for _ in range(THREADS)]
    with ThreadPoolExecutor(THREADS) as pool:
        for name, results in pool.map(run, names):
            for got, expected in zip(results, alone[name], strict=True):
                assert torch.equal(got, expected), f"{name} differs when run beside other threads"


def _resident_bytes() -> int:
    with open(f"/proc/{os.getpid()}/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="reads resident memory from /proc (Linux)")
def test_training_steps_do_not_grow_the_process(gen):
    """1,000 QAT steps after a warm-up: resident memory grows by less than 4 MiB (no tensor, graph
    or cache kept per step)."""
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                                torch.nn.Flatten(), torch.nn.Linear(8 * 6 * 6, 4))
    cq.quantize_(model, cq.ClimbQConfig(num_classes=4))
    optimiser = torch.optim.SGD(model.parameters(), lr=0.01)
    x = torch.randn(8, 3, 8, 8, generator=gen)
    labels = torch.randint(0, 4, (8,), generator=gen)

    def steps(count):
        for _ in range(count):
            with cq.class_labels(labels):
                loss = torch.nn.functional.cross_entropy(model(x), labels)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()

    steps(200)
    gc.collect()
    before = _resident_bytes()
    steps(1000)
    gc.collect()
    grown = _resident_bytes() - before
    assert grown < 4 << 20, f"resident memory grew by {grown / 2**20:.2f} MiB over 1,000 steps"
