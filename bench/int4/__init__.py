"""INT4 investigation scripts, each run from the repository root as `python3 bench/int4/<name>.py`:

- int4_cpu_interleaved.py: CPU INT4 matmul ratios timed round-robin (flushed, hot or rotated weights).
- int4_cuda_paths.py: every CUDA INT4 path, MMA kernel, split of K and GEMV block size forced (GPU).
- int4_cuda_block_sweep.py: the CUDA dequantize + GEMM path's block size (GPU).
- tune_int4_triton.py: tunes climbq_kernels/triton/int4_configs.json (GPU).
- int4_triton_sass.py, int4_cuda_sass.py: static SASS counts of the Triton and CUDA kernels' K
  loops, compiled for sm_90 without a GPU.

The timing scripts append their rows to the results ledger (bench/ledger.py); the SASS counts are
instruction counts, not measurements of time, and go to their own --out files only. Each script
puts bench/ and the repository root on sys.path, so that `cases`, `report`, `ledger` and the
in-place build of climbq_kernels import as they do for the pytest-benchmark files.
"""
