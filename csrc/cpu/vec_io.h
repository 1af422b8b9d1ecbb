// Float-vector loads and stores of float32/float16/bfloat16 buffers, and the dtype switch, for
// the kernels compiled once per instruction set (csrc/cpu/isa/*.cpp). Included inside
// namespace climbq::cpu::CPU_CAPABILITY so that each ISA gets its own copy (Vectorized<float>
// has a different width in each).
#pragma once

#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <c10/core/ScalarType.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Exception.h>
#include <c10/util/Half.h>

#include <cstdint>
#include <type_traits>

#ifndef CPU_CAPABILITY
#error "vec_io.h is for the per-ISA kernel files, compiled with -DCPU_CAPABILITY=<ISA>"
#endif

namespace climbq::cpu::CPU_CAPABILITY::vec_io {

using Vec = at::vec::Vectorized<float>;
constexpr int64_t kLanes = Vec::size();

// Loads n <= kLanes elements as floats (lanes past n are zero).
template <typename T>
inline Vec load_floats(const T* p, int64_t n) {
  if constexpr (std::is_same_v<T, float>) {
    return Vec::loadu(p, n);
  } else if (n == kLanes) {
    Vec v;
    at::vec::load_to_float<T>(p, v);
    return v;
  } else {
    __at_align__ float buf[kLanes] = {};
    for (int64_t j = 0; j < n; ++j) buf[j] = static_cast<float>(p[j]);
    return Vec::loadu(buf);
  }
}

// Stores the first n <= kLanes lanes, rounding to nearest even for Half and BFloat16.
template <typename T>
inline void store_floats(const Vec& v, T* p, int64_t n) {
  if constexpr (std::is_same_v<T, float>) {
    v.store(p, n);
  } else {
    at::vec::convert_from_float<T>(v, v).store(p, n);
  }
}

// The sum of a vector's lanes, added in float64 in lane order (deterministic).
inline double sum_lanes(const Vec& v) {
  __at_align__ float lanes[kLanes];
  v.store(lanes);
  double total = 0.0;
  for (int64_t j = 0; j < kLanes; ++j) total += lanes[j];
  return total;
}

// Calls f(T{}) for the kernel dtype `dtype` (float, Half, BFloat16).
template <typename F>
inline void dispatch_dtype(c10::ScalarType dtype, const F& f) {
  switch (dtype) {
    case c10::ScalarType::Float: return f(float{});
    case c10::ScalarType::Half: return f(c10::Half{});
    case c10::ScalarType::BFloat16: return f(c10::BFloat16{});
    default: TORCH_CHECK(false, "climbq CPU kernel: unsupported dtype ", dtype);
  }
}

}  // namespace climbq::cpu::CPU_CAPABILITY::vec_io
