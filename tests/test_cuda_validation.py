"""The CUDA module (_C_cuda) without a GPU: what CI can check of the CUDA kernels.

Argument validation at the bindings (it happens before any device is touched), the Philox generator the sampling
kernels use (the host copy of the device code, against Random123's known answers and the NumPy reference), and the
arch and selection rules, including that CUDA tensors go to the reference ops until a kernel is verified. The
kernels themselves are compared with their references on a GPU in test_cuda_kernels.py.
"""
import numpy as np
import pytest
import torch

import illada_rt
from illada_rt.ops import cuda as cuda_ops
from illada_rt.ops import reference

C = cuda_ops._C_cuda
needs_module = pytest.mark.skipif(C is None, reason="_C_cuda not built (no CUDA compiler)")
HAS_GPU = C is not None and torch.cuda.is_available() and C.device_count() > 0


@needs_module
@pytest.mark.parametrize("counter,key,expected", [
    # Random123's known-answer vectors for philox4x32-10
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF, 0xFFFFFFFF), (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
])
def test_philox_known_answers(counter, key, expected):
    assert tuple(C.philox4x32(counter, key)) == expected
    assert tuple(reference.philox4x32_10(np.array([counter], dtype=np.uint32), key)[0]) == expected


@needs_module
def test_philox_host_code_matches_numpy_reference():
    rng = np.random.default_rng(0)
    counters = rng.integers(0, 2**32, size=(64, 4), dtype=np.uint64).astype(np.uint32)
    keys = rng.integers(0, 2**32, size=(64, 2), dtype=np.uint64)
    for c, k in zip(counters, keys):
        key = (int(k[0]), int(k[1]))
        assert tuple(C.philox4x32(tuple(int(x) for x in c), key)) == tuple(reference.philox4x32_10(c[None], key)[0])


def test_gumbel_noise_is_standard_gumbel_and_keyed():
    g = reference.gumbel_noise(4, 50_000, seed=1234, offset=7)
    assert g.dtype == torch.float32 and g.shape == (4, 50_000) and torch.isfinite(g).all()
    # Gumbel(0, 1): mean = Euler-Mascheroni constant, variance = pi^2 / 6
    assert abs(g.mean().item() - 0.5772) < 0.01 and abs(g.var().item() - np.pi ** 2 / 6) < 0.03
    assert not torch.equal(g[0], g[1])  # rows draw independently
    assert not torch.equal(g, reference.gumbel_noise(4, 50_000, seed=1234, offset=8))  # a new offset, new noise
    assert torch.equal(g[2], reference.gumbel_noise(1, 50_000, seed=1234, offset=7, row_ids=[2])[0])


@pytest.mark.parametrize("compiled,sm,ok", [
    ("80,90a", 80, True), ("80,90a", 86, True), ("80,90a", 90, True), ("80,90a", 100, True), ("80,90a", 75, False),
    ("90a", 90, True), ("90a", 80, False), ("90a", 100, False), ("80-real", 89, True), ("80-real", 90, False),
    ("90-virtual", 120, True), ("", 90, False),
])
def test_arch_covers(compiled, sm, ok):
    assert cuda_ops.arch_covers(compiled, sm) is ok


def test_kernel_setting(monkeypatch):
    monkeypatch.delenv("ILLADA_RT_CUDA_KERNELS", raising=False)
    assert cuda_ops.requested() == (frozenset(cuda_ops.KERNELS), False)  # each subject to its self-check
    monkeypatch.setenv("ILLADA_RT_CUDA_KERNELS", "all")
    assert cuda_ops.requested() == (frozenset(cuda_ops.KERNELS), True)
    monkeypatch.setenv("ILLADA_RT_CUDA_KERNELS", "none")
    assert cuda_ops.requested() == (frozenset(), True)
    monkeypatch.setenv("ILLADA_RT_CUDA_KERNELS", " attention , sample_tokens ")
    assert cuda_ops.requested() == (frozenset({"attention", "sample_tokens"}), True)
    monkeypatch.setenv("ILLADA_RT_CUDA_KERNELS", "attention,flash")
    with pytest.raises(ValueError, match="unknown kernel.*flash"):
        cuda_ops.requested()


def test_status_without_a_gpu(monkeypatch):
    monkeypatch.delenv("ILLADA_RT_CUDA_KERNELS", raising=False)
    status = illada_rt.capabilities()["cuda_kernels"]
    assert status["emulator"] is True
    for name in cuda_ops.KERNELS:
        if C is None:
            assert status[name].startswith("reference (_C_cuda not built")
        elif not HAS_GPU:
            assert status[name] == "reference; _C_cuda once it passes its self-check on a GPU (no GPU visible)"
    monkeypatch.setenv("ILLADA_RT_CUDA_KERNELS", "all")
    if C is not None:
        assert illada_rt.capabilities()["cuda_kernels"]["attention"].startswith("_C_cuda (forced")
    monkeypatch.setenv("ILLADA_RT_KERNELS", "reference")
    assert cuda_ops.kernel_enabled("attention", torch.device("cuda", 0)) is False


def _bf16(*shape):
    return torch.randn(*shape).to(torch.bfloat16)


@needs_module
@pytest.mark.parametrize("change,exc,match", [
    (dict(q=torch.randn(1, 2, 5, 64)), TypeError, "q: expected dtype bfloat16 or float16"),
    (dict(k=torch.randn(1, 2, 5, 64).half()), TypeError, "k: expected dtype bfloat16"),
    (dict(q=_bf16(1, 2, 5, 96), out=_bf16(1, 2, 5, 96)), ValueError, "head dim 96 has no CUDA kernel"),
    (dict(k=_bf16(1, 3, 5, 64), v=_bf16(1, 3, 5, 64)), ValueError, "kv heads \\(3\\) must divide query heads \\(2\\)"),
    (dict(v=_bf16(1, 2, 6, 64)), ValueError, "v: dimension 2 must equal"),
    (dict(out=_bf16(1, 2, 4, 64)), ValueError, "out: dimension 2 must equal"),
    (dict(q=_bf16(1, 2, 5, 64)[..., ::2].expand(1, 2, 5, 32)), ValueError, "head dim 32"),
    (dict(key_mask=torch.ones(1, 4, dtype=torch.bool)), ValueError, "key_mask: dimension 1 must equal"),
    (dict(key_mask=torch.ones(1, 5)), TypeError, "key_mask: expected dtype bool"),
    (dict(scale=-1.0), ValueError, "scale: must be positive"),
    (dict(q=_bf16(1, 2, 5, 68)[..., :64]), ValueError, "q: strides must be multiples of 8"),
    (dict(), ValueError, "q: expected a CUDA tensor, got a CPU tensor"),
])
def test_attention_binding_validates_before_touching_a_device(change, exc, match):
    args = dict(q=_bf16(1, 2, 5, 64), k=_bf16(1, 2, 5, 64), v=_bf16(1, 2, 5, 64), out=_bf16(1, 2, 5, 64),
                key_mask=None, scale=0.125)
    args.update(change)
    with pytest.raises(exc, match=match):
        C.attention(args["q"], args["k"], args["v"], args["out"], args["key_mask"], args["scale"], 0, 0)


@needs_module
@pytest.mark.parametrize("change,exc,match", [
    (dict(logits=torch.randn(3, 10).double()), TypeError, "logits: expected dtype float32 or bfloat16 or float16"),
    (dict(logits=torch.randn(3, 0)), ValueError, "vocabulary dimension is empty"),
    (dict(token=torch.empty(4, dtype=torch.long)), ValueError, "token: dimension 0 must equal"),
    (dict(token=torch.empty(3, dtype=torch.int32)), TypeError, "token: expected dtype int64"),
    (dict(confidence=torch.empty(3, dtype=torch.half)), TypeError, "confidence: expected dtype float32 or float64"),
    (dict(margin=torch.empty(2)), ValueError, "margin: dimension 0"),
    (dict(row_ids=torch.empty(3)), TypeError, "row_ids: expected dtype int64"),
    (dict(temperature=-0.5), ValueError, "temperature: must be finite and >= 0"),
    (dict(temperature=float("nan")), ValueError, "temperature: must be finite"),
    (dict(), ValueError, "logits: expected a CUDA tensor"),
])
def test_sample_binding_validates(change, exc, match):
    args = dict(logits=torch.randn(3, 10), token=torch.empty(3, dtype=torch.long), confidence=torch.empty(3),
                margin=None, entropy=None, temperature=0.0, row_ids=None)
    args.update(change)
    with pytest.raises(exc, match=match):
        C.sample_tokens(args["logits"], args["token"], args["confidence"], args["margin"], args["entropy"],
                        args["temperature"], 0, 0, args["row_ids"], 0, 0)


@needs_module
@pytest.mark.parametrize("change,exc,match", [
    (dict(k=None), ValueError, "exactly one of k and threshold"),
    (dict(threshold=0.9), ValueError, "exactly one of k and threshold"),
    (dict(k=None, threshold=float("nan")), ValueError, "threshold: must be a number"),
    (dict(confidence=torch.rand(2, 7)), ValueError, "confidence: dimension 1 must equal"),
    (dict(x0=torch.zeros(2, 8, dtype=torch.int32)), TypeError, "x0: expected dtype int64"),
    (dict(tokens=torch.zeros(2, 5000, dtype=torch.long), confidence=torch.rand(2, 5000),
          x0=torch.zeros(2, 5000, dtype=torch.long)), ValueError, "blocks of up to 4096 positions"),
    (dict(transfer_mask=torch.zeros(2, 8, dtype=torch.uint8)), TypeError, "transfer_mask: expected dtype bool"),
    (dict(), ValueError, "confidence: expected a CUDA tensor"),
])
def test_select_binding_validates(change, exc, match):
    args = dict(confidence=torch.rand(2, 8), x0=torch.zeros(2, 8, dtype=torch.long),
                tokens=torch.zeros(2, 8, dtype=torch.long), k=torch.ones(2, dtype=torch.long), threshold=None,
                transfer_mask=None)
    args.update(change)
    with pytest.raises(exc, match=match):
        C.select_transfer(args["confidence"], args["x0"], args["tokens"], 9, args["k"], args["threshold"], None,
                          args["transfer_mask"], 0, 0)


def test_philox_torch_matches_numpy_reference():
    """The torch Philox (any device; what the reference ops use on a GPU) equals the NumPy definition."""
    rng = np.random.default_rng(1)
    counters = rng.integers(0, 2**32, size=(256, 4), dtype=np.uint64).astype(np.uint32)
    key = (int(rng.integers(0, 2**32)), int(rng.integers(0, 2**32)))
    t = torch.from_numpy(counters.astype(np.int64))
    got = torch.stack(reference.philox4x32_10_torch(t[:, 0], t[:, 1], t[:, 2], t[:, 3], key), -1)
    assert np.array_equal(got.numpy().astype(np.uint32), reference.philox4x32_10(counters, key))
