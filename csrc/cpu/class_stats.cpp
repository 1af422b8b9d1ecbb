// Class-segmented statistics on the CPU (algorithms.md §1c, §4a): checks, label
// bookkeeping and the float64 -> x's dtype epilogue (mean and var rounded once, through float32);
// the accumulation is in isa/class_stats_kernel.cpp.
#include "../class_stats.h"

#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <tuple>
#include <vector>

#include "class_stats_kernel.h"
#include "isa_choice.h"

namespace climbq::cpu {
namespace {

using AccumulateFn = decltype(&DEFAULT::class_stats_accumulate);

AccumulateFn accumulate_kernel() {
  static const AccumulateFn chosen =
      choose_isa<AccumulateFn>(DEFAULT::class_stats_accumulate, CLIMBQ_AVX2::class_stats_accumulate,
                               CLIMBQ_AVX512::class_stats_accumulate);
  return chosen;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> class_stats_cpu(const at::Tensor& x,
                                                               const at::Tensor& labels,
                                                               int64_t num_classes) {
  constexpr const char* kOp = "class_stats";
  check_class_stats_args(kOp, x, labels, num_classes, c10::kCPU);
  const SegmentShape shape = segment_shape(x);
  const at::Tensor x_c = x.contiguous(), labels_c = labels.contiguous();
  const int64_t* label_p = labels_c.const_data_ptr<int64_t>();

  // Labels are checked here (a CPU read is free) and counted;
  // prior[i] = earlier samples of i's class.
  at::Tensor counts = at::zeros({num_classes}, labels.options());
  int64_t* count_p = counts.mutable_data_ptr<int64_t>();
  std::vector<int64_t> prior(shape.batch);
  for (int64_t i = 0; i < shape.batch; ++i) {
    const int64_t k = label_p[i];
    TORCH_CHECK_VALUE(k >= 0 && k < num_classes, kOp, ": labels must lie in [0, ", num_classes,
                      "), got ", k, " at index ", i);
    prior[i] = count_p[k]++;
  }

  // The float64 running means and M2s live in a per-thread buffer reused across calls: a fresh
  // multi-megabyte allocation per call costs more in page faults than the whole pass.
  thread_local std::vector<double> scratch;
  const int64_t stats = num_classes * shape.features;
  scratch.assign(2 * stats, 0.0);
  double* mean_acc = scratch.data();
  double* m2_acc = scratch.data() + stats;
  if (shape.batch * shape.features * shape.positions > 0) {
    const SegmentProblem problem{x_c.scalar_type(), shape.batch,  shape.features, shape.positions,
                                 label_p,           prior.data(), mean_acc,       m2_acc};
    accumulate_kernel()(problem, x_c.const_data_ptr());
  }
  counts.mul_(shape.positions);

  const auto out_shape = stats_shape(x, num_classes);
  at::Tensor mean = at::empty(out_shape, x.options()), var = at::empty(out_shape, x.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "class_stats", [&] {
    auto* mean_p = mean.mutable_data_ptr<scalar_t>();
    auto* var_p = var.mutable_data_ptr<scalar_t>();
    for (int64_t k = 0; k < num_classes; ++k) {
      // Absent classes: the accumulators are still 0; dividing by max(count, 1) keeps var 0.
      const double inv_n = 1.0 / static_cast<double>(std::max<int64_t>(count_p[k], 1));
      for (int64_t j = k * shape.features; j < (k + 1) * shape.features; ++j) {
        mean_p[j] = static_cast<scalar_t>(static_cast<float>(mean_acc[j]));
        // A class whose mean is not finite holds an Inf or NaN: (x - mean)^2 is NaN for it, as in
        // the reference, where the running M2 may have become Inf instead.
        const double v = std::isfinite(mean_acc[j]) ? m2_acc[j] * inv_n : NAN;
        var_p[j] = static_cast<scalar_t>(static_cast<float>(v));
      }
    }
  });
  return {counts, mean, var};
}

}  // namespace
}  // namespace climbq::cpu

TORCH_LIBRARY_IMPL(climbq_native, CPU, m) { m.impl("class_stats", &climbq::cpu::class_stats_cpu); }
