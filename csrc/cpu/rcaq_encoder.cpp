// RCAQ encoder step on the CPU (algorithms.md §5): every candidate index for every prototype of
// one sensor, the rest of the quantizer fixed. Points are cut into blocks whose size depends on N
// only; each block fills its own float64 (P, rate) table and the tables are added in block
// order, so the result is the same whatever the number of threads.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/isfinite.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <tuple>
#include <vector>

namespace climbq::cpu {
namespace {

// At least this many points per block, and at most this many blocks: the partial tables cost
// kMaxBlocks * P * rate doubles at most.
constexpr int64_t kMinBlockPoints = 4096;
constexpr int64_t kMaxBlocks = 64;

void check_index_tensor(const char* op, const char* name, const at::Tensor& t, int64_t length) {
  TORCH_CHECK_TYPE(t.scalar_type() == at::kLong, op, ": ", name, " must be int64, got ",
                   t.scalar_type());
  TORCH_CHECK_VALUE(t.dim() == 1 && t.size(0) == length, op, ": ", name, " must have shape (",
                    length, "), got ", t.sizes());
  TORCH_CHECK_VALUE(t.device().is_cpu(), op, ": ", name, " must be a CPU tensor");
}

void check_args(const at::Tensor& x, const at::Tensor& labels, const at::Tensor& codebook,
                const at::Tensor& codeword_labels, const at::Tensor& proto_index,
                const at::Tensor& base_index, const at::Tensor& lookup, int64_t stride,
                int64_t rate, double gamma) {
  constexpr const char* kOp = "rcaq_encoder_step";
  TORCH_CHECK_VALUE(x.device().is_cpu() && codebook.device().is_cpu(), kOp,
                    ": x and codebook must be CPU tensors");
  TORCH_CHECK_TYPE(x.scalar_type() == at::kFloat || x.scalar_type() == at::kHalf ||
                       x.scalar_type() == at::kBFloat16,
                   kOp, ": x must be float32, float16 or bfloat16, got ", x.scalar_type());
  TORCH_CHECK_TYPE(codebook.scalar_type() == x.scalar_type(), kOp,
                   ": codebook must have x's dtype ", x.scalar_type(), ", got ",
                   codebook.scalar_type());
  TORCH_CHECK_VALUE(x.dim() == 2, kOp, ": x must be (N, d), got ", x.sizes());
  TORCH_CHECK_VALUE(codebook.dim() == 2 && codebook.size(1) == x.size(1), kOp,
                    ": codebook must be (M, ", x.size(1), "), got ", codebook.sizes());
  TORCH_CHECK_VALUE(codebook.size(0) >= 1, kOp, ": codebook must hold at least one codeword");
  const int64_t n = x.size(0), m = codebook.size(0);
  check_index_tensor(kOp, "labels", labels, n);
  check_index_tensor(kOp, "codeword_labels", codeword_labels, m);
  check_index_tensor(kOp, "proto_index", proto_index, n);
  check_index_tensor(kOp, "base_index", base_index, n);
  TORCH_CHECK_VALUE(lookup.dim() == 1 && lookup.size(0) >= 1, kOp,
                    ": lookup must be (P,) with P >= 1, got ", lookup.sizes());
  check_index_tensor(kOp, "lookup", lookup, lookup.size(0));
  TORCH_CHECK_VALUE(rate >= 1, kOp, ": rate must be >= 1, got ", rate);
  TORCH_CHECK_VALUE(stride >= 1, kOp, ": stride must be >= 1, got ", stride);
  TORCH_CHECK_VALUE(gamma >= 0.0 && gamma <= 1.0, kOp, ": gamma must lie in [0, 1], got ", gamma);
  TORCH_CHECK_VALUE(at::isfinite(x).all().item<bool>(), kOp, ": x must be finite");
  TORCH_CHECK_VALUE(at::isfinite(codebook).all().item<bool>(), kOp, ": codebook must be finite");
}

std::tuple<at::Tensor, at::Tensor> rcaq_encoder_step_cpu(
    const at::Tensor& x, const at::Tensor& labels, const at::Tensor& codebook,
    const at::Tensor& codeword_labels, const at::Tensor& proto_index, const at::Tensor& base_index,
    const at::Tensor& lookup, int64_t stride, int64_t rate, double gamma) {
  constexpr const char* kOp = "rcaq_encoder_step";
  check_args(x, labels, codebook, codeword_labels, proto_index, base_index, lookup, stride, rate,
             gamma);
  const at::Tensor x_c = x.contiguous(), codebook_c = codebook.contiguous();
  const at::Tensor labels_c = labels.contiguous(), codeword_labels_c = codeword_labels.contiguous();
  const at::Tensor proto_c = proto_index.contiguous(), base_c = base_index.contiguous();
  const int64_t n = x.size(0), d = x.size(1), m = codebook.size(0), protos = lookup.size(0);
  const int64_t* proto_p = proto_c.const_data_ptr<int64_t>();
  const int64_t* base_p = base_c.const_data_ptr<int64_t>();
  const int64_t* label_p = labels_c.const_data_ptr<int64_t>();
  const int64_t* codeword_label_p = codeword_labels_c.const_data_ptr<int64_t>();

  // Serial pass: index checks (a CPU read is free) and which prototypes hold points.
  std::vector<uint8_t> occupied(protos, 0);
  for (int64_t i = 0; i < n; ++i) {
    TORCH_CHECK_VALUE(proto_p[i] >= 0 && proto_p[i] < protos, kOp, ": proto_index must lie in [0, ",
                      protos, "), got ", proto_p[i], " at index ", i);
    TORCH_CHECK_VALUE(base_p[i] >= 0 && base_p[i] + (rate - 1) * stride < m, kOp,
                      ": base_index + (rate - 1) * stride must lie in [0, ", m, "), got base ",
                      base_p[i], " at index ", i);
    occupied[proto_p[i]] = 1;
  }

  const double mse_weight = 1.0 - gamma;
  const int64_t table = protos * rate;
  const int64_t block = std::max(kMinBlockPoints, (n + kMaxBlocks - 1) / kMaxBlocks);
  const int64_t blocks = (n + block - 1) / block;
  std::vector<double> partial(blocks * table, 0.0);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), kOp, [&] {
    const scalar_t* x_p = x_c.const_data_ptr<scalar_t>();
    const scalar_t* c_p = codebook_c.const_data_ptr<scalar_t>();
    at::parallel_for(0, blocks, 1, [&](int64_t first, int64_t last) {
      std::vector<double> point(d);
      for (int64_t b = first; b < last; ++b) {
        double* costs = partial.data() + b * table;
        for (int64_t i = b * block; i < std::min(n, (b + 1) * block); ++i) {
          for (int64_t j = 0; j < d; ++j) point[j] = static_cast<double>(x_p[i * d + j]);
          double* row = costs + proto_p[i] * rate;
          for (int64_t q = 0; q < rate; ++q) {
            const int64_t code = base_p[i] + q * stride;
            const scalar_t* c = c_p + code * d;
            double squared = 0.0;
            for (int64_t j = 0; j < d; ++j) {
              const double diff = point[j] - static_cast<double>(c[j]);
              squared += diff * diff;
            }
            const double wrong = codeword_label_p[code] != label_p[i] ? 1.0 : 0.0;
            row[q] += mse_weight * squared + gamma * wrong;
          }
        }
      }
    });
  });

  at::Tensor costs = at::zeros({protos, rate}, x.options().dtype(at::kDouble));
  double* cost_p = costs.mutable_data_ptr<double>();
  for (int64_t b = 0; b < blocks; ++b) {
    const double* part = partial.data() + b * table;
    for (int64_t k = 0; k < table; ++k) cost_p[k] += part[k];
  }
  at::Tensor chosen = lookup.contiguous().clone();
  int64_t* chosen_p = chosen.mutable_data_ptr<int64_t>();
  for (int64_t p = 0; p < protos; ++p) {
    if (!occupied[p]) continue;  // no point to decide by: the table keeps its entry
    const double* row = cost_p + p * rate;
    int64_t best = 0;
    for (int64_t q = 1; q < rate; ++q) {
      if (row[q] < row[best]) best = q;  // strict: ties go to the lowest index
    }
    chosen_p[p] = best;
  }
  return {costs, chosen};
}

}  // namespace
}  // namespace climbq::cpu

TORCH_LIBRARY_IMPL(climbq_native, CPU, m) {
  m.impl("rcaq_encoder_step", &climbq::cpu::rcaq_encoder_step_cpu);
}
