"""The quantized CUDA GEMMs (csrc/cuda/gemm_sm80.cu: gemm_w8a8, gemm_fp8, and the per-row quantizer), on the CUDA
emulator in every CI run and on a GPU when there is one. INT8: the int32 accumulators are exact, so outputs equal
integer arithmetic with the same fp32 epilogue bit for bit, and equal the CPU W8A8 kernel's. FP8: within fp32
rounding of a float64 product of the same e4m3 operands. Odd M, N and K (K padded to 32 at pack time), split-K,
per-channel / per-tensor / block128 scales, zero rows, the largest |w|.
"""
import pytest
import torch

from illada_rt import ops
from illada_rt.ops import cuda as cuda_ops
from illada_rt.ops import cuda_gemm, reference

C, EMU = cuda_ops._C_cuda, cuda_ops._C_cuda_emu
HAS_GPU = C is not None and torch.cuda.is_available() and C.device_count() > 0
GPU_FP8 = HAS_GPU and torch.cuda.get_device_capability() >= (8, 9)
gpu = pytest.mark.gpu


@pytest.fixture(params=["emulator", pytest.param("gpu", marks=[gpu, pytest.mark.skipif(not HAS_GPU,
                                                                                        reason="needs a CUDA GPU")])])
def device(request):
    before = sum(EMU.launch_counts().values())
    yield torch.device("cpu" if request.param == "emulator" else "cuda")
    if request.param == "emulator":
        assert sum(EMU.launch_counts().values()) > before, "the test ran no kernel on the emulator"


def _rand_int8(*shape, seed):
    return torch.randint(-127, 128, shape, generator=torch.Generator().manual_seed(seed), dtype=torch.int8)


def _x(M, K, seed, dtype=torch.bfloat16):
    x = torch.randn(M, K, generator=torch.Generator().manual_seed(seed)) * 2
    return x.to(dtype)


# ---- the activation quantizer -------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("M,K", [(1, 1), (3, 31), (5, 64), (33, 100), (2, 4099)])
def test_quantize_rows_s8_is_the_cpu_paths_quantization(device, dtype, M, K):
    x = _x(M, K, M * K, dtype)
    x[0] = 0  # an all-zero row: scale 1
    q, s = cuda_gemm.quantize_rows(x.to(device), "s8")
    want_q, want_s = reference.quantize_per_token_s8(x.float())
    assert q.shape == (M, (K + 31) // 32 * 32) and (q[:, K:] == 0).all()
    assert torch.equal(q[:, :K].cpu(), want_q) and torch.equal(s.cpu(), want_s)


@pytest.mark.parametrize("M,K", [(3, 31), (7, 300)])
def test_quantize_rows_e4m3(device, M, K):
    x = _x(M, K, K, torch.bfloat16)
    x[1, 5] = 1e4  # the row's max: scale 1e4/448, everything else small
    q, s = cuda_gemm.quantize_rows(x.to(device), "e4m3")
    amax = x.float().abs().amax(1)
    assert torch.equal(s.cpu(), amax / 448)
    want = (x.float() / s.cpu()[:, None]).clamp(-448, 448).to(torch.float8_e4m3fn).view(torch.uint8)
    assert torch.equal(q[:, :K].cpu(), want) and (q[:, K:] == 0).all()


# ---- INT8 -------------------------------------------------------------------------------------------------------

def _int_reference(a: torch.Tensor, w: torch.Tensor, xs, ws) -> torch.Tensor:
    """Integer product, then the epilogue's fp32 (acc * x_scale) * w_scale, written out independently."""
    acc = a.to(torch.int64) @ w.to(torch.int64).T
    return (acc.to(torch.float32) * xs[:, None]) * ws[None, :]


@pytest.mark.parametrize("M,N,K", [(1, 1, 1), (5, 7, 31), (33, 65, 100), (64, 64, 64), (70, 130, 200),
                                   (32, 200, 1000)])
@pytest.mark.parametrize("splits", [1, 0, 3])
def test_gemm_w8a8_is_exact_integer_arithmetic(device, M, N, K, splits):
    a, w = _rand_int8(M, K, seed=M + K), _rand_int8(N, K, seed=N + K)
    w[0] = 127  # the largest |w|, and an all -127 channel
    w[-1] = -127
    a[0] = 0    # a zero row
    xs = torch.rand(M, generator=torch.Generator().manual_seed(1)) + 0.5
    ws = torch.rand(N, generator=torch.Generator().manual_seed(2)) * 0.01
    Kp = (K + 31) // 32 * 32
    splits = min(splits, (Kp + 63) // 64)  # at most one split per 64-byte K stage
    wt = cuda_gemm.pack_weight(w, ws, "channel", device)
    ap = torch.zeros(M, Kp, dtype=torch.int8)
    ap[:, :K] = a
    out = torch.full((M, N), float("nan"), device=device)
    mod = cuda_ops._module(device)
    n = splits or mod.gemm_splits(M, N, Kp, cuda_gemm._sms(device))
    wsp = torch.empty(max(16, mod.gemm_workspace_bytes(M, N, n)), dtype=torch.uint8, device=device)
    cnt = torch.zeros(mod.gemm_counters(M, N), dtype=torch.int32, device=device)
    stream = 0 if device.type == "cpu" else torch.cuda.current_stream().cuda_stream
    mod.gemm("s8", ap.to(device), wt.q, xs.to(device), wt.scale, "channel", out, n, wsp, cnt, stream, 0)
    assert torch.equal(out.cpu(), _int_reference(a, w, xs, ws))  # bit for bit
    assert (cnt == 0).all(), "the split-K counters must be left at zero for the next call"


@pytest.mark.parametrize("M,N,K", [(3, 40, 31), (48, 96, 256), (130, 70, 100)])
@pytest.mark.parametrize("out_dtype", [torch.float32, torch.bfloat16])
def test_linear_w8a8_equals_the_cpu_kernel_bit_for_bit(device, M, N, K, out_dtype):
    x = _x(M, K, M + N)
    w, ws = _rand_int8(N, K, seed=K), torch.rand(N, generator=torch.Generator().manual_seed(3)) * 0.02
    cpu = ops.linear_w8a8(x, ops.pack_int8_weight(w, ws), out_dtype=out_dtype)
    ours = cuda_gemm.linear(x.to(device), cuda_gemm.pack_weight(w, ws, "channel", device), out_dtype=out_dtype)
    assert torch.equal(ours.cpu(), cpu)


def test_linear_batches_of_canvases_and_strided_inputs(device):
    x = _x(2 * 3 * 40, 96, 9).view(2, 3, 40, 96)[:, 1:]  # a non-contiguous batch of canvases
    w, ws = _rand_int8(50, 96, seed=4), torch.full((50,), 0.01)
    wt = cuda_gemm.pack_weight(w, ws, "channel", device)
    out = cuda_gemm.linear(x.to(device), wt)
    assert out.shape == (2, 2, 40, 50) and out.dtype == torch.bfloat16
    want = cuda_gemm.linear(x.contiguous().to(device), wt)
    assert torch.equal(out, want)


# ---- FP8 --------------------------------------------------------------------------------------------------------

def _scales(granularity, N, K, seed):
    """Weight scales of a granularity, and the same as a float64 [N, K] (or broadcastable) multiplier."""
    g = torch.Generator().manual_seed(seed)
    if granularity == "channel":
        ws = torch.rand(N, generator=g) + 0.1
        return ws, ws[:, None].double()
    if granularity == "tensor":
        ws = torch.tensor([0.37])
        return ws, ws.double().reshape(1, 1)
    ws = torch.rand(-(-N // 128), -(-K // 128), generator=g) + 0.1
    return ws, ws.double().repeat_interleave(128, 0)[:N].repeat_interleave(128, 1)[:, :K]


def _e4m3(*shape, seed, scale=1.0):
    v = torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * 100 * scale
    return v.clamp(-448, 448).to(torch.float8_e4m3fn)


@pytest.mark.parametrize("M,N,K", [(5, 7, 31), (33, 130, 300), (64, 256, 512)])
@pytest.mark.parametrize("granularity", ["channel", "tensor", "block128"])
@pytest.mark.parametrize("splits", [1, 0])
def test_gemm_fp8_within_fp32_rounding_of_float64(device, M, N, K, granularity, splits):
    if device.type == "cuda" and not GPU_FP8:
        pytest.skip("the e4m3 tensor-core GEMM needs sm_89+")
    a, w = _e4m3(M, K, seed=M), _e4m3(N, K, seed=N + 1)
    ws, wfull = _scales(granularity, N, K, 7)
    xs = torch.rand(M, generator=torch.Generator().manual_seed(8)) + 0.5
    Kp = (K + 31) // 32 * 32
    wt = cuda_gemm.pack_weight(w, ws, granularity, device)
    ap = torch.zeros(M, Kp, dtype=torch.uint8)
    ap[:, :K] = a.view(torch.uint8)
    out = torch.empty(M, N, device=device)
    mod = cuda_ops._module(device)
    n = splits or mod.gemm_splits(M, N, Kp, cuda_gemm._sms(device))
    wsp = torch.empty(max(16, mod.gemm_workspace_bytes(M, N, n)), dtype=torch.uint8, device=device)
    cnt = torch.zeros(mod.gemm_counters(M, N), dtype=torch.int32, device=device)
    stream = 0 if device.type == "cpu" else torch.cuda.current_stream().cuda_stream
    mod.gemm("e4m3", ap.to(device), wt.q, xs.to(device), wt.scale, granularity, out, n, wsp, cnt, stream, 0)
    wd = w.double() * wfull
    want = (a.double() @ wd.T) * xs.double()[:, None]
    bound = (a.double().abs() @ (w.double().abs() * wfull).T) * xs.double()[:, None]
    # fp32 accumulation over K/32 mma steps plus the block flushes and the epilogue: a few ulps of the magnitudes
    assert ((out.cpu().double() - want).abs() <= (K / 32 + 8) * 2.0**-24 * bound + 1e-30).all()


def test_gemm_fp8_linear_on_bf16_activations(device):
    if device.type == "cuda" and not GPU_FP8:
        pytest.skip("the e4m3 tensor-core GEMM needs sm_89+")
    x = _x(40, 200, 5)
    w, ws = _e4m3(72, 200, seed=6), torch.rand(72, generator=torch.Generator().manual_seed(8)) * 0.01
    out = cuda_gemm.linear(x.to(device), cuda_gemm.pack_weight(w, ws, "channel", device), out_dtype=torch.float32)
    q, xs = reference_e4m3_rows(x)
    want = (q.double() @ (w.double() * ws.double()[:, None]).T) * xs.double()[:, None]
    assert ((out.cpu().double() - want).abs() <= 1e-5 * want.abs().amax()).all()
    exact = x.double() @ (w.double() * ws.double()[:, None]).T  # the activation rounding to e4m3 costs ~3%
    assert (out.cpu().double() - exact).norm() / exact.norm() < 0.05


def reference_e4m3_rows(x: torch.Tensor):
    amax = x.float().abs().amax(1)
    s = torch.where(amax > 0, amax / 448, torch.ones_like(amax))
    return (x.float() / s[:, None]).clamp(-448, 448).to(torch.float8_e4m3fn), s


# ---- bad input ----------------------------------------------------------------------------------------------

def test_bad_arguments_are_named():
    w = cuda_gemm.pack_weight(_rand_int8(8, 40, seed=1), torch.ones(8), "channel", "cpu")
    with pytest.raises(ValueError, match="does not match the weight's K = 40"):
        cuda_gemm.linear(torch.randn(3, 41), w)
    with pytest.raises(ValueError, match="out_dtype: the GEMM writes float32, bfloat16 or float16, got torch.int32"):
        cuda_gemm.linear(torch.randn(3, 40), w, out_dtype=torch.int32)
    assert cuda_gemm.linear(torch.randn(3, 40, dtype=torch.float64), w).dtype == torch.float32  # computed in fp32
    with pytest.raises(ValueError, match="granularity 'block128' has no s8"):
        cuda_gemm.pack_weight(_rand_int8(8, 40, seed=1), torch.ones(1, 1), "block128", "cpu")
    a = torch.zeros(3, 64, dtype=torch.int8)
    with pytest.raises(ValueError, match="w: dimension 1 must equal a.shape"):
        EMU.gemm("s8", a, torch.zeros(8, 32, dtype=torch.int8), torch.ones(3), torch.ones(8), "channel",
                 torch.empty(3, 8))
    with pytest.raises(TypeError, match="w: expected dtype int8"):
        EMU.gemm("s8", a, torch.zeros(8, 64, dtype=torch.uint8), torch.ones(3), torch.ones(8), "channel",
                 torch.empty(3, 8))
    with pytest.raises(ValueError, match="split-K|workspace"):
        EMU.gemm("s8", a, torch.zeros(8, 64, dtype=torch.int8), torch.ones(3), torch.ones(8), "channel",
                 torch.empty(3, 8), 2)
    with pytest.raises(ValueError, match="q: row length must be K rounded up to a multiple of 32"):
        EMU.quantize_rows(torch.randn(2, 40), torch.empty(2, 48, dtype=torch.int8), torch.empty(2), "s8")


# ---- weights stay quantized on the device ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def int8_default(tmp_path_factory):
    from illada_rt.api import DEFAULT_MODEL
    from illada_rt.quantize import quantize_checkpoint

    dst = tmp_path_factory.mktemp("q") / "int8"
    quantize_checkpoint(DEFAULT_MODEL, dst, scheme="int8", progress=False)
    return dst


def test_device_bytes_estimate_is_what_the_gemm_layout_holds(int8_default):
    """info's weights_bytes_cuda: quantized linears at one byte per weight (K padded to 32) plus float32 scales,
    the rest in bf16, equal to the bytes of pack_weight's tensors, well under the bf16 model's."""
    from illada_rt.checkpoint import WeightStore
    from illada_rt.config import read_config
    from illada_rt.quant import device_bytes_estimate, read_scheme

    store = WeightStore(int8_default)
    sch = read_scheme(read_config(int8_default).raw)
    est = device_bytes_estimate(store, "gemm_w8a8", torch.bfloat16)
    held = 0
    for name in store.names():
        e = store.entry(name)
        if name.endswith(".weight_scale"):
            continue
        if e.dtype == torch.int8:
            held += cuda_gemm.pack_weight(torch.zeros(e.shape, dtype=torch.int8), torch.ones(e.shape[0]), "channel",
                                          "cpu").nbytes
        else:
            n = 1
            for d in e.shape:
                n *= d
            held += 2 * n
    assert est == held
    assert est < 0.6 * device_bytes_estimate(store, "dequantized", torch.bfloat16)


@gpu
@pytest.mark.skipif(not HAS_GPU, reason="needs a CUDA GPU")
def test_int8_checkpoint_keeps_one_byte_per_weight_in_gpu_memory(int8_default, monkeypatch):
    import illada_rt

    monkeypatch.setenv("ILLADA_RT_CUDA_KERNELS", "all")
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    m = illada_rt.load(int8_default, device="cuda", dtype=torch.bfloat16)
    allocated = torch.cuda.memory_allocated() - before
    wb = m.transformer.weight_bytes()
    assert wb["kernels"] == {"gemm_w8a8": 7 * m.config.n_layers + (0 if m.config.tied_embeddings else 1)}
    assert allocated <= 1.02 * wb["total"] + (1 << 20)
    out = m.generate("Once upon a time", gen_length=16, steps=16, block_length=16)
    assert out.tokens.shape[-1] >= 16



def test_the_readme_figure_for_an_8b_model_on_the_gpu():
    """README: LLaDA-8B (32 layers, d 4096, MLP 12288, vocab 126464, untied) int8 on a GPU holds 8.54 GB of
    weights (7.95 GiB: linears one byte each, the embedding in bf16) against 16.0 GB in bf16."""
    from types import SimpleNamespace

    from illada_rt.quant import device_bytes_estimate

    d, f, v, L = 4096, 12288, 126464, 32
    shapes = {"model.transformer.wte.weight": (v, d), "model.transformer.ln_f.weight": (d,),
              "model.transformer.ff_out.weight": (v, d), "model.transformer.ff_out.weight_scale": (v,)}
    for i in range(L):
        p = f"model.transformer.blocks.{i}."
        for n, s in {"q_proj": (d, d), "k_proj": (d, d), "v_proj": (d, d), "attn_out": (d, d), "ff_proj": (f, d),
                     "up_proj": (f, d), "ff_out": (d, f)}.items():
            shapes[p + n + ".weight"], shapes[p + n + ".weight_scale"] = s, (s[0],)
        shapes[p + "attn_norm.weight"] = shapes[p + "ff_norm.weight"] = (d,)
    dtype = {n: (torch.float32 if n.endswith("_scale") else torch.int8 if len(s) == 2 and "wte" not in n
                 else torch.bfloat16) for n, s in shapes.items()}
    store = SimpleNamespace(names=lambda: list(shapes),
                            entry=lambda n: SimpleNamespace(shape=shapes[n], dtype=dtype[n]))
    int8 = device_bytes_estimate(store, "gemm_w8a8", torch.bfloat16)
    bf16 = device_bytes_estimate(store, "dequantized", torch.bfloat16)
    assert round(int8 / 1e9, 2) == 8.54 and round(int8 / 2**30, 2) == 7.95 and round(bf16 / 1e9, 1) == 16.0


# ---- FP8 weight-only (sm_80's path: 16-bit activations, e4m3 widened in registers) ------------------------------

@pytest.mark.parametrize("M,N,K", [(5, 7, 31), (33, 130, 300), (64, 256, 512)])
@pytest.mark.parametrize("granularity", ["channel", "tensor", "block128"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_fp8_weight_only_within_fp32_rounding_of_float64(device, M, N, K, granularity, dtype):
    x = _x(M, K, M + K, dtype)
    w = _e4m3(N, K, seed=N)
    ws, wfull = _scales(granularity, N, K, 9)
    wt = cuda_gemm.pack_weight(w, ws, granularity, device)
    for splits in (1, None):
        out = cuda_gemm.linear(x.to(device), wt, torch.float32, splits=splits, weight_only=True)
        want = x.double() @ (w.double() * wfull).T
        bound = x.double().abs() @ (w.double().abs() * wfull).T
        assert ((out.cpu().double() - want).abs() <= (K / 16 + 8) * 2.0**-24 * bound + 1e-30).all()


def test_fp8_weight_only_matches_the_cpu_fp8_kernel(device):
    """The CPU FP8-weight kernel computes the same thing (bf16 activations, e4m3 widened, fp32 accumulation):
    agreement to fp32 rounding of the sums."""
    x = _x(40, 200, 3)
    w, ws = _e4m3(72, 200, seed=4), torch.rand(72, generator=torch.Generator().manual_seed(5)) * 0.01
    cpu = ops.linear_fp8w(x, ops.pack_fp8_weight(w, ws), out_dtype=torch.float32)
    ours = cuda_gemm.linear(x.to(device), cuda_gemm.pack_weight(w, ws, "channel", device), torch.float32,
                            weight_only=True)
    torch.testing.assert_close(ours.cpu(), cpu, rtol=2e-5, atol=1e-6)
