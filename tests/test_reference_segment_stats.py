"""Per-class segmented statistics reference (algorithms.md §1c steps 1-3, §4a) against per-class loops."""

import math

import pytest
import torch

from climbq_kernels.reference import class_stats


def make_gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def loop_stats(x: torch.Tensor, labels: torch.Tensor, num_classes: int):
    """Per class: gather its samples, move the feature/channel dim first, reduce the rest."""
    features = x.shape[1] if x.dim() > 1 else 1
    counts, means, variances = [], [], []
    for c in range(num_classes):
        rows = x[labels == c]
        positions = math.prod(x.shape[2:])
        per_feature = rows.reshape(rows.shape[0], features, positions).transpose(0, 1).reshape(features, -1)
        counts.append(per_feature.shape[1])
        if per_feature.shape[1] == 0:
            means.append(torch.zeros(features, dtype=x.dtype))
            variances.append(torch.zeros(features, dtype=x.dtype))
        else:
            means.append(per_feature.mean(dim=1))
            variances.append(per_feature.var(dim=1, unbiased=False))
    mean, var = torch.stack(means), torch.stack(variances)
    if x.dim() == 1:
        mean, var = mean.squeeze(1), var.squeeze(1)
    return torch.tensor(counts), mean, var


@pytest.mark.parametrize("shape", [(1, 1), (9, 5), (5, 123, 7), (6, 3, 4, 5), (7,), (1, 2, 3)])
def test_matches_loop(shape):
    gen = make_gen(sum(shape))
    num_classes = 4
    x = torch.randn(shape, generator=gen, dtype=torch.float64) * 2 + 0.7
    labels = torch.randint(0, num_classes - 1, (shape[0],), generator=gen)  # class 3 absent
    counts, mean, var = class_stats(x, labels, num_classes)
    ref_counts, ref_mean, ref_var = loop_stats(x, labels, num_classes)
    assert counts.dtype == torch.int64 and torch.equal(counts, ref_counts)
    assert mean.dtype == x.dtype and mean.shape == ref_mean.shape
    assert torch.allclose(mean, ref_mean, rtol=1e-12, atol=1e-13)
    assert torch.allclose(var, ref_var, rtol=1e-12, atol=1e-13)
    assert counts[3] == 0 and bool((mean[3] == 0).all()) and bool((var[3] == 0).all())


def test_bchw_counts_and_shapes():
    gen = make_gen(5)
    x = torch.randn(6, 3, 4, 5, generator=gen)
    labels = torch.tensor([0, 2, 2, 1, 2, 0])
    counts, mean, var = class_stats(x, labels, 3)
    assert counts.tolist() == [2 * 20, 1 * 20, 3 * 20]
    assert mean.shape == (3, 3) and var.shape == (3, 3)
    picked = x[labels == 2]  # (3, C, H, W)
    assert torch.allclose(mean[2], picked.mean(dim=(0, 2, 3)), atol=1e-6)
    assert torch.allclose(var[2], picked.var(dim=(0, 2, 3), unbiased=False), atol=1e-6)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float16, 2e-2), (torch.bfloat16, 1e-1)])
def test_low_precision_tracks_float64(dtype, tol):
    gen = make_gen(6)
    x = torch.randn(64, 8, 3, 3, generator=gen, dtype=torch.float64)
    labels = torch.randint(0, 5, (64,), generator=gen)
    _, mean64, var64 = class_stats(x, labels, 5)
    counts, mean, var = class_stats(x.to(dtype), labels, 5)
    assert mean.dtype == dtype and var.dtype == dtype
    assert torch.allclose(mean.double(), mean64, atol=tol, rtol=tol)
    assert torch.allclose(var.double(), var64, atol=tol, rtol=tol)


def test_empty_batch():
    counts, mean, var = class_stats(torch.empty(0, 4), torch.empty(0, dtype=torch.int64), 3)
    assert counts.tolist() == [0, 0, 0] and mean.shape == (3, 4) and not bool(var.any())


@pytest.mark.parametrize("labels,error", [
    (torch.tensor([0, 1, 4]), ValueError), (torch.tensor([0, -1, 1]), ValueError),
    (torch.tensor([0, 1]), ValueError), (torch.tensor([0.0, 1.0, 2.0]), TypeError),
])
def test_bad_labels(labels, error):
    with pytest.raises(error, match="labels"):
        class_stats(torch.ones(3, 2) * 0.5, labels, 4)


def test_bad_x_and_purity():
    with pytest.raises(TypeError, match="x"):
        class_stats(torch.ones(3, 2, dtype=torch.int64), torch.tensor([0, 1, 1]), 2)
    with pytest.raises(ValueError, match="x"):
        class_stats(torch.tensor(0.5), torch.tensor([0]), 2)
    x, labels = torch.linspace(-1, 1, 6).reshape(3, 2), torch.tensor([0, 1, 1])
    saved = (x.clone(), labels.clone())
    class_stats(x, labels, 2)
    assert torch.equal(saved[0], x) and torch.equal(saved[1], labels)
