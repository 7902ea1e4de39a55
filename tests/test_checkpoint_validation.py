"""Checkpoints the runtime cannot run correctly are refused, naming the field or tensor (strict=False: warnings);
the config.json files real LLaDA / iLLaDA / Llama checkpoints ship still load."""
import json
import re
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

import illada_rt
from illada_rt import CheckpointError, ConfigError
from illada_rt.checkpoint import has_nonfinite
from illada_rt.config import ModelConfig
from illada_rt.synthetic import TinySpec, write_checkpoint

# GSAI-ML/LLaDA-8B-Instruct's config.json (every field; auto_map shortened to one entry).
LLADA_8B_INSTRUCT = {
    "activation_type": "silu", "alibi": False, "alibi_bias_max": 8.0, "architectures": ["LLaDAModelLM"],
    "attention_dropout": 0.0, "attention_layer_norm": False, "attention_layer_norm_with_affine": True,
    "auto_map": {"AutoConfig": "configuration_llada.LLaDAConfig"}, "bias_for_layer_norm": False,
    "block_group_size": 1, "block_type": "llama", "d_model": 4096, "embedding_dropout": 0.0,
    "embedding_size": 126464, "eos_token_id": 126081, "flash_attention": False, "include_bias": False,
    "include_qkv_bias": False, "init_cutoff_factor": None, "init_device": "meta", "init_fn": "mitchell",
    "init_std": 0.02, "input_emb_norm": False, "layer_norm_type": "rms", "layer_norm_with_affine": True,
    "mask_token_id": 126336, "max_sequence_length": 4096, "mlp_hidden_size": 12288, "mlp_ratio": 4,
    "model_type": "llada", "multi_query_attention": None, "n_heads": 32, "n_kv_heads": 32, "n_layers": 32,
    "pad_token_id": 126081, "precision": "amp_bf16", "residual_dropout": 0.0, "rms_norm_eps": 1e-05, "rope": True,
    "rope_full_precision": True, "rope_theta": 500000.0, "scale_logits": False, "torch_dtype": "bfloat16",
    "transformers_version": "4.46.3", "use_cache": False, "vocab_size": 126464, "weight_tying": False,
}
# iLLaDA-8B as its model card describes it, in the Llama-style fields of HF's LlamaConfig.
ILLADA_8B = {
    "architectures": ["ILLaDAForCausalLM"], "attention_bias": False, "attention_dropout": 0.0, "bos_token_id": 1,
    "eos_token_id": 2, "head_dim": 128, "hidden_act": "silu", "hidden_size": 4096, "initializer_range": 0.02,
    "intermediate_size": 14336, "max_position_embeddings": 8192, "mlp_bias": False, "model_type": "illada",
    "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 8, "pretraining_tp": 1,
    "rms_norm_eps": 1e-05, "rope_scaling": None, "rope_theta": 500000.0, "tie_word_embeddings": True,
    "torch_dtype": "bfloat16", "use_cache": False, "vocab_size": 155136,
}
# meta-llama/Meta-Llama-3-8B-Instruct's config.json.
LLAMA3_8B_INSTRUCT = {
    "architectures": ["LlamaForCausalLM"], "attention_bias": False, "attention_dropout": 0.0, "bos_token_id": 128000,
    "eos_token_id": 128009, "hidden_act": "silu", "hidden_size": 4096, "initializer_range": 0.02,
    "intermediate_size": 14336, "max_position_embeddings": 8192, "model_type": "llama", "num_attention_heads": 32,
    "num_hidden_layers": 32, "num_key_value_heads": 8, "pretraining_tp": 1, "rms_norm_eps": 1e-05,
    "rope_scaling": None, "rope_theta": 500000.0, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
    "transformers_version": "4.40.0.dev0", "use_cache": True, "vocab_size": 128256,
}
# Fields that hold a model's own numbers, replaced by a tiny model's to load real config files end to end.
OWN_FIELDS = {"llada": ("d_model", "n_heads", "n_kv_heads", "n_layers", "mlp_hidden_size", "vocab_size",
                          "embedding_size", "max_sequence_length", "mask_token_id", "eos_token_id", "pad_token_id",
                          "weight_tying", "torch_dtype", "rope_theta", "rms_norm_eps"),
                "llama": ("hidden_size", "num_attention_heads", "num_key_value_heads", "num_hidden_layers",
                          "intermediate_size", "vocab_size", "max_position_embeddings", "tie_word_embeddings",
                          "eos_token_id", "torch_dtype", "rope_theta", "rms_norm_eps")}


def _config(d):
    return json.loads((d / "config.json").read_text())


def _write_config(d, cfg):
    (d / "config.json").write_text(json.dumps(cfg))


def _with_real_fields(d, real: dict):
    """d's config.json replaced by `real` with d's shapes: every other field as the published file has it."""
    cfg, tiny = dict(real), _config(d)
    layout = "llada" if "d_model" in real else "llama"
    for k in OWN_FIELDS[layout]:
        cfg.pop(k, None)
        if k in tiny:
            cfg[k] = tiny[k]
    cfg.pop("head_dim", None)
    _write_config(d, cfg)


@pytest.mark.parametrize("real", [LLADA_8B_INSTRUCT, ILLADA_8B, LLAMA3_8B_INSTRUCT])
def test_published_configs_load(real):
    cfg = ModelConfig.from_dict(real)
    assert cfg.head_dim == 128 and cfg.n_layers == 32


@pytest.mark.parametrize("real,spec", [(LLADA_8B_INSTRUCT, TinySpec(seed=11)),
                                       (ILLADA_8B, TinySpec(layout="llama", n_kv_heads=2, tied=True, seed=3))])
def test_published_configs_run_the_same_model(tmp_path, real, spec):
    d = write_checkpoint(tmp_path / "m", spec)
    ids = torch.tensor([[3, 1, 4, 1, 5, 9, 2, 6]])
    want = illada_rt.load(d, mask_token_id=100).forward(ids)
    _with_real_fields(d, real)
    assert torch.equal(illada_rt.load(d, mask_token_id=100).forward(ids), want)


# (layout, field, value) that asks for math the runtime does not implement
REFUSED_FIELDS = [
    ("llada", "activation_type", "gelu"), ("llada", "activation_type", "swiglu"), ("llada", "block_type", "sequential"),
    ("llada", "layer_norm_type", "default"), ("llada", "layer_norm_type", "gemma_rms"),
    ("llada", "layer_norm_with_affine", False), ("llada", "bias_for_layer_norm", True), ("llada", "include_bias", True),
    ("llada", "include_qkv_bias", True), ("llada", "attention_layer_norm", True), ("llada", "rope", False),
    ("llada", "alibi", True), ("llada", "scale_logits", True), ("llada", "input_emb_norm", True),
    ("llada", "clip_qkv", 8.0), ("llada", "block_group_size", 2),
    ("llama", "hidden_act", "gelu_pytorch_tanh"), ("llama", "rope_scaling", {"rope_type": "llama3", "factor": 8.0}),
    ("llama", "rope_scaling", {"type": "linear", "factor": 2.0}), ("llama", "attention_bias", True),
    ("llama", "mlp_bias", True), ("llama", "attn_logit_softcapping", 50.0), ("llama", "final_logit_softcapping", 30.0),
    ("llama", "partial_rotary_factor", 0.5), ("llama", "head_dim", 32), ("llama", "sliding_window", 128),
]


@pytest.mark.parametrize("layout,field,value", REFUSED_FIELDS)
def test_architecture_fields_are_refused(tmp_path, layout, field, value):
    d = write_checkpoint(tmp_path / "m", TinySpec(layout=layout))
    _write_config(d, {**_config(d), field: value})
    with pytest.raises(ConfigError, match=re.escape(f"{field}={json.dumps(value)} (")):
        illada_rt.load(d)
    with pytest.warns(UserWarning, match=rf"ignoring {field}="):
        assert illada_rt.load(d, strict=False).config.n_layers == 2


@pytest.mark.parametrize("layout,field,value", [
    ("llada", "activation_type", "silu"), ("llada", "multi_query_attention", None), ("llada", "clip_qkv", None),
    ("llada", "bias_for_layer_norm", None), ("llama", "hidden_act", "swish"), ("llama", "rope_scaling", None),
    ("llama", "rope_scaling", {"rope_type": "default"}), ("llama", "head_dim", 16), ("llama", "sliding_window", None),
    ("llama", "sliding_window", 4096), ("llama", "partial_rotary_factor", 1.0)])
def test_fields_with_the_runtimes_values_load(tmp_path, layout, field, value):
    d = write_checkpoint(tmp_path / "m", TinySpec(layout=layout))
    _write_config(d, {**_config(d), field: value, "use_sliding_window": True})
    illada_rt.load(d)


def test_multi_query_attention_means_one_kv_head(tmp_path):
    d = write_checkpoint(tmp_path / "m", TinySpec(n_kv_heads=1))
    _write_config(d, {**_config(d), "n_kv_heads": None, "multi_query_attention": True})
    assert illada_rt.load(d).config.n_kv_heads == 1
    _write_config(d, {**_config(d), "n_kv_heads": 4, "multi_query_attention": True})
    with pytest.raises(ConfigError, match="multi_query_attention=true contradicts n_kv_heads=4"):
        illada_rt.load(d)


def _edit_tensors(d, edit):
    t = load_file(str(d / "model.safetensors"))
    edit(t)
    save_file(t, str(d / "model.safetensors"))


Q = "model.transformer.blocks.0.q_proj.weight"


@pytest.mark.parametrize("name,dtype,needle", [
    (Q, torch.int32, r"'model.transformer.blocks.0.q_proj.weight' is stored as torch.int32; expected a float"),
    (Q, torch.int8, r"q_proj.weight' is stored as torch.int8 but config.json has no quantization_config"),
    (Q, torch.float8_e4m3fn, r"q_proj.weight' is stored as torch.float8_e4m3fn but config.json has no quantization"),
    ("model.transformer.ln_f.weight", torch.int16, r"'model.transformer.ln_f.weight' is stored as torch.int16"),
    ("model.transformer.wte.weight", torch.uint8, r"'model.transformer.wte.weight' is stored as torch.uint8"),
])
def test_integer_weights_are_refused(tiny_dir, name, dtype, needle):
    def to_int(t):
        t[name] = t[name].mul(8).round().to(dtype)
    _edit_tensors(tiny_dir, to_int)
    with pytest.raises(CheckpointError, match=needle):
        illada_rt.load(tiny_dir)
    with pytest.warns(UserWarning, match=needle):
        illada_rt.load(tiny_dir, strict=False)


def test_integer_weight_in_a_quantized_checkpoint_is_refused(tmp_path, checkpoints):
    from illada_rt.quantize import quantize_checkpoint
    dst = tmp_path / "q"
    quantize_checkpoint(checkpoints["llada_mha"], dst, "int8", progress=False)
    f = next(dst.glob("*.safetensors"))
    t = load_file(str(f))
    t[Q] = t[Q].to(torch.int32)
    save_file(t, str(f))
    with pytest.raises(CheckpointError, match=r"q_proj.weight' is stored as torch.int32; expected a float dtype .* or "
                                              r"a quantized weight with its scale"):
        illada_rt.load(dst)


@pytest.mark.parametrize("extra,needle", [
    ("model.transformer.blocks.5.q_proj.weight", r"belong to no part .*2 layers.*'model.transformer.blocks.5.q_proj"),
    ("model.transformer.blocks.0.q_proj.bias", r"'model.transformer.blocks.0.q_proj.bias'"),
    ("model.transformer.blocks.0.q_norm.weight", r"'model.transformer.blocks.0.q_norm.weight'"),
    ("model.transformer.wpe.weight", r"'model.transformer.wpe.weight'"),
])
def test_tensors_outside_the_config_are_refused(tiny_dir, extra, needle):
    def add(t):
        t[extra] = torch.zeros(64, 64)
    _edit_tensors(tiny_dir, add)
    with pytest.raises(CheckpointError, match=needle):
        illada_rt.load(tiny_dir)
    with pytest.warns(UserWarning, match=needle):
        illada_rt.load(tiny_dir, strict=False)


def test_harmless_extra_tensors_load(tmp_path):
    d = write_checkpoint(tmp_path / "m", TinySpec(layout="llama", tied=True))

    def add(t):
        t["model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.ones(8)  # old HF Llama exports carry it
        t["lm_head.weight"] = t["model.embed_tokens.weight"].clone()        # a tied head, saved anyway
    _edit_tensors(d, add)
    illada_rt.load(d)

    def differ(t):
        t["lm_head.weight"] = t["lm_head.weight"] + 1
    _edit_tensors(d, differ)
    with pytest.raises(CheckpointError, match="ties the LM head to the embedding, but the checkpoint has a different "
                                              "'lm_head.weight'"):
        illada_rt.load(d)


@pytest.mark.parametrize("name,value,stored,dtype,needle", [
    (Q, float("nan"), "bfloat16", None, "holds NaN or infinite values"),        # zero-copy view
    (Q, float("inf"), "float32", "bfloat16", "holds NaN or infinite values"),   # converted
    ("model.transformer.ln_f.weight", float("-inf"), "float16", None, "holds NaN or infinite values"),
    ("model.transformer.wte.weight", 1e5, "float32", "float16", r"overflows torch.float16 .largest magnitude 1e\+05"),
    ("model.transformer.ff_out.weight", float("nan"), "float32", None, "holds NaN"),
])
def test_nonfinite_weights_are_refused(tmp_path, name, value, stored, dtype, needle):
    d = write_checkpoint(tmp_path / "m", TinySpec(dtype=stored))

    def poison(t):
        t[name].view(-1)[7] = value
    _edit_tensors(d, poison)
    with pytest.raises(CheckpointError, match=f"tensor '{name}' {needle}"):
        illada_rt.load(d, dtype=dtype)
    with pytest.warns(UserWarning, match=needle):
        illada_rt.load(d, dtype=dtype, strict=False)


@pytest.mark.parametrize("what", ["weight", "weight_scale"])
def test_nonfinite_fp8_weight_or_scale_is_refused(tmp_path, checkpoints, what):
    from illada_rt.quantize import quantize_checkpoint
    dst = tmp_path / "q"
    quantize_checkpoint(checkpoints["llada_mha"], dst, "fp8", progress=False)
    name = Q.replace(".weight", "." + what)
    f = next(dst.glob("*.safetensors"))
    t = load_file(str(f))
    t[name].view(-1)[3] = float("nan")
    save_file(t, str(f))
    with pytest.raises(CheckpointError, match=f"tensor '{name}' holds NaN"):
        illada_rt.load(dst)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64,
                                   torch.float8_e4m3fn, torch.float8_e5m2])
def test_has_nonfinite(dtype):
    g = torch.Generator().manual_seed(0)
    base = torch.randn(300, 70, generator=g).to(dtype)
    assert not has_nonfinite(base) and not has_nonfinite(base[:0])
    specials = [float("nan"), float("inf"), float("-inf")] if dtype != torch.float8_e4m3fn else [float("nan")]
    for v in specials:
        for pos in (0, 12345, base.numel() - 1):
            t = base.clone()
            t.view(-1)[pos] = v
            assert not bool(torch.isfinite(t.float()).all())  # the reference: every element widened and tested
            assert has_nonfinite(t), (v, pos)
    assert not has_nonfinite(torch.tensor([127, -128], dtype=torch.int8))


def test_cli_refusal_is_exit_1(tiny_dir):
    _write_config(tiny_dir, {**_config(tiny_dir), "rope_scaling": {"rope_type": "yarn", "factor": 4.0}})
    r = subprocess.run([sys.executable, "-m", "illada_rt.cli", "generate", "1,2", "--ids", "--model", str(tiny_dir),
                        "--gen-length", "4", "--steps", "4", "--block-length", "4"], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 1 and "rope_scaling=" in r.stderr and "Traceback" not in r.stderr
