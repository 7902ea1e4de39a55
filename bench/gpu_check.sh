#!/usr/bin/env bash
# The GPU check: on a machine with a CUDA GPU, PyTorch (CUDA), nvcc, cmake, ninja, pybind11 and scikit-build-core
# (no network needed): build the extension for this GPU, run the GPU tests (pytest -m gpu), run the GPU benches, and
# write a log, the sanitizer and test logs, the bench JSON and a report table under $OUT (default ./gpu-check-out): at
# most 8 files, what the device tool brings back.
# Designed to finish in well under 10 minutes (build ~2-3 min on 16 cores, tests ~1-2 min, benches ~3 min).
#
#     OUT=/tmp/out bash bench/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=${OUT:-$ROOT/gpu-check-out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}
LOG=$OUT/log.txt
: >"$LOG"
say() { echo "== $(date +%T) $*" | tee -a "$LOG"; }
status=0

say "GPU and toolchain"
{ nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv; nvcc --version | tail -1
  $PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"
} 2>&1 | tee -a "$LOG"

# Build for this GPU only (sm_90a on Hopper: the arch-specific target; sm_XY elsewhere), failing if CUDA is missing.
ARCH=$($PY -c "import torch; M, m = torch.cuda.get_device_capability(); print(f'{M}{m}' + ('a' if M == 9 else ''))")
say "build for sm_$ARCH"
if ! SKBUILD_CMAKE_ARGS="-DCMAKE_CUDA_ARCHITECTURES=$ARCH;-DILLADA_CUDA=REQUIRED" SKBUILD_CMAKE_VERBOSE=false \
    timeout 420 $PY -m pip install --no-build-isolation --no-deps --no-cache-dir -v . >"$OUT/build.log" 2>&1; then
  say "BUILD FAILED (tail of build.log follows)"
  tail -40 "$OUT/build.log" | tee -a "$LOG"
  exit 1
fi
grep -E "ptxas info *: Used|spill" "$OUT/build.log" | sort | uniq -c | tail -20 >>"$LOG"
(cd /tmp && $PY -c "import json, illada_rt; print(json.dumps(illada_rt.capabilities(), indent=1))") \
  >"$OUT/capabilities.json" 2>&1 || status=1

say "sanity run of every kernel (under compute-sanitizer memcheck when it is there)"
SAN=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null || true)
(cd /tmp && timeout 180 ${SAN:+$SAN --tool memcheck --error-exitcode 3} $PY "$ROOT/bench/gpu_sanity.py") \
  >"$OUT/sanitizer.log" 2>&1 || status=1
tail -15 "$OUT/sanitizer.log" | tee -a "$LOG"

say "GPU tests"
(cd "$ROOT/tests" && timeout 300 $PY -m pytest -q -p no:cacheprovider --rootdir=.. -m gpu ../tests -ra) \
  >"$OUT/tests.log" 2>&1 || status=1
tail -25 "$OUT/tests.log" | tee -a "$LOG"

say "GPU benches"
(cd "$ROOT/tests" && timeout 420 $PY -m pytest -q -p no:cacheprovider --rootdir=.. ../bench/test_bench_cuda.py \
  --benchmark-columns=median,rounds --benchmark-json="$OUT/bench-cuda.json") >"$OUT/bench.log" 2>&1 || status=1
tail -8 "$OUT/bench.log" | tee -a "$LOG"
if [ -s "$OUT/bench-cuda.json" ]; then
  $PY bench/report.py "$OUT/bench-cuda.json" >"$OUT/report.md" 2>&1 || status=1
  $PY - "$OUT/bench-cuda.json" <<'PYEOF' >>"$OUT/report.md" 2>&1 || status=1
import json, sys
doc = json.load(open(sys.argv[1]))
for b in doc["benchmarks"]:
    info = b.get("extra_info", {})
    if "tokens_per_s" in info:
        print(f"{info['op']} {info['group']} {info['impl']}: {info['tokens_per_s']:.1f} tokens/s, NFE {info['nfe']}, "
              f"{b['stats']['median'] * 1e3 / info['nfe']:.2f} ms/step"
              + (f", tokens equal with kernels on/off: {info['tokens_equal_kernels_on_off']}"
                 if "tokens_equal_kernels_on_off" in info else ""))
PYEOF
  cat "$OUT/report.md" | tee -a "$LOG"
fi
say "done (status $status)"
exit $status
