"""FP8-weight GEMM (e4m3 weights widened to bf16 in registers, fp32 accumulation): every compiled variant against
the PyTorch reference over odd shapes, every e4m3 code, both output dtypes, and the argument checks."""
import pytest
import torch

from illada_rt import ops
from illada_rt.ops import reference

_C = pytest.importorskip("illada_rt._C")
ISAS = ops.cpu_isas()


def _fp8(N, K, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(N, K, generator=g) * 0.05
    s = torch.where(w.abs().amax(1) > 0, w.abs().amax(1) / 448, torch.ones(N)) if K else torch.ones(N)
    return (w / s[:, None]).to(torch.float8_e4m3fn), s


def _run(x, pw, out_dtype, isa):
    out = torch.empty(x.shape[0], pw.N, dtype=out_dtype)
    _C.gemm_f8w(x, pw.packed, pw.scale, out, 2, isa)
    return out


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("out_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("M,N,K", [(1, 1, 1), (1, 16, 2), (33, 100, 37), (7, 64, 4096), (6, 65, 255), (100, 17, 300),
                                   (0, 16, 8), (3, 0, 8), (2, 16, 0),
                                   (200, 333, 301)])  # many tasks: two row blocks, six panels shared out
def test_matches_reference(isa, out_dtype, M, N, K):
    q, s = _fp8(N, K, seed=M + N + K)
    pw = ops.pack_fp8_weight(q, s)
    assert torch.equal(pw.weight().view(torch.uint8), q.view(torch.uint8))
    x = torch.randn(M, K, generator=torch.Generator().manual_seed(1)).bfloat16()
    got = _run(x, pw, out_dtype, isa)
    want = reference.linear_fp8w(x, q, s, torch.float32)
    assert got.shape == (M, N) and got.dtype == out_dtype
    if out_dtype == torch.float32:
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * (float(want.abs().max()) if want.numel() else 0))
    else:
        torch.testing.assert_close(got.float(), want, rtol=8e-3, atol=1e-6)


@pytest.mark.parametrize("isa", ISAS)
def test_every_e4m3_code_widens_exactly(isa):
    """Row n of the weight holds code n (NaN codes 0x7f/0xff replaced by 0); x = one-hot columns, so the output
    is each code's value, which must be exact."""
    codes = torch.arange(256, dtype=torch.uint8)
    codes[0x7f] = codes[0xff] = 0
    q = codes.view(torch.float8_e4m3fn).reshape(256, 1).repeat(1, 6)
    q.view(torch.uint8)[:, 1:] = 0
    pw = ops.pack_fp8_weight(q, torch.ones(256))
    x = torch.zeros(3, 6, dtype=torch.bfloat16)
    x[:, 0] = 1
    got = _run(x, pw, torch.float32, isa)
    assert torch.equal(got[0], q[:, 0].float())


def test_linear_op_and_reference_mode(monkeypatch):
    q, s = _fp8(48, 40)
    pw = ops.pack_fp8_weight(q, s)
    x = torch.randn(2, 5, 40).bfloat16()
    got = ops.linear_fp8w(x, pw, torch.float32)
    assert got.shape == (2, 5, 48)
    monkeypatch.setenv("ILLADA_RT_KERNELS", "reference")
    torch.testing.assert_close(ops.linear_fp8w(x, pw, torch.float32), got, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="does not match"):
        ops.linear_fp8w(torch.zeros(2, 3).bfloat16(), pw)
    with pytest.raises(ValueError, match="float8_e4m3fn"):
        ops.pack_fp8_weight(torch.zeros(4, 4, dtype=torch.int8), torch.ones(4))


@pytest.mark.parametrize("bad,match", [
    (dict(x=torch.zeros(4, 8)), "x: expected dtype bfloat16"),
    (dict(packed=torch.zeros(10, dtype=torch.uint8)), "packed"),
    (dict(w_scale=torch.ones(16, dtype=torch.float64)), "w_scale: expected dtype float32"),
    (dict(out=torch.zeros(4, 15)), "out: dimension 1"),
    (dict(out=torch.zeros(4, 16, dtype=torch.int32)), "out: expected dtype"),
    (dict(isa="neon"), "isa"),
])
def test_argument_checks(bad, match):
    args = dict(x=torch.zeros(4, 8, dtype=torch.bfloat16), packed=torch.zeros(16 * 8, dtype=torch.uint8),
                w_scale=torch.ones(16), out=torch.zeros(4, 16), n_threads=1, isa=None)
    args.update(bad)
    with pytest.raises((ValueError, TypeError), match=match):
        _C.gemm_f8w(**args)
