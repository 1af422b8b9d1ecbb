// ClimbQ activation quantizer kernels (algorithms.md §1a), vectorised with
// at::vec::Vectorized<float>.
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
#include <cmath>
#include <cstdint>
#include <type_traits>

#include "../vec_io.h"

namespace climbq::cpu::CPU_CAPABILITY {
namespace {

using vec_io::kLanes;
using vec_io::load_floats;
using vec_io::store_floats;
using vec_io::Vec;
// Fewest elements worth a parallel task: ATen's GRAIN_SIZE (32768) for a copy; erf costs
// more per element, so half of it still pays for the hand-off.
constexpr int64_t kGrainSize = 16384;

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

// The folded-BN affine over one run of elements that share a channel (per_lane false: one
// scale and shift for the run) or that step through the channels one by one (per_lane true:
// the channels-last layout, element k of the run in channel c0 + k). Identity without tables.
struct Affine {
  const float* scale = nullptr;
  const float* shift = nullptr;
  bool per_lane = false;

  Vec scale_at(int64_t k, int64_t n) const {
    return per_lane ? Vec::loadu(scale + k, n) : Vec(*scale);
  }
  Vec apply(const Vec& x, int64_t k, int64_t n) const {
    if (scale == nullptr) return x;
    const Vec shift_v = per_lane ? Vec::loadu(shift + k, n) : Vec(*shift);
    return at::vec::fmadd(x, scale_at(k, n), shift_v);
  }
};

// Calls fn(sample, begin, end, affine) over runs of the flat range in which the sample is fixed
// and the affine is either constant or steps one channel per element.
template <typename F>
void for_each_run(const ActQuantProblem& p, const F& fn) {
  for_each_sample_piece(p, [&](int64_t sample, int64_t begin, int64_t end) {
    if (p.bn_scale == nullptr) return fn(sample, begin, end, Affine{});
    const bool per_lane = p.channel_stride == 1;
    const int64_t period = per_lane ? p.channels : p.channel_stride;
    while (begin < end) {
      const int64_t run_end = std::min(end, (begin / period + 1) * period);
      const int64_t channel = per_lane ? begin % p.channels : (begin / period) % p.channels;
      fn(sample, begin, run_end, Affine{p.bn_scale + channel, p.bn_shift + channel, per_lane});
      begin = run_end;
    }
  });
}

// q = #{j : y > t_j}, +1 where y == t_j for an odd j (rint's half-to-even rule), by binary
// search over the N = 2^bits - 1 ascending thresholds; NaN stays NaN.
float bucket(float y, const float* t, int64_t bits) {
  if (std::isnan(y)) return y;
  int64_t below = 0;  // #{j : t_j < y}; every probe index stays below N
  for (int64_t step = int64_t{1} << (bits - 1); step > 0; step >>= 1) {
    if (t[below + step - 1] < y) below += step;
  }
  const int64_t levels = (int64_t{1} << bits) - 1;
  if (below < levels && t[below] == y && (below & 1)) ++below;
  return static_cast<float>(below);
}

// Up to this many bits (N <= 31 thresholds) bucketing compares every threshold vector-wide;
// above, each lane runs the binary search.
constexpr int64_t kMaxLinearBucketBits = 5;

// The code q of every lane of y: rint(Phi((y - mu)/sigma) N), or bucketing when thresholds
// are given (lane by lane: a gather per probe).
struct Coder {
  const ActQuantProblem& p;
  Vec mu, inv_sigma_sqrt2, half_levels;

  Coder(const ActQuantProblem& problem, const ActQuantSample& s)
      : p(problem), mu(s.mu), inv_sigma_sqrt2(s.inv_sigma_sqrt2), half_levels(problem.half_levels) {
  }

  Vec code(const Vec& y) const {
    if (p.thresholds == nullptr) {
      const Vec t = (y - mu) * inv_sigma_sqrt2;                          // z / sqrt(2)
      return at::vec::fmadd(t.erf(), half_levels, half_levels).round();  // rint(u N)
    }
    if (p.bits <= kMaxLinearBucketBits) return bucket_linear(y);
    __at_align__ float lanes[kLanes];
    y.store(lanes);
    for (int64_t j = 0; j < kLanes; ++j) lanes[j] = bucket(lanes[j], p.thresholds, p.bits);
    return Vec::loadu(lanes);
  }

  // The same count as `bucket`, a compare per threshold for all lanes at once: cheaper than
  // `bits` gathers while N is small.
  Vec bucket_linear(const Vec& y) const {
    const Vec one(1.0f);
    Vec q(0.0f);
    const int64_t levels = (int64_t{1} << p.bits) - 1;
    for (int64_t j = 0; j < levels; ++j) {
      const Vec t(p.thresholds[j]);
      q = q + ((y > t) & one);
      if (j & 1) q = q + ((y == t) & one);  // an odd threshold's tie counts as above it
    }
    return Vec::blendv(q, y, y.isnan());  // NaN stays NaN
  }
};

template <typename T>
void forward_typed(const ActQuantProblem& p, const T* x, T* out) {
  const Vec levels(p.levels), inv_levels(p.inv_levels), act_range(p.act_range), two(2.0f);
  const Vec zero(0.0f);
  for_each_run(p, [&](int64_t sample, int64_t begin, int64_t end, const Affine& affine) {
    const Coder coder(p, p.samples[sample]);
    const int64_t n = end - begin;
    int64_t k = 0;
    const auto out_of = [&](const Vec& xv, int64_t lanes) {
      const Vec code = coder.code(affine.apply(xv, k, lanes));
      // A (2q - N) / N: 2q - N is exact and N (1/N) rounds to 1, so q = 0 and q = N give
      // exactly -A and A, and codes q and N - q give exactly opposite outputs.
      const Vec value = at::vec::fmsub(code, two, levels) * inv_levels * act_range;
      return p.relu ? at::vec::maximum(value, zero) : value;
    };
    for (; k + kLanes <= n; k += kLanes) {
      store_floats(out_of(load_floats(x + begin + k, kLanes), kLanes), out + begin + k, kLanes);
    }
    if (k < n)
      store_floats(out_of(load_floats(x + begin + k, n - k), n - k), out + begin + k, n - k);
  });
}

template <typename T>
void codes_typed(const ActQuantProblem& p, const T* x, uint8_t* codes) {
  for_each_run(p, [&](int64_t sample, int64_t begin, int64_t end, const Affine& affine) {
    const Coder coder(p, p.samples[sample]);
    __at_align__ float lanes[kLanes];
    for (int64_t k = 0; k < end - begin; k += kLanes) {
      const int64_t n = std::min(kLanes, end - begin - k);
      coder.code(affine.apply(load_floats(x + begin + k, n), k, n)).store(lanes);
      for (int64_t j = 0; j < n; ++j) {
        codes[begin + k + j] = std::isnan(lanes[j]) ? 0 : static_cast<uint8_t>(lanes[j]);
      }
    }
  });
}

template <typename T>
void backward_typed(const ActQuantProblem& p, const T* grad_out, const T* x, T* dx) {
  const Vec zero(0.0f), half_levels(p.half_levels);
  for_each_run(p, [&](int64_t sample, int64_t begin, int64_t end, const Affine& affine) {
    const ActQuantSample& s = p.samples[sample];
    const Coder coder(p, s);
    const Vec mu(s.mu), inv_sigma_sqrt2(s.inv_sigma_sqrt2), dx_scale(s.dx_scale);
    const bool chain = p.chain_scale && affine.scale != nullptr;
    const int64_t n = end - begin;
    int64_t k = 0;
    const auto dx_of = [&](const Vec& g, const Vec& xv, int64_t lanes) {
      const Vec y = affine.apply(xv, k, lanes);
      const Vec t = (y - mu) * inv_sigma_sqrt2;
      Vec dy = g * ((t * t).neg().exp() * dx_scale);  // g * 2A phi(z) / sigma
      // ReLU passes the gradient where its input A (2q - N)/N is > 0, i.e. q > N/2.
      if (p.relu) dy = Vec::blendv(zero, dy, coder.code(y) > half_levels);
      return chain ? dy * affine.scale_at(k, lanes) : dy;
    };
    for (; k + kLanes <= n; k += kLanes) {
      const int64_t at = begin + k;
      store_floats(dx_of(load_floats(grad_out + at, kLanes), load_floats(x + at, kLanes), kLanes),
                   dx + at, kLanes);
    }
    if (k < n) {
      const int64_t at = begin + k;
      store_floats(dx_of(load_floats(grad_out + at, n - k), load_floats(x + at, n - k), n - k),
                   dx + at, n - k);
    }
  });
}

}  // namespace

void act_quant_forward(const ActQuantProblem& p, const void* x, void* out) {
  vec_io::dispatch_dtype(p.dtype, [&](auto tag) {
    using T = decltype(tag);
    forward_typed(p, static_cast<const T*>(x), static_cast<T*>(out));
  });
}

void act_quant_backward(const ActQuantProblem& p, const void* grad_out, const void* x, void* dx) {
  vec_io::dispatch_dtype(p.dtype, [&](auto tag) {
    using T = decltype(tag);
    backward_typed(p, static_cast<const T*>(grad_out), static_cast<const T*>(x),
                   static_cast<T*>(dx));
  });
}

void act_quant_codes(const ActQuantProblem& p, const void* x, uint8_t* codes) {
  vec_io::dispatch_dtype(p.dtype, [&](auto tag) {
    using T = decltype(tag);
    codes_typed(p, static_cast<const T*>(x), codes);
  });
}

}  // namespace climbq::cpu::CPU_CAPABILITY
