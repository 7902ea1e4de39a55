"""End-to-end decoding policies side by side: exact (LLaDA reference schedule), threshold 0.9, prefix cache and
dual cache (with and without threshold), the same on int8 (W8A8) and fp8 (e4m3 weights, bf16 compute) copies of the
model made by the quantize tool,
and two peers in eager PyTorch: LLaDA's loop over the full canvas (bf16; fp32 on CPUs where PyTorch's bf16 matmul is
far slower than its fp32 one), and a Fast-dLLM-style dual cache (the same
decoding loop with every compiled kernel off: PyTorch's GEMMs and SDPA). Prompt 64, gen 128, 64 steps, block 32.

Each result records tokens/s, NFE, the job's GEMM and attention FLOPs (counted in an untimed run: bench/roofline.py)
and the roofline: the time those FLOPs take at this machine's measured bf16 / int8 GEMM rates (fp8 weights compute in
bf16 on a CPU, so at the bf16 rate), with bench/peaks.py's instruction peaks beside them. report.py prints
GOP/s, '% peak' (the roofline fraction) and the ratio to the policy's peer (exact -> LLaDA's loop, caches -> the
eager dual cache). The shared machine's speed drifts by up to ~20% within minutes, so both are taken per round: the
GEMM peak is measured and the peer decoded (untimed by pytest-benchmark) right before each timed round, and the
figures are the medians of the rounds' fractions and ratios.

    ILLADA_BENCH_MODEL=176m pytest bench/test_bench_fast.py --benchmark-columns=median,rounds \
        --benchmark-json=bench-fast.json
"""
import statistics
import time

import pytest
import torch

import illada_rt
from peaks import measured_peaks
from roofline import CATEGORIES, count_flops, gemm_peaks, gemm_peaks_now, profile, roofline, torch_fast_gemms
from test_bench_decode import reference_loop

PROMPT, GEN, STEPS, BLOCK = 64, 128, 64, 32
POLICIES = {
    "eager_reference": None,
    "eager_dual": dict(cache="dual"),
    "exact": dict(),
    "threshold0.9": dict(threshold=0.9),
    "prefix": dict(cache="prefix"),
    "dual": dict(cache="dual"),
    "dual+threshold0.9": dict(cache="dual", threshold=0.9),
    "exact_int8": dict(),
    "prefix_int8": dict(cache="prefix"),
    "dual_int8": dict(cache="dual"),
    "exact_fp8": dict(),
    "dual_fp8": dict(cache="dual"),
}
_TIMES = {}


def _peer_dtype():
    """The peers' dtype: the checkpoint's (bf16), or fp32 where PyTorch's bf16 matmul runs below half its fp32 rate
    (AVX2-only CPUs: roofline.torch_fast_gemms), as a user there would run the model."""
    return None if torch_fast_gemms(torch.get_num_threads())["bf16"] else torch.float32


@pytest.fixture(scope="module")
def models(bench_model_dir, tmp_path_factory):
    from illada_rt.quantize import quantize_checkpoint

    # the peers' model: PyTorch as a user's PyTorch holds the weights (ordinary pages), not our huge-page copies,
    # which speed PyTorch's own GEMMs up too (load(huge_pages=)); in fp32 where PyTorch's bf16 matmul runs below
    # half its fp32 rate (AVX2-only CPUs: roofline.torch_fast_gemms), as a user there would run it
    out = {"bf16": illada_rt.load(bench_model_dir),
           "peer": illada_rt.load(bench_model_dir, huge_pages=False, dtype=_peer_dtype())}
    for scheme in ("int8", "fp8"):
        q = tmp_path_factory.mktemp(scheme) / scheme
        quantize_checkpoint(bench_model_dir, q, scheme, progress=False)
        out[scheme] = illada_rt.load(q)
    return out


def _job(model, kw, prompt):
    """One decode: the policy kw through generate, or LLaDA's loop for kw None."""
    if kw is None:
        return lambda: reference_loop(model, prompt, GEN, STEPS, BLOCK)
    return lambda: model.generate(prompt, gen_length=GEN, steps=STEPS, block_length=BLOCK, **kw)


def _peer_name(policy: str) -> str:
    return "eager_dual" if ("prefix" in policy or "dual" in policy) and policy != "eager_dual" else "eager_reference"


def _run_policy(benchmark, model, policy, kw, prompt, group, times, monkeypatch, peer_model=None):
    """Time one decode (policy kw, or LLaDA's loop for kw None), record its FLOPs, roofline and peer ratio.

    Before each timed round (untimed by pytest-benchmark) the policy's peer runs once on peer_model (bf16, plain
    PyTorch) and the GEMM peak is measured: the round's peer ratio and roofline come from the same minute of the
    shared machine, whose phases move a run by up to ~20%."""
    if policy.startswith("eager"):
        monkeypatch.setenv("ILLADA_RT_KERNELS", "reference")  # the peers are plain PyTorch, no compiled kernel
    job = _job(model, kw, prompt)
    peer = _peer_name(policy)
    peer_job = None if policy.startswith("eager") else _job(peer_model or model, POLICIES[peer], prompt)
    with count_flops() as flops:  # an untimed run of the same job
        job()
    round_peaks, peer_times = [], []  # measured (untimed) right before each round

    def before_round():
        if peer_job is not None:
            with monkeypatch.context() as mp:  # the peer in plain PyTorch, every compiled kernel off
                mp.setenv("ILLADA_RT_KERNELS", "reference")
                t = time.perf_counter()
                peer_job()
                peer_times.append(time.perf_counter() - t)
        round_peaks.append(gemm_peaks_now(torch.get_num_threads()))

    result = benchmark.pedantic(job, setup=before_round, rounds=3, iterations=1)  # the counting run: the warm-up
    out, nfe = (result, STEPS) if kw is None else (result.tokens, result.nfe)
    assert not bool((out[:, prompt.shape[1]:] == model.mask_token_id).any())
    seconds = benchmark.stats.stats.median if benchmark.stats else float("nan")
    times[policy] = seconds
    base = times.get("eager_reference")
    int8 = policy.endswith("_int8")
    peaks = gemm_peaks(torch.get_num_threads())
    roof = roofline(flops, peaks, int8)
    # each round against the peak measured just before it; the median of those fractions is the figure, and
    # roofline_gops (what report.py's "% peak" divides by) the effective peak that gives it at the median time
    rounds = benchmark.stats.stats.data if benchmark.stats else []
    fractions = [roofline(flops, pk, int8)["roofline_s"] / t for t, pk in zip(rounds, round_peaks) if t]
    fraction = statistics.median(fractions) if fractions else None
    if fraction and seconds:
        roof["roofline_gops"] = round((flops["gemm"] + flops["attention"]) / seconds / fraction / 1e9, 1)
    # conservative beside it: the median time against the best peak this test measured (a round whose peak probe met
    # a busy neighbour pairs a slow probe with its round and can read over 100%)
    best = {k: max([pk[k] for pk in round_peaks] + [peaks[k]]) for k in ("bf16_gemm_gops", "int8_gemm_gops")}
    fraction_best = roofline(flops, best, int8)["roofline_s"] / seconds if seconds else None
    ratios = [pt / t for pt, t in zip(peer_times, rounds) if t]
    benchmark.extra_info.update(op="decode", group=group, impl=policy, baseline=peer,
                                flops=flops["gemm"] + flops["attention"],
                                gemm_flops=flops["gemm"], attention_flops=flops["attention"], peak_kind="roofline",
                                peaks={**peaks, **measured_peaks(), "roofline_gops": roof["roofline_gops"]},
                                round_peaks=round_peaks, round_roofline_fractions=fractions,
                                roofline_fraction=fraction, roofline_fraction_best_peak=fraction_best,
                                round_peer_seconds=peer_times,
                                vs_peer=statistics.median(ratios) if ratios else None,
                                nfe=nfe, tokens_per_s=GEN / seconds if seconds else None,
                                vs_eager=base / seconds if base and seconds else None, gemm_routes=flops["routes"])


@pytest.mark.parametrize("policy", list(POLICIES))
def test_policy(benchmark, models, policy, monkeypatch):
    kind = "peer" if policy.startswith("eager") else "bf16"
    model = models[policy.rsplit("_", 1)[1] if policy.endswith(("_int8", "_fp8")) else kind]
    prompt = torch.randint(1, model.config.vocab_size - 1, (1, PROMPT), generator=torch.Generator().manual_seed(0))
    _run_policy(benchmark, model, policy, POLICIES[policy], prompt,
                f"prompt {PROMPT}, gen {GEN}, {STEPS} steps, block {BLOCK}", _TIMES, monkeypatch, models["peer"])


# The embedded trained model (illada_rt.load()): confident where a random model never is, so threshold decoding
# commits several tokens per forward (NFE below the step count).
EMBEDDED_POLICIES = {k: POLICIES[k] for k in ("eager_reference", "eager_dual", "exact", "threshold0.9", "dual",
                                                "dual+threshold0.9")}
_EMBEDDED_TIMES = {}


@pytest.fixture(scope="module")
def embedded():
    return illada_rt.load(), illada_rt.load(huge_pages=False, dtype=_peer_dtype())  # the model, and its peers' (models)


@pytest.mark.parametrize("policy", list(EMBEDDED_POLICIES))
def test_embedded_policy(benchmark, embedded, policy, monkeypatch):
    model, peer = embedded
    ids = model.encode_prompt("And God said unto Moses, Go in unto Pharaoh, and tell him")
    prompt = torch.tensor([ids])
    _run_policy(benchmark, peer if policy.startswith("eager") else model, policy, EMBEDDED_POLICIES[policy], prompt,
                f"embedded model, prompt {prompt.shape[1]}, gen {GEN}, {STEPS} steps, block {BLOCK}",
                _EMBEDDED_TIMES, monkeypatch, peer)


def test_flop_count_of_one_forward(models):
    """The counter against FLOPs written out from the config: every layer's projections and MLP on all T tokens,
    attention over T x T, the LM head on the rows asked for."""
    m = models["bf16"]
    cfg = m.config
    B, T, rows = 2, 50, 7
    d, H, Hkv, L, F, V = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.n_layers, cfg.mlp_hidden_size, cfg.embedding_size
    D = d // H
    ids = torch.randint(1, cfg.vocab_size - 1, (B, T), generator=torch.Generator().manual_seed(1))
    with count_flops() as flops:
        m.transformer.forward(ids, logits_from=T - rows)
    per_token = 2 * (d * (H * D) + 2 * d * (Hkv * D) + (H * D) * d + 3 * d * F)
    assert flops["gemm"] == L * B * T * per_token + 2 * B * rows * d * V
    assert flops["attention"] == L * 4 * B * H * T * T * D
    # a dual-cache step: 16 columns against all T cached keys
    from illada_rt.model import KVCache

    cache = KVCache(L)
    m.transformer.forward(ids, cache=cache)
    with count_flops() as step:
        m.transformer.forward(ids[:, 20:36], cache=cache, cache_from=20)
    assert step["attention"] == L * 4 * B * H * 16 * T * D
    assert step["gemm"] == step["gemm_executed"] == L * B * 16 * per_token + 2 * B * 16 * d * V
    # the head asked for 5 of the 16 cells: the job's FLOPs stay the block's; what ran, the cells' where the head
    # computes rows alone (the int8 copy's W8A8 head), else the block's too (this float32 model: PyTorch's GEMM)
    cells = torch.zeros(B, 16, dtype=torch.bool)
    cells[0, :3] = cells[1, 7:9] = True
    for name, head_rows in (("bf16", B * 16), ("int8", 5)):
        tf = models[name].transformer
        if name == "bf16" and tf._head_rows_independent(torch.zeros(B, 16, d, dtype=tf.dtype)):
            head_rows = 5  # (ILLADA_BENCH_MODEL=176m is stored in bf16: the compiled bf16 GEMM at 32 rows)
        kv = KVCache(L)
        tf.forward(ids, cache=kv)
        with count_flops() as whole:
            tf.forward(ids[:, 20:36], cache=kv, cache_from=20)
        with count_flops() as picked:
            tf.forward(ids[:, 20:36], cache=kv, cache_from=20, logits_rows=cells)
        assert picked["gemm"] == whole["gemm"] == step["gemm"] and picked["attention"] == step["attention"]
        assert picked["gemm_executed"] == L * B * 16 * per_token + 2 * head_rows * d * V, name


def test_profile_splits_a_decode_into_its_parts(models):
    """The profile mode (bench/profile_decode.py): every category is timed, the parts add up to the total with the
    Python rest non-negative, and the GEMM FLOPs it counts are the roofline counter's."""
    m = models["bf16"]
    prompt = torch.randint(1, m.config.vocab_size - 1, (1, 16), generator=torch.Generator().manual_seed(2))
    kw = dict(gen_length=32, steps=8, block_length=16, cache="dual")
    with count_flops() as flops:
        m.generate(prompt, **kw)
    with profile() as prof:
        out = m.generate(prompt, **kw)
    assert all(prof[c] > 0 for c in CATEGORIES) and prof["python"] >= 0
    assert abs(sum(prof[c] for c in CATEGORIES) + prof["python"] - prof["total"]) < 1e-9
    assert prof["gemm_flops"] == flops["gemm_executed"]
    assert prof["calls"]["attention"] == out.nfe * m.config.n_layers  # every layer of every forward


def test_flops_and_profile_through_the_layer_stack(tmp_path, monkeypatch):
    """A model whose blocks run as one compiled call (head dim 64, int8): the counter gives the layer loop's FLOPs and
    kernel routes, and the profile splits the stack's time into the loop's ops and categories."""
    from illada_rt import _C, ops
    from illada_rt.quantize import quantize_checkpoint
    from illada_rt.synthetic import TinySpec, write_checkpoint

    if _C is None or ops.cpu_isa() not in ("avx512", "amx"):
        pytest.skip("the layer stack runs where the AVX-512 kernels do")
    spec = TinySpec(d_model=256, n_heads=4, n_kv_heads=2, n_layers=2, mlp_hidden_size=344, vocab_size=301,
                    mask_token_id=300, quiet_token=300, dtype="bfloat16", seed=7)
    quantize_checkpoint(write_checkpoint(tmp_path / "bf16", spec), tmp_path / "int8", "int8", progress=False)
    m = illada_rt.load(tmp_path / "int8")
    prompt = torch.randint(1, 300, (1, 16), generator=torch.Generator().manual_seed(2))
    kw = dict(gen_length=32, steps=8, block_length=16, cache="dual")
    counts = {}
    for mode in ("off", "auto"):
        monkeypatch.setenv("ILLADA_RT_LAYER_STACK", mode)
        with count_flops() as counts[mode]:
            m.generate(prompt, **kw)
    assert counts["off"] == counts["auto"] and counts["auto"]["gemm"] > 0
    with profile() as prof:
        out = m.generate(prompt, **kw)
    assert all(prof[c] > 0 for c in CATEGORIES) and prof["python"] >= 0
    assert prof["gemm_flops"] == counts["auto"]["gemm_executed"]
    assert prof["calls"]["attention"] == out.nfe * m.config.n_layers
    assert prof["calls"]["swiglu_linear"] == out.nfe * m.config.n_layers
    assert prof["calls"]["apply_rope"] == 2 * out.nfe * m.config.n_layers
