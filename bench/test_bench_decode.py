"""End-to-end decode on a small synthetic model: illada-rt's generate beside a full-canvas re-implementation
of LLaDA's reference loop (LM head and sampling over the whole canvas), same model and inputs.

    pytest bench/test_bench_decode.py
"""
import pytest
import torch
import torch.nn.functional as F

import illada_rt

GEN, STEPS, BLOCK = 64, 32, 16


def reference_loop(m, prompt, GEN=GEN, STEPS=STEPS, BLOCK=BLOCK):
    """LLaDA generate.py's loop at temperature 0, logits over the full canvas every step."""
    mask_id, P = m.mask_token_id, prompt.shape[1]
    x = torch.full((prompt.shape[0], P + GEN), mask_id, dtype=torch.long)
    x[:, :P] = prompt
    nb, spb = GEN // BLOCK, STEPS // (GEN // BLOCK)
    for b in range(nb):
        n = (x[:, P + b * BLOCK:P + (b + 1) * BLOCK] == mask_id).sum(1, keepdim=True)
        sched = n // spb + (torch.arange(spb)[None] < n % spb).long()
        for i in range(spb):
            mask = x == mask_id
            logits = m.forward(x)
            x0 = logits.argmax(-1)
            p = torch.gather(F.softmax(logits, -1), -1, x0[..., None]).squeeze(-1)
            p[:, P + (b + 1) * BLOCK:] = float("-inf")
            conf = torch.where(mask, p, torch.tensor(float("-inf")))
            for r in range(x.shape[0]):
                idx = torch.topk(conf[r], int(sched[r, i])).indices
                x[r, idx] = torch.where(mask[r, idx], x0[r, idx], x[r, idx])
    return x


@pytest.mark.parametrize("impl", ["illada_rt", "reference_loop"])
@pytest.mark.parametrize("batch", [1, 4])
def test_decode(benchmark, small_model_dir, impl, batch):
    m = illada_rt.load(small_model_dir)
    prompt = torch.randint(1, 4000, (batch, 48), generator=torch.Generator().manual_seed(0))
    if impl == "illada_rt":
        out = benchmark(lambda: m.generate(prompt, gen_length=GEN, steps=STEPS, block_length=BLOCK).tokens)
        assert torch.equal(out, reference_loop(m, prompt))  # same tokens, less work
    else:
        out = benchmark(lambda: reference_loop(m, prompt))
    assert out.shape == (batch, 48 + GEN)
    assert not bool((out == m.mask_token_id).any())
