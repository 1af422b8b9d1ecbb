// ClimbQ weight quantizer (algorithms.md §1b): the math all backends implement and the checks the
// CPU and CUDA ops share (csrc/cpu/climbq_weight.cpp, csrc/cuda/climbq_weight.cu).
//
// With n = w.numel(), N = 2^bits - 1:
//   mean = sum w / n,  s = sqrt(sum (w - mean)^2 / (n - 1))            (one reduction)
//   t = (w - mean) / (s sqrt(2)) = z / sqrt(2),  q = rint(erf(t) N/2 + N/2)
//   Wq = (2q - N) * (1/N)                                               (one elementwise pass)
// Backward, g = grad_out, phi_i = exp(-t_i^2) / sqrt(2 pi):
//   S1 = sum g phi,  S2 = sum g phi z                                   (one reduction)
//   dw = (2/s) (g phi - S1/n - z S2/(n-1))                              (one elementwise pass)
// The backward recomputes mean and s (one more reduction) rather than saving them: the op
// takes only w, and the reduction reads w once.
//
// Reductions: w is shifted by its first element (d = w - w[0]) and sum d, sum d^2 are kept in
// float64 (float32 inside blocks of at most kWeightBlock elements on the CPU, float64 across
// them), so var = (sum d^2 - (sum d)^2 / n) / (n - 1) loses nothing to cancellation unless
// |mean - w[0]| is ~1e4 standard deviations. S1 and S2 use the same float64 blocking.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <cstdint>

#include "climbq_act.h"

namespace climbq {

// Mean and the scale factors of the elementwise passes, from the float64 sums.
struct WeightStats {
  double mean;
  double std;  // unbiased; 0 when every element is equal (callers reject it)
};

inline WeightStats weight_stats_from_sums(double shift, double sum_d, double sum_d2, int64_t n) {
  const double mean_d = sum_d / static_cast<double>(n);
  const double m2 = sum_d2 - sum_d * mean_d;
  const double var = m2 > 0 ? m2 / static_cast<double>(n - 1) : 0.0;
  return {shift + mean_d, std::sqrt(var)};
}

inline void check_weight_quant_args(const char* op, const at::Tensor& w, int64_t bits,
                                    c10::DeviceType device_type) {
  TORCH_CHECK_VALUE(bits >= kMinBits && bits <= kMaxBits, op, ": bits must be in [", kMinBits, ", ",
                    kMaxBits, "], got ", bits);
  const auto dtype = w.scalar_type();
  TORCH_CHECK_TYPE(dtype == at::kFloat || dtype == at::kHalf || dtype == at::kBFloat16, op,
                   ": w must be float32, float16 or bfloat16, got ", dtype);
  TORCH_CHECK_VALUE(w.numel() >= 2, op, ": w must have at least 2 elements (its unbiased std ",
                    "divides by n - 1), got ", w.numel());
  TORCH_CHECK_VALUE(w.device().type() == device_type, op, ": expected w on a ",
                    c10::DeviceTypeName(device_type), " device, got ", w.device());
}

inline void check_weight_grad(const char* op, const at::Tensor& grad_out, const at::Tensor& w) {
  TORCH_CHECK_VALUE(grad_out.sizes() == w.sizes(), op, ": grad_out must have w's shape ", w.sizes(),
                    ", got ", grad_out.sizes());
  TORCH_CHECK_TYPE(grad_out.scalar_type() == w.scalar_type(), op, ": grad_out must have w's dtype ",
                   w.scalar_type(), ", got ", grad_out.scalar_type());
  TORCH_CHECK_VALUE(grad_out.device() == w.device(), op, ": grad_out must be on w's device ",
                    w.device(), ", got ", grad_out.device());
}

}  // namespace climbq
