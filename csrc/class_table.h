// The per-batch ClimbQ scale table (algorithms.md §1a): schemas in class_table.cpp, kernels in
// cpu/class_table.cpp and cuda/class_table.cu, what they share here.
//
//   label_histogram(labels, K)    -> counts int64 (K,), n_k = #{i : labels_i = k}
//   class_sigma_table(labels, n)  -> (sigma, mu), float32 (B,) each:
//                                    sigma_i = 2 - n_{y_i} / max(sum_k n_k^2, 1), mu_i = 0
//
// Two ops, so that data-parallel training can all-reduce the histogram in between (the table of
// the whole batch); one batch costs two launches for every quantizer of the model. The division
// and the subtraction are rounded in float32 one at a time, as the reference
// (reference.class_sigma_from_counts) does. The CPU checks the labels' range while counting (a
// CPU read is free); on CUDA a label outside [0, K) is not counted and its sigma is NaN, never a
// read out of bounds (climbq_kernels.checks checks the range on the device beforehand).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cstdint>

namespace climbq {

inline void check_histogram_args(const char* op, const at::Tensor& labels, int64_t num_classes,
                                 c10::DeviceType device_type) {
  TORCH_CHECK_TYPE(labels.scalar_type() == at::kLong, op, ": labels must be int64, got ",
                   labels.scalar_type());
  TORCH_CHECK_VALUE(labels.dim() == 1, op, ": labels must be 1-D (B,), got shape ", labels.sizes());
  TORCH_CHECK_VALUE(num_classes >= 1, op, ": num_classes must be >= 1, got ", num_classes);
  TORCH_CHECK_VALUE(labels.device().type() == device_type, op, ": labels must be on a ",
                    c10::DeviceTypeName(device_type), " device, got ", labels.device());
}

inline void check_table_args(const char* op, const at::Tensor& labels, const at::Tensor& counts,
                             c10::DeviceType device_type) {
  check_histogram_args(op, labels, 1, device_type);
  TORCH_CHECK_TYPE(counts.scalar_type() == at::kLong, op, ": counts must be int64, got ",
                   counts.scalar_type());
  TORCH_CHECK_VALUE(counts.dim() == 1 && counts.size(0) >= 1, op,
                    ": counts must be a non-empty 1-D histogram (K,), got shape ", counts.sizes());
  TORCH_CHECK_VALUE(counts.device() == labels.device(), op, ": counts must be on labels' device ",
                    labels.device(), ", got ", counts.device());
}

}  // namespace climbq
