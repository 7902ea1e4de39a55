"""Decoding always ends: a model that predicts the mask token, NaN logits and a huge `steps` neither spin nor
exhaust memory, under every policy, cache and variable-length generation."""
import pytest
import torch

import illada_rt
from illada_rt.errors import DecodingError
from illada_rt.synthetic import TinySpec, write_checkpoint

MASK = 5  # the issue's `--mask-id 5` on a tied checkpoint whose head was never taught to avoid it
POLICIES = [dict(), dict(threshold=0.9), dict(factor=1.0), dict(cache="prefix"), dict(cache="dual"),
            dict(threshold=0.9, cache="dual"), dict(factor=1.0, cache="prefix")]
POLICY_IDS = [",".join(f"{k}={v}" for k, v in p.items()) or "fixed" for p in POLICIES]


@pytest.fixture(scope="module")
def mask_predictor(tmp_path_factory):
    """A real checkpoint whose tied LM head is not taught to avoid the mask token: the mask embedding's own
    direction wins the argmax at masked positions, as the issue's `--mask-id 5` repro did."""
    d = write_checkpoint(tmp_path_factory.mktemp("maskpred") / "ckpt",
                         TinySpec(layout="llama", tied=True, quiet_token=None, mask_token_id=None, seed=21))
    return illada_rt.load(d, mask_token_id=MASK)


def _bounded(limit):
    """A callback that fails the test (instead of hanging it) once decoding passes `limit` forwards."""
    def cb(step, tokens, transferred):
        assert step < limit, f"decoding did not end within {limit} forwards"
    return cb


def test_the_checkpoint_really_predicts_the_mask_token(mask_predictor):
    prompt = torch.randint(10, 99, (2, 6), generator=torch.Generator().manual_seed(0))
    canvas = torch.cat([prompt, torch.full((2, 8), MASK)], 1)
    top = mask_predictor.forward(canvas)[:, 6:].argmax(-1)
    assert (top == MASK).float().mean() > 0.5  # without the rule, most masked positions would "fill" with MASK


@pytest.mark.parametrize("policy", POLICIES, ids=POLICY_IDS)
@pytest.mark.parametrize("sampling", [dict(), dict(temperature=0.7, seed=3), dict(remasking="random", seed=4)],
                         ids=["greedy", "gumbel", "random"])
def test_every_policy_ends_and_fills_every_mask(mask_predictor, policy, sampling):
    prompt = torch.randint(10, 99, (2, 5), generator=torch.Generator().manual_seed(1))
    g = mask_predictor.generate(prompt, gen_length=16, steps=16, block_length=8, callback=_bounded(16),
                                **policy, **sampling)
    assert g.nfe <= 16                          # at most one forward per mask
    assert not (g.generated == MASK).any()      # the mask token is never a prediction


@pytest.mark.parametrize("policy", POLICIES, ids=POLICY_IDS)
def test_variable_length_ends(mask_predictor, policy):
    g = mask_predictor.generate([[15, 16, 17]], gen_length=None, max_new_tokens=24, steps=8, block_length=8,
                                callback=_bounded(24), **policy)
    assert int(g.lengths[0]) <= 24 and not (g.tokens == MASK).any()


def test_infilling_masks_in_the_prompt_are_filled(mask_predictor):
    g = mask_predictor.generate([[15, MASK, 17, MASK, MASK, 19]], gen_length=8, steps=8, block_length=8, threshold=0.9,
                                cache="dual", callback=_bounded(16))
    assert not (g.tokens == MASK).any()


def test_runner_up_keeps_its_probability_under_the_full_softmax(mask_predictor):
    """Where the mask token scores highest, the best other token is taken with the probability the reference's
    softmax (over the whole vocabulary, mask included) gives it."""
    from illada_rt.decoding.llada import propose
    from illada_rt.decoding.noise import RowNoise

    logits = torch.randn(1, 3, 101, generator=torch.Generator().manual_seed(5))
    logits[0, :, MASK] = -5.0
    logits[0, 1, MASK] = 50.0                   # column 1: the mask token wins
    x0, conf = propose(logits.clone(), 0.0, "low_confidence", RowNoise([0]), torch.arange(3)[None], MASK)
    want = logits[0].clone()
    want[1, MASK] = -float("inf")
    assert x0[0].tolist() == want.argmax(-1).tolist()
    p = torch.softmax(logits[0].double(), -1)
    assert torch.allclose(conf[0].double(), p[torch.arange(3), x0[0]], rtol=1e-5, atol=1e-12)
    assert float(conf[0, 1]) < 1e-15          # the runner-up's own (tiny) probability, not renormalized


@pytest.mark.parametrize("cache", [None, "prefix", "dual"])
def test_nan_logits_raise_instead_of_spinning(mask_predictor, cache, monkeypatch):
    m = illada_rt.load(mask_predictor.path, mask_token_id=MASK)
    real = m.transformer.forward
    monkeypatch.setattr(m.transformer, "forward", lambda *a, **k: real(*a, **k) * float("nan"))
    try:
        g = m.generate([[15, 16, 17]], gen_length=8, steps=8, block_length=8, threshold=0.9, cache=cache,
                       callback=_bounded(8))
    except DecodingError as e:
        assert "no progress" in str(e)
    else:  # NaN everywhere: the argmax is some index; it must not be the mask token
        assert not (g.generated == MASK).any()


@pytest.mark.parametrize("policy", [dict(), dict(threshold=0.9), dict(cache="dual")], ids=["fixed", "thr", "dual"])
def test_huge_steps_cost_nothing_more(checkpoints, policy):
    """Steps beyond the masks transfer nothing: 2**40 steps decode like 8 (the schedule is never allocated by
    `steps`, nor looped over)."""
    m = illada_rt.load(checkpoints["llada_mha"])
    want = m.generate([[15, 16, 17]], gen_length=8, steps=8, block_length=8, **policy)
    g = m.generate([[15, 16, 17]], gen_length=8, steps=2**40, block_length=8, callback=_bounded(8), **policy)
    assert g.tokens.tolist() == want.tokens.tolist() and g.nfe == want.nfe


def test_huge_steps_in_variable_length(checkpoints):
    m = illada_rt.load(checkpoints["llada_mha"])
    g = m.generate([[15, 16, 17]], gen_length=None, max_new_tokens=16, steps=2**40, block_length=8,
                   callback=_bounded(16))
    assert g.nfe <= 16
