"""`CoresetSampler`: the training loop's view of ACS (algorithms.md §2).

A `torch.utils.data.Sampler` over dataset indices that, every `interval` (R) epochs, re-scores
the whole training set through `score_dataset` (quantized and float model, eval mode, one pass)
and keeps the `select_coreset` subset; each epoch it yields that subset, shuffled. Pass it as a
DataLoader's `sampler`. With several replicas it behaves as `DistributedSampler`: every rank
yields a disjoint shard of the same shuffled coreset (padded by repeating its start so that all
shards are equally long, or cut with `drop_last`); under torch.distributed rank 0's selection is
broadcast so that all ranks hold the same coreset even when their scores differ in the last bits.

`selection="random"` keeps a uniformly random subset of the same per-class sizes instead
(re-drawn every R epochs): the baseline ACS is compared against.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import Sampler

from ...reference._args import check_int
from .scoring import score_dataset
from .selection import check_coreset_fraction, coreset_size, select_coreset

__all__ = ["SELECTIONS", "CoresetSampler"]

SELECTIONS = ("acs", "random")


class CoresetSampler(Sampler[int]):
    """Yields this rank's share of the current coreset's dataset indices each epoch.

    model_q / model_fp: the QAT model (any `quantize_` config) and its full-precision twin;
    score_loader: (inputs, labels) batches of the un-augmented training set in dataset order;
    labels: (N,) integer labels of the training set (sizes the coreset, checked against the
    loader's); epochs: E of the beta schedule; fraction: f in (0, 1]; interval: R >= 1 epochs
    between re-selections; schedule: "cos" or "cos2"; per_class: class-wise or global top-k;
    selection: "acs" or "random"; num_replicas / rank: as DistributedSampler (default: the process
    group's, else 1 / 0); shuffle, seed, drop_last: as DistributedSampler.

    Call `set_epoch(t)` before each epoch as with DistributedSampler; without it each iteration
    advances the epoch by one. Re-selection happens at the first iteration in each block of R
    epochs (t // R changes), so a resumed run re-scores at once. `scoring_seconds` sums the
    scoring passes, `history` records each selection.
    """

    def __init__(self, model_q: nn.Module, model_fp: nn.Module, score_loader, labels: Tensor, *, epochs: int,
                 fraction: float = 0.1, interval: int = 10, schedule: str = "cos", per_class: bool = True,
                 selection: str = "acs", num_replicas: int | None = None, rank: int | None = None,
                 shuffle: bool = True, seed: int = 0, drop_last: bool = False, device=None, progress: bool = True):
        self.fraction = check_coreset_fraction(fraction)
        self.interval = check_int("interval", interval, 1)
        self.epochs = check_int("epochs", epochs, 1)
        if selection not in SELECTIONS:
            raise ValueError(f"selection must be one of {SELECTIONS}, got {selection!r}")
        if schedule not in ("cos", "cos2"):
            raise ValueError(f"schedule must be 'cos' or 'cos2', got {schedule!r}")
        if not isinstance(labels, Tensor) or labels.dim() != 1 or labels.dtype.is_floating_point:
            raise TypeError("labels must be a 1-D integer tensor of the training set's labels")
        if not labels.numel():
            raise ValueError("labels is empty: there is no training set to select from")
        if num_replicas is None:
            num_replicas = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        if rank is None:
            rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        self.num_replicas = check_int("num_replicas", num_replicas, 1)
        self.rank = check_int("rank", rank, 0)
        if self.rank >= self.num_replicas:
            raise ValueError(f"rank must lie in [0, num_replicas={self.num_replicas}), got {self.rank}")
        self.model_q, self.model_fp, self.score_loader = model_q, model_fp, score_loader
        self.labels = labels.detach().long().cpu()
        self.schedule, self.per_class, self.selection = schedule, per_class, selection
        self.shuffle, self.seed, self.drop_last = shuffle, seed, drop_last
        self.device, self.progress = device, progress
        self.coreset_size = coreset_size(self.labels, self.fraction, per_class)
        self.epoch = 0
        self.indices: Tensor | None = None
        self._block: int | None = None
        self.scoring_seconds = 0.0
        self.history: list[dict] = []

    def set_epoch(self, epoch: int) -> None:
        self.epoch = check_int("epoch", epoch, 0)

    @property
    def num_samples(self) -> int:
        """Indices each rank yields per epoch."""
        if self.drop_last:
            return self.coreset_size // self.num_replicas
        return math.ceil(self.coreset_size / self.num_replicas)

    def __len__(self) -> int:
        return self.num_samples

    def refresh(self, epoch: int) -> Tensor:
        """Score and select for `epoch` now; returns the coreset (sorted dataset indices)."""
        if self.selection == "random":
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            scores, seconds, beta = torch.rand(self.labels.numel(), generator=gen), 0.0, None
        else:
            result = score_dataset(self.model_q, self.model_fp, self.score_loader, epoch=min(epoch, self.epochs),
                                   epochs=self.epochs, schedule=self.schedule, device=self.device,
                                   progress=self.progress)
            if not torch.equal(result.labels, self.labels):
                raise ValueError("score_loader must yield the training set in dataset order with the labels given "
                                 f"as labels ({result.labels.numel()} samples scored for {self.labels.numel()} labels, "
                                 "or a different order: a shuffling loader?)")
            scores, seconds, beta = result.scores, result.seconds, result.beta
        indices = select_coreset(scores, self.labels, self.fraction, per_class=self.per_class)
        if self.num_replicas > 1 and dist.is_available() and dist.is_initialized():
            device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
            shared = indices.to(device)
            dist.broadcast(shared, src=0)
            indices = shared.cpu()
        self.indices = indices
        self.scoring_seconds += seconds
        self.history.append({"epoch": epoch, "beta": beta, "seconds": seconds, "size": int(indices.numel())})
        return indices

    def __iter__(self) -> Iterator[int]:
        epoch = self.epoch
        block = epoch // self.interval
        if self.indices is None or block != self._block:
            self.refresh(epoch)
            self._block = block
        order = self.indices
        if self.shuffle:
            gen = torch.Generator().manual_seed(self.seed + epoch)
            order = order[torch.randperm(order.numel(), generator=gen)]
        total = self.num_samples * self.num_replicas
        if total > order.numel():
            order = order.repeat(math.ceil(total / order.numel()))
        order = order[:total]
        self.epoch = epoch + 1
        return iter(order[self.rank:total:self.num_replicas].tolist())
