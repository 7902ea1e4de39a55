"""Every bad input named in the runtime-core issue ends in a clear exception, never a crash or a hang."""
import json
import struct

import pytest
import torch

import illada_rt
from illada_rt import CheckpointError, ConfigError

from conftest import MASK_ID


def _edit_config(d, **changes):
    cfg = json.loads((d / "config.json").read_text())
    for k, v in changes.items():
        if v is None:
            cfg.pop(k, None)
        else:
            cfg[k] = v
    (d / "config.json").write_text(json.dumps(cfg))


def test_missing_directory(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        illada_rt.load(tmp_path / "nope")


def test_missing_config(tiny_dir):
    (tiny_dir / "config.json").unlink()
    with pytest.raises(ConfigError, match="no config.json"):
        illada_rt.load(tiny_dir)


def test_unparsable_config(tiny_dir):
    (tiny_dir / "config.json").write_text("{ not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        illada_rt.load(tiny_dir)


def test_config_not_an_object(tiny_dir):
    (tiny_dir / "config.json").write_text("[1, 2]")
    with pytest.raises(ConfigError, match="expected a JSON object"):
        illada_rt.load(tiny_dir)


@pytest.mark.parametrize("field", ["n_heads", "n_layers", "mlp_hidden_size", "vocab_size", "max_sequence_length"])
def test_missing_fields(tiny_dir, field):
    _edit_config(tiny_dir, **{field: None})
    with pytest.raises(ConfigError, match=f"missing required field.*{field}"):
        illada_rt.load(tiny_dir)


def test_unknown_layout(tiny_dir):
    _edit_config(tiny_dir, d_model=None)
    with pytest.raises(ConfigError, match="cannot tell the layout"):
        illada_rt.load(tiny_dir)


def test_heads_not_dividing_d_model(tiny_dir):
    _edit_config(tiny_dir, n_heads=5, n_kv_heads=5)
    with pytest.raises(ConfigError, match=r"n_heads \(5\) does not divide d_model \(64\)"):
        illada_rt.load(tiny_dir)


def test_kv_heads_not_dividing_heads(tiny_dir):
    _edit_config(tiny_dir, n_kv_heads=3)
    with pytest.raises(ConfigError, match="n_kv_heads .3. must divide n_heads"):
        illada_rt.load(tiny_dir)


@pytest.mark.parametrize("field,value", [("n_layers", 0), ("d_model", -64), ("vocab_size", "101"),
                                         ("n_heads", 2.5), ("rms_norm_eps", -1), ("weight_tying", "no")])
def test_bad_field_values(tiny_dir, field, value):
    _edit_config(tiny_dir, **{field: value})
    with pytest.raises(ConfigError, match=field if field != "weight_tying" else "tying"):
        illada_rt.load(tiny_dir)


def test_truncated_safetensors(tiny_dir):
    f = tiny_dir / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) - 1000])
    with pytest.raises(CheckpointError, match="truncated"):
        illada_rt.load(tiny_dir)


def test_tiny_file(tiny_dir):
    (tiny_dir / "model.safetensors").write_bytes(b"\x01\x02")
    with pytest.raises(CheckpointError, match="no header"):
        illada_rt.load(tiny_dir)


@pytest.mark.parametrize("n", [2 ** 63, 2 ** 40, 10 ** 9])
def test_absurd_header_length(tiny_dir, n):
    f = tiny_dir / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(struct.pack("<Q", n) + data[8:])
    with pytest.raises(CheckpointError, match="corrupt safetensors header length"):
        illada_rt.load(tiny_dir)


def test_header_not_json(tiny_dir):
    f = tiny_dir / "model.safetensors"
    f.write_bytes(struct.pack("<Q", 4) + b"\xff\xfe{{" + b"\x00" * 16)
    with pytest.raises(CheckpointError, match="header is not valid JSON"):
        illada_rt.load(tiny_dir)


def _rewrite_header(f, mutate):
    data = f.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    mutate(header)
    hb = json.dumps(header).encode()
    hb += b" " * (-len(hb) % 8)
    f.write_bytes(struct.pack("<Q", len(hb)) + hb + data[8 + n:])


def test_offsets_beyond_file(tiny_dir):
    def grow(h):
        e = h["model.transformer.ln_f.weight"]
        e["data_offsets"] = [e["data_offsets"][0] + 10 ** 7, e["data_offsets"][1] + 10 ** 7]
    _rewrite_header(tiny_dir / "model.safetensors", grow)
    with pytest.raises(CheckpointError, match="ln_f.weight.*truncated"):
        illada_rt.load(tiny_dir)


def test_offsets_disagree_with_shape(tiny_dir):
    def bad(h):
        h["model.transformer.ln_f.weight"]["shape"] = [65]
    _rewrite_header(tiny_dir / "model.safetensors", bad)
    with pytest.raises(CheckpointError, match="data_offsets span 256 bytes but shape"):
        illada_rt.load(tiny_dir)


def test_unknown_tensor_dtype(tiny_dir):
    def bad(h):
        h["model.transformer.ln_f.weight"]["dtype"] = "Q4"
    _rewrite_header(tiny_dir / "model.safetensors", bad)
    with pytest.raises(CheckpointError, match="unsupported dtype 'Q4'"):
        illada_rt.load(tiny_dir)


def test_missing_tensor(tiny_dir):
    from safetensors.torch import load_file, save_file
    t = load_file(str(tiny_dir / "model.safetensors"))
    del t["model.transformer.blocks.1.up_proj.weight"]
    save_file(t, str(tiny_dir / "model.safetensors"))
    with pytest.raises(CheckpointError, match="missing tensor 'model.transformer.blocks.1.up_proj.weight'"):
        illada_rt.load(tiny_dir)


def test_missing_untied_head(tiny_dir):
    from safetensors.torch import load_file, save_file
    t = load_file(str(tiny_dir / "model.safetensors"))
    del t["model.transformer.ff_out.weight"]
    save_file(t, str(tiny_dir / "model.safetensors"))
    with pytest.raises(CheckpointError, match="ff_out.weight.*not tied"):
        illada_rt.load(tiny_dir)


def test_misshaped_tensor(tiny_dir):
    from safetensors.torch import load_file, save_file
    t = load_file(str(tiny_dir / "model.safetensors"))
    t["model.transformer.blocks.0.k_proj.weight"] = torch.zeros(32, 64)
    save_file(t, str(tiny_dir / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"k_proj.weight' has shape \[32, 64\], expected \[64, 64\]"):
        illada_rt.load(tiny_dir)


def test_wrong_layout_tensors(tiny_dir):
    cfg = json.loads((tiny_dir / "config.json").read_text())
    llama = {"hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 4, "num_hidden_layers": 2,
             "intermediate_size": 96, "vocab_size": 101, "max_position_embeddings": 256,
             "mask_token_id": cfg["mask_token_id"]}
    (tiny_dir / "config.json").write_text(json.dumps(llama))
    with pytest.raises(CheckpointError, match="llama layout but tensor 'model.embed_tokens.weight' is missing"):
        illada_rt.load(tiny_dir)


@pytest.mark.parametrize("suffix", [".bin", ".pt"])
def test_pickle_only_directory_is_refused(tiny_dir, suffix):
    (tiny_dir / "model.safetensors").unlink()
    marker = tiny_dir / "executed"
    # A hostile pickle: unpickling it would create the marker file.
    import pickle

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    (tiny_dir / f"pytorch_model{suffix}").write_bytes(pickle.dumps(Evil()))
    with pytest.raises(CheckpointError, match="never unpickles"):
        illada_rt.load(tiny_dir)
    assert not marker.exists()


def test_index_naming_missing_shard(tmp_path):
    from illada_rt.synthetic import TinySpec, write_checkpoint
    d = write_checkpoint(tmp_path / "sh", TinySpec(shards=2))
    (d / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(CheckpointError, match="shard model-00002-of-00002.safetensors is missing"):
        illada_rt.load(d)


def test_index_escaping_directory_is_refused(tmp_path):
    from illada_rt.synthetic import TinySpec, write_checkpoint
    d = write_checkpoint(tmp_path / "sh", TinySpec(shards=2))
    idx = json.loads((d / "model.safetensors.index.json").read_text())
    k = next(iter(idx["weight_map"]))
    idx["weight_map"][k] = "../elsewhere.safetensors"
    (d / "model.safetensors.index.json").write_text(json.dumps(idx))
    with pytest.raises(CheckpointError, match="refusing shard name"):
        illada_rt.load(d)


def test_no_mask_token_anywhere(checkpoints):
    with pytest.raises(ConfigError, match="cannot find the mask token id"):
        illada_rt.load(checkpoints["llama_gqa_tied"])


def test_mask_token_from_tokenizer_files(tmp_path):
    from illada_rt.synthetic import TinySpec, write_checkpoint
    from tokenizer_fixtures import write_hf_tokenizer
    d = write_hf_tokenizer(tmp_path / "t", mask="<|mask_of_mine|>", declare_mask=True)  # declared, not known by name
    write_checkpoint(d, TinySpec(layout="llama", vocab_size=300, mask_token_id=None))
    m = illada_rt.load(d)
    assert m.mask_token_id == m.tokenizer.token_to_id("<|mask_of_mine|>")


def test_conflicting_mask_token(checkpoints):
    with pytest.raises(ValueError, match="conflicts"):
        illada_rt.load(checkpoints["llada_mha"], mask_token_id=5)


def test_mask_token_outside_vocab(checkpoints):
    with pytest.raises(ValueError, match="outside the vocabulary"):
        illada_rt.load(checkpoints["llama_gqa_tied"], mask_token_id=1000)


def test_bad_device_and_dtype(checkpoints):
    with pytest.raises(ValueError, match="dtype: unknown name"):
        illada_rt.load(checkpoints["llada_mha"], dtype="int4")
    with pytest.raises(ValueError, match="dtype: expected"):
        illada_rt.load(checkpoints["llada_mha"], dtype=torch.int8)
    with pytest.raises(ValueError, match="device"):
        illada_rt.load(checkpoints["llada_mha"], device="tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            illada_rt.load(checkpoints["llada_mha"], device="cuda")


@pytest.fixture(scope="module")
def model(checkpoints):
    return illada_rt.load(checkpoints["llada_mha"])


@pytest.mark.parametrize("prompt,kwargs,exc,needle", [
    (torch.tensor([[1, 2, 101]]), {}, ValueError, "token id 101 is outside the vocabulary"),
    (torch.tensor([[1, -2, 3]]), {}, ValueError, "negative token id -2"),
    ([[1, 2], [3, 500]], {}, ValueError, "outside the vocabulary"),
    (torch.tensor([[1.0, 2.0]]), {}, TypeError, "expected integer token ids"),
    (torch.tensor([[True, False]]), {}, TypeError, "expected integer token ids"),
    ([[1, 2.5]], {}, TypeError, "non-integer token id 2.5"),
    (torch.tensor([1, 2, 3]), {}, ValueError, r"expected a 2-D tensor.*prompt\[None\]"),
    (torch.zeros(1, 2, 3, dtype=torch.long), {}, ValueError, "expected a 2-D tensor"),
    ([1, 2, 3], {}, ValueError, "list of token-id lists"),
    (torch.zeros(0, 4, dtype=torch.long), {}, ValueError, "empty batch"),
    ([], {}, ValueError, "empty batch"),
    ("hello", {}, ValueError, "text needs a tokenizer"),
    (["a", 3], {}, ValueError, "list of token-id lists"),
    (3.5, {}, TypeError, "expected a LongTensor"),
    ([[1, 2]], dict(gen_length=12, block_length=8), ValueError, r"block_length \(8\) must divide gen_length \(12\)"),
    ([[1, 2]], dict(gen_length=16, block_length=4, steps=6), ValueError, "steps .6. must be divisible by the number of blocks"),
    ([[1, 2]], dict(gen_length=300, block_length=300, steps=300), ValueError, "exceeds the model's maximum length 256"),
    ([[1, 2]], dict(temperature=-0.5), ValueError, "temperature: expected a finite number >= 0"),
    ([[1, 2]], dict(temperature=float("nan")), ValueError, "temperature"),
    ([[1, 2]], dict(cfg_scale=-1.0), ValueError, "cfg_scale"),
    ([[1, 2]], dict(remasking="lowest_confidence"), ValueError, "unknown strategy 'lowest_confidence'"),
    ([[1, 2]], dict(gen_length=0), ValueError, "gen_length: expected a positive integer"),
    ([[1, 2]], dict(steps=0), ValueError, "steps: expected a positive integer"),
    ([[1, 2]], dict(gen_length=16.0), ValueError, "gen_length"),
    ([[1, 2]], dict(seed="x"), ValueError, "seed"),
    (torch.tensor([[1, 2]]), dict(attention_mask=torch.ones(1, 3)), ValueError, "attention_mask: shape"),
])
def test_bad_generate_arguments(model, prompt, kwargs, exc, needle):
    base = dict(gen_length=16, steps=16, block_length=16)
    base.update(kwargs)
    with pytest.raises(exc, match=needle):
        model.generate(prompt, **base)


def test_bad_forward_arguments(model):
    with pytest.raises(ValueError, match="outside the vocabulary"):
        model.forward(torch.tensor([[0, 101]]))
    with pytest.raises(ValueError, match="exceeds the model's maximum length"):
        model.forward(torch.zeros(1, 257, dtype=torch.long))
    assert model.forward(torch.tensor([[MASK_ID, 3]])).shape == (1, 2, 101)


@pytest.mark.parametrize("seed", [1.5, True, -1, 2**64, "3"])
def test_bad_loglikelihood_seed(model, seed):
    with pytest.raises(ValueError, match=r"seed: expected None or an int in \[0, 2\*\*64\)"):
        model.loglikelihood([1, 2], [3], mc_num=4, batch_size=4, seed=seed)


def test_loglikelihood_seed_range_ends(model):
    for seed in (0, 2**64 - 1, None):  # the whole unsigned 64-bit range is accepted
        assert model.loglikelihood([1, 2], [3, 4], mc_num=4, batch_size=4, seed=seed) < 0
