// ACS score kernels (algorithms.md §2) for float32/float16/bfloat16 logits, vectorised with
// at::vec::Vectorized<float> and compiled once per instruction set like climbq_act_kernel.cpp.
//
// Each row takes three passes while it sits in cache: the max, exp(z - max) (Sleef's float exp,
// about 1 ulp) written to a per-task float buffer and summed, then the squared differences of
// the probabilities from that buffer, so exp runs once per logit and the B x K softmax is never
// written to memory. Both sums are kept per lane in float32 over a block of kBlockVectors vectors,
// and the blocks' lane sums are added in float64 in a fixed order: a per-lane float sum over at
// most kBlockVectors terms loses far less than torch's float32 softmax, which the error rule
// compares with, and the float64 blocks keep K = 32000 rows as accurate as short ones. The
// partial vector at the end of a row goes through the same code with its unused lanes masked,
// so the result of a row does not depend on the thread count. A NaN logit makes its row's sum
// of exp NaN and so the row's score NaN; a row of -inf (or with a +inf) gets z - max = NaN and
// a NaN score too, as torch.softmax gives.
#include "../acs_scores_kernel.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "../vec_io.h"

namespace climbq::cpu::CPU_CAPABILITY {
namespace {

using vec_io::kLanes;
using vec_io::load_floats;
using vec_io::sum_lanes;
using vec_io::Vec;

// Rows per task: enough elements that a task outweighs its scheduling.
constexpr int64_t kGrainElements = 1 << 15;
// Vectors summed per lane in float32 before the lanes go into the float64 total.
constexpr int64_t kBlockVectors = 64;

int64_t grain_rows(int64_t k) {
  return std::max<int64_t>(1, kGrainElements / std::max<int64_t>(k, 1));
}

// Sums vectors per lane in float32 and each block of kBlockVectors of them in float64.
class BlockSum {
 public:
  void add(const Vec& v) {
    acc_ = acc_ + v;
    if (++count_ == kBlockVectors) flush();
  }
  void add_square(const Vec& v) {
    acc_ = at::vec::fmadd(v, v, acc_);
    if (++count_ == kBlockVectors) flush();
  }
  double total() {
    flush();
    return total_;
  }

 private:
  void flush() {
    total_ += sum_lanes(acc_);
    acc_ = Vec(0.0f);
    count_ = 0;
  }
  Vec acc_{0.0f};
  int64_t count_ = 0;
  double total_ = 0.0;
};

// The row's max; a NaN lane is skipped here (its exp turns the sum NaN below).
template <typename T>
float row_max(const T* row, int64_t k) {
  const Vec lowest(-std::numeric_limits<float>::infinity());
  Vec m = lowest;
  int64_t j = 0;
  for (; j + kLanes <= k; j += kLanes) m = at::vec::maximum(m, load_floats(row + j, kLanes));
  if (j < k) m = at::vec::maximum(m, Vec::set(lowest, load_floats(row + j, k - j), k - j));
  __at_align__ float lanes[kLanes];
  m.store(lanes);
  float max_v = lanes[0];
  for (int64_t l = 1; l < kLanes; ++l) max_v = lanes[l] > max_v ? lanes[l] : max_v;
  return max_v;
}

// Writes e[j] = exp(row[j] - max) for j < k and returns 1 / sum_j e[j] (float64 sum).
template <typename T>
float exp_row(const T* row, int64_t k, float* e) {
  const Vec max_v(row_max(row, k)), zero(0.0f);
  BlockSum sum;
  int64_t j = 0;
  for (; j + kLanes <= k; j += kLanes) {
    const Vec x = (load_floats(row + j, kLanes) - max_v).exp();
    x.store(e + j);
    sum.add(x);
  }
  if (j < k) {
    const Vec x = Vec::set(zero, (load_floats(row + j, k - j) - max_v).exp(), k - j);
    x.store(e + j, k - j);
    sum.add(x);
  }
  return static_cast<float>(1.0 / sum.total());
}

template <typename T>
void evs_typed(const AcsScoreProblem& p) {
  const T* z = static_cast<const T*>(p.logits);
  T* out = static_cast<T*>(p.out);
  const int64_t k = p.k;
  at::parallel_for(0, p.batch, grain_rows(k), [&](int64_t begin, int64_t end) {
    std::vector<float> e(k);
    __at_align__ float lanes[kLanes];
    for (int64_t i = begin; i < end; ++i) {
      const Vec inv_sum(exp_row(z + i * k, k, e.data()));
      const int64_t label = p.labels[i];
      BlockSum sq;
      for (int64_t j = 0; j < k; j += kLanes) {
        const int64_t n = std::min(kLanes, k - j);  // lanes past n load as 0 and add 0
        Vec d = Vec::loadu(e.data() + j, n) * inv_sum;
        if (label >= j && label < j + kLanes) {  // p - onehot per element, as the definition
          d.store(lanes);
          lanes[label - j] -= 1.0f;
          d = Vec::loadu(lanes);
        }
        sq.add_square(d);
      }
      out[i] = static_cast<T>(std::sqrt(sq.total()));
    }
  });
}

template <typename T>
void ds_typed(const AcsScoreProblem& p) {
  const T* zq = static_cast<const T*>(p.logits);
  const T* zf = static_cast<const T*>(p.logits_fp);
  T* out = static_cast<T*>(p.out);
  const int64_t k = p.k;
  at::parallel_for(0, p.batch, grain_rows(2 * k), [&](int64_t begin, int64_t end) {
    std::vector<float> eq(k), ef(k);
    for (int64_t i = begin; i < end; ++i) {
      const Vec inv_q(exp_row(zq + i * k, k, eq.data()));
      const Vec inv_f(exp_row(zf + i * k, k, ef.data()));
      BlockSum sq;
      for (int64_t j = 0; j < k; j += kLanes) {
        const int64_t n = std::min(kLanes, k - j);  // lanes past n load as 0 and add 0
        sq.add_square(Vec::loadu(eq.data() + j, n) * inv_q - Vec::loadu(ef.data() + j, n) * inv_f);
      }
      out[i] = static_cast<T>(std::sqrt(sq.total()));
    }
  });
}

}  // namespace

void error_vector_score_kernel(const AcsScoreProblem& p) {
  vec_io::dispatch_dtype(p.dtype, [&](auto tag) { evs_typed<decltype(tag)>(p); });
}

void disagreement_score_kernel(const AcsScoreProblem& p) {
  vec_io::dispatch_dtype(p.dtype, [&](auto tag) { ds_typed<decltype(tag)>(p); });
}

}  // namespace climbq::cpu::CPU_CAPABILITY
