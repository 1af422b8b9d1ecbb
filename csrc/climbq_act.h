// ClimbQ activation quantizer (algorithms.md §1a): the math both backends implement and the
// argument checks they share (csrc/cpu/climbq_act.cpp, csrc/cuda/climbq_act.cu).
//
// Per element e of sample i, with N = 2^bits - 1 and A = act_range:
//   z = (x - mu_i) / sigma_i,  u = Phi(z) = 0.5 * (1 + erf(z / sqrt(2)))
//   q = rint(u * N)            (round half to even; the integer code, in [0, N])
//   out = A * (2 q / N - 1)
//   dx  = grad_out * 2 A * phi(z) / sigma_i     (straight-through on rint only)
// Both backends evaluate it in float32, whatever x's dtype, as
//   t = (x - mu_i) / (sigma_i sqrt(2))     (= z / sqrt(2), so erf(t) needs no rescaling)
//   u N = erf(t) N/2 + N/2,   out = A ((2q - N) / N),   dx = grad_out dx_scale_i exp(-t^2)
// with dx_scale_i = 2A / (sigma_i sqrt(2 pi)), and return x's dtype. 2q - N is exact, so the
// end codes give exactly -A and A, and codes q and N - q give exactly opposite outputs.
// Variants (the same kernels, chosen by the fused ops of csrc/climbq_act_fused.cpp):
//   - folded BatchNorm before: y = x * bn_scale[c] + bn_shift[c], c the channel (dim 1 of x, or
//     the last dim of a channels-last (B, H, W, C) view); the quantizer then reads y for x, and
//     dx = dy * bn_scale[c];
//   - ReLU after: out = max(out, 0), and dy is masked where out <= 0 (q <= N/2);
//   - inference bucketing: q = #{j : y > t_j} (+1 at y == t_j for odd j, rint's half-to-even
//     rule) against a sorted float32 table t (N,), with no erf; binary search in `bits` steps;
//   - integer codes: q itself as uint8 (bits <= 8), NaN giving code 0.
// sigma must be > 0 (not checked here: reading it costs a device sync on CUDA; the Python
// layer validates). NaN in x propagates to out and dx; x = +-inf gives out = +-A, dx = 0.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <cstdint>
#include <optional>

namespace climbq {

// Mirror MIN_BITS / MAX_BITS in climbq_kernels/constants.py (bits == 32, the identity, is
// handled in Python and never reaches a kernel).
constexpr int64_t kMinBits = 1;
constexpr int64_t kMaxBits = 16;

// The checks both backends run. `device_type` is the backend the caller implements, so a
// tensor on another device is reported instead of being read through a wrong pointer.
inline void check_act_quant_args(const char* op, const at::Tensor& x, const at::Tensor& sigma,
                                 const at::Tensor& mu, int64_t bits, double act_range,
                                 c10::DeviceType device_type) {
  TORCH_CHECK(bits >= kMinBits && bits <= kMaxBits, op, ": bits must be in [", kMinBits, ", ",
              kMaxBits, "], got ", bits);
  TORCH_CHECK(std::isfinite(act_range) && act_range > 0, op,
              ": act_range must be finite and > 0, got ", act_range);
  const auto dtype = x.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kHalf || dtype == at::kBFloat16, op,
              ": x must be float32, float16 or bfloat16, got ", dtype);
  TORCH_CHECK(x.dim() >= 1, op, ": x must have shape (B, ...) with at least one dimension, got a ",
              "0-dim tensor");
  const int64_t batch = x.size(0);
  const auto check_per_sample = [&](const char* name, const at::Tensor& t) {
    TORCH_CHECK(t.scalar_type() == at::kFloat, op, ": ", name,
                " must be a float32 tensor of per-sample values, got ", t.scalar_type());
    TORCH_CHECK(t.dim() == 1 && t.size(0) == batch, op, ": ", name, " must have shape (B,) = (",
                batch, ",) to match x of shape ", x.sizes(), ", got ", t.sizes());
    TORCH_CHECK(t.device() == x.device(), op, ": ", name, " must be on x's device ", x.device(),
                ", got ", t.device());
  };
  check_per_sample("sigma", sigma);
  check_per_sample("mu", mu);
  TORCH_CHECK(x.device().type() == device_type, op, ": expected tensors on a ",
              c10::DeviceTypeName(device_type), " device, got ", x.device());
}

// Integer codes q in [0, N] are stored as uint8, so the codes op takes bits <= 8; it has no
// output range, and passes this placeholder act_range to the shared checks.
constexpr int64_t kMaxCodeBits = 8;
constexpr double kCodesActRange = 1.0;

inline void check_act_codes_bits(const char* op, int64_t bits) {
  TORCH_CHECK(bits <= kMaxCodeBits, op, ": uint8 codes hold bits <= ", kMaxCodeBits, ", got ",
              bits);
}

// The optional tables of the fused ops: bn_scale and bn_shift (C,) float32 together or not
// at all, C = x.size(-1) when channels_last (x is the (B, H, W, C) view) else x.size(1);
// thresholds (N,) float32. All on x's device.
inline int64_t check_act_fused_tables(const char* op, const at::Tensor& x,
                                      const std::optional<at::Tensor>& bn_scale,
                                      const std::optional<at::Tensor>& bn_shift,
                                      const std::optional<at::Tensor>& thresholds, int64_t bits,
                                      bool channels_last) {
  TORCH_CHECK(bn_scale.has_value() == bn_shift.has_value(), op,
              ": bn_scale and bn_shift must be given together");
  int64_t channels = 1;
  if (bn_scale.has_value()) {
    TORCH_CHECK(x.dim() >= 2, op, ": a per-channel affine needs x of shape (B, C, ...), got ",
                x.sizes());
    channels = channels_last ? x.size(-1) : x.size(1);
  }
  const auto check_table = [&](const char* name, const at::Tensor& t, int64_t size) {
    TORCH_CHECK(t.scalar_type() == at::kFloat, op, ": ", name, " must be float32, got ",
                t.scalar_type());
    TORCH_CHECK(t.dim() == 1 && t.size(0) == size, op, ": ", name, " must have shape (", size,
                ",), got ", t.sizes());
    TORCH_CHECK(t.device() == x.device(), op, ": ", name, " must be on x's device ", x.device(),
                ", got ", t.device());
  };
  if (bn_scale.has_value()) {
    check_table("bn_scale", *bn_scale, channels);
    check_table("bn_shift", *bn_shift, channels);
  }
  if (thresholds.has_value()) check_table("thresholds", *thresholds, (int64_t{1} << bits) - 1);
  return channels;
}

// Elements between consecutive channels in x's memory: 1 for the channels-last view (and for
// (B, C)), else the product of the dims after the channel dim.
inline int64_t channel_stride(const at::Tensor& x, bool channels_last) {
  if (channels_last || x.dim() < 3) return 1;
  int64_t stride = 1;
  for (int64_t d = 2; d < x.dim(); ++d) stride *= x.size(d);
  return stride;
}

inline void check_act_quant_grad(const char* op, const at::Tensor& grad_out, const at::Tensor& x) {
  TORCH_CHECK(grad_out.sizes() == x.sizes(), op, ": grad_out must have x's shape ", x.sizes(),
              ", got ", grad_out.sizes());
  TORCH_CHECK(grad_out.scalar_type() == x.scalar_type(), op, ": grad_out must have x's dtype ",
              x.scalar_type(), ", got ", grad_out.scalar_type());
  TORCH_CHECK(grad_out.device() == x.device(), op, ": grad_out must be on x's device ", x.device(),
              ", got ", grad_out.device());
}

}  // namespace climbq
