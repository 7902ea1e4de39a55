"""illada-rt: a compact inference runtime for masked diffusion language models (iLLaDA, LLaDA)."""
from __future__ import annotations

from .api import GenerateOutput, Model, load
from .config import ModelConfig
from .errors import CheckpointError, ConfigError, IlladaError

__version__ = "0.1.0"


def _cpu_info() -> dict:
    """CPU model and the widest x86 vector ISA the OS reports (from /proc/cpuinfo where it exists)."""
    import platform

    info = {"machine": platform.machine(), "model": platform.processor() or None, "isa": "generic"}
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            text = f.read()
    except OSError:
        return info
    flags: set[str] = set()
    for line in text.splitlines():
        key, _, val = line.partition(":")
        if key.strip() == "model name" and not info["model"]:
            info["model"] = val.strip()
        elif key.strip() in ("flags", "Features"):
            flags = set(val.split())
            break
    for isa, need in (("amx", {"amx_tile", "amx_int8"}), ("avx512", {"avx512f", "avx512bw", "avx512vl"}),
                      ("avx2", {"avx2", "fma"})):
        if need <= flags:
            info["isa"] = isa
            break
    return info


def capabilities() -> dict:
    """What this install has and what will run: compiled modules, CUDA archs and devices, kernel mode, CPU."""
    from . import ops

    status = ops.compiled_status()
    status["cpu"] = _cpu_info()
    status["kernel_mode"] = ops.kernel_mode()
    status["kernels"] = {
        "select_confident": {"cpu": "_C" if status["_C"] and status["kernel_mode"] == "auto" else "reference",
                             "cuda": "reference"},
        "attention": {"cpu": "torch", "cuda": "torch"},
        "gemm": {"cpu": "torch", "cuda": "torch"},
    }
    return status


__all__ = ["load", "Model", "GenerateOutput", "ModelConfig", "capabilities", "IlladaError", "ConfigError",
           "CheckpointError", "__version__"]
