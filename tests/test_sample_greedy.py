"""Fused greedy sampling (argmax + softmax confidence, optional margin and entropy): every compiled ISA variant
against the PyTorch reference computed in float64, over odd vocabularies, bf16, strided rows, ties and -inf."""
import pytest
import torch

from illada_rt import ops
from illada_rt.ops import reference

_C = pytest.importorskip("illada_rt._C")
ISAS = ops.cpu_isas()


def _run(logits, isa, extras=True, conf_dtype=torch.float32):
    R = logits.shape[0]
    tok, conf = torch.empty(R, dtype=torch.int64), torch.empty(R, dtype=conf_dtype)
    margin, ent = (torch.empty(R), torch.empty(R)) if extras else (None, None)
    _C.sample_greedy(logits, tok, conf, margin, ent, 2, isa)
    return tok, conf, margin, ent


def _check(logits, isa, extras=True):
    tok, conf, margin, ent = _run(logits, isa, extras)
    want_tok, want_conf, want_margin, want_ent = reference.sample_greedy(logits.double())
    assert torch.equal(tok, want_tok)
    torch.testing.assert_close(conf.double(), want_conf, rtol=2e-6, atol=1e-12)
    if extras:
        torch.testing.assert_close(margin.double(), want_margin, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(ent.double(), want_ent, rtol=1e-5, atol=1e-5)
    return tok


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("R,V", [(1, 1), (3, 15), (5, 16), (4, 17), (33, 100), (7, 1000), (2, 4099), (2, 126464)])
@pytest.mark.parametrize("extras", [True, False])
def test_matches_float64_reference(isa, dtype, R, V, extras):
    g = torch.Generator().manual_seed(R * 1000 + V)
    logits = (torch.randn(R, V, generator=g) * 4).to(dtype)
    _check(logits, isa, extras)


@pytest.mark.parametrize("isa", ISAS)
def test_float64_confidence_matches_a_float64_softmax(isa):
    """conf_dtype float64 (Fast-dLLM ranks and thresholds float64 softmax probabilities): double precision
    throughout, so it agrees with torch's float64 softmax to ~1e-15, not to fp32's ~1e-7."""
    for dtype in (torch.float32, torch.bfloat16):
        logits = (torch.randn(9, 50001, generator=torch.Generator().manual_seed(7)) * 5).to(dtype)
        logits[3, :100] = float("-inf")
        tok, conf, _, ent = _run(logits, isa, conf_dtype=torch.float64)
        want_tok, want_conf, _, want_ent = reference.sample_greedy(logits.double())
        assert conf.dtype == torch.float64 and torch.equal(tok, want_tok)
        torch.testing.assert_close(conf, want_conf, rtol=1e-13, atol=0)
        torch.testing.assert_close(ent.double(), want_ent, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("isa", ISAS)
def test_ties_go_to_the_first_index_and_margin_is_zero(isa):
    logits = torch.randn(6, 300, generator=torch.Generator().manual_seed(1))
    for r, cols in enumerate([(5, 6), (0, 299), (17, 18, 250), (15, 16), (31, 32), (100, 47)]):
        logits[r, list(cols)] = 9.0
    tok, _, margin, _ = _run(logits, isa)
    assert tok.tolist() == [5, 0, 17, 15, 31, 47]
    assert torch.all(margin == 0)


@pytest.mark.parametrize("isa", ISAS)
def test_strided_rows_and_infinities(isa):
    big = torch.randn(8, 2 * 257, generator=torch.Generator().manual_seed(2))
    rows = big[:, 3:260]                          # row stride 514, inner contiguous
    rows[1, :] = float("-inf")
    rows[1, 100] = 0.5                            # one finite logit: probability 1, entropy 0
    rows[2, ::2] = float("-inf")
    tok, conf, margin, ent = _run(rows, isa)
    assert tok[1] == 100 and conf[1] == 1 and margin[1] == 1 and ent[1] == 0
    _check(rows, isa)


def test_op_layer_matches_reference_and_reference_mode(monkeypatch):
    logits = torch.randn(2, 5, 333, generator=torch.Generator().manual_seed(3))
    tok, conf = ops.sample_greedy(logits)
    want_tok, want_conf, _, _ = reference.sample_greedy(logits)
    assert tok.shape == (2, 5) and torch.equal(tok, want_tok)
    torch.testing.assert_close(conf, want_conf, rtol=1e-5, atol=0)
    tok64, conf64 = ops.sample_greedy(logits, torch.float64)
    assert conf64.dtype == torch.float64 and torch.equal(tok64, want_tok)
    torch.testing.assert_close(conf64, reference.sample_greedy(logits.double())[1], rtol=1e-13, atol=0)
    monkeypatch.setenv("ILLADA_RT_KERNELS", "reference")
    assert torch.equal(ops.sample_greedy(logits)[0], want_tok)


def test_empty_rows():
    tok, conf, _, _ = _run(torch.empty(0, 10), ISAS[-1])
    assert tok.numel() == 0 and conf.numel() == 0


@pytest.mark.parametrize("bad,match", [
    (dict(logits=torch.zeros(2, 8, dtype=torch.float64)), "logits: expected dtype"),
    (dict(logits=torch.zeros(2, 0)), "vocabulary dimension is empty"),
    (dict(logits=torch.zeros(8, 2).t()), "last dimension must be contiguous"),
    (dict(token=torch.zeros(3, dtype=torch.int64)), "token: dimension 0"),
    (dict(token=torch.zeros(2, dtype=torch.int32)), "token: expected dtype int64"),
    (dict(confidence=torch.zeros(2, dtype=torch.float16)), "confidence: expected dtype float32 or float64"),
    (dict(margin=torch.zeros(1)), "margin: dimension 0"),
    (dict(entropy=torch.zeros(2, dtype=torch.int64)), "entropy: expected dtype"),
    (dict(n_threads=0), "n_threads"),
    (dict(isa="neon"), "isa"),
])
def test_argument_checks(bad, match):
    args = dict(logits=torch.zeros(2, 8), token=torch.zeros(2, dtype=torch.int64), confidence=torch.zeros(2),
                margin=None, entropy=None, n_threads=1, isa=None)
    args.update(bad)
    with pytest.raises((ValueError, TypeError), match=match):
        _C.sample_greedy(**args)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("R,V", [(1, 1), (3, 7), (4, 64), (5, 1000), (2, 4099), (2, 126464)])
@pytest.mark.parametrize("temperature", [0.3, 1.0, 2.5])
def test_gumbel_mode_matches_reference_noise(isa, dtype, R, V, temperature):
    """temperature > 0: the Gumbel-max with the Philox noise reference.gumbel_noise defines (the CUDA kernel's
    stream), away from ties exactly the reference's token; the confidence is that token's softmax probability."""
    g = torch.Generator().manual_seed(R * V)
    logits = (torch.randn(R, V, generator=g) * 3).to(dtype)
    row_ids = torch.arange(100, 100 + R)
    seed, offset = 2**40 + 17, 9
    tok, conf = torch.empty(R, dtype=torch.int64), torch.empty(R, dtype=torch.float64)
    _C.sample_greedy(logits, tok, conf, None, None, 2, isa, temperature=temperature, seed=seed, offset=offset,
                     row_ids=row_ids)
    score = logits.float() + temperature * reference.gumbel_noise(R, V, seed, offset, row_ids.numpy())
    top2 = torch.topk(score, min(2, V), dim=-1).values
    clear = (top2[:, 0] - top2[:, -1] > 1e-4) | (V == 1)  # rows whose winner is not a near-tie
    assert torch.equal(tok[clear], score.argmax(-1)[clear])
    chosen = score.gather(-1, tok[:, None]).squeeze(-1)
    assert bool((chosen >= top2[:, 0] - 1e-5 * top2[:, 0].abs().clamp_min(1)).all())
    want = torch.softmax(logits.double(), -1).gather(-1, tok[:, None]).squeeze(-1)
    torch.testing.assert_close(conf, want, rtol=1e-12, atol=0)


def test_gumbel_mode_streams():
    logits = torch.zeros(4, 5000)  # flat logits: the token is the noise's argmax alone
    tok = lambda **kw: ops.sample_tokens(logits, temperature=1.0, **kw)[0]  # noqa: E731
    a = tok(seed=1)
    assert torch.equal(a, tok(seed=1)) and len(set(a.tolist())) == 4  # deterministic; rows draw independently
    assert not torch.equal(a, tok(seed=2)) and not torch.equal(a, tok(seed=1, offset=1))
    # a row's draw depends on its row id, not on its batch mates
    assert tok(seed=1, row_ids=torch.tensor([7, 8, 2, 9]))[2] == a[2]
    assert torch.equal(ops.sample_tokens(logits, temperature=0.0)[0], torch.zeros(4, dtype=torch.long))


@pytest.mark.parametrize("kwargs,exc,needle", [
    (dict(temperature=-1.0), ValueError, "temperature: must be finite and >= 0"),
    (dict(temperature=float("inf")), ValueError, "temperature: must be finite"),
    (dict(temperature=1.0, row_ids=torch.zeros(3, dtype=torch.int64)), ValueError, "row_ids: dimension 0"),
    (dict(temperature=1.0, row_ids=torch.zeros(2)), TypeError, "row_ids: expected dtype int64"),
])
def test_gumbel_argument_validation(kwargs, exc, needle):
    tok, conf = torch.empty(2, dtype=torch.int64), torch.empty(2)
    with pytest.raises(exc, match=needle):
        _C.sample_greedy(torch.randn(2, 10), tok, conf, None, None, 1, None, **kwargs)


# Seed 0, offset 0, row id 7: the Philox word of vocabulary index 663870 is 0xffffffca, whose top 24 bits are all
# ones (found by searching the reference stream; about one word in 2^24 is such).
EXTREME = dict(seed=0, offset=0, row=7, index=663870)


def _extreme_word():
    from illada_rt.ops.reference import philox4x32_10_torch

    i = EXTREME["index"]
    z = torch.zeros(1, dtype=torch.int64)
    words = philox4x32_10_torch(torch.tensor([i // 4]), torch.tensor([EXTREME["row"]]), z, z, (0, 0))
    return int(words[i % 4])


def test_noise_is_finite_at_the_extreme_word():
    """u = 1 would make the Gumbel noise +inf: the uniform must stay inside (0, 1) for the largest word, written from
    the definition u = ((w >> 9) + 0.5) / 2^23 in float64 (and the smallest)."""
    assert _extreme_word() >> 8 == 0xFFFFFF
    V = EXTREME["index"] + 5
    g = reference.gumbel_noise(1, V, EXTREME["seed"], EXTREME["offset"], [EXTREME["row"]])[0]
    assert bool(torch.isfinite(g).all())
    u = ((_extreme_word() >> 9) + 0.5) / 2**23
    assert 0 < u < 1 and abs(float(g[EXTREME["index"]]) - (-torch.tensor(u).double().log().neg().log())) < 1e-4


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_extreme_word_cannot_pick_a_hopeless_token(isa, dtype):
    """A token 100 nats below the rest never wins a Gumbel-max at temperature 1, not even where its noise word is the
    largest of the stream (before: u rounded to 1, its noise was +inf, and it won)."""
    V = EXTREME["index"] + 37                      # past the index, not a multiple of 64: vector body and tail
    logits = torch.zeros(1, V, dtype=dtype)
    logits[0, EXTREME["index"]] = -100.0
    tok, conf = torch.empty(1, dtype=torch.int64), torch.empty(1, dtype=torch.float32)
    _C.sample_greedy(logits, tok, conf, None, None, 2, isa, temperature=1.0, seed=EXTREME["seed"],
                     offset=EXTREME["offset"], row_ids=torch.tensor([EXTREME["row"]]))
    assert int(tok[0]) != EXTREME["index"]
    ref = reference.sample_tokens(logits, torch.float32, 1.0, EXTREME["seed"], EXTREME["offset"], [EXTREME["row"]])
    assert int(ref[0][0]) != EXTREME["index"]


def _degenerate_rows(V=300, dtype=torch.float32):
    g = torch.Generator().manual_seed(11)
    x = torch.randn(6, V, generator=g)
    x[0, 5] = float("nan")                      # one NaN among numbers
    x[1, :] = float("nan")                      # all NaN
    x[2, :] = float("-inf")                     # all suppressed
    x[3, 50] = float("inf")                     # +inf
    x[4, :7] = float("-inf")                    # some suppressed: an ordinary row
    x[5, ::2] = float("nan")                    # NaNs in every vector lane pattern
    return x.to(dtype)


def _expected_tokens(x):
    """The rule, written out: the first index of the largest non-NaN logit; 0 when every logit is NaN."""
    out = []
    for row in x.double().tolist():
        best, arg = None, 0
        for i, v in enumerate(row):
            if v == v and (best is None or v > best):
                best, arg = v, i
        out.append(arg)
    return out


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("conf_dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("V", [300, 4099])
def test_nan_and_infinite_rows_follow_the_documented_rule(isa, dtype, conf_dtype, V):
    """A NaN logit is never the token; a row whose softmax is undefined (a NaN or +inf logit, every logit -inf) has
    NaN confidence, margin and entropy, as torch.softmax gives them. Every ISA, the reference and float64 agree."""
    x = _degenerate_rows(V, dtype)
    tok, conf, margin, ent = _run(x, isa, conf_dtype=conf_dtype)
    assert tok.tolist() == _expected_tokens(x)
    undefined = [True, True, True, True, False, True]
    for out in (conf, margin, ent):
        assert out.isnan().tolist() == undefined
    p = torch.softmax(x[4].double(), -1)
    assert abs(conf[4].item() - p.max().item()) < 1e-6
    want_tok, want_conf = reference.sample_greedy(x)[:2]
    assert torch.equal(tok, want_tok) and torch.equal(conf.isnan(), want_conf.isnan())


@pytest.mark.parametrize("isa", ISAS)
def test_gumbel_never_picks_a_nan_logit(isa):
    x = _degenerate_rows()
    R = x.shape[0]
    tok, conf = torch.empty(R, dtype=torch.int64), torch.empty(R)
    _C.sample_greedy(x, tok, conf, None, None, 2, isa, temperature=1.5, seed=9, offset=2)
    assert not x.gather(1, tok[:, None]).isnan()[[0, 3, 4, 5]].any()
    assert tok[1].item() == 0 and tok[3].item() == 50  # all NaN: 0; +inf beats any finite noise
    assert torch.equal(tok, reference.sample_tokens(x, temperature=1.5, seed=9, offset=2)[0])


def _bf16_logits(R, V, seed):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(R, V, generator=g) * 4).bfloat16()
    x[0, V // 3] = float("-inf")
    x[1, :] = x[1, 0]  # a row of ties
    x[2, 1] = float("nan")
    return x


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("temperature", [0.0, 0.8])
@pytest.mark.parametrize("conf_dtype", [torch.float32, torch.float64])
def test_bf16_logits_give_what_their_float32_values_give(isa, temperature, conf_dtype):
    """The decoders hand the LM head's bf16 logits to the kernel as they are (Transformer.forward(...,
    float_logits=False)): every result must be that of logits.float(), bit for bit."""
    for R, V in [(5, 17), (4, 32768), (3, 126464)]:
        x = _bf16_logits(R, V, seed=V)
        got, want = [], []
        for logits, out in ((x, got), (x.float(), want)):
            tok, conf = torch.empty(R, dtype=torch.int64), torch.empty(R, dtype=conf_dtype)
            _C.sample_greedy(logits, tok, conf, None, None, 2, isa, temperature=temperature, seed=7, offset=3)
            out += [tok, conf]
        assert torch.equal(got[0], want[0])
        assert torch.equal(got[1].nan_to_num(-1.0), want[1].nan_to_num(-1.0))  # the NaN row's NaN included
        assert bool(got[1][2].isnan()) and not bool(got[1][:2].isnan().any())


@pytest.mark.parametrize("mode", ["auto", "reference"])
@pytest.mark.parametrize("temperature,remasking", [(0.0, "low_confidence"), (0.7, "low_confidence"),
                                                   (0.0, "random"), (0.7, "random")])
def test_propose_reads_bf16_logits_as_their_float32_values(mode, temperature, remasking, monkeypatch):
    """propose on bf16 logits (with the kernel: read as they are; elsewhere: widened first) equals propose on their
    float32 copy, mask-token hits included."""
    from illada_rt.decoding.llada import propose
    from illada_rt.decoding.noise import RowNoise

    monkeypatch.setenv("ILLADA_RT_KERNELS", mode)
    mask = 3
    x = (torch.randn(2, 6, 300, generator=torch.Generator().manual_seed(1)) * 3).bfloat16()
    x[0, 2, mask] = 40.0  # the mask token wins there: the runner-up is taken
    pos = torch.arange(6).repeat(2, 1)
    out = []
    for logits in (x, x.float()):
        for conf_dtype in (torch.float32, torch.float64):
            out.append(propose(logits, temperature, remasking, RowNoise([4, 9]), pos, mask, conf_dtype))
    for (t1, c1), (t2, c2) in zip(out[:2], out[2:]):
        assert torch.equal(t1, t2) and torch.equal(c1, c2) and c1.dtype == c2.dtype
    assert ops.sampling_kernel_reads(x, temperature) == (mode == "auto" and (temperature > 0 or
                                                                              ops.cpu_isa() != "generic"))
