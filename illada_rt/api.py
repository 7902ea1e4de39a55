"""Public API: load(path) -> Model; Model.forward / Model.generate."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from .checkpoint import WeightStore
from .config import ModelConfig, read_config
from .decoding import REMASKING, generate_llada
from .errors import ConfigError
from .model import Transformer

_DTYPE_NAMES = {
    "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
}
# Mask tokens of published checkpoints, looked up by name when config.json has no mask_token_id.
KNOWN_MASK_TOKENS = ("<|mdm_mask|>", "<[MASK]>")


@dataclass
class GenerateOutput:
    tokens: torch.Tensor          # [B, P + gen_length]: (left-padded) prompt followed by generated tokens
    nfe: int                      # model forward calls made
    prompt_length: int            # P, the padded prompt width
    attention_mask: torch.Tensor  # [B, P + gen_length] bool, False on left padding

    @property
    def generated(self) -> torch.Tensor:
        """[B, gen_length]: the generated part of the canvas."""
        return self.tokens[:, self.prompt_length:]


def _resolve_dtype(dtype, device: torch.device, store: WeightStore) -> torch.dtype:
    if dtype is None:
        stored = store.storage_dtype() or torch.float32
        # Stored fp16 on CPU computes in fp32: CPU fp16 GEMMs are slow and bf16 would change the numbers.
        return torch.float32 if (stored == torch.float16 and device.type == "cpu") else stored
    if isinstance(dtype, str):
        if dtype.lower() not in _DTYPE_NAMES:
            raise ValueError(f"dtype: unknown name {dtype!r}; use float32, bfloat16 or float16")
        return _DTYPE_NAMES[dtype.lower()]
    if dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise ValueError(f"dtype: expected torch.float32, torch.bfloat16 or torch.float16, got {dtype}")
    return dtype


def _resolve_device(device) -> torch.device:
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"device: {device!r} is not a device ({e})") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device: {device!r} requested but CUDA is not available in this PyTorch build/machine")
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device: only 'cpu' and 'cuda' are supported, got {dev.type!r}")
    return dev


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None


def mask_id_from_tokenizer_files(directory: Path) -> int | None:
    """The mask token's id from tokenizer files, by the declared mask_token or a known mask-token name."""
    d = Path(directory)
    names = list(KNOWN_MASK_TOKENS)
    for fname in ("tokenizer_config.json", "special_tokens_map.json"):
        data = _read_json(d / fname)
        if isinstance(data, dict):
            mt = data.get("mask_token")
            mt = mt.get("content") if isinstance(mt, dict) else mt
            if isinstance(mt, str):
                names.insert(0, mt)
    vocab: dict[str, int] = {}
    tj = _read_json(d / "tokenizer.json")
    if isinstance(tj, dict):
        for tok in tj.get("added_tokens") or []:
            if isinstance(tok, dict) and isinstance(tok.get("content"), str) and isinstance(tok.get("id"), int):
                vocab[tok["content"]] = tok["id"]
    tc = _read_json(d / "tokenizer_config.json")
    if isinstance(tc, dict) and isinstance(tc.get("added_tokens_decoder"), dict):
        for k, tok in tc["added_tokens_decoder"].items():
            if isinstance(tok, dict) and isinstance(tok.get("content"), str) and str(k).isdigit():
                vocab.setdefault(tok["content"], int(k))
    for name in names:
        if name in vocab:
            return vocab[name]
    return None


def _resolve_mask_id(cfg: ModelConfig, directory: Path, mask_token_id) -> int:
    if mask_token_id is not None and (isinstance(mask_token_id, bool) or not isinstance(mask_token_id, int)):
        raise ValueError(f"mask_token_id: expected an int, got {mask_token_id!r}")
    found, source = cfg.mask_token_id, "config.json"
    if found is None:
        found, source = mask_id_from_tokenizer_files(directory), "the tokenizer files"
    if found is None:
        found, source = mask_token_id, "the mask_token_id argument"
    elif mask_token_id is not None and mask_token_id != found:
        raise ValueError(f"mask_token_id={mask_token_id} conflicts with {found} from {source}")
    if found is None:
        raise ConfigError(
            f"{directory}: cannot find the mask token id: config.json has no mask_token_id, no tokenizer file "
            f"names a mask token, and no mask_token_id= was passed to load() (iLLaDA uses 5, LLaDA 126336)")
    if not 0 <= found < cfg.vocab_size:
        raise ValueError(f"mask token id {found} (from {source}) is outside the vocabulary [0, {cfg.vocab_size})")
    return found


class Model:
    """A loaded masked-diffusion LM on one device."""

    def __init__(self, path: Path, cfg: ModelConfig, transformer: Transformer, mask_token_id: int):
        self.path, self.config, self.transformer = path, cfg, transformer
        self.mask_token_id = mask_token_id
        self.device, self.dtype = transformer.device, transformer.dtype
        self.pad_token_id = next(
            (t for t in (cfg.pad_token_id, cfg.eos_token_id, 0, 1) if t is not None and t != mask_token_id))

    def __repr__(self) -> str:
        c = self.config
        return (f"Model({str(self.path)!r}, layout={c.layout}, layers={c.n_layers}, d_model={c.d_model}, "
                f"heads={c.n_heads}/{c.n_kv_heads}, vocab={c.vocab_size}, dtype={self.dtype}, device={self.device})")

    # -- input validation -------------------------------------------------------------------------
    def _check_ids(self, ids: torch.Tensor, name: str) -> None:
        if ids.numel() == 0:
            return
        lo, hi = int(ids.min()), int(ids.max())
        if lo < 0:
            raise ValueError(f"{name}: negative token id {lo}")
        if hi >= self.config.vocab_size:
            raise ValueError(f"{name}: token id {hi} is outside the vocabulary (size {self.config.vocab_size})")

    def _as_batch(self, prompt, attention_mask) -> tuple[torch.Tensor, torch.Tensor]:
        """prompt (LongTensor [B, P] or list of id lists) -> (ids [B, P] int64, attn [B, P] bool)."""
        if isinstance(prompt, str) or (isinstance(prompt, (list, tuple)) and prompt and isinstance(prompt[0], str)):
            raise TypeError("prompt: text prompts need a tokenizer, which this checkpoint API does not have yet; "
                            "pass token ids (a LongTensor [B, P] or a list of id lists)")
        if isinstance(prompt, torch.Tensor):
            if prompt.dtype in (torch.bool,) or prompt.is_floating_point() or prompt.is_complex():
                raise TypeError(f"prompt: expected integer token ids, got dtype {prompt.dtype}")
            if prompt.dim() != 2:
                raise ValueError(f"prompt: expected a 2-D tensor [batch, length], got shape {list(prompt.shape)}"
                                 + (" (use prompt[None] for a single prompt)" if prompt.dim() == 1 else ""))
            if prompt.shape[0] == 0:
                raise ValueError("prompt: empty batch")
            ids = prompt.to(device=self.device, dtype=torch.long)
            if attention_mask is None:
                attn = torch.ones(ids.shape, dtype=torch.bool, device=self.device)
            else:
                if not isinstance(attention_mask, torch.Tensor):
                    attention_mask = torch.as_tensor(attention_mask)
                if attention_mask.shape != prompt.shape:
                    raise ValueError(f"attention_mask: shape {list(attention_mask.shape)} does not match prompt "
                                     f"shape {list(prompt.shape)}")
                if attention_mask.is_floating_point() and not bool(((attention_mask == 0) | (attention_mask == 1)).all()):
                    raise ValueError("attention_mask: expected 0/1 values")
                attn = attention_mask.to(device=self.device) != 0
        elif isinstance(prompt, (list, tuple)):
            if len(prompt) == 0:
                raise ValueError("prompt: empty batch")
            rows = []
            for r, row in enumerate(prompt):
                if isinstance(row, torch.Tensor):
                    row = row.tolist()
                if not isinstance(row, (list, tuple)):
                    raise ValueError(f"prompt: expected a list of token-id lists; row {r} is {type(row).__name__} "
                                     f"(wrap a single prompt as [ids])")
                for t in row:
                    if isinstance(t, bool) or not isinstance(t, int):
                        raise TypeError(f"prompt: row {r} holds a non-integer token id {t!r}")
                rows.append(list(row))
            if attention_mask is not None:
                raise ValueError("attention_mask: only with a tensor prompt; ragged lists are padded for you")
            P = max(len(r) for r in rows)
            ids = torch.full((len(rows), P), self.pad_token_id, dtype=torch.long)
            attn = torch.zeros((len(rows), P), dtype=torch.bool)
            for r, row in enumerate(rows):
                if row:
                    ids[r, P - len(row):] = torch.tensor(row, dtype=torch.long)
                    attn[r, P - len(row):] = True
            ids, attn = ids.to(self.device), attn.to(self.device)
        else:
            raise TypeError(f"prompt: expected a LongTensor [B, P] or a list of token-id lists, got "
                            f"{type(prompt).__name__}")
        self._check_ids(ids[attn], "prompt")
        return ids, attn

    # -- forward ----------------------------------------------------------------------------------
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """LongTensor [B, T] -> float32 logits [B, T, embedding_size]. attention_mask: [B, T], 0 = padding."""
        ids, attn = self._as_batch(input_ids, attention_mask)
        self._check_length(ids.shape[1])
        if bool(attn.all()):
            return self.transformer.forward(ids)
        positions = (attn.long().cumsum(1) - 1).clamp_(min=0)
        return self.transformer.forward(ids, attn, positions)

    __call__ = forward

    def _check_length(self, total: int) -> None:
        if total > self.config.max_sequence_length:
            raise ValueError(f"sequence of {total} tokens exceeds the model's maximum length "
                             f"{self.config.max_sequence_length}")

    # -- generation -------------------------------------------------------------------------------
    def generate(self, prompt, gen_length: int = 128, steps: int = 128, block_length: int = 32,
                 temperature: float = 0.0, remasking: str = "low_confidence", cfg_scale: float = 0.0,
                 seed: int | None = None, attention_mask: torch.Tensor | None = None) -> GenerateOutput:
        """LLaDA decoding: fill gen_length masks after the prompt in blocks of block_length, steps forwards in all."""
        for name, v in (("gen_length", gen_length), ("steps", steps), ("block_length", block_length)):
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ValueError(f"{name}: expected a positive integer, got {v!r}")
        if gen_length % block_length:
            raise ValueError(f"block_length ({block_length}) must divide gen_length ({gen_length})")
        num_blocks = gen_length // block_length
        if steps % num_blocks:
            raise ValueError(f"steps ({steps}) must be divisible by the number of blocks "
                             f"(gen_length / block_length = {num_blocks})")
        for name, v in (("temperature", temperature), ("cfg_scale", cfg_scale)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise ValueError(f"{name}: expected a finite number >= 0, got {v!r}")
        if remasking not in REMASKING:
            raise ValueError(f"remasking: unknown strategy {remasking!r}; expected one of {', '.join(REMASKING)}")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ValueError(f"seed: expected an int or None, got {seed!r}")
        ids, attn = self._as_batch(prompt, attention_mask)
        self._check_length(ids.shape[1] + gen_length)
        generator = None
        if seed is not None:
            generator = torch.Generator(device=self.device).manual_seed(seed)
        canvas, nfe = generate_llada(self, ids, attn, gen_length=gen_length, steps=steps, block_length=block_length,
                                     temperature=float(temperature), remasking=remasking,
                                     cfg_scale=float(cfg_scale), generator=generator)
        return GenerateOutput(canvas.tokens, nfe, canvas.prompt_length, canvas.key_mask)


def load(path, device="cpu", dtype=None, mask_token_id: int | None = None) -> Model:
    """Load a LLaDA or Llama-style (iLLaDA) checkpoint directory (config.json + safetensors)."""
    if path is None:
        raise ValueError("path: no checkpoint directory given (the embedded default model is not bundled yet)")
    directory = Path(path)
    if not directory.is_dir():
        raise ConfigError(f"{directory}: checkpoint directory does not exist")
    cfg = read_config(directory)
    dev = _resolve_device(device)
    mask_id = _resolve_mask_id(cfg, directory, mask_token_id)
    store = WeightStore(directory)
    dt = _resolve_dtype(dtype, dev, store)
    return Model(directory, cfg, Transformer(cfg, store, dev, dt), mask_id)
