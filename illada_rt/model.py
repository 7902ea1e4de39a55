"""The transformer forward: embedding, pre-norm bidirectional blocks, final norm, LM head.

Both on-disk layouts map onto the same math (LLaDA's LLaDALlamaBlock):
    h = x + o(Attn(RoPE(q(n)), RoPE(k(n)), v(n))),   n = RMSNorm_attn(x)
    y = h + down(silu(gate(m)) * up(m)),              m = RMSNorm_ff(h)
    logits = head(RMSNorm_final(y))                   (head = embedding when tied; no logit scaling)
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from . import ops
from .checkpoint import WeightStore, check_layout_matches, global_names, layer_names, layer_shapes
from .config import ModelConfig
from .quant import QuantizedLinear, load_linear, read_scheme

LINEARS = ("q", "k", "v", "o", "gate", "up", "down")


def linear(x: torch.Tensor, w) -> torch.Tensor:
    """x @ w.T for a dense weight, or the quantized layer's own GEMM."""
    return w(x) if isinstance(w, QuantizedLinear) else F.linear(x, w)


class KVCache:
    """Keys (after RoPE) and values of every layer for a whole canvas: [B, n_kv_heads, T, head_dim] each.

    Filled by a full forward (Transformer.forward(..., cache=c)); a later forward over columns
    [cache_from, cache_from + L) writes its fresh keys/values into those slots and attends to all T slots.
    That one mechanism gives Fast-dLLM's prefix cache (input = block start .. end of canvas) and its dual
    cache (input = the block). Caching after RoPE gives the same numbers as rotating cached raw keys on
    every call: the rotation of a key depends only on its own position.
    """

    def __init__(self, n_layers: int):
        self.k: list[torch.Tensor | None] = [None] * n_layers
        self.v: list[torch.Tensor | None] = [None] * n_layers

    @property
    def length(self) -> int:
        return 0 if self.k[0] is None else self.k[0].shape[2]


@dataclass
class LayerWeights:  # linears are dense tensors or QuantizedLinear (quantized checkpoints)
    attn_norm: torch.Tensor
    q: torch.Tensor | QuantizedLinear
    k: torch.Tensor | QuantizedLinear
    v: torch.Tensor | QuantizedLinear
    o: torch.Tensor | QuantizedLinear
    ff_norm: torch.Tensor
    gate: torch.Tensor | QuantizedLinear
    up: torch.Tensor | QuantizedLinear
    down: torch.Tensor | QuantizedLinear


class Transformer:
    """Weights on one device in one compute dtype, and the forward pass over them."""

    def __init__(self, cfg: ModelConfig, store: WeightStore, device: torch.device, dtype: torch.dtype):
        self.cfg, self.device, self.dtype = cfg, device, dtype
        self.store = store  # keeps the memory maps open for the tensors that view them
        check_layout_matches(cfg, store)
        g = global_names(cfg)
        d, e = cfg.d_model, cfg.embedding_size

        self.scheme = read_scheme(cfg.raw)

        def fetch(name, shape):
            # Memory-mapped on disk; .to() copies only when the device or dtype differs (layer by layer).
            return store.get(name, shape).to(device=device, dtype=dtype)

        def fetch_linear(name, shape):
            return load_linear(store, name, shape, self.scheme, device, dtype)

        self.embed = fetch(g["embed"], (e, d))
        shapes = layer_shapes(cfg)
        self.layers = []
        for i in range(cfg.n_layers):
            names = layer_names(cfg, i)
            self.layers.append(LayerWeights(**{k: (fetch_linear if k in LINEARS else fetch)(names[k], shapes[k])
                                               for k in shapes}))
        self.final_norm = fetch(g["final_norm"], (d,))
        self.head = self.embed if cfg.tied_embeddings else fetch_linear(g["head"], (e, d))

    @torch.inference_mode()
    def forward(self, ids: torch.Tensor, key_mask: torch.Tensor | None = None,
                positions: torch.Tensor | None = None, logits_from: int = 0,
                logits_to: int | None = None, cache: KVCache | None = None,
                cache_from: int | None = None) -> torch.Tensor:
        """ids [B, L] int64 -> float32 logits [B, logits_to - logits_from, embedding_size].

        key_mask [B, T] bool: False marks padding keys nobody may attend to. positions [B, T] or [T]:
        RoPE positions of the whole canvas (default 0..T-1). Only rows logits_from:logits_to of the input
        go through the final norm and the LM head, which is where most of a small block's FLOPs would
        otherwise go. With `cache` and cache_from=None the input is the whole canvas (T = L) and its
        keys/values fill the cache; with cache_from=s the input is canvas columns [s, s + L), which
        overwrite their cache slots, and attention runs over all T cached slots.
        """
        cfg = self.cfg
        B, L = ids.shape
        T = L if cache_from is None else cache.length
        if positions is None:
            positions = torch.arange(T, device=ids.device)
        if cache_from is not None:
            if not 0 <= cache_from <= T - L:
                raise ValueError(f"cache_from={cache_from} with {L} columns does not fit a cache of {T}")
            positions = positions[..., cache_from:cache_from + L]
        cos, sin = ops.rope_cos_sin(positions, cfg.head_dim, cfg.rope_theta)
        h = F.embedding(ids, self.embed)
        H, Hkv, D = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        for i, w in enumerate(self.layers):
            n = ops.rms_norm(h, w.attn_norm, cfg.rms_norm_eps)
            q = linear(n, w.q).view(B, L, H, D).transpose(1, 2)
            k = linear(n, w.k).view(B, L, Hkv, D).transpose(1, 2)
            v = linear(n, w.v).view(B, L, Hkv, D).transpose(1, 2)
            q = ops.apply_rope(q, cos, sin)
            k = ops.apply_rope(k, cos, sin)
            if cache is not None:
                if cache_from is None:
                    cache.k[i], cache.v[i] = k, v
                else:
                    cache.k[i][:, :, cache_from:cache_from + L] = k
                    cache.v[i][:, :, cache_from:cache_from + L] = v
                    k, v = cache.k[i], cache.v[i]
            a = ops.attention(q, k, v, key_mask).transpose(1, 2).reshape(B, L, H * D)
            h = h + linear(a, w.o)
            m = ops.rms_norm(h, w.ff_norm, cfg.rms_norm_eps)
            h = h + linear(ops.swiglu(linear(m, w.gate), linear(m, w.up)), w.down)
        h = h[:, logits_from:logits_to]
        h = ops.rms_norm(h, self.final_norm, cfg.rms_norm_eps)
        return linear(h, self.head).float()
