"""Data-parallel ClimbQ QAT: DistributedDataParallel on gloo, class statistics synchronised.

Each process trains on its own shard of a long-tailed batch; `class_labels` all-reduces the label
histogram, so every process quantizes with the class-wise scale of the whole batch (as
SyncBatchNorm does for BatchNorm statistics). Prints the loss of each process per step.

    torchrun --nproc-per-node 2 python/qat_ddp.py         # launched by torchrun
    python python/qat_ddp.py                              # starts 2 CPU processes itself
"""

from __future__ import annotations

import argparse
import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import climbq_kernels as cq

CLASSES, FEATURES = 5, 16
CLASS_SIZES = torch.tensor([64, 32, 16, 8, 4])


def long_tailed_batch(gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Class c has CLASS_SIZES[c] samples around its own mean direction."""
    labels = torch.repeat_interleave(torch.arange(CLASSES), CLASS_SIZES)
    centres = 2 * torch.randn(CLASSES, FEATURES, generator=gen)
    x = centres[labels] + torch.randn(len(labels), FEATURES, generator=gen)
    order = torch.randperm(len(labels), generator=gen)
    return x[order], labels[order]


def train(steps: int) -> None:
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(FEATURES, 64), nn.BatchNorm1d(64), nn.ReLU(), nn.Linear(64, 64),
                          nn.BatchNorm1d(64), nn.ReLU(), nn.Linear(64, CLASSES))
    cq.quantize_(model, cq.ClimbQConfig(w_bits=4, a_bits=4))
    ddp = DistributedDataParallel(model)
    optimiser = torch.optim.SGD(ddp.parameters(), lr=0.05, momentum=0.9)
    x, labels = long_tailed_batch(torch.Generator().manual_seed(1))
    shard = slice(rank, None, world)
    for step in range(steps):
        optimiser.zero_grad()
        with cq.class_labels(labels[shard]):
            loss = F.cross_entropy(ddp(x[shard]), labels[shard])
        loss.backward()
        optimiser.step()
        losses = [torch.zeros(()) for _ in range(world)]
        dist.all_gather(losses, loss.detach())
        if rank == 0:
            print(f"step {step}: loss per process " + ", ".join(f"{v.item():.3f}" for v in losses))


def _spawned(rank: int, world: int, port: int, steps: int) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        train(steps)
    finally:
        dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--processes", type=int, default=2, help="processes to start without torchrun")
    args = parser.parse_args()
    if "RANK" in os.environ:
        dist.init_process_group("gloo")
        try:
            train(args.steps)
        finally:
            dist.destroy_process_group()
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.start_processes(_spawned, args=(args.processes, port, args.steps), nprocs=args.processes,
                       start_method="spawn")


if __name__ == "__main__":
    main()
