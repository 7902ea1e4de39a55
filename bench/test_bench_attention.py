"""Bidirectional attention: the compiled CPU kernel beside torch SDPA (with GQA expanded as the reference does), same
inputs, same run; full-canvas shapes (L x L) and a dual-cache decoding step (32 queries against L keys); q and the
output in the model's [B, T, H, D] memory layout.

    pytest bench/test_bench_attention.py --benchmark-json=att.json && python bench/report.py att.json
    ILLADA_BENCH_FULL=1 ...   # L 256..4096
"""
import os

import pytest
import torch

from illada_rt import _C
from illada_rt.ops import reference
from peaks import measured_peaks

FULL = os.environ.get("ILLADA_BENCH_FULL") == "1"
LENGTHS = (256, 512, 1024, 2048, 4096) if FULL else (512,)
HEADS, KV_HEADS, D = 32, 8, 128  # iLLaDA-8B: GQA 32/8, head dim 128


@pytest.mark.parametrize("impl", ["kernel", "torch_sdpa"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("tq", ["L", 32])
@pytest.mark.parametrize("L", LENGTHS)
def test_attention(benchmark, impl, dtype, tq, L):
    Tq = L if tq == "L" else tq
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, Tq, HEADS, D, generator=g).to(dtype).transpose(1, 2)
    k = torch.randn(1, KV_HEADS, L, D, generator=g).to(dtype)
    v = torch.randn(1, KV_HEADS, L, D, generator=g).to(dtype)
    if impl == "kernel":
        out = torch.empty(1, Tq, HEADS, D, dtype=dtype).transpose(1, 2)
        nt = torch.get_num_threads()
        fn = lambda: _C.attention(q, k, v, out, None, D ** -0.5, nt)  # noqa: E731
    else:
        fn = lambda: reference.attention(q, k, v)  # noqa: E731
    benchmark.extra_info.update(op=f"attention {str(dtype).replace('torch.', '')}", group=f"Tq={Tq} Tk={L}",
                                impl=impl, flops=4 * HEADS * Tq * L * D, baseline="torch_sdpa",
                                peak_kind="bf16_dot" if dtype == torch.bfloat16 else "fp32_fma", peaks=measured_peaks())
    benchmark.pedantic(fn, rounds=5 if L <= 1024 else 2, iterations=1, warmup_rounds=1)
