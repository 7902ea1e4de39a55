"""Model configuration: one dataclass for both on-disk layouts (LLaDA/OLMo-style and Llama-style)."""
from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ConfigError

LAYOUT_LLADA = "llada"
LAYOUT_LLAMA = "llama"

# config.json field -> ModelConfig field, per layout. Required unless listed in _OPTIONAL.
_FIELDS = {
    LAYOUT_LLADA: {
        "d_model": "d_model",
        "n_heads": "n_heads",
        "n_kv_heads": "n_kv_heads",
        "n_layers": "n_layers",
        "mlp_hidden_size": "mlp_hidden_size",
        "vocab_size": "vocab_size",
        "embedding_size": "embedding_size",
        "rope_theta": "rope_theta",
        "rms_norm_eps": "rms_norm_eps",
        "max_sequence_length": "max_sequence_length",
        "weight_tying": "tied_embeddings",
    },
    LAYOUT_LLAMA: {
        "hidden_size": "d_model",
        "num_attention_heads": "n_heads",
        "num_key_value_heads": "n_kv_heads",
        "num_hidden_layers": "n_layers",
        "intermediate_size": "mlp_hidden_size",
        "vocab_size": "vocab_size",
        "rope_theta": "rope_theta",
        "rms_norm_eps": "rms_norm_eps",
        "max_position_embeddings": "max_sequence_length",
        "tie_word_embeddings": "tied_embeddings",
    },
}
# Fields with a default when absent (the value LLaDA-8B / Llama configs use).
_OPTIONAL = {
    "n_kv_heads": None,          # None -> n_heads (MHA)
    "num_key_value_heads": None,
    "embedding_size": None,      # None -> vocab_size
    "rope_theta": 10000.0,
    "rms_norm_eps": 1e-5,
    "weight_tying": False,
    "tie_word_embeddings": False,
}

# config.json fields that change the math, with the values this runtime computes: LLaDA's LLaDALlamaBlock
# (modeling_llada.py) and HF Llama. A field that is absent or holds one of these values is fine; any other value
# is refused (a warning with strict=False). Fields that change nothing at inference (dropouts, init_*,
# rope_full_precision, flash_attention, pretraining_tp, ...) are not listed.
ARCHITECTURE_FIELDS = {
    # LLaDA / OLMo names
    "block_type": ("llama",),             # "sequential" fuses q/k/v into att_proj
    "activation_type": ("silu",),         # SiLU(ff_proj) * up_proj; "swiglu" chunks one projection in two
    "layer_norm_type": ("rms",),          # "default"/"low_precision" are LayerNorm, "gemma_rms" scales by 1 + w
    "layer_norm_with_affine": (True,),    # the norms' weights are tensors of the checkpoint
    "bias_for_layer_norm": (False, None),
    "include_bias": (False,),
    "include_qkv_bias": (False,),
    "attention_layer_norm": (False,),     # QK-norm
    "rope": (True,),
    "alibi": (False,),
    "scale_logits": (False,),             # logits / sqrt(d_model)
    "input_emb_norm": (False,),           # embeddings * sqrt(d_model)
    "clip_qkv": (None,),
    "block_group_size": (1,),
    # Llama-style names
    "hidden_act": ("silu", "swish"),
    "rope_scaling": (None,),
    "attention_bias": (False,),
    "mlp_bias": (False,),
    "attn_logit_softcapping": (None,),
    "final_logit_softcapping": (None,),
    "partial_rotary_factor": (None, 1, 1.0),
}


def unsupported_fields(raw: dict, d_model: int, n_heads: int, max_sequence_length: int) -> list[str]:
    """One line per config.json field whose value asks for math this runtime does not implement."""
    bad = []
    for key, ok in ARCHITECTURE_FIELDS.items():
        v = raw.get(key)
        if key in raw and not any(v is a or (type(v) is type(a) and v == a) for a in ok):
            if key == "rope_scaling" and isinstance(v, dict) and v.get("rope_type", v.get("type")) == "default":
                continue  # HF's spelling of "no scaling"
            bad.append(f"{key}={json.dumps(v)} (supported: {' or '.join(json.dumps(a) for a in ok)})")
    head_dim = raw.get("head_dim")
    if head_dim is not None and head_dim != d_model // n_heads:
        bad.append(f"head_dim={json.dumps(head_dim)} (supported: hidden_size / num_attention_heads = "
                   f"{d_model // n_heads})")
    window = raw.get("sliding_window")
    if (raw.get("use_sliding_window") is not False and isinstance(window, int) and not isinstance(window, bool)
            and window < max_sequence_length):
        bad.append(f"sliding_window={window} (attention here is over the whole sequence)")
    return bad


@dataclass(frozen=True)
class ModelConfig:
    layout: str                  # "llada" or "llama"
    d_model: int
    n_heads: int
    n_kv_heads: int
    n_layers: int
    mlp_hidden_size: int
    vocab_size: int
    embedding_size: int          # rows of the embedding / LM head (>= vocab_size)
    rope_theta: float
    rms_norm_eps: float
    max_sequence_length: int
    tied_embeddings: bool
    mask_token_id: int | None = None
    eos_token_id: int | None = None
    pad_token_id: int | None = None
    storage_dtype: str | None = None  # config's torch_dtype, if stated
    raw: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def kv_dim(self) -> int:
        return self.n_kv_heads * self.head_dim

    @classmethod
    def from_dict(cls, raw: dict, source: str = "config.json", strict: bool = True) -> "ModelConfig":
        """strict=False turns the refusal of fields this runtime does not implement (ARCHITECTURE_FIELDS) into a
        warning; every other check stays an error."""
        if not isinstance(raw, dict):
            raise ConfigError(f"{source}: expected a JSON object, got {type(raw).__name__}")
        if "d_model" in raw:
            layout = LAYOUT_LLADA
        elif "hidden_size" in raw:
            layout = LAYOUT_LLAMA
        else:
            raise ConfigError(
                f"{source}: cannot tell the layout: expected LLaDA fields (d_model, n_heads, ...) or "
                f"Llama-style fields (hidden_size, num_attention_heads, ...)")
        vals: dict = {"layout": layout}
        missing = []
        for key, name in _FIELDS[layout].items():
            if key in raw and raw[key] is not None:
                vals[name] = raw[key]
            elif key in _OPTIONAL:
                vals[name] = _OPTIONAL[key]
            else:
                missing.append(key)
        if missing:
            raise ConfigError(f"{source}: missing required field(s) for the {layout} layout: {', '.join(missing)}")
        mqa = raw.get("multi_query_attention") if layout == LAYOUT_LLADA else None
        if mqa is not None:  # LLaDA / OLMo's effective_n_kv_heads
            want = 1 if mqa else vals["n_heads"]
            if vals["n_kv_heads"] not in (None, want):
                raise ConfigError(f"{source}: multi_query_attention={json.dumps(mqa)} contradicts "
                                  f"n_kv_heads={vals['n_kv_heads']} (it means {want} key/value heads)")
            vals["n_kv_heads"] = want
        if vals["n_kv_heads"] is None:
            vals["n_kv_heads"] = vals["n_heads"]
        if layout == LAYOUT_LLAMA:
            vals["embedding_size"] = vals["vocab_size"]
        elif vals["embedding_size"] is None:
            vals["embedding_size"] = vals["vocab_size"]
        for key in ("mask_token_id", "eos_token_id", "pad_token_id"):
            v = raw.get(key)
            if isinstance(v, list):  # some configs list several EOS ids; the first is the canonical one
                v = v[0] if v else None
            vals[key] = v
        dt = raw.get("torch_dtype", raw.get("dtype"))
        vals["storage_dtype"] = dt if isinstance(dt, str) else None
        cfg = cls(**vals, raw=raw)
        cfg._validate(source)
        bad = unsupported_fields(raw, cfg.d_model, cfg.n_heads, cfg.max_sequence_length)
        if bad and strict:
            raise ConfigError(f"{source}: describes a model this runtime cannot run: {'; '.join(bad)}. "
                              f"illada_rt.load(..., strict=False) loads it anyway, with the unsupported fields "
                              f"ignored (the outputs will be wrong)")
        for b in bad:
            warnings.warn(f"{source}: ignoring {b}: outputs will not match the model's", stacklevel=3)
        return cfg

    def _validate(self, source: str) -> None:
        def positive_int(name, value):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ConfigError(f"{source}: {name} must be a positive integer, got {value!r}")

        for name in ("d_model", "n_heads", "n_kv_heads", "n_layers", "mlp_hidden_size", "vocab_size",
                     "embedding_size", "max_sequence_length"):
            positive_int(name, getattr(self, name))
        if self.d_model % self.n_heads:
            raise ConfigError(f"{source}: n_heads ({self.n_heads}) does not divide d_model ({self.d_model})")
        if self.head_dim % 2:
            raise ConfigError(f"{source}: head dimension {self.head_dim} must be even for RoPE")
        if self.n_heads % self.n_kv_heads:
            raise ConfigError(
                f"{source}: n_kv_heads ({self.n_kv_heads}) must divide n_heads ({self.n_heads}) for GQA")
        if self.embedding_size < self.vocab_size:
            raise ConfigError(
                f"{source}: embedding_size ({self.embedding_size}) is smaller than vocab_size ({self.vocab_size})")
        for name in ("rope_theta", "rms_norm_eps"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
                raise ConfigError(f"{source}: {name} must be a positive number, got {v!r}")
        if not isinstance(self.tied_embeddings, bool):
            raise ConfigError(f"{source}: weight tying flag must be true or false, got {self.tied_embeddings!r}")
        for name in ("mask_token_id", "eos_token_id", "pad_token_id"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < self.embedding_size):
                raise ConfigError(f"{source}: {name} must be an integer in [0, {self.embedding_size}), got {v!r}")

    def parameter_count(self) -> int:
        d, f, kv = self.d_model, self.mlp_hidden_size, self.kv_dim
        per_layer = d * d * 2 + d * kv * 2 + 3 * d * f + 2 * d
        head = 0 if self.tied_embeddings else self.embedding_size * d
        return self.embedding_size * d + self.n_layers * per_layer + d + head


def read_config(directory: Path, strict: bool = True) -> ModelConfig:
    path = Path(directory) / "config.json"
    if not path.is_file():
        raise ConfigError(f"{directory}: no config.json (expected a Hugging Face checkpoint directory)")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not valid JSON ({e})") from None
    return ModelConfig.from_dict(raw, source=str(path), strict=strict)
