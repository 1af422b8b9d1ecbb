// Direct entries to the training ops of train.cpp for the Python module `climbq_kernels._C`:
// each calls its op through the dispatcher from C++ (autograd included), skipping the boxing of
// every argument that a call through torch.ops pays, once per quantizer per training step.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <optional>

namespace climbq {

at::Tensor climbq_act_train_direct(const at::Tensor& x, const at::Tensor& sigma,
                                   const at::Tensor& mu, int64_t bits, double act_range);
at::Tensor climbq_weight_train_direct(const at::Tensor& w, int64_t bits,
                                      const std::optional<at::Tensor>& channel_scale);
at::Tensor lsq_train_direct(const at::Tensor& x, const at::Tensor& step,
                            const at::Tensor& zero_point, int64_t quant_min, int64_t quant_max,
                            std::optional<int64_t> axis);
at::Tensor affine_act_train_direct(const at::Tensor& x, const at::Tensor& min_val,
                                   const at::Tensor& max_val, int64_t quant_max, bool ema,
                                   double averaging_constant, bool first, bool observe);
at::Tensor affine_weight_train_direct(const at::Tensor& w, int64_t quant_min, int64_t quant_max);

}  // namespace climbq
