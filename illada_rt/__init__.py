"""illada-rt: a compact inference runtime for masked diffusion language models (iLLaDA, LLaDA)."""
from __future__ import annotations

from .api import GenerateOutput, Model, load
from .config import ModelConfig
from .errors import CheckpointError, ConfigError, IlladaError

__version__ = "0.1.0"


def capabilities() -> dict:
    """What this install has and what will run: compiled modules, CUDA archs and devices, kernel mode."""
    from . import ops

    status = ops.compiled_status()
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
