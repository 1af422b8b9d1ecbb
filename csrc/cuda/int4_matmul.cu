// INT4 packed-weight matmul on CUDA (SPEC 6): y (M, N) = x (M, K) @ W^T + bias, where
// W[n, k] = (q[n, k] - zeros[n, k / g]) * scales[n, k / g] and the 4-bit codes q come packed two
// per byte (layout: climbq_kernels/int4.py; oracle: climbq_kernels/reference/int4.py; schema:
// ../int4.cpp). x's leading dimensions are flattened into M.
//
// Two paths, chosen by M:
//
// - M <= kGemvMaxRows (8): a GEMV that reads the weight once. A block owns kRows consecutive
//   output features (8 for M <= 4, else 4: `rows_per_block`); its threads (up to 256, a
//   multiple of 32) stride together over K, each holding kRows x M float32 partial sums, so
//   every weight load meets every row of x and every x value read (through the read-only L1
//   path) serves kRows weight rows. Partial sums are reduced by warp shuffles, then across
//   warps in shared memory in a fixed order (deterministic); the epilogue adds the bias in
//   float32 and rounds once to x's dtype. Two loops over K:
//     * aligned: when K % 32 == 0 and x and packed start on 16-byte boundaries (so every packed
//       row and every x row does too), a thread takes 16-byte chunks: one uint4 of codes per
//       weight row (32 features, always inside one group since every group size is a multiple
//       of 32) and 8 features of x per 16-byte load (two for float32);
//     * bytewise: otherwise (one group per row with K % 32 != 0, e.g. K = 18 or 4094, whose
//       rows start at any byte; or misaligned storage), a thread takes one byte (two features)
//       at a time with scalar loads, re-reading scale and zero only when its group changes.
// - M > 8: dequantize W, a block of output features at a time, into a buffer of x's dtype with an
//   elementwise kernel, then one cuBLAS GEMM per block through at::mm_out / at::addmm_out into
//   the block's columns of y (bias fused as the GEMM's C). The buffer (at most
//   kDequantBlockBytes, 64-row multiples) is reused block after block, so a large weight (a
//   128k x 4k head) never needs a whole dequantized copy; CLIMBQ_INT4_DEQUANT_BLOCK_BYTES
//   overrides the size (bench/int4_cuda_block_sweep.py). For float32 x that
//   GEMM follows torch's global TF32 setting (torch.backends.cuda.matmul.allow_tf32 /
//   torch.set_float32_matmul_precision), exactly as x @ W.T in PyTorch does: off by default, so
//   the default is full float32.
//
// Rounding. Both paths form each weight as the reference does in float32: the difference q - z,
// then the product with s, each rounded (the _rn intrinsics stop nvcc fusing them into an FMA).
// The GEMV multiplies by that exact float32 weight (x * W accumulated with FMAs), so it differs
// from float64 only by the order of summation; the large-M buffer is that weight rounded once
// to x's dtype, bit for bit the reference's `dequantize_int4(..., dtype=x.dtype)`. The
// factored form s * (sum x q - z * sum x) would save two operations per weight but cancels:
// its float32 error, emulated on the CPU for K = 256, exceeds the error rule
// (climbq_kernels.testing), so it is not used.
//
// Arguments are validated by the Python layer (climbq_kernels/int4.py) first; ../int4_args.h
// (shared with the CPU op) is the second line of defence for direct torch.ops.climbq_native
// calls. It admits any group size that is a multiple of 32 dividing K, or K itself; the kernels
// rely on exactly that (an even g; a multiple of 32 in the aligned loop).
#include "../int4_args.h"
#include "reduce.cuh"

#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <optional>
#include <type_traits>
#include <vector>

namespace climbq::cuda {
namespace {

constexpr int kGemvMaxRows = 8;        // rows of x up to which the GEMV runs
constexpr int kMaxThreads = 256;       // GEMV threads per block, at most
constexpr int kMaxWarps = kMaxThreads / kWarp;
constexpr int kChunkBytes = 16;        // one uint4 of packed codes
constexpr int kChunkFeatures = 2 * kChunkBytes;  // 32 input features per chunk
constexpr int kWordFeatures = 8;       // features per 32-bit word of codes
constexpr int kChunkWords = kChunkBytes / 4;
constexpr int kDequantThreads = 256;
constexpr int64_t kMaxGridY = 65535;   // CUDA's limit on gridDim.y
// Large-M buffer: bounds the memory, not a speed-up. Blocks small enough to stay in L2 were slower
// (H100, 11008x4096 bf16: 16 MiB blocks +13-28%, whole W fastest; bench/results/
// NVIDIA-H100-80GB-HBM3-2026-11-22/int4_cuda_block_sweep.md), so one block covers most layers.
constexpr int64_t kDequantBlockBytes = int64_t{256} << 20;
constexpr int64_t kDequantBlockRowMultiple = 64;  // keeps each block's columns of y 128-byte aligned
constexpr uint32_t kNibbleMask = 0xFu;
constexpr int kNibbleBits = 4;
// OR-ing a code q < 2^23 into the mantissa of 2^23 gives the float 2^23 + q exactly; subtracting
// 2^23 leaves q. Two full-rate instructions instead of an integer-to-float conversion.
constexpr uint32_t kTwoPow23Bits = 0x4B000000u;
constexpr float kTwoPow23 = 8388608.0f;

// Output features per GEMV block for kM rows of x: each thread keeps kRows x kM float32 sums and
// a uint4 of codes per row in registers; 8 rows up to kM = 4, then 4 (8 rows of 5 to 8 sums
// ran out of registers and spilled).
template <int kM>
constexpr int rows_per_block() {
  return kM <= 4 ? 8 : 4;
}

// Code number t of a word of packed codes, as a float. Byte b of the word holds features 2b (low
// nibble) and 2b + 1 (high nibble), so nibble t is the word's t-th feature in order.
__device__ __forceinline__ float code_at(uint32_t word, int t) {
  return __uint_as_float(kTwoPow23Bits | ((word >> (kNibbleBits * t)) & kNibbleMask)) - kTwoPow23;
}

// (q - zero) * scale rounded as the float32 reference rounds it: the difference, then the product.
__device__ __forceinline__ float dequantize(float q, float zero, float scale) {
  return __fmul_rn(__fsub_rn(q, zero), scale);
}

// Sum over the warp, returned to every lane (butterfly).
__device__ __forceinline__ float warp_allreduce_sum(float v) {
#pragma unroll
  for (int offset = kWarp / 2; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

template <typename T>
__device__ __forceinline__ float from_bits16(uint32_t bits) {
  return static_cast<float>(T(static_cast<uint16_t>(bits), T::from_bits()));
}

// x[0..8) as float32 from 16-byte-aligned memory: one 16-byte load (two for float32).
template <typename T>
__device__ __forceinline__ void load_x8(const T* p, float (&out)[kWordFeatures]) {
  const uint4* v = reinterpret_cast<const uint4*>(p);
  if constexpr (std::is_same_v<T, float>) {
    const uint4 a = __ldg(v), b = __ldg(v + 1);
    const uint32_t bits[kWordFeatures] = {a.x, a.y, a.z, a.w, b.x, b.y, b.z, b.w};
#pragma unroll
    for (int t = 0; t < kWordFeatures; ++t) out[t] = __uint_as_float(bits[t]);
  } else {
    static_assert(sizeof(T) == 2, "x is float32, float16 or bfloat16");
    const uint4 a = __ldg(v);
    const uint32_t pairs[kWordFeatures / 2] = {a.x, a.y, a.z, a.w};
#pragma unroll
    for (int i = 0; i < kWordFeatures / 2; ++i) {  // little endian: element 2i in the low half
      out[2 * i] = from_bits16<T>(pairs[i] & 0xFFFFu);
      out[2 * i + 1] = from_bits16<T>(pairs[i] >> 16);
    }
  }
}

__device__ __forceinline__ uint32_t word_of(const uint4& v, int w) {
  return w == 0 ? v.x : (w == 1 ? v.y : (w == 2 ? v.z : v.w));
}

// The weight row that slot i of a block reads: slots past the last feature re-read the last
// row (in bounds) and are never stored.
__device__ __forceinline__ int64_t row_of_slot(int64_t first_row, int i, int64_t n_out) {
  return first_row + i < n_out ? first_row + i : n_out - 1;
}

// Reduces every thread's acc[i][m] over the block and stores out[m, first_row + i] =
// sum + bias[first_row + i] in T (the bias added in float32, one rounding). blockDim.x is a
// multiple of 32, at most kMaxThreads.
template <typename T, int kM, int kRows>
__device__ __forceinline__ void reduce_and_store(const float (&acc)[kRows][kM],
                                                 const T* __restrict__ bias, T* __restrict__ out,
                                                 int64_t first_row, int64_t n_out) {
  __shared__ float partial[kMaxWarps][kRows * kM];
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
#pragma unroll
  for (int i = 0; i < kRows; ++i) {
#pragma unroll
    for (int m = 0; m < kM; ++m) {
      const float v = warp_allreduce_sum(acc[i][m]);
      if (lane == 0) partial[warp][i * kM + m] = v;
    }
  }
  __syncthreads();
  const int warps = blockDim.x / kWarp;
  // Consecutive threads take consecutive features of one row of x: coalesced stores.
  for (int o = threadIdx.x; o < kRows * kM; o += blockDim.x) {
    const int m = o / kRows, i = o % kRows;
    const int64_t row = first_row + i;
    if (row >= n_out) continue;
    float sum = 0.0f;
    for (int w = 0; w < warps; ++w) sum += partial[w][i * kM + m];
    if (bias != nullptr) sum += static_cast<float>(bias[row]);
    out[m * n_out + row] = static_cast<T>(sum);
  }
}

// The shapes one GEMV launch needs; x (kM, K), packed (N, K/2), scales and zeros (N, groups).
template <typename T>
struct GemvArgs {
  const T* x;
  const uint8_t* packed;
  const float* scales;
  const float* zeros;
  const T* bias;  // (N,) or null
  T* out;         // (kM, N)
  int64_t n_out;  // N
  int64_t in_features;  // K
  int64_t groups;       // K / g
  int64_t group_size;   // g
};

// Aligned GEMV: K % 32 == 0, x and packed 16-byte aligned. Thread t takes chunks c = t,
// t + blockDim.x, ...; chunk c is packed bytes [16c, 16c + 16) of a row = features [32c, 32c + 32).
template <typename T, int kM>
__global__ void __launch_bounds__(kMaxThreads) gemv_aligned_kernel(const GemvArgs<T> a) {
  constexpr int kRows = rows_per_block<kM>();
  const int64_t first_row = int64_t(blockIdx.x) * kRows;
  const int64_t row_bytes = a.in_features / 2;
  const int chunks = static_cast<int>(a.in_features / kChunkFeatures);
  const int chunks_per_group = static_cast<int>(a.group_size / kChunkFeatures);
  float acc[kRows][kM] = {};
  for (int c = threadIdx.x; c < chunks; c += blockDim.x) {
    const int64_t group = c / chunks_per_group;
    uint4 codes[kRows];
    float scale[kRows], zero[kRows];
#pragma unroll
    for (int i = 0; i < kRows; ++i) {  // all weight loads first: kRows in flight
      const int64_t row = row_of_slot(first_row, i, a.n_out);
      codes[i] = __ldcs(reinterpret_cast<const uint4*>(a.packed + row * row_bytes) + c);  // read once
      scale[i] = __ldg(a.scales + row * a.groups + group);
      zero[i] = __ldg(a.zeros + row * a.groups + group);
    }
    const T* x_chunk = a.x + int64_t(c) * kChunkFeatures;
    // Unrolled, the compiler hoists all four words' x loads (32 kM floats): kept for kM <= 2,
    // where it fits in registers; beyond, one word at a time (word_of becomes three selects).
#pragma unroll(kM <= 2 ? kChunkWords : 1)
    for (int w = 0; w < kChunkWords; ++w) {
      float xs[kM][kWordFeatures];
#pragma unroll
      for (int m = 0; m < kM; ++m) load_x8(x_chunk + m * a.in_features + w * kWordFeatures, xs[m]);
#pragma unroll
      for (int i = 0; i < kRows; ++i) {
        const uint32_t word = word_of(codes[i], w);
#pragma unroll
        for (int t = 0; t < kWordFeatures; ++t) {
          const float weight = dequantize(code_at(word, t), zero[i], scale[i]);
#pragma unroll
          for (int m = 0; m < kM; ++m) acc[i][m] = fmaf(xs[m][t], weight, acc[i][m]);
        }
      }
    }
  }
  reduce_and_store<T, kM, kRows>(acc, a.bias, a.out, first_row, a.n_out);
}

// Bytewise GEMV for any even K and any alignment: thread t takes packed bytes j = t,
// t + blockDim.x, ... of each row (features 2j and 2j + 1, one group: g is even).
template <typename T, int kM>
__global__ void __launch_bounds__(kMaxThreads) gemv_bytewise_kernel(const GemvArgs<T> a) {
  constexpr int kRows = rows_per_block<kM>();
  const int64_t first_row = int64_t(blockIdx.x) * kRows;
  const int row_bytes = static_cast<int>(a.in_features / 2);
  const int group_bytes = static_cast<int>(a.group_size / 2);
  float acc[kRows][kM] = {};
  float scale[kRows], zero[kRows];
  int group_end = 0;  // bytes below this use the scale and zero loaded; 0: none loaded yet
  for (int j = threadIdx.x; j < row_bytes; j += blockDim.x) {
    if (j >= group_end) {  // j only grows: a new group (with one group per row, once)
      const int group = j / group_bytes;
      group_end = (group + 1) * group_bytes;
#pragma unroll
      for (int i = 0; i < kRows; ++i) {
        const int64_t row = row_of_slot(first_row, i, a.n_out);
        scale[i] = __ldg(a.scales + row * a.groups + group);
        zero[i] = __ldg(a.zeros + row * a.groups + group);
      }
    }
    float x_even[kM], x_odd[kM];
#pragma unroll
    for (int m = 0; m < kM; ++m) {
      const T* xm = a.x + m * a.in_features + 2 * int64_t(j);
      x_even[m] = static_cast<float>(xm[0]);
      x_odd[m] = static_cast<float>(xm[1]);
    }
#pragma unroll
    for (int i = 0; i < kRows; ++i) {
      const int64_t row = row_of_slot(first_row, i, a.n_out);
      const uint32_t byte = __ldg(a.packed + row * row_bytes + j);
      const float w_even = dequantize(code_at(byte, 0), zero[i], scale[i]);
      const float w_odd = dequantize(code_at(byte, 1), zero[i], scale[i]);
#pragma unroll
      for (int m = 0; m < kM; ++m) {
        acc[i][m] = fmaf(x_even[m], w_even, acc[i][m]);
        acc[i][m] = fmaf(x_odd[m], w_odd, acc[i][m]);
      }
    }
  }
  reduce_and_store<T, kM, kRows>(acc, a.bias, a.out, first_row, a.n_out);
}

template <typename T>
struct alignas(2 * sizeof(T)) FeaturePair {
  T v[2];
};

// weight (N, K) in T from the packed codes: thread j of block column blockIdx.x handles byte j
// (features 2j, 2j + 1) of rows blockIdx.y, blockIdx.y + gridDim.y, ...; one paired store each.
template <typename T>
__global__ void dequantize_kernel(const uint8_t* __restrict__ packed, const float* __restrict__ scales,
                                  const float* __restrict__ zeros, T* __restrict__ weight,
                                  int64_t n_out, int row_bytes, int group_bytes, int64_t groups) {
  const int64_t j = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (j >= row_bytes) return;
  const int64_t group = j / group_bytes;
  for (int64_t row = blockIdx.y; row < n_out; row += gridDim.y) {
    const uint32_t byte = packed[row * row_bytes + j];
    const float s = __ldg(scales + row * groups + group), z = __ldg(zeros + row * groups + group);
    FeaturePair<T> pair;
    pair.v[0] = static_cast<T>(dequantize(code_at(byte, 0), z, s));
    pair.v[1] = static_cast<T>(dequantize(code_at(byte, 1), z, s));
    // Features 2j, 2j + 1 of row n sit at element 2 (n K/2 + j): even, so the pair is aligned.
    *reinterpret_cast<FeaturePair<T>*>(weight + 2 * (row * row_bytes + j)) = pair;
  }
}

// Calls f(std::integral_constant<int, m>{}) for the run-time row count m in [kM, kGemvMaxRows].
template <int kM = 1, typename F>
void with_row_count(int64_t m, const F& f) {
  if constexpr (kM <= kGemvMaxRows) {
    if (m == kM) return f(std::integral_constant<int, kM>{});
    with_row_count<kM + 1>(m, f);
  }
}

#define CLIMBQ_DISPATCH_INT4_DTYPES(TYPE, NAME, ...)          \
  AT_DISPATCH_SWITCH(TYPE, NAME,                              \
                     AT_DISPATCH_CASE(at::kFloat, __VA_ARGS__) \
                     AT_DISPATCH_CASE(at::kHalf, __VA_ARGS__)  \
                     AT_DISPATCH_CASE(at::kBFloat16, __VA_ARGS__))

bool is_aligned(const void* p, uintptr_t bytes) { return reinterpret_cast<uintptr_t>(p) % bytes == 0; }

template <typename T>
void launch_gemv(const GemvArgs<T>& args, int64_t rows, cudaStream_t stream) {
  const bool aligned = args.in_features % kChunkFeatures == 0 && is_aligned(args.x, kChunkBytes) &&
                       is_aligned(args.packed, kChunkBytes);
  // Per weight row, the units the threads stride over: 16-byte chunks or single bytes.
  const int64_t units = aligned ? args.in_features / kChunkFeatures : args.in_features / 2;
  const int64_t threads = std::clamp<int64_t>((units + kWarp - 1) / kWarp * kWarp, kWarp, kMaxThreads);
  with_row_count(rows, [&](auto row_count) {
    constexpr int kM = decltype(row_count)::value;
    constexpr int kRows = rows_per_block<kM>();
    const auto blocks = static_cast<unsigned>((args.n_out + kRows - 1) / kRows);
    if (aligned) {
      gemv_aligned_kernel<T, kM><<<blocks, static_cast<unsigned>(threads), 0, stream>>>(args);
    } else {
      gemv_bytewise_kernel<T, kM><<<blocks, static_cast<unsigned>(threads), 0, stream>>>(args);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

// Output features per dequantized block on the large-M path: kDequantBlockBytes of weights (or
// CLIMBQ_INT4_DEQUANT_BLOCK_BYTES), rounded down to a multiple of 64 rows, at least 64, at most N.
int64_t dequant_block_rows(int64_t n_out, int64_t in_features, int64_t element_bytes) {
  int64_t budget = kDequantBlockBytes;
  if (const char* env = std::getenv("CLIMBQ_INT4_DEQUANT_BLOCK_BYTES")) {
    const long long parsed = std::atoll(env);
    TORCH_CHECK_VALUE(parsed > 0, "CLIMBQ_INT4_DEQUANT_BLOCK_BYTES must be a positive byte count, got '", env, "'");
    budget = parsed;
  }
  const int64_t row_bytes = std::max<int64_t>(1, in_features * element_bytes);
  const int64_t rows = budget / row_bytes / kDequantBlockRowMultiple * kDequantBlockRowMultiple;
  return std::min(n_out, std::max(rows, kDequantBlockRowMultiple));
}

at::Tensor int4_matmul_cuda(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& scales,
                            const at::Tensor& zeros, int64_t group_size,
                            const std::optional<at::Tensor>& bias) {
  check_int4_matmul_args(x, packed, scales, zeros, group_size, bias, c10::kCUDA);
  const int64_t in_features = x.size(-1), n_out = packed.size(0);
  TORCH_CHECK_VALUE(in_features <= std::numeric_limits<int32_t>::max(),
                    "int4_matmul: in_features must be below 2**31 on CUDA (32-bit indices within a row), got ",
                    in_features);
  const c10::cuda::CUDAGuard device_guard(x.device());
  int64_t rows = 1;  // M: the product of x's leading dimensions
  for (int64_t d = 0; d + 1 < x.dim(); ++d) rows *= x.size(d);
  std::vector<int64_t> out_shape(x.sizes().begin(), x.sizes().end());
  out_shape.back() = n_out;
  if (rows == 0 || n_out == 0) return at::empty(out_shape, x.options());

  const at::Tensor x2d = x.contiguous().view({rows, in_features});
  const at::Tensor packed_c = packed.contiguous(), scales_c = scales.contiguous(), zeros_c = zeros.contiguous();
  const std::optional<at::Tensor> bias_c = bias.has_value() ? std::optional(bias->contiguous()) : std::nullopt;
  const int64_t groups = in_features / group_size;
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();

  if (rows <= kGemvMaxRows) {
    at::Tensor out = at::empty({rows, n_out}, x.options());
    CLIMBQ_DISPATCH_INT4_DTYPES(x2d.scalar_type(), "int4_matmul_gemv", [&] {
      const GemvArgs<scalar_t> args{x2d.const_data_ptr<scalar_t>(), packed_c.const_data_ptr<uint8_t>(),
                                    scales_c.const_data_ptr<float>(), zeros_c.const_data_ptr<float>(),
                                    bias_c.has_value() ? bias_c->const_data_ptr<scalar_t>() : nullptr,
                                    out.mutable_data_ptr<scalar_t>(), n_out, in_features, groups, group_size};
      launch_gemv(args, rows, stream);
    });
    return out.view(out_shape);
  }

  at::Tensor out = at::empty({rows, n_out}, x.options());
  const int64_t row_bytes = in_features / 2;
  const int64_t block_rows = dequant_block_rows(n_out, in_features, x.element_size());
  at::Tensor buffer = at::empty({block_rows, in_features}, x.options());
  for (int64_t n0 = 0; n0 < n_out; n0 += block_rows) {
    const int64_t n = std::min(block_rows, n_out - n0);
    const at::Tensor weight = buffer.narrow(0, 0, n);
    if (row_bytes > 0) {
      const dim3 grid(static_cast<unsigned>((row_bytes + kDequantThreads - 1) / kDequantThreads),
                      static_cast<unsigned>(std::min(n, kMaxGridY)));
      CLIMBQ_DISPATCH_INT4_DTYPES(x2d.scalar_type(), "int4_matmul_dequantize", [&] {
        dequantize_kernel<scalar_t><<<grid, kDequantThreads, 0, stream>>>(
            packed_c.const_data_ptr<uint8_t>() + n0 * row_bytes, scales_c.const_data_ptr<float>() + n0 * groups,
            zeros_c.const_data_ptr<float>() + n0 * groups, weight.mutable_data_ptr<scalar_t>(), n,
            static_cast<int>(row_bytes), static_cast<int>(group_size / 2), groups);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    }
    // cuBLAS on the current stream, into y's columns n0 .. n0 + n (row stride n_out, no copy);
    // float32 follows torch's TF32 setting (see the header comment).
    at::Tensor columns = out.narrow(1, n0, n);
    if (bias_c.has_value()) {
      at::addmm_out(columns, bias_c->narrow(0, n0, n), x2d, weight.t());
    } else {
      at::mm_out(columns, x2d, weight.t());
    }
  }
  return out.view(out_shape);
}

}  // namespace
}  // namespace climbq::cuda

TORCH_LIBRARY_IMPL(climbq_native, CUDA, m) {
  m.impl("int4_matmul", &climbq::cuda::int4_matmul_cuda);
}
