"""bench/int4/int4_triton_sass.py compiles the Triton INT4 kernels for sm_90 without a GPU and finds
their K loop, which holds what each kernel was shaped for: in the GEMV at g = 128, one scale and
zero per row per step (not per byte) and no cross-thread reduction; in the GEMM, Hopper tensor-core
instructions fed the dequantized tile from registers (no shared-memory stores in the loop), and a
large-M tile that keeps its accumulators in registers."""

import json

from .conftest import run_with_compiler

SCRIPT = """
import json, sys
sys.path.insert(0, "bench")
from int4 import int4_triton_sass as sass
print(json.dumps(sass.count(*sass.PLAN[int(sys.argv[1])])))
"""


def _count(plan_index: int) -> dict:
    """bench/int4/int4_triton_sass.py's row for PLAN[plan_index], compiled in a process without
    TRITON_INTERPRET (the compiler, not the interpreter)."""
    done = run_with_compiler("-c", SCRIPT, str(plan_index))
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_gemv_k_loop_loads_group_tables_per_row_and_never_shuffles():
    row = _count(0)
    assert row["kernel"] == "gemv" and row["GROUP_SIZE"] == 128
    # 32 weights per thread per step: per-byte tables would be 2 loads each (the old loop had 36,
    # and Triton 3.6 compiled the one-row GEMV to 35 while its sums had a unit leading axis).
    assert 0 < row["global_loads_per_step"] <= 8
    assert row["shuffles"] == 0
    # One x row: the weights are multiplied where they were dequantized, not moved through shared memory.
    assert row["BLOCK_M"] == 1 and row["shared_stores"] == 0
    assert 100 < row["instructions_per_step"] < 661


def test_gemm_k_loop_feeds_tensor_cores_from_registers():
    row = _count(3)
    assert row["kernel"] == "gemm" and row["BLOCK_M"] == 64
    assert row["tensor_core_ops"] > 0
    # The dequantized tile is the MMA's left operand, read from registers: nothing is stored to
    # shared memory in the loop (as the right operand it was stored there every step).
    assert row["shared_stores"] == 0
    # 64 weights per thread: one FMA each to dequantize, not the exact form's three operations.
    assert row["instructions_per_step"] < 600


def test_large_m_gemm_tile_carries_more_mma_work_per_instruction_without_spills():
    """The tuner's 256x128 tiles (BLOCK_K 64, 8 warps) for M >= 256: no register spills, and more
    tensor-core work per issued instruction than the 128x128x128 tile."""
    wide, square = _count(5), _count(4)
    assert (wide["BLOCK_M"], wide["BLOCK_N"], wide["BLOCK_K"]) == (256, 128, 64)
    assert (square["BLOCK_M"], square["BLOCK_N"], square["BLOCK_K"]) == (128, 128, 128)
    assert wide["local_memory_ops"] == 0
    assert wide["macs_per_warp_instruction"] > 1.3 * square["macs_per_warp_instruction"]
