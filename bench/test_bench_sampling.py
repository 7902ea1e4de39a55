"""Masked-token sampling over LLaDA's (126,464) and iLLaDA's (155,136) vocabularies: the fused kernel (argmax +
softmax confidence in one pass over each row, then top-k selection) in its float32 and float64 modes, each beside
PyTorch's softmax + max + topk in the same precision (fp32: the runtime's reference path; float64: as Fast-dLLM
computes it), same inputs, same run; and the Gumbel-max mode (temperature 1, Philox noise) beside LLaDA's
add_gumbel_noise in float64.

    pytest bench/test_bench_sampling.py --benchmark-json=sampling.json && python bench/report.py sampling.json
    ILLADA_BENCH_FULL=1 ...   # 32/128/512 positions x both vocabularies
"""
import os

import pytest
import torch
import torch.nn.functional as F

from illada_rt import ops
from peaks import measured_peaks

FULL = os.environ.get("ILLADA_BENCH_FULL") == "1"
ROWS = (32, 128, 512) if FULL else (32,)
VOCABS = (126464, 155136) if FULL else (126464,)
K = 4  # positions transferred per step


def _torch(logits, dtype):
    p = F.softmax(logits.to(dtype), dim=-1)
    conf, tok = p.max(dim=-1)
    return tok, torch.topk(conf, K).indices


def _kernel(logits, dtype=torch.float32):
    tok, conf = ops.sample_greedy(logits, dtype)
    return tok, torch.topk(conf, K).indices


def _torch_gumbel(logits, temperature=1.0):
    """LLaDA's add_gumbel_noise (float64 uniform noise, exp(l) / (-log u)^T), then the fp32 confidence and top-k."""
    noise = torch.rand(logits.shape, dtype=torch.float64)
    tok = torch.argmax(logits.to(torch.float64).exp() / (-torch.log(noise)) ** temperature, dim=-1)
    conf = torch.gather(F.softmax(logits, dim=-1), -1, tok[:, None]).squeeze(-1)
    return tok, torch.topk(conf, K).indices


def _kernel_gumbel(logits, temperature=1.0):
    tok, conf = ops.sample_tokens(logits, temperature=temperature, seed=1)
    return tok, torch.topk(conf, K).indices


# each kernel mode beside the PyTorch computation in the same precision
BASELINE = {"kernel": "torch_fp32", "kernel_fp64": "torch_fp64", "torch_fp32": "torch_fp32",
            "torch_fp64": "torch_fp64", "kernel_gumbel": "torch_gumbel", "torch_gumbel": "torch_gumbel"}


@pytest.mark.parametrize("impl", list(BASELINE))
@pytest.mark.parametrize("V", VOCABS)
@pytest.mark.parametrize("R", ROWS)
def test_sampling(benchmark, impl, R, V):
    logits = torch.randn(R, V, generator=torch.Generator().manual_seed(R)) * 4
    fn = {"kernel": lambda: _kernel(logits), "kernel_fp64": lambda: _kernel(logits, torch.float64),
          "torch_fp32": lambda: _torch(logits, torch.float32), "torch_fp64": lambda: _torch(logits, torch.float64),
          "kernel_gumbel": lambda: _kernel_gumbel(logits), "torch_gumbel": lambda: _torch_gumbel(logits)}[impl]
    if impl in ("kernel", "kernel_fp64"):
        assert torch.equal(fn()[0], _torch(logits, torch.float32)[0])
    benchmark.extra_info.update(op="sampling", group=f"{R} positions x vocab {V}", impl=impl, bytes=R * V * 4,
                                baseline=BASELINE[impl], peaks=measured_peaks())
    benchmark.pedantic(fn, rounds=7 if R <= 128 else 3, iterations=1, warmup_rounds=1)
