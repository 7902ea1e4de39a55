"""The fused bf16 elementwise kernels beside PyTorch, same inputs: RMSNorm and SwiGLU at decoding's shapes (a 32-token
block and a canvas; the 176M bench model's widths and LLaDA-8B's). ops.swiglu runs whichever of the SwiGLU kernel
and PyTorch's silu(g) * u is faster on the CPU at hand (the same bits); this bench shows the two side by side.

    pytest bench/test_bench_norm_act.py --benchmark-json=n.json && python bench/report.py n.json
"""
import pytest
import torch

from illada_rt import _C, ops
from illada_rt.ops import reference

pytestmark = pytest.mark.skipif("avx2" not in ops.cpu_isas(), reason="the fused kernels need AVX2 or AVX-512")
SHAPES = [(32, 1024), (192, 1024), (32, 4096), (256, 4096)]  # rows x d_model; SwiGLU runs at 3x the width


@pytest.mark.parametrize("impl", ["kernel", "torch"])
@pytest.mark.parametrize("op", ["rms_norm", "swiglu"])
@pytest.mark.parametrize("shape", SHAPES, ids=[f"{r}x{d}" for r, d in SHAPES])
def test_norm_act(benchmark, op, impl, shape):
    rows, d = shape
    width = 3 * d if op == "swiglu" else d
    g = torch.Generator().manual_seed(0)
    x = torch.randn(rows, width, generator=g).bfloat16()
    y = torch.randn(rows, width, generator=g).bfloat16()
    w = torch.rand(width, generator=g).bfloat16()
    out = torch.empty_like(x)
    threads = max(1, torch.get_num_threads())
    if op == "rms_norm":
        fn = (lambda: _C.rms_norm(x, w, 1e-5, out, threads)) if impl == "kernel" else (
            lambda: reference.rms_norm(x, w, 1e-5))
    else:
        fn = (lambda: _C.swiglu(x, y, out, threads)) if impl == "kernel" else (lambda: reference.swiglu(x, y))
    benchmark.extra_info.update(op=op, group=f"{rows} x {width} bf16", impl=impl, baseline="torch",
                                bytes=x.numel() * 2 * (3 if op == "swiglu" else 2))
    benchmark(fn)
