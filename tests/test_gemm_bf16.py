"""bf16 GEMM for decoding's small M (weights read in place, several weights sharing x as one GEMM): every compiled
variant against float64 products over odd shapes, K tails and K blocks, several segments, both output dtypes; its
claims of determinism; the op's routing to PyTorch; and the argument checks."""
import pytest
import torch
import torch.nn.functional as F

from illada_rt import ops

_C = pytest.importorskip("illada_rt._C")
ISAS = ops.cpu_isas()


def _bf16(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).bfloat16()


def _check_close(got, x, w):
    """got [M, N] against x @ w.T in float64. fp32 accumulation of K products (exact in fp32) in 16 lanes over K/32
    chunks, then a 4-level tree: the error is a small multiple of fp32's eps of sum |x||w| (measured <= 2.4e-8 of it
    at K = 33 to 4096; allowed 1e-7); a bf16 output adds its own rounding, half a bf16 ulp (2^-9 relative)."""
    want = x.double() @ w.double().T
    scale = x.double().abs() @ w.double().abs().T
    tol = 1e-7 * scale + (want.abs() * 2.0 ** -8 if got.dtype == torch.bfloat16 else 0)
    err = (got.double() - want).abs()
    assert bool((err <= tol).all()), f"max error {float(err.max())} at tolerance {float(tol.flatten()[err.argmax()])}"


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("out_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("M,K,Ns", [
    ((1, 1, (1,))), ((3, 31, (5,))), ((7, 33, (17, 9))), ((32, 1024, (29, 8, 3))), ((130, 1030, (19,))),
    ((5, 2100, (9, 16))), ((4, 32, (8,))), ((2, 64, (1, 2, 3, 4))), ((0, 8, (4,))), ((3, 0, (4,))), ((3, 8, (0, 5))),
    ((200, 100, (300, 77, 64))),  # many tasks: two row blocks, panels of three weights for the threads to share
])
def test_matches_float64(isa, out_dtype, M, K, Ns):
    x = _bf16(M, K, seed=M + K)
    ws = [_bf16(N, K, seed=10 + i) for i, N in enumerate(Ns)]
    outs = [torch.full((M, N), float("nan"), dtype=out_dtype) for N in Ns]
    _C.gemm_bf16(x, ws, outs, 2, isa)
    for w, out in zip(ws, outs):
        if K == 0:
            assert torch.equal(out, torch.zeros_like(out))
        else:
            _check_close(out, x, w)


@pytest.mark.parametrize("isa", ISAS)
def test_strided_rows_and_nan_beyond_k(isa):
    """x and w as views of wider tensors whose extra columns hold NaN: the masked K tail never reads them; outputs
    written into a wider buffer leave its other columns alone."""
    M, K, N = 9, 45, 11
    xb = torch.full((M, 64), float("nan")).bfloat16()
    wb = torch.full((N, 80), float("nan")).bfloat16()
    xb[:, :K] = _bf16(M, K, seed=1)
    wb[:, :K] = _bf16(N, K, seed=2)
    x, w = xb[:, :K], wb[:, :K]
    ob = torch.full((M, 20), -7.0)
    _C.gemm_bf16(x, [w], [ob[:, 3:3 + N]], 1, isa)
    _check_close(ob[:, 3:3 + N], x, w)
    assert bool((ob[:, :3] == -7).all() and (ob[:, 3 + N:] == -7).all())


def test_results_do_not_depend_on_threads_segments_or_m():
    """The header's promise: an output's value depends only on its row of x and its row of w."""
    K = 1100
    x = _bf16(70, K, seed=3)
    wq, wk = _bf16(40, K, seed=4), _bf16(24, K, seed=5)
    fused = [torch.empty(70, 40), torch.empty(70, 24)]
    _C.gemm_bf16(x, [wq, wk], fused, 2)
    alone = torch.empty(70, 24)
    _C.gemm_bf16(x, [wk], [alone], 1)
    assert torch.equal(alone, fused[1])
    row = torch.empty(1, 40)
    _C.gemm_bf16(x[37:38], [wq], [row], 1)
    assert torch.equal(row[0], fused[0][37])


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("M,K,N,threads", [(17, 300, 13, 1), (130, 2100, 70, 2)])
def test_generic_and_avx512_round_alike(isa, M, K, N, threads):
    """The portable version writes out the AVX-512 kernel's accumulation order; on normal numbers the two agree. The
    second shape spans several K blocks, row blocks and weight panels of every variant, on two threads (the lanes
    parked between K blocks)."""
    x, w = _bf16(M, K, seed=6), _bf16(N, K, seed=7)
    a, b = torch.empty(M, N), torch.empty(M, N)
    _C.gemm_bf16(x, [w], [a], 1, "generic")
    _C.gemm_bf16(x, [w], [b], threads, isa)
    assert torch.equal(a, b)


def test_op_routes_small_m_to_the_kernel_and_large_m_to_pytorch(monkeypatch):
    K = 96
    w1, w2 = _bf16(40, K, seed=8), _bf16(24, K, seed=9)
    small = _bf16(2, 5, K, seed=10)
    q, k = ops.linear_bf16(small, [w1, w2])
    assert q.shape == (2, 5, 40) and k.shape == (2, 5, 24) and q.dtype == torch.bfloat16
    _check_close(q.reshape(10, 40), small.reshape(10, K), w1)
    sliced = small[:, 1:4]  # rows of two canvases, not evenly strided: the op copies them first
    assert torch.equal(ops.linear_bf16(sliced, [w1])[0], ops.linear_bf16(sliced.contiguous(), [w1])[0])
    with pytest.raises(ValueError, match="evenly strided rows"):
        _C.gemm_bf16(sliced, [w1], [torch.empty(2, 3, 40, dtype=torch.bfloat16)], 1)
    big = _bf16(ops.BF16_GEMM_MAX_M + 1, K, seed=11)
    forced = ops.linear_bf16(big, [w1], force=True)[0]
    _check_close(forced, big, w1)
    if ops.cpu_isa() == "avx2":  # PyTorch's bf16 matmul has no fast path without AVX-512: the kernel takes every M
        assert torch.equal(ops.linear_bf16(big, [w1])[0], forced)
    else:  # PyTorch's GEMM above the threshold
        assert torch.equal(ops.linear_bf16(big, [w1])[0], F.linear(big, w1))
    monkeypatch.setenv("ILLADA_RT_KERNELS", "reference")
    assert torch.equal(ops.linear_bf16(small, [w1])[0], F.linear(small, w1))
    f32 = torch.randn(3, K)
    monkeypatch.delenv("ILLADA_RT_KERNELS")
    assert torch.equal(ops.linear_bf16(f32, [w1.float()])[0], F.linear(f32, w1.float()))  # fp32 stays on PyTorch


def test_op_checks_its_weights():
    x = _bf16(2, 8, seed=12)
    with pytest.raises(ValueError, match=r"weights\[1\]: expected a 2-D tensor \[N, 8\]"):
        ops.linear_bf16(x, [_bf16(4, 8, seed=1), _bf16(4, 7, seed=2)])
    with pytest.raises(ValueError, match="1 to 4 weights"):
        ops.linear_bf16(x, [])


_X, _W = torch.zeros(4, 8, dtype=torch.bfloat16), torch.zeros(16, 8, dtype=torch.bfloat16)


@pytest.mark.parametrize("bad,match", [
    (dict(x=torch.zeros(4, 8)), "x: expected dtype bfloat16"),
    (dict(weights=[torch.zeros(16, 7, dtype=torch.bfloat16)]), r"weights\[0\]: dimension 1 must equal x.shape\[1\]"),
    (dict(weights=[_W, torch.zeros(16, 8)], outs=[torch.zeros(4, 16)] * 2), r"weights\[1\]: expected dtype bfloat16"),
    (dict(weights=[_W] * 5, outs=[torch.zeros(4, 16)] * 5), "1 to 4 weights"),
    (dict(outs=[]), "one output per weight"),
    (dict(outs=[torch.zeros(4, 15)]), r"outs\[0\]: dimension 1"),
    (dict(outs=[torch.zeros(4, 16, dtype=torch.int32)]), r"outs\[0\]: expected dtype"),
    (dict(weights=[_W, _W], outs=[torch.zeros(4, 16), torch.zeros(4, 16, dtype=torch.bfloat16)]), "one dtype"),
    (dict(x=torch.zeros(8, 4, dtype=torch.bfloat16).T), "x: the last dimension must be contiguous"),
    (dict(isa="neon"), "isa"),
])
def test_argument_checks(bad, match):
    args = dict(x=_X, weights=[_W], outs=[torch.zeros(4, 16)], n_threads=1, isa=None)
    args.update(bad)
    with pytest.raises((ValueError, TypeError), match=match):
        _C.gemm_bf16(**args)
