// The ClimbQ weight quantizer kernels (algorithms.md §1b) on raw pointers, compiled once per CPU
// instruction set (isa/climbq_weight_kernel.cpp) and chosen at run time by climbq_weight.cpp.
// The math is in ../climbq_weight.h.
#pragma once

#include <c10/core/ScalarType.h>

#include <cstdint>

namespace climbq::cpu {

// The elementwise passes' constants, computed in double from the reductions and rounded once.
struct WeightPass {
  c10::ScalarType dtype;
  int64_t numel;
  float mean;
  float inv_std_sqrt2;  // 1 / (s sqrt(2)), so t = (w - mean) * inv_std_sqrt2 = z / sqrt(2)
  float levels;         // N
  float half_levels;    // N / 2
  float inv_levels;     // 1 / N
  // Backward: dw = g_scale * g * exp(-t^2) + offset + t_scale * t (see climbq_weight.cpp).
  float g_scale;
  float offset;
  float t_scale;
};

// Float64 sums of a reduction: sums[0] = sum a, sums[1] = sum b.
struct PairSums {
  double a = 0;
  double b = 0;
};

#define CLIMBQ_DECLARE_WEIGHT_KERNELS(ISA)                                                        \
  namespace ISA {                                                                                 \
  /* sum (w - shift), sum (w - shift)^2 */                                                        \
  PairSums weight_shifted_sums(c10::ScalarType dtype, const void* w, int64_t numel, float shift); \
  /* S1 = sum g phi(z), S2 = sum g phi(z) z with z = t sqrt(2) */                                 \
  PairSums weight_grad_sums(const WeightPass& p, const void* grad_out, const void* w);            \
  void weight_quant_forward(const WeightPass& p, const void* w, void* out);                       \
  void weight_quant_backward(const WeightPass& p, const void* grad_out, const void* w, void* dw); \
  }

CLIMBQ_DECLARE_WEIGHT_KERNELS(DEFAULT)
CLIMBQ_DECLARE_WEIGHT_KERNELS(AVX2)
CLIMBQ_DECLARE_WEIGHT_KERNELS(AVX512)
#undef CLIMBQ_DECLARE_WEIGHT_KERNELS

}  // namespace climbq::cpu
