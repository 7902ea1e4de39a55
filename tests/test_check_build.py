"""tools/check_build.py, the build check CI runs after installing: its rules on made-up builds, and its reading of
this install."""
import importlib.util
from pathlib import Path

import pytest

from illada_rt import ops

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("check_build", ROOT / "tools" / "check_build.py")
check_build = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(check_build)

COMPLETE = {"version": "0", "_C": True, "_C_error": None, "_C_cuda": True, "cuda_archs": "80,90a",
            "nvcc": "/usr/bin/nvcc", "cpu_isas": ["generic", "avx2", "avx512"], "avx2_built": None,
            "avx512_built": True, "openmp": "libgomp.so.1"}


def _check(**changes):
    return check_build.problems({**COMPLETE, **changes})


def test_a_complete_build_passes():
    assert _check() == ([], [])


@pytest.mark.parametrize("changes,needle", [
    (dict(_C_cuda=False, cuda_archs=None), "a CUDA compiler is here (/usr/bin/nvcc) but illada_rt._C_cuda was not"),
    (dict(avx512_built=False), "AVX-512 (VNNI, BF16) but the AVX-512 kernel variants were not built"),
    (dict(cpu_isas=["generic", "avx2"], avx512_built=None, avx2_built=False), "AVX2 but the AVX2 kernel variants"),
    (dict(_C=False, _C_error="No module named 'illada_rt._C'"), "illada_rt._C is missing (No module named"),
])
def test_each_missing_part_fails(changes, needle):
    fail, _ = _check(**changes)
    assert len(fail) == 1 and needle in fail[0], fail


@pytest.mark.parametrize("changes", [
    dict(nvcc=None, _C_cuda=False, cuda_archs=None),                      # no CUDA compiler: nothing to build
    dict(cpu_isas=["generic", "avx2"], avx512_built=None, avx2_built=True),  # an AVX2 CPU: AVX-512 not probed
    dict(cpu_isas=["generic"], avx512_built=None),                        # a CPU without AVX2
])
def test_what_this_machine_cannot_build_or_run_is_no_failure(changes):
    assert _check(**changes) == ([], [])


def test_no_openmp_is_a_warning():
    fail, warn = _check(openmp=None)
    assert fail == [] and len(warn) == 1 and "single-threaded" in warn[0]


def test_cuda_compiler_is_cudacxx_or_nvcc_on_path(monkeypatch, tmp_path):
    nvcc = tmp_path / "nvcc"
    nvcc.write_text("#!/bin/sh\n")
    nvcc.chmod(0o755)
    monkeypatch.delenv("CUDACXX", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert check_build.cuda_compiler() == str(nvcc)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert check_build.cuda_compiler() is None
    monkeypatch.setenv("CUDACXX", "/opt/cuda/bin/nvcc")
    assert check_build.cuda_compiler() == "/opt/cuda/bin/nvcc"


def test_openmp_runtime_is_read_from_the_dynamic_strings(tmp_path):
    lib = tmp_path / "m.so"
    lib.write_bytes(b"\x7fELF\0libc.so.6\0libgomp.so.1\0GOMP_parallel\0")
    assert check_build.openmp_runtime(str(lib)) == "libgomp.so.1"
    lib.write_bytes(b"\x7fELF\0libc.so.6\0GOMP_parallel\0")
    assert check_build.openmp_runtime(str(lib)) is None


def test_reading_of_this_install():
    st = check_build.gather()
    status = ops.compiled_status()
    assert st["_C"] == status["_C"] and st["_C_cuda"] == status["_C_cuda"]
    assert st["cpu_isas"] == ops.cpu_isas()
    if not st["_C"]:
        pytest.skip("no compiled module here")
    if "avx512" in st["cpu_isas"]:
        # the AVX-512 variants are what the attention/fp8 kernels run here; the probe sees them
        assert st["avx512_built"] is True and st["avx2_built"] is None
    elif "avx2" in st["cpu_isas"]:
        assert st["avx2_built"] is True and st["avx512_built"] is None
    lines = check_build.summary(st)
    assert lines[1].endswith("built") and any("SIMD variants" in ln for ln in lines)
