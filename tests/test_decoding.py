"""generate() against a step-by-step re-implementation of LLaDA's reference sampler (tests/independent.py)."""
import pytest
import torch

import illada_rt
from independent import reference_generate

from conftest import MASK_ID

COMBOS = [  # (gen_length, steps, block_length)
    (16, 16, 16), (16, 8, 4), (24, 12, 8), (20, 10, 10), (12, 12, 4), (8, 4, 8), (9, 9, 3), (16, 32, 16),
]


def _prompt(B, P, seed):
    return torch.randint(2, 99, (B, P), generator=torch.Generator().manual_seed(seed))


def _load(checkpoints, name):
    return illada_rt.load(checkpoints[name], mask_token_id=MASK_ID if name == "llama_gqa_tied" else None)


def _full_logits(m):
    return lambda x, am: m.forward(x, attention_mask=am)


@pytest.mark.parametrize("name", ["llada_mha", "llada_gqa", "llama_gqa_tied"])
@pytest.mark.parametrize("gen_length,steps,block_length", COMBOS)
def test_tokens_match_reference_semantics(checkpoints, name, gen_length, steps, block_length):
    m = _load(checkpoints, name)
    prompt = _prompt(1, 7, seed=gen_length * 31 + steps)
    g = m.generate(prompt, gen_length=gen_length, steps=steps, block_length=block_length)
    want, calls = reference_generate(_full_logits(m), prompt, steps=steps, gen_length=gen_length,
                                     block_length=block_length, mask_id=MASK_ID)
    assert torch.equal(g.tokens, want)
    # NFE: the reference's forward count minus steps whose schedule transfers nothing (skipped: they change no token)
    assert g.nfe <= calls
    assert g.nfe == (calls if steps <= gen_length else gen_length)
    assert not bool((g.generated == MASK_ID).all())


@pytest.mark.parametrize("name", ["llada_mha", "llama_gqa_tied"])
def test_cfg_matches_reference_semantics(checkpoints, name):
    m = _load(checkpoints, name)
    prompt = _prompt(2, 6, seed=5)
    g = m.generate(prompt, gen_length=16, steps=8, block_length=8, cfg_scale=1.5)
    want, _ = reference_generate(_full_logits(m), prompt, steps=8, gen_length=16, block_length=8,
                                 mask_id=MASK_ID, cfg_scale=1.5)
    assert torch.equal(g.tokens, want)
    assert not torch.equal(g.tokens, m.generate(prompt, gen_length=16, steps=8, block_length=8).tokens)


def test_batch_of_two_matches_reference_semantics(checkpoints):
    m = _load(checkpoints, "llada_gqa")
    prompt = _prompt(2, 9, seed=8)
    g = m.generate(prompt, gen_length=16, steps=16, block_length=4)
    want, _ = reference_generate(_full_logits(m), prompt, steps=16, gen_length=16, block_length=4, mask_id=MASK_ID)
    assert torch.equal(g.tokens, want)


def test_masks_inside_the_prompt_are_filled(checkpoints):
    """Infilling: the first block's schedule also counts the prompt's masks, so every mask is filled (the
    reference counts only the block's masks and leaves that many generation slots masked)."""
    m = _load(checkpoints, "llada_mha")
    prompt = _prompt(2, 10, seed=2)
    prompt[0, [2, 3, 7]] = MASK_ID
    prompt[1, [5]] = MASK_ID
    g = m.generate(prompt, gen_length=8, steps=8, block_length=4)
    want, _ = reference_generate(_full_logits(m), prompt, steps=8, gen_length=8, block_length=4, mask_id=MASK_ID,
                                 count_prompt_masks=True)
    assert torch.equal(g.tokens, want)
    assert not (g.tokens == MASK_ID).any()
    ref, _ = reference_generate(_full_logits(m), prompt, steps=8, gen_length=8, block_length=4, mask_id=MASK_ID)
    assert (ref == MASK_ID).sum() == 4  # the reference's rule, for contrast


@pytest.mark.parametrize("kwargs", [dict(threshold=0.9), dict(factor=1.0), dict(cache="prefix"),
                                    dict(cache="dual", threshold=0.5), dict(max_new_tokens=8, block_length=4)])
def test_infilling_fills_every_mask_with_every_policy(checkpoints, kwargs):
    m = _load(checkpoints, "llama_gqa_tied")
    prompt = _prompt(2, 10, seed=3)
    prompt[0, [1, 4]] = MASK_ID
    prompt[1, [8]] = MASK_ID
    args = dict(gen_length=8, steps=8, block_length=4)
    if "max_new_tokens" in kwargs:
        args["gen_length"] = None
    args.update(kwargs)
    g = m.generate(prompt, **args)
    assert not (g.tokens == MASK_ID).any()
    assert torch.equal(g.tokens[:, :10][prompt != MASK_ID], prompt[prompt != MASK_ID])


@pytest.mark.parametrize("kwargs", [dict(), dict(cfg_scale=1.0), dict(temperature=0.7, seed=1),
                                    dict(remasking="random", seed=4)])
def test_batch_invariance_with_padding(checkpoints, kwargs):
    """A row's tokens do not depend on its batch mates or on how much left padding it gets."""
    m = _load(checkpoints, "llama_gqa_tied")
    rows = [[5, 9, 13], [7, 3, 8, 21, 34, 55, 2], [60]]
    batched = m.generate(rows, gen_length=12, steps=6, block_length=4, **kwargs)
    P = batched.prompt_length
    for r, row in enumerate(rows):
        alone = m.generate([row], gen_length=12, steps=6, block_length=4, **kwargs)
        assert alone.generated.tolist() == batched.generated[r:r + 1].tolist()
        assert batched.tokens[r, P - len(row):P].tolist() == row
        assert batched.attention_mask[r].sum() == len(row) + 12


def test_seed_makes_sampling_reproducible(checkpoints):
    m = _load(checkpoints, "llada_mha")
    prompt = _prompt(2, 5, seed=1)
    for kw in (dict(temperature=1.0), dict(remasking="random"), dict(temperature=0.5, remasking="random")):
        a = m.generate(prompt, gen_length=16, steps=8, block_length=8, seed=123, **kw).tokens
        b = m.generate(prompt, gen_length=16, steps=8, block_length=8, seed=123, **kw).tokens
        c = m.generate(prompt, gen_length=16, steps=8, block_length=8, seed=124, **kw).tokens
        assert torch.equal(a, b)
        assert not torch.equal(a, c)


def test_gumbel_max_samples_from_the_softmax(checkpoints):
    """temperature=1 on a single masked position samples x0 ~ softmax(logits): check the empirical frequencies."""
    m = _load(checkpoints, "llada_mha")
    prompt = _prompt(1, 6, seed=3)
    probs = torch.softmax(m.forward(torch.cat([prompt, torch.tensor([[MASK_ID]])], 1))[0, -1].double(), -1)
    n = 400
    draws = m.generate(prompt.expand(n, -1), gen_length=1, steps=1, block_length=1, temperature=1.0,
                       seed=list(range(n))).generated[:, 0]  # one seed per row: independent draws
    freq = torch.bincount(draws, minlength=probs.numel()).double() / n
    # total-variation distance of 400 draws from the true distribution: ~ sqrt(V/n)/2 in expectation,
    # here well under 0.25 unless the sampler is wrong (a greedy sampler would give TV = 1 - max p).
    tv = 0.5 * (freq - probs).abs().sum()
    assert tv < 0.25, float(tv)
    assert 1 - probs.max() > 0.3  # the distribution is spread enough for the check to mean something


def test_random_remasking_transfers_schedule_counts(checkpoints):
    m = _load(checkpoints, "llada_gqa")
    prompt = _prompt(1, 4, seed=0)
    g = m.generate(prompt, gen_length=12, steps=12, block_length=12, remasking="random", seed=0)
    assert not bool((g.generated == MASK_ID).any())  # every position transferred, none to the mask id
    assert g.nfe == 12


def test_lm_head_runs_only_on_the_block(checkpoints, monkeypatch):
    m = _load(checkpoints, "llada_mha")
    seen = []
    orig = m.transformer.forward

    def spy(ids, key_mask=None, positions=None, logits_from=0, logits_to=None, **kw):
        out = orig(ids, key_mask, positions, logits_from, logits_to, **kw)
        masked = x_masks(ids[:, logits_from:logits_to])
        assert torch.equal(kw["logits_rows"], masked)
        seen.append((ids.shape[1], logits_to - logits_from, out.shape[0], int(masked.sum())))
        return out

    def x_masks(window):
        return window == m.mask_token_id

    monkeypatch.setattr(m.transformer, "forward", spy)
    m.generate(_prompt(1, 10, seed=1), gen_length=32, steps=8, block_length=8)
    # the whole canvas goes through the blocks; the head is asked for the block's columns at most (fewer once the
    # block's leading positions are filled), and of those for the still-masked cells only
    assert len(seen) == 8 and all(T == 42 and 1 <= L <= 8 and K == masked for T, L, K, masked in seen)
    assert seen[0][1:] == (8, 8, 8) and seen[-1][2] < 8


def test_reference_kernel_mode_gives_same_tokens(checkpoints, monkeypatch):
    m = _load(checkpoints, "llada_gqa")
    prompt = _prompt(2, 7, seed=4)
    a = m.generate(prompt, gen_length=16, steps=8, block_length=8).tokens
    monkeypatch.setenv("ILLADA_RT_KERNELS", "reference")
    assert illada_rt.capabilities()["kernels"]["select_confident"]["cpu"] == "reference"
    b = m.generate(prompt, gen_length=16, steps=8, block_length=8).tokens
    assert torch.equal(a, b)


@pytest.mark.parametrize("conf_dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n_candidates", [0, 3, 9, 16, 24])
def test_greedy_proposals_sample_only_candidate_rows(conf_dtype, n_candidates):
    """propose with candidates: the candidate rows get what sampling every row gives them, bit for bit, whether the
    rows are gathered (few candidates) or not (many); the others get x0 = -1 and confidence -inf."""
    from illada_rt.decoding.llada import propose
    from illada_rt.decoding.noise import RowNoise

    g = torch.Generator().manual_seed(n_candidates)
    logits = (torch.randn(2, 16, 300, generator=g) * 3).to(torch.bfloat16)
    candidates = torch.zeros(2 * 16, dtype=torch.bool)
    candidates[torch.randperm(32, generator=g)[:n_candidates]] = True
    candidates = candidates.view(2, 16)
    positions = torch.arange(16).expand(2, 16)
    noise = RowNoise([0, 1])
    full_x0, full_conf = propose(logits, 0.0, "low_confidence", noise, positions, 299, conf_dtype)
    x0, conf = propose(logits, 0.0, "low_confidence", noise, positions, 299, conf_dtype, candidates=candidates)
    assert conf.dtype == conf_dtype and x0.shape == conf.shape == (2, 16)
    assert torch.equal(x0[candidates], full_x0[candidates])
    assert torch.equal(conf[candidates], full_conf[candidates])
    assert (x0[~candidates] == -1).all() and (conf[~candidates] == float("-inf")).all()
