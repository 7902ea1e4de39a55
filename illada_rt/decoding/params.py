"""Validation of decoding arguments: every impossible combination is a ValueError that names it."""
from __future__ import annotations

import math

from .noise import check_seed

CACHES = (None, "prefix", "dual")
REMASKING = ("low_confidence", "random")


def _positive_int(name, v):
    if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
        raise ValueError(f"{name}: expected a positive integer, got {v!r}")


def check_decoding_args(*, gen_length, steps, block_length, temperature, remasking, cfg_scale, seed, threshold,
                        factor, cache, max_new_tokens, stop, callback) -> None:
    _positive_int("steps", steps)
    _positive_int("block_length", block_length)
    if gen_length is None:
        if max_new_tokens is None:
            raise ValueError("gen_length=None (variable length) needs max_new_tokens")
        _positive_int("max_new_tokens", max_new_tokens)
    else:
        _positive_int("gen_length", gen_length)
        if max_new_tokens is not None:
            raise ValueError("max_new_tokens is for variable-length generation: pass gen_length=None with it")
        if stop:
            raise ValueError("stop strings are for variable-length generation (gen_length=None)")
        if gen_length % block_length:
            raise ValueError(f"block_length ({block_length}) must divide gen_length ({gen_length})")
        num_blocks = gen_length // block_length
        if steps % num_blocks:
            raise ValueError(f"steps ({steps}) must be divisible by the number of blocks "
                             f"(gen_length / block_length = {num_blocks})")
    for name, v in (("temperature", temperature), ("cfg_scale", cfg_scale)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
            raise ValueError(f"{name}: expected a finite number >= 0, got {v!r}")
    if remasking not in REMASKING:
        raise ValueError(f"remasking: unknown strategy {remasking!r}; expected one of {', '.join(REMASKING)}")
    check_seed(seed)
    if threshold is not None and factor is not None:
        raise ValueError("threshold and factor are alternatives: pass one of them")
    if threshold is not None and (isinstance(threshold, bool) or not isinstance(threshold, (int, float))
                                  or not 0 < threshold <= 1):
        raise ValueError(f"threshold: expected a number in (0, 1], got {threshold!r}")
    if factor is not None and (isinstance(factor, bool) or not isinstance(factor, (int, float))
                               or not math.isfinite(factor) or factor <= 0):
        raise ValueError(f"factor: expected a finite number > 0, got {factor!r}")
    if cache not in CACHES:
        raise ValueError(f"cache: expected None, 'prefix' or 'dual', got {cache!r}")
    if (threshold is not None or factor is not None or cache is not None) and cfg_scale > 0:
        raise ValueError("cfg_scale > 0 works with the reference decoder only (no threshold, factor or cache)")
    if stop is not None and (not isinstance(stop, (list, tuple)) or not all(isinstance(s, str) and s for s in stop)):
        raise ValueError("stop: expected a list of non-empty strings")
    if callback is not None and not callable(callback):
        raise TypeError("callback: expected a callable(step, tokens, transferred)")
