// Picks the widest kernel variant built into the extension that ATen allows on this CPU: ATen
// decides once per process from the CPU and ATEN_CPU_CAPABILITY (avx512, avx2, default), so
// torch's kernels and ours follow one setting.
//
// Callers name the per-ISA kernels through CLIMBQ_AVX2 / CLIMBQ_AVX512, which fall back to the
// DEFAULT namespace where that variant is not compiled in (setup.py builds all three on x86-64,
// DEFAULT alone elsewhere), so no caller refers to a kernel that does not exist.
#pragma once

#include <ATen/Version.h>

#include <string>

#ifdef CLIMBQ_CPU_HAVE_AVX2
#define CLIMBQ_AVX2 AVX2
#else
#define CLIMBQ_AVX2 DEFAULT
#endif
#ifdef CLIMBQ_CPU_HAVE_AVX512
#define CLIMBQ_AVX512 AVX512
#else
#define CLIMBQ_AVX512 DEFAULT
#endif

namespace climbq::cpu {

// The name of the variant choose_isa returns: "AVX512", "AVX2" or "DEFAULT".
inline const char* chosen_isa_name() {
  static const char* const name = [] {
    const std::string aten_isa = at::get_cpu_capability();
#ifdef CLIMBQ_CPU_HAVE_AVX512
    if (aten_isa == "AVX512") return "AVX512";
#endif
#ifdef CLIMBQ_CPU_HAVE_AVX2
    if (aten_isa == "AVX512" || aten_isa == "AVX2") return "AVX2";
#endif
    return "DEFAULT";
  }();
  return name;
}

// One variant per ISA (as named through CLIMBQ_AVX2 / CLIMBQ_AVX512); returns the chosen one.
template <typename Kernels>
const Kernels& choose_isa(const Kernels& default_isa, const Kernels& avx2, const Kernels& avx512) {
  const std::string name = chosen_isa_name();
  if (name == "AVX512") return avx512;
  if (name == "AVX2") return avx2;
  return default_isa;
}

}  // namespace climbq::cpu
