// Schemas of the fused ClimbQ activation ops (algorithms.md §1a; math in climbq_act.h). Kernels:
// csrc/cpu/climbq_act.cpp, csrc/cuda/climbq_act.cu.
//
// x is (B, ...) contiguous; with channels_last the channel is x's last dim (the caller passes
// the (B, H, W, C) permuted view of a channels-last (B, C, H, W) tensor, with no copy), else
// dim 1. sigma, mu: (B,) float32 per sample. thresholds: (N,) float32 ascending, or None for
// the erf form. bn_scale, bn_shift: (C,) float32 folded BatchNorm, both or neither.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(climbq_native, m) {
  // out = [relu] A (2q/N - 1), q the code of y = x * bn_scale[c] + bn_shift[c]; x's dtype.
  m.def("climbq_act_fused_forward(Tensor x, Tensor sigma, Tensor mu, Tensor? thresholds,"
        " Tensor? bn_scale, Tensor? bn_shift, int bits, float act_range, bool relu,"
        " bool channels_last) -> Tensor");
  // dy = grad_out * 2A phi((y - mu)/sigma) / sigma [* (q > N/2) with relu]; returns
  // dy * bn_scale[c] (the gradient to x) when chain_scale, else dy (the gradient to y).
  m.def("climbq_act_fused_backward(Tensor grad_out, Tensor x, Tensor sigma, Tensor mu,"
        " Tensor? thresholds, Tensor? bn_scale, Tensor? bn_shift, int bits, float act_range,"
        " bool relu, bool channels_last, bool chain_scale) -> Tensor");
  // q as uint8 (bits <= 8), x's shape.
  m.def("climbq_act_fused_codes(Tensor x, Tensor sigma, Tensor mu, Tensor? thresholds,"
        " Tensor? bn_scale, Tensor? bn_shift, int bits, bool channels_last) -> Tensor");
}
