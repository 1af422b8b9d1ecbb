"""Build climbq-kernels and its native extension `climbq_kernels._C`.

torch is a prerequisite, not a dependency: the extension is compiled against the torch already
installed, so build without isolation:

    pip install --no-build-isolation --no-deps -e .      # or
    python setup.py build_ext --inplace

Environment:
    CLIMBQ_BUILD_CUDA      auto (default): CUDA kernels when torch has CUDA and a toolkit is
                           found; 1: require them (fail clearly otherwise); 0: CPU only.
    CUDA_HOME, CUDA_PATH   the CUDA toolkit; otherwise found from `nvcc` on PATH, through
                           symlinks and wrapper scripts.
    TORCH_CUDA_ARCH_LIST   CUDA targets, e.g. "8.0;9.0a" or "8.6+PTX"; default sm_80 and sm_90a.
    MAX_JOBS               parallel compile jobs (ninja).

The CPU kernels in csrc/cpu/isa/ are compiled once per instruction set (DEFAULT, and on x86-64
also AVX2 and AVX512) and chosen at run time from what ATen reports for the CPU, so one build
runs on any x86-64 machine and uses AVX-512 where there is one.
"""

import glob
import os
import platform
import re
import shutil
import site
import subprocess
import sys

from setuptools import find_packages, setup

try:
    import torch
    from torch.utils import cpp_extension
except ImportError as exc:  # pragma: no cover - depends on the environment
    sys.exit(
        f"climbq-kernels is built against an installed torch, and importing it failed ({exc}).\n"
        "Install torch first, then: pip install --no-build-isolation --no-deps -e ."
    )

ROOT = os.path.dirname(os.path.abspath(__file__))
DEFAULT_CUDA_GENCODE = [
    "-gencode", "arch=compute_80,code=sm_80",
    "-gencode", "arch=compute_90a,code=sm_90a",
]
# Compiler flags per CPU_CAPABILITY, as ATen compiles its own kernels; ATen's run-time check for
# each level (AVX2: avx2 + fma; AVX512: avx512f/bw/vl/dq + fma) covers what these enable.
CPU_ISA_FLAGS = {
    "DEFAULT": [],
    "AVX2": ["-mavx2", "-mfma", "-mf16c"],
    "AVX512": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mfma", "-mf16c"],
}
# -Wall for our code, minus two that torch's and GCC's own headers trip (GCC 12 warns about
# its AVX-512 intrinsics; torch's vec headers use CUDA-style #pragma unroll).
WARNING_FLAGS = ["-Wall", "-Wno-unknown-pragmas", "-Wno-maybe-uninitialized"]


def sources(pattern: str) -> list[str]:
    """Sorted source paths matching `pattern`, relative to the project root."""
    return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern)))


def c_string(value: str) -> str:
    """`value` as a C string literal, for -DNAME="value" macros."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def cuda_build_setting() -> str:
    """CLIMBQ_BUILD_CUDA, normalised to "auto", "1" or "0"."""
    setting = os.environ.get("CLIMBQ_BUILD_CUDA", "auto").strip().lower() or "auto"
    aliases = {"true": "1", "on": "1", "yes": "1", "false": "0", "off": "0", "no": "0"}
    setting = aliases.get(setting, setting)
    if setting not in ("auto", "1", "0"):
        sys.exit(f"error: CLIMBQ_BUILD_CUDA must be auto, 1 or 0, got {setting!r}")
    return setting


def is_cuda_toolkit(home: str | None) -> bool:
    """True when `home` holds a CUDA toolkit (bin/nvcc and include/cuda_runtime_api.h)."""
    return bool(home) and os.path.isfile(os.path.join(home, "bin", "nvcc")) and os.path.isfile(
        os.path.join(home, "include", "cuda_runtime_api.h")
    )


def toolkit_of_nvcc_on_path() -> str | None:
    """The toolkit that `nvcc` on PATH really runs, seen through symlinks and wrapper scripts.

    `nvcc --dryrun` prints the driver's own location (`#$ TOP=<toolkit>/bin/..`), which is
    right even when PATH holds a shell script such as `exec /usr/local/cuda-13.0/bin/nvcc "$@"`.
    """
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        return None
    real = os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))
    if is_cuda_toolkit(real):
        return real
    try:
        probe = subprocess.run(
            [nvcc, "--dryrun", "-E", "-x", "cu", os.devnull],
            capture_output=True, text=True, timeout=60, check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"^#\$ TOP=(.+)$", probe.stdout + probe.stderr, re.MULTILINE)
    return os.path.normpath(match.group(1).strip()) if match else None


def find_cuda_home() -> tuple[str | None, str]:
    """(toolkit root or None, how it was found or why none was).

    Order: CUDA_HOME / CUDA_PATH (taken as given: a wrong explicit path is reported, not
    replaced), torch's own guess, the toolkit behind `nvcc` on PATH, /usr/local/cuda.
    """
    for var in ("CUDA_HOME", "CUDA_PATH"):
        explicit = os.environ.get(var)
        if explicit:
            if is_cuda_toolkit(explicit):
                return explicit, f"${var}"
            return None, f"${var}={explicit} has no bin/nvcc and include/cuda_runtime_api.h"
    candidates = [
        ("torch.utils.cpp_extension.CUDA_HOME", cpp_extension.CUDA_HOME),
        ("nvcc on PATH", toolkit_of_nvcc_on_path()),
        ("/usr/local/cuda", "/usr/local/cuda"),
    ]
    for how, home in candidates:
        if is_cuda_toolkit(home):
            return os.path.realpath(home), how
    return None, "no CUDA_HOME or CUDA_PATH set, no nvcc on PATH and no /usr/local/cuda"


def use_cuda_toolkit(home: str) -> None:
    """Point torch's extension builder (and child processes) at the toolkit `home`."""
    os.environ["CUDA_HOME"] = home
    cpp_extension.CUDA_HOME = home


def nvidia_wheel_include_dirs() -> list[str]:
    """Headers from NVIDIA's pip wheels next to torch (nvidia/cu13/include, nvidia/cudnn/...).

    torch's CUDA headers include cuBLAS/cuSPARSE/cuSOLVER headers that a bare toolkit may lack;
    these go after the toolkit's own include folder so the toolkit wins where both have a file.
    """
    roots = [os.path.dirname(os.path.dirname(torch.__file__)), *site.getsitepackages()]
    found = []
    for root in dict.fromkeys(roots):
        found += sorted(glob.glob(os.path.join(root, "nvidia", "*", "include")))
    return [d for d in dict.fromkeys(found) if os.path.isdir(d)]


def gencode_from_arch_list(arch_list: str) -> list[str]:
    """TORCH_CUDA_ARCH_LIST ("8.0;9.0a", "8.6+PTX", "10.0f") as nvcc -gencode flags."""
    flags = []
    for entry in re.split(r"[;,\s]+", arch_list.strip()):
        if not entry:
            continue
        match = re.fullmatch(r"(\d+)\.(\d+)([af]?)(\+PTX)?", entry, re.IGNORECASE)
        if not match:
            sys.exit(
                f"error: TORCH_CUDA_ARCH_LIST entry {entry!r} not understood; use compute "
                "capabilities such as 8.0, 9.0a or 8.6+PTX"
            )
        arch = match.group(1) + match.group(2) + match.group(3).lower()
        flags += ["-gencode", f"arch=compute_{arch},code=sm_{arch}"]
        if match.group(4):
            flags += ["-gencode", f"arch=compute_{arch},code=compute_{arch}"]
    if not flags:
        sys.exit("error: TORCH_CUDA_ARCH_LIST is set but names no architecture")
    return flags


def targets_of(gencode: list[str]) -> str:
    """"sm_80,sm_90a" from -gencode flags (compute_XX for embedded PTX)."""
    return ",".join(re.findall(r"code=(\w+)", " ".join(gencode)))


def decide_cuda() -> tuple[str | None, str]:
    """(toolkit to build the CUDA kernels with, or None for CPU only; the reason, for the log)."""
    setting = cuda_build_setting()
    if setting == "0":
        return None, "CLIMBQ_BUILD_CUDA=0"
    if not torch.version.cuda:
        if setting == "1":
            sys.exit(
                f"error: CLIMBQ_BUILD_CUDA=1 but torch {torch.__version__} is a CPU-only build; "
                "install a CUDA build of torch or set CLIMBQ_BUILD_CUDA=0"
            )
        return None, f"torch {torch.__version__} has no CUDA"
    home, how = find_cuda_home()
    if home is None:
        if setting == "1":
            sys.exit(
                f"error: CLIMBQ_BUILD_CUDA=1 but no CUDA toolkit was found: {how}. Set CUDA_HOME "
                "to the toolkit root (the folder holding bin/nvcc and include/cuda_runtime_api.h) "
                "or build the CPU kernels only with CLIMBQ_BUILD_CUDA=0."
            )
        return None, f"no CUDA toolkit found ({how})"
    return home, f"toolkit {home} (from {how})"


def cpu_isas() -> list[str]:
    """The CPU_CAPABILITY variants to compile: all three on x86-64, DEFAULT elsewhere."""
    if platform.machine().lower() in ("x86_64", "amd64") and sys.platform != "win32":
        return ["DEFAULT", "AVX2", "AVX512"]
    return ["DEFAULT"]


def openmp_flags() -> list[str]:
    """-fopenmp when ATen parallelises with OpenMP: at::parallel_for is inline OpenMP code."""
    if "OpenMP" in torch.__config__.parallel_info() and sys.platform.startswith("linux"):
        return ["-fopenmp"]
    return []


class BuildExtensionPerIsa(cpp_extension.BuildExtension):
    """BuildExtension that also compiles each `ext.isa_sources` file once per CPU_CAPABILITY.

    ninja compiles all objects of one call with one set of flags, so each instruction set gets
    its own compile call (and build folder) and its objects are linked in as extra objects.
    DEFAULT comes first so the linker keeps baseline copies of inline functions shared by the
    variants.
    """

    def build_extension(self, ext):
        isa_objects = []
        for isa in getattr(ext, "isa_names", []):
            cxx_flags = list(ext.extra_compile_args["cxx"]) + CPU_ISA_FLAGS[isa]
            isa_macros = [("CPU_CAPABILITY", isa), (f"CPU_CAPABILITY_{isa}", None)]
            isa_objects += self.compiler.compile(
                ext.isa_sources,
                output_dir=os.path.join(self.build_temp, f"isa_{isa.lower()}"),
                macros=[*ext.define_macros, *isa_macros],
                include_dirs=ext.include_dirs,
                debug=self.debug,
                extra_postargs={"cxx": cxx_flags, "nvcc": []},
                depends=ext.depends,
            )
        ext.extra_objects = [*isa_objects, *getattr(ext, "base_extra_objects", [])]
        super().build_extension(ext)

    def copy_file(self, infile, outfile, *args, **kwargs):
        """Copy a built library in place as a new file: rewriting the old one would crash the
        processes that have it loaded (tests running while someone rebuilds)."""
        if os.path.isfile(outfile) and not self.dry_run:
            os.unlink(outfile)
        return super().copy_file(infile, outfile, *args, **kwargs)


def native_extension():
    """The `climbq_kernels._C` extension: CPU kernels always, CUDA kernels when decided so."""
    cuda_home, reason = decide_cuda()
    setting = cuda_build_setting()
    isas = cpu_isas()
    cxx = ["-O3", "-fno-math-errno", *openmp_flags(), *WARNING_FLAGS]
    cxx += [f"-DCLIMBQ_CPU_HAVE_{isa}" for isa in isas if isa != "DEFAULT"]
    cxx += [
        f"-DCLIMBQ_BUILD_CUDA_SETTING={c_string(setting)}",
        f"-DCLIMBQ_CPU_ISAS={c_string(','.join(isas))}",
        f"-DCLIMBQ_TORCH_VERSION={c_string(torch.__version__)}",
    ]
    kwargs = dict(
        name="climbq_kernels._C",
        sources=sources("csrc/*.cpp") + sources("csrc/cpu/*.cpp"),
        include_dirs=[os.path.join(ROOT, "csrc")],
        extra_link_args=openmp_flags(),
        depends=sources("csrc/*.h") + sources("csrc/cpu/*.h") + sources("csrc/cuda/*.cuh"),
    )
    if cuda_home is None:
        print(f"climbq: building CPU kernels only: {reason}")
        ext = cpp_extension.CppExtension(extra_compile_args={"cxx": cxx}, **kwargs)
    else:
        use_cuda_toolkit(cuda_home)
        arch_list = os.environ.get("TORCH_CUDA_ARCH_LIST", "").strip()
        gencode = gencode_from_arch_list(arch_list) if arch_list else DEFAULT_CUDA_GENCODE
        print(f"climbq: building CPU and CUDA kernels for {targets_of(gencode)} with {reason}")
        cxx += ["-DCLIMBQ_WITH_CUDA", f"-DCLIMBQ_CUDA_TARGETS={c_string(targets_of(gencode))}"]
        nvcc = ["-O3", "-DCLIMBQ_WITH_CUDA", "-lineinfo", *gencode]
        kwargs["sources"] += sources("csrc/cuda/*.cu")
        ext = cpp_extension.CUDAExtension(extra_compile_args={"cxx": cxx, "nvcc": nvcc}, **kwargs)
        ext.include_dirs += nvidia_wheel_include_dirs()
    ext.isa_names = isas
    ext.isa_sources = sources("csrc/cpu/isa/*.cpp")
    ext.base_extra_objects = list(ext.extra_objects)
    return ext


setup(
    name="climbq-kernels",
    version="0.1.0",
    description="ClimbQ class-imbalanced quantization and friends: PyTorch reference, Triton, "
    "CUDA and CPU kernels",
    python_requires=">=3.10",
    packages=find_packages(include=["climbq_kernels", "climbq_kernels.*"]),
    package_data={"climbq_kernels.triton": ["*.json"]},
    install_requires=["numpy", "scipy", "tqdm"],
    extras_require={"torch": ["torch>=2.4"], "test": ["pytest"]},
    entry_points={"console_scripts": ["climbq = climbq_kernels.cli:main"]},
    ext_modules=[native_extension()],
    cmdclass={"build_ext": BuildExtensionPerIsa.with_options(use_ninja=True)},
    zip_safe=False,
)
