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


def test_bf16_compute_close_to_fp32(checkpoints):
    m16 = illada_rt.load(checkpoints["llada_bf16"])
    m32 = illada_rt.load(checkpoints["llada_bf16"], dtype=torch.float32)
    ids = _ids(2, 21, seed=3)
    a, b = m16.forward(ids), m32.forward(ids)
    # bf16 has an 8-bit mantissa: relative error of the logits stays at the percent level on this tiny model.
    rel = (a - b).norm() / b.norm()
    assert rel < 0.05, float(rel)
    assert (a.argmax(-1) == b.argmax(-1)).float().mean() > 0.8


def test_padding_mask_and_positions(checkpoints):
    """A left-padded row gives the same logits as the row alone (real key mask + shifted positions)."""
    m = illada_rt.load(checkpoints["llada_gqa"])
    ids = _ids(2, 16, seed=9)
    attn = torch.ones(2, 16, dtype=torch.long)
    attn[1, :5] = 0
    batched = m.forward(ids, attention_mask=attn)
    alone = m.forward(ids[1:, 5:])
    torch.testing.assert_close(batched[1, 5:], alone[0], atol=1e-5, rtol=0)  # fp32 reassociation only
    torch.testing.assert_close(batched[0], m.forward(ids[:1])[0], atol=1e-5, rtol=0)
    # and against the independent model with its own mask and positions
    pos = (attn.cumsum(1) - 1).clamp(min=0)
    want = independent_forward(load_weights(checkpoints["llada_gqa"]), ids, attn.bool(), pos)
    torch.testing.assert_close(batched[1, 5:].double(), want[1, 5:], atol=ATOL_FP32, rtol=0)


def test_weights_are_memory_mapped(checkpoints):
    """Same dtype on CPU: parameters are views of the file's memory map, not copies."""
    m = illada_rt.load(checkpoints["llada_mha"])
    f = m.transformer.store.files[0]
    base, size = f.mapped_range()
    for t in (m.transformer.embed, m.transformer.layers[1].down, m.transformer.head):
        assert base <= t.data_ptr() < base + size
    # a dtype change copies (layer by layer): those tensors live outside the map
    m16 = illada_rt.load(checkpoints["llada_mha"], dtype="bfloat16")
    f16 = m16.transformer.store.files[0]
    base, size = f16.mapped_range()
    assert not base <= m16.transformer.embed.data_ptr() < base + size
