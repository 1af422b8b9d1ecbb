// Uniform fake quant on the CPU (algorithms.md §1e affine/LSQ, §3a per-sample bits):
// checks, tables, output allocation and the final per-channel reduction of the backward partial
// sums; the vectorised loops are in isa/fake_quant_kernel.cpp.
#include "../fake_quant.h"
#include "climbq_act_kernel.h"
#include "fake_quant_kernel.h"
#include "fresh_output.h"
#include "isa_choice.h"

#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <tuple>
#include <utility>
#include <vector>

namespace climbq::cpu {
namespace {

// Elements per piece: large enough that a piece's loop dwarfs its set-up, small enough that a
// per-tensor problem splits across cores and that float32 lane sums stay accurate.
constexpr int64_t kChunk = 16384;
// Per channel with rows shorter than this (a late axis: (B, T, C) along C has rows of 1) runs
// on position tables (see PositionTables) when channels * inner <= kChunk, in at most
// kMaxRowGroups pieces (that many partial sums per position).
constexpr int64_t kShortRow = 16;
constexpr int64_t kMaxRowGroups = 64;
// The least LSQ step, as csrc/train.cpp and nn/quantizers.py `_positive_step` use it.
constexpr float kMinStep = 1e-8f;

struct FakeQuantKernels {
  decltype(&DEFAULT::affine_forward) affine_forward;
  decltype(&DEFAULT::affine_backward) affine_backward;
  decltype(&DEFAULT::sample_bits_forward) sample_bits_forward;
  decltype(&DEFAULT::sample_bits_backward) sample_bits_backward;
};

const FakeQuantKernels& kernels() {
  static const FakeQuantKernels chosen = choose_isa<FakeQuantKernels>(
      {DEFAULT::affine_forward, DEFAULT::affine_backward, DEFAULT::sample_bits_forward,
       DEFAULT::sample_bits_backward},
      {CLIMBQ_AVX2::affine_forward, CLIMBQ_AVX2::affine_backward, CLIMBQ_AVX2::sample_bits_forward,
       CLIMBQ_AVX2::sample_bits_backward},
      {CLIMBQ_AVX512::affine_forward, CLIMBQ_AVX512::affine_backward,
       CLIMBQ_AVX512::sample_bits_forward, CLIMBQ_AVX512::sample_bits_backward});
  return chosen;
}

// A small table's values as floats, read in place (no float32 copy of the tensor allocated).
std::vector<float> float_values(const at::Tensor& t) {
  const at::Tensor c = t.contiguous();
  std::vector<float> values(c.numel());
  AT_DISPATCH_ALL_TYPES_AND2(at::kHalf, at::kBFloat16, c.scalar_type(), "float_values", [&] {
    const scalar_t* p = c.const_data_ptr<scalar_t>();
    for (size_t i = 0; i < values.size(); ++i) values[i] = static_cast<float>(p[i]);
  });
  return values;
}

// The per-channel float32 tables of one affine call and the problem they describe.
class AffineCall {
 public:
  // positive_scale: use max(|scale|, kMinStep) (LSQ's learned step, see ../train.cpp) instead of
  // requiring scale > 0.
  AffineCall(const char* op, const at::Tensor& x, const at::Tensor& scale,
             const at::Tensor& zero_point, int64_t quant_min, int64_t quant_max,
             c10::optional<int64_t> axis, bool positive_scale = false) {
    RowLayout layout =
        check_affine_args(op, x, scale, zero_point, quant_min, quant_max, axis, c10::kCPU);
    layout.chunk = kChunk;
    scale_used_ = float_values(scale);
    zero_point_ = float_values(zero_point);
    const float* zp = zero_point_.data();
    inv_scale_.resize(layout.channels);
    for (int64_t c = 0; c < layout.channels; ++c) {
      float& s = scale_used_[c];
      if (positive_scale && !std::isnan(s)) s = std::max(std::fabs(s), kMinStep);
      TORCH_CHECK_VALUE(std::isfinite(s) && s > 0, op, ": scale must be finite and > 0, got ", s);
      TORCH_CHECK_VALUE(zp[c] >= quant_min && zp[c] <= quant_max, op,
                        ": zero_point must lie in [quant_min, quant_max] = [", quant_min, ", ",
                        quant_max, "], got ", zp[c]);
      inv_scale_[c] = 1.0f / s;
    }
    const float* s = scale_used_.data();
    const ZeroPointMode mode = zero_point_mode(zero_point);
    problem_ = {x.scalar_type(),
                layout,
                s,
                inv_scale_.data(),
                zp,
                mode,
                needs_double_product(axis.has_value(), mode, quant_min, quant_max),
                static_cast<float>(quant_min),
                static_cast<float>(quant_max),
                PositionTables{}};
    const int64_t period = layout.channels * layout.inner;
    if (axis.has_value() && layout.rows > 0 && layout.inner < kShortRow && period <= kChunk) {
      expand_to_positions(period);
    }
  }
  const AffineProblem& problem() const { return problem_; }

  // Partial sums the backward writes per requested gradient.
  int64_t partial_count() const {
    const PositionTables& t = problem_.positions;
    if (t.period == 0) return problem_.layout.pieces();
    const int64_t outer = problem_.layout.rows / problem_.layout.channels;
    return (outer + t.rows_per_piece - 1) / t.rows_per_piece * t.period;
  }

  // Channel of partial sum i: the piece's row with row tables, the position's with positions.
  int64_t channel_of_partial(int64_t i) const {
    const PositionTables& t = problem_.positions;
    if (t.period > 0) return (i % t.period) / problem_.layout.inner;
    return (i / problem_.layout.chunks_per_row()) % problem_.layout.channels;
  }

 private:
  void expand_to_positions(int64_t period) {
    const RowLayout& layout = problem_.layout;
    positions_.resize(3 * period);
    for (int64_t pos = 0; pos < period; ++pos) {
      const int64_t c = pos / layout.inner;
      positions_[pos] = problem_.scale[c];
      positions_[period + pos] = inv_scale_[c];
      positions_[2 * period + pos] = problem_.zero_point[c];
    }
    const int64_t outer = layout.rows / layout.channels;
    const int64_t groups = std::min(outer, kMaxRowGroups);
    problem_.positions = {positions_.data(), positions_.data() + period,
                          positions_.data() + 2 * period, period, (outer + groups - 1) / groups};
  }

  std::vector<float> scale_used_, zero_point_, inv_scale_, positions_;
  AffineProblem problem_{};
};

// Sums partials per channel in a fixed order, in double, scaled by `factor`: float32
// (channels,). channel_of(i) is the channel of partial i.
template <typename ChannelOf>
at::Tensor reduce_partials(const std::vector<float>& partials, int64_t channels,
                           const ChannelOf& channel_of, double factor) {
  at::Tensor result = at::empty({channels}, at::TensorOptions().dtype(at::kFloat));
  std::vector<double> sums(channels, 0.0);
  for (size_t i = 0; i < partials.size(); ++i)
    sums[channel_of(static_cast<int64_t>(i))] += partials[i];
  float* out = result.mutable_data_ptr<float>();
  for (int64_t c = 0; c < channels; ++c) out[c] = static_cast<float>(sums[c] * factor);
  return result;
}

at::Tensor affine_forward_cpu(const at::Tensor& x, const at::Tensor& scale,
                              const at::Tensor& zero_point, int64_t quant_min, int64_t quant_max,
                              c10::optional<int64_t> axis) {
  const AffineCall call("fake_quant_affine_forward", x, scale, zero_point, quant_min, quant_max,
                        axis);
  const at::Tensor x_c = x.contiguous();
  at::Tensor out = empty_like_fresh(x_c);
  if (x_c.numel() != 0)
    kernels().affine_forward(call.problem(), x_c.const_data_ptr(), out.mutable_data_ptr());
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> affine_backward_cpu(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& scale,
    const at::Tensor& zero_point, int64_t quant_min, int64_t quant_max, c10::optional<int64_t> axis,
    bool scale_grad, bool zero_point_grad) {
  const char* op = "fake_quant_affine_backward";
  const AffineCall call(op, x, scale, zero_point, quant_min, quant_max, axis);
  check_act_quant_grad(op, grad_out, x);
  TORCH_CHECK_VALUE(!zero_point_grad || at::isFloatingType(zero_point.scalar_type()), op,
                    ": zero_point must be floating to receive a gradient (a learned zero point)");
  const AffineProblem& p = call.problem();
  const at::Tensor x_c = x.contiguous(), grad_c = grad_out.contiguous();
  at::Tensor dx = empty_like_fresh(x_c);
  const int64_t channels = p.layout.channels;
  const int64_t numel_per_scale = channels == 0 ? 0 : x_c.numel() / channels;
  const double g = (scale_grad || zero_point_grad) && numel_per_scale > 0
                       ? lsq_grad_scale(op, numel_per_scale, quant_max)
                       : 0.0;
  std::vector<float> dscale_partials(scale_grad ? call.partial_count() : 0);
  std::vector<float> dzp_partials(zero_point_grad ? call.partial_count() : 0);
  if (x_c.numel() != 0) {
    kernels().affine_backward(p, grad_c.const_data_ptr(), x_c.const_data_ptr(),
                              dx.mutable_data_ptr(), scale_grad ? dscale_partials.data() : nullptr,
                              zero_point_grad ? dzp_partials.data() : nullptr);
  }
  const auto no_grad = [&] { return at::zeros({channels}, at::TensorOptions().dtype(at::kFloat)); };
  const auto channel_of = [&](int64_t i) { return call.channel_of_partial(i); };
  return {dx, scale_grad ? reduce_partials(dscale_partials, channels, channel_of, g) : no_grad(),
          zero_point_grad ? reduce_partials(dzp_partials, channels, channel_of, g) : no_grad()};
}

// LSQ with a learned step used as max(|step|, 1e-8) (csrc/train.cpp): the affine kernels on
// the positive step, computed here on the host, so that a training call is one op each way.
at::Tensor lsq_train_cpu(const at::Tensor& x, const at::Tensor& step, const at::Tensor& zero_point,
                         int64_t quant_min, int64_t quant_max, c10::optional<int64_t> axis) {
  const AffineCall call("lsq_train", x, step, zero_point, quant_min, quant_max, axis, true);
  const at::Tensor x_c = x.contiguous();
  at::Tensor out = empty_like_fresh(x_c);
  if (x_c.numel() != 0)
    kernels().affine_forward(call.problem(), x_c.const_data_ptr(), out.mutable_data_ptr());
  return out;
}

// (dx, dstep): dstep_c = the LSQ gradient to the step used times d max(|s|, 1e-8) / ds, which is
// sign(s_c) where |s_c| >= 1e-8 and 0 below; step's dtype and shape, zeros unless step_grad.
std::tuple<at::Tensor, at::Tensor> lsq_train_backward_cpu(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& step,
    const at::Tensor& zero_point, int64_t quant_min, int64_t quant_max, c10::optional<int64_t> axis,
    bool step_grad) {
  const char* op = "lsq_train_backward";
  const AffineCall call(op, x, step, zero_point, quant_min, quant_max, axis, true);
  check_act_quant_grad(op, grad_out, x);
  const AffineProblem& p = call.problem();
  const at::Tensor x_c = x.contiguous(), grad_c = grad_out.contiguous();
  at::Tensor dx = empty_like_fresh(x_c);
  const int64_t channels = p.layout.channels;
  std::vector<float> partials(step_grad ? call.partial_count() : 0);
  if (x_c.numel() != 0) {
    kernels().affine_backward(p, grad_c.const_data_ptr(), x_c.const_data_ptr(),
                              dx.mutable_data_ptr(), step_grad ? partials.data() : nullptr,
                              nullptr);
  }
  if (!step_grad) return {dx, at::zeros_like(step)};
  const int64_t numel_per_scale = channels == 0 ? 0 : x_c.numel() / channels;
  const double g = numel_per_scale > 0 ? lsq_grad_scale(op, numel_per_scale, quant_max) : 0.0;
  const at::Tensor sums =
      reduce_partials(partials, channels, [&](int64_t i) { return call.channel_of_partial(i); }, g);
  const std::vector<float> s = float_values(step);
  const float* sum = sums.const_data_ptr<float>();
  // Written in step's shape, not a view of `sums`: autograd then keeps it as step.grad as is.
  at::Tensor dstep = at::empty(step.sizes(), step.options().dtype(at::kFloat));
  float* d = dstep.mutable_data_ptr<float>();
  for (int64_t c = 0; c < channels; ++c)
    d[c] = std::fabs(s[c]) >= kMinStep ? (s[c] > 0 ? sum[c] : -sum[c]) : 0.0f;
  return {dx, step.scalar_type() == at::kFloat ? dstep : dstep.to(step.scalar_type())};
}

// --- affine fake quant with its range taken in the same op (../train.cpp) -------------------
// The arithmetic is nn/quantizers.py's AffineActQuant / AffineWeightQuant, in float32, one rounding
// per operation (the file is compiled without FMA contraction; the EMA's lerp uses fma as ATen's
// does), NaN propagated as torch does.

float nan_min(float a, float b) { return std::isnan(a) || std::isnan(b) ? NAN : std::min(a, b); }
float nan_max(float a, float b) { return std::isnan(a) || std::isnan(b) ? NAN : std::max(a, b); }

// (min, max) of x's values (NaN if any is NaN), over rows of `inner` elements: (rows,) each.
std::pair<std::vector<float>, std::vector<float>> row_ranges(const at::Tensor& x_c, int64_t rows,
                                                             bool absolute) {
  const int64_t inner = rows == 0 ? 0 : x_c.numel() / rows;
  std::vector<float> lo(rows, INFINITY), hi(rows, -INFINITY);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x_c.scalar_type(), "row_ranges", [&] {
    const scalar_t* p = x_c.const_data_ptr<scalar_t>();
    for (int64_t r = 0; r < rows; ++r) {
      float l = INFINITY, h = -INFINITY;
      for (int64_t j = 0; j < inner; ++j) {
        float v = static_cast<float>(p[r * inner + j]);
        if (absolute) v = std::fabs(v);
        l = nan_min(l, v);
        h = nan_max(h, v);
      }
      lo[r] = l;
      hi[r] = h;
    }
  });
  return {lo, hi};
}

// torch.lerp on float32 as ATen's CPU kernel evaluates it (a fused multiply-add either side of
// weight 0.5), so that a running range matches the module's Python path bit for bit.
float lerp(float self, float end, float weight) {
  return std::fabs(weight) < 0.5f ? std::fma(weight, end - self, self)
                                  : std::fma(weight - 1.0f, end - self, end);
}

at::Tensor float_scalar(float v) {
  at::Tensor t = at::empty({}, at::TensorOptions().dtype(at::kFloat));
  *t.mutable_data_ptr<float>() = v;
  return t;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> affine_act_train_cpu(
    const at::Tensor& x, at::Tensor& min_val, at::Tensor& max_val, int64_t quant_max, bool ema,
    double averaging_constant, bool first, bool observe) {
  constexpr const char* kOp = "affine_act_train";
  check_kernel_dtype(kOp, x);
  check_range_buffer(kOp, "min_val", min_val);
  check_range_buffer(kOp, "max_val", max_val);
  TORCH_CHECK_VALUE(quant_max >= 1 && quant_max <= kMaxCode, kOp,
                    ": quant_max must lie in [1, 2**24], got ", quant_max);
  const at::Tensor x_c = x.contiguous();
  float* mn = min_val.mutable_data_ptr<float>();
  float* mx = max_val.mutable_data_ptr<float>();
  if (observe) {
    TORCH_CHECK_VALUE(x_c.numel() > 0, kOp, ": x must not be empty to observe its range");
    const auto [lo, hi] = row_ranges(x_c, 1, false);
    const float c = static_cast<float>(averaging_constant);
    *mn = first ? lo[0] : ema ? lerp(*mn, lo[0], c) : nan_min(*mn, lo[0]);
    *mx = first ? hi[0] : ema ? lerp(*mx, hi[0], c) : nan_max(*mx, hi[0]);
  }
  // lo = min(min_val, 0), hi = max(max_val, 0), NaN kept; scale and zero point as the module's.
  const float lo = std::isnan(*mn) ? NAN : std::min(*mn, 0.0f);
  const float hi = std::isnan(*mx) ? NAN : std::max(*mx, 0.0f);
  const float q = static_cast<float>(quant_max);
  const float scale_value = nan_max((hi - lo) / q, std::numeric_limits<float>::epsilon());
  const float zp_value = std::min(std::max(std::nearbyint(-lo / scale_value), 0.0f), q);
  const at::Tensor scale = float_scalar(scale_value);
  at::Tensor zero_point = at::empty({}, at::TensorOptions().dtype(at::kInt));
  *zero_point.mutable_data_ptr<int32_t>() =
      std::isnan(zp_value) ? 0 : static_cast<int32_t>(zp_value);
  const AffineCall call(kOp, x_c, scale, zero_point, 0, quant_max, c10::nullopt);
  at::Tensor out = empty_like_fresh(x_c);
  if (x_c.numel() != 0)
    kernels().affine_forward(call.problem(), x_c.const_data_ptr(), out.mutable_data_ptr());
  return {out, scale, zero_point};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> affine_weight_train_cpu(const at::Tensor& w,
                                                                       int64_t quant_min,
                                                                       int64_t quant_max) {
  constexpr const char* kOp = "affine_weight_train";
  check_kernel_dtype(kOp, w);
  TORCH_CHECK_VALUE(w.dim() >= 1 && w.size(0) >= 1, kOp,
                    ": w must have an output-channel dim 0 of size >= 1, got shape ", w.sizes());
  TORCH_CHECK_VALUE(quant_max >= 1 && quant_max <= kMaxCode, kOp,
                    ": quant_max must lie in [1, 2**24], got ", quant_max);
  const at::Tensor w_c = w.contiguous();
  const int64_t channels = w_c.size(0);
  const std::vector<float> amax = row_ranges(w_c, channels, true).second;
  at::Tensor scale = at::empty({channels}, at::TensorOptions().dtype(at::kFloat));
  float* s = scale.mutable_data_ptr<float>();
  for (int64_t c = 0; c < channels; ++c)
    s[c] = nan_max(amax[c] / static_cast<float>(quant_max), std::numeric_limits<float>::epsilon());
  at::Tensor zero_point = at::zeros({channels}, at::TensorOptions().dtype(at::kInt));
  const AffineCall call(kOp, w_c, scale, zero_point, quant_min, quant_max, 0);
  at::Tensor out = empty_like_fresh(w_c);
  if (w_c.numel() != 0)
    kernels().affine_forward(call.problem(), w_c.const_data_ptr(), out.mutable_data_ptr());
  return {out, scale, zero_point};
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
      TORCH_CHECK_VALUE(b[i] >= kMinBits && b[i] <= kMaxBits, op, ": bits must lie in [", kMinBits,
                        ", ", kMaxBits, "], got ", b[i]);
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
  at::Tensor out = empty_like_fresh(x_c);
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
  at::Tensor dx = empty_like_fresh(x_c);
  std::vector<float> partials(call.problem().layout.pieces());
  if (x_c.numel() != 0) {
    kernels().sample_bits_backward(call.problem(), grad_c.const_data_ptr(), x_c.const_data_ptr(),
                                   dx.mutable_data_ptr(), partials.data());
  }
  const auto everything = [](int64_t) { return int64_t{0}; };  // dclip sums over every sample
  return {dx, reduce_partials(partials, 1, everything, 1.0).reshape({})};
}

}  // namespace
}  // namespace climbq::cpu

TORCH_LIBRARY_IMPL(climbq_native, CPU, m) {
  m.impl("fake_quant_affine_forward", &climbq::cpu::affine_forward_cpu);
  m.impl("fake_quant_affine_backward", &climbq::cpu::affine_backward_cpu);
  m.impl("lsq_train", &climbq::cpu::lsq_train_cpu);
  m.impl("lsq_train_backward", &climbq::cpu::lsq_train_backward_cpu);
  m.impl("affine_act_train", &climbq::cpu::affine_act_train_cpu);
  m.impl("affine_weight_train", &climbq::cpu::affine_weight_train_cpu);
  m.impl("fake_quant_per_sample_bits_forward", &climbq::cpu::sample_bits_forward_cpu);
  m.impl("fake_quant_per_sample_bits_backward", &climbq::cpu::sample_bits_backward_cpu);
}
