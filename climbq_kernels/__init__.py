"""climbq-kernels: fused ClimbQ quantization kernels for PyTorch (Triton, CUDA, C++ CPU).

Public API only; README.md sketches the architecture.
"""

from . import nn
from .checks import raise_pending_label_errors
from .dispatch import BackendStatus, backends, use_backend
from .functional import (
    class_sigma,
    class_stats,
    climbq_act_codes,
    climbq_act_quant,
    climbq_weight_quant,
    fake_quant,
    fake_quant_per_sample_bits,
)
from .int4 import Int4Weight, int4_matmul, quantize_int4
from .int4_interop import from_torch_int4pack, from_torch_int4pack_cuda, to_torch_int4pack, to_torch_int4pack_cuda
from .losses import homovar_loss
from .nn import convert_int4
from .quantize import ClimbQConfig, FakeQuantConfig, LSQConfig, class_labels, convert, quantize_, summary

__version__ = "0.1.0"

__all__ = [
    "backends", "BackendStatus", "class_labels", "class_sigma", "class_stats", "climbq_act_codes", "climbq_act_quant",
    "climbq_weight_quant", "ClimbQConfig", "convert", "convert_int4", "fake_quant", "fake_quant_per_sample_bits",
    "FakeQuantConfig", "from_torch_int4pack", "from_torch_int4pack_cuda", "homovar_loss", "int4_matmul", "Int4Weight",
    "LSQConfig", "nn", "quantize_", "quantize_int4", "raise_pending_label_errors", "summary", "to_torch_int4pack",
    "to_torch_int4pack_cuda", "use_backend",
]
