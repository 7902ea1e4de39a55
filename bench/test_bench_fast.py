"""End-to-end decoding policies side by side: exact (LLaDA reference schedule), threshold 0.9, prefix cache and
dual cache (with and without threshold), the same on an int8 (W8A8) copy of the model made by the quantize tool,
and the PyTorch-eager exact baseline (LLaDA's loop over the full canvas, bf16). Prompt 64, gen 128, 64 steps,
block 32. Each result records tokens/s, NFE and the ratio to the eager baseline's time in extra_info.

    ILLADA_BENCH_MODEL=176m pytest bench/test_bench_fast.py --benchmark-columns=median,rounds \
        --benchmark-json=bench-fast.json
"""
import pytest
import torch

import illada_rt
from test_bench_decode import reference_loop

PROMPT, GEN, STEPS, BLOCK = 64, 128, 64, 32
POLICIES = {
    "eager_reference": None,
    "exact": dict(),
    "threshold0.9": dict(threshold=0.9),
    "prefix": dict(cache="prefix"),
    "dual": dict(cache="dual"),
    "dual+threshold0.9": dict(cache="dual", threshold=0.9),
    "exact_int8": dict(),
    "prefix_int8": dict(cache="prefix"),
    "dual_int8": dict(cache="dual"),
}
_TIMES = {}


@pytest.fixture(scope="module")
def models(bench_model_dir, tmp_path_factory):
    from illada_rt.quantize import quantize_checkpoint

    q = tmp_path_factory.mktemp("int8") / "int8"
    quantize_checkpoint(bench_model_dir, q, "int8", progress=False)
    return {"bf16": illada_rt.load(bench_model_dir), "int8": illada_rt.load(q)}


@pytest.mark.parametrize("policy", list(POLICIES))
def test_policy(benchmark, models, policy, monkeypatch):
    model = models["int8" if policy.endswith("_int8") else "bf16"]
    prompt = torch.randint(1, model.config.vocab_size - 1, (1, PROMPT), generator=torch.Generator().manual_seed(0))
    kw = POLICIES[policy]
    if kw is None:
        monkeypatch.setenv("ILLADA_RT_KERNELS", "reference")  # the baseline is plain PyTorch, no compiled kernel
        out = benchmark.pedantic(lambda: reference_loop(model, prompt, GEN, STEPS, BLOCK), rounds=1, iterations=1)
        nfe = STEPS
    else:
        g = benchmark.pedantic(lambda: model.generate(prompt, gen_length=GEN, steps=STEPS, block_length=BLOCK, **kw),
                               rounds=1, iterations=1)
        out, nfe = g.tokens, g.nfe
    assert not bool((out[:, PROMPT:] == model.mask_token_id).any())
    seconds = benchmark.stats.stats.median if benchmark.stats else float("nan")
    _TIMES[policy] = seconds
    base = _TIMES.get("eager_reference")
    benchmark.extra_info.update(nfe=nfe, tokens_per_s=GEN / seconds if seconds else None,
                                vs_eager=base / seconds if base and seconds else None)
