"""The public quantizer functions: check the arguments, build the per-sample tables, call the op.

Everything here is differentiable where the math is (see each docstring) and runs on
whichever backend `climbq_kernels.use_backend` / `CLIMBQ_BACKEND` / the device selects.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from . import ops, reference
from .checks import (
    NUMBER_TYPES,
    can_sync,
    check_bits,
    check_class_table,
    check_finite,
    check_finite_number,
    check_labels,
    check_positive,
    check_positive_float,
    check_same_device,
    check_sample_bits,
    check_tensor,
    is_symbolic,
    raise_pending_label_errors,
    unchecked_label_mask,
)
from .constants import DEFAULT_ACT_RANGE, DEFAULT_BITS, DEFAULT_INFERENCE_SIGMA, IDENTITY_BITS, MAX_CODE_BITS
from .reference._args import check_int
from .reference.fake_quant import check_code_range


def _table_dtype(x: Tensor) -> torch.dtype:
    """Per-sample tables are float32, float64 only beside a float64 input (the oracle)."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _filled(shape: tuple[int, ...], value, x: Tensor) -> Tensor:
    """A table of `shape` holding the number `value`, in `_table_dtype(x)` on x's device.

    A symbolic value (torch.compile) is written as ones * value: the compiler keeps a product
    with a symbolic float in the graph, but specialises torch.full's fill value (one
    recompilation per value). The two give the same table."""
    if is_symbolic(value):
        return torch.ones(shape, dtype=_table_dtype(x), device=x.device) * value
    return torch.full(shape, value, dtype=_table_dtype(x), device=x.device)


def _check_batched(name: str, x) -> Tensor:
    check_tensor(name, x, floating=True)
    if x.dim() < 1:
        raise ValueError(f"{name} must have a batch dimension (B, ...), got a 0-d tensor")
    return x


def class_sigma(labels: Tensor, num_classes: int) -> Tensor:
    """The default ClimbQ scale table (algorithms.md §1a): sigma_c = 2 - n_c / sum_k n_k^2, shape (K,).

    Computed on the labels' device with a scatter-add histogram: no host synchronisation.
    """
    raise_pending_label_errors()
    check_tensor("labels", labels)
    if labels.dim() != 1:
        raise ValueError(f"labels must be 1-D (B,), got shape {tuple(labels.shape)}")
    labels = check_labels(labels, labels.shape[0], num_classes)
    return reference.class_sigma(labels.long(), num_classes)


def _act_tables(x: Tensor, labels, num_classes, sigma,
                mu) -> tuple[Tensor, Tensor, tuple[float, float] | None, Tensor | None]:
    """Per-sample (B,) sigma and mu tables for the activation quantizer (algorithms.md §1a), the
    constant (sigma, mu) of inference mode (labels None; else None), and where the labels could
    not be range-checked on the host, the (B,) mask of the samples whose label is in range (else
    None; `checks.unchecked_label_mask`). Checks every argument.

    A sample whose unchecked label is out of range gets sigma NaN (the gather itself reads a
    clamped label), so its quantized output is NaN, not another class's value."""
    batch = x.shape[0]
    if labels is None:
        for name, value in (("sigma", sigma), ("mu", mu)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, NUMBER_TYPES)):
                raise TypeError(f"{name} must be a number when labels is None (inference mode), "
                                f"got {type(value).__name__}")
        sigma = check_positive_float("sigma", DEFAULT_INFERENCE_SIGMA if sigma is None else sigma)
        mu = check_finite_number("mu", 0.0 if mu is None else mu)
        sigma_s = _filled((batch,), sigma, x)
        mu_s = _filled((batch,), mu, x)
        return sigma_s, mu_s, (sigma, mu), None
    raise_pending_label_errors()
    if num_classes is None:
        if not isinstance(sigma, Tensor):
            raise ValueError("num_classes is required with labels (or pass a per-class sigma table)")
        num_classes = sigma.numel()
    checked = check_labels(labels, batch, num_classes)
    check_same_device(x=x, labels=labels)
    in_range = unchecked_label_mask(labels, num_classes)
    labels = checked.long() if in_range is None else labels.long().clamp(0, num_classes - 1)
    if sigma is None:  # in the table dtype: a float64 input gets the float64 formula
        sigma = reference.class_sigma(labels, num_classes, _table_dtype(x))
    else:
        check_class_table("sigma", sigma, num_classes, x)
        check_positive("sigma", sigma)  # as the reference: finite and > 0 on every backend
    if mu is None:
        mu = torch.zeros(num_classes, dtype=_table_dtype(x), device=x.device)
    else:
        check_class_table("mu", mu, num_classes, x)
        if can_sync(mu):  # as sigma's check: a host read, skipped where none is allowed
            check_finite("mu", mu)
    sigma_s = sigma[labels].to(_table_dtype(x))
    if in_range is not None:
        sigma_s = torch.where(in_range, sigma_s, torch.nan)
    return sigma_s, mu[labels].to(_table_dtype(x)), None, in_range


@functools.lru_cache(maxsize=64)
def _standard_thresholds_cached(bits: int, device: torch.device) -> Tensor:
    return reference.climbq_act_thresholds(bits, 1.0, 0.0, dtype=torch.float64).to(device)


@torch.compiler.assume_constant_result
def _standard_thresholds(bits: int, device: torch.device) -> Tensor:
    """Phi^-1((j + 0.5)/N), j = 0..N-1 (algorithms.md §1a inference), float64 (N,) on `device`:
    cached per (bits, device), a constant of the graph under torch.compile (no per-call host
    work or copy). Shared: not to be modified."""
    return _standard_thresholds_cached(bits, device)


def _thresholds(x: Tensor, bits: int, inference: tuple[float, float] | None) -> Tensor | None:
    """The inference thresholds t_j = mu + sigma*Phi^-1((j + 0.5)/N) (N,) as float32 on x's
    device: computed in float64 on the host once per call (N <= 65535 values), no erf per element.

    A symbolic sigma or mu (torch.compile, see `checks.check_positive_float`) is applied in the
    graph, on x's device, to the cached standard thresholds Phi^-1((j + 0.5)/N): the same
    float64 expression rounded once to float32 as the eager table (up to the compiler's
    float64 contraction of mu + sigma*t, far below float32's rounding)."""
    if inference is None:
        return None
    sigma, mu = inference
    if is_symbolic(sigma) or is_symbolic(mu):
        return (mu + sigma * _standard_thresholds(bits, x.device)).to(torch.float32)
    return reference.climbq_act_thresholds(bits, sigma, mu, dtype=torch.float32).to(x.device)


def _channel_table(name: str, table, x: Tensor) -> Tensor | None:
    """A folded-BN table (C,), C = x.shape[1], as the kernels' float32 (float64 beside a float64
    x); the cast is differentiable, so a table that requires grad gets its gradient."""
    if table is None:
        return None
    check_tensor(name, table, floating=True)
    if x.dim() < 2:
        raise ValueError(f"{name} needs x of shape (B, C, ...), got shape {tuple(x.shape)}")
    if table.shape != (x.shape[1],):
        raise ValueError(f"{name} must have shape ({x.shape[1]},) (one value per channel of x, dim 1), "
                         f"got {tuple(table.shape)}")
    check_same_device(x=x, **{name: table})
    if can_sync(table):  # as sigma's check: a host read, skipped where none is allowed
        check_finite(name, table)
    return table.to(_table_dtype(x))


def climbq_act_quant(x: Tensor, labels: Tensor | None = None, *, num_classes: int | None = None,
                     bits: int = DEFAULT_BITS, act_range: float = DEFAULT_ACT_RANGE,
                     sigma: Tensor | float | None = None, mu: Tensor | float | None = None,
                     bn_scale: Tensor | None = None, bn_shift: Tensor | None = None, relu: bool = False) -> Tensor:
    """ClimbQ activation quantizer (algorithms.md §1a): class-wise variance scaling, CDF projection, rint.

    x (B, ...) float32/float16/bfloat16/float64 -> same shape and dtype, values in
    A*(2q/N - 1), q in [0, N], N = 2**bits - 1. A channels-last x is read in place (no copy)
    and the output is channels-last too; other layouts give a contiguous output.

    With `labels` (B,) in [0, K): sigma is the per-class table `sigma` (K,) if given, else the
    default rule `class_sigma(labels, num_classes)`; `mu` (K,) defaults to zeros. A given sigma
    must be finite and > 0, a given mu (and bn_scale, bn_shift below) finite (ValueError naming
    it; a host read of the table, skipped where `checks.can_sync` says none is allowed). Gradients:
    to x exactly through Phi (straight-through on rint only); to caller-given `sigma`/`mu`
    tables when they require grad.

    Without labels (inference): one constant `sigma` (default 2.0) and `mu` (default 0.0),
    given as numbers; the kernels then bucket against the N thresholds
    t_j = mu + sigma*Phi^-1((j + 0.5)/N) with no erf (`reference.climbq_act_quant_inference`,
    its tie convention included). A backward pass, if asked for, is the erf form's.

    Fused placement (ClimbQ sits between BatchNorm and ReLU): `bn_scale`, `bn_shift` (C,) apply
    a folded BatchNorm y = x*bn_scale[c] + bn_shift[c] over dim 1 of x (B, C, ...) before the
    quantizer (either may be omitted: scale 1, shift 0), and `relu=True` applies max(out, 0)
    after it; gradients reach x, and bn_scale/bn_shift when they require grad; the ReLU masks
    the gradient where out <= 0. Reference: `reference.climbq_act_fused`.

    Saved for backward: x (before the folded BN) and the (B,), (C,) and (N,) tables, nothing
    else of x's size: y, the codes and the ReLU mask are recomputed from x in the one backward
    pass, cheaper than storing them (x is kept alive by the layer before anyway).

    Under torch.compile: `act_range` and the inference `sigma`, `mu` may change between calls;
    once dynamo traces them as symbolic floats the graph takes each new value without
    recompiling (`checks.check_positive_float`), a symbolic `act_range` by scaling a unit-range
    output. Labels are not range-checked on the host there (nor during CUDA graph capture),
    and no sync is added: a sample whose label lies outside [0, K) gets a NaN output (NaN
    sigma, and a NaN output under the fused ReLU) instead of another class's quantization; on
    CPU tensors the compiled code also raises RuntimeError naming `labels`
    (`checks.unchecked_label_mask`). Eagerly such a label raises ValueError.

    `bits == 32` is full precision: relu?(folded BN of x), `x` itself without BN or ReLU.
    """
    _check_batched("x", x)
    check_bits(bits)
    act_range = check_positive_float("act_range", act_range)
    if not isinstance(relu, bool):
        raise TypeError(f"relu must be a bool, got {type(relu).__name__}")
    scale = _channel_table("bn_scale", bn_scale, x)
    shift = _channel_table("bn_shift", bn_shift, x)
    sigma_s, mu_s, inference, in_range = _act_tables(x, labels, num_classes, sigma, mu)
    if bits == IDENTITY_BITS:
        y = reference.folded_bn(x, scale, shift)
        return torch.relu(y) if relu else y
    if scale is None and shift is not None:
        scale = torch.ones_like(shift)
    elif shift is None and scale is not None:
        shift = torch.zeros_like(scale)
    thresholds = _thresholds(x, bits, inference)
    if is_symbolic(act_range):
        # The op's float argument would specialise on the value (one recompilation per
        # act_range); A > 0 factors out of A*level(q) and of the ReLU, so the graph scales a
        # unit-range output instead. Same values as the eager path up to float rounding.
        out = ops.climbq_act_fused_eager(x, sigma_s, mu_s, thresholds, scale, shift, bits, 1.0, relu) * act_range
    else:
        out = ops.climbq_act_fused_eager(x, sigma_s, mu_s, thresholds, scale, shift, bits, act_range, relu)
    if relu and in_range is not None:
        # The kernels' fused ReLU maps the NaN code of a poisoned sample to 0 (only a NaN input
        # stays NaN), so the poison is applied to the output as well: one extra elementwise pass,
        # only where the labels could not be checked on the host.
        out = torch.where(in_range.view(-1, *([1] * (x.dim() - 1))), out, torch.nan)
    return out


def climbq_act_codes(x: Tensor, labels: Tensor | None = None, *, num_classes: int | None = None,
                     bits: int = DEFAULT_BITS, sigma: Tensor | float | None = None,
                     mu: Tensor | float | None = None) -> Tensor:
    """The ClimbQ activation integer codes q = rint(Phi((x - mu_i)/sigma_i) * N) in [0, N] (algorithms.md §1a).

    Arguments as `climbq_act_quant` (labels None: inference bucketing against the thresholds).
    Returns uint8 of x's shape (channels-last kept), the integer path's storage: the value of
    code q is A*(2q/N - 1). bits must be in [1, 8]: uint8 cannot hold the codes of 9..16 bits
    (use `climbq_act_quant`, or `reference.climbq_act_codes` for int64 codes), and 32 (full
    precision) has no codes; both raise ValueError. Not differentiable.

    Under torch.compile as in `climbq_act_quant`, except that uint8 holds no NaN: a label out
    of range there gives its sample code 0 on the GPU (the CPU raises RuntimeError).
    """
    _check_batched("x", x)
    check_bits(bits)
    if bits > MAX_CODE_BITS:
        raise ValueError(f"bits must be in [1, {MAX_CODE_BITS}] for uint8 codes, got {bits}")
    sigma_s, mu_s, inference, _ = _act_tables(x, labels, num_classes, sigma, mu)
    return ops.climbq_act_codes_eager(x, sigma_s, mu_s, _thresholds(x, bits, inference), bits)


def climbq_weight_quant(w: Tensor, bits: int = DEFAULT_BITS) -> Tensor:
    """ClimbQ weight quantizer (algorithms.md §1b): 2*rint(Phi((w - mean)/std)*N)/N - 1 over all of w.

    Output in [-1, 1] with N + 1 evenly spaced levels, w's shape and dtype. The gradient flows
    through the projection, the mean and the (unbiased) std. `bits == 32` returns `w`.

    ValueError for fewer than 2 elements (here) and for zero spread (all elements equal): the
    reference and the C++ CPU kernel raise it from the statistics they compute; for CUDA and
    Triton, whose statistics stay on the device, the op checks w first wherever a host sync
    is allowed (see `ops.climbq_weight`).
    """
    check_tensor("w", w, floating=True)
    check_bits(bits)
    if w.numel() < 2:
        raise ValueError(f"w must have at least 2 elements (its std is taken), got {w.numel()}")
    if bits == IDENTITY_BITS:
        return w
    return ops.climbq_weight_quant_eager(w, bits)


def _as_qparam(name: str, value, like: Tensor, dtype: torch.dtype) -> Tensor:
    if isinstance(value, Tensor):
        check_tensor(name, value)
        check_same_device(x=like, **{name: value})
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number or a tensor, got {type(value).__name__}")
    return torch.tensor(value, dtype=dtype, device=like.device)


def fake_quant(x: Tensor, scale, zero_point, quant_min: int, quant_max: int, axis: int | None = None) -> Tensor:
    """Affine fake quantization (algorithms.md §1e), bit-identical to torch's fake quant.

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
    check_code_range(quant_min, quant_max)
    if quant_min == quant_max:
        raise ValueError(f"quant_min must be < quant_max, got [{quant_min}, {quant_max}]")
    scale = _as_qparam("scale", scale, x, _table_dtype(x))
    # A fractional Python zero point stays floating (a learned-style zero point), never truncated.
    fractional = isinstance(zero_point, float) and not float(zero_point).is_integer()
    zero_point = _as_qparam("zero_point", zero_point, x, _table_dtype(x) if fractional else torch.int64)
    check_tensor("scale", scale, floating=True)
    if axis is None:
        if scale.numel() != 1 or zero_point.numel() != 1:
            raise ValueError("per-tensor fake quant (axis=None) needs one scale and one zero_point, got "
                             f"{scale.numel()} and {zero_point.numel()}")
    else:
        check_int("axis", axis)
        if not -x.dim() <= axis < x.dim():
            raise ValueError(f"axis must be an int in [{-x.dim()}, {x.dim()}), got {axis!r}")
        axis %= x.dim()
        channels = x.shape[axis]
        if scale.shape != (channels,) or zero_point.shape != (channels,):
            raise ValueError(f"per-channel fake quant along axis {axis} needs scale and zero_point of shape "
                             f"({channels},), got {tuple(scale.shape)} and {tuple(zero_point.shape)}")
    if can_sync(scale) and not bool(((scale > 0) & (scale < float("inf"))).all()):
        raise ValueError("scale must be finite and > 0")
    if can_sync(zero_point) and not bool(((zero_point >= quant_min) & (zero_point <= quant_max)).all()):
        raise ValueError(f"zero_point must lie in [quant_min, quant_max] = [{quant_min}, {quant_max}]")
    return ops.fake_quant_affine_eager(x, scale, zero_point, quant_min, quant_max, axis)


def class_stats(x: Tensor, labels: Tensor, num_classes: int) -> tuple[Tensor, Tensor, Tensor]:
    """Per-class counts, mean and biased variance of x by label (algorithms.md §1c steps 1-3, §4a).

    x (B, D) -> stats (K, D) per feature; x (B, C, *spatial) -> stats (K, C) per channel over
    samples and positions; counts (K,) int64 are the number of reduced elements. Absent classes
    get count 0, mean 0, var 0. Differentiable in x through mean and var. The kernel backends
    accumulate in float64 (CPU: Welford/Chan merge; CUDA, Triton: shifted sums). Labels are
    range-checked here wherever a host read is allowed (`checks.check_labels`); the CPU kernel
    checks them again, the GPU kernels skip out-of-range labels rather than write out of bounds.
    """
    _check_batched("x", x)
    raise_pending_label_errors()
    labels = check_labels(labels, x.shape[0], num_classes)
    check_same_device(x=x, labels=labels)
    mean, var, counts = ops.class_stats_eager(x, labels.long(), num_classes)
    return counts, mean, var


def fake_quant_per_sample_bits(x: Tensor, bits: Tensor, clip) -> Tensor:
    """Fake quant with a per-sample bit-width (algorithms.md §3a, DynaDFQ), one pass.

    out = rint(clamp(x, 0, clip) / s_i) * s_i with s_i = clip / (2**bits_i - 1): unsigned
    (post-ReLU) levels {0, s_i, ..., clip} for sample i. x: (B, ...) floating; bits: (B,) integer
    tensor with values in [1, 16]; clip: a positive number or one-element floating tensor (a
    learned PACT-style range when it requires grad; a number may change between calls under
    torch.compile without recompiling, see `checks.check_positive_float`). Output: x's shape
    and dtype.

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
        clip = _filled((), check_positive_float("clip", clip), x)
    check_positive("clip", clip)
    return ops.fake_quant_per_sample_bits_eager(x, bits, clip)
