"""Sampling noise keyed per row, so that a row decodes to the same tokens alone or in any batch.

Row r's draws depend only on its own seed, its own step count (the forwards in which it had a masked position to
fill; steps where it had none do not count) and the column's RoPE position, i.e. its distance from the row's
first real token: never on the batch index, the padding or the batch mates.

* temperature > 0: the Gumbel noise of the sampling kernels (ops.sample_tokens with seed = the row's seed,
  offset = its step count, noise row id = the position): the same noise on CPU and CUDA.
* `random` remasking: its scores are Philox4x32-10 uniforms from the same key in a separate counter domain.

Seeds: `seed=None` draws one seed per row from torch's global generator (so `torch.manual_seed` makes it
repeatable); an int gives every row that seed; a list gives one seed per row. Seeds are ints in [0, 2**64).
"""
from __future__ import annotations

import torch

from .. import ops
from ..ops.reference import philox4x32_10_torch

SEED_LIMIT = 2**64
_UNIFORM_DOMAIN = 0xFFFFFFFF  # counter word 0 of the remasking uniforms; the Gumbel stream uses ceil(vocab / 4)


def is_seed(s) -> bool:
    """An int in [0, 2**64) (a Philox key)."""
    return not isinstance(s, bool) and isinstance(s, int) and 0 <= s < SEED_LIMIT


def check_seed(seed) -> None:
    """ValueError unless seed is None, an int in [0, 2**64) or a non-empty list/tuple of such ints."""
    if seed is None or is_seed(seed):
        return
    if isinstance(seed, (list, tuple)) and seed and all(is_seed(s) for s in seed):
        return
    raise ValueError(f"seed: expected None, an int in [0, 2**64) or a list of such ints (one per row), got {seed!r}")


def row_seeds(seed, batch: int) -> list[int]:
    """One seed per row (see the module docstring)."""
    if seed is None:
        return torch.randint(0, 2**63 - 1, (batch,)).tolist()
    if isinstance(seed, int):
        return [seed] * batch
    if len(seed) != batch:
        raise ValueError(f"seed: {len(seed)} seeds for a batch of {batch} prompts (pass one per row, or one int)")
    return list(seed)


class RowNoise:
    """The seeds and step counts of a batch's rows; draws noise for [B, L] windows of canvas columns."""

    def __init__(self, seeds: list[int]):
        self.seeds = list(seeds)
        self.steps = [0] * len(self.seeds)

    def advance(self, rows: torch.Tensor) -> None:
        """Count a step for each row where rows[r] (bool [B]) is true: those that had something to fill."""
        for r in rows.nonzero().flatten().tolist():
            self.steps[r] += 1

    def gumbel_argmax(self, logits: torch.Tensor, batch_rows: torch.Tensor, positions: torch.Tensor,
                      temperature: float, conf_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """logits [N, V] of canvas cells (batch row batch_rows[i], RoPE position positions[i]) -> Gumbel-max tokens
        [N] and their softmax probability under the untempered logits [N]."""
        tokens = torch.empty(logits.shape[0], dtype=torch.long, device=logits.device)
        conf = torch.empty(logits.shape[0], dtype=conf_dtype, device=logits.device)
        for r in batch_rows.unique().tolist():
            sel = (batch_rows == r).nonzero().flatten()
            t, c = ops.sample_tokens(logits[sel], conf_dtype, temperature, seed=self.seeds[r],
                                     offset=self.steps[r], row_ids=positions[sel])
            tokens[sel], conf[sel] = t, c
        return tokens, conf

    def uniform(self, positions: torch.Tensor) -> torch.Tensor:
        """float64 U(0, 1) scores [B, L] for `random` remasking at the RoPE positions [B, L]."""
        out = torch.empty(positions.shape, dtype=torch.float64, device=positions.device)
        for r, (seed, step) in enumerate(zip(self.seeds, self.steps)):
            pos = positions[r].to(torch.int64)
            c0 = torch.full_like(pos, _UNIFORM_DOMAIN)
            w = philox4x32_10_torch(c0, pos & 0xFFFFFFFF, torch.full_like(pos, step & 0xFFFFFFFF),
                                    torch.full_like(pos, (step >> 32) & 0xFFFFFFFF), (seed, seed >> 32))
            hi, lo = (w[0] >> 6).to(torch.float64), (w[1] >> 6).to(torch.float64)  # 26 + 26 bits: exact below
            out[r] = (hi * 67108864.0 + lo + 0.5) / 4503599627370496.0           # (k + 0.5) / 2^52, inside (0, 1)
        return out
