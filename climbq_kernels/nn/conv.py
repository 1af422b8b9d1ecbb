"""`Int4Conv2d`: a 2-D convolution serving a packed INT4 weight through im2col + `int4_matmul` (algorithms.md §6).

The weight (C_out, C_in, kh, kw) is stored as the matrix (C_out, K), K = C_in*kh*kw, in the
column order of `F.unfold`; the forward unfolds x into (B, L, K) patches (L output pixels) and
runs the same `int4_matmul` kernel as `Int4Linear`, so a convolution needs no kernel of its own.
An odd K is padded by one column (see `packing`). The output is a view of the matmul's
(B, L, C_out) result, so it comes out in channels-last memory order (values as F.conv2d).
The unfolded patches cost kh*kw times the input's memory: this serves small and medium feature
maps well, not huge ones.

Only groups == 1: a grouped or depthwise convolution would be one small matmul per group, and
its weights are small; `from_conv2d` refuses it and `convert_int4` keeps it in float.
"""

from __future__ import annotations

from torch import Tensor, nn
from torch.nn import functional as F
from torch.nn.modules.utils import _pair

from ..reference._args import check_int
from .int4_module import Int4Module
from .packing import climbq_weight, latent_weight, quantize_weight

_PAD_MODES = {"zeros": "constant", "reflect": "reflect", "replicate": "replicate", "circular": "circular"}


def _check_ints(name: str, pair: tuple, minimum: int) -> None:
    """Require a pair of ints >= minimum (a zero stride would divide by zero at the first forward)."""
    if any(isinstance(v, bool) or not isinstance(v, int) or v < minimum for v in pair):
        raise ValueError(f"{name} must be an int or a pair of ints >= {minimum}, got {pair}")


class Int4Conv2d(Int4Module):
    """F.conv2d(x, W, bias, stride, padding, dilation) with W stored as group-wise INT4.

    x: (B, C_in, H, W) or (C_in, H, W), float32 / float16 / bfloat16 on the module's device;
    the output has x's dtype. stride, padding (ints, pairs, 'valid' or 'same'), dilation and
    padding_mode mean what they mean for `nn.Conv2d`. `in_features` is K = C_in*kh*kw, the
    width of the stored weight matrix.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 bias: bool = True, padding_mode: str = "zeros", group_size=128, device=None, dtype=None):
        kernel_size, stride, dilation = _pair(kernel_size), _pair(stride), _pair(dilation)
        if padding_mode not in _PAD_MODES:
            raise ValueError(f"padding_mode must be one of {sorted(_PAD_MODES)}, got {padding_mode!r}")
        if isinstance(padding, str):
            if padding not in ("valid", "same"):
                raise ValueError(f"padding must be an int, a pair, 'valid' or 'same', got {padding!r}")
            if padding == "same" and stride != (1, 1):
                raise ValueError(f"padding='same' needs stride 1, got stride {stride}")
        else:
            padding = _pair(padding)
            _check_ints("padding", padding, 0)
        _check_ints("stride", stride, 1)
        _check_ints("dilation", dilation, 1)
        _check_ints("kernel_size", kernel_size, 1)
        check_int("in_channels", in_channels, minimum=1)
        check_int("out_channels", out_channels, minimum=1)
        super().__init__(in_channels * kernel_size[0] * kernel_size[1], out_channels, bias, group_size,
                         device=device, dtype=dtype)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.dilation = kernel_size, stride, dilation
        self.padding, self.padding_mode = padding, padding_mode
        self._input_pad, self._unfold_padding = self._plan_padding()

    def _plan_padding(self) -> tuple[tuple[int, int, int, int] | None, tuple[int, int]]:
        """(F.pad amounts (left, right, top, bottom) or None, symmetric zero padding for F.unfold)."""
        if self.padding == "valid":
            return None, (0, 0)
        if self.padding == "same":  # as F.conv2d: total d*(k-1) per side pair, the odd one extra at the end
            totals = [d * (k - 1) for d, k in zip(self.dilation, self.kernel_size, strict=True)]
            (top, bottom), (left, right) = [(t // 2, t - t // 2) for t in totals]
        else:
            (top, bottom), (left, right) = [(p, p) for p in self.padding]
        if self.padding_mode == "zeros" and top == bottom and left == right:
            return None, (top, left)
        return (left, right, top, bottom), (0, 0)

    @classmethod
    def from_conv2d(cls, conv: nn.Conv2d, group_size=128, *, climbq_bits: int | None = None) -> Int4Conv2d:
        """The INT4 form of a float `nn.Conv2d` with groups == 1, on its device, bias kept.

        group_size must divide K = C_in*kh*kw (padded to even), or None for one group per row;
        climbq_bits as in `Int4Linear.from_linear`.
        """
        if not isinstance(conv, nn.Conv2d):
            raise TypeError(f"conv must be a torch.nn.Conv2d, got {type(conv).__name__}")
        if conv.groups != 1:
            raise ValueError(f"Int4Conv2d serves groups=1 convolutions (one im2col matmul), conv has "
                             f"groups={conv.groups}: keep it in float (convert_int4 does)")
        if climbq_bits is None:
            qweight = quantize_weight("conv.weight", conv.weight, group_size)
        else:
            qweight = climbq_weight("conv.weight", latent_weight(conv), climbq_bits)
        return cls.from_qweight(conv, qweight)

    @classmethod
    def from_qweight(cls, conv: nn.Conv2d, qweight) -> Int4Conv2d:
        """The INT4 form of a groups=1 `conv` holding the packed weight `qweight` (flattened to
        (C_out, C_in*kh*kw), padded to even), on qweight's device, with conv's settings, bias and
        train/eval mode."""
        module = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                     conv.dilation, bias=conv.bias is not None, padding_mode=conv.padding_mode,
                     group_size=qweight.group_size, device=qweight.device)
        module._set_qweight(qweight, conv.bias)
        return module.train(conv.training)

    @property
    def weight_shape(self) -> tuple[int, ...]:
        return (self.out_channels, self.in_channels, *self.kernel_size)

    def _output_size(self, height: int, width: int) -> tuple[int, int]:
        sizes = []
        for size, pad, d, k, s in zip((height, width), self._unfold_padding, self.dilation, self.kernel_size,
                                      self.stride, strict=True):
            sizes.append((size + 2 * pad - d * (k - 1) - 1) // s + 1)
        if min(sizes) < 1:
            raise ValueError(f"x of spatial size {(height, width)} (after padding) is smaller than the dilated "
                             f"kernel {self.kernel_size} (dilation {self.dilation})")
        return sizes[0], sizes[1]

    def forward(self, x: Tensor) -> Tensor:
        self._check_input(x)
        if x.dim() not in (3, 4) or x.shape[-3] != self.in_channels:
            raise ValueError(f"x must have shape (batch, {self.in_channels}, H, W) or ({self.in_channels}, H, W) "
                             f"(in_channels={self.in_channels}), got {tuple(x.shape)}")
        batched = x.dim() == 4
        if not batched:
            x = x.unsqueeze(0)
        if self._input_pad is not None:
            x = F.pad(x, self._input_pad, mode=_PAD_MODES[self.padding_mode])
        height, width = self._output_size(x.shape[-2], x.shape[-1])
        patches = F.unfold(x, self.kernel_size, dilation=self.dilation, padding=self._unfold_padding,
                           stride=self.stride)  # (B, K, L)
        y = self._matmul(patches.transpose(1, 2))  # (B, L, C_out)
        y = y.transpose(1, 2).reshape(x.shape[0], self.out_channels, height, width)
        return y if batched else y.squeeze(0)

    def extra_repr(self) -> str:
        rows = " (one per row)" if self.group_size == self.packed_in_features else ""
        padding = f", padding_mode={self.padding_mode}" if self.padding_mode != "zeros" else ""
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding!r}, dilation={self.dilation}{padding}, bias={self.bias is not None}, "
                f"group_size={self.group_size}{rows}")
