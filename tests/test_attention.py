"""CPU attention kernel against the float64 reference over the shape classes that matter: odd lengths (not
multiples of the 16-key vector or the 64-key block), batch > 1, key padding masks, GQA, query length different
from key length (caches), head dims 64/128 (AVX-512 path) and others (portable path), fp32 and bf16, strided
layouts (the model's [B, T, H, D] viewed as [B, H, T, D]), every compiled ISA variant."""
import pytest
import torch

from illada_rt import ops
from illada_rt.ops import reference

_C = pytest.importorskip("illada_rt._C")
ISAS = ops.cpu_isas()
SHAPES = [  # B, Hq, Hkv, Tq, Tk, D
    (1, 2, 2, 1, 1, 128), (2, 4, 2, 33, 70, 128), (1, 8, 8, 32, 192, 128), (2, 4, 1, 5, 17, 64),
    (3, 6, 3, 50, 129, 64), (1, 4, 4, 130, 300, 128), (2, 2, 1, 7, 9, 32), (1, 3, 1, 4, 20, 80),
    (1, 4, 2, 40, 2048, 128), (2, 2, 1, 25, 1999, 64),  # long contexts: 32 key blocks, and a ragged last one
    (1, 2, 1, 29, 77, 128),  # a 24-row task and a 5-row one: every register tile height 1..6 occurs at D = 128
]


def _inputs(B, Hq, Hkv, Tq, Tk, D, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, Tq, Hq, D, generator=g).to(dtype).transpose(1, 2)  # strided, as the model passes it
    k = torch.randn(B, Hkv, Tk, D, generator=g).to(dtype)
    v = torch.randn(B, Hkv, Tk, D, generator=g).to(dtype)
    mask = torch.rand(B, Tk, generator=g) > 0.3
    mask[:, 0] = True
    return q, k, v, mask


def _run(q, k, v, mask, isa):
    out = torch.full((q.shape[0], q.shape[2], q.shape[1], q.shape[3]), 7.0, dtype=q.dtype).transpose(1, 2)
    _C.attention(q, k, v, out, mask, q.shape[-1] ** -0.5, 2, isa)
    return out


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("masked", [False, True])
def test_fp32_matches_float64_reference(isa, shape, masked):
    q, k, v, mask = _inputs(*shape, torch.float32)
    mask = mask if masked else None
    got = _run(q, k, v, mask, isa)
    want = reference.attention(q.double(), k.double(), v.double(), mask)
    torch.testing.assert_close(got.double(), want, rtol=0, atol=2e-5)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("shape", SHAPES)
def test_bf16_error_is_at_most_twice_torch_bf16(isa, shape):
    q, k, v, mask = _inputs(*shape, torch.bfloat16, seed=1)
    exact = reference.attention(q.double(), k.double(), v.double(), mask)
    ours = (_run(q, k, v, mask, isa).double() - exact).abs().max()
    torch_err = (reference.attention(q, k, v, mask).double() - exact).abs().max()
    assert ours <= 2 * torch_err + 1e-6, (float(ours), float(torch_err))


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_scratch_reused_from_a_larger_call_leaks_nothing(isa, dtype):
    """The kernel keeps its packing buffers across calls (uninitialised): a call after a larger one, with keys that
    end inside a 16-key group, must see none of the larger call's keys, values or mask entries."""
    big = _inputs(1, 4, 2, 9, 64, 128, dtype, seed=5)
    _run(*big[:3], None, isa)  # every key of the larger call valid
    q, k, v, mask = _inputs(1, 4, 2, 9, 37, 128, dtype, seed=6)
    for m in (None, mask):
        got = _run(q, k, v, m, isa).double()
        want = reference.attention(q.double(), k.double(), v.double(), m)
        torch.testing.assert_close(got, want, rtol=0, atol=2e-5 if dtype == torch.float32 else 2e-2)


@pytest.mark.parametrize("isa", ISAS)
def test_fully_masked_rows_are_zero_and_padding_keys_are_ignored(isa):
    q, k, v, mask = _inputs(2, 4, 2, 6, 40, 128, torch.float32, seed=2)
    mask[1] = False
    got = _run(q, k, v, mask, isa)
    assert torch.equal(got[1], torch.zeros_like(got[1]))
    # changing a masked key's values changes nothing
    k2, v2 = k.clone(), v.clone()
    masked_key = int((~mask[0]).nonzero()[0])
    k2[0, :, masked_key] += 100
    v2[0, :, masked_key] -= 100
    torch.testing.assert_close(_run(q, k2, v2, mask, isa)[0], got[0], rtol=0, atol=1e-6)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("D", [64, 128])
def test_left_padding_over_whole_key_blocks(isa, dtype, D):
    """Left padding as a batch of prompts has it: whole 64-key blocks of masked keys, then live keys (the kernel's
    online softmax starts from blocks where every key is masked), up to 2048 keys, with Tq != Tk (cache steps)."""
    q, k, v, _ = _inputs(3, 4, 2, 37, 2048, D, dtype, seed=5)
    mask = torch.ones(3, 2048, dtype=torch.bool)
    mask[0, :128] = False          # exactly two blocks
    mask[1, :1000] = False         # fifteen blocks and part of the sixteenth
    mask[2, :2047] = False         # one live key, in the last block
    got = _run(q, k, v, mask, isa)
    exact = reference.attention(q.double(), k.double(), v.double(), mask)
    if dtype == torch.float32:
        torch.testing.assert_close(got.double(), exact, rtol=0, atol=2e-5)
    else:
        torch_err = (reference.attention(q, k, v, mask).double() - exact).abs().max()
        assert (got.double() - exact).abs().max() <= 2 * torch_err + 1e-6
    # a single live key: every query row returns that key's value
    torch.testing.assert_close(got[2].double(), v[2, :, -1:].repeat_interleave(2, 0).expand(4, 37, D).double(),
                               rtol=0, atol=0)


@pytest.mark.parametrize("isa", ISAS)
def test_gqa_query_heads_share_their_kv_head(isa):
    q, k, v, _ = _inputs(1, 8, 2, 9, 33, 64, torch.float32, seed=3)
    got = _run(q, k, v, None, isa)
    for h in range(8):
        want = reference.attention(q[:, h:h + 1], k[:, h // 4:h // 4 + 1], v[:, h // 4:h // 4 + 1])
        torch.testing.assert_close(got[:, h:h + 1], want, rtol=0, atol=2e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(2, 4, 2, 33, 70, 128), (1, 6, 3, 29, 200, 64), (3, 2, 1, 7, 17, 128)])
def test_every_thread_count_gives_the_same_bits(dtype, shape):
    """The AVX-512 kernel packs one (batch, kv head) unit at a time per thread where the units share out evenly
    over the threads, and packs every unit first otherwise (here: 2, 3 or 4 threads over 3, 4 or 6 units take
    both ways): each query row's arithmetic is the same either way, so are its bits, and both match the float64
    reference."""
    if "avx512" not in ISAS:
        pytest.skip("the AVX-512 kernel does not run on this CPU")
    q, k, v, mask = _inputs(*shape, dtype, seed=9)
    outs = []
    for threads in (1, 2, 3, 4):
        out = torch.full((q.shape[0], q.shape[2], q.shape[1], q.shape[3]), 7.0, dtype=dtype).transpose(1, 2)
        _C.attention(q, k, v, out, mask, q.shape[-1] ** -0.5, threads, "avx512")
        outs.append(out)
    for out in outs[1:]:
        assert torch.equal(out, outs[0])
    exact = reference.attention(q.double(), k.double(), v.double(), mask)
    if dtype == torch.float32:
        torch.testing.assert_close(outs[0].double(), exact, rtol=0, atol=2e-5)
    else:
        torch_err = (reference.attention(q, k, v, mask).double() - exact).abs().max()
        assert (outs[0].double() - exact).abs().max() <= 2 * torch_err + 1e-6


def test_empty_queries():
    q, k, v, _ = _inputs(1, 2, 2, 0, 5, 64, torch.float32)
    assert _run(q, k, v, None, ISAS[-1]).numel() == 0


@pytest.mark.parametrize("bad,match", [
    (dict(k=torch.zeros(1, 3, 5, 64)), "must divide the query heads"),
    (dict(v=torch.zeros(1, 2, 6, 64)), "v: dimension 2"),
    (dict(k=torch.zeros(1, 2, 5, 64, dtype=torch.bfloat16)), "k: expected dtype float32"),
    (dict(q=torch.zeros(1, 4, 3, 64, dtype=torch.float64)), "q: expected dtype"),
    (dict(out=torch.zeros(1, 4, 3, 32)), "out: dimension 3"),
    (dict(key_mask=torch.ones(1, 4, dtype=torch.bool)), "key_mask: dimension 1"),
    (dict(scale=-1.0), "scale"),
    (dict(q=torch.zeros(1, 4, 3, 64)[..., ::2]), "contiguous"),
])
def test_argument_checks(bad, match):
    args = dict(q=torch.zeros(1, 4, 3, 64), k=torch.zeros(1, 2, 5, 64), v=torch.zeros(1, 2, 5, 64),
                out=torch.zeros(1, 4, 3, 64), key_mask=None, scale=0.125, n_threads=1, isa=None)
    args.update(bad)
    with pytest.raises((ValueError, TypeError), match=match):
        _C.attention(**args)


def test_op_runs_the_kernel_when_asked_and_the_model_agrees(monkeypatch, checkpoints):
    q, k, v, mask = _inputs(2, 4, 2, 9, 21, 64, torch.float32, seed=4)
    want = ops.attention(q, k, v, mask)
    monkeypatch.setenv("ILLADA_RT_ATTENTION", "kernel")
    got = ops.attention(q, k, v, mask)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=0, atol=2e-5)
    import illada_rt
    m = illada_rt.load(checkpoints["llada_gqa"])
    ids = torch.randint(0, 100, (2, 20), generator=torch.Generator().manual_seed(0))
    with_kernel = m.forward(ids)
    monkeypatch.setenv("ILLADA_RT_ATTENTION", "torch")
    torch.testing.assert_close(with_kernel, m.forward(ids), rtol=0, atol=1e-4)
