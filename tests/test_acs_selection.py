"""ACS coreset selection, dataset scoring and CoresetSampler (algorithms.md §2): definitions against
direct implementations, DistributedSampler semantics with explicit replicas, quantize_ models,
the claim that EVS ranks a mislabelled sample high, and bad input."""

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import climbq_kernels as cq
from climbq_kernels.methods import acs


def _direct_select(scores, labels, fraction):
    """Per class: sort (score descending, index ascending), keep max(1, round(f * n_c))."""
    keep = []
    for c in sorted(set(labels.tolist())):
        members = [i for i in range(len(labels)) if labels[i] == c]
        members.sort(key=lambda i: (-scores[i].item(), i))
        keep += members[:max(1, round(fraction * len(members)))]
    return sorted(keep)


@pytest.mark.parametrize("fraction", [0.1, 0.3, 0.5, 1.0])
def test_per_class_selection_matches_direct(fraction, gen):
    labels = torch.randint(0, 5, (83,), generator=gen)
    labels[:3] = 5  # a class of three samples: at least one of them is kept
    scores = torch.rand(83, generator=gen)
    scores[10:20] = 0.5  # ties go to the lower index
    got = acs.select_coreset(scores, labels, fraction)
    assert got.tolist() == _direct_select(scores, labels, fraction)
    assert got.numel() == acs.coreset_size(labels, fraction)
    assert set(labels[got].tolist()) == set(labels.tolist())


def test_global_selection_is_top_k(gen):
    scores, labels = torch.rand(50, generator=gen), torch.randint(0, 3, (50,), generator=gen)
    got = acs.select_coreset(scores, labels, 0.2, per_class=False)
    assert got.tolist() == sorted(torch.topk(scores, 10).indices.tolist())
    assert acs.select_coreset(scores, labels, 0.001, per_class=False).numel() == 1


@pytest.mark.parametrize("call,error,match", [
    (lambda s, y: acs.select_coreset(s, y, 0.0), ValueError, "fraction"),
    (lambda s, y: acs.select_coreset(s, y, 1.5), ValueError, "fraction"),
    (lambda s, y: acs.select_coreset(s, y, True), TypeError, "fraction"),
    (lambda s, y: acs.select_coreset(s, y[:5], 0.5), ValueError, "labels"),
    (lambda s, y: acs.select_coreset(s, y.float(), 0.5), TypeError, "labels"),
    (lambda s, y: acs.select_coreset(s, y, 0.5, num_classes=4), ValueError, "class 3"),
    (lambda s, y: acs.select_coreset(torch.where(y == 1, float("nan"), s), y, 0.5), ValueError, "scores"),
    (lambda s, y: acs.select_coreset(s[None], y, 0.5), ValueError, "scores"),
])
def test_selection_bad_input(call, error, match, gen):
    scores, labels = torch.rand(12, generator=gen), torch.arange(12) % 3
    with pytest.raises(error, match=match):
        call(scores, labels)


# --- dataset scoring and the sampler ------------------------------------------------------------

def _data(gen, n=60, k=3, dim=8):
    x = torch.randn(n, dim, generator=gen)
    y = torch.arange(n) % k
    return x + y[:, None] * 0.5, y


def _models(k=3, dim=8):
    torch.manual_seed(0)
    model_fp = nn.Sequential(nn.Linear(dim, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, k))
    model_q = nn.Sequential(nn.Linear(dim, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, k))
    model_q.load_state_dict(model_fp.state_dict())
    return model_q, model_fp


def test_score_dataset_equals_acs_score_of_the_whole_set(gen):
    x, y = _data(gen)
    model_q, model_fp = _models()
    cq.quantize_(model_q, cq.LSQConfig(w_bits=4, a_bits=4))
    model_q.train()
    result = acs.score_dataset(model_q, model_fp, DataLoader(TensorDataset(x, y), batch_size=7), epoch=4, epochs=10,
                               progress=False)
    assert model_q.training and model_fp.training  # modes restored
    model_q.eval()
    model_fp.eval()
    with torch.no_grad():
        expected = acs.acs_score(model_q(x), model_fp(x), y, 4, 10)
    torch.testing.assert_close(result.scores, expected)
    assert torch.equal(result.labels, y) and result.seconds > 0


@pytest.mark.parametrize("config", [cq.LSQConfig(w_bits=4, a_bits=4), cq.ClimbQConfig(w_bits=4, a_bits=4)],
                         ids=["lsq", "climbq"])
@pytest.mark.parametrize("num_replicas,drop_last", [(1, False), (3, False), (4, False), (4, True)])
def test_sampler_shards_and_reselects(config, num_replicas, drop_last, gen):
    x, y = _data(gen)
    model_q, model_fp = _models()
    cq.quantize_(model_q, config)
    loader = DataLoader(TensorDataset(x, y), batch_size=16)
    samplers = [acs.CoresetSampler(model_q, model_fp, loader, y, epochs=6, fraction=0.3, interval=2,
                                   num_replicas=num_replicas, rank=r, drop_last=drop_last, progress=False)
                for r in range(num_replicas)]
    size = acs.coreset_size(y, 0.3)
    assert size == 18
    for epoch in range(5):
        shards = []
        for s in samplers:
            s.set_epoch(epoch)
            shards.append(list(s))
            assert len(shards[-1]) == len(s)
        coreset = set(samplers[0].indices.tolist())
        everything = [i for shard in shards for i in shard]
        if drop_last:
            assert len(everything) == len(set(everything)) == size // num_replicas * num_replicas
            assert set(everything) <= coreset
        else:
            assert set(everything) == coreset
            assert len(everything) == -(-size // num_replicas) * num_replicas
            if size % num_replicas == 0:
                assert len(set(everything)) == len(everything)  # disjoint shards
        assert all(torch.equal(s.indices, samplers[0].indices) for s in samplers)
    assert [h["epoch"] for h in samplers[0].history] == [0, 2, 4]  # every R = 2 epochs
    assert samplers[0].scoring_seconds > 0


def test_sampler_feeds_a_dataloader_and_advances_without_set_epoch(gen):
    x, y = _data(gen)
    model_q, model_fp = _models()
    sampler = acs.CoresetSampler(model_q, model_fp, DataLoader(TensorDataset(x, y), batch_size=60), y, epochs=3,
                                 fraction=0.1, interval=1, progress=False)
    train_loader = DataLoader(TensorDataset(x, y), batch_size=4, sampler=sampler)
    for _ in range(3):
        seen = torch.cat([yb for _, yb in train_loader])
        assert seen.numel() == 6 and torch.bincount(seen, minlength=3).tolist() == [2, 2, 2]
    assert [h["epoch"] for h in sampler.history] == [0, 1, 2]
    assert [h["beta"] for h in sampler.history][0] == 1.0


def test_random_selection_keeps_class_sizes(gen):
    x, y = _data(gen)
    y = torch.cat([torch.zeros(40, dtype=torch.long), torch.ones(15, dtype=torch.long), torch.full((5,), 2)])
    sampler = acs.CoresetSampler(None, None, None, y, epochs=4, fraction=0.2, selection="random", progress=False)
    picked = torch.tensor(list(sampler))
    assert torch.bincount(y[picked], minlength=3).tolist() == [8, 3, 1]


@pytest.mark.parametrize("kwargs,error,match", [
    ({"interval": 0}, ValueError, "interval"),
    ({"fraction": 0.0}, ValueError, "fraction"),
    ({"fraction": 1.01}, ValueError, "fraction"),
    ({"rank": 2, "num_replicas": 2}, ValueError, "rank"),
    ({"selection": "best"}, ValueError, "selection"),
    ({"schedule": "linear"}, ValueError, "schedule"),
    ({"epochs": 0}, ValueError, "epochs"),
])
def test_sampler_bad_arguments(kwargs, error, match, gen):
    x, y = _data(gen)
    args = {"epochs": 5, **kwargs}
    with pytest.raises(error, match=match):
        acs.CoresetSampler(None, None, None, y, **args)


def test_sampler_refuses_a_shuffled_or_nan_loader(gen):
    x, y = _data(gen)
    model_q, model_fp = _models()
    shuffled = DataLoader(TensorDataset(x, y), batch_size=8, shuffle=True, generator=gen)
    with pytest.raises(ValueError, match="dataset order"):
        list(acs.CoresetSampler(model_q, model_fp, shuffled, y, epochs=2, progress=False))
    x_nan = x.clone()
    x_nan[13, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN at sample 13"):
        list(acs.CoresetSampler(model_q, model_fp, DataLoader(TensorDataset(x_nan, y), batch_size=8), y, epochs=2,
                                progress=False))


def test_evs_ranks_a_mislabelled_sample_high(gen):
    """The method's claim: after training, a sample whose label is wrong has a large error vector
    score (the model fits the clean majority); it lands in the top 5% of 200."""
    x = torch.randn(200, 2, generator=gen)
    y = (x[:, 0] > 0).long()
    far = int(torch.argmax(x[:, 0]))  # deep inside class 1
    y[far] = 0
    model = nn.Linear(2, 2)
    torch.manual_seed(0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(200):
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        evs = acs.error_vector_score(model(x), y)
    assert int((evs > evs[far]).sum()) < 10
    coreset = acs.select_coreset(evs, y, 0.05)
    assert far in coreset.tolist()
