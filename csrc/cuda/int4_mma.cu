// INT4 matmul on tensor cores for small batches of 16-bit x (algorithms.md §6; path choice in
// int4_matmul.cu): the weight is read once and dequantized in registers straight into MMA
// operands, with no dequantized copy of W in memory: at these batch sizes, writing and re-reading
// that copy is most of the dequantize + cuBLAS path's time.
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
// The 4 warps of a block own 64 consecutive output features; blockIdx.y splits K so that every
// SM gets blocks (kTargetBlocksPerSm). With more than one split, each writes float32 partial
// sums and a second kernel adds them in split order (deterministic), adds the bias and rounds
// once.
//
// Two kernels share that scheme. The registers kernel loads each lane's codes, scales and zeros
// straight into registers one k-block ahead and reads x through L1; it is the faster one for
// M <= 16. The pipelined kernel streams the block's codes, group tables and x through kStages
// shared-memory buffers with cp.async (x once per block instead of once per warp), which pays
// from M = 17 on; below, its per-k-block copies and barrier cost more than they hide. Where a
// k-block lies inside one group (g a multiple of 128, or one group per row), it copies one scale
// and one zero per row of the block and k-block (one 4-byte copy a thread) instead of one per
// row and lane (four a thread, the same values four times over for the lanes of a row).
//
// Both kernels are latency-bound, well short of the time it takes to read the weight: they issue
// well under one instruction per scheduler cycle, and the pipelined kernel keeps L1 busy with
// its copies.
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
constexpr int kTileRows = 16;                   // output features per warp (the MMA's M)
constexpr int kBlockRows = kWarps * kTileRows;  // output features per block
constexpr int kNTile = 8;                       // rows of x per MMA (the MMA's N)
constexpr int kLanesPerRow = 4;                 // lanes (t = 0..3) sharing a row of the tile
constexpr int kBlockFeatures = kLanesPerRow * kChunkFeatures;  // 128 input features per k-block
constexpr int kStepsPerWord = 2;  // MMA k-steps per 32-bit word of codes
// Split K until the grid has about this many blocks per SM, rounding down: rounding up leaves a
// partial last wave of blocks, which costs more than the extra split gains.
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
__device__ __forceinline__ void mma_16816(float (&acc)[4], const uint32_t (&a)[4], uint32_t b0,
                                          uint32_t b1) {
  if constexpr (std::is_same_v<T, c10::BFloat16>) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, "
                 "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
                 : "+f"(acc[0]), "+f"(acc[1]), "+f"(acc[2]), "+f"(acc[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  } else {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, "
                 "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
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
  const T* bias;        // (N,) or null
  T* out;               // (M, N), written when there is one split
  float* partial;       // (splits, M, N), written when there are more
  int64_t rows;         // M
  int64_t n_out;        // N
  int64_t in_features;  // K
  int64_t groups;
  int chunks_per_group;  // g / 32
  int k_blocks;          // ceil(K / 128)
  int k_blocks_per_split;
};

// acc += this lane's share of W x^T over one k-block: its 16 bytes of codes for each of its two
// rows of the tile (with their group's scale and zero) times x; x_word(j, w) is x[8j + g],
// features 32t + 8w .. + 8 of the k-block, as a uint4 (steps 2w: .x, .y; 2w + 1: .z, .w).
template <typename T, int kNT, typename XWord>
__device__ __forceinline__ void mma_k_block(float (&acc)[kNT][4], const uint4 (&codes)[2],
                                            const float (&scale)[2], const float (&zero)[2],
                                            const XWord& x_word) {
  float big_scale[2], bias[2];  // S = 256 s, B = -(128 + z) s (int4_codes.cuh)
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    big_scale[r] = scale[r] * kOffsetCodeScale;
    bias[r] = -(kOffsetCodeBias + zero[r]) * scale[r];
  }
#pragma unroll
  for (int w = 0; w < kChunkWords; ++w) {
    uint4 xw[kNT];
#pragma unroll
    for (int j = 0; j < kNT; ++j) xw[j] = x_word(j, w);
    uint32_t even[2], odd[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const uint32_t word = word_of(codes[r], w);
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
}

// Stores a warp's tile: acc[j] holds {row g, x rows 8j + 2t, 8j + 2t + 1}, {row g + 8, the same}
// for the rows from tile_row; into the split's float32 partial sums, or into out with the bias.
template <typename T, int kNT>
__device__ __forceinline__ void store_tile(const MmaArgs<T>& a, const float (&acc)[kNT][4],
                                           int64_t tile_row, int g, int t) {
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

// Asynchronous global-to-shared copies (sm_80+): `bytes` of `src` to `dst`, or zeros when `valid`
// is false (no global read then). 16-byte copies bypass L1 (codes are read once; x is shared
// through shared memory instead).
__device__ __forceinline__ void copy_async_16(void* dst, const void* src, bool valid) {
  const auto address = static_cast<uint32_t>(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(address), "l"(src),
               "r"(valid ? 16 : 0));
}
__device__ __forceinline__ void copy_async_4(void* dst, const void* src, bool valid) {
  const auto address = static_cast<uint32_t>(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(address), "l"(src),
               "r"(valid ? 4 : 0));
}
__device__ __forceinline__ void commit_copies() { asm volatile("cp.async.commit_group;\n" ::); }
// Until at most kPending committed groups are in flight.
template <int kPending>
__device__ __forceinline__ void wait_copies() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending));
}

// One k-block of a block's operands in shared memory: codes (row r, lane t's 16 bytes), the
// scale and zero of each (r, t) chunk's group (with row tables, of each row r: the first kRows
// entries), and x: 8 kNT rows of 128 features, 16 16-byte chunks a row.
constexpr int kXChunks = kBlockFeatures * 2 / kChunkBytes;  // 16-bit x: 16 chunks of 8 features
template <int kNT>
struct StageLayout {
  static constexpr int kRows = kBlockRows;
  static constexpr int kCodeBytes = kRows * kLanesPerRow * kChunkBytes;
  static constexpr int kTableBytes = kRows * kLanesPerRow * int(sizeof(float));
  static constexpr int kXBytes = kNT * kNTile * kXChunks * kChunkBytes;
  static constexpr int kBytes = kCodeBytes + 2 * kTableBytes + kXBytes;
};

// Where x's chunk c (features 8c .. 8c + 7 of the k-block) of row m sits in its row of shared
// memory. Lanes read 16 bytes each, 8 lanes at a time: lanes (g, t) for two rows g and all four t,
// at chunk c = 4t + w. Unswizzled, chunks c and c + 8 share banks and every row starts on the same
// bank; flipping bit 1 in the upper half of a row and bit 0 in odd rows puts the 8 lanes on 8
// distinct 16-byte bank groups.
__device__ __forceinline__ int x_slot(int m, int c) { return c ^ ((c >> 3) << 1) ^ (m & 1); }

// The pipelined kernel (M = 17..64). kNT n-tiles: up to 8 kNT rows of x. Operands stream through
// kStages shared-memory buffers with cp.async, kStages - 1 k-blocks ahead of the one computed.
// kRowTables: every k-block lies inside one group, whose scale and zero are copied once per row.
template <typename T, int kNT, int kStages, bool kRowTables>
__global__ void __launch_bounds__(kThreads) int4_mma_kernel(const MmaArgs<T> a) {
  using Layout = StageLayout<kNT>;
  constexpr int kRows = Layout::kRows;  // output features per block
  extern __shared__ __align__(16) uint8_t shared[];
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  const int g = lane / kLanesPerRow, t = lane % kLanesPerRow;
  const int64_t block_row = int64_t(blockIdx.x) * kRows;
  const int64_t row_bytes = a.in_features / 2;
  const int chunks = static_cast<int>(a.in_features / kChunkFeatures);
  const int kb_begin = blockIdx.y * a.k_blocks_per_split;
  const int kb_count = std::min(kb_begin + a.k_blocks_per_split, a.k_blocks) - kb_begin;

  // Each thread copies the same pieces of every k-block: codes (and lane tables) of rows
  // r = tid / 4 + 32 i, lane t = tid % 4 (i < kCodeCopies); with row tables, entry
  // e = tid + kThreads i of the scales then the zeros (i < kTableCopies: row e % kRows, the scale
  // for e < kRows, else the zero); x chunk c = tid % 16 of rows m = tid / 16 + 8 i (i < kNT).
  // Pointers are set once; past N, M or K the copies write zeros.
  constexpr int kCodeCopies = kRows * kLanesPerRow / kThreads;
  constexpr int kTableCopies = 2 * kRows / kThreads;
  constexpr int kRowsPerCopy = kThreads / kLanesPerRow;
  constexpr int kXRowsPerCopy = kThreads / kXChunks;
  static_assert(kCodeCopies * kThreads == kRows * kLanesPerRow && kXRowsPerCopy == kNTile);
  static_assert(kTableCopies * kThreads == 2 * kRows,
                "row tables: whole copies a thread, scales then zeros");
  const int copy_t = threadIdx.x % kLanesPerRow;
  const int copy_c = threadIdx.x % kXChunks;
  const uint8_t* code_src[kCodeCopies];
  const float* scale_src[kCodeCopies];
  const float* zero_src[kCodeCopies];
  bool row_valid[kCodeCopies];
#pragma unroll
  for (int i = 0; i < kCodeCopies; ++i) {
    const int64_t row = block_row + threadIdx.x / kLanesPerRow + i * kRowsPerCopy;
    row_valid[i] = row < a.n_out;
    const int64_t safe_row = row_valid[i] ? row : 0;
    code_src[i] = a.packed + safe_row * row_bytes + copy_t * kChunkBytes;
    scale_src[i] = a.scales + safe_row * a.groups;
    zero_src[i] = a.zeros + safe_row * a.groups;
  }
  const float* row_table_src[kTableCopies];  // row tables: entry tid + kThreads i's group 0
  bool table_valid[kTableCopies];
#pragma unroll
  for (int i = 0; i < kTableCopies; ++i) {
    const int entry = threadIdx.x + i * kThreads, row = entry % kRows;
    table_valid[i] = block_row + row < a.n_out;
    row_table_src[i] =
        (entry < kRows ? a.scales : a.zeros) + (table_valid[i] ? block_row + row : 0) * a.groups;
  }
  const T* x_src[kNT];
  bool x_valid[kNT];
#pragma unroll
  for (int i = 0; i < kNT; ++i) {
    const int m = threadIdx.x / kXChunks + i * kXRowsPerCopy;
    x_valid[i] = m < a.rows;
    x_src[i] = a.x + (x_valid[i] ? int64_t(m) * a.in_features : 0) + copy_c * kWordFeatures;
  }
  auto load = [&](int kb, int slot) {
    uint8_t* stage = shared + slot * Layout::kBytes;
    auto* codes = reinterpret_cast<uint4*>(stage);
    auto* scales = reinterpret_cast<float*>(stage + Layout::kCodeBytes);
    auto* zeros = reinterpret_cast<float*>(stage + Layout::kCodeBytes + Layout::kTableBytes);
    auto* xs = reinterpret_cast<uint4*>(stage + Layout::kCodeBytes + 2 * Layout::kTableBytes);
    const int chunk = kb * kLanesPerRow + copy_t;
    const bool chunk_valid = chunk < chunks;
    const int group = chunk_valid ? chunk / a.chunks_per_group : 0;
#pragma unroll
    for (int i = 0; i < kCodeCopies; ++i) {
      const bool valid = row_valid[i] && chunk_valid;
      const int slot_index = threadIdx.x + i * kThreads;
      copy_async_16(codes + slot_index,
                    code_src[i] + (valid ? int64_t(kb) * kBlockFeatures / 2 : 0), valid);
      if constexpr (!kRowTables) {
        copy_async_4(scales + slot_index, scale_src[i] + group, valid);
        copy_async_4(zeros + slot_index, zero_src[i] + group, valid);
      }
    }
    if constexpr (kRowTables) {
      const int block_group = kb * kLanesPerRow / a.chunks_per_group;  // the k-block's one group
#pragma unroll
      for (int i = 0; i < kTableCopies; ++i) {
        const int entry = threadIdx.x + i * kThreads;  // zeros follow the scales' kRows entries
        copy_async_4((entry < kRows ? scales + entry : zeros + entry - kRows),
                     row_table_src[i] + block_group, table_valid[i]);
      }
    }
    const bool x_chunk_valid = kb * kLanesPerRow + copy_c / kChunkWords < chunks;
#pragma unroll
    for (int i = 0; i < kNT; ++i) {
      const int m = threadIdx.x / kXChunks + i * kXRowsPerCopy;
      const bool valid = x_valid[i] && x_chunk_valid;
      copy_async_16(xs + m * kXChunks + x_slot(m, copy_c),
                    x_src[i] + (valid ? int64_t(kb) * kBlockFeatures : 0), valid);
    }
  };

  float acc[kNT][4] = {};
  const int warp_row = warp * kTileRows;  // the warp's first row in the block
  auto compute = [&](int slot) {
    const uint8_t* stage = shared + slot * Layout::kBytes;
    const auto* codes = reinterpret_cast<const uint4*>(stage);
    const auto* scales = reinterpret_cast<const float*>(stage + Layout::kCodeBytes);
    const auto* zeros =
        reinterpret_cast<const float*>(stage + Layout::kCodeBytes + Layout::kTableBytes);
    const auto* xs =
        reinterpret_cast<const uint4*>(stage + Layout::kCodeBytes + 2 * Layout::kTableBytes);
    uint4 code[2];
    float scale[2], zero[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int row = warp_row + g + 8 * r;  // lane (g, t)'s rows g, g + 8
      const int i = row * kLanesPerRow + t;
      const int table = kRowTables ? row : i;
      code[r] = codes[i];
      scale[r] = scales[table];
      zero[r] = zeros[table];
    }
    mma_k_block<T, kNT>(acc, code, scale, zero, [&](int j, int w) {
      const int m = j * kNTile + g;
      return xs[m * kXChunks + x_slot(m, kChunkWords * t + w)];
    });
  };

#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < kb_count) load(kb_begin + s, s);
    commit_copies();  // possibly empty: every thread commits the same number of groups
  }
  for (int i = 0; i < kb_count; ++i) {
    wait_copies<kStages - 2>();  // k-block i has landed (this thread's copies) ...
    __syncthreads();             // ... everyone's, and buffer (i - 1) % kStages is free to refill
    if (i + kStages - 1 < kb_count) load(kb_begin + i + kStages - 1, (i + kStages - 1) % kStages);
    commit_copies();
    compute(i % kStages);
  }

  store_tile(a, acc, block_row + warp_row, g, t);
}

// A lane's share of one k-block of W: 16 bytes of codes for each of its two rows with their
// group's scale and zero. Only loads: nothing uses them until the k-block is computed, so the
// prefetch of the next k-block never stalls the warp.
struct RegisterStage {
  uint4 codes[2];
  float scale[2];
  float zero[2];
};

// The registers kernel (M <= 16): operands straight from global memory into registers, one
// k-block ahead. kNT n-tiles: up to 8 kNT rows of x. x is read word by word as a k-block
// computes: staging it a k-block ahead with the codes is no faster at M = 16 and slower at
// M <= 8.
template <typename T, int kNT>
__global__ void __launch_bounds__(kThreads) int4_mma_registers_kernel(const MmaArgs<T> a) {
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  const int g = lane / kLanesPerRow, t = lane % kLanesPerRow;
  const int64_t warp_row = (int64_t(blockIdx.x) * kWarps + warp) * kTileRows;
  // Rows past N re-read the last row (in bounds) and are never stored.
  const int64_t rows[2] = {std::min(warp_row + g, a.n_out - 1),
                           std::min(warp_row + g + 8, a.n_out - 1)};
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
    RegisterStage st;
    const int chunk = kb * kLanesPerRow + t;
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      st.codes[r] = make_uint4(0, 0, 0, 0);
      st.scale[r] = 0.0f;
      st.zero[r] = 0.0f;
      if (chunk < chunks) {
        st.codes[r] =
            __ldcs(reinterpret_cast<const uint4*>(a.packed + rows[r] * row_bytes) + chunk);
        const int64_t table = rows[r] * a.groups + chunk / a.chunks_per_group;
        st.scale[r] = __ldg(a.scales + table);
        st.zero[r] = __ldg(a.zeros + table);
      }
    }
    return st;
  };

  float acc[kNT][4] = {};
  RegisterStage current = fetch(kb_begin);
  for (int kb = kb_begin; kb < kb_end; ++kb) {
    RegisterStage next = current;
    if (kb + 1 < kb_end) next = fetch(kb + 1);  // in flight while this k-block computes
    const int chunk = kb * kLanesPerRow + t;
    mma_k_block<T, kNT>(acc, current.codes, current.scale, current.zero,
                        [&](int j, int w) { return load_x(j, chunk, w); });
    current = next;
  }

  store_tile(a, acc, warp_row, g, t);
}

// out[m, n] = sum over splits (in order) of partial[split, m, n] + bias[n], rounded once to T.
template <typename T>
__global__ void sum_splits_kernel(const float* __restrict__ partial, const T* __restrict__ bias,
                                  T* __restrict__ out, int64_t rows, int64_t n_out, int splits) {
  const int64_t count = rows * n_out;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < count;
       i += int64_t(gridDim.x) * blockDim.x) {
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

bool is_aligned(const void* p, uintptr_t bytes) {
  return reinterpret_cast<uintptr_t>(p) % bytes == 0;
}

// Shared-memory buffers of the pipelined kernel: k-blocks in flight while one computes. Four
// rather than three: three are faster at M = 32 but slower at M = 64, whose k-blocks carry the
// most x.
constexpr int kStages = 4;
// The registers kernel up to this many n-tiles (M <= 16), the pipelined one beyond: below, the
// pipelined kernel's per-k-block copies and barrier cost more than they hide; above, reading x
// once per block through shared memory instead of once per warp through L1 pays.
constexpr int kRegistersMaxNTiles = 2;

// Lets the kernel use its shared memory (above the default 48 KiB at large kNT); once per device.
template <typename T, int kNT, bool kRowTables>
void allow_shared_memory(int device) {
  static bool done[64] = {};  // a race only repeats the same idempotent call
  if (device >= 0 && device < 64 && done[device]) return;
  C10_CUDA_CHECK(cudaFuncSetAttribute(int4_mma_kernel<T, kNT, kStages, kRowTables>,
                                      cudaFuncAttributeMaxDynamicSharedMemorySize,
                                      kStages * StageLayout<kNT>::kBytes));
  if (device >= 0 && device < 64) done[device] = true;
}

// One group per k-block: g a multiple of the k-block, or one group per row.
bool k_blocks_inside_groups(const Int4Operands& a) {
  return a.group_size % kBlockFeatures == 0 || a.group_size == a.in_features;
}

template <typename T, int kNT>
void launch(const Int4Operands& a, at::Tensor& out, int64_t split_k, MmaKernel kernel,
            cudaStream_t stream) {
  if (kernel == MmaKernel::kAuto)
    kernel = kNT <= kRegistersMaxNTiles ? MmaKernel::kRegisters : MmaKernel::kPipelined;
  const int64_t row_blocks = (a.out_features + kBlockRows - 1) / kBlockRows;
  const int k_blocks = static_cast<int>((a.in_features + kBlockFeatures - 1) / kBlockFeatures);
  const int device = a.x.get_device();
  int64_t splits = split_k;
  if (splits <= 0) {  // as many as keep the grid within kTargetBlocksPerSm blocks per SM
    const int64_t target =
        int64_t(kTargetBlocksPerSm) * at::cuda::getDeviceProperties(device)->multiProcessorCount;
    splits = std::min<int64_t>(target / row_blocks, kMaxSplits);
  }
  splits = std::clamp<int64_t>(splits, 1, std::min<int64_t>(k_blocks, kMaxGridY));
  const int per_split = static_cast<int>((k_blocks + splits - 1) / splits);
  splits = (k_blocks + per_split - 1) / per_split;  // no empty split
  TORCH_CHECK(row_blocks <= std::numeric_limits<int32_t>::max(),
              "int4_mma: too many output features");
  at::Tensor partial;
  if (splits > 1)
    partial = at::empty({splits, a.rows, a.out_features}, a.x.options().dtype(at::kFloat));

  const T* bias = a.bias.has_value() ? a.bias->const_data_ptr<T>() : nullptr;
  const MmaArgs<T> args{a.x.const_data_ptr<T>(),
                        a.packed.const_data_ptr<uint8_t>(),
                        a.scales.const_data_ptr<float>(),
                        a.zeros.const_data_ptr<float>(),
                        bias,
                        out.mutable_data_ptr<T>(),
                        splits > 1 ? partial.mutable_data_ptr<float>() : nullptr,
                        a.rows,
                        a.out_features,
                        a.in_features,
                        a.in_features / a.group_size,
                        static_cast<int>(a.group_size / kChunkFeatures),
                        k_blocks,
                        per_split};
  const dim3 grid(static_cast<unsigned>(row_blocks), static_cast<unsigned>(splits));
  if (kernel == MmaKernel::kRegisters) {
    int4_mma_registers_kernel<T, kNT><<<grid, kThreads, 0, stream>>>(args);
  } else {
    const auto run = [&](auto row_tables) {
      constexpr bool kRowTables = decltype(row_tables)::value;
      allow_shared_memory<T, kNT, kRowTables>(device);
      int4_mma_kernel<T, kNT, kStages, kRowTables>
          <<<grid, kThreads, kStages * StageLayout<kNT>::kBytes, stream>>>(args);
    };
    if (k_blocks_inside_groups(a)) {
      run(std::true_type{});
    } else {
      run(std::false_type{});
    }
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  if (splits > 1) {
    constexpr int kSumThreads = 256;
    const int64_t count = a.rows * a.out_features;
    const auto blocks =
        static_cast<unsigned>(std::min<int64_t>((count + kSumThreads - 1) / kSumThreads, 4096));
    sum_splits_kernel<T><<<blocks, kSumThreads, 0, stream>>>(
        args.partial, bias, args.out, a.rows, a.out_features, static_cast<int>(splits));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

}  // namespace

bool int4_mma_supports(const Int4Operands& a) {
  const auto dtype = a.x.scalar_type();
  return (dtype == at::kHalf || dtype == at::kBFloat16) && a.rows >= 1 && a.rows <= kMmaMaxRows &&
         a.in_features % kChunkFeatures == 0 && a.in_features > 0 && a.out_features > 0 &&
         is_aligned(a.x.const_data_ptr(), kChunkBytes) &&
         is_aligned(a.packed.const_data_ptr(), kChunkBytes) &&
         a.in_features / kChunkFeatures <= std::numeric_limits<int>::max() &&
         at::cuda::getCurrentDeviceProperties()->major >= 8;  // mma.sync m16n8k16 with bf16: sm_80+
}

void int4_mma(const Int4Operands& a, at::Tensor& out, int64_t split_k, MmaKernel kernel,
              cudaStream_t stream) {
  TORCH_CHECK(int4_mma_supports(a), "int4_mma: unsupported operands (see int4_mma_supports)");
  const auto run = [&](auto type_tag) {
    with_n_tiles(a.rows, [&](auto n_tiles) {
      launch<decltype(type_tag), decltype(n_tiles)::value>(a, out, split_k, kernel, stream);
    });
  };
  if (a.x.scalar_type() == at::kHalf) {
    run(c10::Half{});
  } else {
    run(c10::BFloat16{});
  }
}

}  // namespace climbq::cuda
