#!/usr/bin/env bash
# The GPU check, for a bare GPU machine without network (PyTorch with CUDA, nvcc, cmake, ninja, pybind11,
# scikit-build-core, pytest, pytest-benchmark): a preflight that names every missing piece first; a build for this
# GPU with ptxas's register/spill/shared-memory report; the kernels' self-check (known answers, fragment probes
# bit for bit against the emulator) under compute-sanitizer memcheck, racecheck, synccheck and initcheck; the GPU
# tests (pytest -m gpu); the GPU benches. Every stage has a time box and the whole run a deadline (8 minutes by
# default, CHECK_DEADLINE_S), so it fits a 15-minute device lease with room to rerun. Writes at most 8 files under
# $OUT (default ./gpu-check-out): log.txt, build.log, ptxas.txt, sanitizer.log, tests.log, bench.log,
# bench-cuda.json, report.md.
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
START=$(date +%s)
DEADLINE=$((START + ${CHECK_DEADLINE_S:-480}))
say() { echo "== $(date +%T) (+$(($(date +%s) - START)) s) $*" | tee -a "$LOG"; }
# box N: the smaller of N seconds and what is left before the deadline (at least 5)
box() { local left=$((DEADLINE - $(date +%s))); [ "$left" -lt "$1" ] && echo $((left > 5 ? left : 5)) || echo "$1"; }
status=0

say "preflight"
missing=()
for tool in nvcc nvidia-smi cmake ninja c++; do command -v "$tool" >/dev/null 2>&1 || missing+=("tool $tool"); done
for mod in torch numpy pytest pytest_benchmark pybind11 scikit_build_core safetensors sentencepiece tokenizers \
    huggingface_hub; do
  $PY -c "import $mod" >/dev/null 2>&1 || missing+=("python module $mod")
done
$PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" >/dev/null 2>&1 \
  || missing+=("a CUDA GPU visible to PyTorch (torch.cuda.is_available() is False)")
SAN=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null || true)
if [ ${#missing[@]} -gt 0 ]; then
  say "PREFLIGHT FAILED: missing ${#missing[@]}:"
  printf '   - %s\n' "${missing[@]}" | tee -a "$LOG"
  exit 2
fi
[ -n "$SAN" ] || say "note: compute-sanitizer not found: the sanitizer stage is skipped"
{ nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader; nvcc --version | tail -1
  $PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"
} 2>&1 | tee -a "$LOG"

# Build for this GPU only (sm_90a on Hopper: the arch-specific target; sm_XY elsewhere), failing if CUDA is missing.
ARCH=$($PY -c "import torch; M, m = torch.cuda.get_device_capability(); print(f'{M}{m}' + ('a' if M == 9 else ''))")
say "build for sm_$ARCH"
if ! SKBUILD_CMAKE_ARGS="-DCMAKE_CUDA_ARCHITECTURES=$ARCH;-DILLADA_CUDA=REQUIRED;-DILLADA_CUDA_PTXAS_VERBOSE=ON" \
    SKBUILD_CMAKE_VERBOSE=false timeout "$(box 240)" $PY -m pip install --no-build-isolation --no-deps \
    --no-cache-dir -v . >"$OUT/build.log" 2>&1; then
  say "BUILD FAILED (tail of build.log follows)"
  tail -40 "$OUT/build.log" | tee -a "$LOG"
  exit 1
fi
# ptxas: "Compiling entry function '<mangled>' for 'sm_90a'" then "Used N registers, ... smem, ... spill" lines
grep -E "ptxas info *: (Compiling entry|Function properties|Used)|spill stores" "$OUT/build.log" \
  | sed -E 's/.*ptxas info *: //' >"$OUT/ptxas.txt"
say "ptxas: $(grep -c '^Used' "$OUT/ptxas.txt") kernels; the most registers and any spills:"
{ grep -o 'Used [0-9]* registers' "$OUT/ptxas.txt" | sort -k2 -n | tail -1; grep -E '[1-9][0-9]* bytes spill' \
    "$OUT/ptxas.txt" | sort | uniq -c | head -5; } | tee -a "$LOG"

# The self-check (what a user's first GPU call runs) under each compute-sanitizer tool; shapes have Tk >= 3 key
# tiles so every shared-memory buffer is reused. The PyTorch caching allocator would hide overruns inside its pools.
say "self-check of every kernel, plain and under compute-sanitizer"
: >"$OUT/sanitizer.log"
(cd /tmp && timeout "$(box 90)" $PY -m illada_rt.ops.cuda_selfcheck) >>"$OUT/sanitizer.log" 2>&1 || status=1
if [ -n "$SAN" ]; then
  for tool in memcheck racecheck synccheck initcheck; do
    echo "---- $tool" >>"$OUT/sanitizer.log"
    (cd /tmp && PYTORCH_NO_CUDA_MEMORY_CACHING=1 timeout "$(box 75)" "$SAN" --tool "$tool" --error-exitcode 3 \
      --print-limit 20 $PY -m illada_rt.ops.cuda_selfcheck) >>"$OUT/sanitizer.log" 2>&1
    rc=$?
    echo "---- $tool exit $rc" >>"$OUT/sanitizer.log"
    say "compute-sanitizer $tool: exit $rc$([ $rc = 124 ] && echo ' (timed out)')"
    [ $rc = 0 ] || status=1
  done
fi
grep -E "^(fragments|attention|sample_tokens|select_transfer) " "$OUT/sanitizer.log" | head -4 | tee -a "$LOG"

say "GPU tests"
(cd "$ROOT/tests" && timeout "$(box 150)" $PY -m pytest -q -p no:cacheprovider --rootdir=.. -m gpu ../tests -ra \
  -x --durations=5) >"$OUT/tests.log" 2>&1 || status=1
tail -25 "$OUT/tests.log" | tee -a "$LOG"

say "GPU benches"
(cd "$ROOT/tests" && timeout "$(box 150)" $PY -m pytest -q -p no:cacheprovider --rootdir=.. \
  ../bench/test_bench_cuda.py --benchmark-columns=median,rounds --benchmark-json="$OUT/bench-cuda.json") \
  >"$OUT/bench.log" 2>&1 || status=1
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
