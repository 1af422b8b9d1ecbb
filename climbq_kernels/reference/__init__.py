"""The pure-PyTorch reference (oracle) for every op in docs/algorithms.md, one module per op family.

Readable like the spec, correct in float64 on the CPU, and runnable in float32 / float16 /
bfloat16 computing in the input's dtype (the kernel error rule compares a kernel against this
reference run at the kernel's precision). Nothing here knows that kernels or backends exist.
"""

from .climbq import (
    class_counts,
    class_sigma,
    class_sigma_from_counts,
    climbq_act_codes,
    climbq_act_project,
    climbq_act_quant,
    climbq_act_quant_backward,
    climbq_act_quant_inference,
    climbq_act_quant_relu,
    climbq_act_quant_relu_backward,
    climbq_act_thresholds,
    climbq_weight_codes,
    climbq_weight_project,
    climbq_weight_quant,
    climbq_weight_quant_backward,
    label_histogram,
)
from .climbq_act_fused import (
    climbq_act_fused,
    climbq_act_fused_backward,
    climbq_act_fused_grad_y,
    climbq_act_fused_inference,
    climbq_act_inference_codes,
    folded_bn,
)
from .dynamic_bits import fake_quant_per_sample_bits, fake_quant_per_sample_bits_backward
from .fake_quant import fake_quant_affine, fake_quant_affine_backward, lsq_grad_scale, lsq_init_scale
from .homovar import (
    f_critical,
    homovar_bce,
    homovar_loss,
    homovar_weights,
    homovar_weights_from_levene,
    levene_deviations,
)
from .int4 import dequantize_int4, int4_from_climbq_weight, int4_matmul, pack_int4, quantize_int4, unpack_int4
from .segment_stats import class_stats, segment_sum

__all__ = [
    "class_counts", "class_sigma", "class_sigma_from_counts", "class_stats", "climbq_act_codes", "climbq_act_project",
    "climbq_act_fused", "climbq_act_fused_backward", "climbq_act_fused_grad_y",
    "climbq_act_fused_inference", "climbq_act_inference_codes", "folded_bn",
    "climbq_act_quant", "climbq_act_quant_backward", "climbq_act_quant_inference", "climbq_act_quant_relu",
    "climbq_act_quant_relu_backward",
    "climbq_act_thresholds", "climbq_weight_codes", "climbq_weight_project", "climbq_weight_quant",
    "climbq_weight_quant_backward", "dequantize_int4", "f_critical", "fake_quant_affine",
    "fake_quant_affine_backward", "fake_quant_per_sample_bits", "fake_quant_per_sample_bits_backward",
    "homovar_bce", "homovar_loss", "homovar_weights", "homovar_weights_from_levene", "int4_from_climbq_weight",
    "int4_matmul", "label_histogram", "levene_deviations", "lsq_grad_scale", "lsq_init_scale", "pack_int4",
    "quantize_int4",
    "segment_sum", "unpack_int4",
]
