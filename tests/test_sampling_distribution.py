"""Sampled decoding draws from softmax(logits / T): the empirical frequencies of many Gumbel-max draws (one Philox
stream per row id, all rows holding the same logits) against the exact distribution, at temperatures other than 1,
for every compiled CPU ISA variant and for the reference path (ILLADA_RT_KERNELS=reference), and through `generate`.

A temperature applied the wrong way round (softmax(l * T)), or not at all (softmax(l)), moves some class's frequency
by dozens of standard deviations at this many draws; the bound below is 5 standard deviations per class."""
import pytest
import torch

import illada_rt
from illada_rt import ops

from conftest import MASK_ID

_C = pytest.importorskip("illada_rt._C")
ISAS = ops.cpu_isas()
V = 37          # two full 16-lane vectors and a tail
DRAWS = 200_000
# logits spread over 3 nats: every class keeps >= 20 expected draws at T = 0.5, so the binomial's normal
# approximation holds for each class; rounded to bf16 once, so the float32 and bf16 runs sample the same distribution
LOGITS = (3.0 * torch.rand(V, generator=torch.Generator().manual_seed(5))).to(torch.bfloat16).float()
SEED, OFFSET = 2**33 + 11, 4


def _assert_distribution(tokens: torch.Tensor, temperature: float) -> None:
    p = torch.softmax(LOGITS.double() / temperature, -1)
    assert float(p.min()) * DRAWS >= 20
    counts = torch.bincount(tokens, minlength=V).double()
    sigma = (DRAWS * p * (1 - p)).sqrt()
    z = (counts - DRAWS * p) / sigma
    assert float(z.abs().max()) < 5, (temperature, z.abs().max().item(), int(z.abs().argmax()))
    # the bound can tell the temperature apart: the untempered and the inverted distributions lie far outside it
    for wrong in (torch.softmax(LOGITS.double(), -1), torch.softmax(LOGITS.double() * temperature, -1)):
        assert float(((wrong - p).abs() * DRAWS / sigma).max()) > 25


def _rows(dtype):
    return LOGITS.to(dtype).repeat(DRAWS, 1)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("temperature", [0.5, 2.0])
def test_kernel_samples_the_tempered_softmax(isa, dtype, temperature):
    logits = _rows(dtype)
    tok, conf = torch.empty(DRAWS, dtype=torch.int64), torch.empty(DRAWS)
    _C.sample_greedy(logits, tok, conf, None, None, 2, isa, temperature=temperature, seed=SEED, offset=OFFSET,
                     row_ids=torch.arange(DRAWS, dtype=torch.int64) * 3 + 1)
    _assert_distribution(tok, temperature)


@pytest.mark.parametrize("mode", ["auto", "reference"])
@pytest.mark.parametrize("temperature", [0.5, 2.0])
def test_op_samples_the_tempered_softmax(monkeypatch, mode, temperature):
    """ops.sample_tokens as `generate` calls it (CPU kernel in auto mode, reference.sample_gumbel otherwise)."""
    monkeypatch.setenv("ILLADA_RT_KERNELS", mode)
    tok, conf = ops.sample_tokens(_rows(torch.float32), temperature=temperature, seed=SEED, offset=OFFSET)
    _assert_distribution(tok, temperature)
    # the confidence is the chosen token's untempered softmax probability
    want = torch.softmax(LOGITS.double(), -1)[tok]
    torch.testing.assert_close(conf.double(), want, rtol=1e-6, atol=0)



@pytest.mark.parametrize("temperature", [0.5, 2.0])
def test_generate_samples_the_tempered_softmax(checkpoints, temperature):
    """End to end: `generate` with one seed per row and a single step over G masked positions draws position j's
    token from softmax(logits_j / T) over the tokens other than the mask (never a prediction). Every row holds the
    same canvas, so token c's count over all draws has mean n * sum_j p_j(c) and variance n * sum_j p_j(c)(1 - p_j(c));
    tokens expected fewer than 20 times are pooled."""
    m = illada_rt.load(checkpoints["llada_mha"])
    n, G = 300, 32
    prompt = torch.randint(2, 99, (1, 6), generator=torch.Generator().manual_seed(3))
    logits = m.forward(torch.cat([prompt, torch.full((1, G), MASK_ID)], 1))[0, 6:].double()
    logits[:, MASK_ID] = float("-inf")
    draws = m.generate(prompt.expand(n, -1), gen_length=G, steps=1, block_length=G, temperature=temperature,
                       seed=list(range(n))).generated
    assert not (draws == MASK_ID).any()
    counts = torch.bincount(draws.flatten(), minlength=logits.shape[1]).double()

    def pooled_z(p):  # p [G, V]: z-scores of the counts under these per-position distributions
        mean, var = n * p.sum(0), n * (p * (1 - p)).sum(0)
        big = mean >= 20
        mean, var = torch.cat([mean[big], mean[~big].sum()[None]]), torch.cat([var[big], var[~big].sum()[None]])
        c = torch.cat([counts[big], counts[~big].sum()[None]])
        return (c - mean) / var.sqrt()

    z = pooled_z(torch.softmax(logits / temperature, -1))
    assert z.numel() >= 4 and float(z.abs().max()) < 5, z
    assert float(pooled_z(torch.softmax(logits, -1)).abs().max()) > 15  # the untempered distribution is rejected
