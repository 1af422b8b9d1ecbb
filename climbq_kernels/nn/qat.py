"""QAT layers: `QuantConv2d`, `QuantLinear` and `QuantBatchNorm1d/2d`.

Each subclasses the PyTorch layer it replaces and keeps its parameters and buffers under the same
names, so a float checkpoint's keys still apply; the quantizers are child modules
(`weight_quant`, `input_quant`, `act_quant`) whose state joins the layer's state dict.
`from_float` builds one around an existing layer, sharing its parameters (no copy).

- `QuantConv2d` / `QuantLinear`: the layer computes with `weight_quant(weight)`, and with
  `input_quant(x)` as its input (`nn.Identity` unless the model has no BatchNorm to place
  activation quantizers after, see `quantize_`).
- `QuantBatchNorm1d` / `QuantBatchNorm2d`: `act_quant(batchnorm(x))`: the activation quantizer
  right after a BatchNorm, before the nonlinearity that follows it (algorithms.md §1d).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


def _adopt(cls, layer: nn.Module) -> nn.Module:
    """An instance of `cls` (a subclass of layer's class) holding layer's state: its parameters,
    buffers, children and settings, shared rather than copied."""
    new = cls.__new__(cls)
    new.__dict__.update({key: value.copy() if isinstance(value, dict) else value
                         for key, value in layer.__dict__.items()})
    return new


def _check_layer(name: str, layer, kind: type) -> None:
    if type(layer) is not kind:
        raise TypeError(f"{name} must be a torch.nn.{kind.__name__}, got {type(layer).__name__}")


def _check_quantizer(name: str, quantizer) -> None:
    if not isinstance(quantizer, nn.Module):
        raise TypeError(f"{name} must be a torch.nn.Module (a quantizer), got {type(quantizer).__name__}")


class _WeightQuantized:
    """Mixin: `from_float(layer, weight_quant, input_quant=None)` for a layer whose weight (and,
    optionally, input) goes through quantizers; the float class is the mixin's next base."""

    weight_quant: nn.Module
    input_quant: nn.Module

    @classmethod
    def from_float(cls, layer: nn.Module, weight_quant: nn.Module, input_quant: nn.Module | None = None):
        float_type = cls.__mro__[2]
        _check_layer(float_type.__name__.lower(), layer, float_type)
        _check_quantizer("weight_quant", weight_quant)
        if input_quant is not None:
            _check_quantizer("input_quant", input_quant)
        new = _adopt(cls, layer)
        new.weight_quant = weight_quant
        new.input_quant = input_quant if input_quant is not None else nn.Identity()
        return new


class QuantConv2d(_WeightQuantized, nn.Conv2d):
    """nn.Conv2d computing with `weight_quant(weight)` on `input_quant(x)`."""

    def forward(self, x: Tensor) -> Tensor:
        return self._conv_forward(self.input_quant(x), self.weight_quant(self.weight), self.bias)


class QuantLinear(_WeightQuantized, nn.Linear):
    """nn.Linear computing with `weight_quant(weight)` on `input_quant(x)`."""

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(self.input_quant(x), self.weight_quant(self.weight), self.bias)


class _ActQuantAfter:
    """Mixin: the layer's output goes through `act_quant`."""

    act_quant: nn.Module

    @classmethod
    def from_float(cls, layer: nn.Module, act_quant: nn.Module):
        _check_layer("batchnorm", layer, cls.__mro__[2])
        _check_quantizer("act_quant", act_quant)
        new = _adopt(cls, layer)
        new.act_quant = act_quant
        return new

    def forward(self, x: Tensor) -> Tensor:
        return self.act_quant(super().forward(x))


class QuantBatchNorm1d(_ActQuantAfter, nn.BatchNorm1d):
    """nn.BatchNorm1d followed by its activation quantizer `act_quant`."""


class QuantBatchNorm2d(_ActQuantAfter, nn.BatchNorm2d):
    """nn.BatchNorm2d followed by its activation quantizer `act_quant`."""
