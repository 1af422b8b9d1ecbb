// Schemas of the ACS score ops (algorithms.md §2); the CPU kernels are in cpu/acs_scores.cpp.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(climbq_native, m) {
  // logits: (B, K) float32/float16/bfloat16/float64; labels: int64 (B,) in [0, K).
  // Returns EVS = ||softmax(logits) - onehot(labels)||_2 per row, (B,) in logits' dtype.
  m.def("error_vector_score(Tensor logits, Tensor labels) -> Tensor");
  // logits_q, logits_fp: (B, K), same dtype. Returns DS = ||softmax(logits_q) -
  // softmax(logits_fp)||_2 per row, (B,) in the logits' dtype.
  m.def("disagreement_score(Tensor logits_q, Tensor logits_fp) -> Tensor");
}
