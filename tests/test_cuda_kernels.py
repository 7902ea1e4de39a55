"""The CUDA kernels (csrc/cuda/*.cu) against their PyTorch references, on two backends with the same cases:

- `emulator`: the very same kernel sources compiled as host C++ and run by the CUDA emulator (_C_cuda_emu) on CPU
  tensors, in every CI run, with its checkers on (shared-memory races, uninitialized and not-yet-landed shared reads,
  out-of-bounds accesses, barrier and warp-collective divergence), at sizes that keep the suite in budget (keys up
  to ~512);
- `gpu`: _C_cuda on a real GPU (pytest -m gpu; bench/gpu_check.sh), up to 8192 keys. Skipped without a GPU.

What can be checked about argument validation without either is in test_cuda_validation.py.
"""
import pytest
import torch

import illada_rt
from illada_rt import ops
from illada_rt.ops import cuda as cuda_ops
from illada_rt.ops import reference
from independent import fastdllm_threshold_select

C, EMU = cuda_ops._C_cuda, cuda_ops._C_cuda_emu
HAS_GPU = C is not None and torch.cuda.is_available() and C.device_count() > 0
gpu = pytest.mark.gpu
needs_gpu = pytest.mark.skipif(not HAS_GPU, reason="needs a CUDA GPU and _C_cuda")


class Backend:
    def __init__(self, name: str):
        self.name = name
        self.emulated = name == "emulator"
        self.device = torch.device("cpu" if self.emulated else "cuda")
        self.module = EMU if self.emulated else C

    def stream(self) -> int:
        return 0 if self.emulated else torch.cuda.current_stream().cuda_stream

    def randn(self, *shape, seed: int, dtype=torch.float32, scale=1.0) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed % 2**31)
        return (torch.randn(*shape, generator=g) * scale).to(dtype).to(self.device)


@pytest.fixture(params=["emulator", pytest.param("gpu", marks=[gpu, needs_gpu])])
def be(request):
    """The backend; on the emulator, the test must have launched at least one emulated kernel."""
    b = Backend(request.param)
    before = sum(EMU.launch_counts().values())
    yield b
    if b.emulated:
        assert sum(EMU.launch_counts().values()) > before, "the test ran no kernel on the emulator"


def only_gpu(*values):
    return pytest.param(*values, marks=pytest.mark.gpu_only)


@pytest.fixture(autouse=True)
def _skip_gpu_only_on_the_emulator(request):
    callspec = getattr(request.node, "callspec", None)
    if request.node.get_closest_marker("gpu_only") and callspec and callspec.params.get("be") == "emulator":
        pytest.skip("a GPU-sized case (the emulator runs the smaller ones)")


def _attention_f64(q, k, v, key_mask):
    return reference.attention(q.double(), k.double(), v.double(), key_mask)


def _check_attention(out, q, k, v, key_mask):
    """Within twice the error of PyTorch's own attention in the same dtype (vs float64), plus a bf16-sized floor."""
    ref = _attention_f64(q, k, v, key_mask)
    same_dtype = reference.attention(q, k, v, key_mask).double()
    assert torch.isfinite(out).all(), "every output element must be written"
    err = (out.double() - ref).abs().max().item()
    err_torch = (same_dtype - ref).abs().max().item()
    assert err <= 2 * err_torch + 1e-3, (err, err_torch)


# ---- attention ---------------------------------------------------------------------------------------------------

ATTN_SHAPES = [  # B, Hq, Hkv, Tq, Tk
    (1, 1, 1, 1, 1), (1, 4, 4, 17, 33), (2, 8, 2, 64, 64), (3, 4, 1, 100, 257), (1, 8, 2, 333, 77), (1, 2, 1, 65, 513),
    only_gpu((1, 32, 8, 333, 77)), only_gpu((2, 32, 8, 1024, 1024)), only_gpu((1, 8, 8, 32, 2048)),
]


@pytest.mark.parametrize("shape", ATTN_SHAPES)
@pytest.mark.parametrize("D", [64, 128])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("masked", [False, True])
def test_attention_matches_reference(be, shape, D, dtype, masked):
    B, Hq, Hkv, Tq, Tk = shape
    seed = hash((shape, D, masked))
    q = be.randn(B, Tq, Hq, D, seed=seed, dtype=dtype).transpose(1, 2)  # the model's layout
    k = be.randn(B, Hkv, Tk, D, seed=seed + 1, dtype=dtype)
    v = be.randn(B, Hkv, Tk, D, seed=seed + 2, dtype=dtype)
    key_mask = None
    if masked:
        key_mask = torch.ones(B, Tk, dtype=torch.bool, device=be.device)
        for b in range(B):
            key_mask[b, : (b * 7) % max(Tk, 1)] = False  # left padding of different lengths
            key_mask[b, -1] = True
    out = torch.full((B, Tq, Hq, D), float("nan"), dtype=dtype, device=be.device).transpose(1, 2)
    be.module.attention(q, k, v, out, key_mask, D ** -0.5, be.stream(), 0)
    _check_attention(out, q, k, v, key_mask)


@pytest.mark.parametrize("D", [64, 128])
def test_attention_masks_whole_key_tiles_and_strided_mask_rows(be, D):
    """Keys 0..69 masked (the whole first 64-key tile, live keys after it), a fully masked second tile, and a mask
    that is a slice of a wider tensor (batch stride != Tk)."""
    B, H, Tq, Tk = 3, 2, 40, 200
    q = be.randn(B, H, Tq, D, seed=D, dtype=torch.bfloat16)
    k = be.randn(B, 1, Tk, D, seed=D + 1, dtype=torch.bfloat16)
    v = be.randn(B, 1, Tk, D, seed=D + 2, dtype=torch.bfloat16)
    wide = torch.ones(B, Tk + 13, dtype=torch.bool, device=be.device)
    mask = wide[:, 5:5 + Tk]
    mask[0, :70] = False
    mask[1, 64:128] = False
    mask[2, :-1] = False  # one live key, the last
    assert mask.stride(0) == Tk + 13
    out = torch.empty(B, Tq, H, D, dtype=torch.bfloat16, device=be.device).transpose(1, 2)
    be.module.attention(q, k, v, out, mask, D ** -0.5, be.stream(), 0)
    _check_attention(out, q, k, v, mask)
    assert torch.equal(out[2].float(), v[2, :, -1:].float().expand(H, Tq, D))  # softmax of one key is exactly 1


@pytest.mark.parametrize("L", [512, only_gpu(4096), only_gpu(8192)])
def test_attention_long_canvas_and_cache_slices(be, L):
    q = be.randn(1, 8 if L > 512 else 2, L, 128, seed=L, dtype=torch.bfloat16)
    kv = be.randn(2, 1, 2, L + 64, 128, seed=L + 1, dtype=torch.bfloat16)
    k, v = kv[0, :, :, 32:32 + L], kv[1, :, :, 32:32 + L]  # slices of a larger cache
    _check_attention(cuda_ops.attention(q, k, v, None), q, k, v, None)


def test_attention_cache_step_shapes(be):
    """Tq != Tk: a block of queries against a cached canvas (dual cache), and Tq > Tk."""
    for Tq, Tk in ((32, 300), (130, 64)):
        q = be.randn(2, 4, Tq, 64, seed=Tq, dtype=torch.bfloat16)
        k = be.randn(2, 2, Tk, 64, seed=Tk, dtype=torch.bfloat16)
        v = be.randn(2, 2, Tk, 64, seed=Tk + 1, dtype=torch.bfloat16)
        _check_attention(cuda_ops.attention(q, k, v, None), q, k, v, None)


def test_attention_all_keys_masked_gives_zeros(be):
    q = be.randn(2, 4, 9, 64, seed=1, dtype=torch.bfloat16)
    k = be.randn(2, 4, 70, 64, seed=2, dtype=torch.bfloat16)
    mask = torch.ones(2, 70, dtype=torch.bool, device=be.device)
    mask[1] = False
    out = cuda_ops.attention(q, k, k, mask)
    assert torch.equal(out[1], torch.zeros_like(out[1]))
    ref = _attention_f64(q[:1], k[:1], k[:1], mask[:1])
    assert (out[:1].double() - ref).abs().max().item() < 2e-2


# ---- sampling ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("rows,vocab", [(1, 1), (3, 7), (33, 1000), (32, 126_464), (5, 155_136), (40, 4099),
                                        only_gpu(512, 4099)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("strided", [False, True])
def test_sample_greedy_matches_reference(be, rows, vocab, dtype, strided):
    full = be.randn(rows, vocab + 3, seed=rows * 1000 + vocab, dtype=dtype, scale=3)
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


def test_sample_greedy_ties_go_to_the_lower_index(be):
    logits = torch.zeros(4, 5000, device=be.device)
    logits[0, [17, 4000]] = 5.0
    logits[1, [4999, 3]] = 2.0
    logits[3, :] = -1.0
    token, conf = cuda_ops.sample_tokens(logits)
    assert token.tolist() == [17, 3, 0, 0]
    torch.testing.assert_close(conf[2].cpu(), torch.tensor(1 / 5000))


def test_sample_with_suppressed_tokens(be):
    logits = be.randn(8, 30_000, seed=4)
    logits[:, ::3] = float("-inf")  # e.g. the mask token and other ids a caller rules out
    logits[0, :7] = float("-inf")   # a thread whose first logits are all -inf
    token, conf, margin, entropy = cuda_ops.sample_tokens(logits, margin=True, entropy=True)
    r = reference.sample_greedy(logits)
    assert torch.equal(token, r[0])
    for ours, ref in zip((conf, margin, entropy), r[1:]):
        assert torch.isfinite(ours).all()
        torch.testing.assert_close(ours, ref.float(), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("temperature", [0, 1.5])
@pytest.mark.parametrize("conf_dtype", [torch.float32, torch.float64])
def test_sample_nan_and_infinite_rows_follow_the_documented_rule(be, temperature, conf_dtype):
    """A NaN logit is never the token (0 when every logit is NaN); a row whose softmax is undefined (a NaN or +inf
    logit, or every logit -inf) has NaN confidence, margin and entropy: the rule of the CPU kernels and the
    reference too."""
    x = be.randn(6, 4099, seed=8)
    x[0, 5] = float("nan")
    x[1, :] = float("nan")
    x[2, :] = float("-inf")
    x[3, 50] = float("inf")
    x[4, :7] = float("-inf")
    x[5, ::2] = float("nan")
    token, conf, margin, entropy = cuda_ops.sample_tokens(x, conf_dtype, temperature=temperature, seed=3,
                                                          margin=True, entropy=True)
    finite = torch.where(x.isnan(), float("-inf"), x).cpu()
    assert token[1].item() == 0 and token[3].item() == 50
    assert not x.gather(1, token[:, None]).isnan()[[0, 3, 4, 5]].any()
    if temperature == 0:
        assert token[[0, 4, 5]].tolist() == finite[[0, 4, 5]].argmax(-1).tolist()
    for out in (conf, margin, entropy):
        assert out.isnan().tolist() == [True, True, True, True, False, True]
    want_tok, want_conf = reference.sample_tokens(x, conf_dtype, temperature, seed=3)
    assert torch.equal(token, want_tok)
    torch.testing.assert_close(conf[4], want_conf[4], rtol=5e-5, atol=0)


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
@pytest.mark.parametrize("conf_dtype", [torch.float32, torch.float64])
def test_sample_gumbel_matches_reference_noise(be, temperature, conf_dtype):
    rows, vocab = 16, 126_464
    logits = be.randn(rows, vocab, seed=int(temperature * 10), dtype=torch.bfloat16)
    seed, offset = 2**40 + 5, 2**33 + 3  # offsets and row ids past 2^32: every counter word is used
    row_ids = torch.arange(2**32 + 100, 2**32 + 100 + rows, device=be.device)
    token, conf = cuda_ops.sample_tokens(logits, conf_dtype, temperature=temperature, seed=seed, offset=offset,
                                         row_ids=row_ids)
    noise = reference.gumbel_noise(rows, vocab, seed, offset, row_ids.cpu().numpy()).to(be.device)
    score = logits.float() + temperature * noise
    best = score.max(dim=-1).values
    chosen = score.gather(-1, token[:, None]).squeeze(-1)
    assert (chosen >= best - 1e-4 * best.abs().clamp_min(1)).all()  # the argmax, up to logf rounding near ties
    p = torch.softmax(logits.to(conf_dtype), -1).gather(-1, token[:, None]).squeeze(-1)
    torch.testing.assert_close(conf, p, rtol=5e-5 if conf_dtype == torch.float32 else 1e-12, atol=0)
    again, _ = cuda_ops.sample_tokens(logits[3:4], temperature=temperature, seed=seed, offset=offset,
                                      row_ids=row_ids[3:4])
    assert again.item() == token[3].item()  # a row's draw does not depend on its batch mates
    other, _ = cuda_ops.sample_tokens(logits, temperature=temperature, seed=seed, offset=offset,
                                      row_ids=row_ids - 2**32)
    assert not torch.equal(other, token)  # the high half of the row id is part of the counter


def test_gumbel_same_tokens_as_the_cpu_kernel(be):
    """One seed, one noise stream: the CPU kernel and the CUDA kernel pick the same tokens, every row (the noise is
    added with two roundings on both, never contracted into an FMA)."""
    logits = torch.randn(64, 126_464, generator=torch.Generator().manual_seed(6)) * 3
    cpu_tok, _ = ops.sample_tokens(logits, temperature=0.8, seed=12345, offset=4)
    dev_tok, _ = cuda_ops.sample_tokens(logits.to(be.device), temperature=0.8, seed=12345, offset=4)
    assert torch.equal(cpu_tok, dev_tok.cpu())


# ---- selection ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("batch,block", [(1, 1), (3, 32), (4, 100), (2, 4096)])
def test_select_top_k_matches_reference(be, batch, block):
    mask_id = 126_336
    g = torch.Generator().manual_seed(batch * block)
    conf = torch.rand(batch, block, generator=g)
    conf[:, ::5] = 0.5  # ties: go to the lower position
    tokens = torch.where(torch.rand(batch, block, generator=g) < 0.7, mask_id, 7)
    x0 = torch.randint(1000, 2000, (batch, block), generator=g)  # never 7 or the mask id
    k = torch.randint(0, block + 2, (batch,), generator=g)
    k[0] = 0 if batch > 1 else k[0]  # k = 0: nothing moves
    cand = tokens[-1] == mask_id
    if int((cand & (conf[-1] == 0.5)).sum()) >= 2:  # the last row's cut falls inside a group of tied candidates
        k[-1] = int((cand & (conf[-1] > 0.5)).sum()) + 1
    ours = tokens.clone().to(be.device)
    n_ours = torch.empty(batch, dtype=torch.long, device=be.device)
    tmask = torch.empty(batch, block, dtype=torch.bool, device=be.device)
    cuda_ops.select_transfer(conf.to(be.device), x0.to(be.device), ours, mask_id, k=k.to(be.device),
                             transferred=n_ours, transfer_mask=tmask)
    ref, n_ref = tokens.clone(), torch.empty(batch, dtype=torch.long)
    reference.select_confident(conf, x0, k, ref, mask_id, n_ref)
    assert torch.equal(ours.cpu(), ref)
    assert torch.equal(n_ours.cpu(), n_ref)
    assert torch.equal(tmask.cpu(), ours.cpu() != tokens)


@pytest.mark.parametrize("threshold", [0.0, 0.5, 0.9, 1.01])
@pytest.mark.parametrize("conf_dtype", [torch.float32, torch.float64])
def test_select_threshold_matches_fast_dllm_rule(be, threshold, conf_dtype):
    mask_id = 5
    g = torch.Generator().manual_seed(int(threshold * 100))
    conf = torch.rand(6, 64, generator=g).to(conf_dtype)
    conf[0, 10:20] = 0.5  # ties at the threshold count as above it (>=)
    tokens = torch.where(torch.rand(6, 64, generator=g) < 0.5, mask_id, 1)
    tokens[0, 10:20] = mask_id
    tokens[5] = 1  # a row with nothing masked
    x0 = torch.randint(10, 99, (6, 64), generator=g)
    ours, ref = tokens.clone().to(be.device), tokens.clone()
    n = torch.empty(6, dtype=torch.long, device=be.device)
    cuda_ops.select_transfer(conf.to(be.device), x0.to(be.device), ours, mask_id, threshold=threshold, transferred=n)
    take = fastdllm_threshold_select(conf, x0, ref, mask_id, threshold)
    assert torch.equal(ours.cpu(), ref)
    assert torch.equal(n.cpu(), take.sum(-1))
    assert n[5].item() == 0 and (n[:5] >= 1).all()


def test_select_nan_confidences_rank_first_and_count_as_above_the_threshold(be):
    """The documented rule (CPU kernel, CUDA kernel, reference): NaN ranks above every number, so the transferred
    set is always the top of the ranking, and it counts as at or above any threshold."""
    mask_id = 9
    conf = torch.tensor([[0.9, float("nan"), 0.2, 0.95, float("nan"), 0.1],
                         [0.1, 0.2, 0.3, 0.4, 0.5, float("nan")]])
    tokens = torch.full((2, 6), mask_id)
    tokens[0, 0] = 1  # position 0 of row 0 is not a candidate
    x0 = torch.arange(100, 112).view(2, 6)
    for kwargs, want in ((dict(k=torch.tensor([3, 1])), [[1, 3, 4], [5]]),
                         (dict(threshold=0.92), [[1, 3, 4], [5]]),
                         (dict(k=torch.tensor([0, 0])), [[], []])):
        ours = tokens.clone().to(be.device)
        kw = {k: (v.to(be.device) if torch.is_tensor(v) else v) for k, v in kwargs.items()}
        cuda_ops.select_transfer(conf.to(be.device), x0.to(be.device), ours, mask_id, **kw)
        moved = [(ours[b].cpu() != tokens[b]).nonzero().flatten().tolist() for b in range(2)]
        assert moved == want, kwargs
        ref = tokens.clone()
        reference.select_confident(conf, x0, kwargs.get("k"), ref, mask_id, None, kwargs.get("threshold"))
        assert torch.equal(ours.cpu(), ref), kwargs


# ---- whole decodes -----------------------------------------------------------------------------------------------

def _bf16_ulp(x: torch.Tensor) -> torch.Tensor:
    return torch.exp2(torch.floor(torch.log2(x.abs().clamp_min(2.0**-10))) - 7)


def _decode(model, prompts, kw, emulated):
    steps = []
    cb = lambda step, tokens, transferred: steps.append(tokens.clone())  # noqa: E731
    if emulated:
        with cuda_ops.emulated() as emu:
            out = model.generate(prompts, callback=cb, **kw)
        return out, steps, emu.launches
    return model.generate(prompts, callback=cb, **kw), steps, None


def _assert_agree_but_at_near_ties(model, model32, cpu_steps, emu_steps, cpu_out, emu_out):
    """Token for token equal until a step whose choice was a near-tie in bf16 (two candidates' float32 logits within
    3 bf16 ulps, or two positions' confidences within 3% or their log-confidences within 3 bf16 ulps of their logits);
    from there on the canvases may part."""
    first = next((i for i, (a, b) in enumerate(zip(cpu_steps, emu_steps)) if not torch.equal(a, b)), None)
    if first is None:
        assert torch.equal(cpu_out.tokens, emu_out.tokens)
        return None
    before = cpu_steps[first - 1] if first else None
    assert before is not None, "the very first step differs: not a near-tie"
    attn = (before != model32.config.pad_token_id).long()
    logits = model32.forward(before, attn)
    probs = torch.softmax(logits, -1)
    a, b = cpu_steps[first], emu_steps[first]
    mask_id = model32.config.mask_token_id
    for row, pos in (a != b).nonzero().tolist():
        ta, tb = int(a[row, pos]), int(b[row, pos])
        if ta != mask_id and tb != mask_id:  # both filled it, with different tokens: a logit near-tie
            la, lb = logits[row, pos, ta], logits[row, pos, tb]
            assert (la - lb).abs() <= 3 * _bf16_ulp(torch.maximum(la.abs(), lb.abs())), (first, row, pos)
        else:  # one path filled it, the other another position: a confidence near-tie between the two
            filled = ta if ta != mask_id else tb
            p_here = probs[row, pos, filled]
            others = (a[row] != b[row]) & ((a[row] == mask_id) != (b[row] == mask_id))
            others[pos] = False
            cand = [(q, int(a[row, q]) if a[row, q] != mask_id else int(b[row, q]))
                    for q in others.nonzero().flatten().tolist()]
            # within 3% of each other, or their log-probabilities within 3 bf16 ulps of their logits (bf16 rounding of
            # logits that size moves a log-probability that much; where PyTorch computes the CPU path's attention,
            # on CPUs without AVX-512, the two paths part at such ties: 6% apart at logits of ~8)
            lp = torch.log(probs)
            ties = [abs(p_here - probs[row, q, t]) / max(p_here, probs[row, q, t]) <= 0.03
                    or (lp[row, pos, filled] - lp[row, q, t]).abs()
                    <= 3 * _bf16_ulp(torch.maximum(logits[row, pos, filled].abs(), logits[row, q, t].abs()))
                    for q, t in cand]
            assert cand and any(ties), (first, row, pos)
    return first


@pytest.mark.parametrize("policy", [dict(), dict(threshold=0.5), dict(cache="dual"), dict(cache="prefix"),
                                    dict(temperature=0.7, seed=3)])
def test_decode_on_the_emulator_agrees_with_the_cpu_path_but_at_bf16_near_ties(policy):
    """The embedded model (bf16, head dim 64) decoding with every CUDA kernel on the emulator: token for token the
    CPU path's decode, until a step whose choice was a near-tie in bf16; from there on the canvases may part."""
    model = illada_rt.load()
    model32 = illada_rt.load(dtype=torch.float32)
    prompts = ["The cat sat on the", "Once upon a time"]  # exact and threshold decoding part at a near-tie at step 6
    kw = dict(gen_length=32, steps=32, block_length=16, **policy)
    cpu_out, cpu_steps, _ = _decode(model, prompts, kw, False)
    emu_out, emu_steps, launches = _decode(model, prompts, kw, True)
    assert {"attention", "sample_tokens", "select_transfer"} <= set(launches)
    assert launches["attention"] >= 6 * len(emu_steps)  # every layer of every forward
    _assert_agree_but_at_near_ties(model, model32, cpu_steps, emu_steps, cpu_out, emu_out)


def _w8a8_fp8_reference(x, w, out_dtype=None, isa=None):
    """The W8A8 FP8 linear written out independently (what gemm_fp8 computes on sm_89+): activations to e4m3 per
    token (scale max|x| / 448), float64 product with the dequantized weight."""
    x2 = x.reshape(-1, w.K).float()
    amax = x2.abs().amax(1)
    s = torch.where(amax > 0, amax / 448, torch.ones_like(amax))
    q = (x2 / s[:, None]).clamp(-448, 448).to(torch.float8_e4m3fn)
    out = (q.double() @ (w.weight().double() * w.scale.double()[:, None]).T) * s.double()[:, None]
    return out.to(out_dtype or x.dtype).reshape(*x.shape[:-1], w.N)


@pytest.mark.parametrize("scheme", ["int8", "fp8"])
def test_quantized_decode_on_the_emulator_runs_the_gemms_and_agrees(tmp_path, scheme, monkeypatch):
    """An int8 (or fp8) copy of the embedded model decoding on the emulator runs every linear through gemm_w8a8
    (gemm_fp8) and agrees with the CPU path but at bf16 near-ties: the int8 GEMM equals the CPU W8A8 kernel bit for
    bit; for fp8 the CPU side runs the same W8A8 FP8 arithmetic written independently (the CPU kernel itself keeps
    bf16 activations)."""
    from illada_rt.api import DEFAULT_MODEL
    from illada_rt.quantize import quantize_checkpoint

    if scheme == "fp8" and not ops.fp8_kernel_available():
        pytest.skip("fp8 checkpoints load dequantized on this CPU (no FP8-weight kernel without AVX-512 BF16): no "
                    "linear reaches linear_fp8w, so none reaches the emulated gemm_fp8")
    dst = tmp_path / scheme
    quantize_checkpoint(DEFAULT_MODEL, dst, scheme=scheme, progress=False)
    model, model32 = illada_rt.load(dst), illada_rt.load(dst, dtype=torch.float32)
    prompts = ["The cat sat on the", "Once upon a time"]
    kw = dict(gen_length=16, steps=16, block_length=16)  # 44 canvas rows: one 64-row tile per GEMM
    if scheme == "fp8":
        monkeypatch.setattr(ops, "linear_fp8w", _w8a8_fp8_reference)
    cpu_out, cpu_steps, _ = _decode(model, prompts, kw, False)
    monkeypatch.undo()
    emu_out, emu_steps, launches = _decode(model, prompts, kw, True)
    gemm = "gemm_w8a8" if scheme == "int8" else "gemm_fp8"
    assert launches[gemm] >= 7 * 6 * len(emu_steps) and launches["quantize_rows"] == launches[gemm]
    _assert_agree_but_at_near_ties(model, model32, cpu_steps, emu_steps, cpu_out, emu_out)


# ---- GPU only ----------------------------------------------------------------------------------------------------

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
def test_generate_with_cuda_kernels_matches_reference_ops(tmp_path, monkeypatch):
    from illada_rt.synthetic import TinySpec, write_checkpoint

    monkeypatch.setenv("ILLADA_RT_CUDA_KERNELS", "all")
    monkeypatch.delenv("ILLADA_RT_KERNELS", raising=False)
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
    gpu_ = illada_rt.load(checkpoints["llada_gqa"], device="cuda").generate(prompt, **kw).tokens.cpu()
    assert torch.equal(cpu, gpu_)
