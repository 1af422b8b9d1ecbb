"""Constants shared by the reference, the kernels and the modules: one place each."""

import torch

MIN_BITS = 1
MAX_BITS = 16
IDENTITY_BITS = 32
"""`bits == 32` means full precision: quantizers return their input unchanged."""

DEFAULT_BITS = 4
DEFAULT_ACT_RANGE = 2.0
"""algorithms.md §1a: the ClimbQ activation output lies in [-A, A] with A = act_range."""

MAX_CODE_BITS = 8
"""algorithms.md §1a integer path: activation codes are stored as uint8 (mirrored by kMaxCodeBits in
csrc/climbq_act.h)."""

DEFAULT_INFERENCE_SIGMA = 2.0
"""algorithms.md §1a: with no labels (inference) the activation quantizer uses one constant sigma."""

HOMOVAR_ALPHA = 0.05
HOMOVAR_BETA0 = 0.999

INT4_GROUP_SIZES = (32, 64, 128, 256)
"""algorithms.md §6: allowed group sizes; `None` means one group per output row."""
INT4_QMAX = 15

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
"""The dtypes the native and Triton kernels accept; float64 runs on the reference only."""


def levels(bits: int) -> int:
    """N = 2**bits - 1, the number of quantization levels above zero (algorithms.md §0)."""
    return (1 << bits) - 1
