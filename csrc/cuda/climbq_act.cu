// ClimbQ activation quantizer on CUDA (algorithms.md §1a); the math and the checks are in
// ../climbq_act.h.
//
// One grid-stride elementwise kernel per direction, shared by the plain and the fused ops
// (folded BN before, ReLU after, threshold bucketing, uint8 codes: see ../climbq_act.h). Each
// thread handles packs of kVec consecutive elements (16-byte loads when every pointer is 16-byte
// aligned, else kVec = 1) and looks up its sample's sigma and mu once per pack, moving to the next
// sample when the pack crosses a sample boundary. fp32 math throughout; rintf rounds half to even.
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
#include <optional>
#include <type_traits>

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

// The fused variants of one call (see ../climbq_act.h); all null / false: the plain quantizer.
struct Variants {
  const float* thresholds;  // (N,) ascending, or null: the erf form
  const float* bn_scale;    // (channels,) or null: no affine
  const float* bn_shift;
  int64_t channels;
  int64_t channel_stride;  // elements between consecutive channels in memory
  int bits;
  bool relu;
  bool chain_scale;  // backward: dx = dy * bn_scale (else dy)

  // y = x * bn_scale[c] + bn_shift[c] for the element at flat index e (x itself without BN).
  __device__ float affine(float x, int64_t e) const {
    if (bn_scale == nullptr) return x;
    const int64_t c = (e / channel_stride) % channels;
    return fmaf(x, __ldg(bn_scale + c), __ldg(bn_shift + c));
  }
  __device__ float scale_at(int64_t e) const {
    return __ldg(bn_scale + (e / channel_stride) % channels);
  }
  // q: rint(Phi(z) N) from t = z / sqrt(2), or #{j : y > t_j} (+1 at y == t_j, j odd) by
  // binary search in `bits` probes when thresholds are given. NaN stays NaN.
  __device__ float code(float y, float t, float levels) const {
    if (thresholds == nullptr) return rintf(fmaf(erff(t), 0.5f * levels, 0.5f * levels));
    if (isnan(y)) return y;
    int below = 0;  // #{j : t_j < y}; every probe index stays below N
    for (int step = 1 << (bits - 1); step > 0; step >>= 1) {
      if (__ldg(thresholds + below + step - 1) < y) below += step;
    }
    if (below < (1 << bits) - 1 && __ldg(thresholds + below) == y && (below & 1)) ++below;
    return static_cast<float>(below);
  }
};

// Quantized value (or uint8 code) of one element: the output type picks which.
template <typename Out>
__device__ Out quantized(float code, float levels, float inv_levels, float act_range, bool relu) {
  if constexpr (std::is_same_v<Out, uint8_t>) {
    return isnan(code) ? uint8_t{0} : static_cast<uint8_t>(code);
  } else {
    const float value = fmaf(code, 2.0f, -levels) * inv_levels * act_range;  // A(2q-N)/N
    return static_cast<Out>(relu ? fmaxf(value, 0.0f) : value);  // fmaxf(NaN, 0) is 0: see below
  }
}

// out = [relu] A (2q/N - 1) (or q as uint8), x and out contiguous (numel / inner, inner).
template <typename T, typename Out, int kVec>
__global__ void act_quant_forward_kernel(const T* __restrict__ x, Out* __restrict__ out,
                                         const float* __restrict__ sigma,
                                         const float* __restrict__ mu, int64_t numel, int64_t inner,
                                         float levels, float inv_levels, float act_range,
                                         Variants v) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x * kVec;
  for (int64_t base = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) * kVec; base < numel;
       base += stride) {
    const int64_t count = std::min<int64_t>(kVec, numel - base);
    const Pack<T, kVec> in = load_pack<T, kVec>(x + base, count);
    Pack<Out, kVec> res;
    SampleCursor cur;
    cur.load(base / inner, inner, sigma, mu, act_range);
#pragma unroll
    for (int j = 0; j < kVec; ++j) {
      if (j >= count) break;
      if (base + j >= cur.end) cur.load(cur.sample + 1, inner, sigma, mu, act_range);
      const float y = v.affine(static_cast<float>(in.v[j]), base + j);
      const float t = (y - cur.mu) * cur.inv_sigma_sqrt2;
      const float code = v.code(y, t, levels);
      res.v[j] = quantized<Out>(code, levels, inv_levels, act_range, v.relu);
      // NaN propagates through ReLU, as torch.relu does.
      if constexpr (!std::is_same_v<Out, uint8_t>) {
        if (isnan(y)) res.v[j] = static_cast<Out>(y);
      }
    }
    store_pack<Out, kVec>(out + base, res, count);
  }
}

// dy = grad_out * 2A phi((y - mu)/sigma) / sigma [* (q > N/2)]; dx = dy [* bn_scale[c]].
template <typename T, int kVec>
__global__ void act_quant_backward_kernel(const T* __restrict__ grad_out, const T* __restrict__ x,
                                          T* __restrict__ dx, const float* __restrict__ sigma,
                                          const float* __restrict__ mu, int64_t numel,
                                          int64_t inner, float levels, float act_range,
                                          Variants v) {
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
      const float y = v.affine(static_cast<float>(in.v[j]), base + j);
      const float t = (y - cur.mu) * cur.inv_sigma_sqrt2;
      float dy = static_cast<float>(g.v[j]) * cur.dx_scale * expf(-t * t);
      if (v.relu && !(2.0f * v.code(y, t, levels) > levels)) dy = 0.0f;  // ReLU: q > N/2 passes
      if (v.chain_scale && v.bn_scale != nullptr) dy *= v.scale_at(base + j);
      res.v[j] = static_cast<T>(dy);
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

// clang-format off
#define CLIMBQ_DISPATCH_KERNEL_DTYPES(TYPE, NAME, ...)         \
  AT_DISPATCH_SWITCH(TYPE, NAME,                               \
                     AT_DISPATCH_CASE(at::kFloat, __VA_ARGS__) \
                     AT_DISPATCH_CASE(at::kHalf, __VA_ARGS__)  \
                     AT_DISPATCH_CASE(at::kBFloat16, __VA_ARGS__))
// clang-format on

// Optional float32 tables made contiguous for one call (kept alive until it returns).
struct FusedTables {
  std::optional<at::Tensor> thresholds, bn_scale, bn_shift;

  FusedTables(const std::optional<at::Tensor>& t, const std::optional<at::Tensor>& scale,
              const std::optional<at::Tensor>& shift) {
    if (t.has_value()) thresholds = t->contiguous();
    if (scale.has_value()) bn_scale = scale->contiguous();
    if (shift.has_value()) bn_shift = shift->contiguous();
  }
  Variants variants(const at::Tensor& x, int64_t bits, bool relu, bool channels_last,
                    int64_t channels, bool chain_scale) const {
    const auto ptr = [](const std::optional<at::Tensor>& t) {
      return t.has_value() ? t->const_data_ptr<float>() : nullptr;
    };
    return Variants{ptr(thresholds),
                    ptr(bn_scale),
                    ptr(bn_shift),
                    channels,
                    channel_stride(x, channels_last),
                    static_cast<int>(bits),
                    relu,
                    chain_scale};
  }
};

// Launches the forward kernel writing `out` (x's dtype, or uint8 codes).
void launch_forward(const at::Tensor& x_c, at::Tensor& out, const at::Tensor& sigma,
                    const at::Tensor& mu, int64_t bits, double act_range, const Variants& v) {
  const int64_t numel = x_c.numel();
  if (numel == 0) return;
  const at::Tensor sigma_c = sigma.contiguous(), mu_c = mu.contiguous();
  const int64_t inner = numel / x_c.size(0);
  const double levels = static_cast<double>((int64_t{1} << bits) - 1);
  const float levels_f = static_cast<float>(levels), inv_levels = static_cast<float>(1.0 / levels);
  const float act_range_f = static_cast<float>(act_range);
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const float* sigma_p = sigma_c.const_data_ptr<float>();
  const float* mu_p = mu_c.const_data_ptr<float>();
  CLIMBQ_DISPATCH_KERNEL_DTYPES(x_c.scalar_type(), "climbq_act_quant_forward", [&] {
    const auto* x_p = x_c.const_data_ptr<scalar_t>();
    const auto launch = [&](auto* out_p) {
      using Out = std::remove_pointer_t<decltype(out_p)>;
      constexpr int kVec = kPackBytes / sizeof(scalar_t);
      if (aligned_for_packs({x_p, out_p})) {
        act_quant_forward_kernel<scalar_t, Out, kVec>
            <<<grid_for<kVec>(numel), kThreads, 0, stream>>>(
                x_p, out_p, sigma_p, mu_p, numel, inner, levels_f, inv_levels, act_range_f, v);
      } else {
        act_quant_forward_kernel<scalar_t, Out, 1><<<grid_for<1>(numel), kThreads, 0, stream>>>(
            x_p, out_p, sigma_p, mu_p, numel, inner, levels_f, inv_levels, act_range_f, v);
      }
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    };
    if (out.scalar_type() == at::kByte) {
      launch(out.mutable_data_ptr<uint8_t>());
    } else {
      launch(out.mutable_data_ptr<scalar_t>());
    }
  });
}

at::Tensor launch_backward(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& sigma,
                           const at::Tensor& mu, int64_t bits, double act_range,
                           const Variants& v) {
  const at::Tensor x_c = x.contiguous(), grad_c = grad_out.contiguous();
  const at::Tensor sigma_c = sigma.contiguous(), mu_c = mu.contiguous();
  at::Tensor dx = at::empty(x_c.sizes(), x_c.options());
  const int64_t numel = x_c.numel();
  if (numel == 0) return dx;
  const int64_t inner = numel / x_c.size(0);
  const float levels = static_cast<float>((int64_t{1} << bits) - 1);
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
          grad_p, x_p, dx_p, sigma_p, mu_p, numel, inner, levels, float(act_range), v);
    } else {
      act_quant_backward_kernel<scalar_t, 1><<<grid_for<1>(numel), kThreads, 0, stream>>>(
          grad_p, x_p, dx_p, sigma_p, mu_p, numel, inner, levels, float(act_range), v);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return dx;
}

constexpr Variants kPlain{nullptr, nullptr, nullptr, 1, 1, 0, false, true};

at::Tensor act_quant_forward_cuda(const at::Tensor& x, const at::Tensor& sigma,
                                  const at::Tensor& mu, int64_t bits, double act_range) {
  check_act_quant_args("climbq_act_quant_forward", x, sigma, mu, bits, act_range, c10::kCUDA);
  const c10::cuda::CUDAGuard device_guard(x.device());
  const at::Tensor x_c = x.contiguous();
  at::Tensor out = at::empty(x_c.sizes(), x_c.options());
  launch_forward(x_c, out, sigma, mu, bits, act_range, kPlain);
  return out;
}

at::Tensor act_quant_backward_cuda(const at::Tensor& grad_out, const at::Tensor& x,
                                   const at::Tensor& sigma, const at::Tensor& mu, int64_t bits,
                                   double act_range) {
  check_act_quant_args("climbq_act_quant_backward", x, sigma, mu, bits, act_range, c10::kCUDA);
  check_act_quant_grad("climbq_act_quant_backward", grad_out, x);
  const c10::cuda::CUDAGuard device_guard(x.device());
  return launch_backward(grad_out, x, sigma, mu, bits, act_range, kPlain);
}

at::Tensor act_fused_forward_cuda(const at::Tensor& x, const at::Tensor& sigma,
                                  const at::Tensor& mu, const std::optional<at::Tensor>& thresholds,
                                  const std::optional<at::Tensor>& bn_scale,
                                  const std::optional<at::Tensor>& bn_shift, int64_t bits,
                                  double act_range, bool relu, bool channels_last) {
  constexpr const char* op = "climbq_act_fused_forward";
  check_act_quant_args(op, x, sigma, mu, bits, act_range, c10::kCUDA);
  const int64_t channels =
      check_act_fused_tables(op, x, bn_scale, bn_shift, thresholds, bits, channels_last);
  const c10::cuda::CUDAGuard device_guard(x.device());
  const at::Tensor x_c = x.contiguous();
  at::Tensor out = at::empty(x_c.sizes(), x_c.options());
  const FusedTables tables(thresholds, bn_scale, bn_shift);
  launch_forward(x_c, out, sigma, mu, bits, act_range,
                 tables.variants(x_c, bits, relu, channels_last, channels, true));
  return out;
}

at::Tensor act_fused_backward_cuda(const at::Tensor& grad_out, const at::Tensor& x,
                                   const at::Tensor& sigma, const at::Tensor& mu,
                                   const std::optional<at::Tensor>& thresholds,
                                   const std::optional<at::Tensor>& bn_scale,
                                   const std::optional<at::Tensor>& bn_shift, int64_t bits,
                                   double act_range, bool relu, bool channels_last,
                                   bool chain_scale) {
  constexpr const char* op = "climbq_act_fused_backward";
  check_act_quant_args(op, x, sigma, mu, bits, act_range, c10::kCUDA);
  check_act_quant_grad(op, grad_out, x);
  const int64_t channels =
      check_act_fused_tables(op, x, bn_scale, bn_shift, thresholds, bits, channels_last);
  const c10::cuda::CUDAGuard device_guard(x.device());
  const FusedTables tables(thresholds, bn_scale, bn_shift);
  return launch_backward(grad_out, x, sigma, mu, bits, act_range,
                         tables.variants(x, bits, relu, channels_last, channels, chain_scale));
}

at::Tensor act_fused_codes_cuda(const at::Tensor& x, const at::Tensor& sigma, const at::Tensor& mu,
                                const std::optional<at::Tensor>& thresholds,
                                const std::optional<at::Tensor>& bn_scale,
                                const std::optional<at::Tensor>& bn_shift, int64_t bits,
                                bool channels_last) {
  constexpr const char* op = "climbq_act_fused_codes";
  check_act_quant_args(op, x, sigma, mu, bits, kCodesActRange, c10::kCUDA);
  check_act_codes_bits(op, bits);
  const int64_t channels =
      check_act_fused_tables(op, x, bn_scale, bn_shift, thresholds, bits, channels_last);
  const c10::cuda::CUDAGuard device_guard(x.device());
  const at::Tensor x_c = x.contiguous();
  at::Tensor codes = at::empty(x_c.sizes(), x_c.options().dtype(at::kByte));
  const FusedTables tables(thresholds, bn_scale, bn_shift);
  launch_forward(x_c, codes, sigma, mu, bits, kCodesActRange,
                 tables.variants(x_c, bits, false, channels_last, channels, true));
  return codes;
}

}  // namespace

int runtime_version_built() { return CUDART_VERSION; }

}  // namespace climbq::cuda

TORCH_LIBRARY_IMPL(climbq_native, CUDA, m) {
  m.impl("climbq_act_quant_forward", &climbq::cuda::act_quant_forward_cuda);
  m.impl("climbq_act_quant_backward", &climbq::cuda::act_quant_backward_cuda);
  m.impl("climbq_act_fused_forward", &climbq::cuda::act_fused_forward_cuda);
  m.impl("climbq_act_fused_backward", &climbq::cuda::act_fused_backward_cuda);
  m.impl("climbq_act_fused_codes", &climbq::cuda::act_fused_codes_cuda);
}
