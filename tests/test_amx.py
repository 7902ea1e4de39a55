"""The AMX kernels and their tile layer. The tile emulation (csrc/cpu/amx_tiles.h) is held to the instruction
definitions written out here in PyTorch (tdpbssd / tdpbusd: int32 dot products of byte quadruples that wrap;
tdpbf16ps: fp32 sums of bf16 pair products, denormal inputs as zero); the AMX W8A8 GEMM runs on it (isa
"amx_emulated") on every AVX-512 machine and must give the AVX-512 kernel's bits. On a CPU with AMX the same tests
also run the hardware ("amx")."""
import pytest
import torch

from illada_rt import ops

_C = pytest.importorskip("illada_rt._C")
ISAS = ops.cpu_isas()
pytestmark = pytest.mark.skipif("avx512" not in ISAS, reason="the AMX kernels' other half is AVX-512, absent here")
BACKENDS = ["emulated"] + (["hardware"] if "amx" in ISAS else [])
AMX_ISAS = ["amx_emulated"] + (["amx"] if "amx" in ISAS else [])


def _wrap32(v: torch.Tensor) -> torch.Tensor:
    return ((v + 2 ** 31) % 2 ** 32 - 2 ** 31).to(torch.int32)


def _int8_dot(c, a, b, a_signed):
    """c [M, N] int32 + sum_k sum_i a[m, 4k + i] * b[k, 4n + i] (a signed or unsigned bytes, b signed), wrapped."""
    M, N = c.shape
    K = a.shape[1] // 4
    av = (a.view(torch.int8) if a_signed else a).to(torch.int64).reshape(M, K, 4)
    bv = b.view(torch.int8).to(torch.int64).reshape(K, N, 4)
    return _wrap32(c.to(torch.int64) + torch.einsum("mki,kni->mn", av, bv))


def _tile_dot(kind, c, a, b, backend):
    cb = c.contiguous().view(torch.uint8).reshape(c.shape[0], -1).clone()
    _C.amx_tile_dot(kind, cb, a.contiguous().view(torch.uint8).reshape(a.shape[0], -1),
                    b.contiguous().view(torch.uint8).reshape(b.shape[0], -1), backend)
    return cb.view(c.dtype).reshape(c.shape)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["dpbssd", "dpbusd"])
@pytest.mark.parametrize("M,K,N", [(16, 16, 16), (1, 1, 1), (5, 3, 7), (16, 16, 1), (9, 12, 16)])
def test_int8_tile_dot_products(backend, kind, M, K, N):
    g = torch.Generator().manual_seed(M * 100 + K * 10 + N)
    a = torch.randint(0, 256, (M, 4 * K), dtype=torch.uint8, generator=g)
    b = torch.randint(0, 256, (K, 4 * N), dtype=torch.uint8, generator=g)
    c = torch.randint(-2 ** 31, 2 ** 31 - 1, (M, N), dtype=torch.int32, generator=g)
    got = _tile_dot(kind, c, a, b, backend)
    assert torch.equal(got, _int8_dot(c, a, b, a_signed=kind == "dpbssd"))


@pytest.mark.parametrize("backend", BACKENDS)
def test_int8_accumulator_wraps(backend):
    """No saturation: 2^31 - 1 plus a positive product wraps to negative, as the int32 additions of the definition."""
    a = torch.full((1, 4), 127, dtype=torch.int8).view(torch.uint8)
    b = torch.full((1, 4), 127, dtype=torch.int8).view(torch.uint8)
    c = torch.tensor([[2 ** 31 - 1]], dtype=torch.int32)
    got = _tile_dot("dpbssd", c, a, b, backend)
    assert int(got) == int(_wrap32(torch.tensor(2 ** 31 - 1 + 4 * 127 * 127)))
    assert int(got) < 0


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("M,K,N", [(16, 16, 16), (3, 5, 2)])
def test_bf16_tile_dot_product(backend, M, K, N):
    g = torch.Generator().manual_seed(M + K + N)
    a = torch.randn(M, 2 * K, generator=g).bfloat16()
    b = torch.randn(K, 2 * N, generator=g).bfloat16()
    c = torch.randn(M, N, generator=g)
    got = _tile_dot("dpbf16ps", c, a, b, backend)
    want = c.double() + torch.einsum("mkp,knp->mn", a.double().reshape(M, K, 2), b.double().reshape(K, N, 2))
    scale = c.double().abs() + torch.einsum("mkp,knp->mn", a.double().abs().reshape(M, K, 2),
                                            b.double().abs().reshape(K, N, 2))
    # fp32 accumulation of up to 2K products in two chains, then two additions: measured <= 6.7e-8 of the scale
    assert bool(((got.double() - want).abs() <= 2.5e-7 * scale).all())


@pytest.mark.parametrize("backend", BACKENDS)
def test_bf16_denormal_inputs_count_as_zero(backend):
    a = torch.zeros(1, 2, dtype=torch.bfloat16)
    a.view(torch.int16)[0, 0] = 1  # the smallest bf16 denormal, 2^-133
    b = torch.zeros(1, 2, dtype=torch.bfloat16)
    b[0, 0] = 2.0 ** 120  # exact product 2^-13: visible, unless the denormal is read as 0
    c = torch.zeros(1, 1)
    assert float(_tile_dot("dpbf16ps", c, a, b, backend)) == 0.0


def test_emulation_reports_shape_violations():
    """Shapes that make the hardware raise #UD make the emulation raise an error naming it."""
    with pytest.raises(Exception, match="operand shapes disagree"):
        _C.amx_tile_dot("dpbssd", torch.zeros(4, 8, dtype=torch.uint8), torch.zeros(3, 8, dtype=torch.uint8),
                        torch.zeros(2, 8, dtype=torch.uint8))
    with pytest.raises(Exception, match="at most 16 rows x 64 bytes"):
        _C.amx_tile_dot("dpbssd", torch.zeros(17, 8, dtype=torch.uint8), torch.zeros(17, 8, dtype=torch.uint8),
                        torch.zeros(2, 8, dtype=torch.uint8))
    with pytest.raises(Exception, match="kind: expected"):
        _C.amx_tile_dot("tdpfp16ps", *(torch.zeros(1, 4, dtype=torch.uint8),) * 3)


@pytest.mark.skipif("amx" in ISAS, reason="this CPU has AMX")
def test_hardware_backend_is_refused_without_amx():
    with pytest.raises(Exception, match="does not support 'amx'"):
        _C.amx_tile_dot("dpbssd", *(torch.zeros(1, 4, dtype=torch.uint8),) * 3, backend="hardware")


@pytest.mark.parametrize("isa", AMX_ISAS)
@pytest.mark.parametrize("M,N,K", [(1, 1, 1), (31, 33, 5), (33, 50, 70), (100, 17, 300), (5, 16, 64), (40, 48, 1030),
                                   (0, 5, 5), (3, 0, 4), (2, 3, 0)])
def test_gemm_s8_is_exact_and_equals_the_avx512_kernel(isa, M, N, K):
    g = torch.Generator().manual_seed(M + N + K)
    w = torch.randint(-127, 128, (N, K), dtype=torch.int8, generator=g)
    pw = ops.pack_int8_weight(w, torch.rand(N, generator=g))
    Kp = (K + 3) // 4 * 4
    q = torch.zeros(M, Kp, dtype=torch.int8)
    q[:, :K] = torch.randint(-128, 128, (M, K), dtype=torch.int8, generator=g)
    got = torch.full((M, N), 7, dtype=torch.int32)
    _C.gemm_s8(q, pw.packed, pw.colsum, N, got, None, None, 2, isa)
    assert torch.equal(got, _wrap32(q[:, :K].to(torch.int64) @ w.to(torch.int64).T))
    ref = torch.empty(M, N, dtype=torch.int32)
    _C.gemm_s8(q, pw.packed, pw.colsum, N, ref, None, None, 2, "avx512")
    assert torch.equal(got, ref)


@pytest.mark.parametrize("isa", AMX_ISAS)
@pytest.mark.parametrize("out_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("x_dtype", [torch.float32, torch.bfloat16])
def test_linear_w8a8_amx_gives_the_avx512_bits(isa, out_dtype, x_dtype):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 19, 200, generator=g).to(x_dtype)
    weights = [ops.pack_int8_weight(torch.randint(-127, 128, (n, 200), dtype=torch.int8, generator=g),
                                    torch.rand(n, generator=g) * 1e-2) for n in (40, 24, 24)]
    for w in weights:
        assert torch.equal(ops.linear_w8a8(x, w, out_dtype, isa=isa), ops.linear_w8a8(x, w, out_dtype, isa="avx512"))
    fused = ops.linear_w8a8_multi(x, weights, out_dtype, isa=isa)
    for w, f in zip(weights, fused):
        assert torch.equal(f, ops.linear_w8a8(x, w, out_dtype, isa="avx512"))


def test_amx_emulated_is_refused_without_avx512_and_named_in_errors():
    with pytest.raises(Exception, match="amx_emulated"):
        _C.gemm_s8(torch.zeros(1, 4, dtype=torch.int8), torch.zeros(64, dtype=torch.int8),
                   torch.zeros(16, dtype=torch.int32), 1, torch.zeros(1, 1, dtype=torch.int32), None, None, 1, "amx2")


@pytest.mark.parametrize("isa", AMX_ISAS)
@pytest.mark.parametrize("out_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("M,N,K", [(1, 1, 1), (33, 100, 37), (7, 64, 4096), (6, 65, 255), (100, 17, 300), (40, 33, 64),
                                   (0, 16, 8), (3, 0, 8), (2, 16, 0)])
def test_fp8w_amx_matches_float64(isa, out_dtype, M, N, K):
    """The AMX FP8-weight GEMM (e4m3 widened into bf16 B tiles, tdpbf16ps) against x . (q * scale)^T in float64."""
    from illada_rt.ops import reference
    from test_gemm_fp8 import _fp8

    q, s = _fp8(N, K, seed=M + N + K)
    pw = ops.pack_fp8_weight(q, s)
    xb = torch.full((M, K + 3), float("nan")).bfloat16()  # NaN beyond K: the padded copy never reads it
    xb[:, :K] = torch.randn(M, K, generator=torch.Generator().manual_seed(1)).bfloat16()
    x = xb[:, :K]
    out = torch.empty(M, N, dtype=out_dtype)
    _C.gemm_f8w(x, pw.packed, pw.scale, out, 2, isa)
    want = x.double() @ (q.double() * s.double()[:, None]).T
    scale = x.double().abs() @ (q.double().abs() * s.double()[:, None]).T
    # fp32 tile accumulation (measured <= 5.3e-8 of sum |x||w| at K = 37 to 4096), and a bf16 output's own rounding
    # (2^-9 relative)
    tol = 2.5e-7 * scale + (want.abs() * 2.0 ** -8 if out_dtype == torch.bfloat16 else 0)
    assert bool(((out.double() - want).abs() <= tol).all())
    if M and N:
        ref = reference.linear_fp8w(x, q, s, torch.float32)
        torch.testing.assert_close(out.float(), ref, rtol=1e-5 if out_dtype == torch.float32 else 8e-3,
                                   atol=1e-5 * float(ref.abs().max()) if K else 0)
