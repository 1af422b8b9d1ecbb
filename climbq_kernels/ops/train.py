"""The quantizer modules' eager training path: one native autograd op per quantizer call.

A QAT training step runs every quantizer once forward and once backward, and on a GPU its
kernels take microseconds, so what a quantizer costs is mostly host time: Python, dispatch,
autograd. The ops of csrc/train.cpp (`climbq_native::climbq_act_train`, `climbq_weight_train`,
`lsq_train`) hold a quantizer's forward and backward in C++: one dispatcher call each way, the
backward run by the autograd engine with no Python, no value read on the host. The per-batch
ClimbQ table is two more ops (`label_histogram`, `class_sigma_table`), once per batch for all
layers (csrc/class_table.h).

`native_training(x)` says whether x takes this path: a plain CPU or CUDA tensor of a kernel dtype,
the extension loaded, no other backend forced (`use_backend`, CLIMBQ_BACKEND) and not inside
torch.compile, where the modules use the fusable formulas of `nn/fusable.py` instead. Elsewhere
the modules run the `climbq::` custom ops (`_eager.py`), which compute the same values.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor, nn

from .. import _native, dispatch
from ..constants import KERNEL_DTYPES

_PLAIN_TENSORS = (Tensor, nn.Parameter)
_NATIVE_BACKENDS = {"cpu": "cpu", "cuda": "cuda"}


@functools.cache
def _native_ready(device_type: str, forced: str | None) -> bool:
    """Whether the native ops run on `device_type` with backend `forced` (None: automatic)."""
    if forced is not None and forced != _NATIVE_BACKENDS.get(device_type):
        return False
    if not _native.available()[0]:
        return False
    if device_type == "cuda":
        return _native.built_with_cuda()
    return device_type == "cpu"


def native_training(x: Tensor) -> bool:
    """Whether a quantizer's training call on x runs the native autograd ops (module docstring)."""
    return (type(x) in _PLAIN_TENSORS and x.dtype in KERNEL_DTYPES and not torch.compiler.is_compiling()
            and _native_ready(dispatch.tensor_device_type(x), dispatch.explicit_backend()))


def native_tables(labels: Tensor, dtype: torch.dtype) -> bool:
    """Whether `BatchLabels.per_sample_tables` builds a `dtype` table for `labels` natively."""
    return (dtype == torch.float32 and type(labels) is Tensor and not torch.compiler.is_compiling()
            and _native_ready(dispatch.tensor_device_type(labels), dispatch.explicit_backend()))


@functools.cache
def _ops():
    """The native ops, looked up once (the extension registers them on load), their fake kernels
    registered so that fake tensors and `opcheck` can trace them: the quantizers' entries of
    `climbq_kernels._C` (csrc/train.h: a typed dispatcher call from C++, without torch.ops'
    boxing of every argument) and the table ops' overloads."""
    module = _native.require()
    for name, fake in _FAKES.items():
        torch.library.register_fake(f"climbq_native::{name}", fake)
    native = torch.ops.climbq_native
    return (module.climbq_act_train, module.climbq_weight_train, module.lsq_train, native.label_histogram.default,
            native.class_sigma_table.default, module)


def native():
    """The extension module `climbq_kernels._C`, whose `climbq_act_train`, `climbq_weight_train`,
    `lsq_train`, `affine_act_train` and `affine_weight_train` call the ops of the same names and
    return their first output (the modules call them directly)."""
    return _ops()[5]


def climbq_act_train(x: Tensor, sigma: Tensor, mu: Tensor, bits: int, act_range: float) -> Tensor:
    """algorithms.md §1a: A (2 rint(Phi((x - mu_i)/sigma_i) N)/N - 1), differentiable to x
    (straight-through on rint); sigma, mu (B,) float32 batch statistics without gradient."""
    return _ops()[0](x, sigma, mu, bits, act_range)


def climbq_weight_train(w: Tensor, bits: int, channel_scale: Tensor | None = None) -> Tensor:
    """algorithms.md §1b, times `channel_scale` (C,) per output channel (dim 0) when given;
    differentiable to w (through the weight's mean and standard deviation) and channel_scale."""
    return _ops()[1](w, bits, channel_scale)


def lsq_train(x: Tensor, step: Tensor, zero_point: Tensor, quant_min: int, quant_max: int,
              axis: int | None = None) -> Tensor:
    """LSQ fake quant (algorithms.md §1e) with the step used as max(|step|, 1e-8), differentiable
    to x and step (LSQ's scaled gradient); zero_point an integer tensor in range, fixed."""
    return _ops()[2](x, step, zero_point, quant_min, quant_max, axis)


def class_sigma_table(labels: Tensor, num_classes: int, all_reduce=None) -> tuple[Tensor, Tensor]:
    """(sigma_i, mu_i) float32 (B,) of the default scale rule (algorithms.md §1a) for int64
    labels; `all_reduce` sums the label histogram over processes in between (DDP)."""
    ops = _ops()
    counts = ops[3](labels, num_classes)
    if all_reduce is not None:
        counts = all_reduce(counts)
    return ops[4](labels, counts)


def _like(x: Tensor, *args) -> Tensor:
    return torch.empty_like(x)


def _lsq_backward_fake(grad_out, x, step, zero_point, quant_min, quant_max, axis, step_grad):
    return torch.empty_like(x, memory_format=torch.contiguous_format), torch.empty_like(step)


def _histogram_fake(labels, num_classes):
    return labels.new_empty((num_classes,))


def _table_fake(labels, counts):
    empty = labels.new_empty(labels.shape, dtype=torch.float32)
    return empty, torch.empty_like(empty)


_FAKES = {
    "climbq_act_train": _like,
    "climbq_act_train_backward": lambda grad_out, x, *args: torch.empty_like(x),
    "climbq_weight_train": lambda w, bits, channel_scale=None: torch.empty_like(
        w, memory_format=torch.contiguous_format),
    "climbq_weight_scaled_backward": lambda grad_out, w, bits, channel_scale: (
        torch.empty_like(w, memory_format=torch.contiguous_format), torch.empty_like(channel_scale)),
    "lsq_train": lambda x, *args: torch.empty_like(x, memory_format=torch.contiguous_format),
    "lsq_train_backward": _lsq_backward_fake,
    "affine_act_train": lambda x, *args: (torch.empty_like(x, memory_format=torch.contiguous_format),
                                          x.new_empty((), dtype=torch.float32), x.new_empty((), dtype=torch.int32)),
    "affine_weight_train": lambda w, *args: (torch.empty_like(w, memory_format=torch.contiguous_format),
                                             w.new_empty(w.shape[:1], dtype=torch.float32),
                                             w.new_empty(w.shape[:1], dtype=torch.int32)),
    "label_histogram": _histogram_fake,
    "class_sigma_table": _table_fake,
}
