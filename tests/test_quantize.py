"""The quantize tool and quantized checkpoints: round trips through the tool and the loader for both schemes and
granularities and both layouts, the on-disk format, accuracy against plain round-to-nearest, compressed-tensors
FP8 checkpoints, bad input, atomicity, and bounded memory while quantizing a multi-shard checkpoint."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import illada_rt
from illada_rt import ops, quant
from illada_rt.checkpoint import WeightStore
from illada_rt.errors import CheckpointError, ConfigError
from illada_rt.quantize import linear_weight_names, quantize_checkpoint
from illada_rt.synthetic import TinySpec, write_checkpoint
from illada_rt.config import read_config

ROOT = Path(__file__).resolve().parents[1]


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "illada_rt.cli", *args], capture_output=True, text=True, timeout=300)


def _logits(path, ids):
    return illada_rt.load(path).forward(ids)


def _ids(vocab=100, n=2, length=24, seed=0):
    return torch.randint(0, vocab, (n, length), generator=torch.Generator().manual_seed(seed))


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
        # the stored weight is exactly the pure function's output
        q, sc = quant.quantize_weight(WeightStore(src).get(n, e.shape), scheme, granularity)
        assert torch.equal(store.get(n, e.shape).view(torch.uint8), q.view(torch.uint8))
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
                w = getattr(layer, k)
                q, s = quant.quantize_weight(w, scheme)
                setattr(layer, k, quant.dequantize_weight(q, s, "channel"))
        q, s = quant.quantize_weight(m.transformer.head, scheme)
        m.transformer.head = quant.dequantize_weight(q, s, "channel")
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


@pytest.mark.parametrize("case,match", [
    ("not_a_dir", "not a directory"),
    ("no_config", "no config.json"),
    ("pickle_only", "only pickle weight files"),
    ("already_quantized", "already quantized"),
    ("dst_inside_src", "must not be the source or inside it"),
    ("bad_scheme", "scheme"),
    ("bad_granularity", "granularity"),
])
def test_bad_input(tmp_path, checkpoints, case, match):
    src, dst = checkpoints["llada_mha"], tmp_path / "out"
    kw = {}
    if case == "not_a_dir":
        src = tmp_path / "missing"
    elif case == "no_config":
        src = tmp_path / "empty"
        src.mkdir()
    elif case == "pickle_only":
        src = tmp_path / "pk"
        src.mkdir()
        (src / "config.json").write_text((checkpoints["llada_mha"] / "config.json").read_text())
        (src / "pytorch_model.bin").write_bytes(b"\x80\x04 never unpickled")
    elif case == "already_quantized":
        quantize_checkpoint(src, tmp_path / "q1", progress=False)
        src = tmp_path / "q1"
    elif case == "dst_inside_src":
        dst = src / "sub"
    elif case == "bad_scheme":
        kw["scheme"] = "int4"
    elif case == "bad_granularity":
        kw["granularity"] = "tensor"
    with pytest.raises((CheckpointError, ConfigError, ValueError), match=match):
        quantize_checkpoint(src, dst, progress=False, **kw)
    assert not dst.exists() or case == "dst_inside_src"


def test_failure_half_way_leaves_nothing(checkpoints, tmp_path, monkeypatch):
    calls = {"n": 0}
    real = quant.quantize_weight

    def flaky(*a, **k):
        calls["n"] += 1
        if calls["n"] == 5:
            raise OSError(28, "No space left on device")
        return real(*a, **k)

    monkeypatch.setattr(quant, "quantize_weight", flaky)
    dst = tmp_path / "q"
    with pytest.raises(CheckpointError, match="No space left on device"):
        quantize_checkpoint(checkpoints["llama_untied_sharded"], dst, progress=False)
    assert not dst.exists()
    assert list(tmp_path.iterdir()) == []  # no partial directory either
    # an existing DST survives a failed --force run untouched
    monkeypatch.setattr(quant, "quantize_weight", real)
    quantize_checkpoint(checkpoints["llama_untied_sharded"], dst, progress=False)
    before = sorted(p.name for p in dst.iterdir())
    calls["n"] = 0
    monkeypatch.setattr(quant, "quantize_weight", flaky)
    with pytest.raises(CheckpointError):
        quantize_checkpoint(checkpoints["llama_untied_sharded"], dst, scheme="fp8", force=True, progress=False)
    assert sorted(p.name for p in dst.iterdir()) == before
    assert json.loads((dst / "config.json").read_text())["quantization_config"]["scheme"] == "int8"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_read_only_destination(checkpoints, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(CheckpointError, match="cannot write"):
            quantize_checkpoint(checkpoints["llada_mha"], ro / "q", progress=False)
    finally:
        ro.chmod(0o700)


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
