#!/usr/bin/env bash
# One call on a lent GPU machine (torch 2.11, triton 3.6, nvcc 13.0, no network):
# build the extension from source, run the whole test suite on the GPU, run the GPU benchmarks,
# and leave everything under bench/results/<device>-<date>/ (and $OUT, when the device tool sets it).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
device=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -n1 | tr ' ' '-' | tr -cd 'A-Za-z0-9_.-')
results="bench/results/${device:-gpu}-$(date -u +%Y-%m-%d)"
mkdir -p "$results"
{
  nvidia-smi
  python3 -c 'import torch, triton; print("torch", torch.__version__, "triton", triton.__version__)'
} > "$results/environment.txt" 2>&1

echo "== build"
MAX_JOBS="${MAX_JOBS:-16}" TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0a}" \
  python3 setup.py build_ext --inplace > "$results/build.log" 2>&1
build=$?
tail -n 5 "$results/build.log"

echo "== tests"
python3 -m pytest tests -q -ra 2>&1 | tee "$results/tests.log" | tail -n 30
tests=${PIPESTATUS[0]}

echo "== Triton INT4 launch configs (tuned here, kept in the package and the results)"
python3 bench/tune_int4_triton.py --dtype bf16 --quick --raw "$results/int4_tuning_raw.json" 2>&1 \
  | tee "$results/int4_tuning.log" | tail -n 5
tune=${PIPESTATUS[0]}
cp climbq_kernels/triton/int4_configs.json "$results/" 2>/dev/null

echo "== benchmarks"
python3 bench/gpu_bench.py --out "$results" 2>&1 | tee "$results/bench.log" | tail -n 30
bench=${PIPESTATUS[0]}

[ -n "${OUT:-}" ] && cp "$results"/* "$OUT"/ 2>/dev/null
echo "build=$build tests=$tests tune=$tune bench=$bench; results in $results"
[ "$build" -eq 0 ] && [ "$tests" -eq 0 ] && [ "$tune" -eq 0 ] && [ "$bench" -eq 0 ]
