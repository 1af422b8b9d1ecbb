// Class-segmented statistics kernel (algorithms.md §1c, §4a), compiled once per
// instruction set like climbq_act_kernel.cpp. See ../class_stats_kernel.h for the accumulation.
//
// Threads own disjoint feature ranges and visit the samples in order, so no two threads touch
// one accumulator and the result does not depend on the number of threads. A row of
// positions > 1 elements (a channel of one sample) is first summarised by two passes over its
// values less its first element (the row mean in float64, then the squared deviations from it
// in float32 vectors), then merged in float64.
#include "../class_stats_kernel.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>

#include "../vec_io.h"

namespace climbq::cpu::CPU_CAPABILITY {
namespace {

using vec_io::kLanes;
using vec_io::load_floats;
using vec_io::Vec;

// Fewest elements per parallel task.
constexpr int64_t kGrainElements = 32768;

// Mean (float64) and sum of squared deviations (float32) of row[0..n), n >= 1. The mean is
// accumulated in float64 (§4a) relative to row[0], in 16 interleaved sums (a fixed order, so
// the result is the same on every run); the squared deviations from it are a float32 vector pass.
template <typename T>
void row_summary(const T* row, int64_t n, double& mean, float& m2) {
  const float raw = static_cast<float>(row[0]);
  const float first = std::isfinite(raw) ? raw : 0.0f;  // a NaN/Inf shift would void the whole row
  // kSums independent sums: the compiler turns them into float64 vectors whose adds overlap.
  constexpr int kSums = 16;
  double sums[kSums] = {};
  int64_t i = 0;
  for (; i + kSums <= n; i += kSums)
    for (int k = 0; k < kSums; ++k)
      sums[k] += static_cast<double>(static_cast<float>(row[i + k])) - first;
  for (; i < n; ++i) sums[0] += static_cast<double>(static_cast<float>(row[i])) - first;
  for (int width = kSums / 2; width > 0; width /= 2)
    for (int k = 0; k < width; ++k) sums[k] += sums[k + width];
  const double mean_shifted = sums[0] / static_cast<double>(n);
  mean = static_cast<double>(first) + mean_shifted;
  const Vec shift(first);
  const Vec centre(static_cast<float>(mean_shifted));
  Vec sq(0.0f);
  for (int64_t j = 0; j < n; j += kLanes) {
    const int64_t live = std::min(kLanes, n - j);
    Vec d = (load_floats(row + j, live) - shift) - centre;  // x - mean without rounding the mean
    if (live < kLanes) d = Vec::set(Vec(0.0f), d, live);
    sq = at::vec::fmadd(d, d, sq);
  }
  m2 = static_cast<float>(vec_io::sum_lanes(sq));
}

// Merges a row of n_b elements with mean row_mean and M2 row_m2 into (mean, m2), which
// summarise n_a elements.
inline void chan_merge(double& mean, double& m2, double n_a, double n_b, double row_mean,
                       double row_m2) {
  const double n = n_a + n_b;
  const double delta = row_mean - mean;
  // Once an Inf is in, the mean is not finite: add the values (Inf + finite = Inf, Inf - Inf and
  // NaN give NaN), as the reference's sum does; the variance is NaN then
  // (csrc/cpu/class_stats.cpp).
  mean = std::isfinite(mean) ? mean + delta * (n_b / n) : mean + row_mean;
  m2 += row_m2 + delta * delta * (n_a * n_b / n);
}

template <typename T>
void accumulate_typed(const SegmentProblem& p, const T* x) {
  const int64_t row_work = std::max<int64_t>(1, p.batch * p.positions);
  const int64_t grain = std::max<int64_t>(1, kGrainElements / row_work);
  at::parallel_for(0, p.features, grain, [&](int64_t f_begin, int64_t f_end) {
    for (int64_t i = 0; i < p.batch; ++i) {
      const int64_t base = p.labels[i] * p.features;
      const T* sample = x + i * p.features * p.positions;
      if (p.positions == 1) {
        // Welford: the row is one element.
        const double n_a = static_cast<double>(p.prior[i]);
        const double inv_n = 1.0 / (n_a + 1.0);
        const double m2_scale = n_a * inv_n;
        double* __restrict__ mean = p.mean + base;
        double* __restrict__ m2 = p.m2 + base;
        const T* __restrict__ row = sample;
        for (int64_t f = f_begin; f < f_end; ++f) {  // independent features: vectorises
          const double v = static_cast<double>(static_cast<float>(row[f]));
          const double delta = v - mean[f];
          mean[f] =
              std::isfinite(mean[f]) ? mean[f] + delta * inv_n : mean[f] + v;  // as chan_merge
          m2[f] += delta * delta * m2_scale;
        }
      } else {
        const double n_a = static_cast<double>(p.prior[i] * p.positions);
        const double n_b = static_cast<double>(p.positions);
        for (int64_t f = f_begin; f < f_end; ++f) {
          double row_mean;
          float row_m2;
          row_summary(sample + f * p.positions, p.positions, row_mean, row_m2);
          chan_merge(p.mean[base + f], p.m2[base + f], n_a, n_b, row_mean, row_m2);
        }
      }
    }
  });
}

}  // namespace

void class_stats_accumulate(const SegmentProblem& p, const void* x) {
  vec_io::dispatch_dtype(p.dtype, [&](auto tag) {
    using T = decltype(tag);
    accumulate_typed(p, static_cast<const T*>(x));
  });
}

}  // namespace climbq::cpu::CPU_CAPABILITY
