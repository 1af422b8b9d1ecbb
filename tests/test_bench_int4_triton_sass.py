"""bench/int4_triton_sass.py compiles the Triton INT4 kernels for sm_90 without a GPU and finds
their K loop; on the GEMV at g = 128 that loop holds what the kernel was shaped for: one scale
and zero per row per step (not per byte) and no cross-thread reduction."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = """
import json, sys
sys.path.insert(0, "bench")
import int4_triton_sass as sass
kernel, dtype, constexprs, warps, stages = sass.PLAN[0]
row = sass.count(kernel, dtype, constexprs, warps, stages)
body = sass.k_loop(sass.sass_of(kernel, dtype, constexprs, warps, stages))
print(json.dumps({**row, "shuffles": sum(op.startswith("SHFL") for op in body)}))
"""


def test_gemv_k_loop_loads_group_tables_per_row_and_never_shuffles():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # the compiler, not the interpreter
    done = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    row = json.loads(done.stdout.strip().splitlines()[-1])
    assert row["kernel"] == "gemv" and row["GROUP_SIZE"] == 128
    # 32 weights per thread per step: per-byte tables would be 2 loads each (the old loop had 36).
    assert 0 < row["global_loads_per_step"] <= 8
    assert row["shuffles"] == 0
    assert 100 < row["instructions_per_step"] < 661
