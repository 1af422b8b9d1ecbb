// The INT4 matmul op's direct entry for Python (ops.cpp binds it as climbq_kernels._C.int4_matmul).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <optional>

namespace climbq {

// climbq_native::int4_matmul called through the dispatcher from C++ (the typed, unboxed call),
// for the package's eager serving path: torch.ops' Python entry boxes every argument into an
// IValue and back, a cost that shows at batch 1, where the kernel itself is short. Same op, same
// dispatch keys, same kernels.
at::Tensor int4_matmul_direct(const at::Tensor& x, const at::Tensor& packed,
                              const at::Tensor& scales, const at::Tensor& zeros, int64_t group_size,
                              const std::optional<at::Tensor>& bias);

}  // namespace climbq
