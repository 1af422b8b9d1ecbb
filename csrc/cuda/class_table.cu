// The per-batch ClimbQ scale table on CUDA (algorithms.md §1a; see ../class_table.h): one block
// per op, since a batch has at most a few thousand labels and a table is read by every
// quantizer of the model. No host synchronisation.
#include "../class_table.h"

#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cmath>
#include <cstdint>
#include <tuple>

namespace climbq::cuda {
namespace {

constexpr int kThreads = 512;

// counts is zeroed and filled by the one block; labels outside [0, K) are not counted.
__global__ void label_histogram_kernel(const int64_t* __restrict__ labels, int64_t batch,
                                       int64_t num_classes, int64_t* __restrict__ counts) {
  for (int64_t k = threadIdx.x; k < num_classes; k += blockDim.x) counts[k] = 0;
  __syncthreads();
  for (int64_t i = threadIdx.x; i < batch; i += blockDim.x) {
    const int64_t k = labels[i];
    if (k >= 0 && k < num_classes)
      atomicAdd(reinterpret_cast<unsigned long long*>(counts + k), 1ull);
  }
}

// sigma_i = 2 - n_{y_i} / max(sum n^2, 1) in float32 (NaN for a label outside [0, K)), mu_i = 0.
__global__ void class_sigma_table_kernel(const int64_t* __restrict__ labels, int64_t batch,
                                         const int64_t* __restrict__ counts, int64_t num_classes,
                                         float* __restrict__ sigma, float* __restrict__ mu) {
  __shared__ unsigned long long partial[kThreads];
  unsigned long long local = 0;
  for (int64_t k = threadIdx.x; k < num_classes; k += blockDim.x) {
    const unsigned long long n = static_cast<unsigned long long>(counts[k]);
    local += n * n;
  }
  partial[threadIdx.x] = local;
  __syncthreads();
  for (int stride = kThreads / 2; stride > 0; stride /= 2) {
    if (threadIdx.x < stride) partial[threadIdx.x] += partial[threadIdx.x + stride];
    __syncthreads();
  }
  const unsigned long long sum_sq = partial[0];
  const float denominator = static_cast<float>(sum_sq < 1 ? 1ull : sum_sq);
  for (int64_t i = threadIdx.x; i < batch; i += blockDim.x) {
    const int64_t k = labels[i];
    const bool valid = k >= 0 && k < num_classes;
    sigma[i] = valid ? 2.0f - __fdiv_rn(static_cast<float>(counts[k]), denominator) : NAN;
    mu[i] = 0.0f;
  }
}

at::Tensor label_histogram_cuda(const at::Tensor& labels, int64_t num_classes) {
  check_histogram_args("label_histogram", labels, num_classes, c10::kCUDA);
  const c10::cuda::CUDAGuard guard(labels.device());
  const at::Tensor labels_c = labels.contiguous();
  at::Tensor counts = at::empty({num_classes}, labels.options());
  label_histogram_kernel<<<1, kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
      labels_c.const_data_ptr<int64_t>(), labels_c.size(0), num_classes,
      counts.mutable_data_ptr<int64_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return counts;
}

std::tuple<at::Tensor, at::Tensor> class_sigma_table_cuda(const at::Tensor& labels,
                                                          const at::Tensor& counts) {
  check_table_args("class_sigma_table", labels, counts, c10::kCUDA);
  const c10::cuda::CUDAGuard guard(labels.device());
  const at::Tensor labels_c = labels.contiguous(), counts_c = counts.contiguous();
  const int64_t batch = labels_c.size(0);
  const auto options = labels.options().dtype(at::kFloat);
  at::Tensor sigma = at::empty({batch}, options), mu = at::empty({batch}, options);
  class_sigma_table_kernel<<<1, kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
      labels_c.const_data_ptr<int64_t>(), batch, counts_c.const_data_ptr<int64_t>(),
      counts_c.size(0), sigma.mutable_data_ptr<float>(), mu.mutable_data_ptr<float>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {sigma, mu};
}

}  // namespace
}  // namespace climbq::cuda

TORCH_LIBRARY_IMPL(climbq_native, CUDA, m) {
  m.impl("label_histogram", &climbq::cuda::label_histogram_cuda);
  m.impl("class_sigma_table", &climbq::cuda::class_sigma_table_cuda);
}
