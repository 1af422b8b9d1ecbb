// INT4 packed-weight matmul (algorithms.md §6) on the CPU: checks, the activation layouts, and the
// float32 -> x's dtype epilogue with the bias; the vectorised tiles are in
// isa/int4_matmul_kernel.cpp.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/add.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <torch/library.h>

#include <algorithm>
#include <optional>
#include <vector>

#include "../int4_args.h"
#include "int4_matmul_kernel.h"
#include "isa_choice.h"

namespace climbq::cpu {
namespace {

struct Int4Kernels {
  decltype(&DEFAULT::int4_x_layout) x_layout;
  decltype(&DEFAULT::int4_matmul) fused;
  decltype(&DEFAULT::int4_dequantize) dequantize;
};

const Int4Kernels& int4_kernels() {
  static const Int4Kernels chosen = choose_isa<Int4Kernels>(
      {DEFAULT::int4_x_layout, DEFAULT::int4_matmul, DEFAULT::int4_dequantize},
      {CLIMBQ_AVX2::int4_x_layout, CLIMBQ_AVX2::int4_matmul, CLIMBQ_AVX2::int4_dequantize},
      {CLIMBQ_AVX512::int4_x_layout, CLIMBQ_AVX512::int4_matmul, CLIMBQ_AVX512::int4_dequantize});
  return chosen;
}

// From this many activation rows on, dequantizing blocks of W to float32 and multiplying them
// with torch's GEMM beats the fused kernel, which dequantizes each weight vector again for
// every kTileBatch rows. The fused kernel is clearly ahead at 32 rows and about even at 64; the
// GEMM is ahead from 96 rows on.
constexpr int64_t kGemmRows = 80;
// Dequantized floats per GEMM block (16 MiB, 1024 rows of K = 4096): the fastest size, or close
// to it, from 128 to 1024 rows; a quarter of it slows the largest batches, twice it the smallest.
constexpr int64_t kGemmBlockFloats = int64_t{1} << 22;

// y (M, N) float32 = x W^T into `y`, a block of W rows (columns of y) at a time. Writing the
// columns of y in place, as F.linear lays out its product, is faster than y^T = W x^T followed
// by a transposing copy.
at::Tensor dequantize_then_gemm(const Int4MatmulProblem& problem, const at::Tensor& x_float,
                                at::Tensor y) {
  const int64_t in = problem.in_features, out_features = problem.out_features;
  const int64_t block = std::max<int64_t>(64, kGemmBlockFloats / std::max<int64_t>(in, 1));
  at::Tensor w = at::empty({std::min(block, out_features), in}, x_float.options());
  for (int64_t n0 = 0; n0 < out_features; n0 += block) {
    const int64_t rows = std::min(block, out_features - n0);
    int4_kernels().dequantize(problem, n0, n0 + rows, w.mutable_data_ptr<float>());
    at::Tensor y_cols = y.narrow(1, n0, rows);
    at::mm_out(y_cols, x_float, w.narrow(0, 0, rows).t());
  }
  return y;
}

// Rows of x (M, K) as float32 in a layout of int4_matmul_kernel.h.
// Rows are padded to a stride of an odd number of cache lines: rows a multiple of 4 KiB apart
// would share L1 sets, and the tiles read 8 rows at once.
int64_t padded_stride(int64_t in) {
  constexpr int64_t kLineFloats = 16;
  return (in / kLineFloats | 1) * kLineFloats + (in % kLineFloats ? kLineFloats : 0);
}

// dst = src's block of `Width` features with run j of `Runs` holding features j, Runs + j, ...
// The split layout is 2 runs of 16 features a block of 32, the word layout 8 runs of 16 a
// block of 128.
template <int64_t Width, int64_t Runs, typename T>
void interleave_runs(const T* src, float* dst) {
  constexpr int64_t kRun = Width / Runs;
  for (int64_t j = 0; j < Runs; ++j) {
    for (int64_t i = 0; i < kRun; ++i) dst[j * kRun + i] = static_cast<float>(src[i * Runs + j]);
  }
}

template <typename T>
void lay_out_rows(const T* x, int64_t rows, int64_t in, int64_t stride, Int4XLayout layout,
                  float* out) {
  at::parallel_for(0, rows, std::max<int64_t>(1, (int64_t{1} << 16) / std::max<int64_t>(in, 1)),
                   [&](int64_t first, int64_t last) {
    for (int64_t m = first; m < last; ++m) {
      const T* src = x + m * in;
      float* dst = out + m * stride;
      int64_t whole = 0;
      if (layout == Int4XLayout::kWords) {
        for (; whole + kInt4WordBlockFeatures <= in; whole += kInt4WordBlockFeatures) {
          interleave_runs<kInt4WordBlockFeatures, 8>(src + whole, dst + whole);
        }
      } else {
        for (; whole + kInt4BlockFeatures <= in; whole += kInt4BlockFeatures) {
          interleave_runs<kInt4BlockFeatures, 2>(src + whole, dst + whole);
        }
      }
      for (int64_t k = whole; k < in; ++k) dst[k] = static_cast<float>(src[k]);
    }
  });
}

// The fused kernel: y (M, N) float32 from x laid out as the kernel asks.
at::Tensor fused_matmul(Int4MatmulProblem problem, const at::Tensor& x, at::Tensor y) {
  const int64_t stride = padded_stride(problem.in_features);
  problem.x_layout = int4_kernels().x_layout(problem.rows, problem.in_features, problem.group_size);
  at::Tensor x_laid_out = at::empty({problem.rows, stride}, x.options().dtype(at::kFloat));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "int4_matmul", [&] {
    lay_out_rows(x.const_data_ptr<scalar_t>(), problem.rows, problem.in_features, stride,
                 problem.x_layout, x_laid_out.mutable_data_ptr<float>());
  });
  problem.x = x_laid_out.const_data_ptr<float>();
  problem.x_stride = stride;
  problem.y = y.mutable_data_ptr<float>();
  int4_kernels().fused(problem);
  return y;
}

at::Tensor int4_matmul_cpu(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& scales,
                           const at::Tensor& zeros, int64_t group_size,
                           const std::optional<at::Tensor>& bias) {
  const Int4Shape shape =
      check_int4_matmul_args(x, packed, scales, zeros, group_size, bias, c10::kCPU);
  const at::Tensor x_c = x.contiguous();
  const at::Tensor bias_c = bias.has_value() ? bias->contiguous() : at::Tensor();
  std::vector<int64_t> out_shape(x.sizes().begin(), x.sizes().end() - 1);
  out_shape.push_back(shape.out_features);
  at::Tensor out = at::empty(out_shape, x.options());
  if (out.numel() == 0) return out;

  const at::Tensor packed_c = packed.contiguous(), scales_c = scales.contiguous(),
                   zeros_c = zeros.contiguous();
  const Int4MatmulProblem problem{shape.rows,
                                  shape.out_features,
                                  shape.in_features,
                                  group_size,
                                  nullptr,
                                  0,
                                  packed_c.const_data_ptr<uint8_t>(),
                                  scales_c.const_data_ptr<float>(),
                                  zeros_c.const_data_ptr<float>(),
                                  nullptr};
  const at::Tensor out_rows = out.view({shape.rows, shape.out_features});
  at::Tensor y;
  const bool float_out = x.scalar_type() == at::kFloat;
  at::Tensor y_float =
      float_out ? out_rows
                : at::empty({shape.rows, shape.out_features}, x.options().dtype(at::kFloat));
  if (shape.rows >= kGemmRows) {
    y = dequantize_then_gemm(problem, x_c.reshape({shape.rows, shape.in_features}).to(at::kFloat),
                             y_float);
  } else {
    y = fused_matmul(problem, x_c, y_float);
  }
  // Epilogue: bias added in float32, then one rounding to x's dtype.
  if (bias_c.defined()) y = y.add(bias_c.to(at::kFloat));
  if (!y.is_same(out_rows)) out_rows.copy_(y);
  return out;
}

}  // namespace
}  // namespace climbq::cpu

TORCH_LIBRARY_IMPL(climbq_native, CPU, m) { m.impl("int4_matmul", &climbq::cpu::int4_matmul_cpu); }
