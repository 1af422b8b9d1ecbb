// ClimbQ weight quantizer on CUDA (algorithms.md §1b); the math and the checks are in
// ../climbq_weight.h.
//
// Forward: shifted_sums_kernel writes one float64 (sum d, sum d^2) partial per block
// (d = w - w[0]); forward_kernel's blocks each add the partials in one fixed order (so every
// block gets the same mean and std) and quantize their elements. Backward: the same
// reduction, then grad_sums_kernel (S1, S2 partials) and backward_kernel. No host sync: the
// statistics never leave the device. Zero spread (std == 0) maps every element to t = 0
// instead of NaN; the Python layer rejects such w before launching (ops/climbq_weight.py).
#include "../climbq_weight.h"
#include "reduce.cuh"

#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>

namespace climbq::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kMaxPartials = 512;  // each elementwise block re-adds these, so keep them few
constexpr int kBlocksPerSm = 8;
constexpr double kSqrt2 = 1.4142135623730950488;
constexpr double kSqrt2Pi = 2.5066282746310005024;

struct Pair {
  double a;
  double b;
};

// The sum of the first `count` partials, in the same order in every block.
__device__ Pair total_of(const Pair* partials, int count, double* scratch) {
  double a = 0, b = 0;
  for (int j = threadIdx.x; j < count; j += blockDim.x) {
    a += partials[j].a;
    b += partials[j].b;
  }
  return {block_sum(a, scratch), block_sum(b, scratch)};
}

// mean and 1 / (std sqrt(2)) (0 for zero spread) from the shifted sums.
struct Standardize {
  float mean;
  float inv_std_sqrt2;
  double std;
};

__device__ Standardize standardize(const Pair& sums, float shift, int64_t n) {
  const double mean_d = sums.a / n;
  const double m2 = sums.b - sums.a * mean_d;
  const double std = m2 > 0 ? sqrt(m2 / (n - 1)) : 0.0;
  return {static_cast<float>(shift + mean_d),
          std > 0 ? static_cast<float>(1.0 / (std * kSqrt2)) : 0.0f, std};
}

template <typename T>
__global__ void shifted_sums_kernel(const T* __restrict__ w, int64_t n,
                                    Pair* __restrict__ partials) {
  __shared__ double scratch[kWarp];
  const float shift = static_cast<float>(w[0]);
  double a = 0, b = 0;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    const double d = static_cast<float>(w[i]) - shift;
    a += d;
    b += d * d;
  }
  a = block_sum(a, scratch);
  b = block_sum(b, scratch);
  if (threadIdx.x == 0) partials[blockIdx.x] = {a, b};
}

template <typename T>
__global__ void forward_kernel(const T* __restrict__ w, T* __restrict__ out, int64_t n,
                               const Pair* __restrict__ stat_partials, int num_partials,
                               float levels) {
  __shared__ double scratch[kWarp];
  const Standardize st =
      standardize(total_of(stat_partials, num_partials, scratch), static_cast<float>(w[0]), n);
  const float inv_levels = 1.0f / levels;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    const float t = (static_cast<float>(w[i]) - st.mean) * st.inv_std_sqrt2;
    const float code = rintf(fmaf(erff(t), 0.5f * levels, 0.5f * levels));  // rint(Phi(z) N)
    out[i] = static_cast<T>(fmaf(code, 2.0f, -levels) * inv_levels);        // (2q - N)/N
  }
}

// Partials of sum g e and sum g e t, e = exp(-t^2) = sqrt(2 pi) phi(z), t = z / sqrt(2).
template <typename T>
__global__ void grad_sums_kernel(const T* __restrict__ g, const T* __restrict__ w, int64_t n,
                                 const Pair* __restrict__ stat_partials, int num_partials,
                                 Pair* __restrict__ partials) {
  __shared__ double scratch[kWarp];
  const Standardize st =
      standardize(total_of(stat_partials, num_partials, scratch), static_cast<float>(w[0]), n);
  double a = 0, b = 0;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    const float t = (static_cast<float>(w[i]) - st.mean) * st.inv_std_sqrt2;
    const float ge = static_cast<float>(g[i]) * expf(-t * t);
    a += ge;
    b += static_cast<double>(ge) * t;
  }
  a = block_sum(a, scratch);
  b = block_sum(b, scratch);
  if (threadIdx.x == 0) partials[blockIdx.x] = {a, b};
}

// dw = (2/s)(g phi - S1/n - z S2/(n-1)) = g_scale g e + offset + t_scale t.
template <typename T>
__global__ void backward_kernel(const T* __restrict__ g, const T* __restrict__ w,
                                T* __restrict__ dw, int64_t n,
                                const Pair* __restrict__ stat_partials,
                                const Pair* __restrict__ grad_partials, int num_partials) {
  __shared__ double scratch[kWarp];
  const Standardize st =
      standardize(total_of(stat_partials, num_partials, scratch), static_cast<float>(w[0]), n);
  const Pair sums = total_of(grad_partials, num_partials, scratch);
  const double inv_s = st.std > 0 ? 1.0 / st.std : 0.0;
  const float g_scale = static_cast<float>(2.0 * inv_s / kSqrt2Pi);
  const float offset = static_cast<float>(-2.0 * inv_s * sums.a / (kSqrt2Pi * n));
  const float t_scale = static_cast<float>(-4.0 * inv_s * sums.b / (kSqrt2Pi * (n - 1)));
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    const float t = (static_cast<float>(w[i]) - st.mean) * st.inv_std_sqrt2;
    dw[i] = static_cast<T>(
        fmaf(static_cast<float>(g[i]) * g_scale, expf(-t * t), fmaf(t, t_scale, offset)));
  }
}

int num_partials(int64_t n) {
  const int64_t sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  return static_cast<int>(std::max<int64_t>(
      1, std::min<int64_t>({kMaxPartials, 2 * sms, (n + kThreads - 1) / kThreads})));
}

int elementwise_blocks(int64_t n) {
  const int64_t sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  return static_cast<int>(
      std::max<int64_t>(1, std::min<int64_t>(sms * kBlocksPerSm, (n + kThreads - 1) / kThreads)));
}

// clang-format off
#define CLIMBQ_DISPATCH_WEIGHT_DTYPES(TYPE, NAME, ...)         \
  AT_DISPATCH_SWITCH(TYPE, NAME,                               \
                     AT_DISPATCH_CASE(at::kFloat, __VA_ARGS__) \
                     AT_DISPATCH_CASE(at::kHalf, __VA_ARGS__)  \
                     AT_DISPATCH_CASE(at::kBFloat16, __VA_ARGS__))
// clang-format on

// (partials tensor, count): the statistics reduction, launched on the current stream.
template <typename T>
std::pair<at::Tensor, int> launch_stats(const at::Tensor& w, cudaStream_t stream) {
  const int64_t n = w.numel();
  const int parts = num_partials(n);
  at::Tensor partials = at::empty({parts, 2}, w.options().dtype(at::kDouble));
  shifted_sums_kernel<T><<<parts, kThreads, 0, stream>>>(
      w.const_data_ptr<T>(), n, reinterpret_cast<Pair*>(partials.mutable_data_ptr<double>()));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {partials, parts};
}

at::Tensor weight_quant_forward_cuda(const at::Tensor& w, int64_t bits) {
  check_weight_quant_args("climbq_weight_quant_forward", w, bits, c10::kCUDA);
  const c10::cuda::CUDAGuard device_guard(w.device());
  const at::Tensor w_c = w.contiguous();
  at::Tensor out = at::empty(w_c.sizes(), w_c.options());
  const int64_t n = w_c.numel();
  const float levels = static_cast<float>((int64_t{1} << bits) - 1);
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  CLIMBQ_DISPATCH_WEIGHT_DTYPES(w_c.scalar_type(), "climbq_weight_quant_forward", [&] {
    const auto [partials, parts] = launch_stats<scalar_t>(w_c, stream);
    forward_kernel<scalar_t><<<elementwise_blocks(n), kThreads, 0, stream>>>(
        w_c.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(), n,
        reinterpret_cast<const Pair*>(partials.const_data_ptr<double>()), parts, levels);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

at::Tensor weight_quant_backward_cuda(const at::Tensor& grad_out, const at::Tensor& w,
                                      int64_t bits) {
  check_weight_quant_args("climbq_weight_quant_backward", w, bits, c10::kCUDA);
  check_weight_grad("climbq_weight_quant_backward", grad_out, w);
  const c10::cuda::CUDAGuard device_guard(w.device());
  const at::Tensor w_c = w.contiguous(), g_c = grad_out.contiguous();
  at::Tensor dw = at::empty(w_c.sizes(), w_c.options());
  const int64_t n = w_c.numel();
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  CLIMBQ_DISPATCH_WEIGHT_DTYPES(w_c.scalar_type(), "climbq_weight_quant_backward", [&] {
    const auto [stat_partials, parts] = launch_stats<scalar_t>(w_c, stream);
    at::Tensor grad_partials = at::empty({parts, 2}, stat_partials.options());
    const auto* stats_p = reinterpret_cast<const Pair*>(stat_partials.const_data_ptr<double>());
    auto* grad_p = reinterpret_cast<Pair*>(grad_partials.mutable_data_ptr<double>());
    grad_sums_kernel<scalar_t><<<parts, kThreads, 0, stream>>>(
        g_c.const_data_ptr<scalar_t>(), w_c.const_data_ptr<scalar_t>(), n, stats_p, parts, grad_p);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    backward_kernel<scalar_t><<<elementwise_blocks(n), kThreads, 0, stream>>>(
        g_c.const_data_ptr<scalar_t>(), w_c.const_data_ptr<scalar_t>(),
        dw.mutable_data_ptr<scalar_t>(), n, stats_p, grad_p, parts);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return dw;
}

}  // namespace
}  // namespace climbq::cuda

TORCH_LIBRARY_IMPL(climbq_native, CUDA, m) {
  m.impl("climbq_weight_quant_forward", &climbq::cuda::weight_quant_forward_cuda);
  m.impl("climbq_weight_quant_backward", &climbq::cuda::weight_quant_backward_cuda);
}
