"""Seeded random checkpoints in the real on-disk formats (LLaDA and Llama-style).

Used by the tests, the benches and the README demo: no model hub is needed to exercise the loader,
the forward and the decoder. The weights are random but deliberately *peaky* (a large LM-head gain),
so softmax confidences are spread out and decoding does not hinge on near-ties.

Tensors are written one at a time (one shard open at once), so even large synthetic checkpoints
never sit in memory whole.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file


@dataclass(frozen=True)
class TinySpec:
    """Shape and format of a synthetic checkpoint."""

    layout: str = "llada"          # "llada" (OLMo-style names) or "llama" (iLLaDA-style names)
    d_model: int = 64
    n_heads: int = 4
    n_kv_heads: int = 4
    n_layers: int = 2
    mlp_hidden_size: int = 96
    vocab_size: int = 101          # includes the mask token
    embedding_size: int | None = None  # LLaDA pads the embedding table; None = vocab_size
    max_sequence_length: int = 256
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-5
    tied: bool = False
    mask_token_id: int | None = 100  # None: omitted from config.json (iLLaDA ships it that way)
    dtype: str = "float32"         # storage dtype: float32, bfloat16, float16
    shards: int = 1                # > 1 writes model-0000i-of-0000n.safetensors + index
    seed: int = 0
    head_gain: float = 4.0         # LM-head scale: larger = peakier softmax
    # The mask token's rows of the embedding and the LM head are scaled down (as training would leave
    # them: a trained model never predicts [MASK]); otherwise a tied head predicts the mask token itself.
    quiet_token: int | None = 100

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads


_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def config_dict(spec: TinySpec) -> dict:
    """The config.json a published checkpoint of this layout would carry."""
    emb = spec.embedding_size or spec.vocab_size
    if spec.layout == "llada":
        cfg = {
            "model_type": "llada",
            "architectures": ["LLaDAModelLM"],
            "d_model": spec.d_model,
            "n_heads": spec.n_heads,
            "n_kv_heads": spec.n_kv_heads,
            "n_layers": spec.n_layers,
            "mlp_hidden_size": spec.mlp_hidden_size,
            "mlp_ratio": 4,
            "vocab_size": spec.vocab_size,
            "embedding_size": emb,
            "rope": True,
            "rope_theta": spec.rope_theta,
            "rope_full_precision": True,
            "rms_norm_eps": spec.rms_norm_eps,
            "layer_norm_type": "rms",
            "block_type": "llama",
            "activation_type": "silu",
            "include_bias": False,
            "max_sequence_length": spec.max_sequence_length,
            "weight_tying": spec.tied,
            "scale_logits": False,
            "eos_token_id": 1,
            "pad_token_id": 1,
        }
    elif spec.layout == "llama":
        cfg = {
            "model_type": "llama",
            "architectures": ["ILLaDAForCausalLM"],
            "hidden_size": spec.d_model,
            "num_hidden_layers": spec.n_layers,
            "num_attention_heads": spec.n_heads,
            "num_key_value_heads": spec.n_kv_heads,
            "intermediate_size": spec.mlp_hidden_size,
            "vocab_size": emb,
            "max_position_embeddings": spec.max_sequence_length,
            "rope_theta": spec.rope_theta,
            "rms_norm_eps": spec.rms_norm_eps,
            "tie_word_embeddings": spec.tied,
            "hidden_act": "silu",
            "eos_token_id": 1,
        }
    else:
        raise ValueError(f"layout must be 'llada' or 'llama', got {spec.layout!r}")
    if spec.mask_token_id is not None:
        cfg["mask_token_id"] = spec.mask_token_id
    cfg["torch_dtype"] = spec.dtype
    return cfg


def tensor_names(spec: TinySpec) -> list[tuple[str, tuple[int, ...], str]]:
    """(name, shape, kind) for every tensor, in file order. kind: emb, norm, linear, head."""
    d, f, hd = spec.d_model, spec.mlp_hidden_size, spec.head_dim
    kv = spec.n_kv_heads * hd
    emb = spec.embedding_size or spec.vocab_size
    out: list[tuple[str, tuple[int, ...], str]] = []
    if spec.layout == "llada":
        p = "model.transformer."
        out.append((p + "wte.weight", (emb, d), "emb"))
        for i in range(spec.n_layers):
            b = f"{p}blocks.{i}."
            out += [
                (b + "attn_norm.weight", (d,), "norm"),
                (b + "q_proj.weight", (d, d), "linear"),
                (b + "k_proj.weight", (kv, d), "linear"),
                (b + "v_proj.weight", (kv, d), "linear"),
                (b + "attn_out.weight", (d, d), "linear"),
                (b + "ff_norm.weight", (d,), "norm"),
                (b + "ff_proj.weight", (f, d), "linear"),
                (b + "up_proj.weight", (f, d), "linear"),
                (b + "ff_out.weight", (d, f), "linear"),
            ]
        out.append((p + "ln_f.weight", (d,), "norm"))
        if not spec.tied:
            out.append((p + "ff_out.weight", (emb, d), "head"))
    else:
        out.append(("model.embed_tokens.weight", (emb, d), "emb"))
        for i in range(spec.n_layers):
            b = f"model.layers.{i}."
            out += [
                (b + "input_layernorm.weight", (d,), "norm"),
                (b + "self_attn.q_proj.weight", (d, d), "linear"),
                (b + "self_attn.k_proj.weight", (kv, d), "linear"),
                (b + "self_attn.v_proj.weight", (kv, d), "linear"),
                (b + "self_attn.o_proj.weight", (d, d), "linear"),
                (b + "post_attention_layernorm.weight", (d,), "norm"),
                (b + "mlp.gate_proj.weight", (f, d), "linear"),
                (b + "mlp.up_proj.weight", (f, d), "linear"),
                (b + "mlp.down_proj.weight", (d, f), "linear"),
            ]
        out.append(("model.norm.weight", (d,), "norm"))
        if not spec.tied:
            out.append(("lm_head.weight", (emb, d), "head"))
    return out


def _random_tensor(shape, kind: str, spec: TinySpec, gen: torch.Generator) -> torch.Tensor:
    if kind == "norm":
        return 1.0 + 0.1 * torch.randn(shape, generator=gen)
    if kind in ("emb", "head"):
        # Tied heads reuse the embedding: give it the head's gain so logits stay peaky.
        gain = spec.head_gain / spec.d_model ** 0.5 if (kind == "head" or spec.tied) else 1.0
        t = gain * torch.randn(shape, generator=gen)
        if spec.quiet_token is not None and spec.quiet_token < shape[0]:
            t[spec.quiet_token] *= 0.1
        return t
    fan_in = shape[1]
    return torch.randn(shape, generator=gen) / fan_in ** 0.5


def write_checkpoint(path: str | os.PathLike, spec: TinySpec = TinySpec()) -> Path:
    """Write config.json + safetensors (one file, or shards with an index) under `path`."""
    root = Path(path)
    root.mkdir(parents=True, exist_ok=True)
    dtype = _DTYPES[spec.dtype]
    gen = torch.Generator().manual_seed(spec.seed)
    names = tensor_names(spec)
    n = max(1, spec.shards)
    per = -(-len(names) // n)
    weight_map: dict[str, str] = {}
    total = 0
    for s in range(n):
        chunk = names[s * per:(s + 1) * per]
        if not chunk:
            continue
        fname = "model.safetensors" if n == 1 else f"model-{s + 1:05d}-of-{n:05d}.safetensors"
        tensors = {}
        for name, shape, kind in chunk:
            t = _random_tensor(shape, kind, spec, gen).to(dtype).contiguous()
            tensors[name] = t
            weight_map[name] = fname
            total += t.numel() * t.element_size()
        save_file(tensors, str(root / fname), metadata={"format": "pt"})
        del tensors
    if n > 1:
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (root / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    (root / "config.json").write_text(json.dumps(config_dict(spec), indent=2))
    return root


def spec_dict(spec: TinySpec) -> dict:
    return asdict(spec)
