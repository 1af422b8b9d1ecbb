// Device helpers shared by the CUDA INT4 kernels (int4_gemv.cu, int4_mma.cu, int4_dequantize.cu):
// 4-bit codes to floats, the reference's dequantization rounding, and 16-bit float bits.
//
// Packed layout (climbq_kernels/reference/int4.py): byte j of a row holds feature 2j in its low
// nibble and 2j + 1 in its high nibble, so a little-endian 32-bit word holds 8 features in order,
// feature t in nibble t.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

namespace climbq::cuda::int4 {

constexpr int kWordFeatures = 8;                 // codes per 32-bit word
constexpr int kChunkBytes = 16;                  // one uint4 of codes
constexpr int kChunkFeatures = 2 * kChunkBytes;  // 32 features: always inside one group
constexpr int kChunkWords = kChunkBytes / 4;
constexpr uint32_t kNibbleMask = 0xFu;
constexpr uint32_t kLowNibbles = 0x0F0F0F0Fu;
constexpr int kNibbleBits = 4;

// Exact codes: OR-ing q < 2^23 into the mantissa of 2^23 gives the float 2^23 + q exactly;
// subtracting 2^23 leaves q. Two full-rate instructions instead of an integer-to-float conversion.
constexpr uint32_t kTwoPow23Bits = 0x4B000000u;
constexpr float kTwoPow23 = 8388608.0f;

// Code t of a word as an exact float.
__device__ __forceinline__ float code_at(uint32_t word, int t) {
  return __uint_as_float(kTwoPow23Bits | ((word >> (kNibbleBits * t)) & kNibbleMask)) - kTwoPow23;
}

// (q - zero) * scale rounded as the float32 reference rounds it: the difference, then the product
// (the _rn intrinsics keep nvcc from fusing them into one FMA).
__device__ __forceinline__ float dequantize(float q, float zero, float scale) {
  return __fmul_rn(__fsub_rn(q, zero), scale);
}

// Offset codes, one byte permute each: with q in bits 16..19 of the float 0.5 (0x3F000000, whose
// byte 2 is zero) the value is v = 0.5 + q / 256, exact. Then (q - z) s = S (v - b) with
// S = 256 s and b = 0.5 + z / 256, and v - b never has to be formed per code:
//   - as an FMA, w = v S + B with B = -(128 + z) s: the weight to within about 2^-17 s (B's own
//     rounding), far below a 16-bit float's rounding of w (the tensor-core kernel's operand);
//   - in a dot product, sum x (q - z) s = S (sum x v - b sum x), sum x shared by every row: the
//     cancellation costs about 2^-14 relative in float32, again far below a 16-bit output's
//     rounding (the 16-bit GEMV).
// Neither is used where the output is float32: those paths keep the exact `dequantize`.
constexpr uint32_t kOffsetCodeBits = 0x3F000000u;
constexpr float kOffsetCodeScale = 256.0f;  // S = 256 s
constexpr float kOffsetCodeBias = 128.0f;   // B = -(128 + z) s

// The four low nibbles of a word, one per byte (features 0, 2, 4, 6), and the four high ones
// (features 1, 3, 5, 7).
__device__ __forceinline__ uint32_t even_codes(uint32_t word) { return word & kLowNibbles; }
__device__ __forceinline__ uint32_t odd_codes(uint32_t word) {
  return (word >> kNibbleBits) & kLowNibbles;
}

// 0.5 + q / 256 for the code in byte `byte` (0..3) of `codes` (from even_codes / odd_codes); in
// unrolled loops `byte` is a constant and this is one PRMT.
__device__ __forceinline__ float offset_code(uint32_t codes, int byte) {
  // Result bytes 0, 1: zero (byte 0 of the magic); byte 2: the code; byte 3: 0x3F (magic byte 3).
  return __uint_as_float(__byte_perm(codes, kOffsetCodeBits, 0x7044u | (uint32_t(byte) << 8)));
}

template <typename T>
constexpr bool is_16bit_float = std::is_same_v<T, c10::BFloat16> || std::is_same_v<T, c10::Half>;

// A 16-bit float's bits as float32: bfloat16 is the top half of a float; Half through c10.
template <typename T>
__device__ __forceinline__ float from_bits16(uint32_t bits) {
  if constexpr (std::is_same_v<T, c10::BFloat16>) {
    return __uint_as_float(bits << 16);
  } else {
    return static_cast<float>(T(static_cast<uint16_t>(bits), T::from_bits()));
  }
}

// The two 16-bit elements of a 32-bit word as floats: element 0 (low half, little endian), 1.
template <typename T>
__device__ __forceinline__ float low_half(uint32_t pair) {
  if constexpr (std::is_same_v<T, c10::BFloat16>) return __uint_as_float(pair << 16);
  return from_bits16<T>(pair & 0xFFFFu);
}
template <typename T>
__device__ __forceinline__ float high_half(uint32_t pair) {
  if constexpr (std::is_same_v<T, c10::BFloat16>) return __uint_as_float(pair & 0xFFFF0000u);
  return from_bits16<T>(pair >> 16);
}

__device__ __forceinline__ uint32_t word_of(const uint4& v, int w) {
  return w == 0 ? v.x : (w == 1 ? v.y : (w == 2 ? v.z : v.w));
}

}  // namespace climbq::cuda::int4
