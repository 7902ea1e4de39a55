"""iLLaDA variable-length generation, eos_early_stop, LLaDA's MC log-likelihood and iLLaDA's choice scoring."""
import json
import shutil

import pytest
import torch
import torch.nn.functional as F

import illada_rt
from independent import forward as independent_forward, load_weights

from conftest import MASK_ID


@pytest.fixture(scope="module")
def eos_model(checkpoints, tmp_path_factory):
    """llada_gqa with config.json's eos_token_id set to a token the model emits in its second block, so the
    variable-length decoder has an end of sequence to find."""
    m = illada_rt.load(checkpoints["llada_gqa"])
    g = m.generate([[11, 12, 13, 14]], gen_length=16, steps=16, block_length=8)
    eos = int(g.generated[0, 12])
    d = tmp_path_factory.mktemp("eos") / "m"
    shutil.copytree(checkpoints["llada_gqa"], d)
    cfg = json.loads((d / "config.json").read_text())
    cfg["eos_token_id"] = eos
    (d / "config.json").write_text(json.dumps(cfg))
    return illada_rt.load(d)


def _blockwise(m, prompt, block, max_new, eos, **kw):
    """Variable length by definition: decode one block at a time after the text so far, stop at EOS or max_new."""
    out = []
    while len(out) < max_new:
        n = min(block, max_new - len(out))
        g = m.generate([prompt + out], gen_length=n, steps=n, block_length=n, **kw)
        new = g.generated[0].tolist()
        if eos in new:
            return out + new[:new.index(eos) + 1]
        out += new
    return out


@pytest.mark.parametrize("kw", [dict(), dict(threshold=0.5), dict(cache="prefix"), dict(cache="dual", threshold=0.7)])
def test_variable_length_matches_blockwise_definition(eos_model, kw):
    eos = eos_model.config.eos_token_id
    prompt = [11, 12, 13, 14]
    g = eos_model.generate([prompt], gen_length=None, max_new_tokens=40, steps=8, block_length=8, **kw)
    want = _blockwise(eos_model, prompt, 8, 40, eos, **kw)
    n = int(g.lengths[0])
    assert g.generated[0, :n].tolist() == want
    assert g.attention_mask[0].sum() == len(prompt) + n


def test_variable_length_stops_at_eos_and_batches(eos_model):
    eos = eos_model.config.eos_token_id
    rows = [[11, 12, 13, 14], [40, 41], [70, 71, 72, 73, 74, 75]]
    widths = []
    g = eos_model.generate(rows, gen_length=None, max_new_tokens=32, steps=8, block_length=8,
                           callback=lambda s, t, tr: widths.append(t.shape[0]))
    for r, row in enumerate(rows):
        alone = eos_model.generate([row], gen_length=None, max_new_tokens=32, steps=8, block_length=8)
        n = int(g.lengths[r])
        assert g.generated[r, :n].tolist() == alone.generated[0, :int(alone.lengths[0])].tolist()
        seq = g.generated[r, :n].tolist()
        assert (seq[-1] == eos and eos not in seq[:-1]) or n == 32   # trailing tokens after EOS dropped
        assert not bool(g.attention_mask[r, g.prompt_length + n:].any())
    # row 0 stops at its EOS (in its second block): later rounds run without it
    assert int(g.lengths[0]) <= 16
    assert widths[0] == 3 and min(widths) < 3


def test_max_new_tokens_not_a_multiple_of_block(checkpoints):
    m = illada_rt.load(checkpoints["llada_mha"])
    g = m.generate([[3, 4, 5]], gen_length=None, max_new_tokens=13, steps=4, block_length=4)
    assert int(g.lengths[0]) == 13 or g.generated[0, int(g.lengths[0]) - 1] == m.config.eos_token_id
    assert not bool((g.generated[0, :int(g.lengths[0])] == MASK_ID).any())


def _eos_after(m, monkeypatch, col):
    """Make the model predict EOS with certainty at canvas columns >= col (an int, or one per row)."""
    eos = m.config.eos_token_id
    real = m.transformer.forward

    def forward(ids, key_mask=None, positions=None, logits_from=0, logits_to=None, cache=None, cache_from=None,
                float_logits=True, logits_rows=None):
        out = real(ids, key_mask, positions, logits_from, logits_to, cache, cache_from, float_logits)
        first = (cache_from or 0) + logits_from
        cols = torch.arange(first, first + out.shape[1])
        starts = torch.tensor(col if isinstance(col, list) else [col] * out.shape[0])
        boost = (cols[None, :] >= starts[:, None]).float() * 100.0
        out[:, :, eos] += boost
        return out if logits_rows is None else out[logits_rows]  # the cells the decoder asks for

    monkeypatch.setattr(m.transformer, "forward", forward)
    return eos


@pytest.mark.parametrize("kw", [dict(), dict(cache="dual"), dict(threshold=0.9, cache="prefix")])
def test_eos_early_stop(checkpoints, monkeypatch, kw):
    m = illada_rt.load(checkpoints["llada_mha"])
    prompt = [[1, 2, 3], [4, 5, 6]]
    eos = _eos_after(m, monkeypatch, 3 + 8)            # blocks 2.. are all EOS
    full = m.generate(prompt, gen_length=64, steps=64, block_length=8, **kw)
    early = m.generate(prompt, gen_length=64, steps=64, block_length=8, eos_early_stop=True, **kw)
    assert early.tokens.tolist() == full.tokens.tolist()     # same canvas, the tail filled with EOS
    assert (full.generated[:, 8:] == eos).all() and not (full.generated[:, :8] == eos).any()
    assert early.nfe < full.nfe                              # stopped after block 2 instead of 8
    if not kw:
        assert (early.nfe, full.nfe) == (16, 64)


def test_eos_early_stop_waits_for_every_row(checkpoints, monkeypatch):
    m = illada_rt.load(checkpoints["llada_mha"])
    eos = _eos_after(m, monkeypatch, [3 + 8, 3 + 16])   # row 1 ends one block later than row 0
    g = m.generate([[1, 2, 3], [4, 5, 6]], gen_length=32, steps=32, block_length=8, eos_early_stop=True)
    assert g.nfe == 24
    assert (g.generated[0, 8:] == eos).all() and (g.generated[1, 16:] == eos).all()


def test_rows_ended():
    from illada_rt.decoding.llada import rows_ended
    eos = torch.tensor([9])
    x = torch.tensor([[1, 2, 5, 9, 9, 0], [1, 2, 9, 9, 9, 0]])
    assert rows_ended(x, 2, 5, eos).tolist() == [True, True]
    assert rows_ended(torch.tensor([[1, 2, 5, 9, 4, 0]]), 2, 5, eos).tolist() == [False]  # a non-EOS after EOS
    assert rows_ended(torch.tensor([[1, 2, 5, 6, 7, 9]]), 2, 5, eos).tolist() == [False]  # no EOS before the end
    assert rows_ended(torch.tensor([[1, 2, 9, 9, 9, 0], [1, 2, 5, 6, 7, 9]]), 2, 5, eos).tolist() == [True, False]


# ---------------------------------------------------------------------------------------------- scoring
def _llada_mc(m, ctx, cont, mc_num, batch_size, seed):
    """LLaDA eval_llada.get_loglikelihood, written out, with the same seeded generator and full-canvas logits."""
    gen = torch.Generator().manual_seed(seed)
    seq = torch.tensor([ctx + cont]).repeat(batch_size, 1)
    P, L = len(ctx), len(cont)
    losses = []
    for _ in range(mc_num // batch_size):
        k = torch.randint(1, L + 1, (), generator=gen)
        x = torch.round(torch.linspace(float(k), float(k) + (batch_size - 1) * (L / batch_size), steps=batch_size)).long()
        x = ((x - 1) % L) + 1
        is_mask = torch.arange(L).repeat(batch_size, 1) < x[:, None]
        for i in range(batch_size):
            is_mask[i] = is_mask[i][torch.randperm(L, generator=gen)]
        is_mask = torch.cat([torch.zeros(batch_size, P, dtype=torch.bool), is_mask], 1)
        noisy = torch.where(is_mask, MASK_ID, seq)
        p_mask = (x / L)[:, None].repeat(1, P + L)
        logits = m.forward(noisy)
        loss = F.cross_entropy(logits[is_mask], seq[is_mask], reduction="none") / p_mask[is_mask]
        losses.append(float(loss.sum()) / batch_size)
    return -sum(losses) / len(losses)


@pytest.mark.parametrize("cont_len", [2, 5])
def test_loglikelihood_matches_llada_estimator(checkpoints, cont_len):
    m = illada_rt.load(checkpoints["llada_gqa"])
    ctx, cont = [5, 6, 7, 8, 9], list(range(20, 20 + cont_len))
    got = m.loglikelihood(ctx, cont, mc_num=32, batch_size=8, seed=3)
    want = _llada_mc(m, ctx, cont, 32, 8, 3)
    assert got == pytest.approx(want, rel=1e-5, abs=1e-4)   # fp32 logits of a window vs the full canvas
    assert got < 0
    assert m.loglikelihood(ctx, cont, mc_num=32, batch_size=8, seed=3) == got  # seeded: reproducible


def test_single_token_loglikelihood_is_exact(checkpoints):
    m = illada_rt.load(checkpoints["llada_mha"])
    ctx = [5, 6, 7]
    logits = m.forward(torch.tensor([ctx + [MASK_ID]]))[0, -1].double()
    for t in (3, 40, 77):
        assert m.loglikelihood(ctx, [t]) == pytest.approx(float(torch.log_softmax(logits, -1)[t]), abs=1e-6)
    # every token's against the independent float64 model's log-softmax at the masked position (4.2e-6 measured)
    want = torch.log_softmax(independent_forward(load_weights(checkpoints["llada_mha"]),
                                                 torch.tensor([ctx + [MASK_ID]]))[0, -1], -1)
    got = torch.tensor([m.loglikelihood(ctx, [t]) for t in range(101)], dtype=torch.float64)
    torch.testing.assert_close(got, want, atol=2e-5, rtol=0)


def _confidence_score(m, ctx, choice):
    """iLLaDA's confidence-based score, written out with full-canvas forwards."""
    seq = torch.tensor([ctx + [MASK_ID] * len(choice)])
    masked = list(range(len(choice)))
    total = 0.0
    for _ in choice:
        logp = torch.log_softmax(m.forward(seq)[0, len(ctx):].double(), -1)
        best = max(masked, key=lambda i: float(logp[i, choice[i]]))
        total += float(logp[best, choice[best]])
        seq[0, len(ctx) + best] = choice[best]
        masked.remove(best)
    return total


def test_score_choices(checkpoints):
    m = illada_rt.load(checkpoints["llada_gqa"])
    ctx = [5, 6, 7, 8]
    choices = [[20], [21, 22, 23], [40, 41], [9, 9, 9, 9]]
    res = m.score_choices(ctx, choices)
    want = [_confidence_score(m, ctx, c) for c in choices]
    assert res.scores == pytest.approx(want, abs=1e-6)
    assert res.best == max(range(4), key=want.__getitem__)
    assert res.scores[0] == pytest.approx(m.loglikelihood(ctx, [20]), abs=1e-6)  # one token: exact log-prob


@pytest.mark.parametrize("call,needle", [
    (lambda m: m.loglikelihood([1, 2], []), "continuation: empty"),
    (lambda m: m.loglikelihood([1, 2], [3, 4], mc_num=10, batch_size=4), "multiple of batch_size"),
    (lambda m: m.loglikelihood([1, 2], [3, 500]), "outside the vocabulary"),
    (lambda m: m.loglikelihood("text", [1]), "expected text"),
    (lambda m: m.score_choices([1, 2], []), "non-empty list"),
    (lambda m: m.generate([[1]], gen_length=None, steps=4, block_length=4), "needs max_new_tokens"),
    (lambda m: m.generate([[1]], gen_length=8, max_new_tokens=8, steps=4, block_length=4), "gen_length=None"),
    (lambda m: m.generate([[1]], gen_length=None, max_new_tokens=8, stop=["x"], steps=4, block_length=4),
     "need a tokenizer"),
])
def test_bad_scoring_and_varlen_arguments(checkpoints, call, needle):
    m = illada_rt.load(checkpoints["llada_mha"])
    with pytest.raises((ValueError, TypeError), match=needle):
        call(m)
