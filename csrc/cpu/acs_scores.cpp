// ACS per-sample scores on the CPU (algorithms.md §2): the error vector score
// ||softmax(z) - onehot(y)||_2 and the disagreement score ||softmax(z_q) - softmax(z_fp)||_2.
//
// Checks, output allocation and the choice of instruction set; float32/float16/bfloat16 logits
// go to the vectorised kernels in isa/acs_scores_kernel.cpp (float32 per-lane sums, float64
// across blocks; see there). float64 logits stay on a scalar float64 loop here: one task per
// block of rows (at::parallel_for), each row read three times while it sits in cache (max, sum
// of exp, then the squared differences), so the B x K softmax is never written. A NaN logit
// makes its row's sum of exp NaN and so the row's score NaN; a row of -inf (or with a +inf) is
// NaN too, as torch.softmax gives.
#include "acs_scores_kernel.h"
#include "isa_choice.h"

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

namespace climbq::cpu {
namespace {

// Rows per task: enough elements that a task outweighs its scheduling.
constexpr int64_t kGrainElements = 1 << 15;

void check_logits(const char* op, const char* name, const at::Tensor& logits) {
  TORCH_CHECK_VALUE(logits.dim() == 2, op, ": ", name, " must have shape (B, K), got ",
                    logits.sizes());
  TORCH_CHECK_TYPE(at::isFloatingType(logits.scalar_type()), op, ": ", name,
                   " must be a floating tensor, got ", logits.scalar_type());
  TORCH_CHECK_VALUE(logits.device().is_cpu(), op, ": ", name, " must be a CPU tensor");
}

struct AcsScoreKernels {
  decltype(&DEFAULT::error_vector_score_kernel) error_vector_score;
  decltype(&DEFAULT::disagreement_score_kernel) disagreement_score;
};

const AcsScoreKernels& acs_score_kernels() {
  static const AcsScoreKernels chosen = choose_isa<AcsScoreKernels>(
      {DEFAULT::error_vector_score_kernel, DEFAULT::disagreement_score_kernel},
      {CLIMBQ_AVX2::error_vector_score_kernel, CLIMBQ_AVX2::disagreement_score_kernel},
      {CLIMBQ_AVX512::error_vector_score_kernel, CLIMBQ_AVX512::disagreement_score_kernel});
  return chosen;
}

int64_t grain_rows(int64_t k) {
  return std::max<int64_t>(1, kGrainElements / std::max<int64_t>(k, 1));
}

// The row's max (NaN logits skipped here; they turn the sum of exp NaN below) and 1 / sum exp.
template <typename scalar_t, typename acc_t>
inline void softmax_stats(const scalar_t* row, int64_t k, acc_t& max_out, acc_t& inv_sum_out) {
  acc_t max_v = -std::numeric_limits<acc_t>::infinity();
  for (int64_t j = 0; j < k; ++j) {
    const acc_t v = static_cast<acc_t>(row[j]);
    max_v = v > max_v ? v : max_v;
  }
  acc_t sum = 0;
  for (int64_t j = 0; j < k; ++j) sum += std::exp(static_cast<acc_t>(row[j]) - max_v);
  max_out = max_v;
  inv_sum_out = acc_t(1) / sum;
}

at::Tensor error_vector_score_cpu(const at::Tensor& logits, const at::Tensor& labels) {
  constexpr const char* kOp = "error_vector_score";
  check_logits(kOp, "logits", logits);
  TORCH_CHECK_TYPE(labels.scalar_type() == at::kLong, kOp, ": labels must be int64, got ",
                   labels.scalar_type());
  TORCH_CHECK_VALUE(labels.dim() == 1 && labels.size(0) == logits.size(0), kOp,
                    ": labels must have shape (", logits.size(0), ",), got ", labels.sizes());
  const int64_t batch = logits.size(0), k = logits.size(1);
  const at::Tensor z = logits.contiguous(), y = labels.contiguous();
  const int64_t* y_p = y.const_data_ptr<int64_t>();
  for (int64_t i = 0; i < batch; ++i) {
    TORCH_CHECK_VALUE(y_p[i] >= 0 && y_p[i] < k, kOp, ": labels must lie in [0, ", k, "), got ",
                      y_p[i], " at index ", i);
  }
  at::Tensor out = at::empty({batch}, logits.options());
  if (batch == 0) return out;
  if (z.scalar_type() != at::kDouble) {
    acs_score_kernels().error_vector_score(
        {z.scalar_type(), batch, k, z.const_data_ptr(), nullptr, y_p, out.mutable_data_ptr()});
    return out;
  }
  {
    using scalar_t = double;
    using acc_t = double;
    const scalar_t* z_p = z.const_data_ptr<scalar_t>();
    scalar_t* out_p = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, batch, grain_rows(k), [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const scalar_t* row = z_p + i * k;
        acc_t max_v, inv_sum;
        softmax_stats(row, k, max_v, inv_sum);
        acc_t sq = 0;
        for (int64_t j = 0; j < k; ++j) {
          const acc_t d = std::exp(static_cast<acc_t>(row[j]) - max_v) * inv_sum -
                          (j == y_p[i] ? acc_t(1) : acc_t(0));
          sq += d * d;
        }
        out_p[i] = static_cast<scalar_t>(std::sqrt(sq));
      }
    });
  }
  return out;
}

at::Tensor disagreement_score_cpu(const at::Tensor& logits_q, const at::Tensor& logits_fp) {
  constexpr const char* kOp = "disagreement_score";
  check_logits(kOp, "logits_q", logits_q);
  check_logits(kOp, "logits_fp", logits_fp);
  TORCH_CHECK_VALUE(logits_q.sizes() == logits_fp.sizes(), kOp,
                    ": logits_fp must have logits_q's shape ", logits_q.sizes(), ", got ",
                    logits_fp.sizes());
  TORCH_CHECK_TYPE(logits_q.scalar_type() == logits_fp.scalar_type(), kOp,
                   ": logits_fp must have logits_q's dtype ", logits_q.scalar_type(), ", got ",
                   logits_fp.scalar_type());
  const int64_t batch = logits_q.size(0), k = logits_q.size(1);
  const at::Tensor zq = logits_q.contiguous(), zf = logits_fp.contiguous();
  at::Tensor out = at::empty({batch}, logits_q.options());
  if (batch == 0) return out;
  if (zq.scalar_type() != at::kDouble) {
    acs_score_kernels().disagreement_score({zq.scalar_type(), batch, k, zq.const_data_ptr(),
                                            zf.const_data_ptr(), nullptr, out.mutable_data_ptr()});
    return out;
  }
  {
    using scalar_t = double;
    using acc_t = double;
    const scalar_t* q_p = zq.const_data_ptr<scalar_t>();
    const scalar_t* f_p = zf.const_data_ptr<scalar_t>();
    scalar_t* out_p = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, batch, grain_rows(2 * k), [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const scalar_t* q_row = q_p + i * k;
        const scalar_t* f_row = f_p + i * k;
        acc_t max_q, inv_q, max_f, inv_f;
        softmax_stats(q_row, k, max_q, inv_q);
        softmax_stats(f_row, k, max_f, inv_f);
        acc_t sq = 0;
        for (int64_t j = 0; j < k; ++j) {
          const acc_t d = std::exp(static_cast<acc_t>(q_row[j]) - max_q) * inv_q -
                          std::exp(static_cast<acc_t>(f_row[j]) - max_f) * inv_f;
          sq += d * d;
        }
        out_p[i] = static_cast<scalar_t>(std::sqrt(sq));
      }
    });
  }
  return out;
}

}  // namespace
}  // namespace climbq::cpu

TORCH_LIBRARY_IMPL(climbq_native, CPU, m) {
  m.impl("error_vector_score", &climbq::cpu::error_vector_score_cpu);
  m.impl("disagreement_score", &climbq::cpu::disagreement_score_cpu);
}
