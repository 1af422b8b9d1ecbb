"""The public quantizer functions: check the arguments, build the per-sample tables, call the op.

Everything here is differentiable where the math is (see each docstring) and runs on
whichever backend `climbq_kernels.use_backend` / `CLIMBQ_BACKEND` / the device selects.
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import ops, reference
from .checks import (can_sync, check_bits, check_class_table, check_labels, check_positive, check_positive_float,
                     check_same_device, check_sample_bits, check_tensor)
from .constants import DEFAULT_ACT_RANGE, DEFAULT_BITS, DEFAULT_INFERENCE_SIGMA, IDENTITY_BITS


def _table_dtype(x: Tensor) -> torch.dtype:
    """Per-sample tables are float32, float64 only beside a float64 input (the oracle)."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _check_batched(name: str, x) -> Tensor:
    check_tensor(name, x, floating=True)
    if x.dim() < 1:
        raise ValueError(f"{name} must have a batch dimension (B, ...), got a 0-d tensor")
    return x


def class_sigma(labels: Tensor, num_classes: int) -> Tensor:
    """The default ClimbQ scale table (SPEC 1a): sigma_c = 2 - n_c / sum_k n_k^2, shape (K,).

    Computed on the labels' device with a scatter-add histogram: no host synchronisation.
    """
    check_tensor("labels", labels)
    if labels.dim() != 1:
        raise ValueError(f"labels must be 1-D (B,), got shape {tuple(labels.shape)}")
    check_labels(labels, labels.shape[0], num_classes)
    return reference.class_sigma(labels.long(), num_classes)


def climbq_act_quant(x: Tensor, labels: Tensor | None = None, *, num_classes: int | None = None,
                     bits: int = DEFAULT_BITS, act_range: float = DEFAULT_ACT_RANGE,
                     sigma: Tensor | float | None = None, mu: Tensor | float | None = None) -> Tensor:
    """ClimbQ activation quantizer (SPEC 1a): class-wise variance scaling, CDF projection, rint.

    x (B, ...) float32/float16/bfloat16/float64 -> same shape and dtype, values in
    A*(2q/N - 1), q in [0, N], N = 2**bits - 1.

    With `labels` (B,) in [0, K): sigma is the per-class table `sigma` (K,) if given, else the
    default rule `class_sigma(labels, num_classes)`; `mu` (K,) defaults to zeros. Gradients:
    to x exactly through Phi (straight-through on rint only); to caller-given `sigma`/`mu`
    tables when they require grad.

    Without labels (inference): one constant `sigma` (default 2.0) and `mu` (default 0.0),
    given as numbers.

    `bits == 32` returns `x` itself (full precision).
    """
    _check_batched("x", x)
    check_bits(bits)
    act_range = check_positive_float("act_range", act_range)
    batch = x.shape[0]
    if labels is None:
        for name, value in (("sigma", sigma), ("mu", mu)):
            if value is not None and not isinstance(value, (int, float)):
                raise TypeError(f"{name} must be a number when labels is None (inference mode), "
                                f"got {type(value).__name__}")
        sigma = check_positive_float("sigma", DEFAULT_INFERENCE_SIGMA if sigma is None else sigma)
        sigma_s = torch.full((batch,), sigma, dtype=_table_dtype(x), device=x.device)
        mu_s = torch.full((batch,), float(mu or 0.0), dtype=_table_dtype(x), device=x.device)
    else:
        if num_classes is None:
            if not isinstance(sigma, Tensor):
                raise ValueError("num_classes is required with labels (or pass a per-class sigma table)")
            num_classes = sigma.numel()
        check_labels(labels, batch, num_classes)
        check_same_device(x=x, labels=labels)
        labels = labels.long()
        if sigma is None:
            sigma = reference.class_sigma(labels, num_classes)
        else:
            check_class_table("sigma", sigma, num_classes, x)
            if can_sync(sigma) and not bool((sigma > 0).all()):
                raise ValueError("sigma must be > 0 for every class")
        if mu is None:
            mu = torch.zeros(num_classes, dtype=_table_dtype(x), device=x.device)
        else:
            check_class_table("mu", mu, num_classes, x)
        sigma_s = sigma[labels].to(_table_dtype(x))
        mu_s = mu[labels].to(_table_dtype(x))
    if bits == IDENTITY_BITS:
        return x
    return ops.climbq_act_quant(x, sigma_s, mu_s, bits, act_range)


def climbq_weight_quant(w: Tensor, bits: int = DEFAULT_BITS) -> Tensor:
    """ClimbQ weight quantizer (SPEC 1b): 2*rint(Phi((w - mean)/std)*N)/N - 1 over all of w.

    Output in [-1, 1] with N + 1 evenly spaced levels, w's shape and dtype. The gradient flows
    through the projection, the mean and the (unbiased) std. `bits == 32` returns `w`.
    """
    check_tensor("w", w, floating=True)
    check_bits(bits)
    if w.numel() < 2:
        raise ValueError(f"w must have at least 2 elements (its std is taken), got {w.numel()}")
    if bits == IDENTITY_BITS:
        return w
    return ops.climbq_weight_quant(w, bits)


def _as_qparam(name: str, value, like: Tensor, dtype: torch.dtype) -> Tensor:
    if isinstance(value, Tensor):
        check_same_device(x=like, **{name: value})
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number or a tensor, got {type(value).__name__}")
    return torch.tensor(value, dtype=dtype, device=like.device)


def fake_quant(x: Tensor, scale, zero_point, quant_min: int, quant_max: int, axis: int | None = None) -> Tensor:
    """Affine fake quantization (SPEC 1e), bit-identical to torch's fake quant.

    out = (clamp(rint(x/scale) + zero_point, quant_min, quant_max) - zero_point) * scale, per
    tensor (`axis=None`; scale and zero_point numbers or one-element tensors) or per channel
    along `axis` (scale, zero_point of shape (x.shape[axis],)). Argument order as
    `torch.fake_quantize_per_{tensor,channel}_affine`.

    Gradient to x: 1 where rint(x/scale) + zero_point lies in [quant_min, quant_max], else 0.
    When `scale` requires grad it is learned as in LSQ, with gradient scale
    1/sqrt(elements per scale * quant_max); a floating `zero_point` that requires grad is
    learned too.
    """
    check_tensor("x", x, floating=True)
    for name, value in (("quant_min", quant_min), ("quant_max", quant_max)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if quant_min >= quant_max:
        raise ValueError(f"quant_min must be < quant_max, got [{quant_min}, {quant_max}]")
    scale = _as_qparam("scale", scale, x, _table_dtype(x))
    zero_point = _as_qparam("zero_point", zero_point, x, torch.int64)
    check_tensor("scale", scale, floating=True)
    if axis is None:
        if scale.numel() != 1 or zero_point.numel() != 1:
            raise ValueError("per-tensor fake quant (axis=None) needs one scale and one zero_point, got "
                             f"{scale.numel()} and {zero_point.numel()}")
    else:
        if isinstance(axis, bool) or not isinstance(axis, int) or not -x.dim() <= axis < x.dim():
            raise ValueError(f"axis must be an int in [{-x.dim()}, {x.dim()}), got {axis!r}")
        axis %= x.dim()
        channels = x.shape[axis]
        if scale.shape != (channels,) or zero_point.shape != (channels,):
            raise ValueError(f"per-channel fake quant along axis {axis} needs scale and zero_point of shape "
                             f"({channels},), got {tuple(scale.shape)} and {tuple(zero_point.shape)}")
    if can_sync(scale) and not bool((scale > 0).all()):
        raise ValueError("scale must be > 0")
    if can_sync(zero_point) and not bool(((zero_point >= quant_min) & (zero_point <= quant_max)).all()):
        raise ValueError(f"zero_point must lie in [quant_min, quant_max] = [{quant_min}, {quant_max}]")
    return ops.fake_quant_affine(x, scale, zero_point, quant_min, quant_max, axis)


def class_stats(x: Tensor, labels: Tensor, num_classes: int) -> tuple[Tensor, Tensor, Tensor]:
    """Per-class counts, mean and biased variance of x by label (SPEC 1c steps 1-3, SPEC 4).

    x (B, D) -> stats (K, D) per feature; x (B, C, *spatial) -> stats (K, C) per channel over
    samples and positions; counts (K,) int64 are the number of reduced elements. Absent classes
    get count 0, mean 0, var 0. Differentiable in x through mean and var.
    """
    _check_batched("x", x)
    check_labels(labels, x.shape[0], num_classes)
    check_same_device(x=x, labels=labels)
    mean, var, counts = ops.class_stats(x, labels.long(), num_classes)
    return counts, mean, var


def fake_quant_per_sample_bits(x: Tensor, bits: Tensor, clip) -> Tensor:
    """Fake quant with a per-sample bit-width (SPEC 3, DynaDFQ), one pass.

    out = rint(clamp(x, 0, clip) / s_i) * s_i with s_i = clip / (2**bits_i - 1): unsigned
    (post-ReLU) levels {0, s_i, ..., clip} for sample i. x: (B, ...) floating; bits: (B,) integer
    tensor with values in [1, 16]; clip: a positive number or one-element floating tensor (a
    learned PACT-style range when it requires grad). Output: x's shape and dtype.

    Gradients (straight-through on rint): to x, 1 where 0 <= x <= clip, else 0; to clip, the
    sum of grad * ((rint(v) - v) / L_i) inside (v = x / s_i) plus grad above clip. Range checks
    on bits and clip read the values on the host (see `checks`): on CUDA that is a sync, skipped
    while compiling or capturing a CUDA graph.
    """
    _check_batched("x", x)
    check_sample_bits(bits, x.shape[0])
    check_same_device(x=x, bits=bits)
    if isinstance(clip, Tensor):
        check_tensor("clip", clip, floating=True)
        if clip.numel() != 1:
            raise ValueError(f"clip must be a number or a one-element tensor, got shape {tuple(clip.shape)}")
        check_same_device(x=x, clip=clip)
    else:
        clip = torch.tensor(check_positive_float("clip", clip), dtype=_table_dtype(x), device=x.device)
    check_positive("clip", clip)
    return ops.fake_quant_per_sample_bits(x, bits, clip)
