"""Modules: QAT layers and their quantizers, and INT4 serving layers.

QAT (what `climbq_kernels.quantize_` swaps in): `QuantConv2d`, `QuantLinear`,
`QuantBatchNorm1d/2d` and the quantizers they hold (`ClimbQWeightQuant`, `LSQWeightQuant`,
`AffineWeightQuant`, `ClimbQActQuant`, `LSQActQuant`, `AffineActQuant`); `HomoVarLoss`.

Serving (algorithms.md §6): a float or ClimbQ-trained model -> `convert_int4` packs each layer's
weight -> `Int4Linear` / `Int4Conv2d` call `climbq_kernels.int4_matmul` on whichever backend
dispatch picks.
"""

from .conv import Int4Conv2d
from .convert import convert_int4
from .homovar import HomoVarLoss
from .int4_module import Int4Module
from .linear import Int4Linear
from .qat import QuantBatchNorm1d, QuantBatchNorm2d, QuantConv2d, QuantLinear
from .quantizers import (
                         AffineActQuant,
                         AffineWeightQuant,
                         ClimbQActQuant,
                         ClimbQWeightQuant,
                         LSQActQuant,
                         LSQWeightQuant,
)

__all__ = [
    "AffineActQuant", "AffineWeightQuant", "ClimbQActQuant", "ClimbQWeightQuant", "convert_int4", "HomoVarLoss",
    "Int4Conv2d", "Int4Linear", "Int4Module", "LSQActQuant", "LSQWeightQuant", "QuantBatchNorm1d", "QuantBatchNorm2d",
    "QuantConv2d", "QuantLinear",
]
