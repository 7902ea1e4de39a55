"""Diffusion decoding loops. `llada` is LLaDA's reference sampler (blocks, schedule, remasking, CFG)."""
from .llada import REMASKING, generate_llada, transfer_schedule

__all__ = ["REMASKING", "generate_llada", "transfer_schedule"]
