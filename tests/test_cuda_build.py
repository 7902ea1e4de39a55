"""The optional CUDA module: built wherever nvcc exists (so CUDA sources cannot rot), skipped cleanly elsewhere."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import illada_rt


def _cuda_module():
    try:
        from illada_rt import _C_cuda
    except ImportError:
        return None
    return _C_cuda


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="no CUDA compiler on this machine")
def test_cuda_module_built_for_default_archs():
    mod = _cuda_module()
    assert mod is not None, "nvcc is present but illada_rt._C_cuda was not built"
    archs = mod.compiled_archs().split(",")
    assert "80" in archs and "90a" in archs
    assert illada_rt.capabilities()["_C_cuda"] is True


def test_cuda_queries_never_crash_without_gpu():
    mod = _cuda_module()
    if mod is None:
        pytest.skip("_C_cuda not built")
    n = mod.device_count()
    assert n >= 0
    if n == 0:
        with pytest.raises(RuntimeError, match="no CUDA device"):
            mod.toolchain_check(8)
    with pytest.raises(ValueError, match="n: must be in"):
        mod.toolchain_check(-1)


@pytest.mark.gpu
def test_toolchain_kernel_runs_on_gpu():
    mod = _cuda_module()
    if mod is None or mod.device_count() == 0:
        pytest.skip("needs a CUDA GPU and _C_cuda")
    assert mod.toolchain_check(1000) == [i * i for i in range(1000)]


@pytest.mark.gpu
def test_generate_on_cuda_uses_reference_ops(checkpoints):
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    cpu = illada_rt.load(checkpoints["llada_gqa"])
    gpu = illada_rt.load(checkpoints["llada_gqa"], device="cuda")
    prompt = [[3, 4, 5, 6]]
    a = cpu.generate(prompt, gen_length=8, steps=8, block_length=4).tokens
    b = gpu.generate(prompt, gen_length=8, steps=8, block_length=4).tokens.cpu()
    assert torch.equal(a, b)


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="a GPU machine: the preflight would pass")
def test_gpu_check_preflight_names_what_is_missing_before_building(tmp_path):
    """bench/gpu_check.sh on a machine without a GPU stops in its preflight, naming each missing piece, before it
    builds anything (exit status 2)."""
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, OUT=str(tmp_path), PYTHON=sys.executable)
    proc = subprocess.run(["bash", str(root / "bench" / "gpu_check.sh")], env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    log = (tmp_path / "log.txt").read_text()
    assert "PREFLIGHT FAILED" in log and "- tool nvidia-smi" in log
    assert "torch.cuda.is_available() is False" in log
    assert not (tmp_path / "build.log").exists()


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="needs nvcc")
def test_gumbel_noise_is_added_with_two_roundings_on_the_gpu(tmp_path):
    """logits + T * g must round twice, as the CPU does, so both pick the same tokens: nvcc's default -fmad=true would
    contract it into one FMA. In the PTX nvcc emits for sampling.cu, every noise instantiation of the sampling kernel
    carries its noise sites as mul.rn.f32 + add.rn.f32 (contraction-proof); before the fix it had none."""
    root = Path(__file__).resolve().parents[1]
    ptx = tmp_path / "sampling.ptx"
    subprocess.run(["nvcc", "-ptx", "-arch=sm_80", "-std=c++17", f"-I{root / 'csrc'}",
                    str(root / "csrc" / "cuda" / "sampling.cu"), "-o", str(ptx)], check=True, timeout=300)
    entries = ptx.read_text().split(".entry ")[1:]
    noisy = [e for e in entries if "sample_tokens_kernel" in e.split("(")[0] and "Lb1E" in e.split("(")[0]]
    assert len(noisy) == 6  # 3 logit dtypes x 2 confidence dtypes
    for e in noisy:
        assert e.count("mul.rn.f32") >= 9 and e.count("add.rn.f32") == e.count("mul.rn.f32"), e.split("(")[0]
