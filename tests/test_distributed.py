"""Data-parallel ClimbQ QAT: two CPU processes on gloo (127.0.0.1) give the losses and gradients
of one process on the concatenated batch, because class statistics are all-reduced."""

from __future__ import annotations

import socket
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import climbq_kernels as cq

WORLD = 2
BATCH = 32
CLASSES = 5
TIMEOUT_S = 120
CONFIGS = {"batch_frequency": cq.ClimbQConfig(), "class_std": cq.ClimbQConfig(sigma="class_std")}


def model_and_batch(config_name: str):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.LayerNorm(16), nn.ReLU(), nn.Linear(16, 16), nn.LayerNorm(16),
                          nn.ReLU(), nn.Linear(16, CLASSES)).double()
    cq.quantize_(model, CONFIGS[config_name])
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(BATCH, 6, generator=gen, dtype=torch.float64)
    labels = torch.tensor([0] * 16 + [1] * 8 + [2] * 4 + [3] * 3 + [4] * 1)[torch.randperm(BATCH, generator=gen)]
    return model, x, labels


def step(model, x, labels, sync=None):
    model.train()
    with cq.class_labels(labels, sync=sync):
        loss = F.cross_entropy(model(x), labels)
    loss.backward()
    return loss.detach()


def grads(model) -> dict[str, torch.Tensor]:
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def worker(rank: int, port: int, config_name: str, sync: bool, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        model, x, labels = model_and_batch(config_name)
        ddp = DistributedDataParallel(model)
        part = slice(rank * BATCH // WORLD, (rank + 1) * BATCH // WORLD)
        loss = step(ddp, x[part], labels[part], sync=sync)
        torch.save({"loss": loss, "grads": grads(model)}, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_two_processes(config_name: str, sync: bool, tmp_path) -> list[dict]:
    context = mp.start_processes(worker, args=(free_port(), config_name, sync, str(tmp_path)), nprocs=WORLD,
                                 join=False, start_method="spawn")
    deadline = time.monotonic() + TIMEOUT_S
    while not context.join(timeout=1):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail(f"the two gloo processes did not finish within {TIMEOUT_S} s")
    return [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]


@pytest.mark.slow
@pytest.mark.parametrize("config_name", CONFIGS)
def test_two_processes_match_one_process_on_the_whole_batch(config_name, tmp_path):
    model, x, labels = model_and_batch(config_name)
    loss = step(model, x, labels)
    expected = grads(model)
    ranks = run_two_processes(config_name, True, tmp_path)
    torch.testing.assert_close(sum(r["loss"] for r in ranks) / WORLD, loss)
    for r in ranks:
        assert r["grads"].keys() == expected.keys()
        for name, grad in expected.items():
            torch.testing.assert_close(r["grads"][name], grad, msg=name)


@pytest.mark.slow
def test_without_sync_each_process_scales_by_its_own_labels(tmp_path):
    """The control: per-process tables differ from the whole batch's, and so do the gradients."""
    model, x, labels = model_and_batch("batch_frequency")
    step(model, x, labels)
    expected = grads(model)
    ranks = run_two_processes("batch_frequency", False, tmp_path)
    assert any(not torch.allclose(ranks[0]["grads"][name], grad) for name, grad in expected.items())


def test_sync_without_an_initialised_process_group_is_refused():
    with pytest.raises(RuntimeError, match="torch.distributed"), cq.class_labels(torch.zeros(4, dtype=torch.long),
                                                                                  sync=True):
        pass
