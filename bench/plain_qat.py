"""ClimbQ and LSQ fake quantizers written as plain PyTorch modules: the QAT step benchmark's yardstick.

What a user would write without this library, in a few lines of torch ops each, with autograd
deriving every backward:

- `PlainClimbQAct`: algorithms.md §1a. Each layer builds its own per-sample scale from the batch
  labels (sigma_i = 2 - n_c / sum_k n_k^2 gathered by label; no table shared between layers),
  then out = A * (2 * round(Phi(x / sigma_i) * N) / N - 1) with a straight-through round.
- `PlainClimbQWeight`: algorithms.md §1b, Wq = 2 * round(Phi((W - mean) / std) * N) / N - 1,
  the gradient flowing through mean and std; times a learned per-output-channel scale on a
  layer that no BatchNorm follows (as `quantize_` does).
- `PlainLSQWeight` (per output channel) and `PlainLSQAct` (per tensor): LSQ (Esser et al.,
  algorithms.md §1e) with the gradient-scale trick on the step and a straight-through round.

`plain_quantize_(model, method, bits, num_classes)` puts them where `climbq_kernels.quantize_`
puts its quantizers (algorithms.md §1d): every Conv2d / Linear weight except the final
classifier's and those a MultiheadAttention reads itself, an activation quantizer after every
BatchNorm, or, in a model without BatchNorm, at the input of every quantized layer. The labels
come from the library's `class_labels` block, so one training step drives both.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from climbq_kernels.batch_labels import current_batch_labels

SQRT_HALF = math.sqrt(0.5)
METHODS = ("climbq", "lsq")
BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d)


def round_ste(t: Tensor) -> Tensor:
    """round(t) forward, identity backward (the straight-through estimator). Written as
    (t - t.detach()) + round(t), whose value is round(t) exactly: t + (round(t) - t).detach()
    can land an ulp off the integer, past a clamp bound."""
    return (t - t.detach()) + torch.round(t).detach()


def grad_scaled(t: Tensor, scale: float) -> Tensor:
    """t forward, gradient multiplied by `scale` backward (LSQ's step gradient scale)."""
    return (t - t * scale).detach() + t * scale


def normal_cdf(t: Tensor) -> Tensor:
    return 0.5 * (1.0 + torch.erf(t * SQRT_HALF))


def per_sample_sigma(labels: Tensor, num_classes: int, dtype: torch.dtype) -> Tensor:
    """sigma_i = 2 - n_{y_i} / sum_k n_k^2 (algorithms.md §1a), (B,) in `dtype`, from the label histogram."""
    counts = torch.zeros(num_classes, dtype=torch.int64, device=labels.device)
    counts.index_add_(0, labels, torch.ones_like(labels))
    sigma = 2.0 - counts.to(dtype) / (counts * counts).sum().to(dtype)
    return sigma[labels]


class PlainClimbQAct(nn.Module):
    """ClimbQ activation fake quant (§1a) on x (B, ...), the scale computed here from the batch labels."""

    def __init__(self, bits: int = 4, num_classes: int = 10, act_range: float = 2.0, inference_sigma: float = 2.0):
        super().__init__()
        self.levels, self.num_classes = 2**bits - 1, num_classes
        self.act_range, self.inference_sigma = act_range, inference_sigma

    def forward(self, x: Tensor) -> Tensor:
        batch = current_batch_labels()
        if self.training and batch is not None:
            sigma = per_sample_sigma(batch.labels, self.num_classes, x.dtype)
        else:  # no labels: one constant scale, as the library's label-free form
            sigma = torch.full((x.shape[0],), self.inference_sigma, dtype=x.dtype, device=x.device)
        u = normal_cdf(x / sigma.reshape(-1, *([1] * (x.dim() - 1))))
        return self.act_range * (2.0 * round_ste(u * self.levels) / self.levels - 1.0)


class PlainClimbQWeight(nn.Module):
    """ClimbQ weight fake quant (§1b) over the whole weight; with `channel_scale`, times a learned
    per-output-channel scale initialised by least squares from the float weight."""

    def __init__(self, weight: Tensor, bits: int = 4, channel_scale: bool = False):
        super().__init__()
        self.levels = 2**bits - 1
        self.scale = None
        if channel_scale:
            with torch.no_grad():
                wq, w = self.quantize(weight).flatten(1), weight.flatten(1)
                fit = (w * wq).sum(1) / (wq * wq).sum(1).clamp_min(1e-30)
            self.scale = nn.Parameter(torch.where(fit > 0, fit, torch.ones_like(fit)))

    def quantize(self, w: Tensor) -> Tensor:
        u = normal_cdf((w - w.mean()) / w.std())
        return 2.0 * round_ste(u * self.levels) / self.levels - 1.0

    def forward(self, w: Tensor) -> Tensor:
        wq = self.quantize(w)
        return wq if self.scale is None else wq * self.scale.reshape(-1, *([1] * (w.dim() - 1)))


def lsq(x: Tensor, step: Tensor, bits: int, grad_scale: float) -> Tensor:
    """Signed LSQ fake quant (§1e): clamp(round(x / s), -2^(b-1), 2^(b-1) - 1) * s, s broadcast to x.

    Rounding before the clamp gives PyTorch's (and the library's) fake-quant gradients: x passes
    where the rounded code is in range, and the step gets round(x/s) - x/s there, the clamp
    bound elsewhere. The clamp is two `where`s: torch.clamp passes no gradient at its bounds,
    which is where rounding puts every code of the half step beyond them."""
    s = grad_scaled(step, grad_scale)
    low, high = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    code = round_ste(x / s)
    code = torch.where(code > high, high, torch.where(code < low, low, code))
    return code * s


class PlainLSQWeight(nn.Module):
    """Per-output-channel LSQ on a weight (C, ...); step initialised to 2 mean|W_c| / sqrt(Qp)."""

    def __init__(self, weight: Tensor, bits: int = 4):
        super().__init__()
        self.bits, qmax = bits, 2 ** (bits - 1) - 1
        self.step = nn.Parameter(2.0 * weight.detach().abs().flatten(1).mean(1) / math.sqrt(qmax))
        self.grad_scale = 1.0 / math.sqrt(weight[0].numel() * qmax)

    def forward(self, w: Tensor) -> Tensor:
        return lsq(w, self.step.reshape(-1, *([1] * (w.dim() - 1))), self.bits, self.grad_scale)


class PlainLSQAct(nn.Module):
    """Per-tensor signed LSQ on an activation; step initialised from the first training batch."""

    def __init__(self, bits: int = 4):
        super().__init__()
        self.bits, self.initialized = bits, False
        self.step = nn.Parameter(torch.ones(()))

    def forward(self, x: Tensor) -> Tensor:
        qmax = 2 ** (self.bits - 1) - 1
        if self.training and not self.initialized:
            with torch.no_grad():
                self.step.copy_(2.0 * x.abs().mean() / math.sqrt(qmax))
            self.initialized = True
        return lsq(x, self.step, self.bits, 1.0 / math.sqrt(x.numel() * qmax))


class PlainQuantLayer(nn.Module):
    """A Conv2d or Linear (kept as a child, parameters shared) computing with quantized weight and input."""

    def __init__(self, layer: nn.Module, weight_quant: nn.Module, input_quant: nn.Module | None = None):
        super().__init__()
        self.layer, self.weight_quant = layer, weight_quant
        self.input_quant = input_quant if input_quant is not None else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        x, w = self.input_quant(x), self.weight_quant(self.layer.weight)
        if isinstance(self.layer, nn.Conv2d):
            return self.layer._conv_forward(x, w, self.layer.bias)
        return F.linear(x, w, self.layer.bias)


def _act_quant(method: str, bits: int, num_classes: int) -> nn.Module:
    return PlainClimbQAct(bits, num_classes) if method == "climbq" else PlainLSQAct(bits)


def _weight_quant(method: str, bits: int, layer: nn.Module, followed_by_bn: bool) -> nn.Module:
    if method == "climbq":
        return PlainClimbQWeight(layer.weight, bits, channel_scale=not followed_by_bn)
    return PlainLSQWeight(layer.weight, bits)


def plain_quantize_(model: nn.Module, method: str = "climbq", bits: int = 4, num_classes: int | None = None
                    ) -> nn.Module:
    """Swap the plain quantizers into `model` in place, where `quantize_` would put its own; returns model.

    method: "climbq" or "lsq". num_classes (ClimbQ): None takes the final classifier's outputs.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    leaves = [(name, m) for name, m in model.named_modules() if name and not any(True for _ in m.children())]
    linears = [name for name, m in leaves if type(m) is nn.Linear]
    classifier = linears[-1] if linears else None
    if num_classes is None:
        num_classes = model.get_submodule(classifier).out_features
    read_by_parent = {f"{name}.{child}" for name, m in model.named_modules() if isinstance(m, nn.MultiheadAttention)
                      for child, _ in m.named_children()}
    has_bn = any(type(m) in BATCHNORMS for _, m in leaves)
    following = dict(zip([name for name, _ in leaves], [m for _, m in leaves[1:]] + [None], strict=True))
    swaps = []
    for name, module in leaves:
        if name == classifier or name in read_by_parent:
            continue
        if type(module) in BATCHNORMS:
            swaps.append((name, nn.Sequential(module, _act_quant(method, bits, num_classes))))
        elif type(module) in (nn.Conv2d, nn.Linear):
            after = following[name]
            followed_by_bn = type(after) in BATCHNORMS and after.num_features == module.weight.shape[0]
            input_quant = None if has_bn else _act_quant(method, bits, num_classes)
            swaps.append((name, PlainQuantLayer(module, _weight_quant(method, bits, module, followed_by_bn),
                                                input_quant)))
    device = next(model.parameters()).device
    for name, new in swaps:
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, new.to(device))
    return model
