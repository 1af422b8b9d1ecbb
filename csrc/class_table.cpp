// Schemas of the per-batch ClimbQ scale table ops (algorithms.md §1a); see class_table.h.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(climbq_native, m) {
  // labels: int64 (B,) in [0, K). Returns the histogram, int64 (K,).
  m.def("label_histogram(Tensor labels, int num_classes) -> Tensor");
  // labels: int64 (B,); counts: int64 (K,) (summed over processes, if any). Returns (sigma, mu),
  // float32 (B,) each.
  m.def("class_sigma_table(Tensor labels, Tensor counts) -> (Tensor, Tensor)");
}
