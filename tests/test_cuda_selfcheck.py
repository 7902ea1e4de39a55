"""The CUDA kernels' first-use self-check (ops/cuda_selfcheck.py) and its cached verdict (ops/cuda_verdict.py).

Without a GPU the checks themselves run on the CUDA emulator (the same kernels, device 'cpu'), and the verdict
machinery (child process, cache per GPU/driver/build, one-line notice, the default rule) runs against a stand-in
GPU identity and child.
"""
import json
import subprocess
import types

import pytest
import torch

from illada_rt.ops import cuda as cuda_ops
from illada_rt.ops import cuda_selfcheck, cuda_verdict


def test_every_check_passes_on_the_emulator():
    out = cuda_selfcheck.run("cpu")
    assert all(r["ok"] for r in out["checks"].values()), out
    assert out["kernels"] == {k: True for k in cuda_ops.KERNELS}


def test_a_wrong_kernel_fails_its_check_and_only_its_own(monkeypatch):
    real = cuda_ops.attention
    monkeypatch.setattr(cuda_ops, "attention", lambda q, k, v, m: real(q, k, v, m) * 1.01)
    out = cuda_selfcheck.run("cpu")
    assert out["kernels"] == {k: k != "attention" for k in cuda_ops.KERNELS}
    assert "max error" in out["checks"]["attention"]["detail"]


def test_a_wrong_gemm_fails_its_check(monkeypatch):
    from illada_rt.ops import cuda_gemm

    real = cuda_gemm.linear
    monkeypatch.setattr(cuda_gemm, "linear", lambda x, w, dt=None, splits=None, **kw: real(
        x, w, dt, splits if splits != 3 else 2, **kw))
    assert cuda_selfcheck.run("cpu")["kernels"]["gemm_w8a8"] is True  # another split count is still exact
    monkeypatch.setattr(cuda_gemm, "linear", lambda x, w, dt=None, splits=None, **kw: real(x, w, dt, splits, **kw)
                        * 1.001)
    out = cuda_selfcheck.run("cpu")["kernels"]
    assert out["gemm_w8a8"] is False and out["gemm_fp8"] is False and out["attention"] is True


def test_a_wrong_fragment_layout_fails_the_tensor_core_kernels(monkeypatch):
    emu = cuda_ops._C_cuda_emu

    def swapped_probe(src, rows, num, trans, out, **kw):  # as if the hardware transposed what the emulator does not
        emu.probe_ldmatrix(src, rows, num, not trans, out, **kw)

    class Fake:  # the emulator, but for its ldmatrix probe
        probe_ldmatrix = staticmethod(swapped_probe)

        def __getattr__(self, name):
            return getattr(emu, name)

    fake = Fake()
    real_module = cuda_ops._module
    monkeypatch.setattr(cuda_ops, "_module", lambda d: fake if d.type == "cpu" else real_module(d))
    out = cuda_selfcheck.run("cpu")
    assert not out["checks"]["fragments"]["ok"] and "ldmatrix x1" in out["checks"]["fragments"]["detail"]
    assert out["kernels"]["attention"] is False and out["kernels"]["sample_tokens"] is True
    assert out["kernels"]["gemm_w8a8"] is False  # the GEMMs read their fragments through ldmatrix too


def test_command_line(capsys):
    assert cuda_selfcheck.main(["--device", "cpu", "--json"]) == 0
    verdict = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(verdict["kernels"]) == set(cuda_ops.KERNELS)
    assert cuda_selfcheck.main(["--device", "cpu"]) == 0
    assert "select_transfer  ok" in capsys.readouterr().out


# ---- the verdict: once per GPU, driver and build; cached; said once ------------------------------------------

@pytest.fixture
def fake_gpu(monkeypatch, tmp_path):
    """A stand-in GPU identity and self-check child; returns the list of child runs."""
    monkeypatch.setenv("ILLADA_RT_CACHE_DIR", str(tmp_path / "cache"))
    ident = {"gpu": "NVIDIA H200", "sm": 90, "driver": 13000, "illada_rt": "0.1.0", "build": "1-2", "index": 0}
    runs = []

    def child(index):
        runs.append(index)
        return {"kernels": {"attention": False, "sample_tokens": True, "select_transfer": True, "gemm_w8a8": True,
                            "gemm_fp8": True},
                "checks": {"attention": {"ok": False, "detail": "AssertionError: D=64: max error 0.5"}}}

    monkeypatch.setattr(cuda_verdict, "identity", lambda device, module: dict(ident))
    monkeypatch.setattr(cuda_verdict, "run_child", child)
    cuda_verdict.forget()
    yield types.SimpleNamespace(runs=runs, ident=ident, cache=tmp_path / "cache" / cuda_verdict.CACHE_FILE)
    cuda_verdict.forget()


def test_verdict_runs_once_then_comes_from_memory_and_the_cache(fake_gpu, capsys):
    dev = torch.device("cuda", 0)
    v = cuda_verdict.verdict(dev, None, cuda_ops.KERNELS)
    assert v["kernels"] == {k: k != "attention" for k in cuda_ops.KERNELS}
    assert v["source"] == "run" and fake_gpu.runs == [0]
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "checking the CUDA kernels on NVIDIA H200 (sm_90) once" in err[0]
    assert err[1].startswith("illada-rt: CUDA kernel(s) attention failed their self-check on NVIDIA H200")
    assert cuda_verdict.verdict(dev, None, cuda_ops.KERNELS)["source"] == "run"  # memory: no second child
    assert fake_gpu.runs == [0] and capsys.readouterr().err == ""  # said once
    cuda_verdict.forget()  # a new process: the file cache answers
    assert cuda_verdict.verdict(dev, None, cuda_ops.KERNELS)["source"] == "cache" and fake_gpu.runs == [0]
    assert json.loads(fake_gpu.cache.read_text())


@pytest.mark.parametrize("field,value", [("driver", 13010), ("build", "3-4"), ("gpu", "NVIDIA H100"), ("sm", 89),
                                         ("illada_rt", "0.2.0")])
def test_a_new_driver_build_or_gpu_checks_again(fake_gpu, field, value):
    dev = torch.device("cuda", 0)
    cuda_verdict.verdict(dev, None, cuda_ops.KERNELS)
    fake_gpu.ident[field] = value
    cuda_verdict.forget()
    assert cuda_verdict.verdict(dev, None, cuda_ops.KERNELS)["source"] == "run" and len(fake_gpu.runs) == 2


def test_default_rule_runs_only_kernels_that_passed(fake_gpu, monkeypatch):
    fake_c = types.SimpleNamespace(compiled_archs=lambda: "80,90a")
    monkeypatch.setattr(cuda_ops, "_C_cuda", fake_c)
    monkeypatch.setattr(cuda_ops, "_device_sm", lambda device: 90)
    monkeypatch.delenv("ILLADA_RT_CUDA_KERNELS", raising=False)
    monkeypatch.delenv("ILLADA_RT_KERNELS", raising=False)
    dev = torch.device("cuda", 0)
    assert cuda_ops.kernel_enabled("attention", dev) is False
    assert cuda_ops.kernel_enabled("sample_tokens", dev) is True
    monkeypatch.setenv("ILLADA_RT_CUDA_KERNELS", "all")  # the override: unchecked
    assert cuda_ops.kernel_enabled("attention", dev) is True
    monkeypatch.setenv("ILLADA_RT_CUDA_KERNELS", "none")
    assert cuda_ops.kernel_enabled("sample_tokens", dev) is False
    monkeypatch.setattr(cuda_ops, "_device_sm", lambda device: 75)  # not compiled for it: no check, no kernel
    monkeypatch.delenv("ILLADA_RT_CUDA_KERNELS")
    cuda_verdict.forget()
    assert cuda_ops.kernel_enabled("sample_tokens", dev) is False and len(fake_gpu.runs) == 1


def test_a_child_that_crashes_fails_every_kernel_with_its_reason(monkeypatch):
    def crashed(cmd, **kw):
        assert cmd[1:4] == ["-m", "illada_rt.ops.cuda_selfcheck", "--device"]
        return subprocess.CompletedProcess(cmd, -11, stdout="", stderr="an illegal memory access was encountered\n")

    monkeypatch.setattr(subprocess, "run", crashed)
    out = cuda_verdict.run_child(0)
    assert out["kernels"] == {} and "exit status -11: an illegal memory access" in out["checks"]["child"]["detail"]


def test_an_unwritable_cache_only_means_checking_again(fake_gpu, monkeypatch, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("ILLADA_RT_CACHE_DIR", str(blocker / "sub"))  # a directory under a file: mkdir fails
    v = cuda_verdict.verdict(torch.device("cuda", 0), None, cuda_ops.KERNELS)
    assert v["kernels"]["sample_tokens"] is True


@pytest.mark.gpu
@pytest.mark.skipif(not (cuda_ops._C_cuda is not None and torch.cuda.is_available()), reason="needs a CUDA GPU")
def test_first_use_on_a_real_gpu(monkeypatch, tmp_path):
    """The real thing: the child process checks every kernel and the probes on this GPU, and all pass."""
    monkeypatch.setenv("ILLADA_RT_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("ILLADA_RT_CUDA_KERNELS", raising=False)
    cuda_verdict.forget()
    v = cuda_verdict.verdict(torch.device("cuda", 0), cuda_ops._C_cuda, cuda_ops.KERNELS)
    assert v["source"] == "run" and all(v["kernels"].values()), v
    assert cuda_ops.kernel_enabled("attention", torch.device("cuda", 0))
    cuda_verdict.forget()
