"""Fast-dLLM's threshold/factor parallel decoding and prefix/dual KV caches.

Against a step-by-step re-implementation of Fast-dLLM's decoders on the independent float64 model
(tests/independent.py), against the rules written out literally, and for batch invariance.
"""
import pytest
import torch

import illada_rt
from illada_rt import ops
from illada_rt.decoding.fast import factor_counts
from independent import fastdllm_factor_count, fastdllm_generate, load_weights

from conftest import MASK_ID

POLICIES = [dict(), dict(threshold=0.9), dict(threshold=0.5), dict(factor=1.0)]
SCHEDULES = [(32, 32, 8), (24, 12, 8), (16, 16, 16)]


def _prompt(B, P, seed):
    return torch.randint(2, 99, (B, P), generator=torch.Generator().manual_seed(seed))


def _load(checkpoints, name):
    return illada_rt.load(checkpoints[name], mask_token_id=MASK_ID if name == "llama_gqa_tied" else None)


@pytest.mark.parametrize("name", ["llada_mha", "llama_gqa_tied"])
@pytest.mark.parametrize("cache", [None, "prefix", "dual"])
@pytest.mark.parametrize("policy", POLICIES, ids=lambda p: ",".join(f"{k}={v}" for k, v in p.items()) or "fixed")
@pytest.mark.parametrize("gen_length,steps,block_length", SCHEDULES)
def test_matches_fastdllm_semantics(checkpoints, name, cache, policy, gen_length, steps, block_length):
    if cache is None and not policy:
        pytest.skip("fixed-step without cache is the LLaDA reference decoder (test_decoding.py)")
    m = _load(checkpoints, name)
    prompt = _prompt(1, 7, seed=gen_length + steps)
    g = m.generate(prompt, gen_length=gen_length, steps=steps, block_length=block_length, cache=cache, **policy)
    want, nfe = fastdllm_generate(load_weights(checkpoints[name]), prompt, steps=steps, gen_length=gen_length,
                                  block_length=block_length, mask_id=MASK_ID, cache=cache, **policy)
    assert g.tokens.tolist() == want.tolist()
    assert g.nfe == nfe
    assert not bool((g.generated == MASK_ID).any())


def test_threshold_is_data_dependent(checkpoints):
    m = _load(checkpoints, "llada_gqa")
    prompt = _prompt(1, 7, seed=1)
    nfes = {t: m.generate(prompt, gen_length=32, steps=32, block_length=8, threshold=t).nfe for t in (0.3, 0.9, 1.0)}
    assert nfes[1.0] == 32            # nothing reaches 1.0: one token per forward
    assert nfes[0.3] < nfes[0.9] <= 32


def test_prefix_and_dual_agree_on_one_block(checkpoints):
    """With one block covering the generation, the prefix cache's suffix is the block: the two caches agree."""
    m = _load(checkpoints, "llada_gqa")
    prompt = _prompt(2, 6, seed=3)
    for policy in POLICIES:
        a = m.generate(prompt, gen_length=16, steps=16, block_length=16, cache="prefix", **policy)
        b = m.generate(prompt, gen_length=16, steps=16, block_length=16, cache="dual", **policy)
        assert torch.equal(a.tokens, b.tokens) and a.nfe == b.nfe


@pytest.mark.parametrize("kwargs", [dict(cache="prefix"), dict(cache="dual"), dict(threshold=0.5),
                                    dict(threshold=0.5, cache="dual"), dict(factor=1.0, cache="prefix")])
def test_batch_invariance_with_padding(checkpoints, kwargs):
    m = _load(checkpoints, "llama_gqa_tied")
    rows = [[5, 9, 13], [7, 3, 8, 21, 34, 55, 2], [60]]
    batched = m.generate(rows, gen_length=16, steps=16, block_length=8, **kwargs)
    for r, row in enumerate(rows):
        alone = m.generate([row], gen_length=16, steps=16, block_length=8, **kwargs)
        assert alone.generated.tolist() == batched.generated[r:r + 1].tolist()
        assert alone.nfe <= batched.nfe


@pytest.mark.parametrize("seed", range(40))
def test_factor_rule_matches_its_loop(seed):
    g = torch.Generator().manual_seed(seed)
    n = int(torch.randint(1, 12, (1,), generator=g))
    conf = torch.rand(1, n, generator=g, dtype=torch.float64) ** 0.2   # skewed high: long accepted runs
    cand = torch.ones(1, n, dtype=torch.bool)
    for f in (0.5, 1.0, 2.0):
        assert int(factor_counts(conf, cand, f)[0]) == fastdllm_factor_count(sorted(conf[0].tolist(), reverse=True), f)


def test_threshold_selection_counts():
    conf = torch.tensor([[0.95, 0.2, 0.91, 0.5], [0.1, 0.2, 0.3, 0.4], [0.99, 0.99, 0.1, 0.1]], dtype=torch.float64)
    tokens = torch.tensor([[9, 9, 9, 9], [9, 9, 9, 9], [1, 2, 3, 4]])
    n = torch.zeros(3, dtype=torch.long)
    ops.select_confident(conf, torch.full((3, 4), 5), None, tokens, 9, n, threshold=0.9)
    assert n.tolist() == [2, 1, 0]   # at least one; none without candidates
    assert tokens.tolist() == [[5, 9, 5, 9], [9, 9, 9, 5], [1, 2, 3, 4]]


@pytest.mark.parametrize("kwargs,needle", [
    (dict(threshold=0.9, factor=1.0), "alternatives"),
    (dict(threshold=0.0), "threshold"),
    (dict(threshold=1.5), "threshold"),
    (dict(factor=-1.0), "factor"),
    (dict(cache="full"), "cache"),
    (dict(cache="dual", cfg_scale=1.0), "cfg_scale"),
])
def test_bad_arguments(checkpoints, kwargs, needle):
    m = _load(checkpoints, "llada_mha")
    with pytest.raises(ValueError, match=needle):
        m.generate([[1, 2, 3]], gen_length=8, steps=8, block_length=8, **kwargs)
