"""Masked-token selection: the compiled kernel beside the PyTorch reference (topk per row), same inputs.

    pytest bench/test_bench_select.py --benchmark-group-by=param:shape
"""
import pytest
import torch

from illada_rt import _C
from illada_rt.ops import reference

MASK = 0
SHAPES = [(1, 32), (8, 32), (32, 256), (64, 1024)]


def _inputs(B, L):
    g = torch.Generator().manual_seed(0)
    conf = torch.rand(B, L, generator=g)
    x0 = torch.randint(1, 1000, (B, L), generator=g)
    k = torch.full((B,), max(1, L // 8), dtype=torch.long)
    tokens = torch.zeros(B, L, dtype=torch.long)
    return conf, x0, k, tokens


@pytest.mark.parametrize("impl", ["kernel", "torch_reference"])
@pytest.mark.parametrize("shape", SHAPES, ids=[f"{b}x{l}" for b, l in SHAPES])
def test_select_confident(benchmark, impl, shape):
    conf, x0, k, tokens = _inputs(*shape)
    fn = _C.select_confident if impl == "kernel" else reference.select_confident

    def run():
        t = tokens.clone()
        fn(conf, x0, k, t, MASK)
        return t

    out = benchmark(run)
    assert int((out != MASK).sum()) == int(k.sum())
