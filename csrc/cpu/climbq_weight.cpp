// ClimbQ weight quantizer on the CPU (algorithms.md §1b): checks, the float64 reduction results and
// the elementwise constants; the vectorised loops are in isa/climbq_weight_kernel.cpp.
#include "../climbq_weight.h"

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <cmath>

#include "climbq_weight_kernel.h"
#include "fresh_output.h"
#include "isa_choice.h"

namespace climbq::cpu {
namespace {

struct WeightKernels {
  decltype(&DEFAULT::weight_shifted_sums) shifted_sums;
  decltype(&DEFAULT::weight_grad_sums) grad_sums;
  decltype(&DEFAULT::weight_quant_forward) forward;
  decltype(&DEFAULT::weight_quant_backward) backward;
};

const WeightKernels& weight_kernels() {
  static const WeightKernels chosen = choose_isa<WeightKernels>(
      {DEFAULT::weight_shifted_sums, DEFAULT::weight_grad_sums, DEFAULT::weight_quant_forward,
       DEFAULT::weight_quant_backward},
      {CLIMBQ_AVX2::weight_shifted_sums, CLIMBQ_AVX2::weight_grad_sums,
       CLIMBQ_AVX2::weight_quant_forward, CLIMBQ_AVX2::weight_quant_backward},
      {CLIMBQ_AVX512::weight_shifted_sums, CLIMBQ_AVX512::weight_grad_sums,
       CLIMBQ_AVX512::weight_quant_forward, CLIMBQ_AVX512::weight_quant_backward});
  return chosen;
}

float first_element(const at::Tensor& w) {
  switch (w.scalar_type()) {
    case at::kHalf: return static_cast<float>(w.const_data_ptr<at::Half>()[0]);
    case at::kBFloat16: return static_cast<float>(w.const_data_ptr<at::BFloat16>()[0]);
    default: return w.const_data_ptr<float>()[0];
  }
}

// The reduction over w and the forward constants; rejects zero spread and non-finite w.
WeightPass weight_pass(const char* op, const at::Tensor& w, int64_t bits, double* std_out) {
  const int64_t n = w.numel();
  const float shift = first_element(w);
  const PairSums sums =
      weight_kernels().shifted_sums(w.scalar_type(), w.const_data_ptr(), n, shift);
  const WeightStats stats = weight_stats_from_sums(shift, sums.a, sums.b, n);
  TORCH_CHECK_VALUE(std::isfinite(stats.mean) && std::isfinite(stats.std), op,
                    ": w must be finite, got mean ", stats.mean, " and std ", stats.std);
  TORCH_CHECK_VALUE(stats.std > 0, op,
                    ": w must have nonzero spread: all its elements are equal, so std(w) = 0");
  constexpr double kSqrt2 = 1.4142135623730950488;
  const double levels = static_cast<double>((int64_t{1} << bits) - 1);
  WeightPass p{};
  p.dtype = w.scalar_type();
  p.numel = n;
  p.mean = static_cast<float>(stats.mean);
  p.inv_std_sqrt2 = static_cast<float>(1.0 / (stats.std * kSqrt2));
  p.levels = static_cast<float>(levels);
  p.half_levels = static_cast<float>(levels / 2);
  p.inv_levels = static_cast<float>(1.0 / levels);
  *std_out = stats.std;
  return p;
}

at::Tensor weight_quant_forward_cpu(const at::Tensor& w, int64_t bits) {
  constexpr const char* kOp = "climbq_weight_quant_forward";
  check_weight_quant_args(kOp, w, bits, c10::kCPU);
  const at::Tensor w_c = w.contiguous();
  at::Tensor out = empty_like_fresh(w_c);
  double std = 0;
  const WeightPass p = weight_pass(kOp, w_c, bits, &std);
  weight_kernels().forward(p, w_c.const_data_ptr(), out.mutable_data_ptr());
  return out;
}

at::Tensor weight_quant_backward_cpu(const at::Tensor& grad_out, const at::Tensor& w,
                                     int64_t bits) {
  constexpr const char* kOp = "climbq_weight_quant_backward";
  check_weight_quant_args(kOp, w, bits, c10::kCPU);
  check_weight_grad(kOp, grad_out, w);
  const at::Tensor w_c = w.contiguous(), g_c = grad_out.contiguous();
  at::Tensor dw = empty_like_fresh(w_c);
  double s = 0;
  WeightPass p = weight_pass(kOp, w_c, bits, &s);
  const double n = static_cast<double>(p.numel);
  // sums.a = sum g e, sums.b = sum g e t with e = exp(-t^2) = sqrt(2 pi) phi(z), t = z/sqrt(2):
  // S1 = a / sqrt(2 pi), S2 = b sqrt(2) / sqrt(2 pi), and
  // dw = (2/s)(g phi - S1/n - z S2/(n-1)) = g_scale g e + offset + t_scale t.
  const PairSums sums = weight_kernels().grad_sums(p, g_c.const_data_ptr(), w_c.const_data_ptr());
  constexpr double kSqrt2 = 1.4142135623730950488, kSqrt2Pi = 2.5066282746310005024;
  const double s1 = sums.a / kSqrt2Pi, s2 = sums.b * kSqrt2 / kSqrt2Pi;
  p.g_scale = static_cast<float>(2.0 / (s * kSqrt2Pi));
  p.offset = static_cast<float>(-2.0 * s1 / (n * s));
  p.t_scale = static_cast<float>(-2.0 * kSqrt2 * s2 / ((n - 1) * s));
  weight_kernels().backward(p, g_c.const_data_ptr(), w_c.const_data_ptr(), dw.mutable_data_ptr());
  return dw;
}

}  // namespace
}  // namespace climbq::cpu

TORCH_LIBRARY_IMPL(climbq_native, CPU, m) {
  m.impl("climbq_weight_quant_forward", &climbq::cpu::weight_quant_forward_cpu);
  m.impl("climbq_weight_quant_backward", &climbq::cpu::weight_quant_backward_cpu);
}
