"""Every op of the package, declared once with `torch.library` in the `climbq` namespace.

One module per op family: each declares its ops (`torch.library.custom_op`) with a fake
(meta) kernel for `torch.compile`, an autograd formula where the op is differentiable, and a
table of backend implementations in `KERNELS`; at run time `dispatch.resolve` picks the
backend. The public, argument-checking functions live in `functional.py`, `losses.py` and
`int4.py`; they call each op's `*_eager` twin (`_eager.py`), which is the op itself under
torch.compile and skips torch.library's dispatch layers in plain eager mode.
"""

from ._dispatch import KERNELS
from .acs import disagreement_score, disagreement_score_eager, error_vector_score, error_vector_score_eager
from .class_stats import class_stats, class_stats_eager
from .climbq_act import (
    climbq_act_codes,
    climbq_act_codes_eager,
    climbq_act_fused,
    climbq_act_fused_backward,
    climbq_act_fused_eager,
    climbq_act_quant,
    climbq_act_quant_backward,
    climbq_act_quant_eager,
)
from .climbq_weight import climbq_weight_quant, climbq_weight_quant_backward, climbq_weight_quant_eager
from .dynamic_bits import (
    fake_quant_per_sample_bits,
    fake_quant_per_sample_bits_backward,
    fake_quant_per_sample_bits_eager,
)
from .fake_quant import fake_quant_affine, fake_quant_affine_backward, fake_quant_affine_eager
from .int4 import int4_matmul, int4_matmul_eager, quantize_int4

__all__ = ["KERNELS", "disagreement_score", "disagreement_score_eager", "error_vector_score",
           "error_vector_score_eager", "class_stats", "class_stats_eager", "climbq_act_codes", "climbq_act_codes_eager",
           "climbq_act_fused", "climbq_act_fused_backward", "climbq_act_fused_eager", "climbq_act_quant",
           "climbq_act_quant_backward", "climbq_act_quant_eager", "climbq_weight_quant",
           "climbq_weight_quant_backward", "climbq_weight_quant_eager", "fake_quant_affine",
           "fake_quant_affine_backward", "fake_quant_affine_eager", "fake_quant_per_sample_bits",
           "fake_quant_per_sample_bits_backward", "fake_quant_per_sample_bits_eager", "int4_matmul",
           "int4_matmul_eager", "quantize_int4"]
