// Schemas of the ClimbQ weight quantizer (algorithms.md §1b); kernels in cpu/ and
// cuda/climbq_weight.*.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(climbq_native, m) {
  // w: any shape, float32/float16/bfloat16, >= 2 elements, not all equal; bits in [1, 16].
  // Returns 2 rint(Phi((w - mean)/std) N)/N - 1 (std unbiased, over all of w), w's dtype.
  m.def("climbq_weight_quant_forward(Tensor w, int bits) -> Tensor");
  // dw = (2/s) (g phi - S1/n - z S2/(n-1)), through mean and std (see climbq_weight.h).
  m.def("climbq_weight_quant_backward(Tensor grad_out, Tensor w, int bits) -> Tensor");
}
