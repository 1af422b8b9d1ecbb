// The QAT training ops: each quantizer's forward and its backward as one autograd op
// (algorithms.md §1a, §1b, §1e), for the quantizer modules' eager training path
// (climbq_kernels/ops/train.py).
//
// A training step calls a quantizer once forward and once backward. Through these ops each call
// is one dispatcher call into C++, and the backward runs from the autograd engine with no Python
// in between: the host cost of a quantizer comes down to what PyTorch's own fake quant pays. Each
// op's kernel (CompositeExplicitAutograd, so CPU and CUDA alike) lays x out for the fused kernels
// and calls them through the dispatcher; its Autograd kernel is a torch::autograd::Function whose
// backward calls the matching *_backward op. Nothing here reads a tensor's value on the host.
//
// Gradients: x always; the LSQ step (LSQ's scaled gradient, algorithms.md §1e). The per-sample
// ClimbQ tables sigma and mu are batch statistics: they take no gradient here (an input that
// requires one is refused; climbq_kernels.ops.climbq_act_fused differentiates them).
#include "train.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <limits>
#include <numeric>
#include <optional>
#include <tuple>
#include <vector>

namespace climbq {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
using OptTensor = std::optional<at::Tensor>;

// The LSQ step as used: max(|s|, kMinStep), so that an optimiser step through zero leaves a
// valid grid (climbq_kernels/nn/quantizers.py, `_positive_step`).
constexpr double kMinStep = 1e-8;

template <typename Signature>
c10::TypedOperatorHandle<Signature> op_handle(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

const auto& act_fused_forward() {
  static const auto op = op_handle<at::Tensor(
      const at::Tensor&, const at::Tensor&, const at::Tensor&, const OptTensor&, const OptTensor&,
      const OptTensor&, int64_t, double, bool, bool)>("climbq_native::climbq_act_fused_forward");
  return op;
}

const auto& act_fused_backward() {
  static const auto op = op_handle<at::Tensor(
      const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const OptTensor&,
      const OptTensor&, const OptTensor&, int64_t, double, bool, bool, bool)>(
      "climbq_native::climbq_act_fused_backward");
  return op;
}

// The per-sample kernels read x as B rows in memory order, so any layout whose batch dim is
// outermost and dense needs no copy: contiguous, or channels-last (passed as its (B, ..., C)
// permuted view, which is contiguous). Anything else is copied.
struct KernelView {
  at::Tensor tensor;
  bool channels_last;
};

KernelView kernel_view(const at::Tensor& x) {
  if (x.is_contiguous()) return {x, false};
  if (x.dim() >= 3) {
    at::Tensor moved = x.movedim(1, -1);
    if (moved.is_contiguous()) return {moved, true};
  }
  return {x.contiguous(), false};
}

at::Tensor like_kernel_view(const at::Tensor& t, const KernelView& view) {
  return view.channels_last ? t.movedim(1, -1).contiguous() : t.contiguous();
}

at::Tensor from_kernel_view(const at::Tensor& t, const KernelView& view) {
  return view.channels_last ? t.movedim(-1, 1) : t;
}

at::Tensor act_train(const at::Tensor& x, const at::Tensor& sigma, const at::Tensor& mu,
                     int64_t bits, double act_range) {
  const KernelView view = kernel_view(x);
  return from_kernel_view(
      act_fused_forward().call(view.tensor, sigma, mu, std::nullopt, std::nullopt, std::nullopt,
                               bits, act_range, false, view.channels_last),
      view);
}

at::Tensor act_train_backward(const at::Tensor& grad_out, const at::Tensor& x,
                              const at::Tensor& sigma, const at::Tensor& mu, int64_t bits,
                              double act_range) {
  const KernelView view = kernel_view(x);
  return from_kernel_view(
      act_fused_backward().call(like_kernel_view(grad_out, view), view.tensor, sigma, mu,
                                std::nullopt, std::nullopt, std::nullopt, bits, act_range, false,
                                view.channels_last, true),
      view);
}

const auto& weight_forward() {
  static const auto op = op_handle<at::Tensor(const at::Tensor&, int64_t)>(
      "climbq_native::climbq_weight_quant_forward");
  return op;
}

const auto& weight_backward() {
  static const auto op = op_handle<at::Tensor(const at::Tensor&, const at::Tensor&, int64_t)>(
      "climbq_native::climbq_weight_quant_backward");
  return op;
}

const auto& affine_forward() {
  static const auto op =
      op_handle<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t,
                           int64_t, std::optional<int64_t>)>(
          "climbq_native::fake_quant_affine_forward");
  return op;
}

const auto& affine_backward() {
  static const auto op = op_handle<std::tuple<at::Tensor, at::Tensor, at::Tensor>(
      const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t, int64_t,
      std::optional<int64_t>, bool, bool)>("climbq_native::fake_quant_affine_backward");
  return op;
}

at::Tensor positive_step(const at::Tensor& step) { return step.abs().clamp_min(kMinStep); }

at::Tensor lsq_train(const at::Tensor& x, const at::Tensor& step, const at::Tensor& zero_point,
                     int64_t quant_min, int64_t quant_max, std::optional<int64_t> axis) {
  return affine_forward().call(x, positive_step(step), zero_point, quant_min, quant_max, axis);
}

// (dx, dstep): dstep = the LSQ gradient to the step used, d max(|s|, 1e-8) / ds = sign(s) where
// |s| >= 1e-8 (else 0), in step's dtype and shape; zeros unless step_grad.
std::tuple<at::Tensor, at::Tensor> lsq_train_backward(const at::Tensor& grad_out,
                                                      const at::Tensor& x, const at::Tensor& step,
                                                      const at::Tensor& zero_point,
                                                      int64_t quant_min, int64_t quant_max,
                                                      std::optional<int64_t> axis, bool step_grad) {
  auto [dx, dscale, dzp] = affine_backward().call(grad_out, x, positive_step(step), zero_point,
                                                  quant_min, quant_max, axis, step_grad, false);
  if (!step_grad) return {dx, at::zeros_like(step)};
  at::Tensor dstep = dscale.reshape(step.sizes()).to(step.scalar_type()).mul_(step.sign());
  return {dx, dstep.masked_fill_(step.abs().lt(kMinStep), 0)};
}

// --- autograd ---------------------------------------------------------------------------------

// Each Function calls its op below autograd (the op's own kernel above) and its backward op.
const auto& act_train_op() {
  static const auto op =
      op_handle<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t,
                           double)>("climbq_native::climbq_act_train");
  return op;
}

const auto& act_train_backward_op() {
  static const auto op = op_handle<at::Tensor(
      const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t, double)>(
      "climbq_native::climbq_act_train_backward");
  return op;
}

class ActTrainFunction : public torch::autograd::Function<ActTrainFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& sigma,
                            const at::Tensor& mu, int64_t bits, double act_range) {
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->save_for_backward({x, sigma, mu});
    ctx->saved_data["bits"] = bits;
    ctx->saved_data["act_range"] = act_range;
    return act_train_op().call(x, sigma, mu, bits, act_range);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    at::AutoDispatchBelowADInplaceOrView guard;  // no autograd fallback on the way down
    const variable_list saved = ctx->get_saved_variables();
    at::Tensor dx = act_train_backward_op().call(grads[0], saved[0], saved[1], saved[2],
                                                 ctx->saved_data["bits"].toInt(),
                                                 ctx->saved_data["act_range"].toDouble());
    return {dx, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

at::Tensor act_train_autograd(const at::Tensor& x, const at::Tensor& sigma, const at::Tensor& mu,
                              int64_t bits, double act_range) {
  TORCH_CHECK_VALUE(!at::GradMode::is_enabled() || !(sigma.requires_grad() || mu.requires_grad()),
                    "climbq_act_train: sigma and mu are batch statistics and take no gradient "
                    "here; climbq_kernels.ops.climbq_act_fused differentiates them");
  return ActTrainFunction::apply(x, sigma, mu, bits, act_range);
}

// The ClimbQ weight times an optional learned per-output-channel scale (ClimbQWeightQuant's
// channel_scale, for a layer with no BatchNorm after it): out = s_c * Wq.
at::Tensor channel_view(const at::Tensor& scale, const at::Tensor& like) {
  std::vector<int64_t> shape(like.dim(), 1);
  shape[0] = -1;
  return scale.to(like.scalar_type()).reshape(shape);
}

at::Tensor weight_train(const at::Tensor& w, int64_t bits, const OptTensor& channel_scale) {
  at::Tensor wq = weight_forward().call(w, bits);
  return channel_scale.has_value() ? wq.mul(channel_view(*channel_scale, wq)) : wq;
}

// (dw, dscale) of out = s_c * Wq: dWq = grad * s_c, dscale_c = sum over channel c of grad * Wq.
std::tuple<at::Tensor, at::Tensor> weight_scaled_backward(const at::Tensor& grad_out,
                                                          const at::Tensor& w, int64_t bits,
                                                          const at::Tensor& channel_scale) {
  const at::Tensor wq = weight_forward().call(w, bits);
  at::Tensor dw = weight_backward().call(grad_out.mul(channel_view(channel_scale, wq)), w, bits);
  at::Tensor product = grad_out.mul(wq);
  std::vector<int64_t> inner(w.dim() - 1);
  std::iota(inner.begin(), inner.end(), 1);
  at::Tensor dscale = inner.empty() ? product : product.sum(inner);
  return {dw, dscale.to(channel_scale.scalar_type())};
}

const auto& weight_train_op() {
  static const auto op = op_handle<at::Tensor(const at::Tensor&, int64_t, const OptTensor&)>(
      "climbq_native::climbq_weight_train");
  return op;
}

const auto& weight_scaled_backward_op() {
  static const auto op = op_handle<std::tuple<at::Tensor, at::Tensor>(
      const at::Tensor&, const at::Tensor&, int64_t, const at::Tensor&)>(
      "climbq_native::climbq_weight_scaled_backward");
  return op;
}

class WeightTrainFunction : public torch::autograd::Function<WeightTrainFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& w, int64_t bits,
                            const OptTensor& channel_scale) {
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->save_for_backward({w, channel_scale.value_or(at::Tensor())});
    ctx->saved_data["bits"] = bits;
    return weight_train_op().call(w, bits, channel_scale);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    at::AutoDispatchBelowADInplaceOrView guard;  // no autograd fallback on the way down
    const variable_list saved = ctx->get_saved_variables();
    const int64_t bits = ctx->saved_data["bits"].toInt();
    if (!saved[1].defined()) return {weight_backward().call(grads[0], saved[0], bits), {}, {}};
    auto [dw, dscale] = weight_scaled_backward_op().call(grads[0], saved[0], bits, saved[1]);
    return {std::move(dw), {}, std::move(dscale)};
  }
};

at::Tensor weight_train_autograd(const at::Tensor& w, int64_t bits,
                                 const OptTensor& channel_scale) {
  return WeightTrainFunction::apply(w, bits, channel_scale);
}

const auto& lsq_train_op() {
  static const auto op =
      op_handle<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t,
                           int64_t, std::optional<int64_t>)>("climbq_native::lsq_train");
  return op;
}

const auto& lsq_train_backward_op() {
  static const auto op = op_handle<std::tuple<at::Tensor, at::Tensor>(
      const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t, int64_t,
      std::optional<int64_t>, bool)>("climbq_native::lsq_train_backward");
  return op;
}

class LsqTrainFunction : public torch::autograd::Function<LsqTrainFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& step,
                            const at::Tensor& zero_point, int64_t quant_min, int64_t quant_max,
                            std::optional<int64_t> axis) {
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->save_for_backward({x, step, zero_point});
    ctx->saved_data["quant_min"] = quant_min;
    ctx->saved_data["quant_max"] = quant_max;
    ctx->saved_data["axis"] = axis.has_value() ? c10::IValue(*axis) : c10::IValue();
    return lsq_train_op().call(x, step, zero_point, quant_min, quant_max, axis);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    at::AutoDispatchBelowADInplaceOrView guard;  // no autograd fallback on the way down
    const variable_list saved = ctx->get_saved_variables();
    const c10::IValue& axis = ctx->saved_data["axis"];
    auto [dx, dstep] = lsq_train_backward_op().call(
        grads[0], saved[0], saved[1], saved[2], ctx->saved_data["quant_min"].toInt(),
        ctx->saved_data["quant_max"].toInt(),
        axis.isNone() ? std::nullopt : std::optional<int64_t>(axis.toInt()),
        ctx->needs_input_grad(1));
    return {std::move(dx), ctx->needs_input_grad(1) ? std::move(dstep) : at::Tensor(),
            at::Tensor(),  at::Tensor(),
            at::Tensor(),  at::Tensor()};
  }
};

at::Tensor lsq_train_autograd(const at::Tensor& x, const at::Tensor& step,
                              const at::Tensor& zero_point, int64_t quant_min, int64_t quant_max,
                              std::optional<int64_t> axis) {
  return LsqTrainFunction::apply(x, step, zero_point, quant_min, quant_max, axis);
}

// --- affine fake quant with the range taken in the same op -------------------------------------
// AffineActQuant / AffineWeightQuant (nn/quantizers.py): observe the range (a running min/max of
// activations, updated in place; the absolute max of each weight channel), derive the scale and
// zero point, fake quantize. One op forward, returning (out, scale, zero_point); the backward is
// fake_quant_affine_backward on the saved scale and zero point (straight-through to x only). The
// CPU kernels (cpu/fake_quant.cpp) do it in one pass; this composite, which other devices run,
// uses torch ops for the range and qparams.

std::tuple<at::Tensor, at::Tensor, at::Tensor> affine_act_train(
    const at::Tensor& x, at::Tensor& min_val, at::Tensor& max_val, int64_t quant_max, bool ema,
    double averaging_constant, bool first, bool observe) {
  if (observe) {
    const at::Tensor lo = x.amin().to(at::kFloat), hi = x.amax().to(at::kFloat);
    if (first) {
      min_val.copy_(lo);
      max_val.copy_(hi);
    } else if (ema) {
      min_val.lerp_(lo, averaging_constant);
      max_val.lerp_(hi, averaging_constant);
    } else {
      at::minimum_out(min_val, min_val, lo);
      at::maximum_out(max_val, max_val, hi);
    }
  }
  const at::Tensor lo = min_val.clamp_max(0), hi = max_val.clamp_min(0);
  const at::Tensor scale =
      hi.sub(lo).div(quant_max).clamp_min(std::numeric_limits<float>::epsilon()).reshape({});
  const at::Tensor zero_point =
      lo.neg().div(scale).round().clamp(0, quant_max).to(at::kInt).reshape({});
  return {affine_forward().call(x, scale, zero_point, 0, quant_max, std::nullopt), scale,
          zero_point};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> affine_weight_train(const at::Tensor& w,
                                                                   int64_t quant_min,
                                                                   int64_t quant_max) {
  const at::Tensor scale = w.abs()
                               .reshape({w.size(0), -1})
                               .amax(1)
                               .to(at::kFloat)
                               .div(quant_max)
                               .clamp_min(std::numeric_limits<float>::epsilon());
  const at::Tensor zero_point = at::zeros({w.size(0)}, w.options().dtype(at::kInt));
  return {affine_forward().call(w, scale, zero_point, quant_min, quant_max, 0), scale, zero_point};
}

const auto& affine_act_train_op() {
  static const auto op = op_handle<std::tuple<at::Tensor, at::Tensor, at::Tensor>(
      const at::Tensor&, at::Tensor&, at::Tensor&, int64_t, bool, double, bool, bool)>(
      "climbq_native::affine_act_train");
  return op;
}

const auto& affine_weight_train_op() {
  static const auto op = op_handle<std::tuple<at::Tensor, at::Tensor, at::Tensor>(
      const at::Tensor&, int64_t, int64_t)>("climbq_native::affine_weight_train");
  return op;
}

// The backward shared by both: straight-through to x where the code lies in range.
class AffineTrainFunction : public torch::autograd::Function<AffineTrainFunction> {
 public:
  template <typename Call>
  static variable_list forward(AutogradContext* ctx, const at::Tensor& x, int64_t quant_min,
                               int64_t quant_max, std::optional<int64_t> axis, const Call& call) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [out, scale, zero_point] = call();
    ctx->save_for_backward({x, scale, zero_point});
    ctx->saved_data["quant_min"] = quant_min;
    ctx->saved_data["quant_max"] = quant_max;
    ctx->saved_data["axis"] = axis.has_value() ? c10::IValue(*axis) : c10::IValue();
    ctx->mark_non_differentiable({scale, zero_point});
    ctx->set_materialize_grads(false);  // no zeros for scale and zero_point's absent gradients
    return {out, scale, zero_point};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    if (!grads[0].defined())
      return {at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
    at::AutoDispatchBelowADInplaceOrView guard;
    const variable_list saved = ctx->get_saved_variables();
    const c10::IValue& axis = ctx->saved_data["axis"];
    at::Tensor dx = std::get<0>(affine_backward().call(
        grads[0], saved[0], saved[1], saved[2], ctx->saved_data["quant_min"].toInt(),
        ctx->saved_data["quant_max"].toInt(),
        axis.isNone() ? std::nullopt : std::optional<int64_t>(axis.toInt()), false, false));
    return {std::move(dx), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

std::tuple<at::Tensor, at::Tensor, at::Tensor> as_tuple(const variable_list& v) {
  return {v[0], v[1], v[2]};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> affine_act_train_autograd(
    const at::Tensor& x, at::Tensor& min_val, at::Tensor& max_val, int64_t quant_max, bool ema,
    double averaging_constant, bool first, bool observe) {
  auto result = as_tuple(AffineTrainFunction::apply(x, int64_t{0}, quant_max, std::nullopt, [&] {
    return affine_act_train_op().call(x, min_val, max_val, quant_max, ema, averaging_constant,
                                      first, observe);
  }));
  if (observe) {
    min_val.unsafeGetTensorImpl()->bump_version();
    max_val.unsafeGetTensorImpl()->bump_version();
  }
  return result;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> affine_weight_train_autograd(const at::Tensor& w,
                                                                            int64_t quant_min,
                                                                            int64_t quant_max) {
  return as_tuple(AffineTrainFunction::apply(w, quant_min, quant_max, int64_t{0}, [&] {
    return affine_weight_train_op().call(w, quant_min, quant_max);
  }));
}

}  // namespace

at::Tensor climbq_act_train_direct(const at::Tensor& x, const at::Tensor& sigma,
                                   const at::Tensor& mu, int64_t bits, double act_range) {
  return act_train_op().call(x, sigma, mu, bits, act_range);
}

at::Tensor climbq_weight_train_direct(const at::Tensor& w, int64_t bits,
                                      const std::optional<at::Tensor>& channel_scale) {
  return weight_train_op().call(w, bits, channel_scale);
}

at::Tensor lsq_train_direct(const at::Tensor& x, const at::Tensor& step,
                            const at::Tensor& zero_point, int64_t quant_min, int64_t quant_max,
                            std::optional<int64_t> axis) {
  return lsq_train_op().call(x, step, zero_point, quant_min, quant_max, axis);
}

at::Tensor affine_act_train_direct(const at::Tensor& x, const at::Tensor& min_val,
                                   const at::Tensor& max_val, int64_t quant_max, bool ema,
                                   double averaging_constant, bool first, bool observe) {
  at::Tensor min_ref = min_val, max_ref = max_val;  // handles on the same buffers, updated in place
  return std::get<0>(affine_act_train_op().call(x, min_ref, max_ref, quant_max, ema,
                                                averaging_constant, first, observe));
}

at::Tensor affine_weight_train_direct(const at::Tensor& w, int64_t quant_min, int64_t quant_max) {
  return std::get<0>(affine_weight_train_op().call(w, quant_min, quant_max));
}

}  // namespace climbq

TORCH_LIBRARY_FRAGMENT(climbq_native, m) {
  // algorithms.md §1a on x (B, ...) of any layout (channels-last read in place, the output
  // keeps it), sigma, mu (B,) float32 without gradient: the fused forward, differentiable to x.
  m.def("climbq_act_train(Tensor x, Tensor sigma, Tensor mu, int bits, float act_range) -> Tensor");
  m.def("climbq_act_train_backward(Tensor grad_out, Tensor x, Tensor sigma, Tensor mu, int bits,"
        " float act_range) -> Tensor");
  // algorithms.md §1b, times channel_scale[c] (C,) along dim 0 when given; differentiable to w
  // and channel_scale.
  m.def("climbq_weight_train(Tensor w, int bits, Tensor? channel_scale=None) -> Tensor");
  m.def("climbq_weight_scaled_backward(Tensor grad_out, Tensor w, int bits, Tensor channel_scale)"
        " -> (Tensor, Tensor)");
  // LSQ (algorithms.md §1e) with the step used as max(|step|, 1e-8): differentiable to x and to
  // step (LSQ's scaled gradient); zero_point is a fixed integer tensor in range.
  m.def("lsq_train(Tensor x, Tensor step, Tensor zero_point, int quant_min, int quant_max,"
        " int? axis) -> Tensor");
  m.def("lsq_train_backward(Tensor grad_out, Tensor x, Tensor step, Tensor zero_point,"
        " int quant_min, int quant_max, int? axis, bool step_grad) -> (Tensor, Tensor)");
  // Per-tensor affine fake quant on codes [0, quant_max] whose range is the running min/max
  // (float32 one-element buffers; when observe, updated from x in place: set when first, else
  // EMA by averaging_constant when ema, else running min/max). Returns (out, scale, zero_point).
  m.def("affine_act_train(Tensor x, Tensor(a!) min_val, Tensor(b!) max_val, int quant_max,"
        " bool ema, float averaging_constant, bool first, bool observe)"
        " -> (Tensor, Tensor, Tensor)");
  // Per-channel (dim 0) symmetric fake quant with scale_c = max|w_c| / quant_max, zero point 0.
  m.def("affine_weight_train(Tensor w, int quant_min, int quant_max) -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(climbq_native, CompositeExplicitAutograd, m) {
  m.impl("climbq_act_train", &climbq::act_train);
  m.impl("climbq_act_train_backward", &climbq::act_train_backward);
  m.impl("climbq_weight_train", &climbq::weight_train);
  m.impl("climbq_weight_scaled_backward", &climbq::weight_scaled_backward);
  m.impl("lsq_train", &climbq::lsq_train);
  m.impl("lsq_train_backward", &climbq::lsq_train_backward);
  m.impl("affine_act_train", &climbq::affine_act_train);
  m.impl("affine_weight_train", &climbq::affine_weight_train);
}

TORCH_LIBRARY_IMPL(climbq_native, Autograd, m) {
  m.impl("climbq_act_train", &climbq::act_train_autograd);
  m.impl("climbq_weight_train", &climbq::weight_train_autograd);
  m.impl("lsq_train", &climbq::lsq_train_autograd);
  m.impl("affine_act_train", &climbq::affine_act_train_autograd);
  m.impl("affine_weight_train", &climbq::affine_weight_train_autograd);
}
