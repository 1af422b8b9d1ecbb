// INT4 packed-weight matmul (algorithms.md §6): the argument checks the CPU and CUDA ops share
// (csrc/cpu/int4_matmul.cpp, csrc/cuda/int4_matmul.cu). The Python layer checks first with
// friendlier messages; these keep a direct call of torch.ops.climbq_native from reading out of
// bounds.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cstdint>
#include <optional>

namespace climbq {

// The matmul's sizes: x viewed as (rows, in_features), W (out_features, in_features).
struct Int4Shape {
  int64_t rows;
  int64_t out_features;
  int64_t in_features;
};

inline Int4Shape check_int4_matmul_args(const at::Tensor& x, const at::Tensor& packed,
                                        const at::Tensor& scales, const at::Tensor& zeros,
                                        int64_t group_size, const std::optional<at::Tensor>& bias,
                                        c10::DeviceType device_type) {
  constexpr const char* kOp = "int4_matmul";
  const auto dtype = x.scalar_type();
  TORCH_CHECK_TYPE(dtype == at::kFloat || dtype == at::kHalf || dtype == at::kBFloat16, kOp,
                   ": x must be float32, float16 or bfloat16, got ", dtype);
  TORCH_CHECK_VALUE(x.dim() >= 1, kOp,
                    ": x must have shape (..., in_features), got a 0-dim tensor");
  TORCH_CHECK_TYPE(packed.scalar_type() == at::kByte, kOp, ": packed must be uint8, got ",
                   packed.scalar_type());
  TORCH_CHECK_VALUE(packed.dim() == 2, kOp,
                    ": packed must have shape (out_features, in_features / 2), got ",
                    packed.sizes());
  const int64_t out_features = packed.size(0), in_features = 2 * packed.size(1);
  TORCH_CHECK_VALUE(x.size(-1) == in_features, kOp,
                    ": x's last dimension must be in_features = ", in_features, ", got shape ",
                    x.sizes());
  TORCH_CHECK_VALUE(group_size > 0 && in_features % group_size == 0 &&
                        (group_size % 32 == 0 || group_size == in_features),
                    kOp, ": group_size must be a multiple of 32 dividing in_features ", in_features,
                    ", or in_features itself, got ", group_size);
  const int64_t groups = in_features / group_size;
  for (const auto& [name, table] : {std::pair{"scales", &scales}, std::pair{"zeros", &zeros}}) {
    TORCH_CHECK_TYPE(table->scalar_type() == at::kFloat, kOp, ": ", name, " must be float32, got ",
                     table->scalar_type());
    TORCH_CHECK_VALUE(
        table->dim() == 2 && table->size(0) == out_features && table->size(1) == groups, kOp, ": ",
        name, " must have shape (", out_features, ", ", groups, "), got ", table->sizes());
    TORCH_CHECK_VALUE(table->device() == x.device(), kOp, ": ", name, " must be on x's device ",
                      x.device(), ", got ", table->device());
  }
  TORCH_CHECK_VALUE(x.device().type() == device_type && packed.device() == x.device(), kOp,
                    ": x and packed must be on one ", c10::DeviceTypeName(device_type),
                    " device, got ", x.device(), " and ", packed.device());
  if (bias.has_value()) {
    TORCH_CHECK_TYPE(bias->scalar_type() == dtype, kOp, ": bias must have x's dtype ", dtype,
                     ", got ", bias->scalar_type());
    TORCH_CHECK_VALUE(bias->dim() == 1 && bias->size(0) == out_features, kOp,
                      ": bias must have shape (", out_features, ",), got ", bias->sizes());
    TORCH_CHECK_VALUE(bias->device() == x.device(), kOp, ": bias must be on x's device ",
                      x.device(), ", got ", bias->device());
  }
  return {in_features == 0 ? 0 : x.numel() / in_features, out_features, in_features};
}

}  // namespace climbq
