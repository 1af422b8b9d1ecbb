"""The device-op budget of a QAT training step, counted with a `TorchDispatchMode`.

On a GPU every op is a kernel launch and some host time, so a quantizer may cost no more ops
than PyTorch's own fake quant: one forward and one backward (issue: "no host overhead per
quantizer"). The ClimbQ table is two ops per batch, shared by every layer. No op of a training
step reads a value on the host (`aten._local_scalar_dense`), so nothing synchronises with a GPU.
"""

from __future__ import annotations

from collections import Counter

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

import climbq_kernels as cq
from climbq_kernels.nn import (
    AffineActQuant,
    AffineWeightQuant,
    ClimbQActQuant,
    ClimbQWeightQuant,
    LSQActQuant,
    LSQWeightQuant,
)

CLASSES = 10
QUANTIZER_BUDGET = 2
TABLE_BUDGET = 3
METADATA_OPS = frozenset({"aten.detach", "aten.view", "aten.expand", "aten.permute", "aten.t", "aten.transpose",
                          "aten.as_strided", "aten._unsafe_view", "aten._reshape_alias"})
"""Ops that only make a new view of a tensor: no kernel, no device work (autograd detaches every
gradient it stores in a leaf's .grad, so each learned step adds one)."""


class OpCounter(TorchDispatchMode):
    """Counts the ops dispatched below autograd, by name; `total` those that do device work."""

    def __init__(self):
        super().__init__()
        self.ops: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[str(func.overloadpacket)] += 1
        return func(*args, **(kwargs or {}))

    @property
    def total(self) -> int:
        return sum(count for name, count in self.ops.items() if name not in METADATA_OPS)


def forward_backward(module: nn.Module, x: torch.Tensor) -> OpCounter:
    """Ops of module(x) and its backward to x and the module's parameters, the output gradient
    given (no loss ops counted)."""
    grad_out = torch.randn_like(x)
    inputs = [x, *module.parameters()]
    with OpCounter() as counter:
        out = module(x)
        torch.autograd.grad(out, inputs, grad_out)
    return counter


def torch_fake_quant_ops(x: torch.Tensor) -> int:
    """PyTorch's own learnable fake quant, forward and backward: what a quantizer may cost."""
    scale, zero_point = torch.tensor([0.1], requires_grad=True), torch.tensor([0.0])
    grad_out = torch.randn_like(x)
    with OpCounter() as counter:
        out = torch._fake_quantize_learnable_per_tensor_affine(x, scale, zero_point, -8, 7, 1.0)
        torch.autograd.grad(out, [x, scale], grad_out)
    return counter.total


def lsq_act() -> LSQActQuant:
    quantizer = LSQActQuant(bits=4)
    quantizer(torch.randn(4, 3))  # the step comes from a first training batch
    return quantizer


QUANTIZERS = {
    "climbq_act": lambda: ClimbQActQuant(bits=4, num_classes=CLASSES),
    "climbq_weight": lambda: ClimbQWeightQuant(bits=4),
    "climbq_weight_scaled": lambda: ClimbQWeightQuant(bits=4, out_channels=6, channel_scale=True),
    "lsq_act": lsq_act,
    "lsq_weight": lambda: LSQWeightQuant(bits=4, out_channels=6),
    "affine_act_ema": lambda: AffineActQuant(bits=8),
    "affine_act_minmax": lambda: AffineActQuant(bits=8, observer="minmax"),
    "affine_weight": lambda: AffineWeightQuant(bits=8, out_channels=6),
}


def test_pytorch_fake_quant_costs_two_ops(gen):
    assert torch_fake_quant_ops(torch.randn(6, 5, requires_grad=True)) == QUANTIZER_BUDGET


@pytest.mark.parametrize("shape", [(6, 5), (6, 4, 3, 3)], ids=["linear", "conv"])
@pytest.mark.parametrize("name", list(QUANTIZERS))
def test_a_quantizer_costs_one_op_forward_and_one_backward(name, shape, gen):
    quantizer = QUANTIZERS[name]()
    x = torch.randn(*shape, generator=gen, requires_grad=True)
    labels = torch.randint(0, CLASSES, (shape[0],), generator=gen)
    with cq.class_labels(labels) as batch:
        batch.per_sample_tables(CLASSES, torch.float32)  # the per-batch table, counted below
        counter = forward_backward(quantizer, x)
    assert counter.total <= QUANTIZER_BUDGET, dict(counter.ops)


def test_a_channels_last_activation_is_quantized_in_place_for_the_same_budget(gen):
    quantizer = ClimbQActQuant(bits=4, num_classes=CLASSES)
    x = torch.randn(4, 6, 5, 5, generator=gen).to(memory_format=torch.channels_last).requires_grad_()
    with cq.class_labels(torch.randint(0, CLASSES, (4,), generator=gen)) as batch:
        batch.per_sample_tables(CLASSES, torch.float32)
        counter = forward_backward(quantizer, x)
        out = quantizer(x)
    assert counter.total <= QUANTIZER_BUDGET, dict(counter.ops)
    assert out.is_contiguous(memory_format=torch.channels_last)


def test_the_climbq_table_costs_two_ops_once_per_batch_for_every_layer(gen):
    layers = nn.Sequential(ClimbQActQuant(bits=4, num_classes=CLASSES), ClimbQActQuant(bits=4, num_classes=CLASSES),
                           ClimbQActQuant(bits=3, num_classes=CLASSES))
    x = torch.randn(8, 16, generator=gen, requires_grad=True)
    with cq.class_labels(torch.randint(0, CLASSES, (8,), generator=gen)), OpCounter() as counter:
        layers(x)
    quantizer_ops = counter.ops["climbq_native.climbq_act_train"]
    assert quantizer_ops == 3
    assert counter.total - quantizer_ops <= TABLE_BUDGET, dict(counter.ops)


def mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(12, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 32), nn.BatchNorm1d(32),
                         nn.ReLU(), nn.Linear(32, CLASSES))


def step_ops(model: nn.Module, x: torch.Tensor, labels: torch.Tensor) -> OpCounter:
    model.zero_grad(set_to_none=True)  # as an optimiser's zero_grad leaves them
    with OpCounter() as counter:
        with cq.class_labels(labels):
            loss = F.cross_entropy(model(x), labels)
        loss.backward()
    return counter


@pytest.mark.parametrize("config", [cq.ClimbQConfig(num_classes=CLASSES), cq.LSQConfig(), cq.FakeQuantConfig()],
                         ids=["climbq", "lsq", "fakequant"])
def test_a_quantize_d_step_costs_the_float_step_plus_the_budget(config, gen):
    """Every op a quantize_d step adds to its float step is a quantizer's (two each) or the table's,
    and none reads a value on the host."""
    x, labels = torch.randn(16, 12, generator=gen), torch.randint(0, CLASSES, (16,), generator=gen)
    torch.manual_seed(0)
    float_model = mlp()
    model = cq.quantize_(mlp(), config)
    for m in (float_model, model):
        step_ops(m, x, labels)  # a first step initialises lazily (LSQ's steps)
    float_ops, quant_ops = step_ops(float_model, x, labels), step_ops(model, x, labels)
    quantizers = [m for m in model.modules() if isinstance(m, cq.nn.quantizers._Quantizer)]
    budget = QUANTIZER_BUDGET * len(quantizers) + TABLE_BUDGET
    assert quant_ops.total - float_ops.total <= budget, (dict(quant_ops.ops - float_ops.ops), len(quantizers))
    assert quant_ops.ops["aten._local_scalar_dense"] == 0
