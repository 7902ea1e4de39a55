"""A model's transformer blocks in one compiled call per forward (_C.LayerStack, csrc/cpu/layer_stack.h).

model.py's layer loop calls a compiled kernel per op, a dozen or so per layer; at decoding's small M the Python
around them (the interpreter, tensor allocations, argument conversion) took ~100 us a layer, ~12% of a dual-cache
int8 forward of the 176M bench model on an AMD EPYC (Zen 5, 2 threads). The layer stack runs the same kernels in the
same order on the same operands from C++, so its results are the same bits, and it is used exactly where each of the
loop's ops would have run that kernel:
- on CPU in the default kernel mode (not ILLADA_RT_KERNELS=reference, not under the CUDA emulator), AVX-512 or AMX;
- bfloat16 activations and weights; every linear W8A8 (an int8 checkpoint on the CPU kernel) or dense bfloat16 with
  at most BF16_GEMM_MAX_M rows (where linear_bf16 runs the compiled kernel rather than PyTorch's);
- attention on the compiled kernel (ILLADA_RT_ATTENTION auto with head dim 64 or 128, or `kernel`).
ILLADA_RT_LAYER_STACK=off turns it off (the loop runs instead: the same numbers).
"""
from __future__ import annotations

import os
from collections import Counter

import torch

from . import _C, _cuda, attention_runs_kernel, cpu_isa, use_cpu_kernel
from .. import ops  # ops.BF16_GEMM_MAX_M read at call time, as linear_bf16_route reads it

STACK_MODES = ("auto", "off")


def stack_mode() -> str:
    mode = os.environ.get("ILLADA_RT_LAYER_STACK", "auto").strip().lower() or "auto"
    if mode not in STACK_MODES:
        raise ValueError(f"ILLADA_RT_LAYER_STACK must be auto or off, got {mode!r}")
    return mode


class CompiledLayers:
    """The blocks of a Transformer checked once into a _C.LayerStack (build() says whether they can be), with what
    the bench's FLOP counter needs: the GEMM weights per row, and which kernel runs each linear call."""

    def __init__(self, handle, cfg, weights: int, routes: Counter, dense: bool):
        self.handle, self.n_layers = handle, cfg.n_layers
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        self.weights = weights  # sum of N x K over every block's linears: a row's GEMM FLOPs are 2 x weights
        self.routes = routes    # {kernel: calls} of one forward, q/k/v and gate/up counting once each
        self.dense = dense      # some linear is dense bfloat16 (the compiled bf16 GEMM: BF16_GEMM_MAX_M rows at most)


def _linear(w):
    """A linear as the stack takes it (a PackedW8A8 handle or a bfloat16 tensor) and its kernel, or None."""
    from ..quant import QuantizedLinear

    if isinstance(w, QuantizedLinear):
        if w.kernel == "w8a8" and w.packed.handle is not None:
            return w.packed.handle, "w8a8"
        return None
    if isinstance(w, torch.Tensor) and w.dtype == torch.bfloat16 and w.device.type == "cpu" and w.stride(-1) == 1:
        return w, "gemm_bf16"
    return None


def build(cfg, layers) -> CompiledLayers | None:
    """The stack of these blocks, or None where some block has a linear the stack cannot run (fp8, dequantized or
    float32 weights, mixed kinds within q/k/v or gate/up) or no compiled build is there."""
    if _C is None or not layers or not hasattr(_C, "LayerStack"):
        return None
    items, routes, weights, dense = [], Counter(), 0, False
    for w in layers:
        if w.attn_norm.dtype != torch.bfloat16 or w.ff_norm.dtype != torch.bfloat16:
            return None
        lin = {f: _linear(getattr(w, f)) for f in ("q", "k", "v", "o", "gate", "up", "down")}
        if any(v is None for v in lin.values()):
            return None
        if len({lin[f][1] for f in ("q", "k", "v")}) != 1 or lin["gate"][1] != lin["up"][1]:
            return None
        for group in (("q",), ("o",), ("gate",), ("down",)):
            routes[lin[group[0]][1]] += 1
        dense = dense or any(v[1] == "gemm_bf16" for v in lin.values())
        weights += sum(getattr(w, f).shape[0] * getattr(w, f).shape[1] for f in lin)
        items.append((w.attn_norm, lin["q"][0], lin["k"][0], lin["v"][0], lin["o"][0], w.ff_norm, lin["gate"][0],
                      lin["up"][0], lin["down"][0]))
    handle = _C.LayerStack(items, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.d_model, cfg.mlp_hidden_size,
                           float(cfg.rms_norm_eps))
    return CompiledLayers(handle, cfg, weights, routes, dense)


def usable(stack: CompiledLayers | None, x: torch.Tensor, head_dim: int) -> bool:
    """Whether each op of model.py's layer loop would run the stack's kernel on this input x [B, L, d]."""
    if stack is None or x.dtype != torch.bfloat16 or x.dim() != 3 or x.numel() == 0 or stack_mode() == "off":
        return False
    if not use_cpu_kernel(x) or _cuda.emulating() or cpu_isa() not in ("avx512", "amx"):
        return False
    if stack.dense and x.shape[0] * x.shape[1] > ops.BF16_GEMM_MAX_M:
        return False
    return attention_runs_kernel(torch.bfloat16, head_dim)
