// INT4 packed-weight matmul on CUDA (algorithms.md §6): y (M, N) = x (M, K) @ W^T + bias, where
// W[n, k] = (q[n, k] - zeros[n, k / g]) * scales[n, k / g] and the 4-bit codes q come packed two
// per byte (layout: climbq_kernels/int4.py; oracle: climbq_kernels/reference/int4.py; schema:
// ../int4.cpp). x's leading dimensions are flattened into M. Three paths, chosen by M and dtype:
//
// - 16-bit x, 3 <= M <= 64, K % 32 == 0, 16-byte-aligned x and codes: tensor-core MMA with the
//   weight dequantized in registers (int4_mma.cu);
// - else M <= 8 (float32 x, 16-bit x at M = 1, 2, or shapes the MMA kernel does not take): a GEMV
//   on CUDA cores that reads the weight once (int4_gemv.cu);
// - otherwise (float32 x past M = 8; 16-bit x past M = 64, or past M = 8 where the MMA kernel
//   does not apply): dequantize W, a block of output features at a time, into a buffer of x's
//   dtype (int4_dequantize.cu), then one cuBLAS GEMM per block through at::mm_out /
//   at::addmm_out into the block's columns of y (bias fused as the GEMM's C). The buffer (at most
//   kDequantBlockBytes, 64-row multiples) is reused block after block, so a large weight (a
//   128k x 4k head) never needs a whole dequantized copy; CLIMBQ_INT4_DEQUANT_BLOCK_BYTES
//   overrides the size (bench/int4/int4_cuda_block_sweep.py). For float32 x that GEMM follows
//   torch's global TF32 setting (torch.backends.cuda.matmul.allow_tf32 /
//   torch.set_float32_matmul_precision), exactly as x @ W.T in PyTorch does: off by default, so
//   the default is full float32.
//
// For benchmarks, CLIMBQ_INT4_CUDA_PATH = gemv | mma | dequantize forces a path (an error where
// it does not apply), CLIMBQ_INT4_MMA_KERNEL = registers | pipelined the MMA path's kernel,
// CLIMBQ_INT4_MMA_SPLIT_K its split of K and CLIMBQ_INT4_GEMV_THREADS the GEMV's threads per
// block.
//
// Arguments are validated by the Python layer (climbq_kernels/int4.py) first; ../int4_args.h
// (shared with the CPU op) is the second line of defence for direct torch.ops.climbq_native
// calls. It admits any group size that is a multiple of 32 dividing K, or K itself; the kernels
// rely on exactly that (an even g; a multiple of 32 where they read 32-feature chunks).
#include "../int4_args.h"
#include "int4_kernels.h"

#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <optional>
#include <string_view>
#include <vector>

namespace climbq::cuda {
namespace {

// Large-M buffer: bounds the memory, not a speed-up. Blocks small enough to stay in L2 are slower
// than one block for the whole of W, so one block covers most layers.
constexpr int64_t kDequantBlockBytes = int64_t{256} << 20;
// Keeps each block's columns of y 128-byte aligned.
constexpr int64_t kDequantBlockRowMultiple = 64;
// 16-bit x: below, the GEMV, which is faster at M = 1, 2; from M = 4 on the MMA kernel is faster
// (at M = 3 the two are about even).
constexpr int64_t kMmaMinRows = 3;

// Output features per dequantized block on the large-M path: kDequantBlockBytes of weights (or
// CLIMBQ_INT4_DEQUANT_BLOCK_BYTES), rounded down to a multiple of 64 rows, at least 64, at most N.
int64_t dequant_block_rows(int64_t n_out, int64_t in_features, int64_t element_bytes) {
  int64_t budget = kDequantBlockBytes;
  if (const char* env = std::getenv("CLIMBQ_INT4_DEQUANT_BLOCK_BYTES")) {
    const long long parsed = std::atoll(env);
    TORCH_CHECK_VALUE(parsed > 0,
                      "CLIMBQ_INT4_DEQUANT_BLOCK_BYTES must be a positive byte count, got '", env,
                      "'");
    budget = parsed;
  }
  const int64_t row_bytes = std::max<int64_t>(1, in_features * element_bytes);
  const int64_t rows = budget / row_bytes / kDequantBlockRowMultiple * kDequantBlockRowMultiple;
  return std::min(n_out, std::max(rows, kDequantBlockRowMultiple));
}

// The large-M path: y's columns block by block, each a dequantized block of W times x (cuBLAS).
void dequantize_then_gemm(const Int4Operands& a, at::Tensor& out, cudaStream_t stream) {
  const int64_t block_rows = dequant_block_rows(a.out_features, a.in_features, a.x.element_size());
  at::Tensor buffer = at::empty({block_rows, a.in_features}, a.x.options());
  for (int64_t n0 = 0; n0 < a.out_features; n0 += block_rows) {
    at::Tensor weight = buffer.narrow(0, 0, std::min(block_rows, a.out_features - n0));
    int4_dequantize(a, n0, weight, stream);
    // cuBLAS on the current stream, into y's columns n0 .. n0 + n (row stride N, no copy);
    // float32 follows torch's TF32 setting (see the header comment).
    at::Tensor columns = out.narrow(1, n0, weight.size(0));
    if (a.bias.has_value()) {
      at::addmm_out(columns, a.bias->narrow(0, n0, weight.size(0)), a.x, weight.t());
    } else {
      at::mm_out(columns, a.x, weight.t());
    }
  }
}

// A non-negative integer from the environment, or `fallback` when unset.
int64_t env_int(const char* name, int64_t fallback) {
  const char* env = std::getenv(name);
  if (env == nullptr || *env == '\0') return fallback;
  char* end = nullptr;
  const long long parsed = std::strtoll(env, &end, 10);
  TORCH_CHECK_VALUE(*end == '\0' && parsed >= 0, name, " must be a non-negative integer, got '",
                    env, "'");
  return parsed;
}

// CLIMBQ_INT4_MMA_KERNEL = registers | pipelined forces one of the MMA path's kernels.
MmaKernel forced_mma_kernel() {
  const char* env = std::getenv("CLIMBQ_INT4_MMA_KERNEL");
  if (env == nullptr || *env == '\0') return MmaKernel::kAuto;
  const std::string_view name(env);
  if (name == "registers") return MmaKernel::kRegisters;
  if (name == "pipelined") return MmaKernel::kPipelined;
  TORCH_CHECK_VALUE(false, "CLIMBQ_INT4_MMA_KERNEL must be 'registers' or 'pipelined', got '", name,
                    "'");
}

// CLIMBQ_INT4_GEMV_THREADS forces the GEMV's threads per block (0 or unset: its own choice).
int64_t forced_gemv_threads() {
  const int64_t threads = env_int("CLIMBQ_INT4_GEMV_THREADS", 0);
  TORCH_CHECK_VALUE(threads == 0 || (threads % 32 == 0 && threads <= kGemvMaxThreads),
                    "CLIMBQ_INT4_GEMV_THREADS must be a multiple of 32 from 32 to ",
                    kGemvMaxThreads, ", got ", threads);
  return threads;
}

enum class Path { kGemv, kMma, kDequantize };

Path choose_path(const Int4Operands& a) {
  const bool gemv = a.rows <= kGemvMaxRows, mma = int4_mma_supports(a);
  if (const char* env = std::getenv("CLIMBQ_INT4_CUDA_PATH"); env != nullptr && *env != '\0') {
    const std::string_view forced(env);
    if (forced == "gemv" && gemv) return Path::kGemv;
    if (forced == "mma" && mma) return Path::kMma;
    if (forced == "dequantize") return Path::kDequantize;
    TORCH_CHECK_VALUE(false, "CLIMBQ_INT4_CUDA_PATH=", forced, " does not apply to ", a.rows,
                      " rows of ", a.x.scalar_type(), " x with K = ", a.in_features,
                      " (gemv: at most 8 rows; mma: 16-bit x, at most 64 rows, K % 32 == 0, "
                      "aligned; dequantize)");
  }
  if (mma && a.rows >= kMmaMinRows) return Path::kMma;
  if (gemv) return Path::kGemv;
  return Path::kDequantize;
}

at::Tensor int4_matmul_cuda(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& scales,
                            const at::Tensor& zeros, int64_t group_size,
                            const std::optional<at::Tensor>& bias) {
  check_int4_matmul_args(x, packed, scales, zeros, group_size, bias, c10::kCUDA);
  const int64_t in_features = x.size(-1), n_out = packed.size(0);
  TORCH_CHECK_VALUE(
      in_features <= std::numeric_limits<int32_t>::max(),
      "int4_matmul: in_features must be below 2**31 on CUDA (32-bit indices within a row), got ",
      in_features);
  const c10::cuda::CUDAGuard device_guard(x.device());
  int64_t rows = 1;  // M: the product of x's leading dimensions
  for (int64_t d = 0; d + 1 < x.dim(); ++d) rows *= x.size(d);
  std::vector<int64_t> out_shape(x.sizes().begin(), x.sizes().end());
  out_shape.back() = n_out;
  if (rows == 0 || n_out == 0) return at::empty(out_shape, x.options());

  const Int4Operands a{x.contiguous().view({rows, in_features}),
                       packed.contiguous(),
                       scales.contiguous(),
                       zeros.contiguous(),
                       bias.has_value() ? std::optional(bias->contiguous()) : std::nullopt,
                       rows,
                       n_out,
                       in_features,
                       group_size};
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  at::Tensor out = at::empty({rows, n_out}, x.options());
  switch (choose_path(a)) {
    case Path::kGemv: int4_gemv(a, out, forced_gemv_threads(), stream); break;
    case Path::kMma:
      int4_mma(a, out, env_int("CLIMBQ_INT4_MMA_SPLIT_K", 0), forced_mma_kernel(), stream);
      break;
    case Path::kDequantize: dequantize_then_gemm(a, out, stream); break;
  }
  return out.view(out_shape);
}

}  // namespace
}  // namespace climbq::cuda

TORCH_LIBRARY_IMPL(climbq_native, CUDA, m) {
  m.impl("int4_matmul", &climbq::cuda::int4_matmul_cuda);
}
