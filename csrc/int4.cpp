// Schema of the INT4 packed-weight matmul (algorithms.md §6); kernels in cpu/int4_matmul.cpp and
// cuda/int4_matmul.cu. Layout: climbq_kernels/int4.py (packed uint8 (N, K/2), low nibble =
// even input feature; scales, zeros float32 (N, K/g); W[n, k] = (q - zero) * scale).
#include "int4.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(climbq_native, m) {
  // x: (..., K) float32/float16/bfloat16 contiguous; packed: uint8 (N, K/2); scales, zeros:
  // float32 (N, K/group_size); bias: (N,) in x's dtype or None. Returns (..., N) in x's dtype:
  // x @ W^T + bias, accumulated in float32.
  m.def("int4_matmul(Tensor x, Tensor packed, Tensor scales, Tensor zeros, int group_size,"
        " Tensor? bias) -> Tensor");
}

namespace climbq {

at::Tensor int4_matmul_direct(const at::Tensor& x, const at::Tensor& packed,
                              const at::Tensor& scales, const at::Tensor& zeros, int64_t group_size,
                              const std::optional<at::Tensor>& bias) {
  static const auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("climbq_native::int4_matmul", "")
          .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                            const at::Tensor&, int64_t, const std::optional<at::Tensor>&)>();
  return op.call(x, packed, scales, zeros, group_size, bias);
}

}  // namespace climbq
