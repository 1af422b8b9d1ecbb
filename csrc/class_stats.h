// Class-segmented statistics (algorithms.md §1c steps 1-3, §4a): the checks the CPU
// and CUDA ops share (csrc/cpu/class_stats.cpp, csrc/cuda/class_stats.cu).
//
// x (B, F, S...) is viewed as (B, F, S): F = x.size(1) features (1 for x of shape (B,)), S the
// product of the trailing (spatial) sizes. For every class k and feature f:
//   counts_k = S * #{i : labels_i = k}
//   mean_kf  = sum_{i : labels_i = k} sum_s x_ifs / counts_k
//   var_kf   = sum_{i : labels_i = k} sum_s (x_ifs - mean_kf)^2 / counts_k     (biased)
// Absent classes get count 0, mean 0, var 0. mean and var have shape (K, F) ((K,) for 1-D x)
// and x's dtype; counts int64 (K,).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cstdint>
#include <vector>

namespace climbq {

// (B, F, S) view of x as described above.
struct SegmentShape {
  int64_t batch;
  int64_t features;
  int64_t positions;
};

inline SegmentShape segment_shape(const at::Tensor& x) {
  const int64_t batch = x.size(0);
  const int64_t features = x.dim() > 1 ? x.size(1) : 1;
  const int64_t positions = batch * features == 0 ? 0 : x.numel() / (batch * features);
  return {batch, features, positions};
}

// The statistics' shape: (K, F), or (K,) for 1-D x.
inline std::vector<int64_t> stats_shape(const at::Tensor& x, int64_t num_classes) {
  if (x.dim() > 1) return {num_classes, x.size(1)};
  return {num_classes};
}

inline void check_class_stats_args(const char* op, const at::Tensor& x, const at::Tensor& labels,
                                   int64_t num_classes, c10::DeviceType device_type) {
  const auto dtype = x.scalar_type();
  TORCH_CHECK_TYPE(dtype == at::kFloat || dtype == at::kHalf || dtype == at::kBFloat16, op,
                   ": x must be float32, float16 or bfloat16, got ", dtype);
  TORCH_CHECK_VALUE(x.dim() >= 1, op, ": x must have shape (B,), (B, D) or (B, C, *spatial), ",
                    "got a 0-dim tensor");
  TORCH_CHECK_TYPE(labels.scalar_type() == at::kLong, op, ": labels must be int64, got ",
                   labels.scalar_type());
  TORCH_CHECK_VALUE(labels.dim() == 1 && labels.size(0) == x.size(0), op,
                    ": labels must have shape (B,) = (", x.size(0), ",), got ", labels.sizes());
  TORCH_CHECK_VALUE(num_classes >= 1, op, ": num_classes must be >= 1, got ", num_classes);
  TORCH_CHECK_VALUE(x.device().type() == device_type && labels.device() == x.device(), op,
                    ": x and labels must be on one ", c10::DeviceTypeName(device_type),
                    " device, got ", x.device(), " and ", labels.device());
}

}  // namespace climbq
