"""quantize_, the QAT layers and quantizers, class_labels and summary on standard models."""

from __future__ import annotations

import copy
import io
import warnings

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

import climbq_kernels as cq
from climbq_kernels import reference
from climbq_kernels.batch_labels import current_batch_labels
from climbq_kernels.nn import (
    AffineActQuant,
    ClimbQActQuant,
    ClimbQWeightQuant,
    LSQActQuant,
    LSQWeightQuant,
    QuantBatchNorm1d,
    QuantBatchNorm2d,
    QuantConv2d,
    QuantLinear,
)
from climbq_kernels.ops import train as train_ops

CONFIGS = [cq.ClimbQConfig(), cq.LSQConfig(), cq.FakeQuantConfig()]
IDS = ["climbq", "lsq", "fakequant"]
CLASSES = 10


def mlp_bn() -> nn.Module:
    return nn.Sequential(nn.Linear(12, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 32), nn.BatchNorm1d(32),
                         nn.ReLU(), nn.Linear(32, CLASSES))


def mlp_layernorm() -> nn.Module:
    return nn.Sequential(nn.Linear(12, 32), nn.LayerNorm(32), nn.GELU(), nn.Linear(32, 32), nn.LayerNorm(32),
                         nn.GELU(), nn.Linear(32, CLASSES))


class TinyViT(nn.Module):
    """Patch embedding, two nn.TransformerEncoderLayer blocks, a linear head."""

    def __init__(self):
        super().__init__()
        self.patch = nn.Conv2d(3, 32, kernel_size=4, stride=4)
        self.blocks = nn.TransformerEncoder(nn.TransformerEncoderLayer(32, 4, 64, batch_first=True), 2,
                                            enable_nested_tensor=False)
        self.pre_head = nn.Linear(32, 32)
        self.head = nn.Linear(32, CLASSES)

    def forward(self, x):
        tokens = self.patch(x).flatten(2).transpose(1, 2)
        return self.head(torch.relu(self.pre_head(self.blocks(tokens).mean(dim=1))))


HEAVY = ("resnet18", "resnet50", "mobilenet_v2", "tiny_vit")
"""Models whose runs belong to the slow tier (`pytest -m "not slow"` keeps the MLPs)."""


def model_names(*names: str) -> list:
    """Parameters for `name`, the heavy models marked slow."""
    return [pytest.param(name, marks=pytest.mark.slow) if name in HEAVY else name for name in names]


MODELS = {
    "mlp_bn": (mlp_bn, (12,)),
    "mlp_layernorm": (mlp_layernorm, (12,)),
    "resnet18": (lambda: torchvision.models.resnet18(num_classes=CLASSES), (3, 32, 32)),
    "resnet50": (lambda: torchvision.models.resnet50(num_classes=CLASSES), (3, 32, 32)),
    "mobilenet_v2": (lambda: torchvision.models.mobilenet_v2(num_classes=CLASSES), (3, 32, 32)),
    "tiny_vit": (TinyViT, (3, 16, 16)),
}


def train_step(model: nn.Module, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    model.train()
    with cq.class_labels(labels):
        logits = model(x)
    loss = F.cross_entropy(logits, labels)
    loss.backward()
    return logits


def batch(shape, gen, size=8):
    return torch.randn(size, *shape, generator=gen), torch.randint(0, CLASSES, (size,), generator=gen)


@pytest.mark.parametrize("config", CONFIGS, ids=IDS)
@pytest.mark.parametrize("name", model_names(*MODELS))
def test_quantize_trains_every_standard_model(name, config, gen):
    make, shape = MODELS[name]
    torch.manual_seed(0)
    model = make()
    assert cq.quantize_(model, config) is model
    x, labels = batch(shape, gen)
    logits = train_step(model, x, labels)
    assert logits.shape == (8, CLASSES) and torch.isfinite(logits).all()
    quantized = [m for m in model.modules() if isinstance(m, (QuantConv2d, QuantLinear))]
    assert quantized
    for layer in quantized:
        assert layer.weight.grad is not None and torch.isfinite(layer.weight.grad).all()
    learned = [p for m in model.modules() if isinstance(m, (LSQWeightQuant, LSQActQuant, ClimbQWeightQuant))
               for p in m.parameters(recurse=False)]
    assert all(p.grad is not None for p in learned)
    model.eval()
    with torch.no_grad():
        assert torch.isfinite(model(x)).all()


def test_resnet18_placement_follows_the_paper():
    """Every conv (first included) quantized, an activation quantizer after every BatchNorm
    (downsample BatchNorms too), the classifier in float, no input quantizers."""
    model = cq.quantize_(torchvision.models.resnet18(num_classes=CLASSES), cq.ClimbQConfig())
    assert isinstance(model.conv1, QuantConv2d)
    assert isinstance(model.layer2[0].downsample[1], QuantBatchNorm2d)
    assert type(model.fc) is nn.Linear
    assert not any(type(m) in (nn.Conv2d, nn.BatchNorm2d) for m in model.modules())
    for m in model.modules():
        if isinstance(m, QuantConv2d):
            assert isinstance(m.input_quant, nn.Identity)
            assert m.weight_quant.scale is None, "a conv followed by a BatchNorm needs no channel scale"
        if isinstance(m, QuantBatchNorm2d):
            assert isinstance(m.act_quant, ClimbQActQuant) and m.act_quant.num_classes == CLASSES
    text = cq.summary(model)
    assert "conv1 (QuantConv2d)" in text and "fc (Linear): float, final classifier" in text


def test_models_without_batchnorm_quantize_each_layer_input():
    model = cq.quantize_(mlp_layernorm(), cq.LSQConfig())
    assert isinstance(model[0].input_quant, LSQActQuant) and isinstance(model[3].input_quant, LSQActQuant)
    assert type(model[6]) is nn.Linear


def test_transformer_feed_forward_is_quantized_and_attention_projection_stays_float(gen):
    model = cq.quantize_(TinyViT(), cq.ClimbQConfig())
    layer = model.blocks.layers[0]
    assert isinstance(layer.linear1, QuantLinear) and isinstance(layer.linear2, QuantLinear)
    assert type(layer.self_attn.out_proj) is not QuantLinear
    assert isinstance(model.patch, QuantConv2d) and isinstance(model.pre_head, QuantLinear)
    assert "blocks.layers.0.self_attn.out_proj (NonDynamicallyQuantizableLinear): float, its parent " \
           "MultiheadAttention reads the weight" in cq.summary(model)
    calls = []
    layer.linear1.register_forward_hook(lambda *args: calls.append(1))
    x, labels = batch((3, 16, 16), gen)
    train_step(model, x, labels)
    model.eval()
    with torch.no_grad():
        model(x)
    assert len(calls) == 2, "eval under no_grad must not take the fast path that bypasses linear1"


def test_climbq_layers_without_batchnorm_keep_their_output_scale(gen):
    """The classifier quantized with ClimbQ's [-1, 1] weights: the per-channel scale keeps its
    logits at the float model's magnitude."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, CLASSES))
    x = torch.randn(256, 64, generator=gen)
    with torch.no_grad():
        before = model(x)
    cq.quantize_(model, cq.ClimbQConfig(w_bits=4, a_bits=32, quantize_classifier=True))
    assert isinstance(model[2].weight_quant, ClimbQWeightQuant) and model[2].weight_quant.scale is not None
    model.eval()
    with torch.no_grad():
        after = model(x)
    assert 0.7 < after.std().item() / before.std().item() < 1.3
    assert torch.corrcoef(torch.stack([after.flatten(), before.flatten()]))[0, 1] > 0.9


def test_per_sample_table_is_built_once_per_batch(monkeypatch, gen):
    calls = []
    original = train_ops.class_sigma_table
    monkeypatch.setattr(train_ops, "class_sigma_table", lambda *a, **k: calls.append(1) or original(*a, **k))
    model = cq.quantize_(torchvision.models.resnet18(num_classes=CLASSES), cq.ClimbQConfig())
    x, labels = batch((3, 32, 32), gen)
    train_step(model, x, labels)
    assert sum(isinstance(m, ClimbQActQuant) for m in model.modules()) > 10
    assert len(calls) == 1


def test_climbq_quantizer_uses_the_labels_and_matches_the_functional(gen):
    quant = ClimbQActQuant(bits=4, num_classes=CLASSES)
    x, labels = torch.randn(16, 5, generator=gen), torch.randint(0, CLASSES, (16,), generator=gen)
    with cq.class_labels(labels):
        got = quant(x)
    assert torch.equal(got, cq.climbq_act_quant(x, labels, num_classes=CLASSES, bits=4))
    quant.eval()
    with cq.class_labels(labels):
        assert torch.equal(quant(x), cq.climbq_act_quant(x, bits=4, sigma=2.0))


def test_training_without_labels_warns_once(gen):
    model = cq.quantize_(mlp_bn(), cq.ClimbQConfig())
    ClimbQActQuant._warned_without_labels = False
    x, _ = batch((12,), gen)
    with pytest.warns(UserWarning, match="without labels"):
        model(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model(x)


def test_class_labels_is_per_context_and_checks_nesting(gen):
    labels = torch.randint(0, CLASSES, (8,), generator=gen)
    assert current_batch_labels() is None
    with cq.class_labels(labels) as outer:
        with cq.class_labels(labels.flip(0)) as inner:
            assert current_batch_labels() is inner
        assert current_batch_labels() is outer
        with pytest.raises(ValueError, match="labels .* nested .* batch size 8"), cq.class_labels(labels[:4]):
            pass
    assert current_batch_labels() is None


def test_labels_out_of_range_raise(gen):
    model = cq.quantize_(mlp_bn(), cq.ClimbQConfig())
    x, labels = batch((12,), gen)
    labels[0] = CLASSES
    with pytest.raises(ValueError, match="labels must lie in"), cq.class_labels(labels):
        model(x)


@pytest.mark.slow
@pytest.mark.parametrize("config", CONFIGS, ids=IDS)
def test_state_dict_round_trips_into_a_fresh_model(config, gen):
    torch.manual_seed(0)
    model = cq.quantize_(torchvision.models.resnet18(num_classes=CLASSES), config)
    x, labels = batch((3, 32, 32), gen)
    train_step(model, x, labels)
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    fresh = cq.quantize_(torchvision.models.resnet18(num_classes=CLASSES), config)
    fresh.load_state_dict(state, strict=True)
    model.eval(), fresh.eval()
    with torch.no_grad():
        assert torch.equal(model(x), fresh(x))
    for key, value in fresh.state_dict().items():
        assert torch.equal(value, state[key]) if isinstance(value, torch.Tensor) else value == state[key], key


def test_a_float_checkpoint_loads_into_the_quantized_model_by_its_keys():
    float_model = torchvision.models.resnet18(num_classes=CLASSES)
    model = cq.quantize_(torchvision.models.resnet18(num_classes=CLASSES), cq.ClimbQConfig())
    missing, unexpected = model.load_state_dict(float_model.state_dict(), strict=False)
    assert not unexpected
    assert missing and all(key.endswith("_quant._extra_state") for key in missing), "only the quantizers' settings"


def test_uncalibrated_activation_quantizers_refuse_eval(gen):
    model = cq.quantize_(mlp_bn(), cq.LSQConfig()).eval()
    with pytest.raises(RuntimeError, match="has not seen a training batch"):
        model(torch.randn(4, 12, generator=gen))


def test_lsq_steps_stay_positive_when_the_optimiser_crosses_zero(gen):
    quant = LSQActQuant(bits=4, signed=True)
    x = torch.randn(64, generator=gen)
    quant(x)
    with torch.no_grad():
        quant.step.fill_(-0.05)
    out = quant(x)
    assert torch.isfinite(out).all() and out.abs().max() > 0


def test_affine_observer_tracks_the_range(gen):
    quant = AffineActQuant(bits=8, observer="minmax")
    quant(torch.linspace(-1, 3, 100))
    quant(torch.linspace(-2, 1, 100))
    assert quant.min_val.item() == -2 and quant.max_val.item() == 3


def test_quantize_does_not_copy_parameters():
    model = mlp_bn()
    weight = model[0].weight
    cq.quantize_(model, cq.LSQConfig())
    assert model[0].weight is weight
    assert isinstance(model[1], QuantBatchNorm1d) and model[1].running_mean is not None


@pytest.mark.parametrize("call,error,match", [
    (lambda: cq.quantize_("model", cq.LSQConfig()), TypeError, "model must be a torch.nn.Module"),
    (lambda: cq.quantize_(mlp_bn(), {"w_bits": 4}), TypeError, "config must be one of"),
    (lambda: cq.quantize_(nn.Linear(3, 3), cq.LSQConfig()), ValueError, "single layer"),
    (lambda: cq.quantize_(nn.Sequential(nn.ReLU(), nn.Linear(3, 3)), cq.LSQConfig()), ValueError,
     "no layer to quantize"),
    (lambda: cq.quantize_(cq.quantize_(mlp_bn(), cq.LSQConfig()), cq.LSQConfig()), ValueError, "already"),
    (lambda: cq.quantize_(mlp_bn(), cq.LSQConfig(), filter_fn=3), TypeError, "filter_fn"),
    (lambda: cq.LSQConfig(w_bits=1), ValueError, "w_bits"),
    (lambda: cq.ClimbQConfig(a_bits=17), ValueError, "bits"),
    (lambda: cq.ClimbQConfig(num_classes=0), ValueError, "num_classes"),
    (lambda: cq.FakeQuantConfig(observer="histogram"), ValueError, "observer"),
    (lambda: cq.ClimbQConfig(bits=4), TypeError, "bits"),
    (lambda: cq.quantize_(nn.Sequential(nn.Conv2d(3, 3, 1)), cq.ClimbQConfig()), ValueError, "num_classes"),
], ids=["model", "config", "single-layer", "nothing", "twice", "filter", "lsq-bits", "climbq-bits", "classes",
        "observer", "unknown-field", "classes-unknown"])
def test_bad_input_is_refused_clearly(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_filter_fn_keeps_layers_in_float():
    model = cq.quantize_(mlp_bn(), cq.LSQConfig(), filter_fn=lambda module, fqn: fqn != "0")
    assert type(model[0]) is nn.Linear and isinstance(model[3], QuantLinear)
    assert "0 (Linear): float, filter_fn" in cq.summary(model)


def trained(make, config, shape, gen, steps=3):
    torch.manual_seed(0)
    model = cq.quantize_(make(), config)
    optimiser = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x, labels = batch(shape, gen, size=16)
    for _ in range(steps):
        optimiser.zero_grad()
        train_step(model, x, labels)
        optimiser.step()
    return model.eval(), x


@pytest.mark.parametrize("config", [cq.ClimbQConfig(), cq.ClimbQConfig(quantize_classifier=True), cq.LSQConfig(),
                                    cq.FakeQuantConfig(w_bits=4, a_bits=8)], ids=["climbq", "climbq-head", "lsq",
                                                                                   "fakequant"])
@pytest.mark.parametrize("name", model_names("mlp_bn", "mlp_layernorm", "resnet18"))
def test_convert_serves_int4_and_predicts_as_the_qat_model(name, config, gen):
    make, shape = MODELS[name]
    model, x = trained(make, config, shape, gen)
    with torch.no_grad():
        before = model(x)
    quantized = sum(isinstance(m, (QuantConv2d, QuantLinear)) for m in model.modules())
    assert cq.convert(model) is model and not model.training
    served = [m for m in model.modules() if isinstance(m, (cq.nn.Int4Linear, cq.nn.Int4Conv2d))]
    assert len(served) == quantized
    with torch.no_grad():
        after = model(x)
    assert torch.equal(after.argmax(1), before.argmax(1))
    assert (after - before).abs().mean() <= 0.05 * before.abs().mean()


@pytest.mark.slow
def test_convert_keeps_grouped_convolutions_as_qat_layers(gen):
    model, x = trained(MODELS["mobilenet_v2"][0], cq.LSQConfig(), (3, 32, 32), gen, steps=1)
    cq.convert(model)
    depthwise = [m for m in model.modules() if isinstance(m, QuantConv2d)]
    assert depthwise and all(m.groups > 1 for m in depthwise)
    with torch.no_grad():
        assert torch.isfinite(model(x)).all()


def test_convert_refuses_what_int4_cannot_hold(gen):
    model, _ = trained(mlp_bn, cq.LSQConfig(w_bits=8, a_bits=8), (12,), gen, steps=1)
    with pytest.raises(ValueError, match="0 was trained with 8-bit weights"):
        cq.convert(model)
    with pytest.raises(ValueError, match="no quantized layer"):
        cq.convert(mlp_bn())


VARIANTS = [cq.ClimbQConfig(sigma="class_std"), cq.ClimbQConfig(act_form="relu"),
            cq.ClimbQConfig(sigma="class_std", act_form="relu")]


@pytest.mark.parametrize("config", VARIANTS, ids=["class_std", "relu", "class_std+relu"])
@pytest.mark.parametrize("name", model_names("mlp_bn", "resnet18", "mobilenet_v2"))
def test_climbq_variants_train_and_convert(name, config, gen):
    make, shape = MODELS[name]
    model, x = trained(make, config, shape, gen, steps=2)
    with torch.no_grad():
        before = model(x)
    assert torch.isfinite(before).all()
    if name != "mobilenet_v2":
        cq.convert(model)
        with torch.no_grad():
            assert torch.equal(model(x).argmax(1), before.argmax(1))


def test_relu_form_only_where_a_relu_follows():
    model = cq.quantize_(torchvision.models.resnet18(num_classes=CLASSES), cq.ClimbQConfig(act_form="relu"))
    assert model.bn1.act_quant.form == "relu" and model.layer1[0].bn1.act_quant.form == "relu"
    assert model.layer1[0].bn2.act_quant.form == "published", "bn2 feeds the residual sum, not a ReLU"
    assert model.layer2[0].downsample[1].act_quant.form == "published"


@pytest.mark.parametrize("bits", [1, 2, 4])
def test_relu_form_matches_the_reference_and_keeps_every_level(bits, gen):
    quant = ClimbQActQuant(bits=bits, num_classes=CLASSES, form="relu")
    x = (3 * torch.randn(64, 200, generator=gen, dtype=torch.float64)).requires_grad_()
    labels = torch.randint(0, CLASSES, (64,), generator=gen)
    with cq.class_labels(labels):
        out = quant(x)
    sigma = reference.class_sigma(labels, CLASSES, dtype=torch.float64)[labels]
    mu = torch.zeros_like(sigma)
    assert torch.equal(out.detach(), reference.climbq_act_quant_relu(x.detach(), sigma, mu, bits, 2.0))
    grad = torch.randn(x.shape, generator=gen, dtype=torch.float64)
    out.backward(grad)
    expected = reference.climbq_act_quant_relu_backward(grad, x.detach(), sigma, mu, bits, 2.0)
    torch.testing.assert_close(x.grad, expected)
    levels = out.detach().unique()
    assert len(levels) == 2 ** bits and levels.min() == 0 and levels.max() == 2.0


def test_published_form_keeps_half_its_levels_after_a_relu(gen):
    """What the ReLU-aware form fixes: 4-bit published levels, then a ReLU, leave 9 values."""
    x = 3 * torch.randn(64, 500, generator=gen)
    labels = torch.randint(0, CLASSES, (64,), generator=gen)
    published = torch.relu(cq.climbq_act_quant(x, labels, num_classes=CLASSES, bits=4)).unique()
    assert len(published) == 9


def test_class_std_sigma_follows_each_class_spread(gen):
    quant = ClimbQActQuant(bits=8, num_classes=2, sigma="class_std")
    labels = torch.tensor([0] * 32 + [1] * 32)
    x = torch.cat([0.5 * torch.randn(32, 100, generator=gen), 4 * torch.randn(32, 100, generator=gen)])
    with cq.class_labels(labels) as batch_labels:
        sigma, _ = quant._class_std_tables(x, batch_labels)
    assert sigma[:32].unique().numel() == 1 and sigma[32:].unique().numel() == 1
    assert 0.8 < sigma[0].item() < 1.2 and 6.5 < sigma[-1].item() < 9.5
    assert 2.0 < quant.running_sigma.item() < 2.6, "one EMA step from 2.0 towards twice the batch's spread"



@pytest.mark.parametrize("saved,loaded,match", [
    (cq.LSQConfig(w_bits=4, a_bits=4), cq.LSQConfig(w_bits=3, a_bits=4), "'bits': 4"),
    (cq.ClimbQConfig(), cq.ClimbQConfig(sigma="class_std"), "Missing key|class_std"),
    (cq.ClimbQConfig(), cq.ClimbQConfig(act_form="relu"), "'form': 'published'"),
    (cq.ClimbQConfig(), cq.LSQConfig(), "Missing key|Unexpected key|quantizer"),
], ids=["bits", "sigma-rule", "act-form", "method"])
def test_a_checkpoint_of_another_grid_is_refused(saved, loaded, match, gen):
    model = cq.quantize_(mlp_bn(), saved)
    x, labels = batch((12,), gen)
    train_step(model, x, labels)
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    with pytest.raises((ValueError, RuntimeError), match=match):
        cq.quantize_(mlp_bn(), loaded).load_state_dict(state)


def test_convert_keeps_float_layers_unless_told_to_quantize_them(gen):
    model, x = trained(mlp_bn, cq.ClimbQConfig(), (12,), gen)
    default = cq.convert(copy.deepcopy(model))
    assert type(default[6]) is nn.Linear and isinstance(default[3], cq.nn.Int4Linear)
    served = cq.convert(model, quantize_float_layers=True, group_size=32)
    assert isinstance(served[6], cq.nn.Int4Linear) and served[6].group_size == 32
    with torch.no_grad():
        assert torch.isfinite(served(x)).all()


class _ScalarReads(TorchDispatchMode):
    """Counts the reads of a tensor value on the host (`aten._local_scalar_dense`)."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += func is torch.ops.aten._local_scalar_dense.default
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("config", CONFIGS, ids=IDS)
def test_a_training_step_reads_no_value_on_the_host(config, gen):
    """Nothing in a step waits for the device: ClimbQ's table op checks CPU labels as it counts them
    (CUDA labels are checked on the device), and LSQ steps and affine zero points are valid by
    construction."""
    model = cq.quantize_(nn.Sequential(*(mlp_bn()[:-1]), nn.Linear(32, 32), nn.BatchNorm1d(32), nn.ReLU(),
                                       nn.Linear(32, CLASSES)), config)
    x, labels = batch((12,), gen)
    train_step(model, x, labels)
    with _ScalarReads() as counter:
        train_step(model, x, labels)
    assert sum(isinstance(m, (QuantBatchNorm1d,)) for m in model.modules()) == 3
    assert counter.count == 0
