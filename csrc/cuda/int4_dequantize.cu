// W rows dequantized into x's dtype for the large-batch path (dequantize + cuBLAS, int4_matmul.cu),
// bit for bit the reference's dequantize_int4: each weight ((q - z), then * s, each rounded in
// float32) rounded once to x's dtype.
//
// A thread takes one 32-bit word of codes (8 features, one group) and stores its 8 weights with
// 16-byte stores, so a warp reads 128 contiguous bytes of codes and writes 512 (1 KiB for
// float32). This needs K % 8 == 0 and a 4-byte-aligned packed pointer; otherwise a thread takes
// one byte (two features). A thread per byte is instruction-bound, at about a quarter of DRAM
// bandwidth against two thirds by words. A thread per 16-byte chunk of codes (32 weights) is
// slower than one per word: its four 16-byte stores lie 64 bytes apart across a warp.
#include "int4_codes.cuh"
#include "int4_kernels.h"

#include <c10/cuda/CUDAException.h>

#include <algorithm>

namespace climbq::cuda {
namespace {

using namespace int4;

constexpr int kThreads = 256;
constexpr int64_t kMaxGridY = 65535;  // CUDA's limit on gridDim.y

// The weights of one unit of codes (Unit: uint32_t, 8 features; uint8_t, 2), stored at once.
template <typename T, typename Unit>
struct alignas(2 * sizeof(Unit) * sizeof(T)) UnitWeights {
  T v[2 * sizeof(Unit)];
};

// weight (n, K) from the codes of rows [0, n) of `packed`, read as units of 4 or 1 bytes: thread j
// of block column blockIdx.x takes unit j of rows blockIdx.y, blockIdx.y + gridDim.y, ... (so no
// per-element division). A unit lies inside one group (g is a multiple of 8, or K).
template <typename T, typename Unit>
__global__ void __launch_bounds__(kThreads)
    dequantize_kernel(const Unit* __restrict__ packed, const float* __restrict__ scales,
                      const float* __restrict__ zeros, T* __restrict__ weight, int64_t n,
                      int64_t units_per_row, int64_t groups, int64_t units_per_group) {
  constexpr int kFeatures = 2 * sizeof(Unit);
  const int64_t j = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (j >= units_per_row) return;
  const int64_t group = j / units_per_group;
  for (int64_t row = blockIdx.y; row < n; row += gridDim.y) {
    const int64_t i = row * units_per_row + j;
    uint32_t codes;
    if constexpr (sizeof(Unit) == 4) {
      codes = __ldcs(packed + i);  // read once
    } else {
      codes = packed[i];
    }
    const float s = __ldg(scales + row * groups + group), z = __ldg(zeros + row * groups + group);
    UnitWeights<T, Unit> out;
#pragma unroll
    for (int t = 0; t < kFeatures; ++t)
      out.v[t] = static_cast<T>(dequantize(code_at(codes, t), z, s));
    // Unit i's features start at element kFeatures i, so the store is aligned to its own size.
    reinterpret_cast<UnitWeights<T, Unit>*>(weight)[i] = out;
  }
}

// One thread per unit (word or byte) of a row, one block row per weight row up to CUDA's
// grid limit.
dim3 grid_for(int64_t units_per_row, int64_t n) {
  return dim3(static_cast<unsigned>((units_per_row + kThreads - 1) / kThreads),
              static_cast<unsigned>(std::min(n, kMaxGridY)));
}

}  // namespace

void int4_dequantize(const Int4Operands& a, int64_t first_row, at::Tensor& weight,
                     cudaStream_t stream) {
  const int64_t n = weight.size(0), k = a.in_features, row_bytes = k / 2, groups = k / a.group_size;
  TORCH_CHECK(weight.is_contiguous() && weight.size(1) == k && first_row >= 0 &&
                  first_row + n <= a.out_features,
              "int4_dequantize: weight must be a contiguous (rows, ", k, ") block inside W's ",
              a.out_features, " rows");
  if (n == 0 || k == 0) return;
  const uint8_t* packed = a.packed.const_data_ptr<uint8_t>() + first_row * row_bytes;
  const float* scales = a.scales.const_data_ptr<float>() + first_row * groups;
  const float* zeros = a.zeros.const_data_ptr<float>() + first_row * groups;
  const bool by_words = k % kWordFeatures == 0 && reinterpret_cast<uintptr_t>(packed) % 4 == 0;
  CLIMBQ_DISPATCH_INT4_DTYPES(a.x.scalar_type(), "int4_dequantize", [&] {
    scalar_t* out = weight.mutable_data_ptr<scalar_t>();
    if (by_words) {
      const int64_t words_per_row = k / kWordFeatures;
      dequantize_kernel<scalar_t, uint32_t><<<grid_for(words_per_row, n), kThreads, 0, stream>>>(
          reinterpret_cast<const uint32_t*>(packed), scales, zeros, out, n, words_per_row, groups,
          a.group_size / kWordFeatures);
    } else {
      dequantize_kernel<scalar_t, uint8_t><<<grid_for(row_bytes, n), kThreads, 0, stream>>>(
          packed, scales, zeros, out, n, row_bytes, groups, a.group_size / 2);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

}  // namespace climbq::cuda
