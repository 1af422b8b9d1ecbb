// ClimbQ activation quantizer kernels (SPEC 1a), vectorised with at::vec::Vectorized<float>.
//
// setup.py compiles this file once per instruction set, each time with
// -DCPU_CAPABILITY=<ISA> -DCPU_CAPABILITY_<ISA> and that ISA's -m flags, so the functions land
// in namespace climbq::cpu::<ISA>; do not list this folder among the ordinary sources.
//
// Every element, the partial vector at the end of a segment included, goes through the same
// vector code, so results do not depend on where an element sits.
#include "../climbq_act_kernel.h"

#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Exception.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <type_traits>

namespace climbq::cpu::CPU_CAPABILITY {
namespace {

using Vec = at::vec::Vectorized<float>;
constexpr int64_t kLanes = Vec::size();
// Fewest elements worth a parallel task: ATen's GRAIN_SIZE (32768) for a copy; erf costs
// more per element, so half of it still pays for the hand-off.
constexpr int64_t kGrainSize = 16384;

// Loads n <= kLanes elements as floats (lanes past n are zero).
template <typename T>
Vec load_floats(const T* p, int64_t n) {
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
void store_floats(const Vec& v, T* p, int64_t n) {
  if constexpr (std::is_same_v<T, float>) {
    v.store(p, n);
  } else {
    at::vec::convert_from_float<T>(v, v).store(p, n);
  }
}

// out[j] = f(in[j]) for j < n, f mapping float vectors to float vectors.
template <typename T, typename F>
void map_unary(const T* in, T* out, int64_t n, const F& f) {
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes) {
    store_floats(f(load_floats(in + j, kLanes)), out + j, kLanes);
  }
  if (j < n) store_floats(f(load_floats(in + j, n - j)), out + j, n - j);
}

// out[j] = f(a[j], b[j]) for j < n.
template <typename T, typename F>
void map_binary(const T* a, const T* b, T* out, int64_t n, const F& f) {
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes) {
    store_floats(f(load_floats(a + j, kLanes), load_floats(b + j, kLanes)), out + j, kLanes);
  }
  if (j < n) store_floats(f(load_floats(a + j, n - j), load_floats(b + j, n - j)), out + j, n - j);
}

// Splits the flattened (batch, inner) range into parallel chunks and calls
// fn(sample, flat_begin, flat_end) for each piece of a chunk that lies in one sample, so the
// per-sample constants are loaded once per piece even when a chunk crosses samples.
template <typename F>
void for_each_sample_piece(const ActQuantProblem& p, const F& fn) {
  at::parallel_for(0, p.batch * p.inner, kGrainSize, [&](int64_t begin, int64_t end) {
    for (int64_t sample = begin / p.inner; begin < end; ++sample) {
      const int64_t piece_end = std::min(end, (sample + 1) * p.inner);
      fn(sample, begin, piece_end);
      begin = piece_end;
    }
  });
}

template <typename T>
void forward_typed(const ActQuantProblem& p, const T* x, T* out) {
  const Vec levels(p.levels), half_levels(p.half_levels), inv_levels(p.inv_levels);
  const Vec act_range(p.act_range), two(2.0f);
  for_each_sample_piece(p, [&](int64_t sample, int64_t begin, int64_t end) {
    const Vec mu(p.samples[sample].mu), inv_sigma_sqrt2(p.samples[sample].inv_sigma_sqrt2);
    const auto out_of = [&](const Vec& xv) {
      const Vec t = (xv - mu) * inv_sigma_sqrt2;                                // z / sqrt(2)
      const Vec code = at::vec::fmadd(t.erf(), half_levels, half_levels).round();  // rint(u N)
      // A (2q - N) / N: 2q - N is exact and N (1/N) rounds to 1, so q = 0 and q = N give
      // exactly -A and A, and codes q and N - q give exactly opposite outputs.
      return at::vec::fmsub(code, two, levels) * inv_levels * act_range;
    };
    map_unary(x + begin, out + begin, end - begin, out_of);
  });
}

template <typename T>
void backward_typed(const ActQuantProblem& p, const T* grad_out, const T* x, T* dx) {
  for_each_sample_piece(p, [&](int64_t sample, int64_t begin, int64_t end) {
    const ActQuantSample& s = p.samples[sample];
    const Vec mu(s.mu), inv_sigma_sqrt2(s.inv_sigma_sqrt2), dx_scale(s.dx_scale);
    const auto dx_of = [&](const Vec& g, const Vec& xv) {
      const Vec t = (xv - mu) * inv_sigma_sqrt2;
      return g * ((t * t).neg().exp() * dx_scale);  // g * 2A phi(z) / sigma
    };
    map_binary(grad_out + begin, x + begin, dx + begin, end - begin, dx_of);
  });
}

// Calls f(T{}) for the kernel dtype `dtype`.
template <typename F>
void dispatch_dtype(c10::ScalarType dtype, const F& f) {
  switch (dtype) {
    case c10::ScalarType::Float: return f(float{});
    case c10::ScalarType::Half: return f(c10::Half{});
    case c10::ScalarType::BFloat16: return f(c10::BFloat16{});
    default: TORCH_CHECK(false, "climbq CPU kernel: unsupported dtype ", dtype);
  }
}

}  // namespace

void act_quant_forward(const ActQuantProblem& p, const void* x, void* out) {
  dispatch_dtype(p.dtype, [&](auto tag) {
    using T = decltype(tag);
    forward_typed(p, static_cast<const T*>(x), static_cast<T*>(out));
  });
}

void act_quant_backward(const ActQuantProblem& p, const void* grad_out, const void* x, void* dx) {
  dispatch_dtype(p.dtype, [&](auto tag) {
    using T = decltype(tag);
    backward_typed(p, static_cast<const T*>(grad_out), static_cast<const T*>(x),
                   static_cast<T*>(dx));
  });
}

}  // namespace climbq::cpu::CPU_CAPABILITY
