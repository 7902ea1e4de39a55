"""iLLaDA's variable-length generation (ML-GSAI/LLaDA generate.py var_generate), batched.

The canvas holds no future masks: each round appends one block of masks to every unfinished row and
decodes it with the chosen policy (reference schedule, threshold/factor, prefix/dual cache), exactly as
a fixed-length decode of that one block after the text so far. A row finishes when its new block holds
an end-of-sequence id or its text contains a stop string, or when max_new_tokens is reached; finished
rows leave the batch, so they stop costing compute. Tokens after a row's first end-of-sequence id are
dropped.
"""
from __future__ import annotations

import torch

from .fast import generate_fast
from .llada import generate_llada
from .noise import RowNoise


@torch.inference_mode()
def generate_varlen(model, ids: torch.Tensor, attn: torch.Tensor, *, max_new_tokens: int, steps: int,
                    block_length: int, temperature: float, remasking: str, cfg_scale: float,
                    threshold: float | None, factor: float | None, cache: str | None,
                    seeds: list[int], stop_ids: set[int], stop_strings: list[str],
                    callback=None):
    """Returns (tokens [B, P + n] right-padded with pad ids, valid mask [B, P + n], lengths [B], nfe).

    seeds: one sampling seed per row (decoding/noise.py); each round keys its noise by the new block's positions."""
    B, P = ids.shape
    rows = [ids[r][attn[r]].tolist() for r in range(B)]     # unpadded prompts
    out: list[list[int]] = [[] for _ in range(B)]
    active = list(range(B))
    nfe = 0
    fast = threshold is not None or factor is not None or cache is not None
    tok = model.tokenizer
    while active:
        done_len = len(out[active[0]])
        blk = min(block_length, max_new_tokens - done_len)
        prompts = [rows[r] + out[r] for r in active]
        width = max(len(p) for p in prompts)
        cur = torch.full((len(active), width), model.pad_token_id, dtype=torch.long, device=ids.device)
        cur_attn = torch.zeros((len(active), width), dtype=torch.bool, device=ids.device)
        for i, p in enumerate(prompts):
            if p:
                cur[i, width - len(p):] = torch.tensor(p, dtype=torch.long)
                cur_attn[i, width - len(p):] = True
        def cb(step, tokens, transferred, _offset=nfe):  # the canvas of this round's unfinished rows
            callback(_offset + step, tokens, transferred)
        kw = dict(gen_length=blk, steps=steps, block_length=blk, temperature=temperature,
                  remasking=remasking, noise=RowNoise([seeds[r] for r in active]),
                  callback=cb if callback is not None else None)
        if fast:
            canvas, n = generate_fast(model, cur, cur_attn, threshold=threshold, factor=factor, cache=cache, **kw)
        else:
            canvas, n = generate_llada(model, cur, cur_attn, cfg_scale=cfg_scale, **kw)
        nfe += n
        new = canvas.tokens[:, width:].tolist()
        still = []
        for i, r in enumerate(active):
            if rows[r]:  # masks inside the prompt (infilling) were filled in the first round
                rows[r] = canvas.tokens[i, width - len(prompts[i]):width - len(out[r])].tolist()
            block = new[i]
            hit = next((j for j, t in enumerate(block) if t in stop_ids), None)
            out[r] += block if hit is None else block[:hit + 1]
            finished = hit is not None or len(out[r]) >= max_new_tokens
            if not finished and stop_strings and tok is not None:
                text = tok.decode(out[r])
                finished = any(s in text for s in stop_strings)
            if not finished:
                still.append(r)
        active = still
    n = max(len(o) for o in out)
    tokens = torch.full((B, P + n), model.pad_token_id, dtype=torch.long, device=ids.device)
    valid = torch.zeros((B, P + n), dtype=torch.bool, device=ids.device)
    tokens[:, :P] = ids
    valid[:, :P] = attn
    for r, o in enumerate(out):
        tokens[r, :P][attn[r]] = torch.tensor(rows[r], dtype=torch.long, device=ids.device)
        tokens[r, P:P + len(o)] = torch.tensor(o, dtype=torch.long)
        valid[r, P:P + len(o)] = True
    return tokens, valid, torch.tensor([len(o) for o in out]), nfe
