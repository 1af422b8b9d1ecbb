// The uniform fake quant kernels (algorithms.md §1e affine/LSQ, §3a per-sample bits)
// on raw pointers, compiled once per CPU instruction set (csrc/cpu/isa/fake_quant_kernel.cpp) and
// chosen at run time by csrc/cpu/fake_quant.cpp, like the ClimbQ activation kernels.
#pragma once

#include "../fake_quant.h"

#include <c10/core/ScalarType.h>

#include <cstdint>

namespace climbq::cpu {

// Per channel with short rows (few elements per channel in a row): x viewed as
// (outer, period), period = channels * inner, with the tables expanded to one entry per
// position so that vectors run along positions instead of along a row of 1, 2, ... elements.
// A piece is `rows_per_piece` consecutive outer rows; a backward writes `period` partial sums
// per piece. period == 0: not used.
struct PositionTables {
  const float* scale = nullptr;
  const float* inv_scale = nullptr;
  const float* zero_point = nullptr;
  int64_t period = 0;
  int64_t rows_per_piece = 1;
};

// Affine fake quant over x viewed as rows (see RowLayout); tables are per channel, float32.
struct AffineProblem {
  c10::ScalarType dtype;
  RowLayout layout;
  const float* scale;
  const float* inv_scale;  // 1.0f / scale, a float32 division as in torch
  const float* zero_point;
  ZeroPointMode zp_mode;
  bool double_product;  // see needs_double_product
  float quant_min;
  float quant_max;
  PositionTables positions;  // when positions.period > 0, used instead of the row loop
};

// Per-sample bit-width fake quant: row i = sample i; tables per sample, float32.
struct SampleBitsProblem {
  c10::ScalarType dtype;
  RowLayout layout;
  const float* step;    // s_i = clip / L_i
  const float* levels;  // L_i = 2^b_i - 1
  float clip;
};

// Backward partial sums: one float per piece (layout.pieces()), or `period` per piece with
// position tables; nullptr when not wanted.
#define CLIMBQ_DECLARE_FAKE_QUANT_KERNELS(ISA)                                                \
  namespace ISA {                                                                             \
  void affine_forward(const AffineProblem& p, const void* x, void* out);                      \
  void affine_backward(const AffineProblem& p, const void* grad_out, const void* x, void* dx, \
                       float* dscale_partials, float* dzero_point_partials);                  \
  void sample_bits_forward(const SampleBitsProblem& p, const void* x, void* out);             \
  void sample_bits_backward(const SampleBitsProblem& p, const void* grad_out, const void* x,  \
                            void* dx, float* dclip_partials);                                 \
  }

CLIMBQ_DECLARE_FAKE_QUANT_KERNELS(DEFAULT)
CLIMBQ_DECLARE_FAKE_QUANT_KERNELS(AVX2)
CLIMBQ_DECLARE_FAKE_QUANT_KERNELS(AVX512)
#undef CLIMBQ_DECLARE_FAKE_QUANT_KERNELS

}  // namespace climbq::cpu
