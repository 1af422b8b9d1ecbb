"""Compile every registered Triton kernel to cubin, without a GPU: `python -m climbq_kernels.triton.aot`.

Prints one JSON object: {"<kernel>|<dtype>|sm_<cc>": "ok" or the compiler's error}. Must run
without TRITON_INTERPRET (under the interpreter `@triton.jit` yields functions the compiler
cannot take), which is why the tests call it in a subprocess.
"""

from __future__ import annotations

import json
import sys

from ..dispatch import triton_interpret
from .registry import AOT_TARGETS, TORCH_TO_TRITON, all_kernels, aot_compile


def compile_all() -> dict[str, str]:
    results = {}
    for name, entry in all_kernels().items():
        for dtype in entry.dtypes:
            for capability in AOT_TARGETS:
                key = f"{name}|{TORCH_TO_TRITON[dtype]}|sm_{capability}"
                try:
                    cubin = aot_compile(entry, dtype, capability)
                    results[key] = "ok" if cubin[:4] == b"\x7fELF" else "not an ELF cubin"
                except Exception as err:  # report every failure, not just the first
                    results[key] = f"{type(err).__name__}: {err}"
    return results


if __name__ == "__main__":
    if triton_interpret():
        sys.exit("unset TRITON_INTERPRET: the interpreter cannot compile kernels to cubin")
    results = compile_all()
    print(json.dumps(results, indent=1))
    sys.exit(0 if all(v == "ok" for v in results.values()) else 1)
