"""Affine fake quantization and LSQ (learned step size) gradients (algorithms.md §1e): the reference.

    q   = rint(x * inv_scale) + zp          (integer zero point)
    q   = rint(x * inv_scale + zp)          (floating zero point)
    out = (clamp(q, qmin, qmax) - zp) * scale,   inv_scale = 1 / scale

per tensor (`axis=None`) or per channel along `axis`.

Bit identity with torch. For float32, float16 and bfloat16 inputs this reproduces
`torch.fake_quantize_per_tensor_affine` / `torch.fake_quantize_per_channel_affine` on the CPU
bit for bit, because it follows their kernels' arithmetic (ATen `FakeQuantAffine`):

- x is read into float32 (torch's opmath for reduced floats; exact), the scale is rounded to
  float32 and inv_scale = 1.0f / scale is a float32 division;
- x * inv_scale, the rounding and (integer zero point) the add of zp happen in float32;
  a floating zero point is added before rounding (torch's per-channel float-zp path), as
  one fused multiply-add when it is float32 (see `_pre_clamp`);
- the clamp is C's fmax/fmin (`torch.fmax`/`fmin`): a NaN code becomes quant_min;
- a zero code is +0.0, never -0.0 (a floating zero point of 0 would otherwise keep the sign of
  rint(-0.3) = -0.0 where torch returns +0.0);
- the output product (clamp(q) - zp) * scale is float32 per tensor, float64 per channel
  (torch evaluates it in double there), then rounded to float32 and to x's dtype.

One exception, per channel only: where |x / scale| >= 2**63 (or x is infinite) torch's
per-channel kernel casts to int64 before clamping, undefined behaviour in C++ (quant_min on
x86); here such x clamp to quant_min / quant_max by sign, as torch's per-tensor kernel does.

float64 inputs are the oracle: everything stays float64 (scale, inv_scale, product). torch's
own float64 path rounds the scale, its inverse and (per tensor) the product to float32, so
there the two agree only to float32 precision, by design. Per tensor, torch accepts only an
integer zero point (a float zero-point tensor is truncated); a floating zero point here means
the float path above. quant_min/quant_max are limited to |value| <= 2**24 so that every code
is an exact float32 integer (ValueError otherwise).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from ..checks import can_sync, check_positive, check_same_device, check_tensor
from ._args import check_grad, check_int, scalar_tensor

_MAX_CODE = 1 << 24
"""Largest |quant_min|, |quant_max|: every code stays an exact float32 integer."""


class _Grid(NamedTuple):
    """Validated quantization parameters, cast and viewed to broadcast against x."""

    compute: torch.dtype  # float32 (torch's opmath) or float64 for float64 inputs
    product: torch.dtype  # dtype of the output product (clamp(q) - zp) * scale
    scale: Tensor
    inv_scale: Tensor
    zero_point: Tensor
    float_zero_point: bool
    fused_zero_point: bool  # x * inv_scale + zp rounded once (torch's float32 zero-point path)
    quant_min: int
    quant_max: int
    reduce_dims: tuple[int, ...]  # dims summed into one scale's gradient
    numel_per_scale: int


def check_code_range(quant_min, quant_max) -> tuple[int, int]:
    """Require int quant_min <= quant_max within [-2**24, 2**24] (every code an exact float); the one
    check of a code range, which every fake-quant path runs."""
    check_int("quant_min", quant_min)
    check_int("quant_max", quant_max)
    if quant_min > quant_max:
        raise ValueError(f"quant_min must be <= quant_max, got {quant_min} > {quant_max}")
    if max(abs(quant_min), abs(quant_max)) > _MAX_CODE:
        raise ValueError(f"quant_min and quant_max must lie in [-2**24, 2**24], got [{quant_min}, {quant_max}]")
    return quant_min, quant_max


def _check_axis(axis, x: Tensor) -> int:
    check_int("axis", axis)
    if not -x.dim() <= axis < x.dim():
        raise ValueError(f"axis must lie in [{-x.dim()}, {x.dim()}) for x of shape {tuple(x.shape)}, got {axis}")
    return axis % x.dim()


def _channel_table(name: str, table, x: Tensor, axis: int, floating: bool) -> Tensor:
    check_tensor(name, table, floating=floating)
    if table.shape != (x.shape[axis],):
        raise ValueError(f"{name} must have shape ({x.shape[axis]},) (one per channel along axis {axis}), "
                         f"got {tuple(table.shape)}")
    check_same_device(x=x, **{name: table})
    return table.reshape([-1 if d == axis else 1 for d in range(x.dim())])


def _grid(x: Tensor, scale, zero_point, quant_min, quant_max, axis) -> _Grid:
    check_tensor("x", x, floating=True)
    quant_min, quant_max = check_code_range(quant_min, quant_max)
    if axis is None:
        scale_t = scalar_tensor("scale", scale, x)
        if isinstance(scale, Tensor):
            check_tensor("scale", scale, floating=True)
        zp_t = scalar_tensor("zero_point", zero_point, x)
        if isinstance(zero_point, float):
            zp_t = zp_t.to(torch.float32)  # like the scale, a Python float is a C float in torch
        reduce_dims, numel_per_scale, product = tuple(range(x.dim())), x.numel(), torch.float32
    else:
        axis = _check_axis(axis, x)
        scale_t = _channel_table("scale", scale, x, axis, floating=True)
        zp_t = _channel_table("zero_point", zero_point, x, axis, floating=False)
        reduce_dims = tuple(d for d in range(x.dim()) if d != axis)
        numel_per_scale, product = x.numel() // max(x.shape[axis], 1), torch.float64
    check_positive("scale", scale_t)
    if can_sync(zp_t) and not bool(((zp_t >= quant_min) & (zp_t <= quant_max)).all()):
        raise ValueError(f"zero_point must lie in [quant_min, quant_max] = [{quant_min}, {quant_max}]")
    compute = torch.float64 if x.dtype == torch.float64 else torch.float32
    product = torch.float64 if compute == torch.float64 else product
    scale_c = scale_t.to(compute)
    fused = compute == torch.float32 and zp_t.dtype == torch.float32
    return _Grid(compute, product, scale_c, 1.0 / scale_c, zp_t.to(compute), zp_t.is_floating_point(), fused,
                 quant_min, quant_max, reduce_dims, numel_per_scale)


def _pre_clamp(x: Tensor, grid: _Grid) -> tuple[Tensor, Tensor]:
    """(v, q): v = x * inv_scale and the code before clamping, both in grid.compute.

    A float32 zero point enters as one fused multiply-add, x * inv_scale + zp rounded once
    (float64 holds the float32 product exactly), because that is what torch's CPU kernel
    does: its compiler contracts `zero_point + self * inv_scale` into an FMA in the AVX2 /
    AVX512 builds (rounding the product first differs from torch on ~1 element in 10**5). A
    float16 zero point goes through c10::Half's operator+ and is not fused.
    """
    x_c = x.to(grid.compute)
    v = x_c * grid.inv_scale
    if not grid.float_zero_point:
        return v, torch.round(v) + grid.zero_point
    if grid.fused_zero_point:
        fused = x_c.double() * grid.inv_scale.double() + grid.zero_point.double()
        return v, torch.round(fused.to(grid.compute)) + 0.0  # + 0: a zero code is +0, as torch's
    return v, torch.round(v + grid.zero_point) + 0.0


def fake_quant_affine(x: Tensor, scale, zero_point, quant_min: int, quant_max: int,
                      axis: int | None = None) -> Tensor:
    """Affine fake quant (algorithms.md §1e): out = (clamp(rint(x / scale) + zp, qmin, qmax) - zp) * scale.

    x: any shape, floating. Per tensor (axis None): scale, zero_point are Python numbers or
    one-element tensors. Per channel: scale (C,) floating, zero_point (C,) integer or floating,
    C = x.shape[axis]. scale > 0; zero_point in [quant_min, quant_max]. Output: x's shape and
    dtype, bit-identical to torch's fake quant for float32/float16/bfloat16 (see the module
    docstring for the exact arithmetic and the float64 difference).
    """
    grid = _grid(x, scale, zero_point, quant_min, quant_max, axis)
    _, q = _pre_clamp(x, grid)
    clamped = q.fmax(q.new_tensor(grid.quant_min)).fmin(q.new_tensor(grid.quant_max))
    codes = clamped.to(grid.product) - grid.zero_point.to(grid.product)
    return (codes * grid.scale.to(grid.product)).to(grid.compute).to(x.dtype)


def fake_quant_affine_backward(grad_out: Tensor, x: Tensor, scale, zero_point, quant_min: int,
                               quant_max: int, axis: int | None = None, scale_requires_grad: bool = False,
                               zero_point_requires_grad: bool = False
                               ) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """Gradients of `fake_quant_affine` (algorithms.md §1e): (dx, dscale, dzero_point).

    With q the pre-clamp code (as in the forward), inside = qmin <= q <= qmax (False for NaN):

    - dx = grad_out * inside (torch's mask, multiplied as torch does), x's dtype.
    - dscale (LSQ) = g * sum over the elements sharing a scale of grad_out * e, with
      e = (q - zp) - x * inv_scale inside (= rint(x/s + zp) - zp - x/s), qmin - zp below,
      qmax - zp above, and g = `lsq_grad_scale(numel_per_scale, quant_max)`.
    - dzero_point (floating zero point only, else ValueError) = g * sum of grad_out * e',
      e' = 0 inside and -scale outside.

    Both are in the compute dtype (float64 for float64 x, else float32), shaped like the
    scale / zero point argument (0-d for a Python number); None unless requested.

    Against torch's `_fake_quantize_learnable_per_{tensor,channel}_affine` (grad_factor = g)
    with an integer-valued zero point: dx is identical; dscale and dzero_point agree to
    float32 rounding (torch forms the inside term as ((q - zp) * s - x) / s and sums in its
    own order). torch also rounds and clamps a learned zero point in its forward; here the
    zero point is used as given.
    """
    grid = _grid(x, scale, zero_point, quant_min, quant_max, axis)
    check_grad(grad_out, x, "x")
    if zero_point_requires_grad and not grid.float_zero_point:
        raise ValueError("zero_point must be floating to receive a gradient (a learned zero point)")
    v, q = _pre_clamp(x, grid)
    below, above = q < grid.quant_min, q > grid.quant_max
    inside = (q >= grid.quant_min) & (q <= grid.quant_max)
    dx = grad_out * inside
    dscale = dzero_point = None
    if scale_requires_grad or zero_point_requires_grad:
        # An empty x has no gradient terms to scale: the sums below are 0, as the kernels return.
        g = lsq_grad_scale(grid.numel_per_scale, grid.quant_max) if grid.numel_per_scale else 0.0
        grad = grad_out.to(grid.compute)
        zp = grid.zero_point
        if scale_requires_grad:
            per_element = torch.where(below, grid.quant_min - zp, torch.where(above, grid.quant_max - zp, (q - zp) - v))
            dscale = _sum_per_scale(grad * per_element, grid, scale) * g
        if zero_point_requires_grad:
            per_element = torch.where(inside, torch.zeros_like(grid.scale), -grid.scale)
            dzero_point = _sum_per_scale(grad * per_element, grid, zero_point) * g
    return dx, dscale, dzero_point


def _sum_per_scale(t: Tensor, grid: _Grid, like) -> Tensor:
    summed = t.sum(dim=grid.reduce_dims) if grid.reduce_dims else t
    return summed.reshape(like.shape if isinstance(like, Tensor) else ())


def lsq_grad_scale(numel_per_scale: int, quant_max: int) -> float:
    """LSQ gradient scale g = 1 / sqrt(numel_per_scale * quant_max) (algorithms.md §1e); both ints >= 1."""
    check_int("numel_per_scale", numel_per_scale, minimum=1)
    check_int("quant_max", quant_max, minimum=1)
    return 1.0 / math.sqrt(numel_per_scale * quant_max)


def lsq_init_scale(x: Tensor, quant_max: int, axis: int | None = None) -> Tensor:
    """LSQ step initialisation s = 2 * mean(|x|) / sqrt(quant_max) (algorithms.md §1e), in x's dtype.

    Per tensor (axis None): a 0-d tensor. Per channel: shape (x.shape[axis],), the mean taken
    over every other dim. quant_max: int >= 1.
    """
    check_tensor("x", x, floating=True)
    check_int("quant_max", quant_max, minimum=1)
    if axis is None:
        mean_abs = x.abs().mean()
    else:
        axis = _check_axis(axis, x)
        dims = tuple(d for d in range(x.dim()) if d != axis)
        mean_abs = x.abs().mean(dim=dims) if dims else x.abs()
    return 2.0 * mean_abs / math.sqrt(quant_max)
