"""One Python function per op: the compiled kernel for the tensor's device when one exists and is
enabled, else the plain-PyTorch reference (ops/reference.py).

`ILLADA_RT_KERNELS=reference` forces the reference everywhere (read at call time, so tests and benches
can flip it).
"""
from __future__ import annotations

import os

import torch

from . import reference

try:  # the compiled CPU kernels; absent only in a broken or source-only install
    from .. import _C  # type: ignore[attr-defined]
except ImportError as _e:  # pragma: no cover - exercised only without a build
    _C = None
    _C_IMPORT_ERROR = str(_e)
else:
    _C_IMPORT_ERROR = None

KERNEL_MODES = ("auto", "reference")


def kernel_mode() -> str:
    mode = os.environ.get("ILLADA_RT_KERNELS", "auto").strip().lower() or "auto"
    if mode not in KERNEL_MODES:
        raise ValueError(f"ILLADA_RT_KERNELS must be one of {', '.join(KERNEL_MODES)}, got {mode!r}")
    return mode


def use_cpu_kernel(*tensors: torch.Tensor) -> bool:
    return _C is not None and kernel_mode() == "auto" and all(t.device.type == "cpu" for t in tensors)


# The model-side ops run through torch (oneDNN/MKL on CPU, cuBLAS/cuDNN on GPU) until the fused kernels
# of the CPU and CUDA kernel work land; they keep their place here so callers never change.
rms_norm = reference.rms_norm
rope_cos_sin = reference.rope_cos_sin
apply_rope = reference.apply_rope
attention = reference.attention
swiglu = reference.swiglu


def select_confident(confidence: torch.Tensor, x0: torch.Tensor, k: torch.Tensor, tokens: torch.Tensor,
                     mask_id: int, transferred: torch.Tensor | None = None) -> None:
    """Per row, write x0 into the k most confident still-masked positions of `tokens` (in place).

    confidence [B, L] float32/float64, x0 [B, L] int64, k [B] int64, tokens [B, L] int64 (may be a slice
    of the canvas). Ties go to the lower position.
    """
    if use_cpu_kernel(confidence, x0, k, tokens):
        _C.select_confident(confidence, x0, k, tokens, int(mask_id), transferred)
    else:
        reference.select_confident(confidence, x0, k, tokens, mask_id, transferred)


def compiled_status() -> dict:
    """Which compiled modules exist here (used by illada_rt.capabilities())."""
    status = {"_C": _C is not None, "_C_error": _C_IMPORT_ERROR, "_C_cuda": False, "cuda_archs": None,
              "cuda_devices": 0}
    try:
        from .. import _C_cuda  # type: ignore[attr-defined]
    except ImportError:
        return status
    status.update(_C_cuda=True, cuda_archs=_C_cuda.compiled_archs(), cuda_devices=_C_cuda.device_count())
    return status
