// Uniform fake quant on CUDA (algorithms.md §1e affine/LSQ, §3a per-sample bits); the
// row view and the checks are in ../fake_quant.h, the math in csrc/cpu/isa/fake_quant_kernel.cpp's
// header comment.
//
// One block per piece (kChunk consecutive elements of one row, so a row's constants are loaded
// once per block); threads stride through the piece so loads coalesce. The *_rn intrinsics keep
// nvcc from contracting x * inv_scale with a following add into an FMA, which would change the
// rounding that makes the forward bit-identical to torch. A backward block reduces its partial
// sum in shared memory in a fixed tree order and writes it to partials[piece]; the per-channel
// sums of the partials are one ATen reduction on the device: no host synchronisation anywhere.
// Values (scale > 0, zero point and bits in range) are validated by the Python layer, not here:
// reading them would cost a device sync.
#include "../fake_quant.h"

#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cstdint>
#include <tuple>
#include <type_traits>

namespace climbq::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kChunk = 4096;  // elements per block: 16 per thread

struct Piece {
  int64_t row, begin, end;
};

__device__ Piece piece_of(int64_t piece, int64_t inner, int64_t chunks_per_row) {
  const int64_t row = piece / chunks_per_row, k = piece % chunks_per_row;
  const int64_t row_begin = row * inner;
  const int64_t end = (k + 1) * kChunk < inner ? (k + 1) * kChunk : inner;
  return {row, row_begin + k * kChunk, row_begin + end};
}

// The block's sum of `value` (one per thread), in a fixed order; valid in thread 0.
__device__ float block_sum(float value) {
  __shared__ float shared[kThreads];
  shared[threadIdx.x] = value;
  __syncthreads();
#pragma unroll
  for (int width = kThreads / 2; width > 0; width /= 2) {
    if (threadIdx.x < width) shared[threadIdx.x] += shared[threadIdx.x + width];
    __syncthreads();
  }
  return shared[0];
}

template <int kZpMode>
__device__ float code_of(float x, float inv_scale, float zp, float& v) {
  v = __fmul_rn(x, inv_scale);
  if constexpr (kZpMode == static_cast<int>(ZeroPointMode::kInteger)) return rintf(v) + zp;
  // + 0: a zero code is +0, as torch's is.
  if constexpr (kZpMode == static_cast<int>(ZeroPointMode::kFusedFloat))
    return __fadd_rn(rintf(fmaf(x, inv_scale, zp)), 0.0f);
  return __fadd_rn(rintf(__fadd_rn(v, zp)), 0.0f);
}

template <typename T, int kZpMode, bool kDoubleProduct>
__global__ void affine_forward_kernel(const T* __restrict__ x, T* __restrict__ out,
                                      const float* __restrict__ scale,
                                      const float* __restrict__ zero_point, int64_t inner,
                                      int64_t channels, int64_t chunks_per_row, float quant_min,
                                      float quant_max) {
  const Piece p = piece_of(blockIdx.x, inner, chunks_per_row);
  const int64_t channel = p.row % channels;
  const float s = __ldg(scale + channel), zp = __ldg(zero_point + channel);
  const float inv_scale = __fdiv_rn(1.0f, s);
  for (int64_t j = p.begin + threadIdx.x; j < p.end; j += kThreads) {
    float v;
    const float q = code_of<kZpMode>(static_cast<float>(x[j]), inv_scale, zp, v);
    const float low = q >= quant_min ? q : quant_min;  // fmax: a NaN code becomes quant_min
    const float clamped = low <= quant_max ? low : quant_max;
    float result;
    if constexpr (kDoubleProduct) {
      result = static_cast<float>((static_cast<double>(clamped) - zp) * static_cast<double>(s));
    } else {
      result = __fmul_rn(clamped - zp, s);
    }
    out[j] = static_cast<T>(result);
  }
}

template <typename T, int kZpMode>
__global__ void affine_backward_kernel(const T* __restrict__ grad_out, const T* __restrict__ x,
                                       T* __restrict__ dx, const float* __restrict__ scale,
                                       const float* __restrict__ zero_point, float* dscale_partials,
                                       float* dzp_partials, int64_t inner, int64_t channels,
                                       int64_t chunks_per_row, float quant_min, float quant_max) {
  const Piece p = piece_of(blockIdx.x, inner, chunks_per_row);
  const int64_t channel = p.row % channels;
  const float s = __ldg(scale + channel), zp = __ldg(zero_point + channel);
  const float inv_scale = __fdiv_rn(1.0f, s);
  float dscale_acc = 0.0f, dzp_acc = 0.0f;
  for (int64_t j = p.begin + threadIdx.x; j < p.end; j += kThreads) {
    const float g = static_cast<float>(grad_out[j]);
    float v;
    const float q = code_of<kZpMode>(static_cast<float>(x[j]), inv_scale, zp, v);
    const bool inside = q >= quant_min && q <= quant_max;  // false for a NaN code
    dx[j] = static_cast<T>(g * (inside ? 1.0f : 0.0f));
    const float term =
        q < quant_min ? quant_min - zp : (q > quant_max ? quant_max - zp : (q - zp) - v);
    dscale_acc += g * term;
    dzp_acc += g * (inside ? 0.0f : -s);
  }
  if (dscale_partials != nullptr) {
    const float total = block_sum(dscale_acc);
    if (threadIdx.x == 0) dscale_partials[blockIdx.x] = total;
  }
  if (dzp_partials != nullptr) {
    __syncthreads();  // block_sum's shared buffer is reused
    const float total = block_sum(dzp_acc);
    if (threadIdx.x == 0) dzp_partials[blockIdx.x] = total;
  }
}

// (clip, L, s) of sample `row` from the device tables.
struct SampleGrid {
  float clip, levels, step;
  __device__ SampleGrid(const int32_t* bits, const float* clip_p, int64_t row) {
    clip = __ldg(clip_p);
    levels = static_cast<float>((1 << __ldg(bits + row)) - 1);
    step = __fdiv_rn(clip, levels);
  }
  // min(max(x, 0), clip), NaN kept (fmaxf would drop it).
  __device__ float clamp(float x) const { return x != x ? x : fminf(fmaxf(x, 0.0f), clip); }
};

template <typename T>
__global__ void sample_bits_forward_kernel(const T* __restrict__ x, T* __restrict__ out,
                                           const int32_t* __restrict__ bits,
                                           const float* __restrict__ clip, int64_t inner,
                                           int64_t chunks_per_row) {
  const Piece p = piece_of(blockIdx.x, inner, chunks_per_row);
  const SampleGrid grid(bits, clip, p.row);
  for (int64_t j = p.begin + threadIdx.x; j < p.end; j += kThreads) {
    const float v = __fdiv_rn(grid.clamp(static_cast<float>(x[j])), grid.step);
    out[j] = static_cast<T>(__fmul_rn(rintf(v), grid.step));
  }
}

template <typename T>
__global__ void sample_bits_backward_kernel(const T* __restrict__ grad_out, const T* __restrict__ x,
                                            T* __restrict__ dx, const int32_t* __restrict__ bits,
                                            const float* __restrict__ clip, float* dclip_partials,
                                            int64_t inner, int64_t chunks_per_row) {
  const Piece p = piece_of(blockIdx.x, inner, chunks_per_row);
  const SampleGrid grid(bits, clip, p.row);
  float acc = 0.0f;
  for (int64_t j = p.begin + threadIdx.x; j < p.end; j += kThreads) {
    const float g = static_cast<float>(grad_out[j]), xv = static_cast<float>(x[j]);
    const bool inside = xv >= 0.0f && xv <= grid.clip;  // false for NaN
    dx[j] = static_cast<T>(g * (inside ? 1.0f : 0.0f));
    const float v = __fdiv_rn(grid.clamp(xv), grid.step);
    acc += g * (inside ? __fdiv_rn(rintf(v) - v, grid.levels) : (xv > grid.clip ? 1.0f : 0.0f));
  }
  const float total = block_sum(acc);
  if (threadIdx.x == 0) dclip_partials[blockIdx.x] = total;
}

// clang-format off
#define CLIMBQ_DISPATCH_KERNEL_DTYPES(TYPE, NAME, ...)         \
  AT_DISPATCH_SWITCH(TYPE, NAME,                               \
                     AT_DISPATCH_CASE(at::kFloat, __VA_ARGS__) \
                     AT_DISPATCH_CASE(at::kHalf, __VA_ARGS__)  \
                     AT_DISPATCH_CASE(at::kBFloat16, __VA_ARGS__))
// clang-format on

// Calls f(std::integral_constant<int, mode>{}) for the run-time zero-point mode.
template <typename F>
void dispatch_zp_mode(ZeroPointMode mode, const F& f) {
  switch (mode) {
    case ZeroPointMode::kInteger: return f(std::integral_constant<int, 0>{});
    case ZeroPointMode::kFusedFloat: return f(std::integral_constant<int, 1>{});
    default: return f(std::integral_constant<int, 2>{});
  }
}

// Per-channel sums of piece partials ((outer, channels, chunks) row-major) times `factor`.
at::Tensor reduce_partials(const at::Tensor& partials, const RowLayout& layout, double factor) {
  if (layout.pieces() == 0) return at::zeros({layout.channels}, partials.options());
  return partials.view({layout.rows / layout.channels, layout.channels, layout.chunks_per_row()})
      .to(at::kDouble)
      .sum(at::IntArrayRef{0, 2})
      .mul(factor)
      .to(at::kFloat);
}

at::Tensor affine_forward_cuda(const at::Tensor& x, const at::Tensor& scale,
                               const at::Tensor& zero_point, int64_t quant_min, int64_t quant_max,
                               c10::optional<int64_t> axis) {
  RowLayout layout = check_affine_args("fake_quant_affine_forward", x, scale, zero_point, quant_min,
                                       quant_max, axis, c10::kCUDA);
  layout.chunk = kChunk;
  const c10::cuda::CUDAGuard device_guard(x.device());
  const at::Tensor x_c = x.contiguous();
  const at::Tensor scale_f = scale.to(at::kFloat).contiguous(),
                   zp_f = zero_point.to(at::kFloat).contiguous();
  at::Tensor out = at::empty(x_c.sizes(), x_c.options());
  if (layout.pieces() == 0) return out;
  const ZeroPointMode mode = zero_point_mode(zero_point);
  const bool double_product = needs_double_product(axis.has_value(), mode, quant_min, quant_max);
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  CLIMBQ_DISPATCH_KERNEL_DTYPES(x_c.scalar_type(), "fake_quant_affine_forward", [&] {
    dispatch_zp_mode(mode, [&](auto zp_mode) {
      constexpr int kMode = decltype(zp_mode)::value;
      const auto launch = [&](auto kernel) {
        kernel<<<static_cast<unsigned>(layout.pieces()), kThreads, 0, stream>>>(
            x_c.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(),
            scale_f.const_data_ptr<float>(), zp_f.const_data_ptr<float>(), layout.inner,
            layout.channels, layout.chunks_per_row(), static_cast<float>(quant_min),
            static_cast<float>(quant_max));
      };
      if (double_product) {
        launch(affine_forward_kernel<scalar_t, kMode, true>);
      } else {
        launch(affine_forward_kernel<scalar_t, kMode, false>);
      }
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> affine_backward_cuda(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& scale,
    const at::Tensor& zero_point, int64_t quant_min, int64_t quant_max, c10::optional<int64_t> axis,
    bool scale_grad, bool zero_point_grad) {
  const char* op = "fake_quant_affine_backward";
  RowLayout layout =
      check_affine_args(op, x, scale, zero_point, quant_min, quant_max, axis, c10::kCUDA);
  layout.chunk = kChunk;
  check_act_quant_grad(op, grad_out, x);
  TORCH_CHECK_VALUE(!zero_point_grad || at::isFloatingType(zero_point.scalar_type()), op,
                    ": zero_point must be floating to receive a gradient (a learned zero point)");
  const c10::cuda::CUDAGuard device_guard(x.device());
  const at::Tensor x_c = x.contiguous(), grad_c = grad_out.contiguous();
  const at::Tensor scale_f = scale.to(at::kFloat).contiguous(),
                   zp_f = zero_point.to(at::kFloat).contiguous();
  at::Tensor dx = at::empty(x_c.sizes(), x_c.options());
  const auto float_opts = x_c.options().dtype(at::kFloat);
  at::Tensor dscale_partials = at::empty({scale_grad ? layout.pieces() : 0}, float_opts);
  at::Tensor dzp_partials = at::empty({zero_point_grad ? layout.pieces() : 0}, float_opts);
  if (layout.pieces() != 0) {
    const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
    CLIMBQ_DISPATCH_KERNEL_DTYPES(x_c.scalar_type(), "fake_quant_affine_backward", [&] {
      dispatch_zp_mode(zero_point_mode(zero_point), [&](auto zp_mode) {
        constexpr int kMode = decltype(zp_mode)::value;
        const auto blocks = static_cast<unsigned>(layout.pieces());
        affine_backward_kernel<scalar_t, kMode><<<blocks, kThreads, 0, stream>>>(
            grad_c.const_data_ptr<scalar_t>(), x_c.const_data_ptr<scalar_t>(),
            dx.mutable_data_ptr<scalar_t>(), scale_f.const_data_ptr<float>(),
            zp_f.const_data_ptr<float>(),
            scale_grad ? dscale_partials.mutable_data_ptr<float>() : nullptr,
            zero_point_grad ? dzp_partials.mutable_data_ptr<float>() : nullptr, layout.inner,
            layout.channels, layout.chunks_per_row(), static_cast<float>(quant_min),
            static_cast<float>(quant_max));
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    });
  }
  const int64_t numel_per_scale = layout.channels == 0 ? 0 : x_c.numel() / layout.channels;
  const double g = (scale_grad || zero_point_grad) && numel_per_scale > 0
                       ? lsq_grad_scale(op, numel_per_scale, quant_max)
                       : 0.0;
  const auto no_grad = [&] { return at::zeros({layout.channels}, float_opts); };
  return {dx, scale_grad ? reduce_partials(dscale_partials, layout, g) : no_grad(),
          zero_point_grad ? reduce_partials(dzp_partials, layout, g) : no_grad()};
}

RowLayout sample_layout(const at::Tensor& x) {
  RowLayout layout;
  layout.inner = x.size(0) == 0 ? 0 : x.numel() / x.size(0);
  layout.rows = layout.inner == 0 ? 0 : x.size(0);
  layout.chunk = kChunk;
  return layout;
}

at::Tensor sample_bits_forward_cuda(const at::Tensor& x, const at::Tensor& bits,
                                    const at::Tensor& clip) {
  check_sample_bits_args("fake_quant_per_sample_bits_forward", x, bits, clip, c10::kCUDA);
  const c10::cuda::CUDAGuard device_guard(x.device());
  const RowLayout layout = sample_layout(x);
  const at::Tensor x_c = x.contiguous(), bits_i = bits.to(at::kInt).contiguous();
  const at::Tensor clip_f = clip.to(at::kFloat).reshape({1}).contiguous();
  at::Tensor out = at::empty(x_c.sizes(), x_c.options());
  if (layout.pieces() == 0) return out;
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  CLIMBQ_DISPATCH_KERNEL_DTYPES(x_c.scalar_type(), "fake_quant_per_sample_bits_forward", [&] {
    sample_bits_forward_kernel<scalar_t>
        <<<static_cast<unsigned>(layout.pieces()), kThreads, 0, stream>>>(
            x_c.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(),
            bits_i.const_data_ptr<int32_t>(), clip_f.const_data_ptr<float>(), layout.inner,
            layout.chunks_per_row());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> sample_bits_backward_cuda(const at::Tensor& grad_out,
                                                             const at::Tensor& x,
                                                             const at::Tensor& bits,
                                                             const at::Tensor& clip) {
  const char* op = "fake_quant_per_sample_bits_backward";
  check_sample_bits_args(op, x, bits, clip, c10::kCUDA);
  check_act_quant_grad(op, grad_out, x);
  const c10::cuda::CUDAGuard device_guard(x.device());
  const RowLayout layout = sample_layout(x);
  const at::Tensor x_c = x.contiguous(), grad_c = grad_out.contiguous(),
                   bits_i = bits.to(at::kInt).contiguous();
  const at::Tensor clip_f = clip.to(at::kFloat).reshape({1}).contiguous();
  at::Tensor dx = at::empty(x_c.sizes(), x_c.options());
  at::Tensor partials = at::empty({layout.pieces()}, x_c.options().dtype(at::kFloat));
  if (layout.pieces() != 0) {
    const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
    CLIMBQ_DISPATCH_KERNEL_DTYPES(x_c.scalar_type(), "fake_quant_per_sample_bits_backward", [&] {
      sample_bits_backward_kernel<scalar_t>
          <<<static_cast<unsigned>(layout.pieces()), kThreads, 0, stream>>>(
              grad_c.const_data_ptr<scalar_t>(), x_c.const_data_ptr<scalar_t>(),
              dx.mutable_data_ptr<scalar_t>(), bits_i.const_data_ptr<int32_t>(),
              clip_f.const_data_ptr<float>(), partials.mutable_data_ptr<float>(), layout.inner,
              layout.chunks_per_row());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  return {dx, partials.to(at::kDouble).sum().to(at::kFloat)};
}

}  // namespace
}  // namespace climbq::cuda

TORCH_LIBRARY_IMPL(climbq_native, CUDA, m) {
  m.impl("fake_quant_affine_forward", &climbq::cuda::affine_forward_cuda);
  m.impl("fake_quant_affine_backward", &climbq::cuda::affine_backward_cuda);
  m.impl("fake_quant_per_sample_bits_forward", &climbq::cuda::sample_bits_forward_cuda);
  m.impl("fake_quant_per_sample_bits_backward", &climbq::cuda::sample_bits_backward_cuda);
}
