"""The RCAQ encoder step op (algorithms.md §5): the hot loop of training the distributed quantizer.

Not differentiable (it returns sums of losses and a table of integer choices). Backends: the
float64 reference and the C++ CPU kernel (csrc/cpu/rcaq_encoder.cpp); both accumulate in float64
and break ties towards the lowest index, so they choose the same table.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..reference.rcaq import rcaq_encoder_step as _reference_encoder_step
from ._dispatch import native, register_kernels, run
from ._eager import custom_op

register_kernels({
    "rcaq_encoder_step": {
        "reference": _reference_encoder_step,
        "cpu": native("rcaq_encoder_step"),
    },
})


@custom_op("climbq::rcaq_encoder_step")
def rcaq_encoder_step(x: Tensor, labels: Tensor, codebook: Tensor, codeword_labels: Tensor, proto_index: Tensor,
                      base_index: Tensor, lookup: Tensor, stride: int, rate: int,
                      gamma: float) -> tuple[Tensor, Tensor]:
    """(costs float64 (P, rate), new lookup int64 (P,)) of one sensor's exact encoder step.

    x (N, d) and codebook (M, d) in float32, float16, bfloat16 (the kernels) or float64 (the
    reference); labels int64 (N,) and codeword_labels int64 (M,) are the classifier's decisions
    sign(. w); candidate q of point n decodes to codebook[base_index[n] + q * stride]. See
    `climbq_kernels.reference.rcaq.rcaq_encoder_step` for the math and the tie-break.
    """
    return run("rcaq_encoder_step", x, x, labels, codebook, codeword_labels, proto_index, base_index, lookup,
               stride, rate, gamma)


@rcaq_encoder_step.register_fake
def _(x, labels, codebook, codeword_labels, proto_index, base_index, lookup, stride, rate, gamma):
    return x.new_empty(lookup.shape[0], rate, dtype=torch.float64), torch.empty_like(lookup)
