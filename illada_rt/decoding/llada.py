"""LLaDA's reference sampler (ML-GSAI/LLaDA generate.py), step for step, with two exact improvements:

* only the columns whose tokens can still change (masked positions up to the end of the current block)
  go through the final norm, the LM head and the sampler; the argmax/top-k there is the same;
* padded batches carry a real key-padding mask and per-row RoPE positions that start at each row's
  first real token, so a row decodes the same alone or batched (the reference ignores the mask).

Semantics kept from the reference: canvas = prompt + gen_length masks; blocks of block_length decoded
left to right with steps/num_blocks forwards each; per block, the k-schedule gives every step
masks // steps tokens plus one for the first masks % steps steps; x0 = argmax of the logits (Gumbel-max
in float64 when temperature > 0); confidence = softmax probability of x0 under the untempered logits
(low_confidence) or U(0,1) (random); masked positions right of the block never transfer; CFG runs the
canvas with the prompt replaced by masks and uses un + (cfg + 1) * (cond - un).

One deliberate difference, for infilling: masks inside the prompt are counted in the first block's
schedule, so every mask gets filled (the reference leaves as many generated positions masked).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .. import ops
from .noise import RowNoise

@dataclass
class Canvas:
    tokens: torch.Tensor       # [B, P + gen_length] int64
    key_mask: torch.Tensor     # [B, P + gen_length] bool, False = padding
    positions: torch.Tensor    # [B, P + gen_length] int64 RoPE positions
    prompt_length: int
    padded: bool               # any padding at all (else key_mask/positions are trivial)


def make_canvas(ids: torch.Tensor, attn: torch.Tensor, gen_length: int, mask_id: int) -> Canvas:
    B, P = ids.shape
    x = torch.full((B, P + gen_length), mask_id, dtype=torch.long, device=ids.device)
    x[:, :P] = ids
    key_mask = torch.cat([attn, torch.ones(B, gen_length, dtype=torch.bool, device=ids.device)], dim=1)
    padded = not bool(attn.all())
    positions = (key_mask.long().cumsum(1) - 1).clamp_(min=0)
    return Canvas(x, key_mask, positions, P, padded)


def transfer_schedule(block_masks: torch.Tensor, steps: int) -> torch.Tensor:
    """[B, L] bool masks of a block -> [B, steps] tokens to transfer per step (LLaDA's linear schedule)."""
    n = block_masks.sum(dim=1, keepdim=True)
    base, rem = n // steps, n % steps
    return base + (torch.arange(steps, device=n.device)[None, :] < rem).long()


def propose(logits: torch.Tensor, temperature: float, remasking: str, noise: RowNoise, positions: torch.Tensor,
            mask_id: int, conf_dtype: torch.dtype = torch.float32,
            candidates: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """logits [B, L, V] of canvas columns at RoPE positions [B, L] -> (x0 [B, L] int64, confidence [B, L]).
    Logits in another dtype than float32 are taken as their float32 values (bf16 ones read by the sampling kernel).
    candidates [B, L] bool (optional): the still-masked columns, the only ones the caller reads x0 and the
    confidence of (select_confident's rule): only those are proposed (propose_cells on their rows), the others get
    x0 = -1 and confidence -inf. The decoders call propose_cells directly, with the logits of those cells only.

    LLaDA's generate.py takes the softmax in the logits' dtype (float32 here); Fast-dLLM in float64.
    temperature > 0 samples the Gumbel-max of logits + temperature * g (LLaDA's add_gumbel_noise has the same
    argmax) with the sampling kernels' Philox noise; `random` remasking scores are Philox uniforms; both are keyed
    per row by `noise` (decoding/noise.py), so a row's draws do not depend on its batch mates.
    The mask token is never a prediction: where it scores highest, the best other token is taken, with its
    probability under the full softmax (what the reference would give it); where it does not, nothing changes.
    """
    B, L, V = logits.shape
    if candidates is None:
        cells = torch.ones(B, L, dtype=torch.bool, device=logits.device)
        return propose_cells(logits.reshape(B * L, V), cells, temperature, remasking, noise, positions, mask_id,
                             conf_dtype)
    return propose_cells(logits[candidates], candidates, temperature, remasking, noise, positions, mask_id, conf_dtype)


def propose_cells(logits: torch.Tensor, cells: torch.Tensor, temperature: float, remasking: str, noise: RowNoise,
                  positions: torch.Tensor, mask_id: int,
                  conf_dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """propose() from the logits of the still-masked cells only: logits [K, V] of the True cells of `cells` [B, L]
    in row-major order (what Transformer.forward(..., logits_rows=cells) returns), positions [B, L] -> (x0 [B, L],
    confidence [B, L]) with x0 = -1 and confidence -inf on the other cells, which select_confident never reads.
    Each cell's result is the one propose() gives it from the full logits: its draws are keyed by its batch row
    and position, its softmax is its own row's."""
    B, L = cells.shape
    if logits.dtype != torch.float32 and not ops.sampling_kernel_reads(logits, temperature):
        logits = logits.float()  # bf16 logits go to the sampling kernel as they are (it widens them exactly)
    b, j = cells.nonzero(as_tuple=True)
    if logits.shape[0] != b.numel():
        raise ValueError(f"logits: expected one row per True cell ({b.numel()}), got {logits.shape[0]}")
    x0 = torch.full((B, L), -1, dtype=torch.int64, device=cells.device)
    conf = torch.full((B, L), float("-inf"), dtype=conf_dtype, device=cells.device)
    if b.numel():
        x0[b, j], c = _propose_flat(logits, b, positions[b, j], temperature, remasking, noise, mask_id, conf_dtype)
        if c is not None:
            conf[b, j] = c
    if remasking != "low_confidence":
        return x0, noise.uniform(positions).to(conf_dtype)
    return x0, conf


def _propose_flat(logits: torch.Tensor, rows: torch.Tensor, positions: torch.Tensor, temperature: float,
                  remasking: str, noise: RowNoise, mask_id: int, conf_dtype: torch.dtype):
    """propose() over N cells: logits [N, V] (float32, or bf16 the sampling kernel reads), the cells' batch rows and
    RoPE positions [N] -> (x0 [N], confidence [N], or None for `random` remasking)."""
    if temperature == 0 and remasking == "low_confidence":
        x0, conf = ops.sample_greedy(logits, conf_dtype)
    elif temperature > 0:
        x0, conf = noise.gumbel_argmax(logits, rows, positions, temperature, conf_dtype)
    else:
        x0, conf = torch.argmax(logits, dim=-1), None
    hit = x0 == mask_id
    if bool(hit.any()):
        i = hit.nonzero().squeeze(1)
        cells = logits[i].clone()
        cells[:, mask_id] = float("-inf")
        if temperature > 0:
            x0[i] = noise.gumbel_argmax(cells, rows[i], positions[i], temperature, conf_dtype)[0]
        else:
            x0[i] = torch.argmax(cells, dim=-1)
        if conf is not None:
            p = F.softmax(logits[i].to(conf_dtype), dim=-1)
            conf[i] = torch.gather(p, -1, x0[i][:, None]).squeeze(-1)
    if remasking == "low_confidence":
        if conf is None:
            conf = torch.gather(F.softmax(logits.to(conf_dtype), dim=-1), -1, x0[:, None]).squeeze(-1)
        return x0, conf
    return x0, None


def guided_logits(model, canvas: Canvas, x: torch.Tensor, prompt_index: torch.Tensor | None,
                  cfg_scale: float, lo: int, hi: int, float_logits: bool = True,
                  cells: torch.Tensor | None = None) -> torch.Tensor:
    """One model forward over the canvas (twice the batch with CFG); logits of columns lo:hi only (float32, or
    without CFG and with float_logits=False in the compute dtype: see Transformer.forward), [B, hi - lo, V]; with
    cells [B, hi - lo] bool, of those cells only, [K, V] (Transformer.forward's logits_rows)."""
    key_mask = canvas.key_mask if canvas.padded else None
    positions = canvas.positions if canvas.padded else None
    if cfg_scale > 0:
        un_x = x.clone()
        un_x[prompt_index] = model.mask_token_id
        both = torch.cat([x, un_x], dim=0)
        km = None if key_mask is None else torch.cat([key_mask, key_mask], dim=0)
        pos = None if positions is None else torch.cat([positions, positions], dim=0)
        logits = model.transformer.forward(both, km, pos, lo, hi,
                                           logits_rows=None if cells is None else torch.cat([cells, cells]))
        cond, un = torch.chunk(logits, 2, dim=0)
        return un + (cfg_scale + 1) * (cond - un)
    return model.transformer.forward(x, key_mask, positions, lo, hi, float_logits=float_logits, logits_rows=cells)


def rows_ended(x: torch.Tensor, P: int, end: int, eos_ids: torch.Tensor) -> torch.Tensor:
    """bool [B]: the rows whose generation up to `end` holds an end-of-sequence id and only such ids after it
    (LLaDA instruct models pad their answers with EOS): the rest of such a row can be filled with EOS."""
    gen = x[:, P:end]
    is_eos = torch.isin(gen, eos_ids)
    first = is_eos.float().argmax(1)
    after = torch.arange(gen.shape[1], device=gen.device)[None, :] >= first[:, None]
    return is_eos.any(1) & (is_eos | ~after).all(1)


def end_rows(x: torch.Tensor, P: int, end: int, eos_ids: torch.Tensor) -> bool:
    """eos_early_stop at a block end: fill the rest of every ended row with EOS (what it would decode alone);
    True when every row has ended, so decoding can stop."""
    ended = rows_ended(x, P, end, eos_ids)
    x[ended, end:] = eos_ids[0]
    return bool(ended.all())


def schedule_steps(masks: torch.Tensor, steps: int) -> int:
    """Steps worth running for a block: beyond the largest number of masks in a row, further steps of the
    linear schedule transfer nothing (so a huge `steps` costs neither memory nor time)."""
    return min(steps, int(masks.sum(dim=1).max()) if masks.numel() else 0)


@torch.inference_mode()
def generate_llada(model, ids: torch.Tensor, attn: torch.Tensor, *, gen_length: int, steps: int,
                   block_length: int, temperature: float, remasking: str, cfg_scale: float,
                   noise: RowNoise, callback=None,
                   eos_ids: torch.Tensor | None = None) -> tuple[Canvas, int]:
    """Decode; returns the final canvas and the number of forward calls (NFE).

    callback(step, tokens, transferred), if given, runs after every step: step counts forwards from 0,
    tokens is the live canvas [B, T] (read it, do not modify it), transferred a [B, T] bool mask of the
    positions filled in this step. eos_ids: stop early (eos_early_stop) once every row has ended with them.
    """
    mask_id = model.mask_token_id
    canvas = make_canvas(ids, attn, gen_length, mask_id)
    x, P = canvas.tokens, canvas.prompt_length
    prompt_index = (x != mask_id) if cfg_scale > 0 else None
    num_blocks = gen_length // block_length
    steps_per_block = steps // num_blocks
    nfe = 0
    for nb in range(num_blocks):
        b_start, b_end = P + nb * block_length, P + (nb + 1) * block_length
        # The schedule counts every mask left of the block end: the block's, and in the first block the
        # prompt's (infilling). The reference counts the block's only, so there prompt masks take slots and
        # as many generated positions stay masked; without prompt masks the two are the same.
        masks = x[:, :b_end] == mask_id
        n_steps = schedule_steps(masks, steps_per_block)
        schedule = transfer_schedule(masks, n_steps)
        for i in range(n_steps):
            k = schedule[:, i].contiguous()
            if not bool(k.any()):
                continue  # nothing can transfer this step: the reference's forward would change no token
            # Columns that can change: every masked position left of the block end (usually the block).
            open_cols = (x[:, :b_end] == mask_id).any(dim=0).nonzero()
            lo = int(open_cols[0]) if open_cols.numel() else b_start
            cells = x[:, lo:b_end] == mask_id  # the logits of these cells only: nothing reads the others'
            logits = guided_logits(model, canvas, x, prompt_index, cfg_scale, lo, b_end, float_logits=False,
                                   cells=cells)
            nfe += 1
            x0, conf = propose_cells(logits, cells, temperature, remasking, noise, canvas.positions[:, lo:b_end],
                                     mask_id)
            noise.advance(k > 0)
            before = x[:, lo:b_end].clone() if callback is not None else None
            ops.select_confident(conf.contiguous(), x0.contiguous(), k, x[:, lo:b_end], mask_id)
            if callback is not None:
                transferred = torch.zeros_like(x, dtype=torch.bool)
                transferred[:, lo:b_end] = x[:, lo:b_end] != before
                callback(nfe - 1, x, transferred)
        if eos_ids is not None and nb + 1 < num_blocks and end_rows(x, P, b_end, eos_ids):
            break
    return canvas, nfe
