"""GEMMs at LLaDA-8B / iLLaDA-8B layer shapes: the W8A8 kernel beside torch._int_mm and a torch-only W8A8
pipeline, the FP8-weight kernel beside bf16 matmul, and fp32 matmul, in the same run. Each result carries flops, its peak kind and the baseline
in extra_info; bench/report.py turns the JSON into the table (GOP/s, % of peak, ratio).

    pytest bench/test_bench_gemm.py --benchmark-json=gemm.json && python bench/report.py gemm.json
    ILLADA_BENCH_FULL=1 ...   # every shape: M 32/256/1024 x N 4096/1024/12288/14336, K 4096
"""
import os

import pytest
import torch

from illada_rt import ops
from illada_rt.ops import reference
from peaks import measured_peaks

FULL = os.environ.get("ILLADA_BENCH_FULL") == "1"
K = 4096
MS = (32, 256, 1024) if FULL else (32, 256)
NS = (4096, 1024, 12288, 14336) if FULL else (4096, 1024)
IMPLS = {  # name: (peak kind, description)
    "w8a8": ("int8_dot", "illada-rt: per-token quantize + int8 GEMM + dequantize, bf16 in/out"),
    "gemm_s8_int32": ("int8_dot", "illada-rt int8 GEMM alone, int32 out (like for like with _int_mm)"),
    "torch_int_mm": ("int8_dot", "torch._int_mm, int8 in, int32 out (oneDNN)"),
    "torch_w8a8": ("int8_dot", "torch ops: per-token quantize + _int_mm + scales, bf16 in/out"),
    "fp8w": ("bf16_dot", "illada-rt FP8-weight GEMM (e4m3 widened to bf16 in registers), bf16 in/out"),
    "bf16": ("bf16_dot", "illada-rt bf16 GEMM (weights read in place), bf16 in/out; the model runs it up to "
                         "ops.BF16_GEMM_MAX_M rows with AVX-512, at every M on AVX2"),
    "torch_bf16": ("bf16_dot", "torch bf16 matmul"),
    "torch_fp32": ("fp32_fma", "torch fp32 matmul"),
}
BASELINE = "torch_int_mm"  # for the int8 GEMMs; the bf16-compute ones (bf16, fp8w) against torch_bf16
BF16_BASELINE = "torch_bf16"


def _torch_w8a8(x, w_t, ws):
    q, xs = reference.quantize_per_token_s8(x)
    return (torch._int_mm(q, w_t).float() * xs[:, None] * ws[None, :]).to(x.dtype)


@pytest.fixture(scope="module")
def weights():
    cache = {}

    def get(N):
        if N not in cache:
            g = torch.Generator().manual_seed(N)
            w = torch.randint(-127, 128, (N, K), dtype=torch.int8, generator=g)
            ws = torch.rand(N, generator=g) * 1e-3
            f8 = (w.float() / 127 * 448).to(torch.float8_e4m3fn)
            cache[N] = (w, ws, ops.pack_int8_weight(w, ws), w.to(torch.bfloat16), w.float(),
                        ops.pack_fp8_weight(f8, ws))
        return cache[N]
    return get


@pytest.mark.parametrize("impl", list(IMPLS))
@pytest.mark.parametrize("N", NS)
@pytest.mark.parametrize("M", MS)
def test_gemm(benchmark, weights, impl, M, N):
    w, ws, packed, w_bf16, w_f32, fp8 = weights(N)
    x = torch.randn(M, K, generator=torch.Generator().manual_seed(M)).to(torch.bfloat16)
    q, xs = reference.quantize_per_token_s8(x)
    if impl == "w8a8":
        fn = lambda: ops.linear_w8a8(x, packed)  # noqa: E731
    elif impl == "gemm_s8_int32":
        from illada_rt import _C
        out = torch.empty(M, N, dtype=torch.int32)
        nt = torch.get_num_threads()
        fn = lambda: _C.gemm_s8(q, packed.packed, packed.colsum, N, out, n_threads=nt)  # noqa: E731
    elif impl == "bf16":
        fn = lambda: ops.linear_bf16(x, [w_bf16], force=True)  # noqa: E731
    elif impl == "fp8w":
        fn = lambda: ops.linear_fp8w(x, fp8)  # noqa: E731
    elif impl == "torch_int_mm":
        fn = lambda: torch._int_mm(q, w.t())  # noqa: E731
    elif impl == "torch_w8a8":
        fn = lambda: _torch_w8a8(x, w.t(), ws)  # noqa: E731
    elif impl == "torch_bf16":
        fn = lambda: x @ w_bf16.t()  # noqa: E731
    else:
        xf = x.float()
        fn = lambda: xf @ w_f32.t()  # noqa: E731
    benchmark.extra_info.update(op="gemm", group=f"M={M} N={N} K={K}", impl=impl, flops=2 * M * N * K,
                                peak_kind=IMPLS[impl][0],
                                baseline=BF16_BASELINE if impl in ("bf16", "fp8w", "torch_bf16") else BASELINE,
                                peaks=measured_peaks())
    benchmark.pedantic(fn, rounds=7 if M < 1024 else 3, iterations=1, warmup_rounds=1)


# Decoding's case at the 176M bench model's shapes: M = 32 rows against weights that stream from memory (each round
# cycles through copies of the weight totalling ~200 MB, more than any L3), the kernels beside oneDNN.
STREAM_SHAPES = ((1024, 3072), (3072, 1024), (1024, 32768))  # (K, N): fused q/k/v, down, LM head
STREAM_IMPLS = {"bf16": "bf16_dot", "torch_bf16": "bf16_dot", "w8a8": "int8_dot", "torch_int_mm": "int8_dot"}


@pytest.mark.parametrize("impl", list(STREAM_IMPLS))
@pytest.mark.parametrize("K,N", STREAM_SHAPES)
def test_gemm_weights_from_memory(benchmark, impl, K, N):
    M, copies = 32, max(2, 200_000_000 // (2 * N * K))
    g = torch.Generator().manual_seed(N)
    x = torch.randn(M, K, generator=g).to(torch.bfloat16)
    if impl in ("bf16", "torch_bf16"):
        ws = [torch.randn(N, K, generator=g).to(torch.bfloat16) for _ in range(copies)]
        one = (lambda w: ops.linear_bf16(x, [w], force=True)) if impl == "bf16" else (lambda w: x @ w.t())
    else:
        w8 = [torch.randint(-127, 128, (N, K), dtype=torch.int8, generator=g) for _ in range(copies)]
        if impl == "w8a8":
            arena = ops.WeightArena()  # packed as a loaded model packs them: side by side, in huge pages
            ws = [ops.pack_int8_weight(w, torch.rand(N, generator=g) * 1e-3, arena) for w in w8]
            one = lambda w: ops.linear_w8a8(x, w)  # noqa: E731
        else:
            q, _ = reference.quantize_per_token_s8(x)
            ws = [w.t() for w in w8]
            one = lambda w: torch._int_mm(q, w)  # noqa: E731
    benchmark.extra_info.update(op="gemm (weights from memory)", group=f"M={M} N={N} K={K}", impl=impl,
                                flops=2 * M * N * K * copies, peak_kind=STREAM_IMPLS[impl],
                                baseline="torch_bf16" if "bf16" in impl else "torch_int_mm", peaks=measured_peaks())
    benchmark.pedantic(lambda: [one(w) for w in ws], rounds=5, iterations=1, warmup_rounds=1)
