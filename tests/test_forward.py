"""The forward pass against an independent float64 implementation (tests/independent.py)."""
import pytest
import torch

import illada_rt
from independent import forward as independent_forward, load_weights

from conftest import MASK_ID

# fp32 compute vs float64 math: differences come from fp32 rounding only (~1e-6 relative); 5e-4 is the
# issue's agreement bar. bf16/fp16 storage is compared in fp32 compute against float64 over the same
# (rounded) stored weights, so the same bar holds.
ATOL_FP32 = 5e-4


def _ids(B, T, seed=0, vocab=101):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (B, T), generator=g)
    ids[:, ::5] = MASK_ID
    return ids


@pytest.mark.parametrize("name", ["llada_mha", "llada_gqa", "llama_gqa_tied", "llama_untied_sharded"])
@pytest.mark.parametrize("B,T", [(1, 1), (2, 24), (3, 37)])
def test_forward_matches_independent(checkpoints, name, B, T):
    m = illada_rt.load(checkpoints[name], mask_token_id=MASK_ID if name.startswith("llama_gqa") else None)
    assert m.dtype == torch.float32
    ids = _ids(B, T, seed=B * 100 + T)
    got = m.forward(ids)
    want = independent_forward(load_weights(checkpoints[name]), ids)
    assert got.shape == (B, T, 101) and got.dtype == torch.float32
    torch.testing.assert_close(got.double(), want, atol=ATOL_FP32, rtol=0)


@pytest.mark.parametrize("name", ["llada_bf16", "llada_fp16_sharded"])
def test_half_storage_loads_and_matches(checkpoints, name):
    m = illada_rt.load(checkpoints[name], dtype="float32")
    ids = _ids(2, 19, seed=7)
    want = independent_forward(load_weights(checkpoints[name]), ids)
    torch.testing.assert_close(m.forward(ids).double(), want, atol=ATOL_FP32, rtol=0)


def test_default_dtype_follows_storage(checkpoints):
    assert illada_rt.load(checkpoints["llada_bf16"]).dtype == torch.bfloat16
    # fp16 on CPU computes in fp32 (CPU fp16 GEMMs are slow; bf16 would change the numbers)
    assert illada_rt.load(checkpoints["llada_fp16_sharded"]).dtype == torch.float32


def test_logits_in_the_compute_dtype_are_the_float32_ones_unrounded(checkpoints):
    """float_logits=False (the decoders' sampling path) returns the LM head's output as it is: .float() of it is
    forward()'s float32 logits, bit for bit."""
    for dtype in (torch.bfloat16, torch.float32):
        m = illada_rt.load(checkpoints["llada_bf16"], dtype=dtype)
        ids = _ids(2, 13, seed=4)
        raw = m.transformer.forward(ids, logits_from=3, logits_to=11, float_logits=False)
        full = m.transformer.forward(ids, logits_from=3, logits_to=11)
        assert raw.dtype == dtype and full.dtype == torch.float32 and raw.shape == full.shape == (2, 8, 101)
        assert torch.equal(raw.float(), full)


def test_bf16_compute_close_to_fp32(checkpoints):
    m16 = illada_rt.load(checkpoints["llada_bf16"])
    m32 = illada_rt.load(checkpoints["llada_bf16"], dtype=torch.float32)
    ids = _ids(2, 21, seed=3)
    a, b = m16.forward(ids), m32.forward(ids)
    # bf16 compute (8-bit mantissa) over the same stored weights: 0.8% relative error and 0.17 at most on logits
    # of magnitude ~15 measured; the bounds are 2.5x and 3x that
    rel = (a - b).norm() / b.norm()
    assert rel < 0.02, float(rel)
    assert float((a - b).abs().max()) < 0.5
    # argmax: every position agrees here (97.6% on other inputs, where a top-two gap of 0.017 flips); the bound
    # leaves room for one flip among the near-ties
    agree = a.argmax(-1) == b.argmax(-1)
    assert agree.float().mean() >= 0.97, float(agree.float().mean())


def _positions_seen(m, monkeypatch):
    """Record the RoPE positions Model.forward hands the transformer (None: the default 0..T-1)."""
    seen = []
    real = m.transformer.forward

    def spy(ids, key_mask=None, positions=None, *args, **kwargs):
        seen.append(torch.arange(ids.shape[1]).expand(ids.shape) if positions is None else positions.clone())
        return real(ids, key_mask, positions, *args, **kwargs)

    monkeypatch.setattr(m.transformer, "forward", spy)
    return seen


def test_padding_mask_and_positions(checkpoints, monkeypatch):
    """A left-padded row gives the same logits as the row alone (real key mask + shifted positions)."""
    m = illada_rt.load(checkpoints["llada_gqa"])
    seen = _positions_seen(m, monkeypatch)
    ids = _ids(2, 16, seed=9)
    attn = torch.ones(2, 16, dtype=torch.long)
    attn[1, :5] = 0
    batched = m.forward(ids, attention_mask=attn)
    # RoPE is relative, so unshifted positions would change these logits by rounding only (6.7e-6): the positions
    # themselves are checked. Each row's first real token is at position 0.
    (pos,) = seen
    assert pos[0].tolist() == list(range(16))
    assert pos[1, 5:].tolist() == list(range(11))
    alone = m.forward(ids[1:, 5:])
    torch.testing.assert_close(batched[1, 5:], alone[0], atol=1e-5, rtol=0)  # fp32 reassociation only
    torch.testing.assert_close(batched[0], m.forward(ids[:1])[0], atol=1e-5, rtol=0)
    # and against the independent model with its own mask and positions
    want = independent_forward(load_weights(checkpoints["llada_gqa"]), ids, attn.bool(),
                               torch.tensor([list(range(16)), [0] * 5 + list(range(11))]))
    torch.testing.assert_close(batched[1, 5:].double(), want[1, 5:], atol=ATOL_FP32, rtol=0)


def test_weights_are_memory_mapped(checkpoints, monkeypatch):
    """Same dtype on CPU: parameters are views of the file's memory map, not copies; the linears too with
    huge_pages=False (by default those are copied into huge pages where the OS offers them)."""
    from illada_rt import ops

    m = illada_rt.load(checkpoints["llada_mha"], huge_pages=False)
    f = m.transformer.store.files[0]
    base, size = f.mapped_range()
    for t in (m.transformer.embed, m.transformer.layers[1].down, m.transformer.head):
        assert base <= t.data_ptr() < base + size
    monkeypatch.setattr(ops.WeightArena, "SMALL", 0)  # this model's linears are small: every one into the arena
    huge = illada_rt.load(checkpoints["llada_mha"])
    f = huge.transformer.store.files[0]
    base, size = f.mapped_range()
    assert base <= huge.transformer.embed.data_ptr() < base + size  # the embedding stays mapped
    if ops.WeightArena.huge_pages_offered():
        for t in (huge.transformer.layers[1].down, huge.transformer.head):
            assert not base <= t.data_ptr() < base + size and t.data_ptr() % 4096 == 0
    ids = _ids(1, 9, seed=1)
    assert torch.equal(huge.forward(ids), m.forward(ids))
    # a dtype change copies (layer by layer): those tensors live outside the map
    m16 = illada_rt.load(checkpoints["llada_mha"], dtype="bfloat16")
    f16 = m16.transformer.store.files[0]
    base, size = f16.mapped_range()
    assert not base <= m16.transformer.embed.data_ptr() < base + size


def test_rope_tables_are_reused_only_for_the_same_positions(checkpoints):
    """The transformer keeps the last call's cos/sin tables (a decode passes the same positions to every forward):
    a changed positions tensor (in place or new), another canvas length or a cached slice must still give what a
    fresh model gives."""
    path = checkpoints["llada_gqa"]
    tf = illada_rt.load(path).transformer
    ids = _ids(2, 12, seed=4)
    pos = torch.arange(12).repeat(2, 1)
    first = tf.forward(ids, positions=pos)
    torch.testing.assert_close(tf.forward(ids, positions=pos), first, rtol=0, atol=0)
    pos[1] += 3  # in place: the tables must follow
    fresh = illada_rt.load(path).transformer
    torch.testing.assert_close(tf.forward(ids, positions=pos), fresh.forward(ids, positions=pos.clone()), rtol=0, atol=0)
    assert not torch.equal(tf.forward(ids, positions=pos)[1], first[1])
    torch.testing.assert_close(tf.forward(ids[:, :7]), fresh.forward(ids[:, :7]), rtol=0, atol=0)  # default, other T
    torch.testing.assert_close(tf.forward(ids), fresh.forward(ids), rtol=0, atol=0)
    cache = illada_rt.model.KVCache(tf.cfg.n_layers)
    tf.forward(ids, positions=pos, cache=cache)
    part = tf.forward(ids[:, 4:9], positions=pos, cache=cache, cache_from=4)
    torch.testing.assert_close(part, tf.forward(ids, positions=pos)[:, 4:9], atol=1e-5, rtol=0)
