"""RCAQ: regularized classification-aware quantization (algorithms.md §5).

d sensors quantize one scalar each; a fusion decoder maps the joint index to a codeword; a fixed
linear classifier decides. `RCAQ` trains the quantizer for the loss
(1 - gamma) ||x - c||^2 + gamma [sign(x . w) != sign(c . w)]; `dp_baseline` is the dynamic
program on the line it is compared with, `DPQuantizer` that program applied per sensor; `make_task`
draws the synthetic tasks of the demo (`python -m climbq_kernels.methods.rcaq.demo`).
"""

from .data import Task, bivariate_gaussian, gaussian_mixture, make_task
from .dp import DPQuantizer, DPResult, dp_baseline
from .quantizer import RCAQ

__all__ = ["DPQuantizer", "DPResult", "RCAQ", "Task", "bivariate_gaussian", "dp_baseline", "gaussian_mixture",
           "make_task"]
