// INT4 GEMV on CUDA cores for 1..8 rows of x (algorithms.md §6; path choice in int4_matmul.cu:
// float32 x, and 16-bit x at M = 1, 2 or where the tensor-core kernel does not apply): reads the
// weight once.
//
// A block owns kRows consecutive output features (8 for M <= 4, else 4: `rows_per_block`); its
// threads (up to 256, a multiple of 32) stride together over K, each holding kRows x M float32
// partial sums, so every weight load meets every row of x and every x value read (through the
// read-only L1 path) serves kRows weight rows. Partial sums are reduced by warp shuffles, then
// across warps in shared memory in a fixed order (deterministic); the epilogue adds the bias in
// float32 and rounds once to x's dtype. Two loops over K:
//   * aligned: when K % 32 == 0 and x and packed start on 16-byte boundaries (so every packed row
//     and every x row does too), a thread takes 16-byte chunks: one uint4 of codes per weight row
//     (32 features, inside one group: every group size is a multiple of 32) and 8 features of x
//     per 16-byte load (two for float32);
//   * bytewise: otherwise (one group per row with K % 32 != 0, e.g. K = 18 or 4094, whose rows
//     start at any byte; or misaligned storage), a thread takes one byte (two features) at a time
//     with scalar loads, re-reading scale and zero only when its group changes.
//
// Arithmetic. With the exact form below for every dtype, the batch-1 kernel is bound by
// instructions, not bytes (about 8 instructions per weight, DRAM well under half busy), so:
//   * float32 x: each weight formed as the reference forms it in float32 ((q - z), then * s,
//     each rounded), then x * W accumulated with FMAs: differs from float64 only by the order of
//     summation;
//   * 16-bit x: offset codes (int4_codes.cuh): per 8 features and row, sum x v over the codes'
//     v = 0.5 + q/256 (one byte permute and one FMA per weight), then S (that - b sum x): about
//     4 instructions per weight in all, which halves the issue work. Its float32 cancellation
//     (~2^-14 relative) stays far below the 16-bit output's rounding. The factored form is not
//     used for float32 outputs: s (sum x q - z sum x) exceeds the error rule there (emulated on
//     the CPU at K = 256).
#include "int4_codes.cuh"
#include "int4_kernels.h"
#include "reduce.cuh"

#include <c10/cuda/CUDAException.h>

#include <algorithm>
#include <type_traits>

namespace climbq::cuda {
namespace {

using namespace int4;

constexpr int kMaxThreads = kGemvMaxThreads;  // threads per block, at most
constexpr int kMaxWarps = kMaxThreads / kWarp;

// Output features per block for kM rows of x: each thread keeps kRows x kM float32 sums and a
// uint4 of codes per row in registers; 8 rows up to kM = 4, then 4 (8 rows of 5 to 8 sums do not
// fit in registers and spill).
template <int kM>
constexpr int rows_per_block() {
  return kM <= 4 ? 8 : 4;
}

// Sum over the warp, returned to every lane (butterfly).
__device__ __forceinline__ float warp_allreduce_sum(float v) {
#pragma unroll
  for (int offset = kWarp / 2; offset > 0; offset /= 2)
    v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
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
    static_assert(is_16bit_float<T>, "x is float32, float16 or bfloat16");
    const uint4 a = __ldg(v);
    const uint32_t pairs[kWordFeatures / 2] = {a.x, a.y, a.z, a.w};
#pragma unroll
    for (int i = 0; i < kWordFeatures / 2; ++i) {
      out[2 * i] = low_half<T>(pairs[i]);
      out[2 * i + 1] = high_half<T>(pairs[i]);
    }
  }
}

// The weight row that slot i of a block reads: slots past the last feature re-read the last row
// (in bounds) and are never stored.
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

// The shapes one launch needs; x (kM, K), packed (N, K/2), scales and zeros (N, groups).
template <typename T>
struct GemvArgs {
  const T* x;
  const uint8_t* packed;
  const float* scales;
  const float* zeros;
  const T* bias;        // (N,) or null
  T* out;               // (kM, N)
  int64_t n_out;        // N
  int64_t in_features;  // K
  int64_t groups;       // K / g
  int64_t group_size;   // g
};

// acc[m] += sum over the word's 8 features of x[m][t] * W[t], W[t] = (q_t - zero) * scale in the
// exact float32 form (float32 x).
template <int kM>
__device__ __forceinline__ void accumulate_word_exact(uint32_t word, float zero, float scale,
                                                      const float (&xs)[kM][kWordFeatures],
                                                      float (&acc)[kM]) {
#pragma unroll
  for (int t = 0; t < kWordFeatures; ++t) {
    const float weight = dequantize(code_at(word, t), zero, scale);
#pragma unroll
    for (int m = 0; m < kM; ++m) acc[m] = fmaf(xs[m][t], weight, acc[m]);
  }
}

// The same with offset codes (16-bit x): acc[m] += S (sum_t x[m][t] v_t - b x_sum[m]), where
// S = 256 scale, b = 0.5 + zero / 256 and x_sum[m] = sum_t x[m][t] (int4_codes.cuh).
template <int kM>
__device__ __forceinline__ void accumulate_word_offset(uint32_t word, float b, float big_scale,
                                                       const float (&xs)[kM][kWordFeatures],
                                                       const float (&x_sum)[kM], float (&acc)[kM]) {
  const uint32_t even = even_codes(word), odd = odd_codes(word);
  float v[kWordFeatures];
#pragma unroll
  for (int j = 0; j < kWordFeatures / 2; ++j) {
    // Features 2j (low nibble of byte j) and 2j + 1 (high).
    v[2 * j] = offset_code(even, j);
    v[2 * j + 1] = offset_code(odd, j);
  }
#pragma unroll
  for (int m = 0; m < kM; ++m) {
    float dot = xs[m][0] * v[0];
#pragma unroll
    for (int t = 1; t < kWordFeatures; ++t) dot = fmaf(xs[m][t], v[t], dot);
    acc[m] = fmaf(big_scale, fmaf(-b, x_sum[m], dot), acc[m]);
  }
}

// Aligned GEMV: K % 32 == 0, x and packed 16-byte aligned. Thread t takes chunks c = t,
// t + blockDim.x, ...; chunk c is packed bytes [16c, 16c + 16) of a row = features [32c, 32c + 32).
template <typename T, int kM>
__global__ void __launch_bounds__(kMaxThreads) gemv_aligned_kernel(const GemvArgs<T> a) {
  constexpr int kRows = rows_per_block<kM>();
  constexpr bool kOffsetCodes = is_16bit_float<T>;
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
      // Read once.
      codes[i] = __ldcs(reinterpret_cast<const uint4*>(a.packed + row * row_bytes) + c);
      scale[i] = __ldg(a.scales + row * a.groups + group);
      zero[i] = __ldg(a.zeros + row * a.groups + group);
    }
    if constexpr (kOffsetCodes) {
#pragma unroll
      for (int i = 0; i < kRows; ++i) {  // scale -> S = 256 s, zero -> b = 0.5 + z / 256
        scale[i] *= kOffsetCodeScale;
        zero[i] = fmaf(zero[i], 1.0f / kOffsetCodeScale, 0.5f);
      }
    }
    const T* x_chunk = a.x + int64_t(c) * kChunkFeatures;
    // Unrolled, the compiler hoists all four words' x loads (32 kM floats): kept for kM <= 2,
    // where it fits in registers; beyond, one word at a time (word_of becomes three selects).
#pragma unroll(kM <= 2 ? kChunkWords : 1)
    for (int w = 0; w < kChunkWords; ++w) {
      float xs[kM][kWordFeatures];
#pragma unroll
      for (int m = 0; m < kM; ++m) load_x8(x_chunk + m * a.in_features + w * kWordFeatures, xs[m]);
      if constexpr (kOffsetCodes) {
        float x_sum[kM];
#pragma unroll
        for (int m = 0; m < kM; ++m) {
          x_sum[m] = xs[m][0];
#pragma unroll
          for (int t = 1; t < kWordFeatures; ++t) x_sum[m] += xs[m][t];
        }
#pragma unroll
        for (int i = 0; i < kRows; ++i) {
          accumulate_word_offset<kM>(word_of(codes[i], w), zero[i], scale[i], xs, x_sum, acc[i]);
        }
      } else {
#pragma unroll
        for (int i = 0; i < kRows; ++i)
          accumulate_word_exact<kM>(word_of(codes[i], w), zero[i], scale[i], xs, acc[i]);
      }
    }
  }
  reduce_and_store<T, kM, kRows>(acc, a.bias, a.out, first_row, a.n_out);
}

// Bytewise GEMV for any even K and any alignment (exact weights for every dtype: a rare path):
// thread t takes packed bytes j = t, t + blockDim.x, ... of each row (features 2j and 2j + 1,
// one group: g is even).
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

// Calls f(std::integral_constant<int, m>{}) for the run-time row count m in [kM, kGemvMaxRows].
template <int kM = 1, typename F>
void with_row_count(int64_t m, const F& f) {
  if constexpr (kM <= kGemvMaxRows) {
    if (m == kM) return f(std::integral_constant<int, kM>{});
    with_row_count<kM + 1>(m, f);
  }
}

bool is_aligned(const void* p, uintptr_t bytes) {
  return reinterpret_cast<uintptr_t>(p) % bytes == 0;
}

template <typename T>
void launch(const GemvArgs<T>& args, int64_t rows, int64_t forced_threads, cudaStream_t stream) {
  const bool aligned = args.in_features % kChunkFeatures == 0 && is_aligned(args.x, kChunkBytes) &&
                       is_aligned(args.packed, kChunkBytes);
  // Per weight row, the units the threads stride over: 16-byte chunks or single bytes.
  const int64_t units = aligned ? args.in_features / kChunkFeatures : args.in_features / 2;
  const int64_t threads =
      forced_threads > 0
          ? forced_threads
          : std::clamp<int64_t>((units + kWarp - 1) / kWarp * kWarp, kWarp, kMaxThreads);
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

}  // namespace

void int4_gemv(const Int4Operands& a, at::Tensor& out, int64_t threads, cudaStream_t stream) {
  TORCH_CHECK(a.rows >= 1 && a.rows <= kGemvMaxRows, "int4_gemv: rows must be in [1, ",
              kGemvMaxRows, "], got ", a.rows);
  TORCH_CHECK(threads == 0 || (threads % kWarp == 0 && threads >= kWarp && threads <= kMaxThreads),
              "int4_gemv: threads must be 0 or a multiple of ", kWarp, " up to ", kMaxThreads,
              ", got ", threads);
  CLIMBQ_DISPATCH_INT4_DTYPES(a.x.scalar_type(), "int4_gemv", [&] {
    const GemvArgs<scalar_t> args{a.x.const_data_ptr<scalar_t>(),
                                  a.packed.const_data_ptr<uint8_t>(),
                                  a.scales.const_data_ptr<float>(),
                                  a.zeros.const_data_ptr<float>(),
                                  a.bias.has_value() ? a.bias->const_data_ptr<scalar_t>() : nullptr,
                                  out.mutable_data_ptr<scalar_t>(),
                                  a.out_features,
                                  a.in_features,
                                  a.in_features / a.group_size,
                                  a.group_size};
    launch(args, a.rows, threads, stream);
  });
}

}  // namespace climbq::cuda
