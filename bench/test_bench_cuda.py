"""CUDA kernels on a GPU, each beside its PyTorch baseline in the same run (skipped without a GPU):

- attention (bf16, GQA 32/8, head dim 128; L 512..8192 full canvas, and a 32-query cache step) vs
  torch.nn.functional.scaled_dot_product_attention with enable_gqa (FlashAttention-2 backend on Hopper);
- sampling (32..512 positions x vocab 126,464: fused argmax + confidence, then the top-k transfer) vs PyTorch's
  softmax + max + topk;
- quantized GEMMs at decoding's shapes (M 32 and 256 tokens against the 8B model's projections, and the LM head at
  M = 32): gemm_w8a8 and gemm_fp8 (activation quantization included) beside torch._int_mm (int32 out, operands
  already quantized), torch._scaled_mm (e4m3, row-wise scales) and cuBLAS bf16 (torch.matmul), with % of this
  GPU's measured int8 / fp8 / bf16 peak;
- end to end: an 8B-shaped random LLaDA model cut to a few layers, exact and dual-cache decoding with the CUDA
  kernels on and off (ILLADA_RT_CUDA_KERNELS=all / none), and in bf16, int8 and fp8 weights: tokens/s and the GPU
  memory the weights take.

Each timed function launches `CALLS` times and synchronizes once; report.py divides by extra_info calls_per_round.

    pytest bench/test_bench_cuda.py --benchmark-json=cuda.json && python bench/report.py cuda.json
"""
import os

import pytest
import torch
import torch.nn.functional as F

from illada_rt.ops import cuda as cuda_ops
from peaks import measured_gpu_peaks

HAS_GPU = cuda_ops._C_cuda is not None and torch.cuda.is_available()
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not HAS_GPU, reason="needs a CUDA GPU and _C_cuda")]

LENGTHS = (512, 1024, 2048, 4096, 8192)
HEADS, KV_HEADS, D = 32, 8, 128
CALLS = 20


def _timed(fn, calls=CALLS):
    def run():
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
    return run


@pytest.mark.parametrize("impl", ["kernel", "torch_sdpa"])
@pytest.mark.parametrize("tq", ["L", 32])
@pytest.mark.parametrize("L", LENGTHS)
def test_cuda_attention(benchmark, impl, tq, L):
    Tq = L if tq == "L" else tq
    B = max(1, 8192 // L) if tq == "L" else 8  # enough CTAs to fill the GPU at short L
    q = torch.randn(B, Tq, HEADS, D, device="cuda", dtype=torch.bfloat16).transpose(1, 2)
    k = torch.randn(B, KV_HEADS, L, D, device="cuda", dtype=torch.bfloat16)
    v = torch.randn(B, KV_HEADS, L, D, device="cuda", dtype=torch.bfloat16)
    if impl == "kernel":
        fn = lambda: cuda_ops.attention(q, k, v, None)  # noqa: E731
    else:
        fn = lambda: F.scaled_dot_product_attention(q, k, v, enable_gqa=True)  # noqa: E731
    benchmark.extra_info.update(op="cuda attention bf16", group=f"B={B} Tq={Tq} Tk={L}", impl=impl,
                                flops=4 * B * HEADS * Tq * L * D, baseline="torch_sdpa", peak_kind="bf16_mma",
                                calls_per_round=CALLS, peaks=measured_gpu_peaks())
    benchmark.pedantic(_timed(fn), rounds=5, iterations=1, warmup_rounds=1)


def _torch_sampling(logits, k):
    p = F.softmax(logits.float(), dim=-1)
    conf, tok = p.max(dim=-1)
    return tok, torch.topk(conf.view(-1, 32), k, dim=-1).indices


@pytest.mark.parametrize("impl", ["kernel", "torch"])
@pytest.mark.parametrize("R", [32, 128, 512])
def test_cuda_sampling(benchmark, impl, R):
    V, mask_id = 126_464, 126_336
    logits = (torch.randn(R, V, device="cuda") * 4).to(torch.bfloat16)
    tokens = torch.full((R // 32, 32), mask_id, device="cuda")
    k = torch.full((R // 32,), 4, device="cuda")

    def kernel():
        x0, conf = cuda_ops.sample_tokens(logits)
        cuda_ops.select_transfer(conf.view(-1, 32), x0.view(-1, 32), tokens.clone(), mask_id, k=k)

    fn = kernel if impl == "kernel" else (lambda: _torch_sampling(logits, 4))
    benchmark.extra_info.update(op="cuda sampling", group=f"{R} positions x vocab {V}", impl=impl, bytes=R * V * 2,
                                baseline="torch", calls_per_round=CALLS, peaks=measured_gpu_peaks())
    benchmark.pedantic(_timed(fn), rounds=5, iterations=1, warmup_rounds=1)


# 8B-shaped (LLaDA-8B: d_model 4096, 32 heads, MLP 12288, vocab 126,464) with only a few layers, so the checkpoint
# is written in seconds; per-layer costs are what the kernels change.
E2E_LAYERS = int(os.environ.get("ILLADA_BENCH_GPU_LAYERS", "2"))
GEMM_SHAPES = [(32, 4096, 4096), (32, 12288, 4096), (32, 4096, 12288), (256, 4096, 4096), (256, 12288, 4096),
               (256, 4096, 12288), (32, 126_464, 4096)]


@pytest.mark.parametrize("impl", ["gemm_w8a8", "torch_int_mm", "gemm_fp8", "torch_scaled_mm", "cublas_bf16"])
@pytest.mark.parametrize("shape", GEMM_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_cuda_gemm(benchmark, impl, shape):
    from illada_rt.ops import cuda_gemm

    M, N, K = shape
    fp8 = impl in ("gemm_fp8", "torch_scaled_mm")
    if fp8 and torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("e4m3 tensor cores need sm_89+")
    x = torch.randn(M, K, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(N, K, device="cuda", dtype=torch.bfloat16) * 0.02
    if impl in ("gemm_w8a8", "gemm_fp8"):
        q = (w * 5000).round().clamp(-127, 127).to(torch.int8) if impl == "gemm_w8a8" else (w * 2e4).to(
            torch.float8_e4m3fn)
        wt = cuda_gemm.pack_weight(q, torch.full((N,), 2e-4, device="cuda"), "channel", "cuda")
        fn = lambda: cuda_gemm.linear(x, wt)  # noqa: E731
    elif impl == "torch_int_mm":
        a8 = torch.randint(-127, 128, (M, K), device="cuda", dtype=torch.int8)
        w8 = torch.randint(-127, 128, (N, K), device="cuda", dtype=torch.int8)
        fn = lambda: torch._int_mm(a8, w8.t())  # noqa: E731
    elif impl == "torch_scaled_mm":
        af, wf = x.to(torch.float8_e4m3fn), w.to(torch.float8_e4m3fn)
        sa, sw = torch.ones(M, 1, device="cuda"), torch.ones(1, N, device="cuda")
        fn = lambda: torch._scaled_mm(af, wf.t(), sa, sw, out_dtype=torch.bfloat16)  # noqa: E731
    else:
        fn = lambda: x @ w.t()  # noqa: E731
    peak = {"gemm_w8a8": "int8_mma", "torch_int_mm": "int8_mma", "gemm_fp8": "fp8_mma",
            "torch_scaled_mm": "fp8_mma"}.get(impl, "bf16_mma")
    benchmark.extra_info.update(op="cuda quantized GEMM", group=f"M={M} N={N} K={K}", impl=impl,
                                flops=2 * M * N * K, baseline="torch_int_mm" if peak == "int8_mma" else (
                                    "torch_scaled_mm" if peak == "fp8_mma" else "cublas_bf16"),
                                peak_kind=peak, calls_per_round=CALLS, peaks=measured_gpu_peaks())
    benchmark.pedantic(_timed(fn), rounds=3, iterations=1, warmup_rounds=1)


PROMPT, GEN, STEPS, BLOCK = 64, 256, 64, 32
_E2E = {}


@pytest.fixture(scope="module")
def checkpoint_8b_shaped(tmp_path_factory):
    from illada_rt.synthetic import TinySpec, write_checkpoint

    spec = TinySpec(d_model=4096, n_heads=32, n_kv_heads=32, n_layers=E2E_LAYERS, mlp_hidden_size=12288,
                    vocab_size=126_464, mask_token_id=126_336, quiet_token=126_336, max_sequence_length=4096,
                    dtype="bfloat16", seed=0)
    return write_checkpoint(tmp_path_factory.mktemp("gpu8b") / "m", spec)


@pytest.fixture(scope="module")
def model_8b_shaped(checkpoint_8b_shaped):
    import illada_rt

    return illada_rt.load(checkpoint_8b_shaped, device="cuda")


@pytest.mark.parametrize("weights", ["bf16", "int8", "fp8"])
def test_cuda_decode_quantized(benchmark, checkpoint_8b_shaped, weights, monkeypatch, tmp_path):
    """Dual-cache decoding of the 8B-shaped model with bf16, int8 (gemm_w8a8) or fp8 (gemm_fp8, sm_89+) weights:
    tokens/s and the GPU memory its weights take."""
    import illada_rt
    from illada_rt.quantize import quantize_checkpoint

    if weights == "fp8" and torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("gemm_fp8 needs sm_89+")
    monkeypatch.setenv("ILLADA_RT_CUDA_KERNELS", "all")
    path = checkpoint_8b_shaped
    if weights != "bf16":
        path = tmp_path / weights
        quantize_checkpoint(checkpoint_8b_shaped, path, scheme=weights, progress=False)
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    m = illada_rt.load(path, device="cuda", dtype=torch.bfloat16)
    weight_bytes = torch.cuda.memory_allocated() - before
    prompt = torch.randint(1, 126_000, (1, PROMPT), generator=torch.Generator().manual_seed(0))
    kw = dict(gen_length=GEN, steps=STEPS, block_length=BLOCK, cache="dual")
    m.generate(prompt, **kw)

    def run():
        out = m.generate(prompt, **kw)
        torch.cuda.synchronize()
        return out

    out = benchmark.pedantic(run, rounds=2, iterations=1)
    benchmark.extra_info.update(op=f"decode 8B-shaped x{E2E_LAYERS} layers, dual cache", group=weights,
                                impl=f"weights={weights}", baseline="weights=bf16", nfe=out.nfe,
                                tokens_per_s=GEN / benchmark.stats.stats.median,
                                gpu_weight_gib=round(weight_bytes / 2**30, 3),
                                linears=m.transformer.weight_bytes()["kernels"])
    del m
    torch.cuda.empty_cache()


@pytest.mark.parametrize("kernels", ["all", "none"])
@pytest.mark.parametrize("policy", ["exact", "dual"])
def test_cuda_decode(benchmark, model_8b_shaped, policy, kernels, monkeypatch):
    monkeypatch.setenv("ILLADA_RT_CUDA_KERNELS", kernels)
    m = model_8b_shaped
    prompt = torch.randint(1, 126_000, (1, PROMPT), generator=torch.Generator().manual_seed(0))
    kw = dict(gen_length=GEN, steps=STEPS, block_length=BLOCK, **({"cache": "dual"} if policy == "dual" else {}))
    m.generate(prompt, **kw)  # warm-up (allocator, cuBLAS handles)

    def run():
        out = m.generate(prompt, **kw)
        torch.cuda.synchronize()
        return out

    out = benchmark.pedantic(run, rounds=3, iterations=1)
    seconds = benchmark.stats.stats.median
    _E2E[(policy, kernels)] = (seconds, out.tokens.cpu())
    base = _E2E.get((policy, "all"))
    benchmark.extra_info.update(op=f"decode 8B-shaped x{E2E_LAYERS} layers", group=policy, impl=f"kernels={kernels}",
                                baseline="kernels=none", nfe=out.nfe, tokens_per_s=GEN / seconds)
    if kernels == "none" and base is not None:
        benchmark.extra_info["tokens_equal_kernels_on_off"] = bool(torch.equal(base[1], out.tokens.cpu()))
