// The climbq_native operator library and the `climbq_kernels._C` Python module.
//
// Importing climbq_kernels._C (after torch) registers the schemas below; csrc/cpu and csrc/cuda
// register the kernels. The Python module reports how the extension was built and gives
// int4_matmul a direct entry for eager serving calls (int4.h).
#include "cpu/climbq_act_kernel.h"
#include "int4.h"
#include "train.h"

#include <torch/extension.h>
#include <torch/library.h>

#include <string>

// setup.py passes these; the defaults keep a hand-rolled build compiling.
#ifndef CLIMBQ_CUDA_TARGETS
#define CLIMBQ_CUDA_TARGETS ""
#endif
#ifndef CLIMBQ_BUILD_CUDA_SETTING
#define CLIMBQ_BUILD_CUDA_SETTING "unknown"
#endif
#ifndef CLIMBQ_CPU_ISAS
#define CLIMBQ_CPU_ISAS "DEFAULT"
#endif
#ifndef CLIMBQ_TORCH_VERSION
#define CLIMBQ_TORCH_VERSION "unknown"
#endif

#ifdef CLIMBQ_WITH_CUDA
namespace climbq::cuda {
int runtime_version_built();  // CUDART_VERSION seen by nvcc; defined in cuda/climbq_act.cu
}
#endif

TORCH_LIBRARY(climbq_native, m) {
  // algorithms.md §1a. x: (B, ...) float32/float16/bfloat16; sigma, mu: (B,) float32 per-sample
  // scale and location; bits in [1, 16]; act_range = A > 0. Returns
  // A * (2 rint(Phi((x - mu)/sigma) N)/N - 1) in x's dtype and shape (contiguous).
  m.def("climbq_act_quant_forward(Tensor x, Tensor sigma, Tensor mu, int bits, float act_range)"
        " -> Tensor");
  // dx = grad_out * 2 A phi((x - mu)/sigma) / sigma (straight-through on rint), x's dtype.
  m.def("climbq_act_quant_backward(Tensor grad_out, Tensor x, Tensor sigma, Tensor mu, int bits,"
        " float act_range) -> Tensor");
}

namespace {

bool built_with_cuda() {
#ifdef CLIMBQ_WITH_CUDA
  return true;
#else
  return false;
#endif
}

pybind11::dict build_info() {
  pybind11::dict info;
  info["with_cuda"] = built_with_cuda();
  info["cuda_archs"] = std::string(CLIMBQ_CUDA_TARGETS);
#ifdef CLIMBQ_WITH_CUDA
  info["cuda_runtime_version"] = climbq::cuda::runtime_version_built();
#else
  info["cuda_runtime_version"] = 0;
#endif
  info["build_cuda_setting"] = std::string(CLIMBQ_BUILD_CUDA_SETTING);
  info["cpu_isas"] = std::string(CLIMBQ_CPU_ISAS);
  info["cpu_isa"] = std::string(climbq::cpu::act_kernel_isa());
  info["torch_version"] = std::string(CLIMBQ_TORCH_VERSION);
  return info;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "climbq-kernels native operators (registered as torch.ops.climbq_native.*)";
  m.def("built_with_cuda", &built_with_cuda, "True when the CUDA kernels were compiled in.");
  m.def("cuda_archs", [] { return std::string(CLIMBQ_CUDA_TARGETS); },
        "Comma-separated CUDA targets compiled in (sm_XX: machine code, compute_XX: PTX); "
        "empty without CUDA.");
  m.def("int4_matmul", &climbq::int4_matmul_direct,
        "torch.ops.climbq_native.int4_matmul, called through the dispatcher from C++ (eager "
        "serving).");
  m.def("climbq_act_train", &climbq::climbq_act_train_direct,
        "torch.ops.climbq_native.climbq_act_train, called through the dispatcher from C++ "
        "(train.h).");
  m.def("climbq_weight_train", &climbq::climbq_weight_train_direct, pybind11::arg("w"),
        pybind11::arg("bits"), pybind11::arg("channel_scale") = pybind11::none(),
        "torch.ops.climbq_native.climbq_weight_train, called through the dispatcher from C++.");
  m.def("lsq_train", &climbq::lsq_train_direct,
        "torch.ops.climbq_native.lsq_train, called through the dispatcher from C++.");
  m.def(
      "affine_act_train", &climbq::affine_act_train_direct,
      "torch.ops.climbq_native.affine_act_train's output, called through the dispatcher from C++.");
  m.def("affine_weight_train", &climbq::affine_weight_train_direct,
        "torch.ops.climbq_native.affine_weight_train's output, called through the dispatcher from "
        "C++.");
  m.def("build_info", &build_info,
        "How this extension was built: with_cuda, cuda_archs, cuda_runtime_version "
        "(CUDART_VERSION, 0 without CUDA), build_cuda_setting (CLIMBQ_BUILD_CUDA), cpu_isas "
        "(variants compiled), cpu_isa (variant in use), torch_version (torch built against).");
}
