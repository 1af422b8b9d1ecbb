// INT4 matmul on tensor cores for small batches of 16-bit x (SPEC 6; path choice in
// int4_matmul.cu): the weight is read once and dequantized in registers straight into MMA
// operands, with no dequantized copy of W in memory (the dequantize + cuBLAS path spent ~90 us
// of its 133 us on that copy at 11008x4096, M = 16..64, on an H100).
//
// It computes y^T = W x^T with mma.sync m16n8k16 (16-bit inputs, float32 accumulation): W is the
// A operand (16 output features x 16 input features), x^T the B operand (16 input features x 8
// rows of x), so a batch of M rows is ceil(M / 8) n-tiles. A warp owns 16 output features (rows
// g and g + 8 of its tile for lane (g, t) = (lane / 4, lane % 4)) and walks K in k-blocks of 128
// features. In each k-block lane (g, t) loads 16 bytes of codes for each of its two rows:
// features 32t .. 32t + 31 (one group), so the warp reads 64 contiguous bytes per row.
//
// Input features are permuted inside each k-block, the same for A and B, which leaves the sum
// unchanged: in MMA step s (0..7) the lane's k slots {2t, 2t+1} and {2t+8, 2t+9} (PTX ISA,
// "Matrix Fragments for mma.m16n8k16") hold features 32t + 4s + {0, 1} and {2, 3}. So a lane's A
// operands come from its own 16 bytes of codes, and its B operand for step s is the 8 bytes of x
// at features 32t + 4s .. 32t + 4s + 3 of row 8j + g: one 16-byte load of x serves two steps.
//
// Dequantization: offset codes (int4_codes.cuh), w = v S + B, one PRMT and one FFMA a weight,
// then a paired conversion to the 16-bit type. The weight reaches the tensor core rounded once
// to x's dtype as in the reference (whose weight is the float32 (q - z) s rounded to that dtype);
// ours differs from that float32 value by ~2^-17 s before the rounding.
//
// The 4 warps of a block own 64 consecutive output features; blockIdx.y splits K so that every SM
// gets blocks (kTargetBlocksPerSm). With more than one split, each writes float32 partial sums
// and a second kernel adds them in split order (deterministic), adds the bias and rounds once.
//
// Where it stands (H100, bench/results/NVIDIA-H100-80GB-HBM3-2026-11-22/int4-ncu.md): warps wait
// on global loads (x fragments, the next k-block's codes) with one k-block in flight; a
// shared-memory, multi-stage cp.async pipeline is the next step.
#include "int4_codes.cuh"
#include "int4_kernels.h"
#include "reduce.cuh"

#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <limits>
#include <type_traits>

namespace climbq::cuda {
namespace {

using namespace int4;

constexpr int kWarps = 4;
constexpr int kThreads = kWarps * kWarp;
constexpr int kTileRows = 16;                     // output features per warp (the MMA's M)
constexpr int kBlockRows = kWarps * kTileRows;    // output features per block
constexpr int kNTile = 8;                         // rows of x per MMA (the MMA's N)
constexpr int kLanesPerRow = 4;                   // lanes (t = 0..3) sharing a row of the tile
constexpr int kBlockFeatures = kLanesPerRow * kChunkFeatures;  // 128 input features per k-block
constexpr int kStepsPerWord = 2;                  // MMA k-steps per 32-bit word of codes
// Split K until the grid has about this many blocks per SM, rounding down. On the H100 that was
// the fastest split swept in every case (bench/int4_cuda_paths.py, two runs: 11008x4096 at M = 8,
// 16, 64: 3; 16384x16384 at M = 16: 2; 4096x4096 at M = 16: 8) but one: 11008x4096 at M = 32,
// where 2 and 3 swapped places between the runs. Rounding up instead (4 splits, a grid of 1.3
// waves at 11008x4096, M = 16) cost 15-20%.
constexpr int kTargetBlocksPerSm = 4;
constexpr int kMaxSplits = 16;
constexpr int64_t kMaxGridY = 65535;

template <typename T>
__device__ __forceinline__ uint32_t pack_pair(float low, float high) {
  if constexpr (std::is_same_v<T, c10::BFloat16>) {
    const __nv_bfloat162 v = __floats2bfloat162_rn(low, high);
    return *reinterpret_cast<const uint32_t*>(&v);
  } else {
    const __half2 v = __floats2half2_rn(low, high);
    return *reinterpret_cast<const uint32_t*>(&v);
  }
}

// acc += A B for one m16n8k16 step, 16-bit inputs, float32 accumulators.
template <typename T>
__device__ __forceinline__ void mma_16816(float (&acc)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  if constexpr (std::is_same_v<T, c10::BFloat16>) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(acc[0]), "+f"(acc[1]), "+f"(acc[2]), "+f"(acc[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(acc[0]), "+f"(acc[1]), "+f"(acc[2]), "+f"(acc[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
}

template <typename T>
struct MmaArgs {
  const T* x;             // (M, K)
  const uint8_t* packed;  // (N, K/2)
  const float* scales;    // (N, groups)
  const float* zeros;
  const T* bias;          // (N,) or null
  T* out;                 // (M, N), written when there is one split
  float* partial;         // (splits, M, N), written when there are more
  int64_t rows;           // M
  int64_t n_out;          // N
  int64_t in_features;    // K
  int64_t groups;
  int chunks_per_group;   // g / 32
  int k_blocks;           // ceil(K / 128)
  int k_blocks_per_split;
};

// A lane's share of one k-block of W: 16 bytes of codes for each of its rows with their group's
// scale and zero. Only loads: nothing uses them until the k-block is computed, so the prefetch of
// the next k-block never stalls the warp.
struct Stage {
  uint4 codes[2];
  float scale[2];
  float zero[2];
};

// kNT n-tiles: up to 8 kNT rows of x (x is read word by word as a k-block computes; staging it a
// k-block ahead with the codes measured no faster at M = 16 and slower at M <= 8).
template <typename T, int kNT>
__global__ void __launch_bounds__(kThreads) int4_mma_kernel(const MmaArgs<T> a) {
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  const int g = lane / kLanesPerRow, t = lane % kLanesPerRow;
  const int64_t tile_row = int64_t(blockIdx.x) * kBlockRows + warp * kTileRows;
  // Rows past N re-read the last row (in bounds) and are never stored.
  const int64_t rows[2] = {std::min(tile_row + g, a.n_out - 1), std::min(tile_row + g + 8, a.n_out - 1)};
  const int64_t row_bytes = a.in_features / 2;
  const int chunks = static_cast<int>(a.in_features / kChunkFeatures);
  const int kb_begin = blockIdx.y * a.k_blocks_per_split;
  const int kb_end = std::min(kb_begin + a.k_blocks_per_split, a.k_blocks);

  // Lane (g, t) reads x rows 8j + g; rows past M read as zeros.
  const T* x_rows[kNT];
  bool x_valid[kNT];
#pragma unroll
  for (int j = 0; j < kNT; ++j) {
    const int64_t m = int64_t(j) * kNTile + g;
    x_valid[j] = m < a.rows;
    x_rows[j] = a.x + (x_valid[j] ? m : 0) * a.in_features;
  }
  // x[8j + g][32 chunk + 8w .. + 8) as a uint4 (steps 2w: .x, .y; 2w + 1: .z, .w), or zeros.
  auto load_x = [&](int j, int chunk, int w) {
    if (!x_valid[j] || chunk >= chunks) return make_uint4(0, 0, 0, 0);
    return __ldg(reinterpret_cast<const uint4*>(x_rows[j] + int64_t(chunk) * kChunkFeatures) + w);
  };
  auto fetch = [&](int kb) {
    Stage st;
    const int chunk = kb * kLanesPerRow + t;
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      st.codes[r] = make_uint4(0, 0, 0, 0);
      st.scale[r] = 0.0f;
      st.zero[r] = 0.0f;
      if (chunk < chunks) {
        st.codes[r] = __ldcs(reinterpret_cast<const uint4*>(a.packed + rows[r] * row_bytes) + chunk);  // read once
        const int64_t table = rows[r] * a.groups + chunk / a.chunks_per_group;
        st.scale[r] = __ldg(a.scales + table);
        st.zero[r] = __ldg(a.zeros + table);
      }
    }
    return st;
  };

  float acc[kNT][4] = {};
  Stage current = fetch(kb_begin);
  for (int kb = kb_begin; kb < kb_end; ++kb) {
    Stage next = current;
    if (kb + 1 < kb_end) next = fetch(kb + 1);  // in flight while this k-block computes
    const int chunk = kb * kLanesPerRow + t;
    float big_scale[2], bias[2];  // S = 256 s, B = -(128 + z) s (int4_codes.cuh)
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      big_scale[r] = current.scale[r] * kOffsetCodeScale;
      bias[r] = -(kOffsetCodeBias + current.zero[r]) * current.scale[r];
    }
#pragma unroll
    for (int w = 0; w < kChunkWords; ++w) {
      uint4 xw[kNT];
#pragma unroll
      for (int j = 0; j < kNT; ++j) xw[j] = load_x(j, chunk, w);
      uint32_t even[2], odd[2];
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        const uint32_t word = word_of(current.codes[r], w);
        even[r] = even_codes(word);
        odd[r] = odd_codes(word);
      }
#pragma unroll
      for (int h = 0; h < kStepsPerWord; ++h) {
        // Features 8w + 4h + {0, 1, 2, 3}: even byte 2h, odd byte 2h, even byte 2h+1, odd byte 2h+1.
        float wt[2][4];
#pragma unroll
        for (int r = 0; r < 2; ++r) {
          wt[r][0] = fmaf(offset_code(even[r], 2 * h), big_scale[r], bias[r]);
          wt[r][1] = fmaf(offset_code(odd[r], 2 * h), big_scale[r], bias[r]);
          wt[r][2] = fmaf(offset_code(even[r], 2 * h + 1), big_scale[r], bias[r]);
          wt[r][3] = fmaf(offset_code(odd[r], 2 * h + 1), big_scale[r], bias[r]);
        }
        // A: {row g, k 2t..2t+1}, {row g+8, same}, {row g, k 2t+8..}, {row g+8, k 2t+8..}.
        const uint32_t frag[4] = {pack_pair<T>(wt[0][0], wt[0][1]), pack_pair<T>(wt[1][0], wt[1][1]),
                                  pack_pair<T>(wt[0][2], wt[0][3]), pack_pair<T>(wt[1][2], wt[1][3])};
#pragma unroll
        for (int j = 0; j < kNT; ++j) {
          mma_16816<T>(acc[j], frag, h == 0 ? xw[j].x : xw[j].z, h == 0 ? xw[j].y : xw[j].w);
        }
      }
    }
    current = next;
  }

  // acc[j]: {row g, x rows 8j + 2t, 8j + 2t + 1}, {row g + 8, the same}.
#pragma unroll
  for (int j = 0; j < kNT; ++j) {
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int64_t row = tile_row + g + (e >= 2 ? 8 : 0);
      const int64_t m = int64_t(j) * kNTile + 2 * t + (e & 1);
      if (row >= a.n_out || m >= a.rows) continue;
      if (a.partial != nullptr) {
        a.partial[(int64_t(blockIdx.y) * a.rows + m) * a.n_out + row] = acc[j][e];
      } else {
        float y = acc[j][e];
        if (a.bias != nullptr) y += static_cast<float>(a.bias[row]);
        a.out[m * a.n_out + row] = static_cast<T>(y);
      }
    }
  }
}

// out[m, n] = sum over splits (in order) of partial[split, m, n] + bias[n], rounded once to T.
template <typename T>
__global__ void sum_splits_kernel(const float* __restrict__ partial, const T* __restrict__ bias,
                                  T* __restrict__ out, int64_t rows, int64_t n_out, int splits) {
  const int64_t count = rows * n_out;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < count; i += int64_t(gridDim.x) * blockDim.x) {
    float y = 0.0f;
    for (int s = 0; s < splits; ++s) y += partial[s * count + i];
    if (bias != nullptr) y += static_cast<float>(bias[i % n_out]);
    out[i] = static_cast<T>(y);
  }
}

// Calls f(std::integral_constant<int, n>{}) with n = ceil(rows / 8), 1..kMmaMaxRows / 8.
template <int kNT = 1, typename F>
void with_n_tiles(int64_t rows, const F& f) {
  if constexpr (kNT * kNTile <= kMmaMaxRows) {
    if (rows <= kNT * kNTile) return f(std::integral_constant<int, kNT>{});
    with_n_tiles<kNT + 1>(rows, f);
  }
}

bool is_aligned(const void* p, uintptr_t bytes) { return reinterpret_cast<uintptr_t>(p) % bytes == 0; }

template <typename T, int kNT>
void launch(const Int4Operands& a, at::Tensor& out, int64_t split_k, cudaStream_t stream) {
  const int64_t row_blocks = (a.out_features + kBlockRows - 1) / kBlockRows;
  const int k_blocks = static_cast<int>((a.in_features + kBlockFeatures - 1) / kBlockFeatures);
  int64_t splits = split_k;
  if (splits <= 0) {  // as many as keep the grid within kTargetBlocksPerSm blocks per SM
    const int64_t target = int64_t(kTargetBlocksPerSm) * at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
    splits = std::min<int64_t>(target / row_blocks, kMaxSplits);
  }
  splits = std::clamp<int64_t>(splits, 1, std::min<int64_t>(k_blocks, kMaxGridY));
  const int per_split = static_cast<int>((k_blocks + splits - 1) / splits);
  splits = (k_blocks + per_split - 1) / per_split;  // no empty split
  TORCH_CHECK(row_blocks <= std::numeric_limits<int32_t>::max(), "int4_mma: too many output features");
  at::Tensor partial;
  if (splits > 1) partial = at::empty({splits, a.rows, a.out_features}, a.x.options().dtype(at::kFloat));

  const T* bias = a.bias.has_value() ? a.bias->const_data_ptr<T>() : nullptr;
  const MmaArgs<T> args{a.x.const_data_ptr<T>(), a.packed.const_data_ptr<uint8_t>(), a.scales.const_data_ptr<float>(),
                        a.zeros.const_data_ptr<float>(), bias, out.mutable_data_ptr<T>(),
                        splits > 1 ? partial.mutable_data_ptr<float>() : nullptr, a.rows, a.out_features,
                        a.in_features, a.in_features / a.group_size,
                        static_cast<int>(a.group_size / kChunkFeatures), k_blocks, per_split};
  const dim3 grid(static_cast<unsigned>(row_blocks), static_cast<unsigned>(splits));
  int4_mma_kernel<T, kNT><<<grid, kThreads, 0, stream>>>(args);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  if (splits > 1) {
    constexpr int kSumThreads = 256;
    const int64_t count = a.rows * a.out_features;
    const auto blocks = static_cast<unsigned>(std::min<int64_t>((count + kSumThreads - 1) / kSumThreads, 4096));
    sum_splits_kernel<T><<<blocks, kSumThreads, 0, stream>>>(args.partial, bias, args.out, a.rows, a.out_features,
                                                             static_cast<int>(splits));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

}  // namespace

bool int4_mma_supports(const Int4Operands& a) {
  const auto dtype = a.x.scalar_type();
  return (dtype == at::kHalf || dtype == at::kBFloat16) && a.rows >= 1 && a.rows <= kMmaMaxRows &&
         a.in_features % kChunkFeatures == 0 && a.in_features > 0 && a.out_features > 0 &&
         is_aligned(a.x.const_data_ptr(), kChunkBytes) && is_aligned(a.packed.const_data_ptr(), kChunkBytes) &&
         a.in_features / kChunkFeatures <= std::numeric_limits<int>::max() &&
         at::cuda::getCurrentDeviceProperties()->major >= 8;  // mma.sync m16n8k16 with bf16: sm_80+
}

void int4_mma(const Int4Operands& a, at::Tensor& out, int64_t split_k, cudaStream_t stream) {
  TORCH_CHECK(int4_mma_supports(a), "int4_mma: unsupported operands (see int4_mma_supports)");
  const auto run = [&](auto type_tag) {
    with_n_tiles(a.rows, [&](auto n_tiles) {
      launch<decltype(type_tag), decltype(n_tiles)::value>(a, out, split_k, stream);
    });
  };
  if (a.x.scalar_type() == at::kHalf) {
    run(c10::Half{});
  } else {
    run(c10::BFloat16{});
  }
}

}  // namespace climbq::cuda
