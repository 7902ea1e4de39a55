"""Print what the installed illada-rt build holds, and fail where it lacks what this machine can build and run.

    python tools/check_build.py      (.ci/run runs it after `pip install .`, from tests/ so that the installed
                                      package is the one imported)

Exit 1 when: the CPU module `illada_rt._C` is missing; a CUDA compiler is at hand (`nvcc` on PATH, or $CUDACXX)
but `illada_rt._C_cuda` was not built; the CPU has AVX-512 (with the VNNI and BF16 the kernels need) or AVX2 but
those kernel variants were not built. A build without OpenMP (single-threaded kernels) is a warning.

The variants built are read from the module itself: `_C.measure_peak_ops` runs a register-only loop of the best
variant this CPU supports and returns 0 when that variant was compiled out (CMake builds the AVX2 and AVX-512
sources together, on x86-64 with GCC or Clang).
"""
from __future__ import annotations

import os
import shutil
import sys

OPENMP_LIBS = (b"libgomp", b"libomp", b"libiomp5")


def cuda_compiler() -> str | None:
    """The CUDA compiler CMake would find: $CUDACXX, else nvcc on PATH."""
    return os.environ.get("CUDACXX") or shutil.which("nvcc")


def openmp_runtime(module_file: str) -> str | None:
    """The OpenMP runtime the compiled module links (from its dynamic string table), None without one."""
    with open(module_file, "rb") as f:
        data = f.read()
    for lib in OPENMP_LIBS:
        at = data.find(lib + b".so")
        if at >= 0:
            return data[at:data.index(b"\0", at)].decode()
    return None


def gather() -> dict:
    """The build as installed: modules, CUDA archs, this CPU's ISA levels, the SIMD variants built, OpenMP."""
    import illada_rt
    from illada_rt import ops

    status = ops.compiled_status()
    st = {"version": illada_rt.__version__, "_C": status["_C"], "_C_error": status["_C_error"],
          "_C_cuda": status["_C_cuda"], "cuda_archs": status["cuda_archs"], "nvcc": cuda_compiler(),
          "cpu_isas": ops.cpu_isas(), "avx2_built": None, "avx512_built": None, "openmp": None}
    if not status["_C"]:
        return st
    from illada_rt import _C  # type: ignore[attr-defined]

    # Only the variant this CPU runs can be probed; a level the CPU lacks stays None (cannot tell).
    if "avx512" in st["cpu_isas"]:
        st["avx512_built"] = _C.measure_peak_ops("bf16_dot", 1) > 0
    elif "avx2" in st["cpu_isas"]:
        st["avx2_built"] = _C.measure_peak_ops("fp32_fma", 1) > 0
    st["openmp"] = openmp_runtime(_C.__file__)
    return st


def problems(st: dict) -> tuple[list[str], list[str]]:
    """(failures, warnings) for a build described as gather() does."""
    fail, warn = [], []
    if not st["_C"]:
        fail.append(f"illada_rt._C is missing ({st['_C_error']}): the CPU kernels were not built")
        return fail, warn
    if st["nvcc"] and not st["_C_cuda"]:
        fail.append(f"a CUDA compiler is here ({st['nvcc']}) but illada_rt._C_cuda was not built: see CMake's "
                    f"CUDA lines in the build log (-Ccmake.define.ILLADA_CUDA=REQUIRED makes the build fail instead)")
    if "avx512" in st["cpu_isas"] and st["avx512_built"] is False:
        fail.append("this CPU has AVX-512 (VNNI, BF16) but the AVX-512 kernel variants were not built "
                    "(CMake builds them on x86-64 with GCC or Clang)")
    if "avx2" in st["cpu_isas"] and st["avx2_built"] is False:
        fail.append("this CPU has AVX2 but the AVX2 kernel variants were not built "
                    "(CMake builds them on x86-64 with GCC or Clang)")
    if st["openmp"] is None:
        warn.append("the CPU kernels were built without OpenMP: they run single-threaded (CMake: OpenMP not found)")
    return fail, warn


def _variants(st: dict) -> str:
    word = {True: "built", False: "NOT built"}
    if st["avx512_built"] is not None:  # the AVX2 sources build with the AVX-512 ones
        return f"AVX-512 and AVX2 {word[st['avx512_built']]}"
    if st["avx2_built"] is not None:
        return f"AVX2 {word[st['avx2_built']]}; AVX-512 not probed (this CPU lacks it)"
    return "not probed (this CPU has neither AVX2 nor AVX-512)"


def summary(st: dict) -> list[str]:
    return [
        f"illada-rt {st['version']}",
        f"  _C (CPU kernels): {'built' if st['_C'] else 'MISSING: ' + str(st['_C_error'])}",
        f"  CPU ISA levels: {', '.join(st['cpu_isas']) or 'unknown'}; SIMD variants: {_variants(st)}",
        f"  OpenMP: {st['openmp'] or 'not linked (single-threaded kernels)'}",
        f"  _C_cuda (CUDA kernels): {'built for ' + str(st['cuda_archs']) if st['_C_cuda'] else 'not built'}; "
        f"CUDA compiler: {st['nvcc'] or 'none'}",
    ]


def main() -> int:
    st = gather()
    print("\n".join(summary(st)))
    fail, warn = problems(st)
    for w in warn:
        print(f"check_build: warning: {w}")
    for f in fail:
        print(f"check_build: FAIL: {f}")
    return 1 if fail else 0


if __name__ == "__main__":
    sys.exit(main())
