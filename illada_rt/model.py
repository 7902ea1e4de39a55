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


@dataclass
class LayerWeights:
    attn_norm: torch.Tensor
    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    o: torch.Tensor
    ff_norm: torch.Tensor
    gate: torch.Tensor
    up: torch.Tensor
    down: torch.Tensor


class Transformer:
    """Weights on one device in one compute dtype, and the forward pass over them."""

    def __init__(self, cfg: ModelConfig, store: WeightStore, device: torch.device, dtype: torch.dtype):
        self.cfg, self.device, self.dtype = cfg, device, dtype
        self.store = store  # keeps the memory maps open for the tensors that view them
        check_layout_matches(cfg, store)
        g = global_names(cfg)
        d, e = cfg.d_model, cfg.embedding_size

        def fetch(name, shape):
            # Memory-mapped on disk; .to() copies only when the device or dtype differs (layer by layer).
            return store.get(name, shape).to(device=device, dtype=dtype)

        self.embed = fetch(g["embed"], (e, d))
        shapes = layer_shapes(cfg)
        self.layers = []
        for i in range(cfg.n_layers):
            names = layer_names(cfg, i)
            self.layers.append(LayerWeights(**{k: fetch(names[k], shapes[k]) for k in shapes}))
        self.final_norm = fetch(g["final_norm"], (d,))
        self.head = self.embed if cfg.tied_embeddings else fetch(g["head"], (e, d))

    @torch.inference_mode()
    def forward(self, ids: torch.Tensor, key_mask: torch.Tensor | None = None,
                positions: torch.Tensor | None = None, logits_from: int = 0,
                logits_to: int | None = None) -> torch.Tensor:
        """ids [B, T] int64 -> float32 logits [B, logits_to - logits_from, embedding_size].

        key_mask [B, T] bool: False marks padding keys nobody may attend to. positions [B, T] or [T]:
        RoPE positions (default 0..T-1). Only rows logits_from:logits_to go through the final norm and
        the LM head, which is where most of a small block's FLOPs would otherwise go.
        """
        cfg = self.cfg
        B, T = ids.shape
        if positions is None:
            positions = torch.arange(T, device=ids.device)
        cos, sin = ops.rope_cos_sin(positions, cfg.head_dim, cfg.rope_theta)
        h = F.embedding(ids, self.embed)
        H, Hkv, D = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        for w in self.layers:
            n = ops.rms_norm(h, w.attn_norm, cfg.rms_norm_eps)
            q = F.linear(n, w.q).view(B, T, H, D).transpose(1, 2)
            k = F.linear(n, w.k).view(B, T, Hkv, D).transpose(1, 2)
            v = F.linear(n, w.v).view(B, T, Hkv, D).transpose(1, 2)
            q = ops.apply_rope(q, cos, sin)
            k = ops.apply_rope(k, cos, sin)
            a = ops.attention(q, k, v, key_mask).transpose(1, 2).reshape(B, T, H * D)
            h = h + F.linear(a, w.o)
            m = ops.rms_norm(h, w.ff_norm, cfg.rms_norm_eps)
            h = h + F.linear(ops.swiglu(F.linear(m, w.gate), F.linear(m, w.up)), w.down)
        h = h[:, logits_from:logits_to]
        h = ops.rms_norm(h, self.final_norm, cfg.rms_norm_eps)
        return F.linear(h, self.head).float()
