// The INT4 packed-weight matmul kernel (algorithms.md §6) on raw pointers, compiled once per CPU
// instruction set (isa/int4_matmul_kernel.cpp) and chosen at run time by int4_matmul.cpp.
#pragma once

#include <cstdint>

namespace climbq::cpu {

// Features per block of the split activation layout: 16 packed bytes of a weight row.
constexpr int64_t kInt4BlockFeatures = 32;
// Features per block of the word activation layout: 64 packed bytes, 16 32-bit words, of a row.
constexpr int64_t kInt4WordBlockFeatures = 128;

// How the kernel wants x laid out; the caller writes x so (int4_matmul.cpp).
//
// kSplit: each block of kInt4BlockFeatures features is stored as its 16 even features, then
// its 16 odd ones, so that the low nibbles of 16 packed bytes meet 16 consecutive floats and
// the high nibbles the next 16; features past the last whole block keep their natural order.
//
// kWords: each block of kInt4WordBlockFeatures features is stored as 8 runs of 16, run j
// holding features j, 8 + j, ..., 120 + j: nibble j of each of the block's 16 packed words
// (feature 8 * word + j), which one shift brings to the bits a 16-entry vpermps table reads.
// Only where K and the group size are multiples of 128 (or the group is the row), so that no
// block straddles a group and none is partial.
enum class Int4XLayout { kSplit, kWords };

// y (M, N) float32 = x @ W^T for W (N, K) = (q - zeros) * scales, group-wise.
struct Int4MatmulProblem {
  int64_t rows;           // M
  int64_t out_features;   // N
  int64_t in_features;    // K (even)
  int64_t group_size;     // g: a multiple of 32 dividing K, or K itself
  const float* x;         // (M, K), in x_layout, rows x_stride floats apart
  int64_t x_stride;       // >= K; padded so that rows do not alias in the L1 cache
  const uint8_t* packed;  // (N, K / 2)
  const float* scales;    // (N, K / g)
  const float* zeros;     // (N, K / g)
  float* y;               // (M, N)
  Int4XLayout x_layout = Int4XLayout::kSplit;
};

// int4_x_layout: the layout int4_matmul reads x in for a problem of this shape. int4_matmul:
// the fused kernel, all of y. int4_dequantize: rows [n0, n1) of W as float32, (n1 - n0, K)
// row-major into w, for the dequantize-then-GEMM path of larger batches (x and y unused).
#define CLIMBQ_DECLARE_INT4_KERNELS(ISA)                                              \
  namespace ISA {                                                                     \
  Int4XLayout int4_x_layout(int64_t rows, int64_t in_features, int64_t group_size);   \
  void int4_matmul(const Int4MatmulProblem& p);                                       \
  void int4_dequantize(const Int4MatmulProblem& p, int64_t n0, int64_t n1, float* w); \
  }

CLIMBQ_DECLARE_INT4_KERNELS(DEFAULT)
CLIMBQ_DECLARE_INT4_KERNELS(AVX2)
CLIMBQ_DECLARE_INT4_KERNELS(AVX512)
#undef CLIMBQ_DECLARE_INT4_KERNELS

}  // namespace climbq::cpu
