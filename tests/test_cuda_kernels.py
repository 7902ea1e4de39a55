"""CUDA kernels (_C_cuda) on a GPU: attention, sampling and selection against their PyTorch references, graph
capture, and generate with the kernels on and off (pytest -m gpu; bench/gpu_check.sh runs these). Skipped without a
GPU; what can be checked without one is in test_cuda_validation.py.
"""
import pytest
import torch

import illada_rt
from illada_rt import ops
from illada_rt.ops import cuda as cuda_ops
from illada_rt.ops import reference
from independent import fastdllm_threshold_select

C = cuda_ops._C_cuda
HAS_GPU = C is not None and torch.cuda.is_available() and C.device_count() > 0
gpu = pytest.mark.gpu
needs_gpu = pytest.mark.skipif(not HAS_GPU, reason="needs a CUDA GPU and _C_cuda")


@pytest.fixture
def all_cuda_kernels(monkeypatch):
    monkeypatch.setenv("ILLADA_RT_CUDA_KERNELS", "all")
    monkeypatch.delenv("ILLADA_RT_KERNELS", raising=False)


def _attention_f64(q, k, v, key_mask):
    return reference.attention(q.double(), k.double(), v.double(), key_mask)


ATTN_SHAPES = [  # B, Hq, Hkv, Tq, Tk
    (1, 1, 1, 1, 1), (1, 4, 4, 17, 33), (2, 8, 2, 64, 64), (3, 4, 1, 100, 257), (1, 32, 8, 333, 77),
    (2, 32, 8, 1024, 1024), (1, 8, 8, 32, 2048),
]


@gpu
@needs_gpu
@pytest.mark.parametrize("shape", ATTN_SHAPES)
@pytest.mark.parametrize("D", [64, 128])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("masked", [False, True])
def test_attention_matches_reference(shape, D, dtype, masked):
    B, Hq, Hkv, Tq, Tk = shape
    g = torch.Generator(device="cuda").manual_seed(hash((shape, D, masked)) % 2**31)
    q = torch.randn(B, Tq, Hq, D, device="cuda", generator=g).to(dtype).transpose(1, 2)  # the model's layout
    k = torch.randn(B, Hkv, Tk, D, device="cuda", generator=g).to(dtype)
    v = torch.randn(B, Hkv, Tk, D, device="cuda", generator=g).to(dtype)
    key_mask = None
    if masked:
        key_mask = torch.ones(B, Tk, dtype=torch.bool, device="cuda")
        for b in range(B):
            key_mask[b, : (b * 7) % max(Tk, 1)] = False  # left padding of different lengths
            key_mask[b, -1] = True
    out = torch.full((B, Tq, Hq, D), float("nan"), dtype=dtype, device="cuda").transpose(1, 2)
    C.attention(q, k, v, out, key_mask, D ** -0.5, torch.cuda.current_stream().cuda_stream, 0)
    ref = _attention_f64(q, k, v, key_mask)
    same_dtype = reference.attention(q, k, v, key_mask).double()
    assert torch.isfinite(out).all(), "every output element must be written"
    err = (out.double() - ref).abs().max().item()
    err_torch = (same_dtype - ref).abs().max().item()
    assert err <= 2 * err_torch + 1e-3, (err, err_torch)


@gpu
@needs_gpu
def test_attention_long_canvas_and_cache_slices():
    for L in (4096, 8192):
        q = torch.randn(1, 8, L, 128, device="cuda", dtype=torch.bfloat16)
        kv = torch.randn(2, 1, 2, L + 64, 128, device="cuda", dtype=torch.bfloat16)
        k, v = kv[0, :, :, 32:32 + L], kv[1, :, :, 32:32 + L]  # slices of a larger cache
        out = cuda_ops.attention(q, k, v, None)
        ref = _attention_f64(q, k, v, None)
        err = (out.double() - ref).abs().max().item()
        err_torch = (reference.attention(q, k, v).double() - ref).abs().max().item()
        assert err <= 2 * err_torch + 1e-3, (L, err, err_torch)


@gpu
@needs_gpu
def test_attention_all_keys_masked_gives_zeros():
    q = torch.randn(2, 4, 9, 64, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(2, 4, 70, 64, device="cuda", dtype=torch.bfloat16)
    mask = torch.ones(2, 70, dtype=torch.bool, device="cuda")
    mask[1] = False
    out = cuda_ops.attention(q, k, k, mask)
    assert torch.equal(out[1], torch.zeros_like(out[1]))
    ref = _attention_f64(q[:1], k[:1], k[:1], mask[:1])
    assert (out[:1].double() - ref).abs().max().item() < 2e-2


@gpu
@needs_gpu
@pytest.mark.parametrize("rows,vocab", [(1, 1), (3, 7), (33, 1000), (32, 126_464), (5, 155_136), (512, 4099)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("strided", [False, True])
def test_sample_greedy_matches_reference(rows, vocab, dtype, strided):
    g = torch.Generator(device="cuda").manual_seed(rows * 1000 + vocab)
    full = (torch.randn(rows, vocab + 3, device="cuda", generator=g) * 3).to(dtype)
    logits = full[:, 1:vocab + 1] if strided else full[:, :vocab].contiguous()  # strided: the unaligned path
    token, conf, margin, entropy = cuda_ops.sample_tokens(logits, torch.float32, margin=True, entropy=True)
    r_token, r_conf, r_margin, r_entropy = reference.sample_greedy(logits)
    assert torch.equal(token, r_token)
    # float32 sums of up to 155k terms in a different order: a few 1e-6 relative
    torch.testing.assert_close(conf, r_conf.float(), rtol=5e-5, atol=1e-7)
    torch.testing.assert_close(margin, r_margin.float(), rtol=5e-5, atol=1e-6)
    torch.testing.assert_close(entropy, r_entropy.float(), rtol=1e-4, atol=1e-5)
    _, conf64 = cuda_ops.sample_tokens(logits, torch.float64)
    p64 = torch.softmax(logits.double(), dim=-1).gather(-1, r_token[:, None]).squeeze(-1)
    torch.testing.assert_close(conf64, p64, rtol=1e-12, atol=1e-15)


@gpu
@needs_gpu
def test_sample_greedy_ties_go_to_the_lower_index():
    logits = torch.zeros(4, 5000, device="cuda")
    logits[0, [17, 4000]] = 5.0
    logits[1, [4999, 3]] = 2.0
    logits[3, :] = -1.0
    token, conf = cuda_ops.sample_tokens(logits)
    assert token.tolist() == [17, 3, 0, 0]
    torch.testing.assert_close(conf[2], torch.tensor(1 / 5000, device="cuda"))


@gpu
@needs_gpu
def test_sample_with_suppressed_tokens():
    logits = torch.randn(8, 30_000, device="cuda")
    logits[:, ::3] = float("-inf")  # e.g. the mask token and other ids a caller rules out
    logits[0, :7] = float("-inf")   # a thread whose first logits are all -inf
    token, conf, margin, entropy = cuda_ops.sample_tokens(logits, margin=True, entropy=True)
    r = reference.sample_greedy(logits)
    assert torch.equal(token, r[0])
    for ours, ref in zip((conf, margin, entropy), r[1:]):
        assert torch.isfinite(ours).all()
        torch.testing.assert_close(ours, ref.float(), rtol=1e-4, atol=1e-6)


@gpu
@needs_gpu
@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
def test_sample_gumbel_matches_reference_noise(temperature):
    rows, vocab = 16, 126_464
    logits = torch.randn(rows, vocab, device="cuda").to(torch.bfloat16)
    row_ids = torch.arange(100, 100 + rows, device="cuda")
    token, conf = cuda_ops.sample_tokens(logits, temperature=temperature, seed=2**40 + 5, offset=3, row_ids=row_ids)
    noise = reference.gumbel_noise(rows, vocab, 2**40 + 5, 3, row_ids.cpu().numpy()).cuda()
    score = logits.float() + temperature * noise
    best = score.max(dim=-1).values
    chosen = score.gather(-1, token[:, None]).squeeze(-1)
    assert (chosen >= best - 1e-4 * best.abs().clamp_min(1)).all()  # the argmax, up to logf rounding near ties
    p = torch.softmax(logits.float(), -1).gather(-1, token[:, None]).squeeze(-1)
    torch.testing.assert_close(conf, p, rtol=5e-5, atol=1e-8)
    again, _ = cuda_ops.sample_tokens(logits[3:4], temperature=temperature, seed=2**40 + 5, offset=3,
                                      row_ids=row_ids[3:4])
    assert again.item() == token[3].item()  # a row's draw does not depend on its batch mates


@gpu
@needs_gpu
def test_gumbel_same_tokens_on_cpu_and_gpu():
    """One seed, one noise stream: the CPU kernel and the CUDA kernel pick the same tokens (away from near-ties)."""
    logits = torch.randn(64, 126_464) * 3
    cpu_tok, _ = ops.sample_tokens(logits, temperature=0.8, seed=12345, offset=4)
    gpu_tok, _ = cuda_ops.sample_tokens(logits.cuda(), temperature=0.8, seed=12345, offset=4)
    score = logits + 0.8 * reference.gumbel_noise(64, 126_464, 12345, 4)
    top2 = torch.topk(score, 2, dim=-1).values
    clear = top2[:, 0] - top2[:, 1] > 1e-4
    assert torch.equal(cpu_tok[clear], gpu_tok.cpu()[clear]) and int(clear.sum()) > 48


@gpu
@needs_gpu
@pytest.mark.parametrize("batch,block", [(1, 1), (3, 32), (4, 100), (2, 4096)])
def test_select_top_k_matches_reference(batch, block):
    mask_id = 126_336
    g = torch.Generator(device="cuda").manual_seed(batch * block)
    conf = torch.rand(batch, block, device="cuda", generator=g)
    conf[:, ::5] = 0.5  # ties: go to the lower position
    tokens = torch.where(torch.rand(batch, block, device="cuda", generator=g) < 0.7, mask_id, 7)
    x0 = torch.randint(1000, 2000, (batch, block), device="cuda", generator=g)  # never 7 or the mask id
    k = torch.randint(0, block + 2, (batch,), device="cuda", generator=g)
    ours, ref = tokens.clone(), tokens.clone().cpu()
    n_ours = torch.empty(batch, dtype=torch.long, device="cuda")
    tmask = torch.empty(batch, block, dtype=torch.bool, device="cuda")
    cuda_ops.select_transfer(conf, x0, ours, mask_id, k=k, transferred=n_ours, transfer_mask=tmask)
    n_ref = torch.empty(batch, dtype=torch.long)
    ops.select_confident(conf.cpu(), x0.cpu(), k.cpu(), ref, mask_id, n_ref)  # the CPU kernel: same tie rule
    assert torch.equal(ours.cpu(), ref)
    assert torch.equal(n_ours.cpu(), n_ref)
    assert torch.equal(tmask.cpu(), ours.cpu() != tokens.cpu())


@gpu
@needs_gpu
@pytest.mark.parametrize("threshold", [0.0, 0.5, 0.9, 1.01])
@pytest.mark.parametrize("conf_dtype", [torch.float32, torch.float64])
def test_select_threshold_matches_fast_dllm_rule(threshold, conf_dtype):
    mask_id = 5
    g = torch.Generator(device="cuda").manual_seed(int(threshold * 100))
    conf = torch.rand(6, 64, device="cuda", generator=g).to(conf_dtype)
    tokens = torch.where(torch.rand(6, 64, device="cuda", generator=g) < 0.5, mask_id, 1)
    tokens[5] = 1  # a row with nothing masked
    x0 = torch.randint(10, 99, (6, 64), device="cuda", generator=g)
    ours, ref = tokens.clone(), tokens.clone()
    n = torch.empty(6, dtype=torch.long, device="cuda")
    cuda_ops.select_transfer(conf, x0, ours, mask_id, threshold=threshold, transferred=n)
    take = fastdllm_threshold_select(conf, x0, ref, mask_id, threshold)
    assert torch.equal(ours, ref)
    assert torch.equal(n, take.sum(-1))
    assert n[5].item() == 0 and (n[:5] >= 1).all()


@gpu
@needs_gpu
def test_sampling_step_is_graph_capturable():
    mask_id, vocab = 3, 32_768
    logits = torch.randn(2 * 32, vocab, device="cuda", dtype=torch.bfloat16)
    tokens = torch.full((2, 32), mask_id, device="cuda")
    k = torch.tensor([4, 9], device="cuda")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm up outside the capture
        x0, conf = cuda_ops.sample_tokens(logits)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        x0, conf = cuda_ops.sample_tokens(logits)
        cuda_ops.select_transfer(conf.view(2, 32), x0.view(2, 32), tokens, mask_id, k=k)
    graph.replay()
    torch.cuda.synchronize()
    expect = torch.full((2, 32), mask_id, device="cuda")
    ref_tok, ref_conf = reference.sample_greedy(logits)[:2]
    reference.select_confident(ref_conf.view(2, 32), ref_tok.view(2, 32), k, expect, mask_id)
    assert torch.equal(tokens, expect)
    assert (tokens != mask_id).sum(-1).tolist() == [4, 9]


@gpu
@needs_gpu
def test_generate_with_cuda_kernels_matches_reference_ops(tmp_path, all_cuda_kernels, monkeypatch):
    from illada_rt.synthetic import TinySpec, write_checkpoint

    ckpt = write_checkpoint(tmp_path / "hd64", TinySpec(d_model=256, n_heads=4, n_kv_heads=2, mlp_hidden_size=384,
                                                         seed=21))  # head dim 64: the attention kernel's
    calls = {"attention": 0, "sample": 0}
    real_attn, real_sample = cuda_ops.attention, cuda_ops.sample_tokens

    def count(name, fn):
        def wrapped(*a, **kw):
            calls[name] += 1
            return fn(*a, **kw)
        return wrapped

    monkeypatch.setattr(cuda_ops, "attention", count("attention", real_attn))
    monkeypatch.setattr(cuda_ops, "sample_tokens", count("sample", real_sample))
    # float32: attention stays on SDPA (the kernel is bf16/fp16), sampling and selection run the kernels, and the
    # greedy tokens must equal the reference ops' exactly
    m = illada_rt.load(ckpt, device="cuda", dtype=torch.float32)
    prompt = [[3, 4, 5, 6], [7, 8, 9, 10]]
    ours = m.generate(prompt, gen_length=16, steps=8, block_length=8).tokens
    assert calls["sample"] > 0
    monkeypatch.setenv("ILLADA_RT_CUDA_KERNELS", "none")
    ref = m.generate(prompt, gen_length=16, steps=8, block_length=8).tokens
    assert torch.equal(ours, ref)
    # bf16: the attention kernel runs in the model
    monkeypatch.setenv("ILLADA_RT_CUDA_KERNELS", "all")
    mb = illada_rt.load(ckpt, device="cuda", dtype=torch.bfloat16)
    out = mb.generate(prompt, gen_length=16, steps=8, block_length=8)
    assert calls["attention"] > 0 and out.tokens.shape == ours.shape


@gpu
@needs_gpu
def test_seeded_sampling_draws_the_same_noise_on_cpu_and_gpu(checkpoints):
    """generate's Gumbel noise is keyed by a CPU generator and drawn by Philox: a float32 model samples the same
    tokens on both devices (logits agree to ~1e-6, far inside the noise's margins)."""
    prompt = [[3, 4, 5, 6], [9, 8, 7, 6]]
    kw = dict(gen_length=16, steps=8, block_length=8, temperature=0.8, seed=3)
    cpu = illada_rt.load(checkpoints["llada_gqa"]).generate(prompt, **kw).tokens
    gpu = illada_rt.load(checkpoints["llada_gqa"], device="cuda").generate(prompt, **kw).tokens.cpu()
    assert torch.equal(cpu, gpu)
