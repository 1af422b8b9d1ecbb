#!/usr/bin/env bash
# One call on a lent GPU machine (torch 2.11, triton 3.6, nvcc 13.0, no network): build the
# extension from source, run the whole test suite on the GPU, tune the Triton INT4 configs, run
# the GPU benchmarks; logs and tables land in bench/results/<device>-<date>/ (and $OUT, when the
# device tool sets it).
#
#   bash bench/gpu_run.sh [build] [tests] [tune] [bench] [paths] [suite]     (no argument: the first four)
#
# `suite` runs `climbq bench` (bench/run_all.py: every kernel family, host_overhead and the QAT
# training step, one report; SUITE_ARGS adds its options, e.g. "--quick --only qat_step").
# `paths` times every CUDA INT4 path and MMA kernel forced at every batch size
# (bench/int4/int4_cuda_paths.py: where the path thresholds and kernel choice come from).
#
# Measurements go to the results ledger (bench/ledger.py): bench/results/ledger.jsonl, or, where
# the device tool sets $OUT, $OUT/ledger-rows.jsonl, to be appended to bench/results/ledger.jsonl
# once fetched. The tree copied to a device has no .git: run with CLIMBQ_COMMIT=<sha> set to the
# commit copied (`CLIMBQ_COMMIT=$(git rev-parse HEAD)` where the call is made) so the rows name it.
#
# Device calls are capped at 10 minutes, so the phases can run in separate calls. `build` also
# leaves a stripped copy of the extension in $OUT/prebuilt/; carried back as .gpu_prebuilt/
# it replaces the build in a later call (source changes since then need a fresh build).
# DEADLINE=570 keeps a call under the device tool's 600 s limit. BENCH_ONLY=text runs only the
# benchmark cases whose name contains it (e.g. int4).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # the package is built in place, not installed
phases=" ${*:-build tests tune bench} "
wants() { [[ "$phases" == *" $1 "* ]]; }
device=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -n1 | tr ' ' '-' | tr -cd 'A-Za-z0-9_.-')
results="bench/results/${device:-gpu}-$(date -u +%Y-%m-%d)"
mkdir -p "$results"
started=$(mktemp)  # what this call writes is newer: only that goes to $OUT (the folder may hold earlier runs' files)
{
  nvidia-smi
  python3 -c 'import torch, triton; print("torch", torch.__version__, "triton", triton.__version__)'
} > "$results/environment.txt" 2>&1
status=""
if [ -n "${OUT:-}" ] && [ -z "${CLIMBQ_LEDGER:-}" ]; then export CLIMBQ_LEDGER="$OUT/ledger-rows.jsonl"; fi

# Peers that are no dependency of ours travel as wheels: here, `python3 -m pip download --no-deps
# --only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_24_x86_64
# -d .whl bitsandbytes torchao` and `python3 -m pip wheel --no-deps -w .whl gemlite` (pure Python,
# built from its sdist), then carry `.whl` in the device call; they are installed for this call only.
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
# DEADLINE (seconds from start): each phase's timeout is cut so the whole call ends before it.
budget() { local left=$(( ${DEADLINE:-100000} - SECONDS - 20 )); echo $(( left < $1 ? (left > 1 ? left : 1) : $1 )); }

if wants build; then
  echo "== build"
  start=$SECONDS
  # The distribution's gcc/g++ (the compilers torch's wheels are built with), not the CC/CXX
  # the image sets: its /opt/gcc wrapper links with other binutils, and every C++ exception
  # thrown from such a build segfaults.
  [ -x /usr/bin/gcc ] && [ -x /usr/bin/g++ ] && export CC="${BUILD_CC:-/usr/bin/gcc}" CXX="${BUILD_CXX:-/usr/bin/g++}"
  echo "CC=${CC:-} CXX=${CXX:-}" > "$results/build.log"
  MAX_JOBS="${MAX_JOBS:-16}" TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0a}" \
    python3 setup.py build_ext --inplace >> "$results/build.log" 2>&1
  build=$?
  echo "build took $((SECONDS - start)) s" >> "$results/build.log"
  tail -n 3 "$results/build.log"
  if [ "$build" -eq 0 ] && [ -n "${OUT:-}" ]; then
    mkdir -p "$OUT/prebuilt"
    for so in climbq_kernels/_C*.so; do strip --strip-debug -o "$OUT/prebuilt/$(basename "$so")" "$so"; done
  fi
  status+=" build=$build"
elif compgen -G ".gpu_prebuilt/_C*.so" > /dev/null; then
  echo "== prebuilt extension from .gpu_prebuilt/"
  cp .gpu_prebuilt/_C*.so climbq_kernels/
fi

if wants tests; then
  echo "== tests"
  workers=()
  # worksteal: the INT4 CUDA tests' batch-1024 cases take seconds each and bunch up under load scheduling.
  python3 -c 'import xdist' 2>/dev/null && workers=(-n "${TEST_WORKERS:-16}" --dist worksteal)
  timeout "$(budget "${TEST_TIMEOUT:-1800}")" python3 -m pytest tests -q -ra "${workers[@]}" --durations=25 ${PYTEST_ARGS:-} 2>&1 \
    | tee "$results/tests.log" | tail -n 60
  tests=${PIPESTATUS[0]}
  status+=" tests=$tests"
fi

if wants tune; then
  echo "== Triton INT4 launch configs (tuned here, kept in the package and the results)"
  timeout "$(budget "${TUNE_TIMEOUT:-1800}")" python3 bench/int4/tune_int4_triton.py --dtype bf16 --quick \
    --raw "$results/int4_tuning_raw.json" 2>&1 | tee "$results/int4_tuning.log" | tail -n 5
  tune=${PIPESTATUS[0]}
  cp climbq_kernels/triton/int4_configs.json "$results/" 2>/dev/null
  status+=" tune=$tune"
fi

if wants bench; then
  echo "== benchmarks"
  timeout "$(budget "${BENCH_TIMEOUT:-1800}")" python3 bench/gpu_bench.py --out "$results" --only "${BENCH_ONLY:-}" 2>&1 \
    | tee "$results/bench.log" | tail -n 40
  bench=${PIPESTATUS[0]}
  status+=" bench=$bench"
fi

if wants paths; then
  echo "== CUDA INT4 paths and MMA kernels, each forced"
  timeout "$(budget "${PATHS_TIMEOUT:-1800}")" python3 bench/int4/int4_cuda_paths.py --out "$results" ${PATHS_ARGS:-} 2>&1 \
    | tee "$results/int4_cuda_paths.log" | tail -n 40
  paths=${PIPESTATUS[0]}
  status+=" paths=$paths"
fi

if wants suite; then
  echo "== climbq bench (every family and the QAT step)"
  timeout "$(budget "${SUITE_TIMEOUT:-1800}")" python3 -m climbq_kernels.cli bench --out "$results" ${SUITE_ARGS:-} 2>&1 \
    | tee "$results/climbq_bench.log" | tail -n 60
  suite=${PIPESTATUS[0]}
  status+=" suite=$suite"
fi

[ -n "${OUT:-}" ] && find "$results" -maxdepth 1 -type f -newer "$started" -exec cp {} "$OUT"/ \;
echo "${status# }; results in $results"
[[ "$status" != *=[1-9]* ]]
