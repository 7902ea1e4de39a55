"""Fast-dLLM's decoders (NVlabs/Fast-dLLM llada/generate.py): confidence-threshold and factor parallel
decoding, prefix and dual KV caches, with the same tokens and forward counts, extended to batches with
padding (blocks advance together; a row whose block is finished transfers nothing until the others are).

Per block (semantics kept from Fast-dLLM):
* no cache: forward the canvas until the block holds no mask; candidates are the masked positions left
  of the block end;
* prefix / dual: one full forward at the block start fills the key/value cache and already transfers
  tokens (candidates: masked positions left of the block end); the following forwards run the columns
  from the block start to the end of the canvas (prefix) or the block alone (dual) against the cache,
  and only the block's masked positions are candidates.
The number transferred per step is the fixed schedule's (LLaDA's linear schedule), or every candidate
with confidence >= threshold and at least the most confident one, or Fast-dLLM's factor rule.
Confidences are float64 softmax probabilities, as Fast-dLLM computes them.
"""
from __future__ import annotations

import torch

from .. import ops
from ..model import KVCache
from ..errors import DecodingError
from .llada import end_rows, make_canvas, propose_cells, schedule_steps, transfer_schedule
from .noise import RowNoise

def factor_counts(conf: torch.Tensor, candidates: torch.Tensor, factor: float) -> torch.Tensor:
    """Per row: Fast-dLLM's factor rule, edge cases included.

    With the candidates' confidences sorted descending c_0 >= c_1 >= ... (N of them), find the first index
    i >= 1 with c_i < 1 - factor / (i + 1); transfer i tokens, except that a break at the last index or no
    break at all transfers all N (and N = 1 transfers 1).
    """
    out = torch.zeros(conf.shape[0], dtype=torch.long, device=conf.device)
    for r in range(conf.shape[0]):
        c = conf[r][candidates[r]].sort(descending=True).values
        n = c.numel()
        if n == 0:
            continue
        idx = torch.arange(n, device=c.device, dtype=c.dtype)
        thresh = 1 - factor / (idx + 2)
        thresh[0] = -1
        below = (c < thresh).nonzero()
        top = int(below[0]) if below.numel() else n - 1
        if top == 0 or top == n - 1:
            top += 1
        out[r] = top
    return out


@torch.inference_mode()
def generate_fast(model, ids: torch.Tensor, attn: torch.Tensor, *, gen_length: int, steps: int, block_length: int,
                  temperature: float, remasking: str, threshold: float | None, factor: float | None,
                  cache: str | None, noise: RowNoise, callback=None,
                  eos_ids: torch.Tensor | None = None):
    """Decode with Fast-dLLM's policies; returns (canvas, nfe)."""
    mask_id = model.mask_token_id
    canvas = make_canvas(ids, attn, gen_length, mask_id)
    x, P = canvas.tokens, canvas.prompt_length
    T = x.shape[1]
    key_mask = canvas.key_mask if canvas.padded else None
    positions = canvas.positions if canvas.padded else None
    tf = model.transformer
    steps_per_block = steps // (gen_length // block_length)
    nfe = 0

    def transfer(logits, lo, hi, k_fixed, candidates):
        """Choose and write tokens of canvas columns [lo, hi) from the logits of their candidates (their masks,
        the cells the forward gave logits for: Transformer.forward's logits_rows)."""
        nonlocal nfe
        window = x[:, lo:hi]
        x0, conf = propose_cells(logits, candidates, temperature, remasking, noise, canvas.positions[:, lo:hi],
                                 mask_id, conf_dtype=torch.float64)
        noise.advance(candidates.any(dim=1))
        k = None
        if factor is not None:
            k = factor_counts(conf, candidates, factor)
        elif threshold is None:
            k = k_fixed
        before = window.clone() if callback is not None else None
        # threshold: the selection applies Fast-dLLM's rule itself (every candidate >= threshold, at least one)
        ops.select_confident(conf.contiguous(), x0.contiguous(), None if k is None else k.contiguous(), window,
                             mask_id, threshold=threshold if k is None else None)
        nfe += 1
        if callback is not None:
            moved = torch.zeros_like(x, dtype=torch.bool)
            moved[:, lo:hi] = window != before
            callback(nfe - 1, x, moved)

    for nb in range(gen_length // block_length):
        start, end = P + nb * block_length, P + (nb + 1) * block_length
        # Masks inside the prompt (infilling) join the first block: its schedule counts them and its cached
        # steps run from the first of them. Without prompt masks this is Fast-dLLM's block exactly.
        open_cols = (x[:, :end] == mask_id).any(dim=0).nonzero()
        start = min(start, int(open_cols[0])) if open_cols.numel() else start
        masks = x[:, start:end] == mask_id
        n_steps = schedule_steps(masks, steps_per_block)
        schedule = transfer_schedule(masks, n_steps)
        i = 0
        kv = KVCache(len(tf.layers)) if cache is not None else None
        left = int(masks.sum())
        while left:
            # past the schedule (threshold/factor runs until the block is full): one per step
            k_fixed = schedule[:, i] if i < n_steps else torch.ones_like(schedule[:, 0])
            if kv is None or i == 0:
                # full canvas forward (fills the cache at a block start); candidates: masks left of the block end
                open_cols = (x[:, :end] == mask_id).any(dim=0).nonzero()
                lo = int(open_cols[0]) if open_cols.numel() else start
                cand = x[:, lo:end] == mask_id
                logits = tf.forward(x, key_mask, positions, lo, end, cache=kv, float_logits=False, logits_rows=cand)
                transfer(logits, lo, end, k_fixed, cand)
            else:
                stop = T if cache == "prefix" else end
                cand = x[:, start:end] == mask_id
                logits = tf.forward(x[:, start:stop], key_mask, positions, 0, end - start, cache=kv,
                                    cache_from=start, float_logits=False, logits_rows=cand)
                transfer(logits, start, end, k_fixed, cand)
            i += 1
            # Every forward fills at least one mask of each row that has one (the mask token is never a
            # prediction), so a block ends within its number of masks; anything else would spin forever.
            now = int((x[:, start:end] == mask_id).sum())
            if now >= left:
                raise DecodingError(f"block {nb} made no progress after {nfe} forwards ({now} masks left): the "
                                    f"model's logits give no usable token (NaN or -inf everywhere?)")
            left = now
        if eos_ids is not None and nb + 1 < gen_length // block_length and end_rows(x, P, end, eos_ids):
            break
    return canvas, nfe

