// Schema of the class-segmented statistics op (algorithms.md §1c, §4a); kernels in
// cpu/ and cuda/class_stats.*.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(climbq_native, m) {
  // x: (B,), (B, D) or (B, C, *spatial), float32/float16/bfloat16; labels: int64 (B,) in [0, K).
  // Returns (counts int64 (K,), mean (K, F), biased var (K, F)); see class_stats.h.
  m.def("class_stats(Tensor x, Tensor labels, int num_classes) -> (Tensor, Tensor, Tensor)");
}
