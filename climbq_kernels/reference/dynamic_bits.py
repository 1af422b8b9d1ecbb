"""Fake quantization with a per-sample bit-width (algorithms.md §3a, DynaDFQ): the reference.

Unsigned (post-ReLU) uniform quantization with a PACT-style learned upper range `clip`:
sample i uses b_i bits, L_i = 2**b_i - 1 levels above zero and step s_i = clip / L_i:

    out = rint(clamp(x, 0, clip) / s_i) * s_i

algorithms.md §3a leaves the grid open; these choices are ours: the range is [0, clip] (values below 0
go to 0, above clip to clip), and gradients are straight-through on rint (see the backward).
Computed in x's dtype; inputs are never mutated.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..checks import check_positive, check_sample_bits, check_tensor
from ._args import check_batched, check_grad, scalar_tensor


def _grid(x: Tensor, bits, clip) -> tuple[Tensor, Tensor, Tensor]:
    """(clip, levels, step) in x's dtype: clip 0-d, levels L_i and step s_i = clip / L_i
    viewed as (B, 1, ..., 1)."""
    check_batched("x", x)
    bits = check_sample_bits(bits, x.shape[0])
    clip_t = scalar_tensor("clip", clip, x)
    if isinstance(clip, Tensor):
        check_tensor("clip", clip, floating=True)
    check_positive("clip", clip_t)
    clip_t = clip_t.to(x.dtype)
    wide = bits.to(torch.int64)
    per_sample = ((torch.ones_like(wide) << wide) - 1).to(x.dtype)
    per_sample = per_sample.reshape(x.shape[0], *([1] * (x.dim() - 1)))
    return clip_t, per_sample, clip_t / per_sample


def fake_quant_per_sample_bits(x: Tensor, bits: Tensor, clip) -> Tensor:
    """Per-sample bit-width fake quant (algorithms.md §3a): out = rint(clamp(x, 0, clip) / s_i) * s_i.

    x: (B, ...) floating. bits: (B,) integer tensor, values in [1, 16] (ValueError naming
    `bits` otherwise). clip: upper range, a positive Python number or one-element floating
    tensor. L_i = 2**b_i - 1, s_i = clip / L_i. Output: x's shape and dtype, on the grid
    {0, s_i, ..., L_i * s_i}.
    """
    clip_t, _, step = _grid(x, bits, clip)
    clamped = torch.minimum(x.clamp(min=0), clip_t)
    return torch.round(clamped / step) * step


def fake_quant_per_sample_bits_backward(grad_out: Tensor, x: Tensor, bits: Tensor,
                                        clip) -> tuple[Tensor, Tensor]:
    """Gradients of `fake_quant_per_sample_bits`: (dx, dclip), straight-through on rint.

    inside = 0 <= x <= clip (inclusive at both ends), v = clamp(x, 0, clip) / s_i:

    - dx = grad_out where inside, else 0; x's shape and dtype.
    - dclip = sum over all elements of grad_out * e with e = (rint(v) - v) / L_i inside,
      1 above clip (the output is clip there), 0 below 0 (the output is 0). Inside,
      e is d(s * rint(x/s))/dclip with rint's derivative taken as 1 and ds/dclip = 1/L_i.
      Shaped like `clip` (0-d for a Python number), x's dtype.
    """
    clip_t, per_sample, step = _grid(x, bits, clip)
    check_grad(grad_out, x, "x")
    above = x > clip_t
    inside = (x >= 0) & ~above
    dx = grad_out * inside
    v = torch.minimum(x.clamp(min=0), clip_t) / step
    per_element = torch.where(inside, (torch.round(v) - v) / per_sample, above.to(x.dtype))
    dclip = (grad_out * per_element).sum()
    return dx, dclip.reshape(clip.shape if isinstance(clip, Tensor) else ())
