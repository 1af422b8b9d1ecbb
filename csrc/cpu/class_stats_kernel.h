// The class-segmented statistics kernel (algorithms.md §1c, §4a) on raw pointers,
// compiled once per CPU instruction set (isa/class_stats_kernel.cpp) and chosen at run time by
// class_stats.cpp.
#pragma once

#include <c10/core/ScalarType.h>

#include <cstdint>

namespace climbq::cpu {

// x is a contiguous (batch, features, positions) buffer of `dtype`. The kernel merges every
// row x[i, f, :] into the running float64 mean and M2 (sum of squared deviations) of class
// labels[i], feature f, in sample order (Chan et al.'s pairwise update; Welford's when
// positions == 1). `prior[i]` is the number of samples before i with i's label, so the
// running count before row i is prior[i] * positions for every feature.
struct SegmentProblem {
  c10::ScalarType dtype;
  int64_t batch;
  int64_t features;
  int64_t positions;
  const int64_t* labels;  // (batch,), in [0, K)
  const int64_t* prior;   // (batch,)
  double* mean;           // (K, features), zero on entry
  double* m2;             // (K, features), zero on entry
};

#define CLIMBQ_DECLARE_SEGMENT_KERNELS(ISA)                            \
  namespace ISA {                                                      \
  void class_stats_accumulate(const SegmentProblem& p, const void* x); \
  }

CLIMBQ_DECLARE_SEGMENT_KERNELS(DEFAULT)
CLIMBQ_DECLARE_SEGMENT_KERNELS(AVX2)
CLIMBQ_DECLARE_SEGMENT_KERNELS(AVX512)
#undef CLIMBQ_DECLARE_SEGMENT_KERNELS

}  // namespace climbq::cpu
