// The ACS score kernels (algorithms.md §2) on raw pointers for float32/float16/bfloat16 logits,
// compiled once per CPU instruction set (isa/acs_scores_kernel.cpp) and chosen at run time by
// acs_scores.cpp.
#pragma once

#include <c10/core/ScalarType.h>

#include <cstdint>

namespace climbq::cpu {

// logits and logits_fp are contiguous (batch, k) buffers of `dtype`, out a (batch,) buffer of
// it. error_vector_score reads logits and labels (each in [0, k)); disagreement_score reads
// logits (z_q) and logits_fp.
struct AcsScoreProblem {
  c10::ScalarType dtype;
  int64_t batch;
  int64_t k;
  const void* logits;
  const void* logits_fp;
  const int64_t* labels;
  void* out;
};

#define CLIMBQ_DECLARE_ACS_SCORE_KERNELS(ISA)               \
  namespace ISA {                                           \
  void error_vector_score_kernel(const AcsScoreProblem& p); \
  void disagreement_score_kernel(const AcsScoreProblem& p); \
  }

CLIMBQ_DECLARE_ACS_SCORE_KERNELS(DEFAULT)
CLIMBQ_DECLARE_ACS_SCORE_KERNELS(AVX2)
CLIMBQ_DECLARE_ACS_SCORE_KERNELS(AVX512)
#undef CLIMBQ_DECLARE_ACS_SCORE_KERNELS

}  // namespace climbq::cpu
