"""`quantize_`: turn a float model into a QAT model in place, following torchao's conventions.

    model = torchvision.models.resnet18(num_classes=10)
    cq.quantize_(model, cq.ClimbQConfig(w_bits=4, a_bits=4))
    with cq.class_labels(labels):
        loss = F.cross_entropy(model(images), labels)

One call takes a config object; `filter_fn(module, fqn)` returning False keeps a layer in float.
Placement (algorithms.md §1d):

- the weight of every `nn.Conv2d` and `nn.Linear` goes through the config's weight quantizer,
  the first convolution included and the final classifier (the last `nn.Linear` in module
  order) kept in float unless `quantize_classifier=True`;
- in a model with BatchNorm, an activation quantizer follows every `BatchNorm1d/2d` (shortcut
  BatchNorms too), before the nonlinearity after it; in a model without BatchNorm (Linear +
  LayerNorm blocks) the activation quantizer sits at the input of every quantized layer;
- linear layers whose weight their parent reads directly (`nn.MultiheadAttention`'s output
  projection) stay in float, as do layer kinds other than these; `summary(model)` lists every
  layer with its quantizers or the reason it stayed in float. An `nn.TransformerEncoderLayer`
  whose feed-forward is quantized has its fused inference fast path turned off (that path
  reads the weights directly).

A ClimbQ weight quantizer on a layer that no BatchNorm follows gets a learned per-output-channel
scale, initialised by least squares from the float weight (`ClimbQWeightQuant`).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from .batch_labels import class_labels
from .checkpoint import check_before_loading
from .checks import check_bits, check_group_size_choice, check_positive_float
from .constants import DEFAULT_ACT_RANGE, DEFAULT_INFERENCE_SIGMA, IDENTITY_BITS
from .int4 import Int4Weight
from .nn.conv import Int4Conv2d
from .nn.linear import Int4Linear
from .nn.packing import MAX_CLIMBQ_BITS, climbq_weight, per_row_codes
from .nn.qat import QuantBatchNorm1d, QuantBatchNorm2d, QuantConv2d, QuantLinear
from .nn.quantizers import (
    ACT_FORMS,
    SIGMA_RULES,
    AffineActQuant,
    AffineWeightQuant,
    ClimbQActQuant,
    ClimbQWeightQuant,
    LSQActQuant,
    LSQWeightQuant,
)
from .reference._args import check_int

__all__ = ["ClimbQConfig", "FakeQuantConfig", "LSQConfig", "class_labels", "convert", "quantize_", "summary"]


def _check_uniform(config, minimum: int) -> None:
    for field in ("w_bits", "a_bits"):
        bits = getattr(config, field)
        check_bits(bits, field)
        if bits != IDENTITY_BITS and bits < minimum:
            raise ValueError(f"{field} must be at least {minimum} for {type(config).__name__}, got {bits}")


@dataclass(frozen=True)
class ClimbQConfig:
    """ClimbQ QAT (algorithms.md §1): weights through §1b, activations through §1a.

    num_classes: classes of the labels given to `class_labels`; None takes the final
    classifier's out_features. act_range: the activation output range A. inference_sigma: the
    constant scale of eval mode. sigma: "batch_frequency" (the published rule) or "class_std"
    (each class's spread, algorithms.md §1f). act_form: "published" (symmetric levels before the
    ReLU) or "relu" (the ReLU folded in, all 2^b levels non-negative, §1f; used on BatchNorms
    that a ReLU or ReLU6 follows, the published form elsewhere). quantize_classifier: quantize
    the final nn.Linear too.
    """

    w_bits: int = 4
    a_bits: int = 4
    act_range: float = DEFAULT_ACT_RANGE
    inference_sigma: float = DEFAULT_INFERENCE_SIGMA
    sigma: str = "batch_frequency"
    act_form: str = "published"
    num_classes: int | None = None
    quantize_classifier: bool = False

    def __post_init__(self):
        _check_uniform(self, 1)
        if self.sigma not in SIGMA_RULES:
            raise ValueError(f"sigma must be one of {SIGMA_RULES}, got {self.sigma!r}")
        if self.act_form not in ACT_FORMS:
            raise ValueError(f"act_form must be one of {ACT_FORMS}, got {self.act_form!r}")
        if self.num_classes is not None:
            check_int("num_classes", self.num_classes, minimum=1)
        check_positive_float("act_range", self.act_range)
        check_positive_float("inference_sigma", self.inference_sigma)


@dataclass(frozen=True)
class LSQConfig:
    """LSQ QAT (algorithms.md §1e): signed per-channel weights, per-tensor activations, learned steps.

    Activation quantizers after a BatchNorm see negative values and use signed codes.
    """

    w_bits: int = 4
    a_bits: int = 4
    quantize_classifier: bool = False

    def __post_init__(self):
        _check_uniform(self, 2)


@dataclass(frozen=True)
class FakeQuantConfig:
    """Affine fake quant with PyTorch's semantics: symmetric per-channel min/max weights,
    per-tensor activations with an observed range (`observer` "ema" or "minmax")."""

    w_bits: int = 8
    a_bits: int = 8
    observer: str = "ema"
    quantize_classifier: bool = False

    def __post_init__(self):
        _check_uniform(self, 2)
        if self.observer not in ("minmax", "ema"):
            raise ValueError(f"observer must be 'minmax' or 'ema', got {self.observer!r}")


_CONFIGS = (ClimbQConfig, LSQConfig, FakeQuantConfig)
_LAYERS = (nn.Conv2d, nn.Linear)
_BATCHNORMS = {nn.BatchNorm1d: QuantBatchNorm1d, nn.BatchNorm2d: QuantBatchNorm2d}
_QUANT_TYPES = (QuantConv2d, QuantLinear, QuantBatchNorm1d, QuantBatchNorm2d)
_READ_CHILD_WEIGHTS = (nn.MultiheadAttention,)
"""Parents whose forward reads their linear children's weights directly (MultiheadAttention's
out_proj): a quantized child would be bypassed, so those children stay in float."""
_FLOAT_REASONS = "_climbq_float_layers"
"""Attribute quantize_ leaves on the model: {layer name: why it stayed in float}, for summary."""


def _weight_quant(config, layer: nn.Module, followed_by_bn: bool) -> nn.Module:
    out_channels = layer.weight.shape[0]
    if isinstance(config, ClimbQConfig):
        quant = ClimbQWeightQuant(config.w_bits, out_channels, channel_scale=not followed_by_bn)
        quant.init_scale(layer.weight)
    elif isinstance(config, LSQConfig):
        quant = LSQWeightQuant(config.w_bits, out_channels)
        quant.init_step(layer.weight)
    else:
        quant = AffineWeightQuant(config.w_bits, out_channels)
    return quant.to(layer.weight.device)


def _act_quant(config, num_classes: int | None, before_relu: bool = False) -> nn.Module:
    if isinstance(config, ClimbQConfig):
        form = "relu" if before_relu and config.act_form == "relu" else "published"
        return ClimbQActQuant(config.a_bits, num_classes, config.act_range, config.inference_sigma,
                              sigma=config.sigma, form=form)
    if isinstance(config, LSQConfig):
        return LSQActQuant(config.a_bits, signed=True)
    return AffineActQuant(config.a_bits, observer=config.observer)


def _leaves_in_order(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(name, m) for name, m in model.named_modules() if name and not any(True for _ in m.children())]


def _adjacent_leaves(leaves: list[tuple[str, nn.Module]]) -> list[tuple[str, nn.Module, nn.Module]]:
    """(name, leaf, next leaf in registration order): how quantize_ reads the Conv-BN-ReLU pattern
    of torchvision's and most hand-written models."""
    return [(name, leaf, after) for (name, leaf), (_, after) in zip(leaves, leaves[1:], strict=False)]


def _followed_by_batchnorm(leaves: list[tuple[str, nn.Module]]) -> set[str]:
    """Names of layers whose next leaf is a BatchNorm over their outputs."""
    return {name for name, layer, after in _adjacent_leaves(leaves) if isinstance(layer, _LAYERS)
            and isinstance(after, tuple(_BATCHNORMS)) and after.num_features == layer.weight.shape[0]}


def _device_of(module: nn.Module) -> torch.device:
    tensor = next(itertools.chain(module.parameters(), module.buffers()), None)
    return tensor.device if tensor is not None else torch.device("cpu")


def _followed_by_relu(leaves: list[tuple[str, nn.Module]]) -> set[str]:
    """Names of BatchNorms whose next leaf is a ReLU or ReLU6."""
    return {name for name, layer, after in _adjacent_leaves(leaves)
            if isinstance(layer, tuple(_BATCHNORMS)) and isinstance(after, (nn.ReLU, nn.ReLU6))}


def _set_child(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


def quantize_(model: nn.Module, config, filter_fn: Callable[[nn.Module, str], bool] | None = None) -> nn.Module:
    """Swap quantized layers into `model` in place (see the module docstring) and return it.

    config: `ClimbQConfig`, `LSQConfig` or `FakeQuantConfig`. filter_fn(module, fqn): called for
    every candidate layer and BatchNorm; False keeps it in float. The model must be a float
    model (ValueError for one that quantize_ already converted) with at least one layer to
    quantize. Parameters are shared, not copied: optimisers built before the call still hold
    the weights (but not the quantizers' own parameters: build the optimiser after). The model's
    `load_state_dict` then checks every tensor before copying any (`climbq_kernels.checkpoint`).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(config, _CONFIGS):
        raise TypeError(f"config must be one of {[c.__name__ for c in _CONFIGS]}, got {type(config).__name__}")
    if filter_fn is not None and not callable(filter_fn):
        raise TypeError(f"filter_fn must be callable (module, fqn) -> bool, got {type(filter_fn).__name__}")
    if isinstance(model, (*_LAYERS, *_BATCHNORMS)):
        raise ValueError("model is a single layer: quantize_ replaces layers inside a model, so wrap it, "
                         "e.g. nn.Sequential(layer)")
    if any(isinstance(m, _QUANT_TYPES) for m in model.modules()):
        raise ValueError("model already holds quantized layers: quantize_ takes a float model")

    leaves = _leaves_in_order(model)
    linears = [name for name, m in leaves if type(m) is nn.Linear]
    classifier = linears[-1] if linears else None
    num_classes = getattr(config, "num_classes", None)
    if isinstance(config, ClimbQConfig) and num_classes is None:
        if classifier is None:
            raise ValueError("config.num_classes is required: the model has no final nn.Linear to read it from")
        num_classes = model.get_submodule(classifier).out_features
    read_by_parent = {f"{name}.{child}".lstrip("."): type(m).__name__ for name, m in model.named_modules()
                      if isinstance(m, _READ_CHILD_WEIGHTS) for child, _ in m.named_children()}
    has_bn = any(type(m) in _BATCHNORMS for _, m in leaves)
    with_bn = _followed_by_batchnorm(leaves)
    before_relu = _followed_by_relu(leaves)
    kept: dict[str, str] = {}
    swaps: list[tuple[str, nn.Module]] = []
    for name, module in leaves:
        kind = type(module)
        if name in read_by_parent and isinstance(module, nn.Linear):
            kept[name] = f"its parent {read_by_parent[name]} reads the weight directly"
        elif kind not in (nn.Conv2d, nn.Linear, *_BATCHNORMS):
            if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv3d, nn.ConvTranspose2d, nn.Embedding)):
                kept[name] = f"{kind.__name__} is not quantized (Conv2d and Linear are)"
        elif name == classifier and not config.quantize_classifier:
            kept[name] = "final classifier (quantize_classifier=True quantizes it)"
        elif filter_fn is not None and not filter_fn(module, name):
            kept[name] = "filter_fn"
        elif kind in _BATCHNORMS:
            act_quant = _act_quant(config, num_classes, before_relu=name in before_relu).to(_device_of(module))
            swaps.append((name, _BATCHNORMS[kind].from_float(module, act_quant)))
        else:
            weight_quant = _weight_quant(config, module, followed_by_bn=name in with_bn)
            input_quant = None if has_bn else _act_quant(config, num_classes).to(module.weight.device)
            layer_type = QuantConv2d if kind is nn.Conv2d else QuantLinear
            swaps.append((name, layer_type.from_float(module, weight_quant, input_quant)))
    if not any(isinstance(new, (QuantConv2d, QuantLinear)) for _, new in swaps):
        raise ValueError("model has no layer to quantize (nn.Conv2d or nn.Linear outside the final classifier, "
                         f"kept in float: {kept or 'none found'})")
    for name, new in swaps:
        _set_child(model, name, new)
    for layer in model.modules():
        if isinstance(layer, nn.TransformerEncoderLayer) and any(
                isinstance(child, QuantLinear) for child in (layer.linear1, layer.linear2)):
            # Its fused inference fast path reads linear1/linear2's weights directly; this flag
            # only selects that path, so clearing it keeps every forward on the quantized layers.
            layer.activation_relu_or_gelu = 0
    object.__setattr__(model, _FLOAT_REASONS, kept)
    return check_before_loading(model)


def summary(model: nn.Module) -> str:
    """One line per quantized layer (its quantizers) and per layer kept in float (why), as text."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    lines = []
    for name, module in model.named_modules():
        if isinstance(module, (QuantConv2d, QuantLinear)):
            parts = [f"weight: {module.weight_quant!r}"]
            if not isinstance(module.input_quant, nn.Identity):
                parts.append(f"input: {module.input_quant!r}")
            lines.append(f"{name} ({type(module).__name__}): " + ", ".join(parts))
        elif isinstance(module, (QuantBatchNorm1d, QuantBatchNorm2d)):
            lines.append(f"{name} ({type(module).__name__}): output: {module.act_quant!r}")
    kept = getattr(model, _FLOAT_REASONS, {})
    lines += [f"{name} ({type(model.get_submodule(name)).__name__}): float, {reason}" for name, reason in kept.items()]
    if not lines:
        return "no quantized layers (quantize_ has not been applied)"
    return "\n".join(lines)



def _int4_weight(name: str, layer: QuantConv2d | QuantLinear) -> Int4Weight:
    """The layer's quantized weight as INT4 codes, one group per output channel, without loss."""
    quant = layer.weight_quant
    if quant.bits == IDENTITY_BITS or quant.bits > MAX_CLIMBQ_BITS:
        raise ValueError(f"{name} was trained with {quant.bits}-bit weights; INT4 storage holds at most "
                         f"{MAX_CLIMBQ_BITS} bits (quantize_ with w_bits <= 4 to serve it in INT4)")
    if isinstance(quant, ClimbQWeightQuant):
        base = climbq_weight(f"{name}.weight", layer.weight, quant.bits)
        if quant.scale is None:
            return base
        scales = base.scales * quant.scale.detach().float().reshape(-1, 1)
        return Int4Weight(base.packed, scales, base.zeros, base.group_size)
    with torch.no_grad():
        if isinstance(quant, LSQWeightQuant):
            step = quant.effective_step().detach().float()
        else:
            step = quant.scale_of(layer.weight).float()
        wq = quant(layer.weight.detach()).float().reshape(step.shape[0], -1)
        offset = 1 << (quant.bits - 1)
        codes = (torch.round(wq / step.reshape(-1, 1)) + offset).clamp_(0, 2 * offset - 1).to(torch.uint8)
    return per_row_codes(codes, step.reshape(-1, 1).contiguous(), torch.full_like(step, float(offset)).reshape(-1, 1))


def _serving_layer(name: str, layer: QuantConv2d | QuantLinear) -> nn.Module:
    int4_type = Int4Linear if isinstance(layer, QuantLinear) else Int4Conv2d
    served = int4_type.from_qweight(layer, _int4_weight(name, layer))
    if isinstance(layer.input_quant, nn.Identity):
        return served
    return nn.Sequential(layer.input_quant, served)


def convert(model: nn.Module, *, quantize_float_layers: bool = False, group_size: int | None = 128) -> nn.Module:
    """A `quantize_`d (QAT) model becomes a serving model in place, in eval mode, and is returned.

    Every QuantConv2d / QuantLinear with at most 4-bit weights is replaced by an `Int4Conv2d` /
    `Int4Linear` holding its quantized weight as INT4 codes with one scale and zero per output
    channel: the stored weight equals the QAT layer's quantized weight (ClimbQ, LSQ and affine
    grids all fit a nibble), so the served model predicts as the QAT model does in eval mode.
    Activation quantizers stay, in their eval form (ClimbQ: threshold bucketing). Grouped
    convolutions (depthwise) stay as QAT layers computing with their quantized weight, since
    Int4Conv2d serves groups=1 only.

    Layers that were not trained quantized (those `quantize_` kept in float, e.g. the final
    classifier) stay in float: quantizing them now would change the model's predictions. With
    `quantize_float_layers=True` they are quantized anyway, group-wise (`convert_int4` with
    `group_size`). ValueError for a model with no quantized layer, or one with more than 4-bit
    weights; the model is then left unchanged. Its `load_state_dict` checks every tensor before
    copying any (`climbq_kernels.checkpoint`).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    check_group_size_choice(group_size)
    layers = [(name, m) for name, m in model.named_modules() if isinstance(m, (QuantConv2d, QuantLinear))]
    if not layers:
        raise ValueError("model has no quantized layer: convert takes a model prepared with quantize_ and trained")
    swaps = [(name, _serving_layer(name, m)) for name, m in layers
             if not (isinstance(m, QuantConv2d) and m.groups != 1)]
    if quantize_float_layers:
        swaps += [(name, _group_wise(model.get_submodule(name), group_size))
                  for name in getattr(model, _FLOAT_REASONS, {}) if _servable(model.get_submodule(name))]
    for name, served in swaps:
        _set_child(model, name, served)
    return check_before_loading(model).eval()


def _servable(layer: nn.Module) -> bool:
    return type(layer) is nn.Linear or (type(layer) is nn.Conv2d and layer.groups == 1)


def _group_wise(layer: nn.Module, group_size: int | None) -> nn.Module:
    """A float layer's group-wise INT4 form; one group per row where group_size does not divide."""
    make = Int4Linear.from_linear if isinstance(layer, nn.Linear) else Int4Conv2d.from_conv2d
    try:
        return make(layer, group_size).eval()
    except ValueError:
        return make(layer, None).eval()
