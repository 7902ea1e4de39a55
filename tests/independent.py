"""Independent plain-PyTorch implementations the tests compare against.

Written separately from illada_rt (own weight loading, own name mapping, explicit einsum attention,
RoPE as pairwise rotation, float64 throughout), so a shared mistake is unlikely.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file


def load_weights(directory: Path):
    directory = Path(directory)
    cfg = json.loads((directory / "config.json").read_text())
    tensors = {}
    for f in sorted(directory.glob("*.safetensors")):
        tensors.update({k: v.to(torch.float64) for k, v in load_file(str(f)).items()})
    if "d_model" in cfg:
        dims = dict(d=cfg["d_model"], h=cfg["n_heads"], kv=cfg.get("n_kv_heads") or cfg["n_heads"],
                    n=cfg["n_layers"], theta=cfg["rope_theta"], eps=cfg["rms_norm_eps"])
        P = "model.transformer."
        layers = [{k: tensors[f"{P}blocks.{i}.{v}.weight"] for k, v in
                   dict(an="attn_norm", q="q_proj", k="k_proj", v="v_proj", o="attn_out", fn="ff_norm",
                        g="ff_proj", u="up_proj", dn="ff_out").items()} for i in range(dims["n"])]
        emb, norm = tensors[P + "wte.weight"], tensors[P + "ln_f.weight"]
        head = emb if cfg.get("weight_tying") else tensors[P + "ff_out.weight"]
    else:
        dims = dict(d=cfg["hidden_size"], h=cfg["num_attention_heads"], kv=cfg["num_key_value_heads"],
                    n=cfg["num_hidden_layers"], theta=cfg["rope_theta"], eps=cfg["rms_norm_eps"])
        layers = [{k: tensors[f"model.layers.{i}.{v}.weight"] for k, v in
                   dict(an="input_layernorm", q="self_attn.q_proj", k="self_attn.k_proj", v="self_attn.v_proj",
                        o="self_attn.o_proj", fn="post_attention_layernorm", g="mlp.gate_proj",
                        u="mlp.up_proj", dn="mlp.down_proj").items()} for i in range(dims["n"])]
        emb, norm = tensors["model.embed_tokens.weight"], tensors["model.norm.weight"]
        head = emb if cfg.get("tie_word_embeddings") else tensors["lm_head.weight"]
    return dims, layers, emb, norm, head


def _rms(x, w, eps):
    return w * (x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps))


def _rope(x, pos, theta):
    # x: [B, T, H, D]; pairs (i, i + D/2) rotated by angle pos * theta^(-2i/D)
    D = x.shape[-1]
    half = D // 2
    i = torch.arange(half, dtype=torch.float64)
    ang = pos.to(torch.float64)[..., None] * theta ** (-2.0 * i / D)      # [B, T, half]
    c, s = torch.cos(ang)[:, :, None, :], torch.sin(ang)[:, :, None, :]
    a, b = x[..., :half], x[..., half:]
    return torch.cat([a * c - b * s, b * c + a * s], dim=-1)


def forward(weights, ids: torch.Tensor, key_mask: torch.Tensor | None = None,
            positions: torch.Tensor | None = None) -> torch.Tensor:
    """float64 logits [B, T, V] of the bidirectional transformer."""
    return forward_cached(weights, ids, key_mask, positions)[0]


def forward_cached(weights, ids, key_mask=None, positions=None, cache=None, lo=0):
    """Like forward, with an explicit key/value cache.

    cache=None: ids is the whole canvas; returns (logits [B, T, V], per-layer (k, v) of every position).
    cache=list of (k, v) [B, T, KV, D]: ids are canvas columns [lo, lo + L); at every layer their fresh
    keys/values replace those slots of the cached ones and attention runs over all T slots. Returns
    (logits [B, L, V], the updated cache).
    """
    dims, layers, emb, norm, head = weights
    B, L = ids.shape
    H, KV, D = dims["h"], dims["kv"], dims["d"] // dims["h"]
    T = L if cache is None else cache[0][0].shape[1]
    if positions is None:
        positions = torch.arange(T).expand(B, T)
    pos = positions[:, lo:lo + L]
    x = emb[ids]
    new_cache = []
    for li, Lw in enumerate(layers):
        n = _rms(x, Lw["an"], dims["eps"])
        q = _rope((n @ Lw["q"].T).view(B, L, H, D), pos, dims["theta"])
        k = _rope((n @ Lw["k"].T).view(B, L, KV, D), pos, dims["theta"])
        v = (n @ Lw["v"].T).view(B, L, KV, D)
        if cache is not None:
            kc, vc = cache[li][0].clone(), cache[li][1].clone()
            kc[:, lo:lo + L], vc[:, lo:lo + L] = k, v
            k, v = kc, vc
        new_cache.append((k, v))
        kv_of = torch.tensor([j * KV // H for j in range(H)])   # query head j -> kv head j // (H/KV)
        kk, vv = k[:, :, kv_of], v[:, :, kv_of]
        s = torch.einsum("bqhd,bkhd->bhqk", q, kk) / math.sqrt(D)
        if key_mask is not None:
            s = s.masked_fill(~key_mask[:, None, None, :], float("-inf"))
        a = torch.einsum("bhqk,bkhd->bqhd", torch.softmax(s, -1), vv).reshape(B, L, H * D)
        x = x + a @ Lw["o"].T
        m = _rms(x, Lw["fn"], dims["eps"])
        g = m @ Lw["g"].T
        x = x + ((g / (1 + torch.exp(-g))) * (m @ Lw["u"].T)) @ Lw["dn"].T
    return _rms(x, norm, dims["eps"]) @ head.T, new_cache


def reference_generate(logits_fn, prompt: torch.Tensor, *, steps, gen_length, block_length, mask_id,
                       cfg_scale=0.0, attention_mask=None, count_prompt_masks=False):
    """LLaDA's generate() semantics at temperature 0, step by step on the full canvas.

    logits_fn(x, attention_mask) -> [B, T, V] logits of the whole canvas. Returns (x, forward calls).
    count_prompt_masks: a block's schedule counts every mask left of its end, not only its own (illada-rt's
    infilling rule; the reference counts the block's masks only, so prompt masks take generation slots).
    """
    B, P = prompt.shape
    x = torch.full((B, P + gen_length), mask_id, dtype=torch.long)
    x[:, :P] = prompt
    if attention_mask is not None:
        attention_mask = torch.cat([attention_mask, torch.ones(B, gen_length, dtype=attention_mask.dtype)], 1)
    prompt_index = x != mask_id
    assert gen_length % block_length == 0
    num_blocks = gen_length // block_length
    assert steps % num_blocks == 0
    steps = steps // num_blocks
    calls = 0
    for nb in range(num_blocks):
        lo = 0 if count_prompt_masks else P + nb * block_length
        bm = x[:, lo: P + (nb + 1) * block_length] == mask_id
        cnt = bm.sum(1)
        sched = torch.zeros(B, steps, dtype=torch.long) + (cnt // steps)[:, None]
        for r in range(B):
            sched[r, : int(cnt[r] % steps)] += 1
        for i in range(steps):
            mask_index = x == mask_id
            if cfg_scale > 0:
                un_x = x.clone()
                un_x[prompt_index] = mask_id
                am = None if attention_mask is None else torch.cat([attention_mask, attention_mask])
                both = logits_fn(torch.cat([x, un_x]), am)
                cond, un = both[:B], both[B:]
                logits = un + (cfg_scale + 1) * (cond - un)
            else:
                logits = logits_fn(x, attention_mask)
            calls += 1
            x0 = logits.argmax(-1)
            p = torch.softmax(logits, -1)
            x0_p = torch.gather(p, -1, x0[..., None]).squeeze(-1)
            x0_p[:, P + (nb + 1) * block_length:] = -np.inf
            x0 = torch.where(mask_index, x0, x)
            conf = torch.where(mask_index, x0_p, torch.tensor(-np.inf, dtype=x0_p.dtype))
            transfer = torch.zeros_like(x0, dtype=torch.bool)
            for r in range(B):
                _, idx = torch.topk(conf[r], k=int(sched[r, i]))
                transfer[r, idx] = True
            x[transfer] = x0[transfer]
    return x, calls


def fastdllm_factor_count(sorted_conf, factor):
    """How many tokens Fast-dLLM's get_transfer_index_dynamic commits, as its loop is written."""
    threshs = [1 - factor / (n + 1) for n in range(1, len(sorted_conf) + 1)]
    threshs[0] = -1
    top_i = 0
    for top_i in range(len(threshs)):
        if sorted_conf[top_i] < threshs[top_i]:
            break
    if top_i == 0 or top_i == len(threshs) - 1:
        top_i += 1
    return top_i


def _fastdllm_transfer(logits, mask_index, x, k_fixed, threshold, factor):
    """Fast-dLLM's get_transfer_index / get_transfer_index_dynamic at temperature 0, row by row."""
    x0 = logits.argmax(-1)
    p = torch.softmax(logits.to(torch.float64), -1)
    x0_p = torch.gather(p, -1, x0[..., None]).squeeze(-1)
    x0 = torch.where(mask_index, x0, x)
    conf = torch.where(mask_index, x0_p, torch.tensor(-np.inf, dtype=torch.float64))
    transfer = torch.zeros_like(x0, dtype=torch.bool)
    for j in range(conf.shape[0]):
        n_masked = int(mask_index[j].sum())
        if factor is not None:
            if n_masked == 0:
                continue
            sorted_conf = torch.sort(conf[j][mask_index[j]], descending=True)[0]
            _, idx = torch.topk(conf[j], k=fastdllm_factor_count(sorted_conf, factor))
            transfer[j, idx] = True
        elif threshold is not None:
            _, idx = torch.topk(conf[j], k=n_masked)
            transfer[j, idx] = True
            for q in range(1, n_masked):
                if conf[j, idx[q]] < threshold:
                    transfer[j, idx[q]] = False
        else:
            _, idx = torch.topk(conf[j], k=int(k_fixed[j]))
            transfer[j, idx] = True
    return x0, transfer


def fastdllm_generate(weights, prompt, *, steps, gen_length, block_length, mask_id, cache=None, threshold=None,
                      factor=None):
    """Fast-dLLM's generate / generate_with_prefix_cache / generate_with_dual_cache at temperature 0, step by
    step, on the float64 model above (cache=None, "prefix" or "dual"). Returns (x, nfe)."""
    B, P = prompt.shape
    x = torch.full((B, P + gen_length), mask_id, dtype=torch.long)
    x[:, :P] = prompt
    T = x.shape[1]
    num_blocks = gen_length // block_length
    spb = steps // num_blocks
    nfe = 0
    for nb in range(num_blocks):
        start, end = P + nb * block_length, P + (nb + 1) * block_length
        cnt = (x[:, start:end] == mask_id).sum(1)
        sched = torch.zeros(B, spb, dtype=torch.long) + (cnt // spb)[:, None]
        for r in range(B):
            sched[r, : int(cnt[r] % spb)] += 1
        i = 0
        kv = None
        while (x[:, start:end] == mask_id).any():
            nfe += 1
            if cache is None or i == 0:
                logits, kv = forward_cached(weights, x)
                mask_index = x == mask_id
                mask_index[:, end:] = False
                x0, tr = _fastdllm_transfer(logits, mask_index, x, sched[:, min(i, spb - 1)], threshold, factor)
                x[tr] = x0[tr]
            else:
                stop = T if cache == "prefix" else end
                # fresh keys/values of the input columns replace their slots: for the prefix cache that is
                # everything from the block start on (Fast-dLLM's truncate-and-append), for dual the block
                logits, _ = forward_cached(weights, x[:, start:stop], cache=kv, lo=start)
                seg = x[:, start:stop]
                mask_index = seg == mask_id
                mask_index[:, block_length:] = False
                x0, tr = _fastdllm_transfer(logits, mask_index, seg, sched[:, min(i, spb - 1)], threshold, factor)
                seg[tr] = x0[tr]
            i += 1
    return x, nfe


def fastdllm_threshold_select(confidence: torch.Tensor, x0: torch.Tensor, tokens: torch.Tensor, mask_id: int,
                              threshold: float) -> torch.Tensor:
    """Fast-dLLM's threshold transfer as get_transfer_index writes it, per row (in place): sort the masked
    positions by confidence, transfer the first always and each following one whose confidence is >= threshold.
    Returns the transfer mask [B, L]."""
    take = torch.zeros(tokens.shape, dtype=torch.bool, device=tokens.device)
    for b in range(tokens.shape[0]):
        cand = tokens[b] == mask_id
        n = int(cand.sum())
        if n == 0:
            continue
        conf = torch.where(cand, confidence[b].double(), torch.full_like(confidence[b], float("-inf"), dtype=torch.float64))
        order = torch.topk(conf, n).indices
        keep = conf[order] >= threshold
        keep[0] = True
        take[b, order[keep]] = True
    tokens[take] = x0[take]
    return take
