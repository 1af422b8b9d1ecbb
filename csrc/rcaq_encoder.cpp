// Schema of the RCAQ encoder step (algorithms.md §5); the CPU kernel is cpu/rcaq_encoder.cpp.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(climbq_native, m) {
  // One sensor's exact encoder step. x: (N, d) float32/float16/bfloat16, codebook: (M, d) of
  // x's dtype; labels: int64 (N,) = sign(x . w); codeword_labels: int64 (M,) = sign(c . w);
  // proto_index: int64 (N,) in [0, P); base_index: int64 (N,), the joint index with this
  // sensor's term removed, so candidate q of point n decodes to base_index[n] + q * stride;
  // lookup: int64 (P,) the current table. Returns (costs float64 (P, rate), lookup int64 (P,)):
  // costs[p, q] = sum over points of prototype p of (1 - gamma) ||x - c||^2 + gamma [labels
  // differ], accumulated in float64; the new table picks the lowest q of least cost and keeps
  // the current entry of a prototype that holds no point.
  m.def("rcaq_encoder_step(Tensor x, Tensor labels, Tensor codebook, Tensor codeword_labels,"
        " Tensor proto_index, Tensor base_index, Tensor lookup, int stride, int rate, float gamma)"
        " -> (Tensor, Tensor)");
}
