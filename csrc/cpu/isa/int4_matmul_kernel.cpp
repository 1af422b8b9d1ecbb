// INT4 packed-weight matmul (algorithms.md §6) on the CPU, compiled once per instruction set like
// the other kernels in this folder; the problem and the activation layouts are described in
// ../int4_matmul_kernel.h.
//
// A tile is kTileRows weight rows times kTileBatch activation rows over the whole of K. Each
// step dequantizes kLanes packed bytes per weight row into two float vectors (low nibbles =
// even features, high nibbles = odd features) and multiply-adds them with every activation row
// of the tile, so a dequantized vector serves kTileBatch rows and an activation vector serves
// kTileRows weight rows. Dequantized weights equal the reference's float32 (q - zero) * scale
// bit for bit; sums are float32 vectors, reduced lane by lane in a fixed order, so results do
// not depend on the thread count. Weight rows are read from memory once: tiles of the same
// weight rows run back to back on one thread and find them in L1. A single activation row
// (batch 1) has tiles of its own: rows far apart, read ahead (single_row_matmul), and with
// AVX-512, where groups are whole 128-feature blocks, the word tiles.
#include "../int4_matmul_kernel.h"

#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <c10/util/Exception.h>

#include <algorithm>

#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
#include <immintrin.h>
#endif

namespace climbq::cpu::CPU_CAPABILITY {
namespace {

using Vec = at::vec::Vectorized<float>;
constexpr int64_t kLanes = Vec::size();
constexpr int64_t kBlockBytes = kInt4BlockFeatures / 2;
constexpr int64_t kOddOffset = kBlockBytes;  // odd features follow the even ones in a block
static_assert(kBlockBytes % kLanes == 0, "a block of packed bytes must be whole vectors");
// The tiles' loops over rows must be unrolled for the accumulators to live in registers.
#define CLIMBQ_UNROLL _Pragma("GCC unroll 16")

// The tiles keep their accumulators in arrays of the raw register type: GCC writes arrays of
// Vectorized<float> back to the stack on every iteration.
#if defined(CPU_CAPABILITY_AVX512)
using Reg = __m512;
#elif defined(CPU_CAPABILITY_AVX2)
using Reg = __m256;
#else
using Reg = Vec;
#endif

inline Reg load(const float* p) { return Vec::loadu(p); }
inline Reg fmadd(Reg a, Reg b, Reg c) { return at::vec::fmadd(Vec(a), Vec(b), Vec(c)); }

constexpr int64_t kLowNibble = 0x0F;
constexpr int kNibbleBits = 4;

#if defined(CPU_CAPABILITY_AVX512)
// Register budget (32 vectors): 4 x 4 accumulators, 8 activation vectors (even and odd halves of
// 4 rows), 4 group tables and the 2 vectors being dequantized; a single activation row leaves
// room for 8 weight rows, whose loads and tables then overlap.
constexpr int kTileRows = 4;
constexpr int kTileBatch = 4;
constexpr int kGemvRows = 8;
#else
constexpr int kTileRows = 2;
constexpr int kTileBatch = 4;
constexpr int kGemvRows = 4;
#endif
// No cache blocking over K or over the batch: below the GEMM path's batch (int4_matmul.cpp) the
// activations fit in L2, and blocking K (tiles reducing into y per block) is 1.5-2x slower at
// batches 8-32 than tiles that run the whole row.

constexpr int64_t kCacheLine = 64;
// Batch 1 reads each weight row this far ahead into L1 (prefetcht0), once per 128 features: with
// the weights cold, as a model's layers leave them, that is 13-15% faster than no prefetch, and
// any distance from 128 to 1024 bytes does about as well. Prefetching into L2 (prefetcht1) gains
// little, and non-temporal prefetches are slower than none.
constexpr int64_t kRowPrefetchBytes = 512;
// Multiply-adds per parallel task below which tasks are merged.
constexpr int64_t kGrainMacs = int64_t{1} << 16;

// Code c of a group -> (c - zero) * scale, evaluated in float32 as the reference does.
inline float dequantize_code(int code, float scale, float zero) {
  return (static_cast<float>(code) - zero) * scale;
}

// One group's dequantization, a vector at a time.
#if defined(CPU_CAPABILITY_AVX512)
// All 16 values in one register, looked up by vpermps, which reads only an index's low 4 bits:
// a byte's low nibble needs no mask.
struct GroupTable {
  __m512 values = _mm512_setzero_ps();
  void set(float scale, float zero) {
    const __m512 codes = _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    values = _mm512_mul_ps(_mm512_sub_ps(codes, _mm512_set1_ps(zero)), _mm512_set1_ps(scale));
  }
  // values[index & 15] for each lane: the bits above an index's low 4 are ignored.
  __m512 lookup(__m512i indices) const { return _mm512_permutexvar_ps(indices, values); }
  void dequantize(const uint8_t* bytes, Reg& even, Reg& odd) const {
    const __m512i codes =
        _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(bytes)));
    even = lookup(codes);
    odd = lookup(_mm512_srli_epi32(codes, kNibbleBits));
  }
};
#elif defined(CPU_CAPABILITY_AVX2)
struct GroupTable {
  __m256 scale = _mm256_setzero_ps(), zero = _mm256_setzero_ps();
  void set(float s, float z) {
    scale = _mm256_set1_ps(s);
    zero = _mm256_set1_ps(z);
  }
  void dequantize(const uint8_t* bytes, Reg& even, Reg& odd) const {
    const __m256i codes =
        _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(bytes)));
    const __m256 low = _mm256_cvtepi32_ps(_mm256_and_si256(codes, _mm256_set1_epi32(kLowNibble)));
    const __m256 high = _mm256_cvtepi32_ps(_mm256_srli_epi32(codes, kNibbleBits));
    even = _mm256_mul_ps(_mm256_sub_ps(low, zero), scale);
    odd = _mm256_mul_ps(_mm256_sub_ps(high, zero), scale);
  }
};
#else
struct GroupTable {
  float scale = 0.0f, zero = 0.0f;
  void set(float s, float z) {
    scale = s;
    zero = z;
  }
  void dequantize(const uint8_t* bytes, Reg& even, Reg& odd) const {
    __at_align__ float low[kLanes], high[kLanes];
    for (int64_t j = 0; j < kLanes; ++j) {
      low[j] = dequantize_code(bytes[j] & kLowNibble, scale, zero);
      high[j] = dequantize_code(bytes[j] >> kNibbleBits, scale, zero);
    }
    even = Vec::loadu(low);
    odd = Vec::loadu(high);
  }
};
#endif

float sum_lanes(Reg v) {
  __at_align__ float lanes[kLanes];
  Vec(v).store(lanes);
  float total = 0.0f;
  for (int64_t j = 0; j < kLanes; ++j) total += lanes[j];
  return total;
}

// feature >> group_shift(g) is feature's group: log2(g) for g a power of two; otherwise g is
// the whole row (one group), and every feature < 2^62 shifts to group 0.
int group_shift(int64_t g) {
  return (g & (g - 1)) == 0 ? __builtin_ctzll(static_cast<unsigned long long>(g)) : 62;
}

// Batch 1: the bytes kRowPrefetchBytes past `offset` in each of R weight rows, into L1.
template <int R>
inline void prefetch_rows(const uint8_t* const (&w)[R], int64_t offset) {
  CLIMBQ_UNROLL
  for (int r = 0; r < R; ++r) __builtin_prefetch(w[r] + offset + kRowPrefetchBytes, 0, 3);
}

// Where R weight rows n0 + r * stride start: their packed codes, scales and zeros.
template <int R>
struct RowPointers {
  const uint8_t* w[R];
  const float* scale[R];
  const float* zero[R];
  RowPointers(const Int4MatmulProblem& p, int64_t n0, int64_t stride) {
    const int64_t groups = p.in_features / p.group_size;
    CLIMBQ_UNROLL
    for (int r = 0; r < R; ++r) {
      const int64_t n = n0 + r * stride;
      w[r] = p.packed + n * (p.in_features / 2);
      scale[r] = p.scales + n * groups;
      zero[r] = p.zeros + n * groups;
    }
  }
};

// y[m0 + m, n0 + r * stride] for r < R, m < MB.
template <int R, int MB>
void tile(const Int4MatmulProblem& p, int64_t n0, int64_t stride, int64_t m0) {
  const int64_t in = p.in_features, g = p.group_size;
  const int64_t whole_end = in / kInt4BlockFeatures * kInt4BlockFeatures;
  const RowPointers<R> rows(p, n0, stride);
  const auto& [w, scale, zero] = rows;
  const float* x[MB];
  CLIMBQ_UNROLL
  for (int m = 0; m < MB; ++m) x[m] = p.x + (m0 + m) * p.x_stride;

  Reg acc[R][MB];
  CLIMBQ_UNROLL
  for (int r = 0; r < R; ++r) {
    CLIMBQ_UNROLL
    for (int m = 0; m < MB; ++m) acc[r][m] = Vec(0.0f);
  }
  const int shift = group_shift(g);
  GroupTable table[R];
  for (int64_t group_begin = 0; group_begin < whole_end;) {
    const int64_t group = group_begin >> shift;
    const int64_t group_end = std::min(whole_end, (group + 1) * g);
    CLIMBQ_UNROLL
    for (int r = 0; r < R; ++r) table[r].set(scale[r][group], zero[r][group]);
    for (int64_t feature = group_begin; feature < group_end; feature += kInt4BlockFeatures) {
      if constexpr (MB == 1) {
        if (feature % kInt4WordBlockFeatures == 0) prefetch_rows<R>(w, feature / 2);
      } else {
        // Tiles of more than one x row run on consecutive weight rows: the next tile's rows follow
        // this tile's in memory; bring them into L2 at the rate this tile consumes its own (R
        // blocks of 16 bytes per step), one long stream ahead.
        const char* ahead = reinterpret_cast<const char*>(w[0]) + R * (in / 2) + R * (feature / 2);
        for (int64_t line = 0; line < R * kBlockBytes; line += kCacheLine) {
          __builtin_prefetch(ahead + line, 0, 2);  // read, keep in L2
        }
      }
      for (int64_t lane0 = 0; lane0 < kBlockBytes; lane0 += kLanes) {
        Reg x_even[MB], x_odd[MB];
        CLIMBQ_UNROLL
        for (int m = 0; m < MB; ++m) {
          x_even[m] = load(x[m] + feature + lane0);
          x_odd[m] = load(x[m] + feature + lane0 + kOddOffset);
        }
        CLIMBQ_UNROLL
        for (int r = 0; r < R; ++r) {
          Reg even, odd;
          table[r].dequantize(w[r] + feature / 2 + lane0, even, odd);
          CLIMBQ_UNROLL
          for (int m = 0; m < MB; ++m) {
            acc[r][m] = fmadd(even, x_even[m], acc[r][m]);
            acc[r][m] = fmadd(odd, x_odd[m], acc[r][m]);
          }
        }
      }
    }
    group_begin = group_end;
  }

  // Features past the last whole block (only when one group spans a row whose length is not a
  // multiple of 32), in natural order.
  float tail[R][MB] = {};
  for (int64_t feature = whole_end; feature < in; feature += 2) {
    const int64_t group = feature / g;
    CLIMBQ_UNROLL
    for (int r = 0; r < R; ++r) {
      const uint8_t byte = w[r][feature / 2];
      const float even = dequantize_code(byte & kLowNibble, scale[r][group], zero[r][group]);
      const float odd = dequantize_code(byte >> kNibbleBits, scale[r][group], zero[r][group]);
      CLIMBQ_UNROLL
      for (int m = 0; m < MB; ++m) tail[r][m] += even * x[m][feature] + odd * x[m][feature + 1];
    }
  }
  CLIMBQ_UNROLL
  for (int r = 0; r < R; ++r) {
    CLIMBQ_UNROLL
    for (int m = 0; m < MB; ++m) {
      p.y[(m0 + m) * p.out_features + n0 + r * stride] = sum_lanes(acc[r][m]) + tail[r][m];
    }
  }
}

// Weight rows [n0, n0 + rows) times activation rows [m0, m0 + MB).
template <int R, int MB>
void rows_tile(const Int4MatmulProblem& p, int64_t n0, int64_t rows, int64_t m0) {
  int64_t n = n0;
  for (; n + R <= n0 + rows; n += R) tile<R, MB>(p, n, 1, m0);
  for (; n < n0 + rows; ++n) tile<1, MB>(p, n, 1, m0);
}

template <int MB = kTileBatch>
void batch_tile(const Int4MatmulProblem& p, int64_t n0, int64_t rows, int64_t m0, int64_t batch) {
  if constexpr (MB == 1) {
    rows_tile<kGemvRows, 1>(p, n0, rows, m0);
  } else if (batch == MB) {
    rows_tile<kTileRows, MB>(p, n0, rows, m0);
  } else {
    batch_tile<MB - 1>(p, n0, rows, m0, batch);
  }
}

#if defined(CPU_CAPABILITY_AVX512)
// Batch 1 in the word layout: y[n] for the R weight rows n = n0 + r * stride. A step reads 64
// packed bytes of each row as 16 words and looks up nibble j of every word (one shift, one
// vpermps) for the run of x the layout puts there. The split tiles widen every 16 bytes to
// words first (vpmovzxbd), which issues on port 5 with vpermps: 12 port-5 instructions per 128
// weights there, 8 here, the shifts going to port 0.
template <int R>
void word_tile(const Int4MatmulProblem& p, int64_t n0, int64_t stride) {
  constexpr int kWordNibbles = 8;
  const int64_t in = p.in_features, g = p.group_size, groups = in / g;
  const RowPointers<R> rows(p, n0, stride);
  const auto& [w, scale, zero] = rows;
  Reg acc[R];
  CLIMBQ_UNROLL
  for (int r = 0; r < R; ++r) acc[r] = _mm512_setzero_ps();
  GroupTable table[R];
  for (int64_t group = 0; group < groups; ++group) {
    CLIMBQ_UNROLL
    for (int r = 0; r < R; ++r) table[r].set(scale[r][group], zero[r][group]);
    for (int64_t feature = group * g; feature < (group + 1) * g;
         feature += kInt4WordBlockFeatures) {
      prefetch_rows<R>(w, feature / 2);
      __m512i words[R];
      CLIMBQ_UNROLL
      for (int r = 0; r < R; ++r) words[r] = _mm512_loadu_si512(w[r] + feature / 2);
      CLIMBQ_UNROLL
      for (int j = 0; j < kWordNibbles; ++j) {
        const Reg x_run = load(p.x + feature + j * kLanes);
        CLIMBQ_UNROLL
        for (int r = 0; r < R; ++r) {
          const __m512i codes = j == 0 ? words[r] : _mm512_srli_epi32(words[r], j * kNibbleBits);
          acc[r] = _mm512_fmadd_ps(table[r].lookup(codes), x_run, acc[r]);
        }
      }
    }
  }
  CLIMBQ_UNROLL
  for (int r = 0; r < R; ++r) p.y[n0 + r * stride] = sum_lanes(acc[r]);
}
#endif

// Batch 1: the rows of a tile lie N / kGemvRows apart, so a thread running consecutive tiles
// reads kGemvRows long sequential streams of W (each prefetched, see kRowPrefetchBytes) rather
// than one block of kGemvRows short rows: several streams a thread draw more memory bandwidth
// than one. Rows past kGemvRows * (N / kGemvRows) run one per task.
void single_row_matmul(const Int4MatmulProblem& p) {
  const int64_t stride = p.out_features / kGemvRows, spare = p.out_features % kGemvRows;
  const int64_t grain =
      std::max<int64_t>(1, kGrainMacs / (kGemvRows * std::max<int64_t>(p.in_features, 1)));
  at::parallel_for(0, stride + spare, grain, [&](int64_t first, int64_t last) {
    for (int64_t task = first; task < last; ++task) {
      const bool whole = task < stride;
      const int64_t n0 = whole ? task : kGemvRows * stride + task - stride;
#if defined(CPU_CAPABILITY_AVX512)
      if (p.x_layout == Int4XLayout::kWords) {
        if (whole) {
          word_tile<kGemvRows>(p, n0, stride);
        } else {
          word_tile<1>(p, n0, 0);
        }
        continue;
      }
#endif
      if (whole) {
        tile<kGemvRows, 1>(p, n0, stride, 0);
      } else {
        tile<1, 1>(p, n0, 0, 0);
      }
    }
  });
}

}  // namespace

Int4XLayout int4_x_layout(int64_t rows, int64_t in_features, int64_t group_size) {
#if defined(CPU_CAPABILITY_AVX512)
  if (rows == 1 && in_features % kInt4WordBlockFeatures == 0 &&
      group_size % kInt4WordBlockFeatures == 0) {
    return Int4XLayout::kWords;
  }
#endif
  (void)rows, (void)in_features, (void)group_size;
  return Int4XLayout::kSplit;
}

void int4_matmul(const Int4MatmulProblem& p) {
#if !defined(CPU_CAPABILITY_AVX512)
  TORCH_INTERNAL_ASSERT(p.x_layout == Int4XLayout::kSplit,
                        "int4_matmul: the word layout is read by AVX-512 only");
#endif
  if (p.rows == 1) {
    single_row_matmul(p);
    return;
  }
  constexpr int64_t kRowsPerTask = std::max(kTileRows, kGemvRows);  // tiles of one task share x
  const int64_t row_tasks = (p.out_features + kRowsPerTask - 1) / kRowsPerTask;
  const int64_t task_macs = kRowsPerTask * p.rows * std::max<int64_t>(p.in_features, 1);
  // A task's weight rows stay in L1 while its tiles pass over every activation row block.
  at::parallel_for(0, row_tasks, std::max<int64_t>(1, kGrainMacs / task_macs),
                   [&](int64_t first, int64_t last) {
    for (int64_t task = first; task < last; ++task) {
      const int64_t n0 = task * kRowsPerTask, rows = std::min(kRowsPerTask, p.out_features - n0);
      for (int64_t m0 = 0; m0 < p.rows; m0 += kTileBatch) {
        batch_tile(p, n0, rows, m0, std::min<int64_t>(kTileBatch, p.rows - m0));
      }
    }
  });
}

void int4_dequantize(const Int4MatmulProblem& p, int64_t n0, int64_t n1, float* w) {
  const int64_t in = p.in_features, g = p.group_size, groups = in / g;
  const int64_t whole = in / kInt4BlockFeatures * kInt4BlockFeatures;
  at::parallel_for(n0, n1, std::max<int64_t>(1, kGrainMacs / std::max<int64_t>(in, 1)),
                   [&](int64_t first, int64_t last) {
    for (int64_t n = first; n < last; ++n) {
      const uint8_t* bytes = p.packed + n * (in / 2);
      const float* scale = p.scales + n * groups;
      const float* zero = p.zeros + n * groups;
      float* row = w + (n - n0) * in;
      GroupTable table;
      for (int64_t group_begin = 0; group_begin < whole; group_begin += g) {
        table.set(scale[group_begin / g], zero[group_begin / g]);
        for (int64_t feature = group_begin; feature < std::min(group_begin + g, whole);
             feature += kInt4BlockFeatures) {
          for (int64_t lane0 = 0; lane0 < kBlockBytes; lane0 += kLanes) {
            Reg even, odd;
            table.dequantize(bytes + feature / 2 + lane0, even, odd);
            const auto [first_half, second_half] = at::vec::interleave2(Vec(even), Vec(odd));
            first_half.store(row + feature + 2 * lane0);
            second_half.store(row + feature + 2 * lane0 + kLanes);
          }
        }
      }
      for (int64_t feature = whole; feature < in; feature += 2) {
        const uint8_t byte = bytes[feature / 2];
        const int64_t group = feature / g;
        row[feature] = dequantize_code(byte & kLowNibble, scale[group], zero[group]);
        row[feature + 1] = dequantize_code(byte >> kNibbleBits, scale[group], zero[group]);
      }
    }
  });
}

}  // namespace climbq::cpu::CPU_CAPABILITY
