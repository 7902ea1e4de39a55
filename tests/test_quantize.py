"""The quantize tool and quantized checkpoints: round trips through the tool and the loader for both schemes and
granularities and both layouts, the on-disk format against round-to-nearest written here from the format's
definition, accuracy, compressed-tensors FP8 checkpoints, and bounded memory while quantizing a multi-shard
checkpoint. Bad input, destinations and failures: test_quantize_safety.py."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import illada_rt
from illada_rt import ops, quant
from illada_rt.checkpoint import WeightStore
from illada_rt.errors import CheckpointError, ConfigError
from illada_rt.quantize import linear_weight_names, plan_quantize, quantize_checkpoint
from illada_rt.synthetic import TinySpec, write_checkpoint
from illada_rt.config import read_config

ROOT = Path(__file__).resolve().parents[1]


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "illada_rt.cli", *args], capture_output=True, text=True, timeout=300)


def _logits(path, ids):
    return illada_rt.load(path).forward(ids)


def _ids(vocab=100, n=2, length=24, seed=0):
    return torch.randint(0, vocab, (n, length), generator=torch.Generator().manual_seed(seed))


def _e4m3(x):
    """Round to nearest (ties to even) onto float8 e4m3fn's grid: 3 mantissa bits, normals from 2^-6, subnormal
    step 2^-9; x is already within +-448, the largest normal."""
    step = 2.0 ** (np.floor(np.log2(np.maximum(np.abs(x), 2.0 ** -6))) - 3)
    return np.rint(x / step) * step


def rtn_reference(w, scheme, granularity):
    """The format's definition, one scale group at a time in NumPy: scale = max|w| / 127 (int8) or / 448 (fp8), 1
    for an all-zero group; q = w / scale rounded to nearest. Returns (q as float64 values, float32 scales)."""
    w = w.float().numpy()
    qmax = np.float32(127 if scheme == "int8" else 448)
    N, K = w.shape
    rows, cols = (1, K) if granularity == "channel" else (128, 128)
    scale = np.ones((-(-N // rows), -(-K // cols)), np.float32)
    q = np.zeros((N, K))
    for i in range(0, N, rows):
        for j in range(0, K, cols):
            group = w[i:i + rows, j:j + cols]
            amax = np.abs(group).max()
            s = amax / qmax if amax > 0 else np.float32(1)
            x = np.clip(group / s, -qmax, qmax).astype(np.float64)
            q[i:i + rows, j:j + cols] = np.rint(x) if scheme == "int8" else _e4m3(x)
            scale[i // rows, j // cols] = s
    return torch.from_numpy(q), torch.from_numpy(scale.reshape(N) if granularity == "channel" else scale)


def rtn_dequantized(w, scheme, granularity="channel"):
    q, s = rtn_reference(w, scheme, granularity)
    if granularity == "block128":
        s = s.repeat_interleave(128, 0)[:w.shape[0]].repeat_interleave(128, 1)[:, :w.shape[1]]
    return (q * s.double().reshape(w.shape[0], -1)).float()


def _ragged_weight(dtype=torch.float32):
    """1300 x 300: 11 x 3 blocks of 128 with ragged last ones, two row chunks of quantize_weight; rows and columns
    of magnitudes spread over decades, an all-zero block and an all-zero row."""
    g = torch.Generator().manual_seed(0)
    w = torch.randn(1300, 300, generator=g) * 10 ** (torch.rand(1300, 1, generator=g) * 3 - 2) \
        * 10 ** (torch.rand(1, 300, generator=g) * 2 - 1)
    w[128:256, 256:] = 0
    w[1200] = 0
    return w.to(dtype)


@pytest.mark.parametrize("scheme", ["int8", "fp8"])
@pytest.mark.parametrize("granularity", ["channel", "block128"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_quantize_weight_is_round_to_nearest(scheme, granularity, dtype):
    """Element for element the format's RTN on a ragged weight over several blocks both ways and two row chunks;
    dequantize_weight and weight_error (also chunked) against the same reference."""
    w = _ragged_weight(dtype)
    assert w.shape[0] > quant.ROW_CHUNK
    q, s = quant.quantize_weight(w, scheme, granularity)
    want_q, want_s = rtn_reference(w, scheme, granularity)
    assert q.dtype == quant.SCHEMES[scheme] and s.dtype == torch.float32
    assert torch.equal(s, want_s)
    assert torch.equal(q.double(), want_q)
    deq = rtn_dequantized(w, scheme, granularity)
    assert torch.equal(quant.dequantize_weight(q, s, granularity), deq)
    d = (deq.double() - w.double())
    err = quant.weight_error(w, q, s, granularity)
    assert err["max_abs"] == pytest.approx(float(d.abs().max()), rel=1e-6)
    assert err["rel_frobenius"] == pytest.approx(float(d.norm() / w.double().norm()), rel=1e-6)


def test_quantize_weight_names_the_first_nonfinite_element():
    w = _ragged_weight()
    w[1100, 7] = float("-inf")
    w[1250, 3] = float("nan")
    for granularity in ("channel", "block128"):
        with pytest.raises(ValueError, match=r"holds -inf at \[1100, 7\]"):
            quant.quantize_weight(w, "int8", granularity)


@pytest.mark.parametrize("scheme", ["int8", "fp8"])
@pytest.mark.parametrize("granularity", ["channel", "block128"])
@pytest.mark.parametrize("ckpt", ["llada_bf16", "llama_untied_sharded", "llama_gqa_tied"])
def test_round_trip_through_tool_and_loader(checkpoints, tmp_path, scheme, granularity, ckpt):
    src = checkpoints[ckpt]
    dst = tmp_path / "q"
    s = quantize_checkpoint(src, dst, scheme, granularity, progress=False)
    cfg = read_config(src)
    names = linear_weight_names(cfg)
    assert sorted(s.quantized) == sorted(n[:-len(".weight")] for n in names)
    store = WeightStore(dst)
    for n in names:
        e = store.entry(n)
        assert e.dtype == quant.SCHEMES[scheme]
        scale = store.entry(n[:-len(".weight")] + ".weight_scale")
        assert scale.dtype == torch.float32
        N, K = e.shape
        assert scale.shape == ((N,) if granularity == "channel" else (-(-N // 128), -(-K // 128)))
        # the stored weight is exactly round to nearest, as the format defines it
        q, sc = rtn_reference(WeightStore(src).get(n, e.shape), scheme, granularity)
        assert torch.equal(store.get(n, e.shape).double(), q)
        assert torch.equal(store.get(n[:-len(".weight")] + ".weight_scale", scale.shape), sc)
    qc = json.loads((dst / "config.json").read_text())["quantization_config"]
    assert qc["scheme"] == scheme and qc["granularity"] == granularity and qc["quant_method"] == "illada-rt"
    if (src / "model.safetensors.index.json").exists():
        idx = json.loads((dst / "model.safetensors.index.json").read_text())
        assert set(idx["weight_map"]) == set(store.names())
    m = illada_rt.load(dst, mask_token_id=100)
    kinds = {w.kernel for layer in m.transformer.layers for w in (layer.q, layer.down)}
    if (scheme, granularity) == ("int8", "channel"):
        assert kinds == {"w8a8"}
    elif (scheme, granularity) == ("fp8", "channel") and m.transformer.dtype == torch.bfloat16 \
            and ops.fp8_kernel_available():
        assert kinds == {"fp8w"}
    else:
        assert kinds == {"dequantized"}
    ids = _ids()
    ref = illada_rt.load(src, dtype="float32", mask_token_id=100).forward(ids)
    got = m.forward(ids)
    rel = float((got - ref).norm() / ref.norm())
    assert rel < (0.05 if scheme == "int8" else 0.1), rel
    g = m.generate(ids[:1, :8], gen_length=8, steps=8, block_length=4)
    assert not (g.generated == 100).any()


def test_skip_and_tied_head(checkpoints, tmp_path):
    src = checkpoints["llada_mha"]
    s = quantize_checkpoint(src, tmp_path / "q", "int8", skip=["lm_head", "*.blocks.1.*"], progress=False)
    assert "model.transformer.ff_out" in s.ignored and all(".blocks.1." not in n for n in s.quantized)
    store = WeightStore(tmp_path / "q")
    assert store.entry("model.transformer.ff_out.weight").dtype == torch.float32
    assert store.entry("model.transformer.blocks.1.q_proj.weight").dtype == torch.float32
    assert "model.transformer.blocks.1.q_proj.weight_scale" not in store
    assert sorted(json.loads((tmp_path / "q/config.json").read_text())["quantization_config"]["ignore"]) == \
        sorted(s.ignored)
    m = illada_rt.load(tmp_path / "q")
    assert isinstance(m.transformer.head, torch.Tensor)
    assert isinstance(m.transformer.layers[0].q, quant.QuantizedLinear)
    assert isinstance(m.transformer.layers[1].q, torch.Tensor)
    with pytest.raises(ValueError, match="matches no quantizable weight"):
        quantize_checkpoint(src, tmp_path / "q2", "int8", skip=["nothing_like_this"], progress=False)
    # tied embeddings: the head is the embedding, which stays in the original dtype
    s = quantize_checkpoint(checkpoints["llama_gqa_tied"], tmp_path / "t", "int8", progress=False)
    assert not any("lm_head" in n or "embed" in n for n in s.quantized)


def test_skip_lm_head_on_a_tied_model(checkpoints, tmp_path):
    """lm_head names either layout's head; on a tied model the head is the embedding, never quantized, so it is
    accepted, changes nothing, and a note says so."""
    src = checkpoints["llama_gqa_tied"]
    names = sorted(n[:-len(".weight")] for n in linear_weight_names(read_config(src)))
    plan = plan_quantize(src, tmp_path / "q", skip=["lm_head"])
    assert plan.ignored == [] and len(plan.notes) == 1 and "tied" in plan.notes[0]
    r = _cli("quantize", str(src), str(tmp_path / "q"), "--skip", "lm_head", "--quiet")
    assert r.returncode == 0, r.stderr
    assert r.stderr.startswith("illada-rt: note: skip 'lm_head': this model's LM head is its embedding (tied)")
    qc = json.loads((tmp_path / "q" / "config.json").read_text())["quantization_config"]
    assert qc["ignore"] == [] and all(WeightStore(tmp_path / "q").entry(n + ".weight").dtype == torch.int8
                                      for n in names)
    with pytest.raises(ValueError, match=r"matches no quantizable weight \(e\.g\. model\.layers\.0"):
        plan_quantize(src, tmp_path / "q2", skip=["lm_head", "nothing_like_this"])


def test_int8_is_as_accurate_as_round_to_nearest(tmp_path):
    """On a random model with spread confidences, the quantized checkpoints' logits are as close to the fp32 model
    as plain per-output-channel round-to-nearest weights (same format), up to int8 activation rounding."""
    src = write_checkpoint(tmp_path / "src", TinySpec(d_model=128, n_layers=3, mlp_hidden_size=352, vocab_size=500,
                                                      mask_token_id=499, quiet_token=499, head_gain=6.0, seed=21))
    ids = _ids(vocab=499, n=4, length=48, seed=1)
    ref = _logits(src, ids)
    for scheme in ("int8", "fp8"):
        dst = tmp_path / scheme
        quantize_checkpoint(src, dst, scheme, progress=False)
        got = _logits(dst, ids)
        # baseline: the same model with every linear replaced by its RTN-dequantized fp32 weight
        m = illada_rt.load(src)
        for layer in m.transformer.layers:
            for k in ("q", "k", "v", "o", "gate", "up", "down"):
                setattr(layer, k, rtn_dequantized(getattr(layer, k), scheme))
        m.transformer.head = rtn_dequantized(m.transformer.head, scheme)
        base = m.forward(ids)
        err = float((got - ref).norm() / ref.norm())
        base_err = float((base - ref).norm() / ref.norm())
        agree = float((got.argmax(-1) == ref.argmax(-1)).float().mean())
        base_agree = float((base.argmax(-1) == ref.argmax(-1)).float().mean())
        if scheme == "fp8":  # weight-only on CPU: exactly the baseline's arithmetic
            torch.testing.assert_close(got, base, rtol=1e-4, atol=1e-4)
        else:  # W8A8 adds per-token activation rounding
            assert err < 2.0 * base_err, (err, base_err)
        assert agree >= base_agree - 0.02, (agree, base_agree)


def test_compressed_tensors_fp8_checkpoint_loads(checkpoints, tmp_path):
    """vLLM / compressed-tensors FP8 layout: F8_E4M3 weights, per-tensor or per-channel weight_scale ([N, 1]),
    a static input_scale (ignored on CPU), config_groups in quantization_config."""
    src = checkpoints["llada_mha"]
    dst = tmp_path / "ct"
    dst.mkdir()
    store = WeightStore(src)
    out = {}
    for n in store.names():
        t = store.get(n, store.entry(n).shape)
        if n in linear_weight_names(read_config(src)):
            per_tensor = ".blocks.0." in n
            amax = t.abs().max() if per_tensor else t.abs().amax(1, keepdim=True)
            scale = (amax / 448).float()
            out[n] = (t / scale).clamp(-448, 448).to(torch.float8_e4m3fn)
            out[n[:-len(".weight")] + ".weight_scale"] = scale.reshape(1) if per_tensor else scale
            out[n[:-len(".weight")] + ".input_scale"] = torch.ones(1)
        else:
            out[n] = t
    save_file(out, str(dst / "model.safetensors"))
    cfg = json.loads((src / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "compressed-tensors", "format": "float-quantized",
                                  "config_groups": {"group_0": {"targets": ["Linear"], "weights": {
                                      "num_bits": 8, "type": "float", "strategy": "channel", "symmetric": True},
                                      "input_activations": {"num_bits": 8, "type": "float", "strategy": "tensor",
                                                            "dynamic": False}}},
                                  "ignore": []}
    (dst / "config.json").write_text(json.dumps(cfg))
    ids = _ids()
    ref = _logits(src, ids)
    got = _logits(dst, ids)
    assert float((got - ref).norm() / ref.norm()) < 0.1
    r = _cli("info", str(dst))
    assert r.returncode == 0 and "fp8 weights" in r.stdout and "compressed-tensors" in r.stdout


def test_cli_quantize_report_and_info(checkpoints, tmp_path):
    dst = tmp_path / "q"
    r = _cli("quantize", str(checkpoints["llada_fp16_sharded"]), str(dst), "--scheme", "int8", "--report",
             "--quiet")
    assert r.returncode == 0, r.stderr
    assert "weights quantized" in r.stdout and "rel. Frobenius" in r.stdout and "top-1 agreement" in r.stdout
    r = _cli("info", str(dst))
    assert r.returncode == 0 and "int8 weights (channel scales, illada-rt)" in r.stdout and "W8A8 kernel" in r.stdout
    r = _cli("quantize", str(checkpoints["llada_fp16_sharded"]), str(dst), "--quiet")
    assert r.returncode == 1 and "already exists (pass --force" in r.stderr
    r = _cli("quantize", str(checkpoints["llada_fp16_sharded"]), str(dst), "--quiet", "--force", "--scheme", "fp8")
    assert r.returncode == 0, r.stderr
    assert json.loads((dst / "config.json").read_text())["quantization_config"]["scheme"] == "fp8"
    r = _cli("quantize", str(checkpoints["llada_fp16_sharded"]), str(dst), "--scheme", "int4")
    assert r.returncode == 2 and "invalid choice" in r.stderr
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "quantize.py"), str(checkpoints["llada_mha"]),
                        str(tmp_path / "viatool"), "--quiet"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and (tmp_path / "viatool" / "config.json").exists(), r.stderr


def test_other_files_are_copied_and_pickles_are_not(checkpoints, tmp_path):
    src = tmp_path / "src"
    write_checkpoint(src, TinySpec(seed=3))
    (src / "tokenizer_config.json").write_text("{}")
    (src / "generation_config.json").write_text("{}")
    (src / "pytorch_model.bin").write_bytes(b"not unpickled")
    s = quantize_checkpoint(src, tmp_path / "q", "int8", progress=False)
    assert sorted(s.copied_files) == ["generation_config.json", "tokenizer_config.json"]
    assert not (tmp_path / "q" / "pytorch_model.bin").exists()


def test_loader_rejects_inconsistent_quantized_files(checkpoints, tmp_path):
    dst = tmp_path / "q"
    quantize_checkpoint(checkpoints["llada_mha"], dst, progress=False)
    cfg = json.loads((dst / "config.json").read_text())
    cfg["quantization_config"]["quant_method"] = "gptq"
    (dst / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match="'gptq' is not supported"):
        illada_rt.load(dst)
    cfg["quantization_config"].update(quant_method="illada-rt", scheme="fp8")
    (dst / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="quantization_config says fp8"):
        illada_rt.load(dst)


sys.path.insert(0, str(ROOT / "tools"))
from rss_probe import added_rss  # noqa: E402


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="needs /proc to sample resident memory")
def test_peak_memory_stays_near_one_shard(tmp_path):
    """Quantize a 6-shard checkpoint (~270 MB fp32) in a fresh process while sampling its resident memory: what
    quantizing adds stays under the largest shard plus its quantized output, far below the whole model. The
    control (holding every tensor) shows the probe does see memory."""
    spec = TinySpec(d_model=1024, n_heads=8, n_kv_heads=8, n_layers=6, mlp_hidden_size=2048, vocab_size=4096,
                    mask_token_id=4095, quiet_token=4095, shards=6, seed=0)
    src = write_checkpoint(tmp_path / "src", spec)
    shards = sorted(src.glob("*.safetensors"))
    largest, total = max(p.stat().st_size for p in shards), sum(p.stat().st_size for p in shards)
    added, _, _ = added_rss("quantize", src, tmp_path / "dst", "int8")
    control, _, _ = added_rss("hold", src)
    assert control > 0.9 * total, (control / 2**20, total / 2**20)
    assert added < 1.25 * largest + 32 * 2**20, (added / 2**20, largest / 2**20)  # + interpreter noise
    assert added < total / 3, (added / 2**20, total / 2**20)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_int8_mlp_computes_swiglu_inside_the_down_projection_alike(checkpoints, tmp_path, monkeypatch, dtype):
    """An int8 model runs each block's down projection with the SwiGLU inside the W8A8 call; its logits equal those
    of the separate swiglu op followed by the linear, bit for bit."""
    from illada_rt import model as model_mod

    quantize_checkpoint(checkpoints["llada_gqa"], tmp_path / "q", "int8", progress=False)
    m = illada_rt.load(tmp_path / "q", dtype=dtype)
    assert model_mod.swiglu_fuses(m.transformer.layers[0].down)
    calls = []
    real = model_mod.swiglu_linear
    monkeypatch.setattr(model_mod, "swiglu_linear", lambda *a: calls.append(1) or real(*a))
    ids = _ids()
    fused = m.forward(ids)
    assert len(calls) == len(m.transformer.layers)
    monkeypatch.setattr(model_mod, "swiglu_fuses", lambda w: False)
    assert torch.equal(fused, m.forward(ids))
