// Output allocation for the CPU kernels that write large fresh tensors.
//
// Outputs of 32 MiB or more (glibc's largest mmap threshold) get a fresh mapping from malloc on
// every call, and their first write faults them in 4 KiB page by page: 8192 faults for 32 MiB,
// as long as a whole elementwise kernel takes on a 2-core VM. Advising transparent huge pages
// for the 2 MiB-aligned interior first (what torch does for all memory under
// THP_MEM_ALLOC_ENABLE=1) leaves about 530 faults. Smaller outputs come back from malloc's heap
// already faulted in and are left alone; where THP is off the advice changes nothing.
// (The same reasoning as climbq_act.cpp's local helper, which can switch to this header.)
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>

#include <cstddef>
#include <cstdint>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace climbq::cpu {

inline at::Tensor empty_output_like(const at::Tensor& like) {
  at::Tensor out = at::empty(like.sizes(), like.options());
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr std::uintptr_t kHugePage = std::uintptr_t{2} << 20;
  constexpr size_t kFreshMappingBytes = size_t{32} << 20;
  if (out.nbytes() >= kFreshMappingBytes) {
    const auto begin = reinterpret_cast<std::uintptr_t>(out.mutable_data_ptr());
    const std::uintptr_t first = (begin + kHugePage - 1) & ~(kHugePage - 1);
    const std::uintptr_t last = (begin + out.nbytes()) & ~(kHugePage - 1);
    if (last > first) madvise(reinterpret_cast<void*>(first), last - first, MADV_HUGEPAGE);
  }
#endif
  return out;
}

}  // namespace climbq::cpu
