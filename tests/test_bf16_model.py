"""bf16 models with the head dims real checkpoints use (64 and 128), where the CPU runs its AVX-512 attention, RoPE
and fused RMSNorm / SwiGLU kernels, against the same stored weights run in float64 by the independent forward
(tests/independent.py): left padding that covers whole 64-key blocks followed by live keys, and KV-cache steps
whose queries are a window of the keys (Tq != Tk), as the prefix and dual caches run them."""
import pytest
import torch

import illada_rt
from illada_rt import _C, ops
from illada_rt.model import KVCache
from illada_rt.synthetic import TinySpec, write_checkpoint
from independent import forward as independent_forward, forward_cached, load_weights

from conftest import MASK_ID

SPECS = {  # two layers, GQA, both layouts; bf16 storage
    64: TinySpec(layout="llada", d_model=256, n_heads=4, n_kv_heads=2, mlp_hidden_size=512, max_sequence_length=512,
                 dtype="bfloat16", seed=21),
    128: TinySpec(layout="llama", d_model=256, n_heads=2, n_kv_heads=1, mlp_hidden_size=512, max_sequence_length=512,
                  dtype="bfloat16", tied=True, mask_token_id=None, seed=22),
}
T, PAD = 200, 130           # row 1: keys 0..129 are padding (all of the first two 64-key blocks), then 70 live ones
# bf16 compute against float64 over the same weights: 0.8-0.9% relative error and 0.21 at most on logits of
# magnitude 17-26 measured, torch's bf16 path (ILLADA_RT_KERNELS=reference) the same; bounds 2.5x that
REL, ABS = 0.02, 0.5
KERNELS = ("attention", "rms_norm", "add_rms_norm", "swiglu", "rope")


@pytest.fixture(scope="module", params=sorted(SPECS))
def model(request, tmp_path_factory):
    d = write_checkpoint(tmp_path_factory.mktemp("bf16") / f"d{request.param}", SPECS[request.param])
    m = illada_rt.load(d, mask_token_id=MASK_ID)
    assert m.dtype == torch.bfloat16 and m.config.head_dim == request.param
    return m, load_weights(d)


def _batch(seed):
    ids = torch.randint(0, MASK_ID, (2, T), generator=torch.Generator().manual_seed(seed))
    ids[:, ::4] = MASK_ID
    attn = torch.ones(2, T, dtype=torch.bool)
    attn[1, :PAD] = False
    positions = torch.tensor([list(range(T)), [0] * PAD + list(range(T - PAD))])
    return ids, attn, positions


def _errors(got: torch.Tensor, want: torch.Tensor) -> tuple[float, float]:
    e = got.double() - want
    return float(e.norm() / want.norm()), float(e.abs().max())


def _count_kernel_calls(monkeypatch) -> dict:
    calls = dict.fromkeys(KERNELS, 0)
    for name in KERNELS:
        real = getattr(_C, name)

        def spy(*args, _real=real, _name=name, **kwargs):
            calls[_name] += 1
            return _real(*args, **kwargs)
        monkeypatch.setattr(_C, name, spy)
    return calls


def test_padded_batch_matches_float64(model, monkeypatch):
    m, weights = model
    ids, attn, positions = _batch(seed=1)
    calls = _count_kernel_calls(monkeypatch)
    got = m.forward(ids, attention_mask=attn.long())
    if ops.cpu_isa() in ("avx512", "amx"):  # the kernels real checkpoints use ran, in every layer (SwiGLU's where it
        # is the faster of it and PyTorch on this CPU: ops.swiglu_uses_kernel)
        # (the first block's norm is a plain RMSNorm; every later norm comes with its residual add)
        expected = [k for k in KERNELS if k not in ("swiglu", "rms_norm") or k == "swiglu" and ops.swiglu_uses_kernel()]
        assert all(calls[k] >= len(m.transformer.layers) for k in expected) and calls["rms_norm"] >= 1, calls
    want = independent_forward(weights, ids, attn, positions)
    rel, err = _errors(got[attn], want[attn])   # the padding columns' own outputs are nobody's concern
    assert rel < REL and err < ABS, (rel, err)
    # the padded row as it comes alone
    alone = independent_forward(weights, ids[1:, PAD:])
    rel, err = _errors(got[1, PAD:], alone[0])
    assert rel < REL and err < ABS, (rel, err)
    # and no worse than PyTorch's own bf16 path over the same model
    monkeypatch.setenv("ILLADA_RT_KERNELS", "reference")
    rel = _errors(got[attn], want[attn])[0]
    assert rel <= 1.25 * _errors(m.forward(ids, attention_mask=attn.long())[attn], want[attn])[0]


def _cache_step(tf, ids, step, attn, positions, lo, hi):
    kv = KVCache(len(tf.layers))
    tf.forward(ids, attn, positions, cache=kv)
    return tf.forward(step[:, lo:hi], attn, positions, 0, hi - lo, cache=kv, cache_from=lo)


@pytest.mark.parametrize("window", [(150, 182), (150, T)], ids=["dual", "prefix"])
def test_cache_steps_match_float64(model, window, monkeypatch):
    """A full forward fills the cache; then new tokens in the window [lo, hi) go through with their fresh keys and
    values written over the cached ones and attention over all T keys (Tq = hi - lo < Tk = T)."""
    m, weights = model
    ids, attn, positions = _batch(seed=2)
    lo, hi = window
    step = ids.clone()
    step[:, lo:lo + 32] = torch.randint(0, MASK_ID, (2, 32), generator=torch.Generator().manual_seed(3))
    got = _cache_step(m.transformer, ids, step, attn, positions, lo, hi)
    _, kv64 = forward_cached(weights, ids, attn, positions)
    want, _ = forward_cached(weights, step[:, lo:hi], attn, positions, cache=kv64, lo=lo)
    assert got.shape == (2, hi - lo, 101)
    rel, err = _errors(got, want)
    assert rel < REL and err < ABS, (rel, err)
    monkeypatch.setenv("ILLADA_RT_KERNELS", "reference")
    assert rel <= 1.25 * _errors(_cache_step(m.transformer, ids, step, attn, positions, lo, hi), want)[0]
