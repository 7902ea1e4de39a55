"""A row decodes to the same tokens alone or in any batch: per-row seeds for sampled decoding, and padding that
never influences anything, whatever ids it holds (the mask id, -1, ...)."""
import pytest
import torch

import illada_rt

from conftest import MASK_ID

SAMPLING = [dict(temperature=0.8), dict(remasking="random"), dict(temperature=0.5, remasking="random")]
POLICIES = [dict(), dict(cfg_scale=1.0), dict(threshold=0.7), dict(factor=1.0), dict(cache="prefix"),
            dict(cache="dual"), dict(threshold=0.7, cache="dual"), dict(gen_length=None, max_new_tokens=16),
            dict(gen_length=None, max_new_tokens=16, threshold=0.7, cache="dual")]


def _ids(kw):
    return ",".join(f"{k}={v}" for k, v in kw.items()) or "fixed"


@pytest.fixture(scope="module")
def model(checkpoints):
    return illada_rt.load(checkpoints["llama_gqa_tied"], mask_token_id=MASK_ID)


def _gen(m, rows, **kw):
    args = dict(gen_length=16, steps=16, block_length=8)
    args.update(kw)
    g = m.generate(rows, **args)
    return [g.generated[r, :int(g.lengths[r])].tolist() for r in range(g.generated.shape[0])], g


@pytest.mark.parametrize("policy", POLICIES, ids=_ids)
@pytest.mark.parametrize("sampling", SAMPLING, ids=_ids)
def test_each_row_decodes_as_alone_with_its_seed(model, policy, sampling):
    rows = [[5, 9, 13], [7, 3, 8, 21, 34, 55, 2], [5, 9, 13]]   # ragged (padding), and a repeated row
    seeds = [7, 2**64 - 1, 11]
    batched, _ = _gen(model, rows, seed=seeds, **policy, **sampling)
    for r, (row, s) in enumerate(zip(rows, seeds)):
        alone, _ = _gen(model, [row], seed=[s], **policy, **sampling)
        assert alone[0] == batched[r], f"row {r}"
        assert _gen(model, [row], seed=s, **policy, **sampling)[0][0] == alone[0]  # an int seed: the same stream
    assert batched[0] != batched[2]          # the same prompt with another seed draws other noise


@pytest.mark.parametrize("sampling", SAMPLING, ids=_ids)
def test_an_int_seed_gives_every_row_that_seed(model, sampling):
    rows = [[5, 9, 13], [60, 61]]
    batched, _ = _gen(model, rows, seed=123, **sampling)
    assert batched == _gen(model, rows, seed=[123, 123], **sampling)[0]
    assert _gen(model, [rows[0], rows[0]], seed=123, **sampling)[0][0] == batched[0]


@pytest.mark.parametrize("pad", [MASK_ID, -1, 10**9, 0])
@pytest.mark.parametrize("policy", [dict(), dict(threshold=0.5), dict(threshold=0.5, cache="dual"),
                                    dict(temperature=0.8, seed=3), dict(gen_length=None, max_new_tokens=16)], ids=_ids)
def test_padding_ids_never_matter(model, pad, policy):
    """Left padding holding the mask id (or an id outside the vocabulary) is not filled, not embedded and costs no
    forward: the padded row decodes, in the same number of forwards, exactly as the unpadded one."""
    row = [7, 3, 8, 21]
    prompt = torch.tensor([[pad, pad, pad] + row])
    attn = torch.tensor([[0, 0, 0, 1, 1, 1, 1]])
    padded, gp = _gen(model, prompt, attention_mask=attn, **policy)
    alone, ga = _gen(model, [row], **policy)
    assert padded == alone and gp.nfe == ga.nfe
    assert gp.tokens[0, :3].tolist() == [model.pad_token_id] * 3     # padding columns hold the pad id


@pytest.mark.parametrize("pad", [MASK_ID, -1])
def test_forward_ignores_padding_ids(model, pad):
    row = torch.tensor([[7, 3, 8, 21, MASK_ID, 40]])
    prompt = torch.cat([torch.full((1, 5), pad), row], 1)
    attn = torch.cat([torch.zeros(1, 5), torch.ones(1, 6)], 1)
    got = model.forward(prompt, attention_mask=attn)[0, 5:]
    want = model.forward(row)[0]
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-5), float((got - want).abs().max())


@pytest.mark.parametrize("seed,msg", [([1, 2], "2 seeds for a batch of 3"), (2**64, "seed"), (-1, "seed"),
                                      ([1, "x", 3], "seed"), (True, "seed"), ([], "seed"), (1.5, "seed")])
def test_bad_seeds(model, seed, msg):
    with pytest.raises(ValueError, match=msg):
        model.generate([[5], [6], [7]], gen_length=8, steps=8, block_length=8, temperature=0.5, seed=seed)
