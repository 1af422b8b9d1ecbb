// The per-batch ClimbQ scale table on the CPU (algorithms.md §1a; see ../class_table.h).
#include "../class_table.h"

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <cstdint>
#include <tuple>

namespace climbq::cpu {
namespace {

at::Tensor label_histogram_cpu(const at::Tensor& labels, int64_t num_classes) {
  constexpr const char* kOp = "label_histogram";
  check_histogram_args(kOp, labels, num_classes, c10::kCPU);
  const at::Tensor labels_c = labels.contiguous();
  const int64_t* label_p = labels_c.const_data_ptr<int64_t>();
  at::Tensor counts = at::zeros({num_classes}, labels.options());
  int64_t* count_p = counts.mutable_data_ptr<int64_t>();
  for (int64_t i = 0; i < labels_c.size(0); ++i) {
    const int64_t k = label_p[i];
    TORCH_CHECK_VALUE(k >= 0 && k < num_classes, kOp, ": labels must lie in [0, ", num_classes,
                      ") (num_classes = ", num_classes, "), got ", k, " at index ", i);
    ++count_p[k];
  }
  return counts;
}

std::tuple<at::Tensor, at::Tensor> class_sigma_table_cpu(const at::Tensor& labels,
                                                         const at::Tensor& counts) {
  constexpr const char* kOp = "class_sigma_table";
  check_table_args(kOp, labels, counts, c10::kCPU);
  const at::Tensor labels_c = labels.contiguous(), counts_c = counts.contiguous();
  const int64_t* label_p = labels_c.const_data_ptr<int64_t>();
  const int64_t* count_p = counts_c.const_data_ptr<int64_t>();
  const int64_t num_classes = counts_c.size(0), batch = labels_c.size(0);
  int64_t sum_sq = 0;
  for (int64_t k = 0; k < num_classes; ++k) sum_sq += count_p[k] * count_p[k];
  const float denominator = static_cast<float>(sum_sq < 1 ? 1 : sum_sq);
  const auto options = at::TensorOptions().dtype(at::kFloat);
  at::Tensor sigma = at::empty({batch}, options), mu = at::zeros({batch}, options);
  float* sigma_p = sigma.mutable_data_ptr<float>();
  for (int64_t i = 0; i < batch; ++i) {
    const int64_t k = label_p[i];
    TORCH_CHECK_VALUE(k >= 0 && k < num_classes, kOp, ": labels must lie in [0, ", num_classes,
                      "), got ", k, " at index ", i);
    const float share = static_cast<float>(count_p[k]) / denominator;
    sigma_p[i] = 2.0f - share;
  }
  return {sigma, mu};
}

}  // namespace
}  // namespace climbq::cpu

TORCH_LIBRARY_IMPL(climbq_native, CPU, m) {
  m.impl("label_histogram", &climbq::cpu::label_histogram_cpu);
  m.impl("class_sigma_table", &climbq::cpu::class_sigma_table_cpu);
}
