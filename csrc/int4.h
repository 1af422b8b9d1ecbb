// The INT4 matmul op's direct entry for Python (ops.cpp binds it as climbq_kernels._C.int4_matmul).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <optional>

namespace climbq {

// climbq_native::int4_matmul called through the dispatcher from C++ (the typed, unboxed call),
// for the package's eager serving path. torch.ops' Python entry boxes every argument into an
// IValue and back; with the caches as a layer's weight stream leaves them, that path measured
// 0.08-0.17 ms more a batch-1 call than the kernel called directly. Same kernels, same dispatch
// keys (a tensor subclass still reaches its __torch_dispatch__).
at::Tensor int4_matmul_direct(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& scales,
                              const at::Tensor& zeros, int64_t group_size, const std::optional<at::Tensor>& bias);

}  // namespace climbq
