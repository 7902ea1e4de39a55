"""Plain-PyTorch reference of every op: short, obviously correct, the yardstick for the kernels.

`ILLADA_RT_KERNELS=reference` makes illada_rt.ops use these everywhere.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """LLaDA/OLMo RMSNorm: normalise in fp32, cast back to x's dtype, then scale by the weight."""
    xf = x.float()
    y = (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)
    return weight * y


def rope_cos_sin(positions: torch.Tensor, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables [..., T, head_dim] in fp32 for rotate-half RoPE at the given absolute positions."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=positions.device)
                                / head_dim))
    freqs = positions.to(torch.float32)[..., None] * inv_freq
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: [B, H, T, D]; cos/sin: [B, T, D] (or [T, D]). Rotate-half layout, computed in fp32."""
    if cos.dim() == 3:
        cos, sin = cos[:, None], sin[:, None]
    xf = x.float()
    half = xf.shape[-1] // 2
    rotated = torch.cat((-xf[..., half:], xf[..., :half]), dim=-1)
    return (xf * cos + rotated * sin).to(x.dtype)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
              key_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Bidirectional attention. q: [B, Hq, Tq, D]; k, v: [B, Hkv, Tk, D]; key_mask: [B, Tk] bool (True = attend).

    GQA: query head j uses kv head j // (Hq / Hkv). Scale 1/sqrt(D). No causal mask.
    """
    group = q.shape[1] // k.shape[1]
    if group > 1:
        k = k.repeat_interleave(group, dim=1)
        v = v.repeat_interleave(group, dim=1)
    mask = None if key_mask is None else key_mask[:, None, None, :]
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=False)


def swiglu(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    return F.silu(gate) * up


def select_confident(confidence: torch.Tensor, x0: torch.Tensor, k: torch.Tensor, tokens: torch.Tensor,
                     mask_id: int, transferred: torch.Tensor | None = None) -> None:
    """Per row b, write x0 into the k[b] most confident positions of `tokens` that hold mask_id (in place)."""
    candidates = tokens == mask_id
    conf = torch.where(candidates, confidence, torch.full_like(confidence, float("-inf")))
    for b in range(tokens.shape[0]):
        kb = min(int(k[b]), int(candidates[b].sum()))
        if kb > 0:
            idx = torch.topk(conf[b], kb).indices
            tokens[b, idx] = x0[b, idx]
        if transferred is not None:
            transferred[b] = max(kb, 0)
