// Uniform fake quant on the CPU (SPEC 1e affine/LSQ, SPEC 3 per-sample bits): checks, tables,
// output allocation and the final per-channel reduction of the backward partial sums; the
// vectorised loops are in isa/fake_quant_kernel.cpp.
#include "../fake_quant.h"
#include "climbq_act_kernel.h"
#include "empty_output.h"
#include "fake_quant_kernel.h"

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <cstdint>
#include <cstring>
#include <tuple>
#include <vector>

namespace climbq::cpu {
namespace {

// Elements per piece: large enough that a piece's loop dwarfs its set-up, small enough that a
// per-tensor problem splits across cores and that float32 lane sums stay accurate.
constexpr int64_t kChunk = 16384;

struct FakeQuantKernels {
  decltype(&DEFAULT::affine_forward) affine_forward;
  decltype(&DEFAULT::affine_backward) affine_backward;
  decltype(&DEFAULT::sample_bits_forward) sample_bits_forward;
  decltype(&DEFAULT::sample_bits_backward) sample_bits_backward;
};

// The instruction set the ClimbQ activation kernels chose (act_kernel_isa) serves here too.
const FakeQuantKernels& kernels() {
  static const FakeQuantKernels chosen = [] {
    const char* isa = act_kernel_isa();
#ifdef CLIMBQ_CPU_HAVE_AVX512
    if (std::strcmp(isa, "AVX512") == 0) {
      return FakeQuantKernels{AVX512::affine_forward, AVX512::affine_backward,
                              AVX512::sample_bits_forward, AVX512::sample_bits_backward};
    }
#endif
#ifdef CLIMBQ_CPU_HAVE_AVX2
    if (std::strcmp(isa, "AVX2") == 0) {
      return FakeQuantKernels{AVX2::affine_forward, AVX2::affine_backward,
                              AVX2::sample_bits_forward, AVX2::sample_bits_backward};
    }
#endif
    return FakeQuantKernels{DEFAULT::affine_forward, DEFAULT::affine_backward,
                            DEFAULT::sample_bits_forward, DEFAULT::sample_bits_backward};
  }();
  return chosen;
}

// The per-channel float32 tables of one affine call and the problem they describe.
class AffineCall {
 public:
  AffineCall(const char* op, const at::Tensor& x, const at::Tensor& scale,
             const at::Tensor& zero_point, int64_t quant_min, int64_t quant_max,
             c10::optional<int64_t> axis) {
    RowLayout layout =
        check_affine_args(op, x, scale, zero_point, quant_min, quant_max, axis, c10::kCPU);
    layout.chunk = kChunk;
    scale_ = scale.to(at::kFloat).contiguous();
    zero_point_ = zero_point.to(at::kFloat).contiguous();
    const float* s = scale_.const_data_ptr<float>();
    const float* zp = zero_point_.const_data_ptr<float>();
    inv_scale_.resize(layout.channels);
    for (int64_t c = 0; c < layout.channels; ++c) {
      TORCH_CHECK_VALUE(std::isfinite(s[c]) && s[c] > 0, op, ": scale must be finite and > 0, got ", s[c]);
      TORCH_CHECK_VALUE(zp[c] >= quant_min && zp[c] <= quant_max, op,
                  ": zero_point must lie in [quant_min, quant_max] = [", quant_min, ", ",
                  quant_max, "], got ", zp[c]);
      inv_scale_[c] = 1.0f / s[c];
    }
    const ZeroPointMode mode = zero_point_mode(zero_point);
    problem_ = {x.scalar_type(), layout, s, inv_scale_.data(), zp, mode,
                needs_double_product(axis.has_value(), mode, quant_min, quant_max),
                static_cast<float>(quant_min), static_cast<float>(quant_max)};
  }
  const AffineProblem& problem() const { return problem_; }

 private:
  at::Tensor scale_, zero_point_;
  std::vector<float> inv_scale_;
  AffineProblem problem_{};
};

// Sums piece partials per channel in a fixed order (rows of one channel, then their chunks),
// in double, and scales by `factor`: a float32 (channels,) tensor.
at::Tensor reduce_partials(const std::vector<float>& partials, const RowLayout& layout,
                           double factor) {
  at::Tensor result = at::zeros({layout.channels}, at::TensorOptions().dtype(at::kFloat));
  std::vector<double> sums(layout.channels, 0.0);
  const int64_t per_row = layout.chunks_per_row();
  for (int64_t piece = 0; piece < layout.pieces(); ++piece) {
    sums[(piece / per_row) % layout.channels] += partials[piece];
  }
  float* out = result.mutable_data_ptr<float>();
  for (int64_t c = 0; c < layout.channels; ++c) out[c] = static_cast<float>(sums[c] * factor);
  return result;
}

at::Tensor affine_forward_cpu(const at::Tensor& x, const at::Tensor& scale,
                              const at::Tensor& zero_point, int64_t quant_min, int64_t quant_max,
                              c10::optional<int64_t> axis) {
  const AffineCall call("fake_quant_affine_forward", x, scale, zero_point, quant_min, quant_max,
                        axis);
  const at::Tensor x_c = x.contiguous();
  at::Tensor out = empty_output_like(x_c);
  if (x_c.numel() != 0) kernels().affine_forward(call.problem(), x_c.const_data_ptr(), out.mutable_data_ptr());
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> affine_backward_cpu(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& scale,
    const at::Tensor& zero_point, int64_t quant_min, int64_t quant_max,
    c10::optional<int64_t> axis, bool scale_grad, bool zero_point_grad) {
  const char* op = "fake_quant_affine_backward";
  const AffineCall call(op, x, scale, zero_point, quant_min, quant_max, axis);
  check_act_quant_grad(op, grad_out, x);
  TORCH_CHECK_VALUE(!zero_point_grad || at::isFloatingType(zero_point.scalar_type()), op,
              ": zero_point must be floating to receive a gradient (a learned zero point)");
  const AffineProblem& p = call.problem();
  const at::Tensor x_c = x.contiguous(), grad_c = grad_out.contiguous();
  at::Tensor dx = empty_output_like(x_c);
  const int64_t channels = p.layout.channels;
  const int64_t numel_per_scale = channels == 0 ? 0 : x_c.numel() / channels;
  const double g = (scale_grad || zero_point_grad) && numel_per_scale > 0
                       ? lsq_grad_scale(op, numel_per_scale, quant_max)
                       : 0.0;
  std::vector<float> dscale_partials(scale_grad ? p.layout.pieces() : 0);
  std::vector<float> dzp_partials(zero_point_grad ? p.layout.pieces() : 0);
  if (x_c.numel() != 0) {
    kernels().affine_backward(p, grad_c.const_data_ptr(), x_c.const_data_ptr(),
                              dx.mutable_data_ptr(), scale_grad ? dscale_partials.data() : nullptr,
                              zero_point_grad ? dzp_partials.data() : nullptr);
  }
  const auto no_grad = [&] { return at::zeros({channels}, at::TensorOptions().dtype(at::kFloat)); };
  return {dx, scale_grad ? reduce_partials(dscale_partials, p.layout, g) : no_grad(),
          zero_point_grad ? reduce_partials(dzp_partials, p.layout, g) : no_grad()};
}

// Per-sample tables s_i = clip / L_i and L_i in float32, as the reference computes them.
class SampleBitsCall {
 public:
  SampleBitsCall(const char* op, const at::Tensor& x, const at::Tensor& bits,
                 const at::Tensor& clip) {
    check_sample_bits_args(op, x, bits, clip, c10::kCPU);
    const float clip_value = clip.to(at::kFloat).item<float>();
    TORCH_CHECK_VALUE(std::isfinite(clip_value) && clip_value > 0, op,
                ": clip must be finite and > 0, got ", clip_value);
    const at::Tensor bits_c = bits.to(at::kLong).contiguous();
    const int64_t* b = bits_c.const_data_ptr<int64_t>();
    const int64_t batch = x.size(0);
    step_.resize(batch);
    levels_.resize(batch);
    for (int64_t i = 0; i < batch; ++i) {
      TORCH_CHECK_VALUE(b[i] >= kMinBits && b[i] <= kMaxBits, op, ": bits must lie in [", kMinBits, ", ",
                  kMaxBits, "], got ", b[i]);
      levels_[i] = static_cast<float>((int64_t{1} << b[i]) - 1);
      step_[i] = clip_value / levels_[i];
    }
    RowLayout layout;
    layout.rows = layout.channels = x.numel() == 0 ? 0 : batch;
    layout.inner = batch == 0 ? 0 : x.numel() / batch;
    layout.chunk = kChunk;
    problem_ = {x.scalar_type(), layout, step_.data(), levels_.data(), clip_value};
  }
  const SampleBitsProblem& problem() const { return problem_; }

 private:
  std::vector<float> step_, levels_;
  SampleBitsProblem problem_{};
};

at::Tensor sample_bits_forward_cpu(const at::Tensor& x, const at::Tensor& bits,
                                   const at::Tensor& clip) {
  const SampleBitsCall call("fake_quant_per_sample_bits_forward", x, bits, clip);
  const at::Tensor x_c = x.contiguous();
  at::Tensor out = empty_output_like(x_c);
  if (x_c.numel() != 0) {
    kernels().sample_bits_forward(call.problem(), x_c.const_data_ptr(), out.mutable_data_ptr());
  }
  return out;
}

std::tuple<at::Tensor, at::Tensor> sample_bits_backward_cpu(const at::Tensor& grad_out,
                                                            const at::Tensor& x,
                                                            const at::Tensor& bits,
                                                            const at::Tensor& clip) {
  const char* op = "fake_quant_per_sample_bits_backward";
  const SampleBitsCall call(op, x, bits, clip);
  check_act_quant_grad(op, grad_out, x);
  const at::Tensor x_c = x.contiguous(), grad_c = grad_out.contiguous();
  at::Tensor dx = empty_output_like(x_c);
  RowLayout all_rows = call.problem().layout;
  std::vector<float> partials(all_rows.pieces());
  if (x_c.numel() != 0) {
    kernels().sample_bits_backward(call.problem(), grad_c.const_data_ptr(), x_c.const_data_ptr(),
                                   dx.mutable_data_ptr(), partials.data());
  }
  all_rows.channels = 1;  // dclip sums over every sample
  return {dx, reduce_partials(partials, all_rows, 1.0).reshape({})};
}

}  // namespace
}  // namespace climbq::cpu

TORCH_LIBRARY_IMPL(climbq_native, CPU, m) {
  m.impl("fake_quant_affine_forward", &climbq::cpu::affine_forward_cpu);
  m.impl("fake_quant_affine_backward", &climbq::cpu::affine_backward_cpu);
  m.impl("fake_quant_per_sample_bits_forward", &climbq::cpu::sample_bits_forward_cpu);
  m.impl("fake_quant_per_sample_bits_backward", &climbq::cpu::sample_bits_backward_cpu);
}
