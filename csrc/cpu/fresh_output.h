// Output allocation for the CPU kernels that write large tensors.
//
// Outputs of 32 MiB or more (glibc's largest mmap threshold) get a fresh mapping from malloc on
// every call, and their first write faults them in 4 KiB page by page, which on a small VM
// costs as much as the kernel. Advising transparent huge pages for the 2 MiB-aligned interior
// first (what torch does for all memory under THP_MEM_ALLOC_ENABLE=1) cuts the faults ~500x;
// where THP is off the advice changes nothing.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>

#include <cstddef>
#include <cstdint>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace climbq::cpu {

inline at::Tensor empty_like_fresh(const at::Tensor& like) {
  at::Tensor out = at::empty(like.sizes(), like.options());
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr std::uintptr_t kHugePage = std::uintptr_t{2} << 20;
  constexpr size_t kFreshMappingBytes = size_t{32} << 20;
  if (out.nbytes() >= kFreshMappingBytes) {
    const auto begin = reinterpret_cast<std::uintptr_t>(out.mutable_data_ptr());
    const std::uintptr_t first = (begin + kHugePage - 1) & ~(kHugePage - 1);
    const std::uintptr_t last = (begin + out.nbytes()) & ~(kHugePage - 1);
    madvise(reinterpret_cast<void*>(first), last - first, MADV_HUGEPAGE);  // advice: may fail
  }
#endif
  return out;
}

}  // namespace climbq::cpu
