// The CUDA INT4 matmul's kernels (algorithms.md §6), one file each, and what they are given; the
// path choice and the registration live in int4_matmul.cu.
#pragma once

#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <optional>

// x's dtypes: scalar_t in the body is float, c10::Half or c10::BFloat16.
// clang-format off
#define CLIMBQ_DISPATCH_INT4_DTYPES(TYPE, NAME, ...)           \
  AT_DISPATCH_SWITCH(TYPE, NAME,                               \
                     AT_DISPATCH_CASE(at::kFloat, __VA_ARGS__) \
                     AT_DISPATCH_CASE(at::kHalf, __VA_ARGS__)  \
                     AT_DISPATCH_CASE(at::kBFloat16, __VA_ARGS__))
// clang-format on

namespace climbq::cuda {

// The operands of y = x @ dequant(W)^T + bias, validated and contiguous: x (rows, K) in float32,
// float16 or bfloat16; packed (N, K/2) uint8; scales, zeros (N, K/g) float32; bias (N,) in x's
// dtype or none.
struct Int4Operands {
  at::Tensor x;
  at::Tensor packed;
  at::Tensor scales;
  at::Tensor zeros;
  std::optional<at::Tensor> bias;
  int64_t rows;
  int64_t out_features;
  int64_t in_features;
  int64_t group_size;
};

// GEMV on CUDA cores (int4_gemv.cu): rows <= kGemvMaxRows. out (rows, N) in x's dtype.
// `threads` per block: 0 picks them (one per 16-byte chunk or byte of a row, up to
// kGemvMaxThreads), else a multiple of 32 up to kGemvMaxThreads.
constexpr int kGemvMaxRows = 8;
constexpr int kGemvMaxThreads = 256;
void int4_gemv(const Int4Operands& a, at::Tensor& out, int64_t threads, cudaStream_t stream);

// Tensor-core MMA for small batches (int4_mma.cu): 16-bit x, rows <= kMmaMaxRows, K a multiple
// of 32, x and packed 16-byte aligned (`int4_mma_supports`). `split_k` <= 0 picks the split;
// `kernel` picks one of its two kernels (kAuto: registers or pipelined by the number of rows).
constexpr int kMmaMaxRows = 64;
enum class MmaKernel { kAuto, kRegisters, kPipelined };
bool int4_mma_supports(const Int4Operands& a);
void int4_mma(const Int4Operands& a, at::Tensor& out, int64_t split_k, MmaKernel kernel,
              cudaStream_t stream);

// W rows [first_row, first_row + weight.size(0)) dequantized into weight (rows, K) in x's dtype,
// bit for bit the reference's dequantize_int4 (int4_dequantize.cu).
void int4_dequantize(const Int4Operands& a, int64_t first_row, at::Tensor& weight,
                     cudaStream_t stream);

}  // namespace climbq::cuda
