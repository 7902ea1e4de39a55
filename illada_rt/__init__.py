"""illada-rt: a compact inference runtime for masked diffusion language models (iLLaDA, LLaDA)."""
from __future__ import annotations

from .api import GenerateOutput, Model, load
from .config import ModelConfig
from .errors import CheckpointError, ConfigError, IlladaError

__version__ = "0.1.0"


def _cpu_info() -> dict:
    """CPU model, and the ISA the compiled kernels detected (CPUID + xgetbv) and will run with."""
    import platform

    from . import ops

    info = {"machine": platform.machine(), "model": platform.processor() or None, "isa": ops.cpu_isa(),
            "isas": ops.cpu_isas()}
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, val = line.partition(":")
                if key.strip() == "model name":
                    info["model"] = val.strip()
                    break
    except OSError:
        pass
    return info


def _attention_cpu(status) -> str:
    import os

    mode = os.environ.get("ILLADA_RT_ATTENTION", "auto").strip().lower() or "auto"
    if not status["_C"] or status["kernel_mode"] != "auto" or mode == "torch":
        return "torch"
    if mode == "kernel":
        return f"_C ({status['cpu']['isa']})"
    if status["cpu"]["isa"] in ("avx512", "amx"):
        return "_C (avx512) for bf16 with head dim 64/128, torch SDPA otherwise"
    return "torch"


def _attention_cuda(kernel_status: str) -> str:
    text = kernel_status.replace("reference", "torch SDPA", 1)
    return text + (" for bf16/fp16 with head dim 64/128, torch SDPA otherwise" if text.startswith("_C_cuda") else "")


def capabilities() -> dict:
    """What this install has and what will run: compiled modules, CUDA archs and devices, kernel mode, CPU."""
    from . import ops
    from .ops import stack

    status = ops.compiled_status()
    status["cuda_kernels"] = ops._cuda.status()
    cuda = status["cuda_kernels"]
    status["cpu"] = _cpu_info()
    status["kernel_mode"] = ops.kernel_mode()
    on_avx512 = status["_C"] and status["kernel_mode"] == "auto" and status["cpu"]["isa"] in ("avx512", "amx")
    on_avx2 = status["_C"] and status["kernel_mode"] == "auto" and status["cpu"]["isa"] == "avx2"
    fused = "avx512" if on_avx512 else "avx2" if on_avx2 else None  # the norm, SwiGLU and RoPE kernels' variant
    status["kernels"] = {
        "select_confident": {"cpu": "_C" if status["_C"] and status["kernel_mode"] == "auto" else "reference",
                             "cuda": cuda["select_transfer"]},
        "attention": {"cpu": _attention_cpu(status), "cuda": _attention_cuda(cuda["attention"])},
        "gemm (bf16 linears)": {"cpu": f"_C gemm_bf16 (avx512) up to {ops.BF16_GEMM_MAX_M} rows, torch above"
                                if on_avx512 else "_C gemm_bf16 (avx2), every M" if on_avx2 else "torch",
                                "cuda": "torch"},
        # a forward's transformer blocks in one compiled call where each op would run the compiled kernel (ops/stack.py)
        "layer stack": {"cpu": (f"_C for bf16 compute with head dim 64/128 and every linear W8A8 or bf16 (up to "
                                f"{ops.BF16_GEMM_MAX_M} rows), the Python layer loop otherwise"
                                if stack.stack_mode() == "auto" else "off (ILLADA_RT_LAYER_STACK): the Python layer loop")
                        if on_avx512 else "the Python layer loop", "cuda": "the Python layer loop"},
        # greedy sampling (argmax + confidence): the portable kernel is slower than PyTorch, which runs without AVX2
        "sample_greedy": {"cpu": f"_C ({status['cpu']['isa'].replace('amx', 'avx512')})"
                          if status["_C"] and status["kernel_mode"] == "auto"
                          and status["cpu"]["isa"] in ("avx2", "avx512", "amx") else "reference", "cuda": cuda["sample_tokens"]},
        "rms_norm": {"cpu": f"_C ({fused}) for bf16, torch otherwise" if fused else "torch", "cuda": "torch"},
        # a block's residual add and the RMSNorm after it (every norm but the first block's)
        "add_rms_norm": {"cpu": f"_C ({fused}) for bf16, torch otherwise" if fused else "torch", "cuda": "torch"},
        # the same bits either way; measured once which is faster here (costs ~1 ms at the first call)
        "swiglu": {"cpu": (f"_C ({fused}) for bf16" if ops.swiglu_uses_kernel() else "torch (measured faster here)")
                   if fused else "torch", "cuda": "torch"},
        "rope": {"cpu": f"_C ({fused})" if fused else "torch", "cuda": "torch"},
        "gemm_fp8w": {"cpu": f"_C ({status['cpu']['isa']}) for bf16 compute" if on_avx512
                      else "dequantized + the bf16 linears' GEMM" if on_avx2 else "dequantized + torch",
                      "cuda": "gemm_fp8 (below)"},
        "gemm_w8a8": {"cpu": f"_C ({status['cpu']['isa']})" if status["_C"] and status["kernel_mode"] == "auto"
                      else "reference",
                      "cuda": cuda["gemm_w8a8"].replace("reference", "dequantized + torch", 1)},
        "gemm_fp8 (W8A8 e4m3 on sm_89+, weight-only before)": {
            "cpu": "-", "cuda": cuda["gemm_fp8"].replace("reference", "dequantized + torch", 1)},
    }
    return status


__all__ = ["load", "Model", "GenerateOutput", "ModelConfig", "capabilities", "IlladaError", "ConfigError",
           "CheckpointError", "__version__"]
