"""The emulator's PTX instructions (csrc/cuda_emu/ptx.cpp, wrapped by csrc/cuda/mma_sm80.cuh), checked against the
PTX ISA's definitions alone: the fragment layouts of "Matrix Fragments for mma.m16n8k16" / "... m16n8k32" and
"ldmatrix" are written out again below, in Python, from the documentation (lane = 0..31, g = lane >> 2,
t = lane & 3, elements low to high within each 32-bit register). The probes (csrc/cuda/fragment_probe.cu) are the
same kernels nvcc builds into _C_cuda: on a GPU their registers are compared bit for bit with the emulator's.
"""
import pytest
import torch

from illada_rt import _C_cuda_emu as emu
from illada_rt.ops import cuda as cuda_ops

GPU = cuda_ops._C_cuda
HAS_GPU = GPU is not None and torch.cuda.is_available() and GPU.device_count() > 0


def _u32(t: torch.Tensor) -> list[int]:
    return [v & 0xFFFFFFFF for v in t.flatten().tolist()]


# ---- ldmatrix ------------------------------------------------------------------------------------------------

def ldmatrix_reference(rows16: torch.Tensor, row_of_lane: list[int], num: int, trans: bool) -> list[list[int]]:
    """PTX: lanes 8j..8j+7 address rows 0..7 of matrix j; without .trans lane L holds row L>>2, columns 2(L&3) and
    2(L&3)+1 of each matrix; with .trans, rows 2(L&3) and 2(L&3)+1 of column L>>2. Low half first."""
    m = rows16.tolist()  # [32][8] unsigned 16-bit

    def elem(j, r, c):
        return m[row_of_lane[8 * j + r]][c] & 0xFFFF

    out = []
    for lane in range(32):
        regs = []
        for j in range(num):
            if trans:
                lo, hi = elem(j, 2 * (lane & 3), lane >> 2), elem(j, 2 * (lane & 3) + 1, lane >> 2)
            else:
                lo, hi = elem(j, lane >> 2, 2 * (lane & 3)), elem(j, lane >> 2, 2 * (lane & 3) + 1)
            regs.append(lo | hi << 16)
        out.append(regs)
    return out


def run_ldmatrix(mod, src: torch.Tensor, rows: torch.Tensor, num: int, trans: bool, device="cpu") -> list[list[int]]:
    out = torch.zeros(32, num, dtype=torch.int32, device=device)
    kw = {} if device == "cpu" else {"stream": torch.cuda.current_stream().cuda_stream, "device": 0}
    mod.probe_ldmatrix(src.to(device), rows.to(device), num, trans, out, **kw)
    return [_u32(r) for r in out.cpu()]


@pytest.mark.parametrize("num", [1, 2, 4])
@pytest.mark.parametrize("trans", [False, True])
@pytest.mark.parametrize("seed", [0, 1])
def test_ldmatrix_matches_the_ptx_definition(num, trans, seed):
    g = torch.Generator().manual_seed(seed * 10 + num)
    src = torch.randint(0, 256, (32, 16), dtype=torch.uint8, generator=g)
    perm = torch.randperm(32, generator=g) if seed else torch.arange(32)
    rows16 = src.view(torch.int16).to(torch.int32) & 0xFFFF
    got = run_ldmatrix(emu, src, perm.to(torch.int32).view(1, 32), num, trans)
    assert got == ldmatrix_reference(rows16, perm.tolist(), num, trans)


def test_ldmatrix_misaligned_or_global_address_is_an_error():
    # the probe's row addresses are always in shared memory and 16-byte aligned; the kernel-side checks are
    # exercised by the attention kernel's tests. Here: a lane outside 0..31 rows is masked by the probe itself.
    src = torch.zeros(32, 16, dtype=torch.uint8)
    with pytest.raises(ValueError, match="num: expected 1, 2 or 4"):
        emu.probe_ldmatrix(src, torch.zeros(1, 32, dtype=torch.int32), 3, False, torch.zeros(32, 3, dtype=torch.int32))


# ---- mma.sync ---------------------------------------------------------------------------------------------------

ELEM = {"bf16": (torch.bfloat16, 2), "f16": (torch.float16, 2), "s8": (torch.int8, 4), "e4m3": (torch.float8_e4m3fn, 4)}


def _elements(regs: torch.Tensor, kind: str) -> torch.Tensor:
    """[32, R] int32 registers -> [32, R, per] float64 elements (low to high)."""
    dtype, per = ELEM[kind]
    return regs.contiguous().view(torch.uint8).view(dtype).to(torch.float64).view(32, regs.shape[1], per)


def fragments_to_matrices(a, b, c, kind):
    """A [16, K], B [K, 8], C [16, 8] from each lane's fragments, by the PTX layouts."""
    _, per = ELEM[kind]
    K = 8 * per  # 16 for 16-bit elements, 32 for 8-bit
    ea, eb = _elements(a, kind), _elements(b, kind)
    A = torch.full((16, K), float("nan"), dtype=torch.float64)
    B = torch.full((K, 8), float("nan"), dtype=torch.float64)
    C = torch.full((16, 8), float("nan"), dtype=torch.float64)
    for lane in range(32):
        g, t = lane >> 2, lane & 3
        for i in range(4 * per):  # a_i: register i // per, element i % per
            if per == 2:  # m16n8k16: row g for i in {0,1,4,5} else g+8; col 2t + (i&1), +8 for i >= 4
                row, col = g + (8 if i in (2, 3, 6, 7) else 0), 2 * t + (i & 1) + (8 if i >= 4 else 0)
            else:  # m16n8k32: row g for i in 0..3, 8..11 else g+8; col 4t + (i&3), +16 for i >= 8
                row, col = g + (8 if (4 <= i < 8 or i >= 12) else 0), 4 * t + (i & 3) + (16 if i >= 8 else 0)
            A[row, col] = ea[lane, i // per, i % per]
        for i in range(2 * per):  # b_i: k = per*t + (i % per), + 8 (k16) / + 16 (k32) for the second register
            k = per * t + (i % per) + (4 * per if i >= per else 0)
            B[k, g] = eb[lane, i // per, i % per]
        for i in range(4):  # c_i: row g for i < 2 else g+8; col 2t + (i&1)
            C[g + (8 if i >= 2 else 0), 2 * t + (i & 1)] = float(c[lane, i])
    assert not (A.isnan().any() or B.isnan().any() or C.isnan().any()), "every element has exactly one owner"
    return A, B, C


def matrix_to_fragments(D: torch.Tensor) -> torch.Tensor:
    out = torch.empty(32, 4, dtype=D.dtype)
    for lane in range(32):
        g, t = lane >> 2, lane & 3
        for i in range(4):
            out[lane, i] = D[g + (8 if i >= 2 else 0), 2 * t + (i & 1)]
    return out


def random_registers(kind, rows, g, integer_valued):
    dtype, per = ELEM[kind]
    if kind == "s8":
        vals = torch.randint(-128, 128, (32, rows, per), generator=g).to(torch.int8)
    elif integer_valued:
        vals = torch.randint(-8, 9, (32, rows, per), generator=g).to(dtype)
    else:
        vals = (torch.randn(32, rows, per, generator=g) * 2).to(dtype)
    return vals.contiguous().view(torch.uint8).view(32, rows * per * vals.element_size()).view(torch.int32)


def run_mma(mod, kind, a, b, c, device="cpu"):
    d = torch.zeros_like(c, device=device)
    kw = {} if device == "cpu" else {"stream": torch.cuda.current_stream().cuda_stream, "device": 0}
    mod.probe_mma(kind, a.to(device), b.to(device), c.to(device), d, **kw)
    return d.cpu()


@pytest.mark.parametrize("kind", ["bf16", "f16", "s8", "e4m3"])
@pytest.mark.parametrize("integer_valued", [True, False])
def test_mma_matches_the_ptx_definition(kind, integer_valued):
    g = torch.Generator().manual_seed(len(kind) + 7 * integer_valued)
    a, b = random_registers(kind, 4, g, integer_valued), random_registers(kind, 2, g, integer_valued)
    if kind == "s8":
        c = torch.randint(-2**20, 2**20, (32, 4), generator=g, dtype=torch.int32)
    else:
        c = torch.randn(32, 4, generator=g).to(torch.bfloat16).float()  # exact in the float64 reference
    A, B, C = fragments_to_matrices(a, b, c, kind)
    if kind == "s8":  # integer arithmetic, exact (int32 accumulators)
        want = matrix_to_fragments((A.to(torch.int64) @ B.to(torch.int64) + C.to(torch.int64)).to(torch.int32))
        assert torch.equal(run_mma(emu, kind, a, b, c), want)
    else:  # the products and their sum are exact in float64 at these magnitudes: one rounding to fp32
        want = matrix_to_fragments((A @ B + C).to(torch.float32))
        assert torch.equal(run_mma(emu, kind, a, b, c), want)


def test_mma_s8_wraps_on_overflow():
    a = torch.full((32, 4), 0x80808080 - 2**32, dtype=torch.int32)  # every element -128
    b = a[:, :2].clone()
    c = torch.full((32, 4), 2**31 - 1, dtype=torch.int32)
    d = run_mma(emu, "s8", a, b, c)
    assert (d == ((2**31 - 1 + 32 * 128 * 128) % 2**32) - 2**32).all()


# ---- a GEMM tile through cp.async, ldmatrix and mma ------------------------------------------------------------

@pytest.mark.parametrize("kind", ["bf16", "f16", "s8", "e4m3"])
@pytest.mark.parametrize("k_steps", [1, 3])
def test_tile_gemm_through_ldmatrix_and_mma_equals_the_product(kind, k_steps):
    dtype, per = ELEM[kind]
    K = 8 * per * k_steps
    g = torch.Generator().manual_seed(K)
    if kind == "s8":
        a = torch.randint(-128, 128, (16, K), generator=g).to(torch.int8)
        bt = torch.randint(-128, 128, (8, K), generator=g).to(torch.int8)
    else:
        a, bt = torch.randn(16, K, generator=g).to(dtype), torch.randn(8, K, generator=g).to(dtype)
    out = torch.zeros(16, 8, dtype=torch.int32 if kind == "s8" else torch.float32)
    emu.probe_tile_gemm(kind, a.view(torch.uint8), bt.view(torch.uint8), out)
    if kind == "s8":
        assert torch.equal(out, (a.to(torch.int64) @ bt.to(torch.int64).T).to(torch.int32))  # bit-exact
    else:
        want = a.to(torch.float64) @ bt.to(torch.float64).T
        scale = a.to(torch.float64).abs() @ bt.to(torch.float64).abs().T
        # one fp32 rounding per k-step of the accumulation: |err| <= k_steps * 2^-24 * sum|a||b| (x2 margin)
        assert ((out.double() - want).abs() <= 2 * k_steps * 2.0**-24 * scale + 1e-30).all()


# ---- on a GPU: the same probes, bit for bit ---------------------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.skipif(not HAS_GPU, reason="needs a CUDA GPU")
def test_gpu_fragments_equal_the_emulators_bit_for_bit():
    g = torch.Generator().manual_seed(5)
    for num in (1, 2, 4):
        for trans in (False, True):
            src = torch.randint(0, 256, (32, 16), dtype=torch.uint8, generator=g)
            rows = torch.randperm(32, generator=g).to(torch.int32).view(1, 32)
            assert run_ldmatrix(GPU, src, rows, num, trans, "cuda") == run_ldmatrix(emu, src, rows, num, trans)
    kinds = ["bf16", "f16", "s8"] + (["e4m3"] if torch.cuda.get_device_capability() >= (8, 9) else [])
    for kind in kinds:
        a, b = random_registers(kind, 4, g, True), random_registers(kind, 2, g, True)  # exact in any order
        c = (torch.randint(-50, 50, (32, 4), generator=g, dtype=torch.int32) if kind == "s8"
             else torch.randint(-50, 50, (32, 4), generator=g).float())
        assert torch.equal(run_mma(GPU, kind, a, b, c, "cuda"), run_mma(emu, kind, a, b, c)), kind


# ---- element conversions and cp.async zero-fill -----------------------------------------------------------------

def _interesting_floats() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    parts = [torch.randn(20000, generator=g) * torch.exp2(torch.randint(-30, 30, (20000,), generator=g).float()),
             torch.tensor([0.0, -0.0, 1.0, 65504.0, 65519.0, 65520.0, 70000.0, 2.0**-14, 2.0**-24, 2.0**-25,
                           3 * 2.0**-26, 2.0**-26, 3.4e38, -3.4e38, float("inf"), float("-inf"), 1e-40])]
    # exact halfway cases for bf16 (low 16 bits 0x8000, even and odd kept parts) and for f16
    bits = torch.tensor([0x3F808000, 0x3F818000, 0x3F80C000, 0x3F807FFF, 0x7F7F8000], dtype=torch.int32)
    parts.append(bits.view(torch.float32))
    parts.append(torch.tensor([1 + 2.0**-11, 1 + 3 * 2.0**-11, 2.0**-14 * (1 + 2.0**-11), 2.0**-24 * 1.5,
                               2.0**-24 * 2.5]))
    return torch.cat(parts).float()


@pytest.mark.parametrize("kind,dtype", [("bf16", torch.bfloat16), ("f16", torch.float16)])
def test_float_to_16bit_rounds_to_nearest_even_as_torch(kind, dtype):
    x = _interesting_floats()
    got = torch.zeros(x.numel(), dtype=torch.int32)
    emu.to_16bit(x, got, kind)
    want = x.to(dtype).view(torch.int16).to(torch.int32) & 0xFFFF
    assert torch.equal(got, want)
    nan = torch.tensor([float("nan"), -float("nan")])
    out = torch.zeros(2, dtype=torch.int32)
    emu.to_16bit(nan, out, kind)
    assert out.tolist() == [0x7FFF, 0x7FFF]  # cuda_bf16.h / cuda_fp16.h's canonical NaN


@pytest.mark.parametrize("kind,dtype,n", [("bf16", torch.bfloat16, 65536), ("f16", torch.float16, 65536),
                                          ("e4m3", torch.float8_e4m3fn, 256)])
def test_widening_every_bit_pattern_matches_torch(kind, dtype, n):
    bits = torch.arange(n, dtype=torch.int32)
    got = torch.zeros(n)
    emu.from_16bit(bits, got, kind)
    small = bits.to(torch.int16 if n > 256 else torch.uint8) if n > 256 else bits.to(torch.uint8)
    want = small.view(dtype).float()
    assert torch.equal(got.isnan(), want.isnan())
    keep = ~want.isnan()
    assert torch.equal(got[keep].view(torch.int32), want[keep].view(torch.int32))  # bit for bit, signed zeros too


@pytest.mark.parametrize("src_bytes", [0, 4, 8, 12, 16])
def test_cp_async_zero_fills_past_src_size(src_bytes):
    x = torch.arange(1.0, 129.0)
    out = torch.full((128,), -1.0)
    emu.cp_async_zero_fill(x, out, src_bytes)
    chunks = out.view(32, 4)
    n = src_bytes // 4
    assert torch.equal(chunks[:, :n], x.view(32, 4)[:, :n]) and (chunks[:, n:] == 0).all()
