// ClimbQ activation quantizer on the CPU (algorithms.md §1a): checks, output allocation and the
// choice of instruction set; the vectorised loops are in isa/climbq_act_kernel.cpp.
#include "../climbq_act.h"
#include "climbq_act_kernel.h"
#include "fresh_output.h"
#include "isa_choice.h"

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <cstdint>
#include <optional>
#include <vector>

namespace climbq::cpu {
namespace {

struct ActKernels {
  decltype(&DEFAULT::act_quant_forward) forward;
  decltype(&DEFAULT::act_quant_backward) backward;
  decltype(&DEFAULT::act_quant_codes) codes;
};

const ActKernels& act_kernels() {
  static const ActKernels chosen = choose_isa<ActKernels>(
      {DEFAULT::act_quant_forward, DEFAULT::act_quant_backward, DEFAULT::act_quant_codes},
      {CLIMBQ_AVX2::act_quant_forward, CLIMBQ_AVX2::act_quant_backward,
       CLIMBQ_AVX2::act_quant_codes},
      {CLIMBQ_AVX512::act_quant_forward, CLIMBQ_AVX512::act_quant_backward,
       CLIMBQ_AVX512::act_quant_codes});
  return chosen;
}

// Owns the per-sample constants for one call and describes the problem to the kernels.
class ActQuantCall {
 public:
  ActQuantCall(const at::Tensor& x, const at::Tensor& sigma, const at::Tensor& mu, int64_t bits,
               double act_range) {
    const at::Tensor sigma_c = sigma.contiguous(), mu_c = mu.contiguous();
    const float* sigma_p = sigma_c.const_data_ptr<float>();
    const float* mu_p = mu_c.const_data_ptr<float>();
    constexpr double kSqrt2 = 1.4142135623730950488;
    constexpr double kSqrt2Pi = 2.5066282746310005024;
    samples_.resize(x.size(0));
    for (size_t i = 0; i < samples_.size(); ++i) {
      const double s = sigma_p[i];
      samples_[i] = {mu_p[i], static_cast<float>(1.0 / (s * kSqrt2)),
                     static_cast<float>(2.0 * act_range / (s * kSqrt2Pi))};
    }
    const double levels = static_cast<double>((int64_t{1} << bits) - 1);
    problem_ = {x.scalar_type(),
                x.size(0),
                x.size(0) == 0 ? 0 : x.numel() / x.size(0),
                samples_.data(),
                static_cast<float>(levels),
                static_cast<float>(levels / 2.0),
                static_cast<float>(1.0 / levels),
                static_cast<float>(act_range)};
  }
  const ActQuantProblem& problem() const { return problem_; }

  // The fused variants: the tables must outlive the call (the caller's tensors do).
  ActQuantCall& with_variants(const at::Tensor& x, int64_t bits,
                              const std::optional<at::Tensor>& thresholds,
                              const std::optional<at::Tensor>& bn_scale,
                              const std::optional<at::Tensor>& bn_shift, bool relu,
                              bool channels_last, int64_t channels) {
    problem_.bits = bits;
    problem_.relu = relu;
    if (thresholds.has_value()) problem_.thresholds = thresholds->const_data_ptr<float>();
    if (bn_scale.has_value()) {
      problem_.bn_scale = bn_scale->const_data_ptr<float>();
      problem_.bn_shift = bn_shift->const_data_ptr<float>();
      problem_.channels = channels;
      problem_.channel_stride = channel_stride(x, channels_last);
    }
    return *this;
  }
  ActQuantCall& chain_scale(bool chain) {
    problem_.chain_scale = chain;
    return *this;
  }

 private:
  std::vector<ActQuantSample> samples_;
  ActQuantProblem problem_{};
};

at::Tensor act_quant_forward_cpu(const at::Tensor& x, const at::Tensor& sigma, const at::Tensor& mu,
                                 int64_t bits, double act_range) {
  check_act_quant_args("climbq_act_quant_forward", x, sigma, mu, bits, act_range, c10::kCPU);
  const at::Tensor x_c = x.contiguous();
  at::Tensor out = empty_like_fresh(x_c);
  if (x_c.numel() == 0) return out;
  const ActQuantCall call(x_c, sigma, mu, bits, act_range);
  act_kernels().forward(call.problem(), x_c.const_data_ptr(), out.mutable_data_ptr());
  return out;
}

at::Tensor act_quant_backward_cpu(const at::Tensor& grad_out, const at::Tensor& x,
                                  const at::Tensor& sigma, const at::Tensor& mu, int64_t bits,
                                  double act_range) {
  check_act_quant_args("climbq_act_quant_backward", x, sigma, mu, bits, act_range, c10::kCPU);
  check_act_quant_grad("climbq_act_quant_backward", grad_out, x);
  const at::Tensor x_c = x.contiguous(), grad_c = grad_out.contiguous();
  at::Tensor dx = empty_like_fresh(x_c);
  if (x_c.numel() == 0) return dx;
  const ActQuantCall call(x_c, sigma, mu, bits, act_range);
  act_kernels().backward(call.problem(), grad_c.const_data_ptr(), x_c.const_data_ptr(),
                         dx.mutable_data_ptr());
  return dx;
}

// The fused ops (schemas in ../climbq_act_fused.cpp). Tables are made contiguous here and
// kept alive in these locals for the kernel call.
struct FusedTables {
  std::optional<at::Tensor> thresholds, bn_scale, bn_shift;
  FusedTables(const std::optional<at::Tensor>& t, const std::optional<at::Tensor>& scale,
              const std::optional<at::Tensor>& shift) {
    if (t.has_value()) thresholds = t->contiguous();
    if (scale.has_value()) bn_scale = scale->contiguous();
    if (shift.has_value()) bn_shift = shift->contiguous();
  }
};

at::Tensor act_fused_forward_cpu(const at::Tensor& x, const at::Tensor& sigma, const at::Tensor& mu,
                                 const std::optional<at::Tensor>& thresholds,
                                 const std::optional<at::Tensor>& bn_scale,
                                 const std::optional<at::Tensor>& bn_shift, int64_t bits,
                                 double act_range, bool relu, bool channels_last) {
  constexpr const char* op = "climbq_act_fused_forward";
  check_act_quant_args(op, x, sigma, mu, bits, act_range, c10::kCPU);
  const int64_t channels =
      check_act_fused_tables(op, x, bn_scale, bn_shift, thresholds, bits, channels_last);
  const at::Tensor x_c = x.contiguous();
  at::Tensor out = empty_like_fresh(x_c);
  if (x_c.numel() == 0) return out;
  const FusedTables tables(thresholds, bn_scale, bn_shift);
  ActQuantCall call(x_c, sigma, mu, bits, act_range);
  call.with_variants(x_c, bits, tables.thresholds, tables.bn_scale, tables.bn_shift, relu,
                     channels_last, channels);
  act_kernels().forward(call.problem(), x_c.const_data_ptr(), out.mutable_data_ptr());
  return out;
}

at::Tensor act_fused_backward_cpu(const at::Tensor& grad_out, const at::Tensor& x,
                                  const at::Tensor& sigma, const at::Tensor& mu,
                                  const std::optional<at::Tensor>& thresholds,
                                  const std::optional<at::Tensor>& bn_scale,
                                  const std::optional<at::Tensor>& bn_shift, int64_t bits,
                                  double act_range, bool relu, bool channels_last,
                                  bool chain_scale) {
  constexpr const char* op = "climbq_act_fused_backward";
  check_act_quant_args(op, x, sigma, mu, bits, act_range, c10::kCPU);
  check_act_quant_grad(op, grad_out, x);
  const int64_t channels =
      check_act_fused_tables(op, x, bn_scale, bn_shift, thresholds, bits, channels_last);
  const at::Tensor x_c = x.contiguous(), grad_c = grad_out.contiguous();
  at::Tensor dx = empty_like_fresh(x_c);
  if (x_c.numel() == 0) return dx;
  const FusedTables tables(thresholds, bn_scale, bn_shift);
  ActQuantCall call(x_c, sigma, mu, bits, act_range);
  call.with_variants(x_c, bits, tables.thresholds, tables.bn_scale, tables.bn_shift, relu,
                     channels_last, channels)
      .chain_scale(chain_scale);
  act_kernels().backward(call.problem(), grad_c.const_data_ptr(), x_c.const_data_ptr(),
                         dx.mutable_data_ptr());
  return dx;
}

at::Tensor act_fused_codes_cpu(const at::Tensor& x, const at::Tensor& sigma, const at::Tensor& mu,
                               const std::optional<at::Tensor>& thresholds,
                               const std::optional<at::Tensor>& bn_scale,
                               const std::optional<at::Tensor>& bn_shift, int64_t bits,
                               bool channels_last) {
  constexpr const char* op = "climbq_act_fused_codes";
  check_act_quant_args(op, x, sigma, mu, bits, kCodesActRange, c10::kCPU);
  check_act_codes_bits(op, bits);
  const int64_t channels =
      check_act_fused_tables(op, x, bn_scale, bn_shift, thresholds, bits, channels_last);
  const at::Tensor x_c = x.contiguous();
  at::Tensor codes = at::empty(x_c.sizes(), x_c.options().dtype(at::kByte));
  if (x_c.numel() == 0) return codes;
  const FusedTables tables(thresholds, bn_scale, bn_shift);
  ActQuantCall call(x_c, sigma, mu, bits, kCodesActRange);
  call.with_variants(x_c, bits, tables.thresholds, tables.bn_scale, tables.bn_shift, false,
                     channels_last, channels);
  act_kernels().codes(call.problem(), x_c.const_data_ptr(), codes.mutable_data_ptr<uint8_t>());
  return codes;
}

}  // namespace

const char* act_kernel_isa() { return chosen_isa_name(); }

}  // namespace climbq::cpu

TORCH_LIBRARY_IMPL(climbq_native, CPU, m) {
  m.impl("climbq_act_quant_forward", &climbq::cpu::act_quant_forward_cpu);
  m.impl("climbq_act_quant_backward", &climbq::cpu::act_quant_backward_cpu);
  m.impl("climbq_act_fused_forward", &climbq::cpu::act_fused_forward_cpu);
  m.impl("climbq_act_fused_backward", &climbq::cpu::act_fused_backward_cpu);
  m.impl("climbq_act_fused_codes", &climbq::cpu::act_fused_codes_cpu);
}
