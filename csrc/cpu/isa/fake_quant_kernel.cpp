// Uniform fake quant kernels, vectorised with at::vec::Vectorized<float> and compiled once per
// instruction set (see setup.py and csrc/cpu/isa/climbq_act_kernel.cpp).
//
// Affine (algorithms.md §1e; climbq_kernels/reference/fake_quant.py is the spec, torch the
// bit pattern):
//   v = x * inv_scale                        (float32, inv_scale = 1.0f / scale)
//   q = rint(v) + zp | rint(fma(x, inv_scale, zp)) | rint(v + zp)   (see ZeroPointMode)
//   out = (fmin(fmax(q, qmin), qmax) - zp) * scale   (float32, or double per channel where
//                                                      needs_double_product says so)
//   dx = grad * [qmin <= q <= qmax]
//   dscale partial = sum grad * (qmin - zp | qmax - zp | (q - zp) - v)   (below | above | in)
//   dzp partial    = sum grad * (-scale outside, 0 inside)
// Per-sample bits (algorithms.md §3a; reference/dynamic_bits.py), s = clip / L,
// c = min(max(x, 0), clip):
//   out = rint(c / s) * s
//   dx = grad * [0 <= x <= clip];  dclip partial = sum grad * ((rint(c/s) - c/s) / L inside,
//                                                             1 above clip, 0 below 0)
// Every element, the partial vector at a piece's end included, goes through the same vector
// code. Partial sums accumulate per lane in float32 over one piece (at most RowLayout::chunk
// elements) and are added across lanes in double.
#include "../fake_quant_kernel.h"

#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Exception.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cmath>
#include <type_traits>

#include "../vec_io.h"

namespace climbq::cpu::CPU_CAPABILITY {
namespace {

using vec_io::kLanes;
using vec_io::load_floats;
using vec_io::store_floats;
using vec_io::Vec;
constexpr int64_t kGrainSize = 32768;  // elements per parallel task, ATen's GRAIN_SIZE

// a * b + c rounded once. The DEFAULT build has no FMA instruction (at::vec::fmadd rounds twice
// there), so it goes lane by lane through std::fma.
Vec fused_multiply_add(const Vec& a, const Vec& b, const Vec& c) {
#if defined(CPU_CAPABILITY_DEFAULT)
  __at_align__ float va[kLanes], vb[kLanes], vc[kLanes];
  a.store(va);
  b.store(vb);
  c.store(vc);
  for (int64_t j = 0; j < kLanes; ++j) va[j] = std::fma(va[j], vb[j], vc[j]);
  return Vec::loadu(va);
#else
  return at::vec::fmadd(a, b, c);
#endif
}

// Calls fn(piece, row, flat_begin, flat_end) for every piece, in parallel.
template <typename F>
void for_each_piece(const RowLayout& layout, const F& fn) {
  const int64_t per_row = layout.chunks_per_row();
  const int64_t piece_len = std::max<int64_t>(1, std::min(layout.inner, layout.chunk));
  const int64_t grain = std::max<int64_t>(1, kGrainSize / piece_len);
  at::parallel_for(0, layout.pieces(), grain, [&](int64_t begin, int64_t end) {
    for (int64_t piece = begin; piece < end; ++piece) {
      const int64_t row = piece / per_row, k = piece % per_row;
      const int64_t row_begin = row * layout.inner;
      fn(piece, row, row_begin + k * layout.chunk,
         row_begin + std::min(layout.inner, (k + 1) * layout.chunk));
    }
  });
}

// One channel's constants, broadcast to vectors.
struct AffineChannel {
  Vec scale, inv_scale, zero_point, quant_min, quant_max;
  ZeroPointMode mode;

  AffineChannel(const AffineProblem& p, int64_t channel)
      : AffineChannel(p, Vec(p.scale[channel]), Vec(p.inv_scale[channel]),
                      Vec(p.zero_point[channel])) {}

  // Lane-wise constants (position tables).
  AffineChannel(const AffineProblem& p, const Vec& s, const Vec& inv, const Vec& zp)
      : scale(s), inv_scale(inv), zero_point(zp), quant_min(p.quant_min), quant_max(p.quant_max),
        mode(p.zp_mode) {}

  // The code before clamping, q; v = x * inv_scale is returned through `v`. Adding +0 to a
  // rounded floating code makes a zero code +0, as torch's is (-0 + 0 = +0).
  Vec code(const Vec& x, Vec& v) const {
    v = x * inv_scale;
    switch (mode) {
      case ZeroPointMode::kInteger: return v.round() + zero_point;
      case ZeroPointMode::kFusedFloat:
        return fused_multiply_add(x, inv_scale, zero_point).round() + Vec(0.0f);
      default: return (v + zero_point).round() + Vec(0.0f);
    }
  }

  // fmin(fmax(q, qmin), qmax): a NaN code becomes quant_min, as C's fmax does.
  Vec clamp(const Vec& q) const {
    const Vec low = Vec::blendv(quant_min, q, q >= quant_min);
    return Vec::blendv(quant_max, low, low <= quant_max);
  }

  // (clamped - zp) * scale, lane by lane in double where torch's product needs it.
  Vec output(const Vec& clamped, bool double_product) const {
    if (!double_product) return (clamped - zero_point) * scale;
    __at_align__ float c[kLanes], s[kLanes], zp[kLanes];
    clamped.store(c);
    scale.store(s);
    zero_point.store(zp);
    for (int64_t l = 0; l < kLanes; ++l) {
      c[l] = static_cast<float>((static_cast<double>(c[l]) - zp[l]) * static_cast<double>(s[l]));
    }
    return Vec::loadu(c);
  }

  // Adds this vector's backward: stores dx and accumulates the dscale / dzp terms.
  template <typename T>
  void backward(const T* grad_out, const T* x, T* dx, int64_t n, Vec* dscale_acc,
                Vec* dzp_acc) const {
    const Vec g = load_floats(grad_out, n);
    Vec v;
    const Vec q = code(load_floats(x, n), v);
    const Vec inside = (q >= quant_min) & (q <= quant_max);  // false for a NaN code
    store_floats(g * (inside & Vec(1.0f)), dx, n);
    if (dscale_acc != nullptr) {
      Vec term = (q - zero_point) - v;
      term = Vec::blendv(term, quant_max - zero_point, q > quant_max);
      term = Vec::blendv(term, quant_min - zero_point, q < quant_min);
      *dscale_acc = *dscale_acc + g * term;
    }
    if (dzp_acc != nullptr) *dzp_acc = *dzp_acc + g * Vec::blendv(scale.neg(), Vec(0.0f), inside);
  }
};

// Calls fn(piece, first_row, end_row) for the position-table pieces, in parallel.
template <typename F>
void for_each_row_group(const AffineProblem& p, const F& fn) {
  const PositionTables& t = p.positions;
  const int64_t outer = p.layout.rows / p.layout.channels;
  const int64_t pieces = (outer + t.rows_per_piece - 1) / t.rows_per_piece;
  at::parallel_for(0, pieces, 1, [&](int64_t begin, int64_t end) {
    for (int64_t piece = begin; piece < end; ++piece) {
      fn(piece, piece * t.rows_per_piece, std::min(outer, (piece + 1) * t.rows_per_piece));
    }
  });
}

// The lane-wise constants of positions [j, j + n) of the position tables.
AffineChannel position_constants(const AffineProblem& p, int64_t j, int64_t n) {
  const PositionTables& t = p.positions;
  return AffineChannel(p, Vec::loadu(t.scale + j, n), Vec::loadu(t.inv_scale + j, n),
                       Vec::loadu(t.zero_point + j, n));
}

template <typename T>
void affine_forward_positions(const AffineProblem& p, const T* x, T* out) {
  const int64_t period = p.positions.period;
  for_each_row_group(p, [&](int64_t, int64_t first_row, int64_t end_row) {
    for (int64_t j = 0; j < period; j += kLanes) {
      const int64_t n = std::min(kLanes, period - j);
      const AffineChannel ch = position_constants(p, j, n);
      for (int64_t row = first_row; row < end_row; ++row) {
        const int64_t at = row * period + j;
        Vec v;
        store_floats(ch.output(ch.clamp(ch.code(load_floats(x + at, n), v)), p.double_product),
                     out + at, n);
      }
    }
  });
}

template <typename T>
void affine_backward_positions(const AffineProblem& p, const T* grad_out, const T* x, T* dx,
                               float* dscale_partials, float* dzp_partials) {
  const int64_t period = p.positions.period;
  for_each_row_group(p, [&](int64_t piece, int64_t first_row, int64_t end_row) {
    for (int64_t j = 0; j < period; j += kLanes) {
      const int64_t n = std::min(kLanes, period - j);
      const AffineChannel ch = position_constants(p, j, n);
      Vec dscale_acc(0.0f), dzp_acc(0.0f);
      for (int64_t row = first_row; row < end_row; ++row) {
        const int64_t at = row * period + j;
        ch.backward(grad_out + at, x + at, dx + at, n, dscale_partials ? &dscale_acc : nullptr,
                    dzp_partials ? &dzp_acc : nullptr);
      }
      if (dscale_partials != nullptr) dscale_acc.store(dscale_partials + piece * period + j, n);
      if (dzp_partials != nullptr) dzp_acc.store(dzp_partials + piece * period + j, n);
    }
  });
}

template <typename T>
void affine_forward_typed(const AffineProblem& p, const T* x, T* out) {
  if (p.positions.period > 0) return affine_forward_positions(p, x, out);
  for_each_piece(p.layout, [&](int64_t, int64_t row, int64_t begin, int64_t end) {
    const AffineChannel ch(p, row % p.layout.channels);
    for (int64_t j = begin; j < end; j += kLanes) {
      const int64_t n = std::min(kLanes, end - j);
      Vec v;
      store_floats(ch.output(ch.clamp(ch.code(load_floats(x + j, n), v)), p.double_product),
                   out + j, n);
    }
  });
}

template <typename T>
void affine_backward_typed(const AffineProblem& p, const T* grad_out, const T* x, T* dx,
                           float* dscale_partials, float* dzp_partials) {
  if (p.positions.period > 0) {
    return affine_backward_positions(p, grad_out, x, dx, dscale_partials, dzp_partials);
  }
  for_each_piece(p.layout, [&](int64_t piece, int64_t row, int64_t begin, int64_t end) {
    const AffineChannel ch(p, row % p.layout.channels);
    Vec dscale_acc(0.0f), dzp_acc(0.0f);
    for (int64_t j = begin; j < end; j += kLanes) {
      ch.backward(grad_out + j, x + j, dx + j, std::min(kLanes, end - j),
                  dscale_partials ? &dscale_acc : nullptr, dzp_partials ? &dzp_acc : nullptr);
    }
    if (dscale_partials != nullptr)
      dscale_partials[piece] = static_cast<float>(vec_io::sum_lanes(dscale_acc));
    if (dzp_partials != nullptr)
      dzp_partials[piece] = static_cast<float>(vec_io::sum_lanes(dzp_acc));
  });
}

template <typename T>
void sample_bits_forward_typed(const SampleBitsProblem& p, const T* x, T* out) {
  const Vec zero(0.0f), clip(p.clip);
  for_each_piece(p.layout, [&](int64_t, int64_t row, int64_t begin, int64_t end) {
    const Vec step(p.step[row]);
    for (int64_t j = begin; j < end; j += kLanes) {
      const int64_t n = std::min(kLanes, end - j);
      const Vec clamped = at::vec::minimum(at::vec::maximum(load_floats(x + j, n), zero), clip);
      store_floats((clamped / step).round() * step, out + j, n);
    }
  });
}

template <typename T>
void sample_bits_backward_typed(const SampleBitsProblem& p, const T* grad_out, const T* x, T* dx,
                                float* dclip_partials) {
  const Vec zero(0.0f), one(1.0f), clip(p.clip);
  for_each_piece(p.layout, [&](int64_t piece, int64_t row, int64_t begin, int64_t end) {
    const Vec step(p.step[row]), levels(p.levels[row]);
    Vec dclip_acc(0.0f);
    for (int64_t j = begin; j < end; j += kLanes) {
      const int64_t n = std::min(kLanes, end - j);
      const Vec g = load_floats(grad_out + j, n), xv = load_floats(x + j, n);
      const Vec inside = (xv >= zero) & (xv <= clip);  // false for NaN
      const Vec above = xv > clip;
      store_floats(g * (inside & one), dx + j, n);
      if (dclip_partials != nullptr) {
        const Vec v = at::vec::minimum(at::vec::maximum(xv, zero), clip) / step;
        const Vec term = Vec::blendv(above & one, (v.round() - v) / levels, inside);
        dclip_acc = dclip_acc + g * term;
      }
    }
    if (dclip_partials != nullptr)
      dclip_partials[piece] = static_cast<float>(vec_io::sum_lanes(dclip_acc));
  });
}

}  // namespace

void affine_forward(const AffineProblem& p, const void* x, void* out) {
  vec_io::dispatch_dtype(p.dtype, [&](auto tag) {
    using T = decltype(tag);
    affine_forward_typed(p, static_cast<const T*>(x), static_cast<T*>(out));
  });
}

void affine_backward(const AffineProblem& p, const void* grad_out, const void* x, void* dx,
                     float* dscale_partials, float* dzero_point_partials) {
  vec_io::dispatch_dtype(p.dtype, [&](auto tag) {
    using T = decltype(tag);
    affine_backward_typed(p, static_cast<const T*>(grad_out), static_cast<const T*>(x),
                          static_cast<T*>(dx), dscale_partials, dzero_point_partials);
  });
}

void sample_bits_forward(const SampleBitsProblem& p, const void* x, void* out) {
  vec_io::dispatch_dtype(p.dtype, [&](auto tag) {
    using T = decltype(tag);
    sample_bits_forward_typed(p, static_cast<const T*>(x), static_cast<T*>(out));
  });
}

void sample_bits_backward(const SampleBitsProblem& p, const void* grad_out, const void* x, void* dx,
                          float* dclip_partials) {
  vec_io::dispatch_dtype(p.dtype, [&](auto tag) {
    using T = decltype(tag);
    sample_bits_backward_typed(p, static_cast<const T*>(grad_out), static_cast<const T*>(x),
                               static_cast<T*>(dx), dclip_partials);
  });
}

}  // namespace climbq::cpu::CPU_CAPABILITY
