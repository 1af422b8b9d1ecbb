"""Serving modules for INT4 weights (algorithms.md §6): `Int4Linear`, `Int4Conv2d` and `convert_int4`.

Data flows one way: a float (or ClimbQ-trained) model -> `convert_int4` packs each layer's
weight -> the modules call `climbq_kernels.int4_matmul` -> whichever backend dispatch picks.
"""

from .conv import Int4Conv2d
from .convert import convert_int4
from .int4_module import Int4Module
from .linear import Int4Linear

__all__ = ["Int4Conv2d", "Int4Linear", "Int4Module", "convert_int4"]
