"""`Int4Linear`: a linear layer serving a packed INT4 weight through `int4_matmul` (algorithms.md §6)."""

from __future__ import annotations

from torch import Tensor, nn

from .int4_module import Int4Module
from .packing import climbq_weight, latent_weight, quantize_weight


class Int4Linear(Int4Module):
    """y = x @ W^T + bias with W stored as group-wise INT4 (see `Int4Module` for the state).

    x: (..., in_features) float32 / float16 / bfloat16 (float64 runs on the reference) on the
    module's device; y: (..., out_features) in x's dtype. The matmul is `climbq_kernels.int4_matmul`,
    so it runs on whichever backend dispatch picks for x's device. An odd in_features is stored
    padded by one column and x is padded with a zero to match (see `packing`).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, group_size=128,
                 device=None, dtype=None):
        super().__init__(in_features, out_features, bias, group_size, device=device, dtype=dtype)

    @classmethod
    def from_linear(cls, linear: nn.Linear, group_size=128, *, climbq_bits: int | None = None) -> Int4Linear:
        """The INT4 form of a float `nn.Linear`, on its device, bias kept in its dtype.

        group_size: 32, 64, 128 or 256 dividing in_features (padded to even), or None for one
        group per row; ValueError otherwise. climbq_bits (1..4): the layer was trained with the
        ClimbQ weight quantizer at that width; store `climbq_weight_quant(weight, climbq_bits)`
        losslessly (one group per row, group_size unused), reading the latent weight (a
        parametrization's `original` when the weight is parametrized).
        """
        if not isinstance(linear, nn.Linear):
            hint = " (Int4Conv2d.from_conv2d converts convolutions)" if isinstance(linear, nn.Conv2d) else ""
            raise TypeError(f"linear must be a torch.nn.Linear, got {type(linear).__name__}{hint}")
        if climbq_bits is None:
            qweight = quantize_weight("linear.weight", linear.weight, group_size)
        else:
            qweight = climbq_weight("linear.weight", latent_weight(linear), climbq_bits)
        return cls.from_qweight(linear, qweight)

    @classmethod
    def from_qweight(cls, linear: nn.Linear, qweight) -> Int4Linear:
        """The INT4 form of `linear` holding the packed weight `qweight` (its shape, padded to even
        in_features), on qweight's device, with linear's bias and train/eval mode."""
        module = cls(linear.in_features, linear.out_features, bias=linear.bias is not None,
                     group_size=qweight.group_size, device=qweight.device)
        module._set_qweight(qweight, linear.bias)
        return module.train(linear.training)

    @property
    def weight_shape(self) -> tuple[int, ...]:
        return (self.out_features, self.in_features)

    def forward(self, x: Tensor) -> Tensor:
        self._check_input(x)
        if x.dim() < 1 or x.shape[-1] != self.in_features:
            raise ValueError(f"x must have shape (..., {self.in_features}) (in_features last), got {tuple(x.shape)}")
        return self._matmul(x)
