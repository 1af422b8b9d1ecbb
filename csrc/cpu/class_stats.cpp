// Class-segmented statistics on the CPU (SPEC 1c, SPEC 4): checks, label bookkeeping and the
// float64 -> x's dtype epilogue; the accumulation is in isa/class_stats_kernel.cpp.
#include "../class_stats.h"

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <tuple>
#include <vector>

#include "class_stats_kernel.h"
#include "isa_choice.h"

namespace climbq::cpu {
namespace {

using AccumulateFn = decltype(&DEFAULT::class_stats_accumulate);

AccumulateFn accumulate_kernel() {
  static const AccumulateFn chosen =
      choose_isa<AccumulateFn>(DEFAULT::class_stats_accumulate, AVX2::class_stats_accumulate,
                               AVX512::class_stats_accumulate);
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

  // Labels are checked here (a CPU read is free) and counted; prior[i] = earlier samples of i's class.
  at::Tensor counts = at::zeros({num_classes}, labels.options());
  int64_t* count_p = counts.mutable_data_ptr<int64_t>();
  std::vector<int64_t> prior(shape.batch);
  for (int64_t i = 0; i < shape.batch; ++i) {
    const int64_t k = label_p[i];
    TORCH_CHECK_VALUE(k >= 0 && k < num_classes, kOp, ": labels must lie in [0, ", num_classes,
                      "), got ", k, " at index ", i);
    prior[i] = count_p[k]++;
  }

  const auto acc_options = x.options().dtype(at::kDouble);
  at::Tensor mean = at::zeros({num_classes, shape.features}, acc_options);
  at::Tensor m2 = at::zeros({num_classes, shape.features}, acc_options);
  if (shape.batch * shape.features * shape.positions > 0) {
    const SegmentProblem problem{x_c.scalar_type(), shape.batch,   shape.features,
                                 shape.positions,   label_p,       prior.data(),
                                 mean.mutable_data_ptr<double>(), m2.mutable_data_ptr<double>()};
    accumulate_kernel()(problem, x_c.const_data_ptr());
  }
  counts.mul_(shape.positions);
  // Absent classes: mean stays 0 and M2 0; dividing by max(count, 1) keeps var 0.
  const at::Tensor var = m2.div_(counts.clamp_min(1).to(at::kDouble).unsqueeze(1));
  const auto out_shape = stats_shape(x, num_classes);
  return {counts, mean.to(x.scalar_type()).reshape(out_shape),
          var.to(x.scalar_type()).reshape(out_shape)};
}

}  // namespace
}  // namespace climbq::cpu

TORCH_LIBRARY_IMPL(climbq_native, CPU, m) {
  m.impl("class_stats", &climbq::cpu::class_stats_cpu);
}
