// Uniform fake quantization (algorithms.md §1e: affine per tensor / per channel, LSQ gradients) and
// per-sample bit-width fake quant (algorithms.md §3a, DynaDFQ): what the CPU and CUDA backends
// share, the view of x as rows and the argument checks (csrc/cpu/fake_quant.cpp,
// csrc/cuda/fake_quant.cu). The math is documented where it is evaluated, in
// csrc/cpu/isa/fake_quant_kernel.cpp; climbq_kernels/reference/{fake_quant,dynamic_bits}.py is
// its specification.
//
// The checks raise ValueError (TORCH_CHECK_VALUE) or TypeError (TORCH_CHECK_TYPE) in Python,
// like the Python layer that runs first.
//
// Both op families view x (contiguous) as `rows` rows of `inner` consecutive elements; row r
// uses entry r % `channels` of the per-channel tables (per tensor: one row, one channel; per
// channel along axis a: rows = prod(shape[:a+1]), inner = prod(shape[a+1:]); per sample:
// rows = channels = B). Each row is cut into chunks of at most `chunk` elements, the "pieces"
// of a parallel loop; a backward writes one partial sum per piece, reduced afterwards per
// channel in a fixed order, so gradients do not depend on the thread count. (The CPU runs
// per-channel rows shorter than 16 elements on position tables instead: see
// csrc/cpu/fake_quant_kernel.h.)
#pragma once

#include "climbq_act.h"

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <c10/util/Optional.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>

namespace climbq {

struct RowLayout {
  int64_t rows = 0;
  int64_t channels = 1;
  int64_t inner = 0;
  int64_t chunk = 1;
  int64_t chunks_per_row() const { return inner == 0 ? 0 : (inner + chunk - 1) / chunk; }
  int64_t pieces() const { return rows * chunks_per_row(); }
};

// Mirrors _MAX_CODE in climbq_kernels/reference/fake_quant.py: every code is an exact float.
constexpr int64_t kMaxCode = int64_t{1} << 24;

// How the zero point enters the code, as in torch's kernels (reference `_pre_clamp`):
// integer zp: rint(x * inv_scale) + zp; float32 zp: rint(fma(x, inv_scale, zp));
// any other floating zp: rint(x * inv_scale + zp) with the add rounded on its own.
enum class ZeroPointMode : int32_t { kInteger = 0, kFusedFloat = 1, kFloat = 2 };

inline void check_kernel_dtype(const char* op, const at::Tensor& x) {
  const auto dtype = x.scalar_type();
  TORCH_CHECK_TYPE(dtype == at::kFloat || dtype == at::kHalf || dtype == at::kBFloat16, op,
                   ": x must be float32, float16 or bfloat16, got ", dtype);
}

inline void check_on(const char* op, const char* name, const at::Tensor& t, const at::Tensor& x,
                     c10::DeviceType device_type) {
  TORCH_CHECK_VALUE(t.device() == x.device(), op, ": ", name, " must be on x's device ", x.device(),
                    ", got ", t.device());
  TORCH_CHECK_VALUE(t.device().type() == device_type, op, ": expected tensors on a ",
                    c10::DeviceTypeName(device_type), " device, got ", t.device());
}

// Checks the affine fake quant arguments and returns x's row layout (chunk left to the caller).
inline RowLayout check_affine_args(const char* op, const at::Tensor& x, const at::Tensor& scale,
                                   const at::Tensor& zero_point, int64_t quant_min,
                                   int64_t quant_max, c10::optional<int64_t> axis,
                                   c10::DeviceType device_type) {
  check_kernel_dtype(op, x);
  TORCH_CHECK_VALUE(quant_min <= quant_max, op, ": quant_min must be <= quant_max, got ", quant_min,
                    " > ", quant_max);
  TORCH_CHECK_VALUE(std::llabs(quant_min) <= kMaxCode && std::llabs(quant_max) <= kMaxCode, op,
                    ": quant_min and quant_max must lie in [-2**24, 2**24], got [", quant_min, ", ",
                    quant_max, "]");
  TORCH_CHECK_TYPE(at::isFloatingType(scale.scalar_type()), op, ": scale must be floating, got ",
                   scale.scalar_type());
  TORCH_CHECK_TYPE(
      zero_point.scalar_type() != at::kBool && !at::isComplexType(zero_point.scalar_type()), op,
      ": zero_point must be an integer or floating tensor, got ", zero_point.scalar_type());
  check_on(op, "x", x, x, device_type);
  check_on(op, "scale", scale, x, device_type);
  check_on(op, "zero_point", zero_point, x, device_type);
  RowLayout layout;
  if (!axis.has_value()) {
    TORCH_CHECK_VALUE(scale.numel() == 1 && zero_point.numel() == 1, op,
                      ": per-tensor fake quant needs one scale and one zero_point, got ",
                      scale.numel(), " and ", zero_point.numel());
    layout.rows = x.numel() == 0 ? 0 : 1;
    layout.inner = x.numel();
    return layout;
  }
  const int64_t dims = x.dim();
  const int64_t a = *axis;
  TORCH_CHECK_VALUE(-dims <= a && a < dims, op, ": axis must lie in [", -dims, ", ", dims,
                    "), got ", a);
  const int64_t ax = a < 0 ? a + dims : a;
  layout.channels = x.size(ax);
  TORCH_CHECK_VALUE(scale.dim() == 1 && scale.size(0) == layout.channels && zero_point.dim() == 1 &&
                        zero_point.size(0) == layout.channels,
                    op, ": scale and zero_point must have shape (", layout.channels,
                    ",) (one per channel along axis ", ax, "), got ", scale.sizes(), " and ",
                    zero_point.sizes());
  layout.inner = 1;
  for (int64_t d = ax + 1; d < dims; ++d) layout.inner *= x.size(d);
  layout.rows = layout.inner == 0 ? 0 : x.numel() / layout.inner;
  return layout;
}

inline ZeroPointMode zero_point_mode(const at::Tensor& zero_point) {
  if (!at::isFloatingType(zero_point.scalar_type())) return ZeroPointMode::kInteger;
  return zero_point.scalar_type() == at::kFloat ? ZeroPointMode::kFusedFloat
                                                : ZeroPointMode::kFloat;
}

// torch forms the per-channel output (clamp(q) - zp) * scale in double. With an integer zero
// point and quant_max - quant_min <= 2**24 the difference is an exact float and its product
// with a float scale is exact in double, so float32 arithmetic gives the same bits; otherwise
// the kernels evaluate it in double.
inline bool needs_double_product(bool per_channel, ZeroPointMode mode, int64_t quant_min,
                                 int64_t quant_max) {
  return per_channel && (mode != ZeroPointMode::kInteger || quant_max - quant_min > kMaxCode);
}

// LSQ gradient scale g = 1 / sqrt(numel_per_scale * quant_max) (algorithms.md §1e).
inline double lsq_grad_scale(const char* op, int64_t numel_per_scale, int64_t quant_max) {
  TORCH_CHECK_VALUE(quant_max >= 1, op, ": quant_max must be >= 1 for a learned scale, got ",
                    quant_max);
  return 1.0 / std::sqrt(static_cast<double>(numel_per_scale) * static_cast<double>(quant_max));
}

// A running range buffer of the observed affine ops: one float32 element on x's CPU device.
inline void check_range_buffer(const char* op, const char* name, const at::Tensor& t) {
  TORCH_CHECK_VALUE(t.scalar_type() == at::kFloat && t.numel() == 1 && t.is_contiguous(), op, ": ",
                    name, " must be a one-element contiguous float32 tensor, got ", t.scalar_type(),
                    " of shape ", t.sizes());
}

// Checks x (B, ...), bits (B,) integer and clip (one floating element) on `device_type`.
inline void check_sample_bits_args(const char* op, const at::Tensor& x, const at::Tensor& bits,
                                   const at::Tensor& clip, c10::DeviceType device_type) {
  check_kernel_dtype(op, x);
  TORCH_CHECK_VALUE(x.dim() >= 1, op, ": x must have shape (B, ...), got a 0-dim tensor");
  TORCH_CHECK_TYPE(at::isIntegralType(bits.scalar_type(), /*includeBool=*/false), op,
                   ": bits must be an integer tensor, got ", bits.scalar_type());
  TORCH_CHECK_VALUE(bits.dim() == 1 && bits.size(0) == x.size(0), op, ": bits must have shape (",
                    x.size(0), ",) (one bit-width per sample), got ", bits.sizes());
  TORCH_CHECK_TYPE(at::isFloatingType(clip.scalar_type()) && clip.numel() == 1, op,
                   ": clip must be a one-element floating tensor, got ", clip.scalar_type(),
                   " of shape ", clip.sizes());
  check_on(op, "x", x, x, device_type);
  check_on(op, "bits", bits, x, device_type);
  check_on(op, "clip", clip, x, device_type);
}

}  // namespace climbq
