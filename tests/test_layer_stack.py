"""The compiled layer stack (ops/stack.py, csrc/cpu/layer_stack.cpp) against the layer loop it replaces
(ILLADA_RT_LAYER_STACK=off): the same kernels in the same order, so logits and KV caches must be the same bits, for
int8 (W8A8) and bf16 models, head dims 64 and 128 with GQA, an MLP width that fills no tile, batches with padded
keys and per-row positions, cache fills and cache steps of both layouts (written by the GEMM in place, or copied).
Where the stack must not run (PyTorch would have run an op) the loop runs; bad arguments get clear errors."""
import pytest
import torch

import illada_rt
from illada_rt import _C, ops
from illada_rt import model as model_mod
from illada_rt.model import KVCache
from illada_rt.quantize import quantize_checkpoint
from illada_rt.synthetic import TinySpec, write_checkpoint

pytestmark = pytest.mark.skipif(_C is None or ops.cpu_isa() not in ("avx512", "amx"),
                                reason="the layer stack runs where the AVX-512 kernels do")

SPECS = {  # bf16 storage; MLP width 350: partial 64-channel panels and a K that is not a multiple of 4
    64: TinySpec(layout="llada", d_model=256, n_heads=4, n_kv_heads=2, n_layers=3, mlp_hidden_size=350,
                 vocab_size=301, mask_token_id=300, quiet_token=300, dtype="bfloat16", seed=31),
    128: TinySpec(layout="llama", d_model=256, n_heads=2, n_kv_heads=1, n_layers=2, mlp_hidden_size=350,
                  vocab_size=301, mask_token_id=300, quiet_token=300, dtype="bfloat16", seed=32),
}


@pytest.fixture(scope="module", params=[(d, kind) for d in sorted(SPECS) for kind in ("int8", "bf16")],
                ids=lambda p: f"d{p[0]}-{p[1]}")
def model(request, tmp_path_factory):
    head_dim, kind = request.param
    root = tmp_path_factory.mktemp("stack")
    path = write_checkpoint(root / "bf16", SPECS[head_dim])
    if kind == "int8":
        quantize_checkpoint(path, root / "int8", "int8", progress=False)
        path = root / "int8"
    m = illada_rt.load(path)
    assert m.dtype == torch.bfloat16 and m.config.head_dim == head_dim
    assert m.transformer.compiled_layers() is not None
    return m


@pytest.fixture
def calls(monkeypatch):
    """How many forwards ran the stack."""
    n = [0]
    real = model_mod.layer_stack

    def counted(*a, **kw):
        n[0] += 1
        return real(*a, **kw)
    monkeypatch.setattr(model_mod, "layer_stack", counted)
    return n


def _both(monkeypatch, fn):
    """fn() with the layer loop, then with the stack."""
    monkeypatch.setenv("ILLADA_RT_LAYER_STACK", "off")
    loop = fn()
    monkeypatch.setenv("ILLADA_RT_LAYER_STACK", "auto")
    return loop, fn()


def _ids(B, T, seed):
    return torch.randint(0, 300, (B, T), generator=torch.Generator().manual_seed(seed))


def _caches(cache):
    return [t.clone() for t in cache.k + cache.v]


def test_no_cache_batch_with_padding_and_positions(model, monkeypatch, calls):
    """Two rows of 29 tokens, row 1 left-padded over 11 keys with its positions starting after the padding."""
    tr = model.transformer
    B, T, pad = 2, 29, 11
    ids = _ids(B, T, 1)
    key_mask = torch.ones(B, T, dtype=torch.bool)
    key_mask[1, :pad] = False
    positions = torch.stack([torch.arange(T), (torch.arange(T) - pad).clamp(min=0)])
    loop, stack = _both(monkeypatch, lambda: tr.forward(ids, key_mask, positions, float_logits=False))
    assert calls[0] == 1
    assert torch.equal(loop, stack)


@pytest.mark.parametrize("B,T,start,L", [(1, 40, 8, 32), (2, 48, 16, 13), (2, 21, 0, 21)])
def test_cache_fill_and_step(model, monkeypatch, calls, B, T, start, L):
    """A full forward filling the cache, then a step over columns [start, start + L) against all T keys: the logits
    and every layer's cached keys and values. One batch row: the GEMM writes the step's keys into the cache; two rows
    over a longer canvas: they are copied in; a step over the whole canvas of two rows: written in place again."""
    tr = model.transformer
    ids = _ids(B, T, 2)
    key_mask = torch.ones(B, T, dtype=torch.bool)
    if B > 1:
        key_mask[1, :5] = False

    def run():
        cache = KVCache(tr.cfg.n_layers)
        full = tr.forward(ids, key_mask, cache=cache, float_logits=False)
        filled = _caches(cache)
        step_ids = (ids[:, start:start + L] + 7) % 300  # new tokens in the window
        step = tr.forward(step_ids, key_mask, cache=cache, cache_from=start, float_logits=False)
        return full, filled, step, _caches(cache)

    loop, stack = _both(monkeypatch, run)
    dense = any(isinstance(w, torch.Tensor) for w in (tr.layers[0].q,))
    assert calls[0] == (1 if dense and B * T > ops.BF16_GEMM_MAX_M else 2)
    assert torch.equal(loop[0], stack[0]) and torch.equal(loop[2], stack[2])
    for a, b in zip(loop[1] + loop[3], stack[1] + stack[3]):
        assert torch.equal(a, b)
    # the step changed the cache (the comparison above is not of two untouched copies)
    assert not torch.equal(loop[1][0][:, :, start:start + L], loop[3][0][:, :, start:start + L])


def test_decode_is_the_same(model, monkeypatch, calls):
    """A whole dual-cache decode with the stack gives the loop's tokens."""
    prompt = _ids(1, 12, 3)
    kw = dict(gen_length=24, steps=12, block_length=8, cache="dual")
    loop, stack = _both(monkeypatch, lambda: model.generate(prompt, **kw))
    assert calls[0] > 0
    assert torch.equal(loop.tokens, stack.tokens)


def test_where_the_stack_does_not_run(model, monkeypatch, calls):
    """Where some op of the loop would run PyTorch's kernel, the loop runs: SDPA attention, the reference mode,
    a bf16 GEMM above BF16_GEMM_MAX_M rows (oneDNN's), and with the stack switched off; a bad switch value is named."""
    tr = model.transformer
    ids = _ids(1, 20, 4)
    for var, value in (("ILLADA_RT_ATTENTION", "torch"), ("ILLADA_RT_KERNELS", "reference"),
                       ("ILLADA_RT_LAYER_STACK", "off")):
        monkeypatch.setenv(var, value)
        tr.forward(ids)
        monkeypatch.delenv(var)
    assert calls[0] == 0
    tr.forward(_ids(1, ops.BF16_GEMM_MAX_M + 1, 5))
    dense = isinstance(tr.layers[0].q, torch.Tensor)
    assert calls[0] == (0 if dense else 1)
    monkeypatch.setenv("ILLADA_RT_LAYER_STACK", "sometimes")
    with pytest.raises(ValueError, match="ILLADA_RT_LAYER_STACK"):
        tr.forward(ids)


def test_timing_counts_every_op(model):
    """The profile mode's accumulator: one call per op per layer as the loop makes them."""
    tr = model.transformer
    stack = tr.compiled_layers()
    n = tr.cfg.n_layers
    x = torch.nn.functional.embedding(_ids(2, 16, 6), tr.embed)
    cos, sin = ops.rope_cos_sin(torch.arange(16), tr.cfg.head_dim, tr.cfg.rope_theta)
    cache = KVCache(n)
    timing = torch.zeros(len(_C.LAYER_STACK_OPS), 2, dtype=torch.float64)
    model_mod.layer_stack(stack, x, cos, sin, None, cache, None, timing)
    model_mod.layer_stack(stack, x[:, :8].contiguous(), cos[:8], sin[:8], None, cache, 4, timing)  # copied into the cache
    got = dict(zip(_C.LAYER_STACK_OPS, timing[:, 1].tolist()))
    w8a8 = not isinstance(tr.layers[0].down, torch.Tensor)
    assert got == {"rms_norm": 2, "add_rms_norm": 2 * (2 * n - 1), "linears": 4 * n, "apply_rope": 4 * n,
                   "kv_cache_write": n, "attention": 2 * n, "linear": 2 * n * (1 if w8a8 else 2),
                   "swiglu_linear": 2 * n if w8a8 else 0, "swiglu": 0 if w8a8 else 2 * n}
    assert (timing[:, 0] >= 0).all() and timing[:, 0].sum() > 0


def test_bad_arguments_are_named(model):
    tr = model.transformer
    h = tr.compiled_layers().handle
    cfg = tr.cfg
    x = torch.zeros(1, 8, cfg.d_model, dtype=torch.bfloat16)
    out = torch.empty_like(x)
    cos, sin = ops.rope_cos_sin(torch.arange(8), cfg.head_dim, cfg.rope_theta)
    good = dict(x=x, h_out=out, down_out=torch.empty_like(x), cos=cos, sin=sin, scale=0.125)
    h.forward(**good)
    kv = [torch.zeros(1, cfg.n_kv_heads, 16, cfg.head_dim, dtype=torch.bfloat16) for _ in range(cfg.n_layers)]
    cases = [
        (dict(h_out=torch.empty(1, 7, cfg.d_model, dtype=torch.bfloat16)), ValueError, "h_out"),
        (dict(x=x.float()), TypeError, "x: expected dtype bfloat16"),
        (dict(cos=cos[:7]), ValueError, "cos"),
        (dict(sin=sin[None]), ValueError, "sin"),
        (dict(key_mask=torch.ones(1, 9, dtype=torch.bool)), ValueError, "key_mask"),
        (dict(k_caches=kv, v_caches=kv, cache_from=9), ValueError, "cache_from: 9 with 8 columns"),
        (dict(k_caches=kv[:1], v_caches=kv), ValueError, "one tensor per layer"),
        (dict(k_caches=kv), ValueError, "both or neither"),
        (dict(k_caches=[kv[0][:, :, :, :8]] + kv[1:], v_caches=kv), ValueError, r"k_caches\[0\]"),
        (dict(cache_from=2), ValueError, "without a cache"),
        (dict(timing=torch.zeros(3, 2, dtype=torch.float64)), ValueError, "timing"),
        (dict(scale=0.0), ValueError, "scale"),
    ]
    for change, err, match in cases:
        with pytest.raises(err, match=match):
            h.forward(**{**good, **change})


def test_bad_layers_are_named(model):
    tr = model.transformer
    cfg = tr.cfg
    w = tr.layers[0]
    lin = [f if isinstance(f, torch.Tensor) else f.packed.handle for f in (w.q, w.k, w.v, w.o, w.gate, w.up, w.down)]
    good = [w.attn_norm, *lin[:4], w.ff_norm, *lin[4:]]
    args = (cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.d_model, cfg.mlp_hidden_size, 1e-5)
    _C.LayerStack([good], *args)
    bad = [
        ([good[:8]], ValueError, "expected \\(attn_norm"),
        ([good[:1] + [good[6]] + good[2:]], ValueError, r"layers\[0\]\.q"),
        ([[good[0].float()] + good[1:]], TypeError, "attn_norm"),
        ([], ValueError, "at least one layer"),
    ]
    mixed = list(good)
    mixed[2] = torch.zeros(cfg.n_kv_heads * cfg.head_dim, cfg.d_model, dtype=torch.bfloat16)
    if not isinstance(good[1], torch.Tensor):
        bad.append(([mixed], ValueError, "q, k and v must all be"))
    for layers, err, match in bad:
        with pytest.raises(err, match=match):
            _C.LayerStack(layers, *args)
    with pytest.raises(ValueError, match="n_kv_heads"):
        _C.LayerStack([good], cfg.n_heads, 3, *args[2:])


def test_capabilities_name_the_stack(monkeypatch):
    caps = illada_rt.capabilities()["kernels"]["layer stack"]
    assert caps["cpu"].startswith("_C for bf16") and caps["cuda"] == "the Python layer loop"
    monkeypatch.setenv("ILLADA_RT_LAYER_STACK", "off")
    assert illada_rt.capabilities()["kernels"]["layer stack"]["cpu"].startswith("off")


_LARGE_FORWARD = """
import sys, torch, illada_rt
from illada_rt import model as model_mod
m = illada_rt.load(sys.argv[1])
calls = []
real = model_mod.layer_stack
model_mod.layer_stack = lambda *a, **kw: calls.append(1) or real(*a, **kw)
ids = torch.randint(0, 300, (512, 128), generator=torch.Generator().manual_seed(0))
def rss():
    return int(open("/proc/self/statm").read().split()[1]) * 4096
m.transformer.forward(ids[:, :8])  # builds the stack, warms the allocator
before = rss()
m.transformer.forward(ids, logits_to=1)
print(len(calls), (rss() - before) / 2**20)
"""


def test_a_large_forward_gives_its_scratch_back(tmp_path):
    """A forward of 65,536 rows needs ~270 MB of activations in the stack's scratch: more than it keeps per thread
    (256 MB), so the memory goes back when the call ends (measured in a fresh process by its resident size)."""
    import subprocess
    import sys

    spec = TinySpec(layout="llada", d_model=256, n_heads=4, n_kv_heads=2, n_layers=1, mlp_hidden_size=350,
                    vocab_size=301, mask_token_id=300, quiet_token=300, dtype="bfloat16", seed=33)
    quantize_checkpoint(write_checkpoint(tmp_path / "bf16", spec), tmp_path / "int8", "int8", progress=False)
    run = subprocess.run([sys.executable, "-c", _LARGE_FORWARD, str(tmp_path / "int8")], capture_output=True,
                         text=True, cwd=tmp_path, timeout=600)
    assert run.returncode == 0, run.stderr
    calls, grown_mb = run.stdout.split()
    assert int(calls) == 2
    assert float(grown_mb) < 64, grown_mb  # measured 6.6 MB; kept, the scratch added 222 MB (the pages it touched)
