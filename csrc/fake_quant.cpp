// Schemas of the uniform fake quant ops (algorithms.md §1e, §3a) in the climbq_native
// library; the kernels are in csrc/cpu/fake_quant.cpp and csrc/cuda/fake_quant.cu.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(climbq_native, m) {
  // algorithms.md §1e. x: any shape, float32/float16/bfloat16. Per tensor (axis None): scale and
  // zero_point one element each; per channel: (x.shape[axis],). scale floating > 0, zero_point
  // integer or floating in [quant_min, quant_max]. Returns
  // (clamp(rint(x / scale) + zp, quant_min, quant_max) - zp) * scale in x's dtype and shape
  // (contiguous), bit-identical to torch.fake_quantize_per_{tensor,channel}_affine.
  m.def("fake_quant_affine_forward(Tensor x, Tensor scale, Tensor zero_point, int quant_min,"
        " int quant_max, int? axis) -> Tensor");
  // (dx, dscale, dzero_point): dx = grad_out where quant_min <= code <= quant_max, else 0;
  // dscale / dzero_point are the LSQ gradients, float32 of shape (channels,) ((1,) per
  // tensor), zeros unless requested.
  m.def("fake_quant_affine_backward(Tensor grad_out, Tensor x, Tensor scale, Tensor zero_point,"
        " int quant_min, int quant_max, int? axis, bool scale_grad, bool zero_point_grad)"
        " -> (Tensor, Tensor, Tensor)");
  // algorithms.md §3a. x: (B, ...) float32/float16/bfloat16; bits: (B,) integer in [1, 16]; clip:
  // one floating element > 0. out = rint(clamp(x, 0, clip) / s_i) * s_i, s_i = clip / (2^b_i - 1).
  m.def("fake_quant_per_sample_bits_forward(Tensor x, Tensor bits, Tensor clip) -> Tensor");
  // (dx, dclip): straight-through on rint; dclip is a float32 0-d tensor.
  m.def("fake_quant_per_sample_bits_backward(Tensor grad_out, Tensor x, Tensor bits, Tensor clip)"
        " -> (Tensor, Tensor)");
}
