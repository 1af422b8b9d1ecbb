// ClimbQ weight quantizer kernels (algorithms.md §1b; math in ../../climbq_weight.h), vectorised
// with at::vec::Vectorized<float>. Compiled once per instruction set like climbq_act_kernel.cpp.
//
// Reductions are two-level: float32 vector accumulators over blocks of kBlock elements (at
// most kBlock / lanes terms per lane), folded into float64 after each block; chunks of
// kChunk elements run in parallel and their float64 partials are added in chunk order, so
// the result does not depend on the number of threads.
#include "../climbq_weight_kernel.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#include "../vec_io.h"

namespace climbq::cpu::CPU_CAPABILITY {
namespace {

using vec_io::kLanes;
using vec_io::load_floats;
using vec_io::store_floats;
using vec_io::Vec;

constexpr int64_t kBlock = 1024;
constexpr int64_t kChunk = 64 * kBlock;
constexpr int64_t kGrainSize = 16384;  // elementwise: erf/exp cost more than a copy

// Adds f over [0, numel) in chunks: f(begin, end, acc_a, acc_b) accumulates one block into the
// float32 vectors; the blocks are folded into float64 as described above.
template <typename F>
PairSums blocked_sums(int64_t numel, const F& f) {
  const int64_t chunks = (numel + kChunk - 1) / kChunk;
  std::vector<PairSums> partial(chunks);
  at::parallel_for(0, chunks, 1, [&](int64_t first, int64_t last) {
    for (int64_t c = first; c < last; ++c) {
      PairSums sums;
      const int64_t chunk_end = std::min(numel, (c + 1) * kChunk);
      for (int64_t begin = c * kChunk; begin < chunk_end; begin += kBlock) {
        Vec acc_a(0.0f), acc_b(0.0f);
        f(begin, std::min(chunk_end, begin + kBlock), acc_a, acc_b);
        sums.a += vec_io::sum_lanes(acc_a);
        sums.b += vec_io::sum_lanes(acc_b);
      }
      partial[c] = sums;
    }
  });
  PairSums total;
  for (const PairSums& s : partial) {
    total.a += s.a;
    total.b += s.b;
  }
  return total;
}

// Lanes past n are masked out of a partial vector (load_floats zero-fills them, but a zero
// input does not give a zero term once shifted).
Vec live_lanes(const Vec& v, int64_t n) { return n == kLanes ? v : Vec::set(Vec(0.0f), v, n); }

template <typename T>
PairSums shifted_sums_typed(const T* w, int64_t numel, float shift) {
  const Vec s(shift);
  return blocked_sums(numel, [&](int64_t begin, int64_t end, Vec& acc_a, Vec& acc_b) {
    for (int64_t j = begin; j < end; j += kLanes) {
      const int64_t n = std::min(kLanes, end - j);
      const Vec d = live_lanes(load_floats(w + j, n) - s, n);
      acc_a = acc_a + d;
      acc_b = at::vec::fmadd(d, d, acc_b);
    }
  });
}

template <typename T>
PairSums grad_sums_typed(const WeightPass& p, const T* g, const T* w) {
  const Vec mean(p.mean), inv_std_sqrt2(p.inv_std_sqrt2);
  return blocked_sums(p.numel, [&](int64_t begin, int64_t end, Vec& acc_a, Vec& acc_b) {
    for (int64_t j = begin; j < end; j += kLanes) {
      const int64_t n = std::min(kLanes, end - j);
      const Vec t = (load_floats(w + j, n) - mean) * inv_std_sqrt2;
      // Zero-filled g: dead lanes add 0.
      const Vec ge = load_floats(g + j, n) * (t * t).neg().exp();
      acc_a = acc_a + ge;
      acc_b = at::vec::fmadd(ge, t, acc_b);
    }
  });
}

// out[j] = f(lanes of a[j..], b[j..]) over [0, numel) in parallel; b may be null.
template <typename T, typename F>
void elementwise(int64_t numel, const T* a, const T* b, T* out, const F& f) {
  at::parallel_for(0, numel, kGrainSize, [&](int64_t begin, int64_t end) {
    for (int64_t j = begin; j < end; j += kLanes) {
      const int64_t n = std::min(kLanes, end - j);
      const Vec bv = b == nullptr ? Vec(0.0f) : load_floats(b + j, n);
      store_floats(f(load_floats(a + j, n), bv), out + j, n);
    }
  });
}

template <typename T>
void forward_typed(const WeightPass& p, const T* w, T* out) {
  const Vec mean(p.mean), inv_std_sqrt2(p.inv_std_sqrt2), levels(p.levels);
  const Vec half_levels(p.half_levels), inv_levels(p.inv_levels), two(2.0f);
  elementwise(p.numel, w, static_cast<const T*>(nullptr), out, [&](const Vec& wv, const Vec&) {
    const Vec t = (wv - mean) * inv_std_sqrt2;
    const Vec code = at::vec::fmadd(t.erf(), half_levels, half_levels).round();  // rint(Phi(z) N)
    // (2q - N)/N: exactly -1 and 1 at the ends.
    return at::vec::fmsub(code, two, levels) * inv_levels;
  });
}

template <typename T>
void backward_typed(const WeightPass& p, const T* g, const T* w, T* dw) {
  const Vec mean(p.mean), inv_std_sqrt2(p.inv_std_sqrt2);
  const Vec g_scale(p.g_scale), offset(p.offset), t_scale(p.t_scale);
  elementwise(p.numel, w, g, dw, [&](const Vec& wv, const Vec& gv) {
    const Vec t = (wv - mean) * inv_std_sqrt2;
    return at::vec::fmadd(gv * g_scale, (t * t).neg().exp(), at::vec::fmadd(t, t_scale, offset));
  });
}

}  // namespace

PairSums weight_shifted_sums(c10::ScalarType dtype, const void* w, int64_t numel, float shift) {
  PairSums sums;
  vec_io::dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    sums = shifted_sums_typed(static_cast<const T*>(w), numel, shift);
  });
  return sums;
}

PairSums weight_grad_sums(const WeightPass& p, const void* grad_out, const void* w) {
  PairSums sums;
  vec_io::dispatch_dtype(p.dtype, [&](auto tag) {
    using T = decltype(tag);
    sums = grad_sums_typed(p, static_cast<const T*>(grad_out), static_cast<const T*>(w));
  });
  return sums;
}

void weight_quant_forward(const WeightPass& p, const void* w, void* out) {
  vec_io::dispatch_dtype(p.dtype, [&](auto tag) {
    using T = decltype(tag);
    forward_typed(p, static_cast<const T*>(w), static_cast<T*>(out));
  });
}

void weight_quant_backward(const WeightPass& p, const void* grad_out, const void* w, void* dw) {
  vec_io::dispatch_dtype(p.dtype, [&](auto tag) {
    using T = decltype(tag);
    backward_typed(p, static_cast<const T*>(grad_out), static_cast<const T*>(w),
                   static_cast<T*>(dw));
  });
}

}  // namespace climbq::cpu::CPU_CAPABILITY
