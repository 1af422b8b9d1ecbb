// ClimbQ activation quantizer on CUDA (SPEC 1a); the math and the checks are in ../climbq_act.h.
//
// One grid-stride elementwise kernel per direction. Each thread handles packs of kVec
// consecutive elements (16-byte loads when every pointer is 16-byte aligned, else kVec = 1)
// and looks up its sample's sigma and mu once per pack, moving to the next sample when the
// pack crosses a sample boundary. fp32 math throughout; rintf rounds half to even.
#include "../climbq_act.h"

#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_runtime_api.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <initializer_list>

namespace climbq::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kBlocksPerSm = 8;  // the grid-stride launch keeps about this many blocks per SM
constexpr int kPackBytes = 16;   // one 128-bit load or store
constexpr float kSqrt2 = 1.41421356237309505f;
constexpr float kSqrt2Pi = 2.50662827463100050f;

template <typename T, int kVec>
struct alignas(sizeof(T) * kVec) Pack {
  T v[kVec];
};

// The sample a thread is in: its constants and the flat index one past its last element.
struct SampleCursor {
  int64_t sample;
  int64_t end;
  float mu;
  float inv_sigma_sqrt2;  // 1 / (sigma sqrt(2))
  float dx_scale;         // 2A / (sigma sqrt(2 pi))

  __device__ void load(int64_t s, int64_t inner, const float* sigma_p, const float* mu_p,
                       float act_range) {
    sample = s;
    end = (s + 1) * inner;
    const float sigma = __ldg(sigma_p + s);
    mu = __ldg(mu_p + s);
    inv_sigma_sqrt2 = 1.0f / (sigma * kSqrt2);
    dx_scale = 2.0f * act_range / (sigma * kSqrt2Pi);
  }
};

// Reads up to kVec elements from p[0..count); a full pack is one vector load.
template <typename T, int kVec>
__device__ Pack<T, kVec> load_pack(const T* p, int64_t count) {
  Pack<T, kVec> pack;
  if (count == kVec) return *reinterpret_cast<const Pack<T, kVec>*>(p);
#pragma unroll
  for (int j = 0; j < kVec; ++j) pack.v[j] = j < count ? p[j] : T(0.0f);
  return pack;
}

template <typename T, int kVec>
__device__ void store_pack(T* p, const Pack<T, kVec>& pack, int64_t count) {
  if (count == kVec) {
    *reinterpret_cast<Pack<T, kVec>*>(p) = pack;
    return;
  }
#pragma unroll
  for (int j = 0; j < kVec; ++j) {
    if (j < count) p[j] = pack.v[j];
  }
}

// out = A (2 rint(Phi((x - mu)/sigma) N)/N - 1), x and out contiguous (numel / inner, inner).
template <typename T, int kVec>
__global__ void act_quant_forward_kernel(const T* __restrict__ x, T* __restrict__ out,
                                         const float* __restrict__ sigma,
                                         const float* __restrict__ mu, int64_t numel,
                                         int64_t inner, float levels, float inv_levels,
                                         float act_range) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x * kVec;
  for (int64_t base = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) * kVec; base < numel;
       base += stride) {
    const int64_t count = std::min<int64_t>(kVec, numel - base);
    const Pack<T, kVec> in = load_pack<T, kVec>(x + base, count);
    Pack<T, kVec> res;
    SampleCursor cur;
    cur.load(base / inner, inner, sigma, mu, act_range);
#pragma unroll
    for (int j = 0; j < kVec; ++j) {
      if (j >= count) break;
      if (base + j >= cur.end) cur.load(cur.sample + 1, inner, sigma, mu, act_range);
      const float t = (static_cast<float>(in.v[j]) - cur.mu) * cur.inv_sigma_sqrt2;
      const float code = rintf(fmaf(erff(t), 0.5f * levels, 0.5f * levels));  // rint(u N)
      res.v[j] = static_cast<T>(fmaf(code, 2.0f, -levels) * inv_levels * act_range);  // A(2q-N)/N
    }
    store_pack<T, kVec>(out + base, res, count);
  }
}

// dx = grad_out * 2A phi((x - mu)/sigma) / sigma.
template <typename T, int kVec>
__global__ void act_quant_backward_kernel(const T* __restrict__ grad_out, const T* __restrict__ x,
                                          T* __restrict__ dx, const float* __restrict__ sigma,
                                          const float* __restrict__ mu, int64_t numel,
                                          int64_t inner, float act_range) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x * kVec;
  for (int64_t base = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) * kVec; base < numel;
       base += stride) {
    const int64_t count = std::min<int64_t>(kVec, numel - base);
    const Pack<T, kVec> g = load_pack<T, kVec>(grad_out + base, count);
    const Pack<T, kVec> in = load_pack<T, kVec>(x + base, count);
    Pack<T, kVec> res;
    SampleCursor cur;
    cur.load(base / inner, inner, sigma, mu, act_range);
#pragma unroll
    for (int j = 0; j < kVec; ++j) {
      if (j >= count) break;
      if (base + j >= cur.end) cur.load(cur.sample + 1, inner, sigma, mu, act_range);
      const float t = (static_cast<float>(in.v[j]) - cur.mu) * cur.inv_sigma_sqrt2;
      res.v[j] = static_cast<T>(static_cast<float>(g.v[j]) * cur.dx_scale * expf(-t * t));
    }
    store_pack<T, kVec>(dx + base, res, count);
  }
}

bool aligned_for_packs(std::initializer_list<const void*> pointers) {
  return std::all_of(pointers.begin(), pointers.end(), [](const void* p) {
    return reinterpret_cast<std::uintptr_t>(p) % kPackBytes == 0;
  });
}

// Grid for `numel` elements in packs of kVec: enough blocks to fill the GPU, no more.
template <int kVec>
dim3 grid_for(int64_t numel) {
  const int64_t packs = (numel + kVec - 1) / kVec;
  const int64_t wanted = (packs + kThreads - 1) / kThreads;
  const int64_t resident =
      int64_t(at::cuda::getCurrentDeviceProperties()->multiProcessorCount) * kBlocksPerSm;
  return dim3(static_cast<unsigned>(std::max<int64_t>(1, std::min(wanted, resident))));
}

#define CLIMBQ_DISPATCH_KERNEL_DTYPES(TYPE, NAME, ...)       \
  AT_DISPATCH_SWITCH(TYPE, NAME,                             \
                     AT_DISPATCH_CASE(at::kFloat, __VA_ARGS__) \
                     AT_DISPATCH_CASE(at::kHalf, __VA_ARGS__)  \
                     AT_DISPATCH_CASE(at::kBFloat16, __VA_ARGS__))

at::Tensor act_quant_forward_cuda(const at::Tensor& x, const at::Tensor& sigma,
                                  const at::Tensor& mu, int64_t bits, double act_range) {
  check_act_quant_args("climbq_act_quant_forward", x, sigma, mu, bits, act_range, c10::kCUDA);
  const c10::cuda::CUDAGuard device_guard(x.device());
  const at::Tensor x_c = x.contiguous(), sigma_c = sigma.contiguous(), mu_c = mu.contiguous();
  at::Tensor out = at::empty(x_c.sizes(), x_c.options());
  const int64_t numel = x_c.numel();
  if (numel == 0) return out;
  const int64_t inner = numel / x_c.size(0);
  const double levels = static_cast<double>((int64_t{1} << bits) - 1);
  const float levels_f = static_cast<float>(levels), inv_levels = static_cast<float>(1.0 / levels);
  const float act_range_f = static_cast<float>(act_range);
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  CLIMBQ_DISPATCH_KERNEL_DTYPES(x_c.scalar_type(), "climbq_act_quant_forward", [&] {
    constexpr int kVec = kPackBytes / sizeof(scalar_t);
    const auto* x_p = x_c.const_data_ptr<scalar_t>();
    auto* out_p = out.mutable_data_ptr<scalar_t>();
    const float* sigma_p = sigma_c.const_data_ptr<float>();
    const float* mu_p = mu_c.const_data_ptr<float>();
    if (aligned_for_packs({x_p, out_p})) {
      act_quant_forward_kernel<scalar_t, kVec><<<grid_for<kVec>(numel), kThreads, 0, stream>>>(
          x_p, out_p, sigma_p, mu_p, numel, inner, levels_f, inv_levels, act_range_f);
    } else {
      act_quant_forward_kernel<scalar_t, 1><<<grid_for<1>(numel), kThreads, 0, stream>>>(
          x_p, out_p, sigma_p, mu_p, numel, inner, levels_f, inv_levels, act_range_f);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

at::Tensor act_quant_backward_cuda(const at::Tensor& grad_out, const at::Tensor& x,
                                   const at::Tensor& sigma, const at::Tensor& mu, int64_t bits,
                                   double act_range) {
  check_act_quant_args("climbq_act_quant_backward", x, sigma, mu, bits, act_range, c10::kCUDA);
  check_act_quant_grad("climbq_act_quant_backward", grad_out, x);
  const c10::cuda::CUDAGuard device_guard(x.device());
  const at::Tensor x_c = x.contiguous(), grad_c = grad_out.contiguous();
  const at::Tensor sigma_c = sigma.contiguous(), mu_c = mu.contiguous();
  at::Tensor dx = at::empty(x_c.sizes(), x_c.options());
  const int64_t numel = x_c.numel();
  if (numel == 0) return dx;
  const int64_t inner = numel / x_c.size(0);
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  CLIMBQ_DISPATCH_KERNEL_DTYPES(x_c.scalar_type(), "climbq_act_quant_backward", [&] {
    constexpr int kVec = kPackBytes / sizeof(scalar_t);
    const auto* grad_p = grad_c.const_data_ptr<scalar_t>();
    const auto* x_p = x_c.const_data_ptr<scalar_t>();
    auto* dx_p = dx.mutable_data_ptr<scalar_t>();
    const float* sigma_p = sigma_c.const_data_ptr<float>();
    const float* mu_p = mu_c.const_data_ptr<float>();
    if (aligned_for_packs({grad_p, x_p, dx_p})) {
      act_quant_backward_kernel<scalar_t, kVec><<<grid_for<kVec>(numel), kThreads, 0, stream>>>(
          grad_p, x_p, dx_p, sigma_p, mu_p, numel, inner, float(act_range));
    } else {
      act_quant_backward_kernel<scalar_t, 1><<<grid_for<1>(numel), kThreads, 0, stream>>>(
          grad_p, x_p, dx_p, sigma_p, mu_p, numel, inner, float(act_range));
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return dx;
}

}  // namespace

int runtime_version_built() { return CUDART_VERSION; }

}  // namespace climbq::cuda

TORCH_LIBRARY_IMPL(climbq_native, CUDA, m) {
  m.impl("climbq_act_quant_forward", &climbq::cuda::act_quant_forward_cuda);
  m.impl("climbq_act_quant_backward", &climbq::cuda::act_quant_backward_cuda);
}
