// The ClimbQ activation kernels (algorithms.md §1a) on raw pointers, compiled once per CPU
// instruction set (csrc/cpu/isa/climbq_act_kernel.cpp with CPU_CAPABILITY = DEFAULT, AVX2 or
// AVX512; see setup.py) and chosen at run time by csrc/cpu/climbq_act.cpp, as ATen's DispatchStub
// does. This header stays free of at::Tensor so that the per-ISA objects hold only kernel code.
#pragma once

#include <c10/core/ScalarType.h>

#include <cstdint>

namespace climbq::cpu {

// Per-sample constants, computed once per call in double and rounded to float.
struct ActQuantSample {
  float mu;
  float inv_sigma_sqrt2;  // 1 / (sigma * sqrt(2)), so t = (x - mu) * inv_sigma_sqrt2 = z / sqrt(2)
  float dx_scale;         // 2A / (sigma * sqrt(2 pi)) = 2A * phi(0) / sigma
};

// One call after the checks: x, grad_out, out and dx are contiguous (batch, inner) buffers of
// `dtype` (float, Half or BFloat16); `samples` has `batch` entries.
struct ActQuantProblem {
  c10::ScalarType dtype;
  int64_t batch;
  int64_t inner;
  const ActQuantSample* samples;
  float levels;       // N = 2^bits - 1
  float half_levels;  // N / 2, so u * N = erf(t) * N/2 + N/2
  float inv_levels;   // 1 / N; N * (1/N) rounds to exactly 1 for every N = 2^b - 1, b <= 16
  float act_range;    // A
  // The fused variants (see ../climbq_act.h); the defaults give the plain quantizer.
  int64_t bits = 0;
  const float* bn_scale = nullptr;  // (channels,) or null: no affine
  const float* bn_shift = nullptr;  // (channels,), set together with bn_scale
  int64_t channels = 1;
  int64_t channel_stride = 1;         // elements between consecutive channels in memory
  const float* thresholds = nullptr;  // (N,) ascending, or null: the erf form
  bool relu = false;
  bool chain_scale = true;  // backward: dx = dy * bn_scale (else return dy)
};

#define CLIMBQ_DECLARE_ACT_KERNELS(ISA)                                                  \
  namespace ISA {                                                                        \
  void act_quant_forward(const ActQuantProblem& p, const void* x, void* out);            \
  void act_quant_backward(const ActQuantProblem& p, const void* grad_out, const void* x, \
                          void* dx);                                                     \
  void act_quant_codes(const ActQuantProblem& p, const void* x, uint8_t* codes);         \
  }

CLIMBQ_DECLARE_ACT_KERNELS(DEFAULT)
CLIMBQ_DECLARE_ACT_KERNELS(AVX2)
CLIMBQ_DECLARE_ACT_KERNELS(AVX512)
#undef CLIMBQ_DECLARE_ACT_KERNELS

// The instruction set whose kernels this process uses ("AVX512", "AVX2" or "DEFAULT").
const char* act_kernel_isa();

}  // namespace climbq::cpu
