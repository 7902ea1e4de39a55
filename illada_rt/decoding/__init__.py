"""Diffusion decoding loops: `llada` is LLaDA's reference sampler (blocks, schedule, remasking, CFG);
`fast` is Fast-dLLM's threshold/factor parallel decoding with prefix and dual KV caches; `varlen` is
iLLaDA's variable-length generation; `params` validates their arguments."""
from .fast import generate_fast
from .llada import generate_llada, transfer_schedule
from .params import CACHES, REMASKING
from .varlen import generate_varlen

__all__ = ["CACHES", "REMASKING", "generate_fast", "generate_llada", "generate_varlen", "transfer_schedule"]
