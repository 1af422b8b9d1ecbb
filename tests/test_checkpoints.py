"""Checkpoint safety of INT4 and QAT models: exact round trips through `torch.load(weights_only=True)`,
and tampered checkpoints refused by the name of the bad tensor with the model left unchanged."""

from __future__ import annotations

import copy
import io
import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import climbq_kernels as cq
from climbq_kernels.checkpoint import checkpoint_errors
from climbq_kernels.nn import LSQActQuant, convert_int4

from .conftest import assert_same_state

CLASSES = 10


def _saved(state: dict) -> dict:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def _assert_refused(model: nn.Module, state: dict, key: str, match: str = "", strict: bool = True) -> None:
    """Loading `state` raises naming `key` (and `match`), and leaves every tensor of model as it was."""
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(RuntimeError, match=re.escape(key) + ".*" + match) as err:
        model.load_state_dict(state, strict=strict)
    assert "nothing was loaded" in str(err.value)
    assert_same_state(model.state_dict(), before)


def _with(state: dict, key: str, value) -> dict:
    return {**state, key: value}


def _without(state: dict, key: str) -> dict:
    return {k: v for k, v in state.items() if k != key}


def _poisoned(t: torch.Tensor, value: float) -> torch.Tensor:
    t = t.clone()
    t.view(-1)[0] = value
    return t


# --- INT4 ---------------------------------------------------------------------------------------

def _int4_model(seed: int) -> nn.Module:
    """Conv (K = 32) -> Linear(32, 64) -> Linear(64, 10), group size 32 everywhere; the last module is '5'."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(8, 8, 2, stride=2), nn.ReLU(), nn.Flatten(), nn.Linear(32, 64), nn.ReLU(),
                          nn.Linear(64, CLASSES))
    return convert_int4(model, 32)


@pytest.fixture(scope="module")
def int4_checkpoint() -> dict:
    return _saved(_int4_model(0).state_dict())


def test_int4_checkpoint_round_trips_exactly_with_weights_only(int4_checkpoint):
    source, target = _int4_model(0), _int4_model(1)
    target.load_state_dict(int4_checkpoint, strict=True)
    assert_same_state(target.state_dict(), source.state_dict())
    x = torch.randn(3, 8, 4, 4)
    assert torch.equal(target(x), source(x))


INT4_TAMPERINGS = {
    "truncated-packed": lambda s: (_with(s, "5.packed", s["5.packed"][:, :-1]), "5.packed", "truncated"),
    "truncated-rows": lambda s: (_with(s, "5.packed", s["5.packed"][:-1]), "5.packed", r"shape \(10, 32\)"),
    "first-module-packed": lambda s: (_with(s, "0.packed", s["0.packed"][:, :8]), "0.packed", "truncated"),
    "scales-shape": lambda s: (_with(s, "5.scales", s["5.scales"][:, :1]), "5.scales", r"shape \(10, 2\)"),
    "bias-shape": lambda s: (_with(s, "5.bias", torch.zeros(CLASSES + 1)), "5.bias", "size mismatch"),
    "packed-dtype": lambda s: (_with(s, "5.packed", s["5.packed"].int()), "5.packed", "torch.int32"),
    "scales-dtype": lambda s: (_with(s, "5.scales", s["5.scales"].double()), "5.scales", "torch.float64"),
    "invalid-group-size": lambda s: (_with(s, "5._extra_state", {"group_size": 48}), "5._extra_state",
                                     "valid group_size"),
    "other-group-size": lambda s: (_with(s, "5._extra_state", {"group_size": 64}), "5.scales", "group_size 64"),
    "extra-state-not-a-dict": lambda s: (_with(s, "5._extra_state", 32), "5._extra_state", "valid group_size"),
    "nan-scale": lambda s: (_with(s, "5.scales", _poisoned(s["5.scales"], float("nan"))), "5.scales", "finite"),
    "inf-scale": lambda s: (_with(s, "5.scales", _poisoned(s["5.scales"], float("inf"))), "5.scales", "finite"),
    "nan-zero": lambda s: (_with(s, "5.zeros", _poisoned(s["5.zeros"], float("nan"))), "5.zeros", "finite"),
    "inf-bias": lambda s: (_with(s, "5.bias", _poisoned(s["5.bias"], float("-inf"))), "5.bias", "finite"),
    "missing-key": lambda s: (_without(s, "5.zeros"), "5.zeros", ""),
    "unexpected-key": lambda s: (_with(s, "5.weight", torch.zeros(CLASSES, 64)), "5.weight", ""),
    "not-a-tensor": lambda s: (_with(s, "3.bias", [0.0] * 64), "3.bias", "must be a tensor"),
}


@pytest.mark.parametrize("tamper", INT4_TAMPERINGS.values(), ids=INT4_TAMPERINGS)
def test_a_tampered_int4_checkpoint_is_refused_by_name_and_changes_nothing(tamper, int4_checkpoint):
    bad, key, match = tamper(int4_checkpoint)
    _assert_refused(_int4_model(1), bad, key, match)


def test_int4_refusal_is_atomic_inside_wrappers_and_copies(int4_checkpoint):
    bad = _with(int4_checkpoint, "5.scales", _poisoned(int4_checkpoint["5.scales"], float("nan")))

    class Wrapper(nn.Module):  # a DistributedDataParallel-like wrapper: the model under 'module.'
        def __init__(self, module):
            super().__init__()
            self.module = module

    _assert_refused(nn.Sequential(_int4_model(1)), {"0." + k: v for k, v in bad.items()}, "0.5.scales", "finite")
    _assert_refused(Wrapper(_int4_model(1)), {"module." + k: v for k, v in bad.items()}, "module.5.scales")
    _assert_refused(copy.deepcopy(_int4_model(1)), bad, "5.scales", "finite")
    _assert_refused(_int4_model(1), bad, "5.scales", "finite", strict=False)


def test_strict_false_still_loads_a_checkpoint_with_missing_keys(int4_checkpoint):
    target = _int4_model(1)
    zeros = target.state_dict()["5.zeros"].clone()
    missing, unexpected = target.load_state_dict(_without(int4_checkpoint, "5.zeros"), strict=False)
    assert missing == ["5.zeros"] and not unexpected
    assert torch.equal(target.state_dict()["5.zeros"], zeros)
    assert torch.equal(target.state_dict()["5.packed"], int4_checkpoint["5.packed"])


def test_checkpoint_errors_lists_every_bad_tensor(int4_checkpoint):
    bad = _with(_without(int4_checkpoint, "3.zeros"), "5.scales", _poisoned(int4_checkpoint["5.scales"], float("inf")))
    errors = checkpoint_errors(_int4_model(1), bad)
    assert any('"3.zeros"' in e for e in errors) and any(e.startswith("5.scales") for e in errors)
    assert checkpoint_errors(_int4_model(1), int4_checkpoint) == []


# --- QAT --------------------------------------------------------------------------------------

def _convnet() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, CLASSES))


CONFIGS = {
    # name: (config, a learned tensor of the last module's weight quantizer, one of an activation quantizer)
    "climbq": (cq.ClimbQConfig(quantize_classifier=True), "8.weight_quant.scale", None),
    "climbq-class-std": (cq.ClimbQConfig(sigma="class_std", quantize_classifier=True), "8.weight_quant.scale",
                         "4.act_quant.running_sigma"),
    "lsq": (cq.LSQConfig(quantize_classifier=True), "8.weight_quant.step", "4.act_quant.step"),
    "fakequant": (cq.FakeQuantConfig(w_bits=4, a_bits=8, quantize_classifier=True), None, "4.act_quant.min_val"),
}
X = torch.randn(8, 3, 8, 8, generator=torch.Generator().manual_seed(0))
LABELS = torch.arange(8) % CLASSES


def _qat_model(config, seed: int, train: bool = True) -> nn.Module:
    torch.manual_seed(seed)
    model = cq.quantize_(_convnet(), config)
    if train:
        model.train()
        with cq.class_labels(LABELS):
            F.cross_entropy(model(X * (1 + seed)), LABELS).backward()
    return model.eval()


@pytest.fixture(scope="module", params=CONFIGS, ids=CONFIGS)
def qat(request) -> tuple:
    """(config, the saved checkpoint of a trained model, another trained model to copy and load it into,
    the learned weight and activation keys of CONFIGS)."""
    config, weight_key, act_key = CONFIGS[request.param]
    return config, _saved(_qat_model(config, 0).state_dict()), _qat_model(config, 1), weight_key, act_key


def test_qat_checkpoint_round_trips_exactly_with_weights_only(qat):
    config, checkpoint, target, _, _ = qat
    source, target = _qat_model(config, 0), copy.deepcopy(target)
    target.load_state_dict(checkpoint, strict=True)
    assert_same_state(target.state_dict(), source.state_dict())
    with torch.no_grad():
        assert torch.equal(target(X), source(X))


def _settings_with(state: dict, key: str, **changes) -> dict:
    return _with(state, key, {**state[key], **changes})


QAT_TAMPERINGS = {  # name: (the tensor it needs, tampering(state, that key) -> (bad state, key named, message))
    "nan-weight-state": ("weight", lambda s, k: (_with(s, k, _poisoned(s[k], float("nan"))), k, "finite")),
    "inf-weight-state": ("weight", lambda s, k: (_with(s, k, _poisoned(s[k], float("inf"))), k, "finite")),
    "nan-act-state": ("act", lambda s, k: (_with(s, k, _poisoned(s[k], float("nan"))), k, "finite")),
    "inf-act-state": ("act", lambda s, k: (_with(s, k, _poisoned(s[k], float("-inf"))), k, "finite")),
    "weight-state-dtype": ("weight", lambda s, k: (_with(s, k, s[k].int()), k, "floating")),
    "weight-state-shape": ("weight", lambda s, k: (_with(s, k, s[k][:3]), k, "size mismatch")),
    "truncated-weight": (None, lambda s, k: (_with(s, "8.weight", s["8.weight"][:, :-1]), "8.weight",
                                             "size mismatch")),
    "weight-dtype": (None, lambda s, k: (_with(s, "8.weight", s["8.weight"].to(torch.int8)), "8.weight",
                                         "torch.int8")),
    "bits": (None, lambda s, k: (_settings_with(s, "8.weight_quant._extra_state", bits=3),
                                 "8.weight_quant._extra_state", "bits 3 in the checkpoint, 4 here")),
    "bits-out-of-range": (None, lambda s, k: (_settings_with(s, "8.weight_quant._extra_state", bits=99),
                                              "8.weight_quant._extra_state", "bits 99")),
    "act-bits": (None, lambda s, k: (_settings_with(s, "4.act_quant._extra_state", bits=2),
                                     "4.act_quant._extra_state", "bits 2")),
    "bits-as-float": (None, lambda s, k: (_settings_with(s, "8.weight_quant._extra_state", bits=4.0),
                                          "8.weight_quant._extra_state", "bits 4.0")),
    "missing-key": (None, lambda s, k: (_without(s, "8.weight"), "8.weight", "")),
    "missing-settings": (None, lambda s, k: (_without(s, "8.weight_quant._extra_state"),
                                             "8.weight_quant._extra_state", "")),
}


@pytest.mark.parametrize("needs,tamper", QAT_TAMPERINGS.values(), ids=QAT_TAMPERINGS)
def test_a_tampered_qat_checkpoint_is_refused_by_name_and_changes_nothing(needs, tamper, qat):
    _, checkpoint, target, weight_key, act_key = qat
    key = {"weight": weight_key, "act": act_key, None: ""}[needs]
    if key is None:
        pytest.skip(f"this config's quantizer holds no {needs} tensor")
    bad, key, match = tamper(checkpoint, key)
    _assert_refused(copy.deepcopy(target), bad, key, match)


def test_running_sigma_must_be_positive(qat):
    _, checkpoint, target, _, act_key = qat
    if act_key is None or not act_key.endswith("running_sigma"):
        pytest.skip("no running sigma")
    for value in (0.0, -1.0):
        _assert_refused(copy.deepcopy(target), _with(checkpoint, act_key, torch.tensor(value)), act_key, "> 0")


def test_a_refused_load_leaves_lsq_quantizers_uninitialised():
    config = CONFIGS["lsq"][0]
    checkpoint = _saved(_qat_model(config, 0).state_dict())
    fresh = _qat_model(config, 1, train=False)
    bad = _with(checkpoint, "8.weight_quant.step", _poisoned(checkpoint["8.weight_quant.step"], float("nan")))
    _assert_refused(fresh, bad, "8.weight_quant.step", "finite")
    assert all(m._needs_init for m in fresh.modules() if isinstance(m, LSQActQuant))
    fresh.load_state_dict(checkpoint)
    assert not any(m._needs_init for m in fresh.modules() if isinstance(m, LSQActQuant))


def test_a_quantizer_alone_refuses_a_bad_tensor_without_loading_it():
    quant = cq.nn.LSQWeightQuant(4, 3)
    with pytest.raises(RuntimeError, match=r"step \(LSQWeightQuant\.step\) must be finite"):
        quant.load_state_dict({"step": torch.tensor([1.0, float("nan"), 1.0]), "_extra_state": quant.get_extra_state()})
    assert torch.equal(quant.step.detach(), torch.ones(3))


def test_a_converted_qat_model_round_trips_and_refuses_nan_scales(qat):
    config, _, target, _, _ = qat
    served, target = cq.convert(_qat_model(config, 0)), cq.convert(copy.deepcopy(target))
    checkpoint = _saved(served.state_dict())
    bad = _with(checkpoint, "8.scales", _poisoned(checkpoint["8.scales"], float("nan")))
    _assert_refused(target, bad, "8.scales", "finite")
    target.load_state_dict(checkpoint, strict=True)
    assert_same_state(target.state_dict(), served.state_dict())
    with torch.no_grad():
        assert torch.equal(target(X), served(X))
