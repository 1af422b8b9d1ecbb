"""Data-parallel ClimbQ QAT: two CPU processes on gloo (127.0.0.1) give the losses and gradients
of one process on the concatenated batch, because class statistics are all-reduced (the label
histogram and class spreads of the quantizers, HomoVar's class sums)."""

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
CASES = {"batch_frequency": (cq.ClimbQConfig(), False), "class_std": (cq.ClimbQConfig(sigma="class_std"), False),
         "homovar": (cq.ClimbQConfig(), True)}
"""case -> (quantize_ config, HomoVar beside cross-entropy)."""
CLASS_COUNTS = torch.tensor([160, 80, 40, 30, 10])


def model_and_batch(case: str, sync: bool | None = None):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.LayerNorm(16), nn.ReLU(), nn.Linear(16, 16), nn.LayerNorm(16),
                          nn.ReLU(), nn.Linear(16, CLASSES)).double()
    config, homovar = CASES[case]
    cq.quantize_(model, config)
    homovar = cq.nn.HomoVarLoss(CLASS_COUNTS, sync=sync).attach(model) if homovar else None
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(BATCH, 6, generator=gen, dtype=torch.float64)
    labels = torch.tensor([0] * 16 + [1] * 8 + [2] * 4 + [3] * 3 + [4] * 1)[torch.randperm(BATCH, generator=gen)]
    return model, homovar, x, labels


def step(model, x, labels, homovar=None, sync=None):
    model.train()
    with cq.class_labels(labels, sync=sync):
        logits = model(x)
    loss = F.cross_entropy(logits, labels)
    if homovar is not None:
        loss = loss + homovar(logits, labels)
    loss.backward()
    return loss.detach()


def grads(model) -> dict[str, torch.Tensor]:
    """Gradients by parameter name."""
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def worker(rank: int, port: int, case: str, sync: bool | None, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        model, homovar, x, labels = model_and_batch(case, sync)
        ddp = DistributedDataParallel(model)
        part = slice(rank * BATCH // WORLD, (rank + 1) * BATCH // WORLD)
        loss = step(ddp, x[part], labels[part], homovar, sync=sync)
        torch.save({"loss": loss, "grads": grads(model)}, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def join_within_timeout(context) -> None:
    """Wait for the spawned processes; kill them and fail after TIMEOUT_S seconds."""
    deadline = time.monotonic() + TIMEOUT_S
    while not context.join(timeout=1):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail(f"the two gloo processes did not finish within {TIMEOUT_S} s")


def run_two_processes(case: str, sync: bool | None, tmp_path) -> list[dict]:
    context = mp.start_processes(worker, args=(free_port(), case, sync, str(tmp_path)), nprocs=WORLD,
                                 join=False, start_method="spawn")
    join_within_timeout(context)
    return [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES)
def test_two_processes_match_one_process_on_the_whole_batch(case, tmp_path):
    model, homovar, x, labels = model_and_batch(case)
    loss = step(model, x, labels, homovar)
    expected = grads(model)
    ranks = run_two_processes(case, None, tmp_path)
    torch.testing.assert_close(sum(r["loss"] for r in ranks) / WORLD, loss)
    for r in ranks:
        assert r["grads"].keys() == expected.keys()
        for name, grad in expected.items():
            torch.testing.assert_close(r["grads"][name], grad, msg=name)


@pytest.mark.slow
def test_without_sync_each_process_scales_by_its_own_labels(tmp_path):
    """The control: per-process tables differ from the whole batch's, and so do the gradients."""
    model, homovar, x, labels = model_and_batch("homovar")
    step(model, x, labels, homovar)
    expected = grads(model)
    ranks = run_two_processes("homovar", False, tmp_path)
    assert any(not torch.allclose(ranks[0]["grads"][name], grad) for name, grad in expected.items())


def test_sync_without_an_initialised_process_group_is_refused():
    with pytest.raises(RuntimeError, match="torch.distributed"), cq.class_labels(torch.zeros(4, dtype=torch.long),
                                                                                  sync=True):
        pass


def fsdp_worker(rank: int, port: int, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        from torch.distributed.fsdp import fully_shard

        model, homovar, x, labels = model_and_batch("homovar")
        model.float()
        for layer in model:
            if isinstance(layer, nn.Linear):
                fully_shard(layer)
        fully_shard(model)
        optimiser = torch.optim.SGD(model.parameters(), lr=0.1)
        part = slice(rank * BATCH // WORLD, (rank + 1) * BATCH // WORLD)
        losses = []
        for _ in range(5):
            optimiser.zero_grad()
            losses.append(step(model, x[part].float(), labels[part], homovar))
            optimiser.step()
        torch.save({"losses": torch.stack(losses)}, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_fsdp_shards_and_trains_a_quantized_model(tmp_path):
    """FSDP2 (`fully_shard`) over the quantized layers on CPU/gloo: it wraps, trains and learns."""
    context = mp.start_processes(fsdp_worker, args=(free_port(), str(tmp_path)), nprocs=WORLD, join=False,
                                 start_method="spawn")
    join_within_timeout(context)
    for rank in range(WORLD):
        losses = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)["losses"]
        assert torch.isfinite(losses).all() and losses[-1] < losses[0]
