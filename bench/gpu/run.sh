#!/usr/bin/env bash
# One-shot GPU check of the CUDA loss (issue 7), for a machine with an NVIDIA GPU, CUDA and CMake (Node optional):
#   1. build the CPU core + CUDA kernels + parity test + benchmark with CMake (bench/gpu/CMakeLists.txt, no Node)
#   2. ctest: CUDA vs CPU core parity on fresh random inputs, every mode/option, SD 1.x sizes
#   3. native benchmark: SD 1.x 512x512 tv_bind fwd+bwd vs the copy-bandwidth floor and the CPU core
#   4. optional: compute-sanitizer memcheck + racecheck on the quick parity cases (DIVBIND_SANITIZE=1)
#   5. the ava CUDA test through the addon, only when node and node_modules are present
# Logs and bench.json go to $OUT when set (else build-gpu/out). Prints a short table last. Budget: < 8 minutes.
# Usage: bash bench/gpu/run.sh
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
BUILD="${DIVBIND_GPU_BUILD:-$ROOT/build-gpu}"
OUTDIR="${OUT:-$BUILD/out}"
mkdir -p "$OUTDIR"
export PATH="$PATH:/usr/local/cuda/bin"
START=$(date +%s)
build=FAIL parity=NOT-RUN bench=NOT-RUN sanitize=SKIPPED ava=SKIPPED
note() { echo; echo "=== $* (t+$(( $(date +%s) - START ))s)"; }

note "machine"
{ nvidia-smi || echo "nvidia-smi failed"; } 2>&1 | tee "$OUTDIR/nvidia-smi.txt"
nvcc --version 2>&1 | tee "$OUTDIR/nvcc.txt" || echo "nvcc not on PATH"
cmake --version | head -1

note "build (cmake, bench/gpu/CMakeLists.txt)"
gen=()
if command -v ninja >/dev/null 2>&1; then gen=(-G Ninja); fi
if timeout 300 cmake -S bench/gpu -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DDIVBIND_CUDA=ON "${gen[@]}" \
     >"$OUTDIR/build.log" 2>&1 &&
   timeout 300 cmake --build "$BUILD" -j "$(nproc)" >>"$OUTDIR/build.log" 2>&1; then
  build=OK
fi
grep -E "✓|✗|error|warning" "$OUTDIR/build.log" || true
if [ "$build" != OK ]; then tail -40 "$OUTDIR/build.log"; fi

if [ "$build" = OK ]; then
  note "parity (ctest)"
  set +e
  (cd "$BUILD" && timeout 150 ctest --output-on-failure -V) 2>&1 | tee "$OUTDIR/parity.log"
  rc=${PIPESTATUS[0]}
  set -e
  if [ "$rc" = 0 ]; then
    if grep -q "SKIPPED: no CUDA device" "$OUTDIR/parity.log"; then parity=SKIPPED; else parity=PASS; fi
  else
    parity="FAIL(rc=$rc)"
  fi

  note "benchmark"
  set +e
  timeout 120 "$BUILD/divbind_cuda_bench" "$OUTDIR/bench.json" 200 2>&1 | tee "$OUTDIR/bench.log"
  rc=${PIPESTATUS[0]}
  set -e
  if [ "$rc" = 0 ]; then bench=OK; else bench="FAIL(rc=$rc)"; fi

  if [ "${DIVBIND_SANITIZE:-0}" = 1 ] && command -v compute-sanitizer >/dev/null 2>&1; then
    note "compute-sanitizer (quick parity cases)"
    sanitize=PASS
    for tool in memcheck racecheck; do
      set +e
      DIVBIND_PARITY_QUICK=1 timeout 120 compute-sanitizer --tool "$tool" --error-exitcode 3 \
        "$BUILD/divbind_cuda_parity" >"$OUTDIR/sanitize-$tool.log" 2>&1
      rc=$?
      set -e
      tail -5 "$OUTDIR/sanitize-$tool.log"
      if [ "$rc" != 0 ]; then sanitize="FAIL($tool rc=$rc)"; fi
    done
  fi
fi

note "ava CUDA test (addon)"
if command -v node >/dev/null 2>&1 && [ -x node_modules/.bin/ava ] && [ -x node_modules/.bin/cmake-js ] &&
   [ -f CMakeLists.txt ]; then
  set +e
  # own cmake-js build folder, loaded through DIVBIND_NATIVE_PATH (leaves build/ alone)
  {
    timeout 300 npx cmake-js compile --out build-gpu-addon --CDDIVBIND_CUDA=ON &&
      { npx tsc -p . || echo "(tsc reported errors; continuing with what it emitted)"; } &&
      DIVBIND_NATIVE_PATH="$ROOT/build-gpu-addon/Release/divbind_native.node" timeout 200 npx ava 'dist/test/cuda/**'
  } 2>&1 | tee "$OUTDIR/ava.log"
  rc=${PIPESTATUS[0]}
  set -e
  if [ "$rc" = 0 ]; then ava=PASS; else ava="FAIL(rc=$rc)"; fi
else
  echo "skipped: needs node, node_modules (ava, cmake-js) and CMakeLists.txt in $ROOT"
fi

note "summary"
kernel="-" floor="-" ratio="-" speedup="-" cpu="-" bw="-"
if [ -f "$OUTDIR/bench.json" ]; then
  field() { sed -n "s/.*\"$1\":\([^,}]*\).*/\1/p" "$OUTDIR/bench.json"; }
  kernel=$(field kernel_ms) floor=$(field floor_ms) ratio=$(field kernel_over_floor)
  speedup=$(field speedup_kernels) cpu=$(field cpu_ms) bw=$(field copy_bandwidth_gbs)
fi
printf '%-34s %s\n' "build" "$build" "parity (ctest)" "$parity" "benchmark" "$bench" \
  "compute-sanitizer" "$sanitize" "ava CUDA test" "$ava" \
  "tv_bind fwd+bwd kernels (ms)" "$kernel" "copy-bandwidth floor (ms)" "$floor" \
  "kernels / floor (target <= 3)" "$ratio" "copy bandwidth (GB/s)" "$bw" \
  "CPU core (ms)" "$cpu" "speedup vs CPU (target >= 10)" "$speedup" \
  "elapsed (s)" "$(( $(date +%s) - START ))" | tee "$OUTDIR/summary.txt"
case "$build/$parity/$bench" in
  OK/PASS/OK | OK/SKIPPED/OK) exit 0 ;;
  *) exit 1 ;;
esac
