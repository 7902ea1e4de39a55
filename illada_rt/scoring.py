"""Scoring: LLaDA's Monte Carlo ELBO log-likelihood and iLLaDA's confidence-based multiple-choice scoring."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _logits(model, seq: torch.Tensor, prompt_len: int, cfg_scale: float, lo: int) -> torch.Tensor:
    """float32 logits of columns lo: of seq [B, T]; CFG masks the prompt in the unconditional half."""
    tf = model.transformer
    if cfg_scale > 0:
        un = seq.clone()
        un[:, :prompt_len] = model.mask_token_id
        both = tf.forward(torch.cat([seq, un]), logits_from=lo)
        cond, unc = torch.chunk(both, 2, dim=0)
        return unc + (cfg_scale + 1) * (cond - unc)
    return tf.forward(seq, logits_from=lo)


def forward_process(batch: torch.Tensor, prompt_len: int, mask_id: int, generator: torch.Generator | None):
    """LLaDA's stratified forward process (eval_llada.py _forward_process): row j of the batch masks
    n_j = round(k + j * L / b) (wrapped into [1, L]) of the L answer tokens, at random positions."""
    b, l = batch.shape
    target_len = l - prompt_len
    k = torch.randint(1, target_len + 1, (), generator=generator)
    x = torch.round(torch.linspace(float(k), float(k) + (b - 1) * (target_len / b), steps=b)).long()
    x = ((x - 1) % target_len) + 1
    indices = torch.arange(target_len).repeat(b, 1)
    is_mask = indices < x.unsqueeze(1)
    for i in range(b):
        is_mask[i] = is_mask[i][torch.randperm(target_len, generator=generator)]
    is_mask = torch.cat((torch.zeros(b, prompt_len, dtype=torch.bool), is_mask), dim=1).to(batch.device)
    noisy = torch.where(is_mask, torch.full_like(batch, mask_id), batch)
    return noisy, (x / target_len).to(batch.device)


@torch.inference_mode()
def loglikelihood(model, context: list[int], continuation: list[int], mc_num: int = 128, batch_size: int = 32,
                  cfg_scale: float = 0.0, seed: int | None = 0) -> float:
    """Monte Carlo estimate of the ELBO of log p(continuation | context) (a lower bound on it).

    Exactly LLaDA's estimator: mc_num // batch_size mini-batches, each spanning the masking ratios evenly;
    loss = sum over masked positions of CE / (mask ratio), / batch_size; returns -mean(loss). A single-token
    continuation needs one forward and gives the exact log-probability.
    """
    mask_id = model.mask_token_id
    P = len(context)
    seq1 = torch.tensor([list(context) + list(continuation)], dtype=torch.long, device=model.device)
    if len(continuation) == 1:
        seq = seq1.clone()
        seq[0, P] = mask_id
        logits = _logits(model, seq, P, cfg_scale, P)[0, 0]
        return float(torch.log_softmax(logits.double(), -1)[continuation[0]])
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    seq = seq1.repeat(batch_size, 1)
    losses = []
    for _ in range(mc_num // batch_size):
        noisy, ratio = forward_process(seq, P, mask_id, gen)
        masked = noisy[:, P:] == mask_id
        logits = _logits(model, noisy, P, cfg_scale, P)
        ce = F.cross_entropy(logits[masked], seq[:, P:][masked], reduction="none")
        ratio_per_pos = ratio[:, None].expand_as(masked)[masked]
        losses.append(float((ce / ratio_per_pos).sum()) / batch_size)
    return -sum(losses) / len(losses)


@torch.inference_mode()
def score_choice(model, context: list[int], choice: list[int]) -> float:
    """iLLaDA's confidence-based score of one candidate: start with the candidate fully masked; each forward
    reveals the candidate's own token where the model gives it the highest probability and adds its
    log-probability. One forward per candidate token."""
    mask_id = model.mask_token_id
    P, L = len(context), len(choice)
    seq = torch.tensor([list(context) + [mask_id] * L], dtype=torch.long, device=model.device)
    target = torch.tensor(choice, dtype=torch.long, device=model.device)
    masked = torch.ones(L, dtype=torch.bool, device=model.device)
    total = 0.0
    for _ in range(L):
        logp = torch.log_softmax(model.transformer.forward(seq, logits_from=P)[0].double(), -1)
        own = logp.gather(-1, target[:, None]).squeeze(-1)
        own = torch.where(masked, own, torch.full_like(own, -math.inf))
        i = int(torch.argmax(own))
        total += float(own[i])
        seq[0, P + i] = target[i]
        masked[i] = False
    return total
