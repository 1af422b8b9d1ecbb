// Picks the widest kernel variant built into the extension that ATen allows on this CPU, as
// csrc/cpu/climbq_act.cpp does for its kernels: ATen decides once per process from the CPU and
// ATEN_CPU_CAPABILITY (avx512, avx2, default), so torch's kernels and ours follow one setting.
#pragma once

#include <ATen/Version.h>

#include <string>

namespace climbq::cpu {

// One variant per ISA; returns the chosen one and its name.
template <typename Kernels>
const Kernels& choose_isa(const Kernels& default_isa, const Kernels& avx2, const Kernels& avx512) {
  const std::string aten_isa = at::get_cpu_capability();
#ifdef CLIMBQ_CPU_HAVE_AVX512
  if (aten_isa == "AVX512") return avx512;
#endif
#ifdef CLIMBQ_CPU_HAVE_AVX2
  if (aten_isa == "AVX512" || aten_isa == "AVX2") return avx2;
#endif
  (void)avx2;
  (void)avx512;
  return default_isa;
}

}  // namespace climbq::cpu
