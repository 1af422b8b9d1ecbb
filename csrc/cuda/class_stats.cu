// Class-segmented statistics on CUDA (algorithms.md §1c, §4a); shapes and checks in
// ../class_stats.h.
//
// Accumulation: float64 sums of shifted values, d = x - x[0, f, 0] (the first sample's first
// element of the same feature), sum d and sum d^2 per (class, feature), added with float64
// atomics; then var = sum d^2 / n - (sum d / n)^2 loses nothing to cancellation unless a
// class mean sits ~1e4 standard deviations from the shift. Rows x[i, f, :] of S >= 32
// elements are reduced by a warp (coalesced loads), shorter rows by one thread each
// (for (B, D) input one element per thread, consecutive threads on consecutive features).
// A finalize kernel turns the sums into mean and var in x's dtype. No host synchronisation.
// Labels outside [0, K) are skipped (never written out of bounds); the Python layer rejects
// them before the launch where a host read is allowed (checks.check_labels).
#include "../class_stats.h"
#include "reduce.cuh"

#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <tuple>

namespace climbq::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kBlocksPerSm = 8;

// The shift: the first sample's value, or 0 where that is NaN or Inf, which would otherwise reach
// every class's sums.
__device__ __forceinline__ float finite_or_zero(float v) { return isfinite(v) ? v : 0.0f; }

// kGroup lanes (1 or a warp) reduce each row; counts get S per sample from the f == 0 rows.
template <typename T, int kGroup>
__global__ void segment_sums_kernel(const T* __restrict__ x, const int64_t* __restrict__ labels,
                                    int64_t batch, int64_t features, int64_t positions,
                                    int64_t num_classes, double* __restrict__ sum_d,
                                    double* __restrict__ sum_d2,
                                    unsigned long long* __restrict__ counts) {
  const int64_t rows = batch * features;
  const int lane = threadIdx.x % kGroup;
  const int64_t groups = int64_t(gridDim.x) * blockDim.x / kGroup;
  for (int64_t row = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / kGroup; row < rows;
       row += groups) {
    const int64_t sample = row / features, f = row % features;
    const int64_t k = labels[sample];
    const float shift = finite_or_zero(static_cast<float>(x[f * positions]));
    const T* p = x + row * positions;
    double a = 0, b = 0;
    for (int64_t s = lane; s < positions; s += kGroup) {
      // Exact: the difference of two float32 values in float64.
      const double d = static_cast<double>(static_cast<float>(p[s])) - static_cast<double>(shift);
      a += d;
      b += d * d;
    }
    if constexpr (kGroup == kWarp) {
      a = warp_sum(a);
      b = warp_sum(b);
    }
    if (lane == 0 && k >= 0 && k < num_classes) {
      atomicAdd(sum_d + k * features + f, a);
      atomicAdd(sum_d2 + k * features + f, b);
      if (f == 0) atomicAdd(counts + k, static_cast<unsigned long long>(positions));
    }
  }
}

template <typename T>
__global__ void finalize_kernel(const T* __restrict__ x, const double* __restrict__ sum_d,
                                const double* __restrict__ sum_d2,
                                const int64_t* __restrict__ counts, int64_t features,
                                int64_t positions, int64_t num_classes, T* __restrict__ mean,
                                T* __restrict__ var) {
  const int64_t j = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (j >= num_classes * features) return;
  const int64_t k = j / features, f = j % features;
  const int64_t n = counts[k];
  double m = 0, v = 0;
  if (n > 0) {
    const double mean_d = sum_d[j] / n;
    m = finite_or_zero(static_cast<float>(x[f * positions])) + mean_d;
    v = sum_d2[j] / n - mean_d * mean_d;
    v = v < 0.0 ? 0.0 : v;  // rounding below 0 clipped; NaN kept
  }
  mean[j] = static_cast<T>(static_cast<float>(m));
  var[j] = static_cast<T>(static_cast<float>(v));
}

// clang-format off
#define CLIMBQ_DISPATCH_STATS_DTYPES(TYPE, NAME, ...)          \
  AT_DISPATCH_SWITCH(TYPE, NAME,                               \
                     AT_DISPATCH_CASE(at::kFloat, __VA_ARGS__) \
                     AT_DISPATCH_CASE(at::kHalf, __VA_ARGS__)  \
                     AT_DISPATCH_CASE(at::kBFloat16, __VA_ARGS__))
// clang-format on

int grid_for(int64_t threads) {
  const int64_t sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  return static_cast<int>(std::max<int64_t>(
      1, std::min<int64_t>(sms * kBlocksPerSm, (threads + kThreads - 1) / kThreads)));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> class_stats_cuda(const at::Tensor& x,
                                                                const at::Tensor& labels,
                                                                int64_t num_classes) {
  check_class_stats_args("class_stats", x, labels, num_classes, c10::kCUDA);
  const c10::cuda::CUDAGuard device_guard(x.device());
  const SegmentShape shape = segment_shape(x);
  const at::Tensor x_c = x.contiguous(), labels_c = labels.contiguous();
  const auto acc_options = x.options().dtype(at::kDouble);
  at::Tensor sum_d = at::zeros({num_classes, shape.features}, acc_options);
  at::Tensor sum_d2 = at::zeros({num_classes, shape.features}, acc_options);
  at::Tensor counts = at::zeros({num_classes}, labels.options());
  at::Tensor mean = at::empty({num_classes, shape.features}, x.options());
  at::Tensor var = at::empty({num_classes, shape.features}, x.options());
  const int64_t rows = shape.batch * shape.features;
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  CLIMBQ_DISPATCH_STATS_DTYPES(x_c.scalar_type(), "class_stats", [&] {
    const auto* x_p = x_c.const_data_ptr<scalar_t>();
    auto* counts_p = reinterpret_cast<unsigned long long*>(counts.mutable_data_ptr<int64_t>());
    if (rows * shape.positions > 0) {
      if (shape.positions >= kWarp) {
        segment_sums_kernel<scalar_t, kWarp><<<grid_for(rows * kWarp), kThreads, 0, stream>>>(
            x_p, labels_c.const_data_ptr<int64_t>(), shape.batch, shape.features, shape.positions,
            num_classes, sum_d.mutable_data_ptr<double>(), sum_d2.mutable_data_ptr<double>(),
            counts_p);
      } else {
        segment_sums_kernel<scalar_t, 1><<<grid_for(rows), kThreads, 0, stream>>>(
            x_p, labels_c.const_data_ptr<int64_t>(), shape.batch, shape.features, shape.positions,
            num_classes, sum_d.mutable_data_ptr<double>(), sum_d2.mutable_data_ptr<double>(),
            counts_p);
      }
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    const int64_t outputs = num_classes * shape.features;
    finalize_kernel<scalar_t><<<(outputs + kThreads - 1) / kThreads, kThreads, 0, stream>>>(
        x_p, sum_d.const_data_ptr<double>(), sum_d2.const_data_ptr<double>(),
        counts.const_data_ptr<int64_t>(), shape.features, shape.positions, num_classes,
        mean.mutable_data_ptr<scalar_t>(), var.mutable_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  const auto out_shape = stats_shape(x, num_classes);
  return {counts, mean.reshape(out_shape), var.reshape(out_shape)};
}

}  // namespace
}  // namespace climbq::cuda

TORCH_LIBRARY_IMPL(climbq_native, CUDA, m) {
  m.impl("class_stats", &climbq::cuda::class_stats_cuda);
}
