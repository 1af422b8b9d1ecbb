"""Bad input to every public function and module, as one table (docs/reliability.md).

Each row calls one public function or module with valid arguments (`Inputs`) except one, and
expects TypeError (wrong kind of thing: type, dtype, None) or ValueError (right kind, wrong
value: shape, range, NaN/Inf, meta tensor, device) whose message names that argument. Every
row runs on every backend here, and the tensors and module states it was given must come out
of the failed call unchanged.

A row reads `Case(function, argument, what, call, error)`; its test id is
"function-argument-what" and the message must name `argument` (or `match`, where given).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import pytest
import torch
from torch import nn

import climbq_kernels as cq
from climbq_kernels.nn import (
    AffineActQuant,
    AffineWeightQuant,
    ClimbQActQuant,
    ClimbQWeightQuant,
    HomoVarLoss,
    Int4Conv2d,
    Int4Linear,
    LSQActQuant,
    LSQWeightQuant,
    QuantBatchNorm1d,
    QuantBatchNorm2d,
    QuantConv2d,
    QuantLinear,
)

from .conftest import GPU, KERNEL_BACKENDS

ALL_BACKENDS = [("reference", "cpu")] + KERNEL_BACKENDS
INF, NAN = float("inf"), float("nan")
GPU_ONLY = pytest.mark.skipif(not GPU, reason="a second device needs a GPU")


class Case(NamedTuple):
    function: str
    argument: str
    what: str
    call: Callable[[Inputs], Any]
    error: type[Exception]
    match: str | None = None  # default: the argument's name as a word
    marks: Any = ()

    @property
    def id(self) -> str:
        return f"{self.function}-{self.argument}-{self.what}"


class Inputs:
    """Valid arguments on one device, made on first use. Each tensor (and each module's state)
    handed out is kept with a copy taken when it was made, for `assert_unchanged`."""

    def __init__(self, device: str):
        self.device = device
        self.other_device = "cpu" if device == "cuda" else "cuda"
        self.gen = torch.Generator().manual_seed(20261122)
        self._kept: list[tuple[str, torch.Tensor, torch.Tensor]] = []

    def keep(self, value, name: str = "input"):
        """Record `value` (a tensor, a module's state, an Int4Weight's tables) and return it."""
        if isinstance(value, torch.Tensor):
            if not value.is_meta:
                self._kept.append((name, value, value.detach().clone()))
        elif isinstance(value, nn.Module):
            for key, t in value.state_dict(keep_vars=True).items():
                self.keep(t, f"{name}.{key}")
        elif isinstance(value, cq.Int4Weight):
            for key in ("packed", "scales", "zeros"):
                self.keep(getattr(value, key), f"{name}.{key}")
        elif isinstance(value, (tuple, list)):
            for i, v in enumerate(value):
                self.keep(v, f"{name}[{i}]")
        return value

    def assert_unchanged(self) -> None:
        for name, t, before in self._kept:
            after = t.detach()
            same = after.shape == before.shape and after.dtype == before.dtype and (
                torch.equal(after, before) or (after.is_floating_point()
                                               and torch.equal(after.isnan(), before.isnan())
                                               and torch.equal(after.nan_to_num(), before.nan_to_num())))
            assert same, f"{name} was modified by the failed call"

    # --- tensors ------------------------------------------------------------------------------

    def t(self, data, dtype=None, device=None) -> torch.Tensor:
        return self.keep(torch.tensor(data, dtype=dtype, device=device or self.device))

    def randn(self, *shape, dtype=torch.float32) -> torch.Tensor:
        return self.keep(torch.randn(*shape, generator=self.gen).to(self.device, dtype))

    def meta(self, *shape, dtype=torch.float32) -> torch.Tensor:
        return torch.empty(*shape, dtype=dtype, device="meta")

    def other(self, t: torch.Tensor) -> torch.Tensor:
        """`t` on the other device (a GPU exists: GPU_ONLY rows)."""
        return self.keep(t.to(self.other_device))

    @functools.cached_property
    def x(self) -> torch.Tensor:
        return self.randn(4, 6)

    @functools.cached_property
    def labels(self) -> torch.Tensor:
        return self.t([0, 1, 2, 1])

    @functools.cached_property
    def w(self) -> torch.Tensor:
        return self.randn(4, 6)

    @functools.cached_property
    def qweight(self) -> cq.Int4Weight:
        return self.keep(cq.quantize_int4(torch.randn(16, 64, generator=self.gen).to(self.device), 32))

    @functools.cached_property
    def torch_pack(self) -> tuple[torch.Tensor, torch.Tensor, int]:
        """PyTorch's CPU int4 format of a (16, 64) weight, group size 32."""
        qweight = cq.quantize_int4(torch.randn(16, 64, generator=self.gen), 32)
        return self.keep(cq.to_torch_int4pack(qweight))

    @functools.cached_property
    def torch_pack_cuda(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Tables of PyTorch's CUDA int4 format of shapes fit for a (16, 128) weight, group size 32,
        inner_k_tiles 8 (zeros, on the GPU where there is one: the checks come before the device's)."""
        device = "cuda" if GPU else "cpu"
        return self.keep((torch.zeros(2, 1, 32, 4, dtype=torch.int32, device=device),
                          torch.ones(4, 16, 2, dtype=torch.bfloat16, device=device)))

    @functools.cached_property
    def model(self) -> nn.Module:
        return self.keep(nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3)).to(self.device), "model")

    @functools.cached_property
    def qat_model(self) -> nn.Module:
        model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3)).to(self.device)
        return self.keep(cq.quantize_(model, cq.ClimbQConfig()), "qat_model")

    def module(self, module: nn.Module) -> nn.Module:
        return self.keep(module.to(self.device), type(module).__name__)


def enter(context) -> None:
    """Enter and leave a context manager (its arguments are checked on entry)."""
    with context:
        pass


# --- valid calls with one argument replaced -------------------------------------------------------

def fake_quant(d, **bad):
    return cq.fake_quant(**{"x": d.x, "scale": 0.1, "zero_point": 0, "quant_min": -8, "quant_max": 7, **bad})


def per_sample_bits(d, **bad):
    return cq.fake_quant_per_sample_bits(**{"x": d.x, "bits": d.t([2, 4, 8, 16]), "clip": 1.0, **bad})


def act_quant(d, **bad):
    return cq.climbq_act_quant(**{"x": d.x, "labels": d.labels, "num_classes": 3, **bad})


def act_codes(d, **bad):
    return cq.climbq_act_codes(**{"x": d.x, "labels": d.labels, "num_classes": 3, **bad})


def weight_quant(d, **bad):
    return cq.climbq_weight_quant(**{"w": d.w, "bits": 4, **bad})


def class_stats(d, **bad):
    return cq.class_stats(**{"x": d.x, "labels": d.labels, "num_classes": 3, **bad})


def class_sigma(d, **bad):
    return cq.class_sigma(**{"labels": d.labels, "num_classes": 3, **bad})


def homovar(d, **bad):
    return cq.homovar_loss(**{"features": d.randn(4, 5), "logits": d.randn(4, 3), "labels": d.labels,
                              "class_counts": d.t([50, 20, 5]), **bad})


def quantize_int4(d, **bad):
    return cq.quantize_int4(**{"w": d.randn(16, 64), "group_size": 32, **bad})


def int4_weight(d, **bad):
    q = d.qweight
    return cq.Int4Weight(**{"packed": q.packed, "scales": q.scales, "zeros": q.zeros, "group_size": 32, **bad})


def int4_matmul(d, **bad):
    return cq.int4_matmul(**{"x": d.randn(2, 64), "qweight": d.qweight, "bias": None, **bad})


def from_torch(d, **bad):
    packed, scales_and_zeros, group_size = d.torch_pack
    return cq.from_torch_int4pack(**{"packed": packed, "scales_and_zeros": scales_and_zeros,
                                     "group_size": group_size, "in_features": 64, **bad})


def from_torch_cuda(d, **bad):
    packed, scales_and_zeros = d.torch_pack_cuda
    return cq.from_torch_int4pack_cuda(**{"packed": packed, "scales_and_zeros": scales_and_zeros, "group_size": 32,
                                          "in_features": 128, **bad})


def to_torch_cuda(d, **bad):
    qweight = cq.quantize_int4(torch.randn(16, 128, generator=d.gen).to("cuda" if GPU else "cpu"), 32)
    return cq.to_torch_int4pack_cuda(**{"qweight": d.keep(qweight), "inner_k_tiles": 8, **bad})


def quantize_(d, **bad):
    return cq.quantize_(**{"model": d.model, "config": cq.ClimbQConfig(), **bad})


def convert_int4(d, **bad):
    return cq.convert_int4(**{"model": d.model, "group_size": None, **bad})


def climbq_act_module(d, x=None, labels=None, train=True, **bad):
    """A ClimbQActQuant (3 classes) called on x, in class_labels(labels) when training."""
    module = d.module(ClimbQActQuant(**{"bits": 4, "num_classes": 3, **bad}).train(train))
    with cq.class_labels(d.labels if labels is None else labels):
        return module(d.x if x is None else x)


def nan_bias(layer: nn.Module) -> nn.Module:
    with torch.no_grad():
        layer.bias[1] = NAN
    return layer


def int4_linear(d):
    return d.module(Int4Linear.from_linear(nn.Linear(64, 8), group_size=32))


def int4_conv(d):
    return d.module(Int4Conv2d.from_conv2d(nn.Conv2d(4, 8, 3), group_size=None))


def homovar_module(d, **bad):
    return HomoVarLoss(**{"class_counts": [50, 20, 5], **bad})


def int4_conv_init(**bad):
    return Int4Conv2d(**{"in_channels": 4, "out_channels": 8, "kernel_size": 3, "group_size": None, **bad})


CASES = [
    # fake_quant(x, scale, zero_point, quant_min, quant_max, axis)
    Case("fake_quant", "x", "list", lambda d: fake_quant(d, x=[[1.0, 2.0]]), TypeError),
    Case("fake_quant", "x", "none", lambda d: fake_quant(d, x=None), TypeError),
    Case("fake_quant", "x", "int", lambda d: fake_quant(d, x=d.t([[1, 2]])), TypeError),
    Case("fake_quant", "x", "meta", lambda d: fake_quant(d, x=d.meta(4, 6)), ValueError),
    Case("fake_quant", "scale", "str", lambda d: fake_quant(d, scale="0.1"), TypeError),
    Case("fake_quant", "scale", "none", lambda d: fake_quant(d, scale=None), TypeError),
    Case("fake_quant", "scale", "inf", lambda d: fake_quant(d, scale=INF), ValueError),
    Case("fake_quant", "scale", "nan", lambda d: fake_quant(d, scale=NAN), ValueError),
    Case("fake_quant", "scale", "zero", lambda d: fake_quant(d, scale=0.0), ValueError),
    Case("fake_quant", "scale", "negative", lambda d: fake_quant(d, scale=-0.1), ValueError),
    Case("fake_quant", "scale", "inf-tensor", lambda d: fake_quant(d, scale=d.t([INF])), ValueError),
    Case("fake_quant", "scale", "int-tensor", lambda d: fake_quant(d, scale=d.t([1])), TypeError),
    Case("fake_quant", "scale", "meta", lambda d: fake_quant(d, scale=d.meta(())), ValueError),
    Case("fake_quant", "scale", "two-per-tensor", lambda d: fake_quant(d, scale=d.t([0.1, 0.2])), ValueError),
    Case("fake_quant", "scale", "other-device", lambda d: fake_quant(d, scale=d.other(torch.tensor(0.1))),
         ValueError, marks=GPU_ONLY),
    Case("fake_quant", "zero_point", "str", lambda d: fake_quant(d, zero_point="0"), TypeError),
    Case("fake_quant", "zero_point", "none", lambda d: fake_quant(d, zero_point=None), TypeError),
    Case("fake_quant", "zero_point", "out-of-range", lambda d: fake_quant(d, zero_point=8), ValueError),
    Case("fake_quant", "zero_point", "nan", lambda d: fake_quant(d, zero_point=NAN), ValueError),
    Case("fake_quant", "zero_point", "inf", lambda d: fake_quant(d, zero_point=INF), ValueError),
    Case("fake_quant", "zero_point", "meta", lambda d: fake_quant(d, zero_point=d.meta((), dtype=torch.int64)),
         ValueError),
    Case("fake_quant", "quant_min", "float", lambda d: fake_quant(d, quant_min=-8.0), TypeError),
    Case("fake_quant", "quant_max", "float", lambda d: fake_quant(d, quant_max=7.0), TypeError),
    Case("fake_quant", "quant_max", "none", lambda d: fake_quant(d, quant_max=None), TypeError),
    Case("fake_quant", "quant_max", "below-quant_min", lambda d: fake_quant(d, quant_max=-9), ValueError),
    Case("fake_quant", "quant_max", "equal-quant_min", lambda d: fake_quant(d, quant_max=-8), ValueError),
    Case("fake_quant", "quant_max", "beyond-2**24", lambda d: fake_quant(d, quant_max=2**24 + 1), ValueError),
    Case("fake_quant", "quant_min", "beyond-minus-2**24", lambda d: fake_quant(d, quant_min=-2**25), ValueError),
    Case("fake_quant", "axis", "out-of-range",
         lambda d: fake_quant(d, scale=d.t([0.1] * 6), zero_point=d.t([0] * 6), axis=2), ValueError),
    Case("fake_quant", "axis", "str",
         lambda d: fake_quant(d, scale=d.t([0.1] * 6), zero_point=d.t([0] * 6), axis="1"), TypeError),
    Case("fake_quant", "scale", "per-channel-shape",
         lambda d: fake_quant(d, scale=d.t([0.1] * 4), zero_point=d.t([0] * 6), axis=1), ValueError),
    Case("fake_quant", "zero_point", "per-channel-shape",
         lambda d: fake_quant(d, scale=d.t([0.1] * 6), zero_point=d.t([0] * 5), axis=1), ValueError),

    # fake_quant_per_sample_bits(x, bits, clip)
    Case("fake_quant_per_sample_bits", "x", "int", lambda d: per_sample_bits(d, x=d.t([[1, 2]] * 4)), TypeError),
    Case("fake_quant_per_sample_bits", "x", "0-d", lambda d: per_sample_bits(d, x=d.t(1.0)), ValueError),
    Case("fake_quant_per_sample_bits", "x", "meta", lambda d: per_sample_bits(d, x=d.meta(4, 6)), ValueError),
    Case("fake_quant_per_sample_bits", "bits", "list", lambda d: per_sample_bits(d, bits=[2, 4, 8, 16]), TypeError),
    Case("fake_quant_per_sample_bits", "bits", "float", lambda d: per_sample_bits(d, bits=d.t([2.0] * 4)), TypeError),
    Case("fake_quant_per_sample_bits", "bits", "shape", lambda d: per_sample_bits(d, bits=d.t([2, 4])), ValueError),
    Case("fake_quant_per_sample_bits", "bits", "zero", lambda d: per_sample_bits(d, bits=d.t([0, 4, 8, 16])),
         ValueError),
    Case("fake_quant_per_sample_bits", "bits", "17", lambda d: per_sample_bits(d, bits=d.t([2, 4, 8, 17])),
         ValueError),
    Case("fake_quant_per_sample_bits", "bits", "32", lambda d: per_sample_bits(d, bits=d.t([2, 4, 8, 32])),
         ValueError),
    Case("fake_quant_per_sample_bits", "bits", "meta",
         lambda d: per_sample_bits(d, bits=d.meta(4, dtype=torch.int64)), ValueError),
    Case("fake_quant_per_sample_bits", "clip", "str", lambda d: per_sample_bits(d, clip="1"), TypeError),
    Case("fake_quant_per_sample_bits", "clip", "none", lambda d: per_sample_bits(d, clip=None), TypeError),
    Case("fake_quant_per_sample_bits", "clip", "inf", lambda d: per_sample_bits(d, clip=INF), ValueError),
    Case("fake_quant_per_sample_bits", "clip", "nan", lambda d: per_sample_bits(d, clip=NAN), ValueError),
    Case("fake_quant_per_sample_bits", "clip", "zero", lambda d: per_sample_bits(d, clip=0.0), ValueError),
    Case("fake_quant_per_sample_bits", "clip", "nan-tensor", lambda d: per_sample_bits(d, clip=d.t(NAN)),
         ValueError),
    Case("fake_quant_per_sample_bits", "clip", "int-tensor", lambda d: per_sample_bits(d, clip=d.t(1)), TypeError),
    Case("fake_quant_per_sample_bits", "clip", "two", lambda d: per_sample_bits(d, clip=d.t([1.0, 2.0])),
         ValueError),
    Case("fake_quant_per_sample_bits", "clip", "meta", lambda d: per_sample_bits(d, clip=d.meta(())), ValueError),
    Case("fake_quant_per_sample_bits", "bits", "other-device",
         lambda d: per_sample_bits(d, bits=d.other(torch.tensor([2, 4, 8, 16]))), ValueError, marks=GPU_ONLY),

    # climbq_act_quant(x, labels, *, num_classes, bits, act_range, sigma, mu, bn_scale, bn_shift, relu)
    Case("climbq_act_quant", "x", "list", lambda d: act_quant(d, x=[[0.5] * 6] * 4), TypeError),
    Case("climbq_act_quant", "x", "int", lambda d: act_quant(d, x=d.t([[1] * 6] * 4)), TypeError),
    Case("climbq_act_quant", "x", "0-d", lambda d: act_quant(d, x=d.t(1.0)), ValueError),
    Case("climbq_act_quant", "x", "meta", lambda d: act_quant(d, x=d.meta(4, 6)), ValueError),
    Case("climbq_act_quant", "labels", "list", lambda d: act_quant(d, labels=[0, 1, 2, 1]), TypeError),
    Case("climbq_act_quant", "labels", "float", lambda d: act_quant(d, labels=d.t([0.0, 1.0, 2.0, 1.0])),
         TypeError),
    Case("climbq_act_quant", "labels", "shape", lambda d: act_quant(d, labels=d.t([0, 1, 2])), ValueError),
    Case("climbq_act_quant", "labels", "above-range", lambda d: act_quant(d, labels=d.t([0, 1, 3, 2])), ValueError),
    Case("climbq_act_quant", "labels", "negative", lambda d: act_quant(d, labels=d.t([0, -1, 2, 2])), ValueError),
    Case("climbq_act_quant", "labels", "above-range-with-sigma-table",
         lambda d: act_quant(d, labels=d.t([0, 1, 5, 2]), num_classes=None, sigma=d.t([1.0, 2.0, 1.5])),
         ValueError),
    Case("climbq_act_quant", "labels", "meta", lambda d: act_quant(d, labels=d.meta(4, dtype=torch.int64)),
         ValueError),
    Case("climbq_act_quant", "labels", "other-device", lambda d: act_quant(d, labels=d.other(d.labels)),
         ValueError, marks=GPU_ONLY),
    Case("climbq_act_quant", "num_classes", "none", lambda d: act_quant(d, num_classes=None), ValueError),
    Case("climbq_act_quant", "num_classes", "zero", lambda d: act_quant(d, num_classes=0), ValueError),
    Case("climbq_act_quant", "num_classes", "str", lambda d: act_quant(d, num_classes="3"), TypeError),
    Case("climbq_act_quant", "num_classes", "float", lambda d: act_quant(d, num_classes=3.0), TypeError),
    Case("climbq_act_quant", "bits", "zero", lambda d: act_quant(d, bits=0), ValueError),
    Case("climbq_act_quant", "bits", "17", lambda d: act_quant(d, bits=17), ValueError),
    Case("climbq_act_quant", "bits", "31", lambda d: act_quant(d, bits=31), ValueError),
    Case("climbq_act_quant", "bits", "negative", lambda d: act_quant(d, bits=-4), ValueError),
    Case("climbq_act_quant", "bits", "float", lambda d: act_quant(d, bits=4.0), TypeError),
    Case("climbq_act_quant", "bits", "bool", lambda d: act_quant(d, bits=True), TypeError),
    Case("climbq_act_quant", "bits", "none", lambda d: act_quant(d, bits=None), TypeError),
    Case("climbq_act_quant", "act_range", "inf", lambda d: act_quant(d, act_range=INF), ValueError),
    Case("climbq_act_quant", "act_range", "nan", lambda d: act_quant(d, act_range=NAN), ValueError),
    Case("climbq_act_quant", "act_range", "negative", lambda d: act_quant(d, act_range=-1.0), ValueError),
    Case("climbq_act_quant", "act_range", "str", lambda d: act_quant(d, act_range="2"), TypeError),
    Case("climbq_act_quant", "sigma", "shape", lambda d: act_quant(d, sigma=d.t([1.0] * 4)), ValueError),
    Case("climbq_act_quant", "sigma", "inf-entry", lambda d: act_quant(d, sigma=d.t([1.0, INF, 2.0])), ValueError),
    Case("climbq_act_quant", "sigma", "nan-entry", lambda d: act_quant(d, sigma=d.t([1.0, NAN, 2.0])), ValueError),
    Case("climbq_act_quant", "sigma", "zero-entry", lambda d: act_quant(d, sigma=d.t([1.0, 0.0, 2.0])), ValueError),
    Case("climbq_act_quant", "sigma", "int-table", lambda d: act_quant(d, sigma=d.t([1, 1, 2])), TypeError),
    Case("climbq_act_quant", "sigma", "number-with-labels", lambda d: act_quant(d, sigma=2.0), TypeError),
    Case("climbq_act_quant", "sigma", "meta", lambda d: act_quant(d, sigma=d.meta(3)), ValueError),
    Case("climbq_act_quant", "sigma", "table-without-labels",
         lambda d: act_quant(d, labels=None, num_classes=None, sigma=d.t([1.0] * 3)), TypeError),
    Case("climbq_act_quant", "sigma", "inf-without-labels",
         lambda d: act_quant(d, labels=None, num_classes=None, sigma=INF), ValueError),
    Case("climbq_act_quant", "sigma", "str-without-labels",
         lambda d: act_quant(d, labels=None, num_classes=None, sigma="2"), TypeError),
    Case("climbq_act_quant", "mu", "nan-without-labels",
         lambda d: act_quant(d, labels=None, num_classes=None, mu=NAN), ValueError),
    Case("climbq_act_quant", "mu", "shape", lambda d: act_quant(d, mu=d.t([0.0] * 2)), ValueError),
    Case("climbq_act_quant", "mu", "nan-entry", lambda d: act_quant(d, mu=d.t([0.0, NAN, 0.0])), ValueError),
    Case("climbq_act_quant", "mu", "inf-entry", lambda d: act_quant(d, mu=d.t([0.0, INF, 0.0])), ValueError),
    Case("climbq_act_quant", "mu", "meta", lambda d: act_quant(d, mu=d.meta(3)), ValueError),
    Case("climbq_act_quant", "bn_scale", "shape", lambda d: act_quant(d, bn_scale=d.t([1.0] * 4)), ValueError),
    Case("climbq_act_quant", "bn_scale", "int", lambda d: act_quant(d, bn_scale=d.t([1] * 6)), TypeError),
    Case("climbq_act_quant", "bn_scale", "meta", lambda d: act_quant(d, bn_scale=d.meta(6)), ValueError),
    Case("climbq_act_quant", "bn_scale", "nan-entry", lambda d: act_quant(d, bn_scale=d.t([1.0] * 5 + [NAN])),
         ValueError),
    Case("climbq_act_quant", "bn_shift", "shape", lambda d: act_quant(d, bn_shift=d.t([0.0] * 7)), ValueError),
    Case("climbq_act_quant", "bn_shift", "list", lambda d: act_quant(d, bn_shift=[0.0] * 6), TypeError),
    Case("climbq_act_quant", "bn_shift", "inf-entry", lambda d: act_quant(d, bn_shift=d.t([0.0] * 5 + [INF])),
         ValueError),
    Case("climbq_act_quant", "relu", "str", lambda d: act_quant(d, relu="yes"), TypeError),
    Case("climbq_act_quant", "sigma", "other-device", lambda d: act_quant(d, sigma=d.other(torch.ones(3))),
         ValueError, marks=GPU_ONLY),

    # climbq_act_codes(x, labels, *, num_classes, bits, sigma, mu)
    Case("climbq_act_codes", "x", "int", lambda d: act_codes(d, x=d.t([[1] * 6] * 4)), TypeError),
    Case("climbq_act_codes", "x", "meta", lambda d: act_codes(d, x=d.meta(4, 6)), ValueError),
    Case("climbq_act_codes", "bits", "9", lambda d: act_codes(d, bits=9), ValueError),
    Case("climbq_act_codes", "bits", "32", lambda d: act_codes(d, bits=32), ValueError),
    Case("climbq_act_codes", "bits", "zero", lambda d: act_codes(d, bits=0), ValueError),
    Case("climbq_act_codes", "bits", "float", lambda d: act_codes(d, bits=4.0), TypeError),
    Case("climbq_act_codes", "labels", "above-range", lambda d: act_codes(d, labels=d.t([0, 1, 3, 2])), ValueError),
    Case("climbq_act_codes", "sigma", "inf-entry", lambda d: act_codes(d, sigma=d.t([1.0, INF, 2.0])), ValueError),
    Case("climbq_act_codes", "num_classes", "str", lambda d: act_codes(d, num_classes="3"), TypeError),

    # climbq_weight_quant(w, bits)
    Case("climbq_weight_quant", "w", "list", lambda d: weight_quant(d, w=[1.0, 2.0]), TypeError),
    Case("climbq_weight_quant", "w", "int", lambda d: weight_quant(d, w=d.t([[1, 2], [3, 4]])), TypeError),
    Case("climbq_weight_quant", "w", "meta", lambda d: weight_quant(d, w=d.meta(4, 6)), ValueError),
    Case("climbq_weight_quant", "w", "one-element", lambda d: weight_quant(d, w=d.t([1.5])), ValueError),
    Case("climbq_weight_quant", "w", "no-spread", lambda d: weight_quant(d, w=d.t([[0.25] * 3] * 3)), ValueError),
    Case("climbq_weight_quant", "w", "nan", lambda d: weight_quant(d, w=d.t([[1.0, NAN], [0.5, 2.0]])), ValueError),
    Case("climbq_weight_quant", "w", "inf", lambda d: weight_quant(d, w=d.t([[1.0, INF], [0.5, 2.0]])), ValueError),
    Case("climbq_weight_quant", "bits", "zero", lambda d: weight_quant(d, bits=0), ValueError),
    Case("climbq_weight_quant", "bits", "17", lambda d: weight_quant(d, bits=17), ValueError),
    Case("climbq_weight_quant", "bits", "float", lambda d: weight_quant(d, bits=4.0), TypeError),

    # class_stats(x, labels, num_classes), class_sigma(labels, num_classes)
    Case("class_stats", "x", "int", lambda d: class_stats(d, x=d.t([[1] * 6] * 4)), TypeError),
    Case("class_stats", "x", "meta", lambda d: class_stats(d, x=d.meta(4, 6)), ValueError),
    Case("class_stats", "labels", "float", lambda d: class_stats(d, labels=d.t([0.0, 1.0, 2.0, 1.0])), TypeError),
    Case("class_stats", "labels", "shape", lambda d: class_stats(d, labels=d.t([0, 1])), ValueError),
    Case("class_stats", "labels", "above-range", lambda d: class_stats(d, labels=d.t([0, 1, 3, 2])), ValueError),
    Case("class_stats", "labels", "meta", lambda d: class_stats(d, labels=d.meta(4, dtype=torch.int64)), ValueError),
    Case("class_stats", "num_classes", "none", lambda d: class_stats(d, num_classes=None), TypeError),
    Case("class_stats", "num_classes", "zero", lambda d: class_stats(d, num_classes=0), ValueError),
    Case("class_stats", "num_classes", "float", lambda d: class_stats(d, num_classes=3.0), TypeError),
    Case("class_stats", "labels", "other-device", lambda d: class_stats(d, labels=d.other(d.labels)),
         ValueError, marks=GPU_ONLY),
    Case("class_sigma", "labels", "list", lambda d: class_sigma(d, labels=[0, 1, 2]), TypeError),
    Case("class_sigma", "labels", "2-d", lambda d: class_sigma(d, labels=d.t([[0, 1], [2, 1]])), ValueError),
    Case("class_sigma", "labels", "float", lambda d: class_sigma(d, labels=d.t([0.0, 1.0])), TypeError),
    Case("class_sigma", "labels", "above-range", lambda d: class_sigma(d, labels=d.t([0, 1, 3])), ValueError),
    Case("class_sigma", "labels", "meta", lambda d: class_sigma(d, labels=d.meta(4, dtype=torch.int64)), ValueError),
    Case("class_sigma", "num_classes", "none", lambda d: class_sigma(d, num_classes=None), TypeError),
    Case("class_sigma", "num_classes", "zero", lambda d: class_sigma(d, num_classes=0), ValueError),
    Case("class_sigma", "num_classes", "float", lambda d: class_sigma(d, num_classes=3.0), TypeError),

    # homovar_loss(features, logits, labels, class_counts, alpha, beta0, *, sync, process_group)
    Case("homovar_loss", "features", "int", lambda d: homovar(d, features=d.t([[1] * 5] * 4)), TypeError),
    Case("homovar_loss", "features", "meta", lambda d: homovar(d, features=d.meta(4, 5)), ValueError),
    Case("homovar_loss", "features", "batch", lambda d: homovar(d, features=d.randn(3, 5)), ValueError),
    Case("homovar_loss", "features", "1-d", lambda d: homovar(d, features=d.randn(4)), ValueError),
    Case("homovar_loss", "logits", "list", lambda d: homovar(d, logits=[[0.0] * 3] * 4), TypeError),
    Case("homovar_loss", "logits", "meta", lambda d: homovar(d, logits=d.meta(4, 3)), ValueError),
    Case("homovar_loss", "labels", "above-range", lambda d: homovar(d, labels=d.t([0, 1, 3, 2])), ValueError),
    Case("homovar_loss", "labels", "float", lambda d: homovar(d, labels=d.t([0.0, 1.0, 2.0, 1.0])), TypeError),
    Case("homovar_loss", "labels", "meta", lambda d: homovar(d, labels=d.meta(4, dtype=torch.int64)), ValueError),
    Case("homovar_loss", "class_counts", "shape", lambda d: homovar(d, class_counts=d.t([1, 2])), ValueError),
    # values as a sequence: a GPU tensor's counts are not read per call (nn.HomoVarLoss reads them once)
    Case("homovar_loss", "class_counts", "zero", lambda d: homovar(d, class_counts=[50, 0, 5]), ValueError),
    Case("homovar_loss", "class_counts", "fraction", lambda d: homovar(d, class_counts=[50, 2.5, 5]), ValueError),
    Case("homovar_loss", "class_counts", "nan", lambda d: homovar(d, class_counts=[50.0, NAN, 5.0]), ValueError),
    Case("homovar_loss", "class_counts", "str", lambda d: homovar(d, class_counts="50,20,5"), TypeError),
    Case("homovar_loss", "class_counts", "bool", lambda d: homovar(d, class_counts=d.t([True, True, True])),
         TypeError),
    Case("homovar_loss", "class_counts", "none", lambda d: homovar(d, class_counts=None), TypeError),
    Case("homovar_loss", "class_counts", "meta", lambda d: homovar(d, class_counts=d.meta(3, dtype=torch.int64)),
         ValueError),
    Case("homovar_loss", "alpha", "str", lambda d: homovar(d, alpha="0.05"), TypeError),
    Case("homovar_loss", "alpha", "one", lambda d: homovar(d, alpha=1.0), ValueError),
    Case("homovar_loss", "alpha", "nan", lambda d: homovar(d, alpha=NAN), ValueError),
    Case("homovar_loss", "beta0", "none", lambda d: homovar(d, beta0=None), TypeError),
    Case("homovar_loss", "beta0", "zero", lambda d: homovar(d, beta0=0.0), ValueError),
    Case("homovar_loss", "sync", "str", lambda d: homovar(d, sync="yes"), TypeError),
    Case("homovar_loss", "labels", "other-device", lambda d: homovar(d, labels=d.other(d.labels)),
         ValueError, marks=GPU_ONLY),

    # quantize_int4(w, group_size), Int4Weight(packed, scales, zeros, group_size), int4_matmul(x, qweight, bias)
    Case("quantize_int4", "w", "int", lambda d: quantize_int4(d, w=d.t([[1] * 64] * 2)), TypeError),
    Case("quantize_int4", "w", "meta", lambda d: quantize_int4(d, w=d.meta(4, 64)), ValueError),
    Case("quantize_int4", "w", "1-d", lambda d: quantize_int4(d, w=d.randn(64)), ValueError),
    Case("quantize_int4", "w", "odd", lambda d: quantize_int4(d, w=d.randn(4, 33), group_size=None), ValueError),
    Case("quantize_int4", "w", "nan", lambda d: quantize_int4(d, w=d.t([[1.0, NAN] * 16])), ValueError),
    Case("quantize_int4", "w", "inf", lambda d: quantize_int4(d, w=d.t([[1.0, -INF] * 16])), ValueError),
    Case("quantize_int4", "group_size", "48", lambda d: quantize_int4(d, group_size=48), ValueError),
    Case("quantize_int4", "group_size", "not-dividing", lambda d: quantize_int4(d, w=d.randn(4, 96), group_size=64),
         ValueError),
    Case("quantize_int4", "group_size", "float", lambda d: quantize_int4(d, group_size=32.0), TypeError),
    Case("quantize_int4", "group_size", "str", lambda d: quantize_int4(d, group_size="32"), TypeError),
    Case("Int4Weight", "group_size", "float", lambda d: int4_weight(d, group_size=32.9), TypeError),
    Case("Int4Weight", "group_size", "none", lambda d: int4_weight(d, group_size=None), TypeError),
    Case("Int4Weight", "group_size", "bool", lambda d: int4_weight(d, group_size=True), TypeError),
    Case("Int4Weight", "group_size", "48", lambda d: int4_weight(d, group_size=48), ValueError),
    Case("Int4Weight", "group_size", "mismatch", lambda d: int4_weight(d, group_size=64), ValueError),
    Case("Int4Weight", "packed", "int32", lambda d: int4_weight(d, packed=d.qweight.packed.int()), TypeError),
    Case("Int4Weight", "packed", "1-d", lambda d: int4_weight(d, packed=d.qweight.packed.flatten()), ValueError),
    Case("Int4Weight", "packed", "meta", lambda d: int4_weight(d, packed=d.meta(16, 32, dtype=torch.uint8)),
         ValueError),
    Case("Int4Weight", "scales", "float64", lambda d: int4_weight(d, scales=d.qweight.scales.double()), TypeError),
    Case("Int4Weight", "scales", "shape", lambda d: int4_weight(d, scales=d.qweight.scales[:8]), ValueError),
    Case("Int4Weight", "zeros", "list", lambda d: int4_weight(d, zeros=[[8.0, 8.0]] * 16), TypeError),
    Case("Int4Weight", "zeros", "other-device", lambda d: int4_weight(d, zeros=d.other(d.qweight.zeros)),
         ValueError, marks=GPU_ONLY),
    Case("int4_matmul", "x", "int", lambda d: int4_matmul(d, x=d.t([[1] * 64])), TypeError),
    Case("int4_matmul", "x", "meta", lambda d: int4_matmul(d, x=d.meta(2, 64)), ValueError),
    Case("int4_matmul", "x", "in_features", lambda d: int4_matmul(d, x=d.randn(2, 63)), ValueError),
    Case("int4_matmul", "x", "0-d", lambda d: int4_matmul(d, x=d.t(1.0)), ValueError),
    Case("int4_matmul", "qweight", "tensor", lambda d: int4_matmul(d, qweight=d.randn(16, 64)), TypeError),
    Case("int4_matmul", "qweight", "none", lambda d: int4_matmul(d, qweight=None), TypeError),
    Case("int4_matmul", "bias", "dtype", lambda d: int4_matmul(d, bias=d.randn(16, dtype=torch.float64)), TypeError),
    Case("int4_matmul", "bias", "shape", lambda d: int4_matmul(d, bias=d.randn(8)), ValueError),
    Case("int4_matmul", "bias", "meta", lambda d: int4_matmul(d, bias=d.meta(16)), ValueError),
    Case("int4_matmul", "x", "other-device", lambda d: int4_matmul(d, x=d.other(torch.randn(2, 64))), ValueError,
         marks=GPU_ONLY),

    # PyTorch's int4 formats: from_torch_int4pack(_cuda), to_torch_int4pack(_cuda)
    Case("from_torch_int4pack", "packed", "list", lambda d: from_torch(d, packed=[[0] * 32] * 16), TypeError),
    Case("from_torch_int4pack", "packed", "int32", lambda d: from_torch(d, packed=d.torch_pack[0].int()), TypeError),
    Case("from_torch_int4pack", "packed", "rows", lambda d: from_torch(d, packed=d.torch_pack[0][:8]), ValueError),
    Case("from_torch_int4pack", "packed", "columns", lambda d: from_torch(d, packed=d.torch_pack[0][:, :16]),
         ValueError),
    Case("from_torch_int4pack", "packed", "meta", lambda d: from_torch(d, packed=d.meta(16, 32, dtype=torch.uint8)),
         ValueError),
    Case("from_torch_int4pack", "scales_and_zeros", "groups",
         lambda d: from_torch(d, scales_and_zeros=d.torch_pack[1][:1]), ValueError),
    Case("from_torch_int4pack", "scales_and_zeros", "out_features",
         lambda d: from_torch(d, scales_and_zeros=d.torch_pack[1][:, :8]), ValueError),
    Case("from_torch_int4pack", "scales_and_zeros", "rows-not-16", lambda d: from_torch(
        d, packed=d.torch_pack[0][:8], scales_and_zeros=d.torch_pack[1][:, :8]), ValueError),
    Case("from_torch_int4pack", "scales_and_zeros", "other-device",
         lambda d: from_torch(d, scales_and_zeros=d.keep(d.torch_pack[1].cuda())), ValueError, marks=GPU_ONLY),
    Case("from_torch_int4pack", "scales_and_zeros", "int",
         lambda d: from_torch(d, scales_and_zeros=d.torch_pack[1].int()), TypeError),
    Case("from_torch_int4pack", "scales_and_zeros", "nan",
         lambda d: from_torch(d, scales_and_zeros=d.keep(d.torch_pack[1].clone().fill_(NAN))), ValueError),
    Case("from_torch_int4pack", "scales_and_zeros", "meta",
         lambda d: from_torch(d, scales_and_zeros=d.meta(2, 16, 2)), ValueError),
    Case("from_torch_int4pack", "group_size", "48", lambda d: from_torch(d, group_size=48), ValueError),
    Case("from_torch_int4pack", "group_size", "float", lambda d: from_torch(d, group_size=32.9), TypeError),
    Case("from_torch_int4pack", "group_size", "mismatch", lambda d: from_torch(d, group_size=64), ValueError),
    Case("from_torch_int4pack", "in_features", "str", lambda d: from_torch(d, in_features="64"), TypeError),
    Case("from_torch_int4pack", "in_features", "none", lambda d: from_torch(d, in_features=None), TypeError),
    Case("from_torch_int4pack", "in_features", "zero", lambda d: from_torch(d, in_features=0), ValueError),
    Case("from_torch_int4pack", "in_features", "mismatch", lambda d: from_torch(d, in_features=128), ValueError),
    Case("from_torch_int4pack", "in_features", "odd", lambda d: from_torch(d, in_features=63, group_size=None),
         ValueError),
    Case("from_torch_int4pack_cuda", "packed", "uint8", lambda d: from_torch_cuda(d, packed=d.keep(
        torch.zeros(2, 1, 32, 4, dtype=torch.uint8, device=d.torch_pack_cuda[0].device))), TypeError),
    Case("from_torch_int4pack_cuda", "packed", "shape",
         lambda d: from_torch_cuda(d, packed=d.torch_pack_cuda[0][:1]), ValueError),
    Case("from_torch_int4pack_cuda", "packed", "meta",
         lambda d: from_torch_cuda(d, packed=d.meta(2, 1, 32, 4, dtype=torch.int32)), ValueError),
    Case("from_torch_int4pack_cuda", "scales_and_zeros", "groups",
         lambda d: from_torch_cuda(d, scales_and_zeros=d.torch_pack_cuda[1][:2]), ValueError),
    Case("from_torch_int4pack_cuda", "group_size", "float", lambda d: from_torch_cuda(d, group_size=32.9), TypeError),
    Case("from_torch_int4pack_cuda", "in_features", "str", lambda d: from_torch_cuda(d, in_features="128"),
         TypeError),
    Case("from_torch_int4pack_cuda", "in_features", "mismatch", lambda d: from_torch_cuda(d, in_features=256),
         ValueError),
    Case("to_torch_int4pack", "qweight", "tensor", lambda d: cq.to_torch_int4pack(d.randn(16, 64)), TypeError),
    Case("to_torch_int4pack", "qweight", "rows", lambda d: cq.to_torch_int4pack(
        d.keep(cq.quantize_int4(torch.randn(8, 64), 32))), ValueError),
    Case("to_torch_int4pack", "dtype", "float64", lambda d: cq.to_torch_int4pack(d.qweight, torch.float64),
         TypeError),
    Case("to_torch_int4pack", "qweight", "cuda", lambda d: cq.to_torch_int4pack(d.keep(d.qweight.to("cuda"))),
         ValueError, marks=GPU_ONLY),
    Case("to_torch_int4pack", "dtype", "str", lambda d: cq.to_torch_int4pack(d.qweight, "float32"), TypeError),
    Case("to_torch_int4pack_cuda", "qweight", "tensor", lambda d: cq.to_torch_int4pack_cuda(d.randn(16, 128)),
         TypeError),
    Case("to_torch_int4pack_cuda", "qweight", "cpu", lambda d: cq.to_torch_int4pack_cuda(
        d.keep(cq.quantize_int4(torch.randn(16, 128), 32))), ValueError),
    Case("to_torch_int4pack_cuda", "inner_k_tiles", "3", lambda d: to_torch_cuda(d, inner_k_tiles=3), ValueError),
    Case("to_torch_int4pack_cuda", "inner_k_tiles", "str", lambda d: to_torch_cuda(d, inner_k_tiles="8"), TypeError),

    # quantize_(model, config, filter_fn), convert(model, ...), convert_int4(model, ...), class_labels, use_backend
    Case("quantize_", "model", "tensor", lambda d: quantize_(d, model=d.randn(2, 2)), TypeError),
    Case("quantize_", "model", "single-layer", lambda d: quantize_(d, model=d.module(nn.Linear(4, 4))), ValueError),
    Case("quantize_", "config", "class", lambda d: quantize_(d, config=cq.ClimbQConfig), TypeError),
    Case("quantize_", "config", "str", lambda d: quantize_(d, config="climbq"), TypeError),
    Case("quantize_", "config", "none", lambda d: quantize_(d, config=None), TypeError),
    Case("quantize_", "config", "dict", lambda d: quantize_(d, config={"w_bits": 4}), TypeError),
    Case("quantize_", "filter_fn", "str", lambda d: quantize_(d, filter_fn="fc"), TypeError),
    Case("quantize_", "model", "already-quantized", lambda d: quantize_(d, model=d.qat_model), ValueError),
    Case("convert", "model", "none", lambda d: cq.convert(None), TypeError),
    Case("convert", "model", "float", lambda d: cq.convert(d.model), ValueError),
    Case("convert", "group_size", "48", lambda d: cq.convert(d.qat_model, quantize_float_layers=True, group_size=48),
         ValueError),
    Case("convert_int4", "model", "tensor", lambda d: convert_int4(d, model=d.randn(2, 2)), TypeError),
    Case("convert_int4", "group_size", "48", lambda d: convert_int4(d, group_size=48), ValueError),
    Case("convert_int4", "group_size", "float", lambda d: convert_int4(d, group_size=32.0), TypeError,
         marks=pytest.mark.filterwarnings("ignore:convert_int4")),
    Case("convert_int4", "group_size", "str", lambda d: convert_int4(d, group_size="32"), TypeError),
    Case("convert_int4", "skip", "str", lambda d: convert_int4(d, skip="0"), TypeError),
    Case("convert_int4", "skip", "unknown", lambda d: convert_int4(d, skip=("head",)), ValueError),
    Case("convert_int4", "climbq_bits", "5", lambda d: convert_int4(d, climbq_bits=5), ValueError),
    Case("convert_int4", "climbq_bits", "zero", lambda d: convert_int4(d, climbq_bits=0), ValueError),
    Case("convert_int4", "climbq_bits", "str", lambda d: convert_int4(d, climbq_bits="4"), TypeError),
    Case("class_labels", "labels", "list", lambda d: enter(cq.class_labels([0, 1])), TypeError),
    Case("class_labels", "labels", "float", lambda d: enter(cq.class_labels(d.t([0.0, 1.0]))), TypeError),
    Case("class_labels", "labels", "2-d", lambda d: enter(cq.class_labels(d.t([[0, 1]]))), ValueError),
    Case("class_labels", "labels", "meta", lambda d: enter(cq.class_labels(d.meta(4, dtype=torch.int64))),
         ValueError),
    Case("class_labels", "sync", "str", lambda d: enter(cq.class_labels(d.labels, sync="yes")), TypeError),
    Case("use_backend", "name", "unknown", lambda d: enter(cq.use_backend("tpu")), ValueError, "backend"),
    Case("use_backend", "name", "int", lambda d: enter(cq.use_backend(3)), TypeError, "backend"),
    Case("use_backend", "name", "none", lambda d: enter(cq.use_backend(None)), TypeError, "backend"),

    # configs
    Case("ClimbQConfig", "w_bits", "zero", lambda d: cq.ClimbQConfig(w_bits=0), ValueError),
    Case("ClimbQConfig", "a_bits", "17", lambda d: cq.ClimbQConfig(a_bits=17), ValueError),
    Case("ClimbQConfig", "a_bits", "33", lambda d: cq.ClimbQConfig(a_bits=33), ValueError),
    Case("ClimbQConfig", "w_bits", "float", lambda d: cq.ClimbQConfig(w_bits=4.0), TypeError),
    Case("ClimbQConfig", "sigma", "unknown", lambda d: cq.ClimbQConfig(sigma="std"), ValueError),
    Case("ClimbQConfig", "act_form", "unknown", lambda d: cq.ClimbQConfig(act_form="gelu"), ValueError),
    Case("ClimbQConfig", "num_classes", "zero", lambda d: cq.ClimbQConfig(num_classes=0), ValueError),
    Case("ClimbQConfig", "num_classes", "str", lambda d: cq.ClimbQConfig(num_classes="10"), TypeError),
    Case("ClimbQConfig", "act_range", "negative", lambda d: cq.ClimbQConfig(act_range=-1.0), ValueError),
    Case("ClimbQConfig", "inference_sigma", "inf", lambda d: cq.ClimbQConfig(inference_sigma=INF), ValueError),
    Case("LSQConfig", "w_bits", "one", lambda d: cq.LSQConfig(w_bits=1), ValueError),
    Case("LSQConfig", "a_bits", "none", lambda d: cq.LSQConfig(a_bits=None), TypeError),
    Case("FakeQuantConfig", "observer", "unknown", lambda d: cq.FakeQuantConfig(observer="max"), ValueError),
    Case("FakeQuantConfig", "w_bits", "17", lambda d: cq.FakeQuantConfig(w_bits=17), ValueError),

    # quantizer modules
    Case("ClimbQActQuant", "bits", "zero", lambda d: ClimbQActQuant(bits=0), ValueError),
    Case("ClimbQActQuant", "bits", "float", lambda d: ClimbQActQuant(bits=4.0), TypeError),
    Case("ClimbQActQuant", "num_classes", "zero", lambda d: ClimbQActQuant(num_classes=0), ValueError),
    Case("ClimbQActQuant", "num_classes", "str", lambda d: ClimbQActQuant(num_classes="10"), TypeError),
    Case("ClimbQActQuant", "act_range", "nan", lambda d: ClimbQActQuant(act_range=NAN), ValueError),
    Case("ClimbQActQuant", "inference_sigma", "zero", lambda d: ClimbQActQuant(inference_sigma=0.0), ValueError),
    Case("ClimbQActQuant", "sigma", "unknown", lambda d: ClimbQActQuant(sigma="std"), ValueError),
    Case("ClimbQActQuant", "form", "unknown", lambda d: ClimbQActQuant(form="gelu"), ValueError),
    Case("ClimbQActQuant.forward", "x", "int", lambda d: climbq_act_module(d, x=d.t([[1] * 6] * 4)), TypeError),
    Case("ClimbQActQuant.forward", "x", "int-eval", lambda d: climbq_act_module(d, x=d.t([[1] * 6] * 4),
                                                                               train=False), TypeError),
    Case("ClimbQActQuant.forward", "labels", "above-range",
         lambda d: climbq_act_module(d, labels=d.t([0, 1, 3, 2])), ValueError),
    Case("ClimbQActQuant.forward", "labels", "batch", lambda d: climbq_act_module(d, labels=d.t([0, 1, 2])),
         ValueError),
    Case("ClimbQWeightQuant", "bits", "17", lambda d: ClimbQWeightQuant(bits=17), ValueError),
    Case("ClimbQWeightQuant", "out_channels", "zero", lambda d: ClimbQWeightQuant(out_channels=0, channel_scale=True),
         ValueError),
    Case("ClimbQWeightQuant", "out_channels", "str",
         lambda d: ClimbQWeightQuant(out_channels="4", channel_scale=True), TypeError),
    Case("ClimbQWeightQuant.forward", "weight", "int", lambda d: d.module(ClimbQWeightQuant(4))(d.t([[1, 2]] * 2)),
         TypeError, r"\bw\b"),
    Case("LSQActQuant", "bits", "one", lambda d: LSQActQuant(bits=1), ValueError),
    Case("LSQActQuant", "bits", "none", lambda d: LSQActQuant(bits=None), TypeError),
    Case("LSQActQuant.forward", "x", "list", lambda d: d.module(LSQActQuant(4))([[1.0, 2.0]]), TypeError),
    Case("LSQWeightQuant", "bits", "17", lambda d: LSQWeightQuant(bits=17), ValueError),
    Case("LSQWeightQuant", "out_channels", "zero", lambda d: LSQWeightQuant(out_channels=0), ValueError),
    Case("LSQWeightQuant", "out_channels", "str", lambda d: LSQWeightQuant(out_channels="4"), TypeError),
    Case("AffineActQuant", "bits", "zero", lambda d: AffineActQuant(bits=0), ValueError),
    Case("AffineActQuant", "observer", "unknown", lambda d: AffineActQuant(observer="max"), ValueError),
    Case("AffineActQuant", "averaging_constant", "nan", lambda d: AffineActQuant(averaging_constant=NAN), ValueError),
    Case("AffineActQuant", "averaging_constant", "str", lambda d: AffineActQuant(averaging_constant="0.1"),
         TypeError),
    Case("AffineWeightQuant", "bits", "one", lambda d: AffineWeightQuant(bits=1), ValueError),
    Case("AffineWeightQuant", "out_channels", "str", lambda d: AffineWeightQuant(out_channels="4"), TypeError),

    # QAT layers
    Case("QuantLinear.from_float", "layer", "conv", lambda d: QuantLinear.from_float(
        nn.Conv2d(2, 2, 1), ClimbQWeightQuant(4)), TypeError, "linear"),
    Case("QuantLinear.from_float", "weight_quant", "str", lambda d: QuantLinear.from_float(
        nn.Linear(4, 4), "climbq"), TypeError),
    Case("QuantConv2d.from_float", "layer", "linear", lambda d: QuantConv2d.from_float(
        nn.Linear(2, 2), ClimbQWeightQuant(4)), TypeError, "conv2d"),
    Case("QuantConv2d.from_float", "input_quant", "str", lambda d: QuantConv2d.from_float(
        nn.Conv2d(2, 2, 1), ClimbQWeightQuant(4), "x"), TypeError),
    Case("QuantBatchNorm1d.from_float", "layer", "2d", lambda d: QuantBatchNorm1d.from_float(
        nn.BatchNorm2d(2), ClimbQActQuant(4, 3)), TypeError, "batchnorm"),
    Case("QuantBatchNorm2d.from_float", "layer", "1d", lambda d: QuantBatchNorm2d.from_float(
        nn.BatchNorm1d(2), ClimbQActQuant(4, 3)), TypeError, "batchnorm"),
    Case("QuantBatchNorm2d.from_float", "act_quant", "none", lambda d: QuantBatchNorm2d.from_float(
        nn.BatchNorm2d(2), None), TypeError),

    # HomoVarLoss
    Case("HomoVarLoss", "class_counts", "zero", lambda d: homovar_module(d, class_counts=[5, 0]), ValueError),
    Case("HomoVarLoss", "class_counts", "str", lambda d: homovar_module(d, class_counts="5"), TypeError),
    Case("HomoVarLoss", "class_counts", "2-d", lambda d: homovar_module(d, class_counts=d.t([[5, 2]])), ValueError),
    Case("HomoVarLoss", "alpha", "str", lambda d: homovar_module(d, alpha="0.05"), TypeError),
    Case("HomoVarLoss", "beta0", "one", lambda d: homovar_module(d, beta0=1.0), ValueError),
    Case("HomoVarLoss", "sync", "str", lambda d: homovar_module(d, sync="yes"), TypeError),
    Case("HomoVarLoss.forward", "logits", "classes",
         lambda d: d.module(homovar_module(d))(d.randn(4, 5), d.randn(4, 2), d.labels), ValueError),
    Case("HomoVarLoss.forward", "labels", "above-range",
         lambda d: d.module(homovar_module(d))(d.randn(4, 5), d.randn(4, 3), d.t([0, 1, 3, 2])), ValueError),
    Case("HomoVarLoss.forward", "features", "int",
         lambda d: d.module(homovar_module(d))(d.t([[1] * 5] * 4), d.randn(4, 3), d.labels), TypeError),

    # INT4 serving layers
    Case("Int4Linear", "in_features", "zero", lambda d: Int4Linear(0, 8), ValueError),
    Case("Int4Linear", "in_features", "str", lambda d: Int4Linear("64", 8), TypeError),
    Case("Int4Linear", "out_features", "zero", lambda d: Int4Linear(64, 0), ValueError),
    Case("Int4Linear", "group_size", "48", lambda d: Int4Linear(64, 8, group_size=48), ValueError),
    Case("Int4Linear", "group_size", "float", lambda d: Int4Linear(64, 8, group_size=32.0), TypeError),
    Case("Int4Linear.from_linear", "linear", "conv", lambda d: Int4Linear.from_linear(nn.Conv2d(2, 2, 1)), TypeError),
    Case("Int4Linear.from_linear", "group_size", "48", lambda d: Int4Linear.from_linear(
        d.module(nn.Linear(64, 8)), group_size=48), ValueError),
    Case("Int4Linear.from_linear", "climbq_bits", "5", lambda d: Int4Linear.from_linear(
        d.module(nn.Linear(64, 8)), climbq_bits=5), ValueError),
    Case("Int4Linear.from_linear", "bias", "nan", lambda d: Int4Linear.from_linear(
        d.module(nan_bias(nn.Linear(64, 8))), 32), ValueError),
    Case("Int4Linear.forward", "x", "int", lambda d: int4_linear(d)(d.t([[1] * 64])), TypeError),
    Case("Int4Linear.forward", "x", "meta", lambda d: int4_linear(d)(d.meta(2, 64)), ValueError),
    Case("Int4Linear.forward", "x", "in_features", lambda d: int4_linear(d)(d.randn(2, 32)), ValueError),
    Case("Int4Linear.forward", "x", "other-device", lambda d: int4_linear(d)(d.other(torch.randn(2, 64))),
         ValueError, marks=GPU_ONLY),
    Case("Int4Conv2d", "stride", "zero", lambda d: int4_conv_init(stride=0), ValueError),
    Case("Int4Conv2d", "stride", "negative-pair", lambda d: int4_conv_init(stride=(1, -1)), ValueError),
    Case("Int4Conv2d", "stride", "float", lambda d: int4_conv_init(stride=1.5), ValueError),  # as test_bad_input
    Case("Int4Conv2d", "padding", "negative", lambda d: int4_conv_init(padding=-1), ValueError),
    Case("Int4Conv2d", "padding", "unknown", lambda d: int4_conv_init(padding="full"), ValueError),
    Case("Int4Conv2d", "padding", "same-strided", lambda d: int4_conv_init(padding="same", stride=2), ValueError),
    Case("Int4Conv2d", "dilation", "zero", lambda d: int4_conv_init(dilation=0), ValueError),
    Case("Int4Conv2d", "kernel_size", "zero", lambda d: int4_conv_init(kernel_size=0), ValueError),
    Case("Int4Conv2d", "padding_mode", "unknown", lambda d: int4_conv_init(padding_mode="mirror"), ValueError),
    Case("Int4Conv2d", "in_channels", "zero", lambda d: int4_conv_init(in_channels=0), ValueError),
    Case("Int4Conv2d", "in_channels", "str", lambda d: int4_conv_init(in_channels="4"), TypeError),
    Case("Int4Conv2d", "out_channels", "zero", lambda d: int4_conv_init(out_channels=0), ValueError),
    Case("Int4Conv2d", "out_channels", "str", lambda d: int4_conv_init(out_channels="8"), TypeError),
    Case("Int4Conv2d", "group_size", "48", lambda d: int4_conv_init(group_size=48), ValueError),
    Case("Int4Conv2d.from_conv2d", "conv", "linear", lambda d: Int4Conv2d.from_conv2d(nn.Linear(2, 2)), TypeError),
    Case("Int4Conv2d.from_conv2d", "conv", "grouped", lambda d: Int4Conv2d.from_conv2d(
        d.module(nn.Conv2d(4, 8, 3, groups=2))), ValueError, "groups"),
    Case("Int4Conv2d.forward", "x", "int", lambda d: int4_conv(d)(d.t([[[[1] * 5] * 5] * 4])), TypeError),
    Case("Int4Conv2d.forward", "x", "channels", lambda d: int4_conv(d)(d.randn(1, 3, 5, 5)), ValueError),
    Case("Int4Conv2d.forward", "x", "2-d", lambda d: int4_conv(d)(d.randn(4, 5)), ValueError),
    Case("Int4Conv2d.forward", "x", "smaller-than-kernel", lambda d: int4_conv(d)(d.randn(1, 4, 2, 2)), ValueError),
    Case("Int4Conv2d.forward", "x", "meta", lambda d: int4_conv(d)(d.meta(1, 4, 5, 5)), ValueError),
]


VALID = [
    # The calls the rows above spoil one argument of, as given: each must succeed.
    pytest.param(lambda d: fake_quant(d, zero_point=0.5), id="fake_quant-fractional-zero_point"),
    pytest.param(lambda d: fake_quant(d, scale=d.t([0.1] * 6), zero_point=d.t([0] * 6), axis=1),
                 id="fake_quant-per-channel"),
    pytest.param(per_sample_bits, id="fake_quant_per_sample_bits"),
    pytest.param(act_quant, id="climbq_act_quant"),
    pytest.param(lambda d: act_quant(d, num_classes=None, sigma=d.t([1.0, 2.0, 1.5])), id="climbq_act_quant-sigma"),
    pytest.param(act_codes, id="climbq_act_codes"),
    pytest.param(weight_quant, id="climbq_weight_quant"),
    pytest.param(class_stats, id="class_stats"),
    pytest.param(class_sigma, id="class_sigma"),
    pytest.param(homovar, id="homovar_loss"),
    pytest.param(quantize_int4, id="quantize_int4"),
    pytest.param(int4_weight, id="Int4Weight"),
    pytest.param(int4_matmul, id="int4_matmul"),
    pytest.param(from_torch, id="from_torch_int4pack"),
    pytest.param(lambda d: cq.to_torch_int4pack(d.keep(cq.quantize_int4(torch.randn(16, 64), 32))),
                 id="to_torch_int4pack"),
    pytest.param(from_torch_cuda, id="from_torch_int4pack_cuda", marks=GPU_ONLY),
    pytest.param(to_torch_cuda, id="to_torch_int4pack_cuda", marks=GPU_ONLY),
    pytest.param(quantize_, id="quantize_"),
    pytest.param(lambda d: cq.convert(d.qat_model), id="convert"),
    pytest.param(convert_int4, id="convert_int4"),
    pytest.param(climbq_act_module, id="ClimbQActQuant"),
    pytest.param(lambda d: d.module(homovar_module(d))(d.randn(4, 5), d.randn(4, 3), d.labels), id="HomoVarLoss"),
    pytest.param(lambda d: int4_linear(d)(d.randn(2, 64)), id="Int4Linear"),
    pytest.param(lambda d: int4_conv(d)(d.randn(1, 4, 5, 5)), id="Int4Conv2d"),
    pytest.param(lambda d: int4_conv_init(), id="Int4Conv2d-init"),
]


@pytest.mark.parametrize("backend,device", ALL_BACKENDS, ids=[name for name, _ in ALL_BACKENDS])
@pytest.mark.parametrize("call", VALID)
def test_the_calls_behind_the_table_succeed(call, backend: str, device: str):
    """So that each row fails for its one bad argument."""
    with cq.use_backend(backend):
        call(Inputs(device))
        cq.raise_pending_label_errors(wait=True)


@pytest.mark.parametrize("backend,device", ALL_BACKENDS, ids=[name for name, _ in ALL_BACKENDS])
@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=c.marks) for c in CASES])
def test_bad_input_is_refused_by_name(case: Case, backend: str, device: str):
    d = Inputs(device)
    match = case.match or rf"\b{case.argument}\b"
    with cq.use_backend(backend), pytest.raises(case.error, match=match):
        case.call(d)
        cq.raise_pending_label_errors(wait=True)  # CUDA labels are range-checked without a sync
    d.assert_unchanged()


def test_case_ids_are_unique():
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids)), sorted({i for i in ids if ids.count(i) > 1})


@pytest.mark.parametrize("backend,device", ALL_BACKENDS, ids=[name for name, _ in ALL_BACKENDS])
def test_from_torch_int4pack_of_a_zero_scale_group_computes_what_torch_does(backend: str, device: str, gen):
    """PyTorch's weight in a group of scale 0 is its zero alone, (q - 8) * 0 + zero, whatever
    the codes: it comes back finite and equal to that zero, not (q - (8 - zero / 0)) * 0 = NaN."""
    qweight = cq.quantize_int4(torch.randn(16, 64, generator=gen), 32)
    packed, table, group_size = cq.to_torch_int4pack(qweight)
    table[0, 3] = torch.tensor([0.0, -0.75])  # (group, row): a constant negative group
    table[1, 7] = torch.tensor([0.0, 0.5])  # a constant positive group
    table[1, 9] = torch.tensor([0.0, 0.0])  # an all-zero (pruned) group
    x = torch.randn(3, 64, generator=gen)
    expected = torch.ops.aten._weight_int4pack_mm_for_cpu(x, packed, group_size, table)
    back = cq.from_torch_int4pack(packed, table, group_size, in_features=64)
    weight = back.dequantize()
    assert torch.isfinite(weight).all()
    assert (weight[3, :32] == -0.75).all() and (weight[7, 32:] == 0.5).all() and (weight[9, 32:] == 0).all()
    kept = torch.ones(16, 64, dtype=torch.bool)
    kept[3, :32] = kept[7, 32:] = kept[9, 32:] = False
    codes, original = cq.reference.unpack_int4(back.packed), cq.reference.unpack_int4(qweight.packed)
    assert torch.equal(codes[kept], original[kept]), "the other groups keep their codes"
    with cq.use_backend(backend):
        got = cq.int4_matmul(x.to(device), back.to(device))
    torch.testing.assert_close(got.cpu(), expected, rtol=1e-4, atol=1e-4)
