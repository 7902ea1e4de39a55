"""Plain-PyTorch reference of every op: short, obviously correct, the yardstick for the kernels.

`ILLADA_RT_KERNELS=reference` makes illada_rt.ops use these everywhere.
"""
from __future__ import annotations

import numpy as np
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


def select_confident(confidence: torch.Tensor, x0: torch.Tensor, k: torch.Tensor | None, tokens: torch.Tensor,
                     mask_id: int, transferred: torch.Tensor | None = None, threshold: float | None = None) -> None:
    """Per row b, write x0 into the k[b] most confident positions of `tokens` that hold mask_id (in place); with
    k=None and a threshold, into every such position with confidence >= threshold and at least the most confident
    one (Fast-dLLM's rule). A NaN confidence ranks above every number (torch.topk's order) and so counts as at or
    above the threshold: the transferred set is always the top of the ranking. Equal confidences go to the lower
    position (a stable sort; torch.topk leaves the order of ties unspecified)."""
    candidates = tokens == mask_id
    conf = torch.where(candidates, confidence, torch.full_like(confidence, float("-inf")))
    if threshold is not None:
        above = (((confidence >= threshold) | confidence.isnan()) & candidates).sum(1)  # NaN ranks first (topk)
        k = torch.where(candidates.any(1), above.clamp(min=1), torch.zeros_like(above))
    for b in range(tokens.shape[0]):
        kb = min(int(k[b]), int(candidates[b].sum()))
        if kb > 0:
            idx = torch.sort(conf[b], descending=True, stable=True).indices[:kb]
            tokens[b, idx] = x0[b, idx]
        if transferred is not None:
            transferred[b] = max(kb, 0)


def quantize_per_token_s8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x [M, K] float -> (q [M, K] int8, scale [M] float32): symmetric per row, scale = max|x| / 127 (1 for an
    all-zero row), q = round-half-even(x / scale) clamped to [-127, 127]."""
    xf = x.float()
    amax = xf.abs().amax(dim=-1, keepdim=True) if xf.shape[-1] else torch.zeros(xf.shape[0], 1)
    scale = torch.where(amax > 0, amax / 127, torch.ones_like(amax))
    q = torch.round(xf / scale).clamp_(-127, 127).to(torch.int8)
    return q, scale.squeeze(-1)


def int_matmul_nt(a: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Exact int32 a [M, K] int8 . w [N, K]^T int8 (float64 holds every partial sum exactly for K < 2^37)."""
    return (a.double() @ w.double().T).to(torch.int32)


def linear_w8a8(x: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor,
                out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """W8A8 linear: x [..., K] float, weight [N, K] int8, weight_scale [N] float32 (per output channel).
    Activations quantized per token; exact int32 accumulation; out = float(acc) * x_scale * w_scale."""
    K = x.shape[-1]
    q, xs = quantize_per_token_s8(x.reshape(-1, K))
    acc = int_matmul_nt(q, weight)
    out = acc.float() * xs[:, None] * weight_scale.float()[None, :]
    return out.to(out_dtype or x.dtype).reshape(*x.shape[:-1], weight.shape[0])


def argmax_ignoring_nan(scores: torch.Tensor) -> torch.Tensor:
    """argmax over the last dimension where a NaN never wins (the first index on ties; 0 when every score is NaN):
    the rule of every sampling kernel. torch.argmax alone would pick a NaN."""
    return torch.argmax(torch.where(scores.isnan(), float("-inf"), scores), dim=-1)


def sample_greedy(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """logits [..., V] -> (token = argmax, confidence = its softmax probability, margin = p1 - p2, entropy in
    nats), computed in float32 (float64 for float64 logits). A NaN logit is never the token; a row whose softmax is
    undefined (a NaN or +inf logit, or every logit -inf) has NaN confidence, margin and entropy, as torch.softmax."""
    p = F.softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=-1)
    token = argmax_ignoring_nan(logits)
    conf = torch.gather(p, -1, token[..., None]).squeeze(-1)
    top = torch.topk(p, min(2, p.shape[-1]), dim=-1).values
    margin = top[..., 0] - (top[..., 1] if top.shape[-1] > 1 else 0)
    entropy = torch.special.entr(p).sum(-1)
    return token, conf, margin, entropy


def linear_fp8w(x: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor,
                out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """FP8-weight linear: x [..., K] float, weight [N, K] float8_e4m3fn, weight_scale [N] per output channel;
    (x . weight^T) in fp32, then scaled per channel."""
    out = (x.float() @ weight.float().T) * weight_scale.float()
    return out.to(out_dtype or x.dtype)


def philox4x32_10(counter: np.ndarray, key: tuple[int, int]) -> np.ndarray:
    """Philox4x32-10 (Salmon et al., SC'11) over a batch of counters: counter uint32 [..., 4] -> uint32 [..., 4].
    The CUDA sampling kernel draws its Gumbel noise with the same function."""
    c = counter.astype(np.uint64)
    k0, k1 = np.uint64(key[0] & 0xFFFFFFFF), np.uint64(key[1] & 0xFFFFFFFF)
    mask = np.uint64(0xFFFFFFFF)
    for _ in range(10):
        p0 = np.uint64(0xD2511F53) * c[..., 0]
        p1 = np.uint64(0xCD9E8D57) * c[..., 2]
        c = np.stack([((p1 >> np.uint64(32)) ^ c[..., 1] ^ k0) & mask, p1 & mask,
                      ((p0 >> np.uint64(32)) ^ c[..., 3] ^ k1) & mask, p0 & mask], axis=-1)
        k0 = (k0 + np.uint64(0x9E3779B9)) & mask
        k1 = (k1 + np.uint64(0xBB67AE85)) & mask
    return c.astype(np.uint32)


def _mulhilo32(a: torch.Tensor, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(hi, lo) 32-bit words of m * a for int64 tensors holding 32-bit values, without overflowing int64: split the
    product at bit 16 (m * a = h1 2^32 + h0 2^16 + p_lo with every part below 2^49)."""
    p_lo = (a & 0xFFFF) * m
    p_hi = (a >> 16) * m
    t = ((p_hi & 0xFFFF) << 16) + p_lo
    return (p_hi >> 16) + (t >> 32), t & 0xFFFFFFFF


def philox4x32_10_torch(c0, c1, c2, c3, key: tuple[int, int]) -> tuple[torch.Tensor, ...]:
    """philox4x32_10 on int64 tensors (32-bit values, broadcastable), on any device: the four output words."""
    k0, k1 = key[0] & 0xFFFFFFFF, key[1] & 0xFFFFFFFF
    for _ in range(10):
        hi0, lo0 = _mulhilo32(c0, 0xD2511F53)
        hi1, lo1 = _mulhilo32(c2, 0xCD9E8D57)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0, k1 = (k0 + 0x9E3779B9) & 0xFFFFFFFF, (k1 + 0xBB67AE85) & 0xFFFFFFFF
    return c0, c1, c2, c3


def gumbel_noise(rows: int, vocab: int, seed: int, offset: int = 0, row_ids=None,
                 device: torch.device | str = "cpu") -> torch.Tensor:
    """The sampling kernels' Gumbel noise, float32 [rows, vocab] on `device`: for row r (counter id row_ids[r],
    default r) and index v, word v % 4 of Philox(counter = (v // 4, id & 0xffffffff, offset & 0xffffffff,
    (offset >> 32) ^ (id >> 32)), key = (seed & 0xffffffff, seed >> 32)), mapped to u = ((w >> 9) + 0.5) / 2^23 and
    then g = -log(-log(u)) in float32."""
    seed, offset = seed & (2**64 - 1), offset & (2**64 - 1)
    ids = (torch.arange(rows, dtype=torch.int64) if row_ids is None
           else torch.as_tensor(np.asarray(row_ids, dtype=np.int64)))
    ids = ids.to(device)
    n4 = (vocab + 3) // 4
    c0 = torch.arange(n4, dtype=torch.int64, device=device)[None, :]
    c1 = (ids & 0xFFFFFFFF)[:, None]
    c2 = torch.full((1, 1), offset & 0xFFFFFFFF, dtype=torch.int64, device=device)
    c3 = (((offset >> 32) & 0xFFFFFFFF) ^ ((ids >> 32) & 0xFFFFFFFF))[:, None]
    words = torch.stack(philox4x32_10_torch(c0, c1, c2, c3, (seed, seed >> 32)), dim=-1)
    words = words.reshape(rows, n4 * 4)[:, :vocab]
    u = ((words >> 9).to(torch.float32) + 0.5) * (1.0 / 8388608.0)  # exact: u in [2^-24, 1 - 2^-24]
    return -torch.log(-torch.log(u))


def sample_gumbel(logits: torch.Tensor, temperature: float, seed: int, offset: int = 0, row_ids=None) -> torch.Tensor:
    """Gumbel-max over rows of logits [R, V]: argmax(logits + temperature * gumbel_noise(...)), the CUDA kernel's
    rule (LLaDA's add_gumbel_noise, exp(l) / (-log u)^T, has the same argmax)."""
    g = gumbel_noise(logits.shape[0], logits.shape[1], seed, offset, row_ids, device=logits.device)
    return argmax_ignoring_nan(logits.float() + temperature * g)


def sample_tokens(logits: torch.Tensor, conf_dtype: torch.dtype = torch.float32, temperature: float = 0.0,
                  seed: int = 0, offset: int = 0, row_ids=None) -> tuple[torch.Tensor, torch.Tensor]:
    """logits [R, V] -> (token, confidence): the argmax (temperature 0) or sample_gumbel's Gumbel-max, and the
    chosen token's softmax probability in conf_dtype (float32 softmax, or float64)."""
    token = (argmax_ignoring_nan(logits) if temperature == 0
             else sample_gumbel(logits, temperature, seed, offset, row_ids))
    p = F.softmax(logits.to(torch.promote_types(logits.dtype, conf_dtype)), dim=-1).to(conf_dtype)
    return token, torch.gather(p, -1, token[..., None]).squeeze(-1)
