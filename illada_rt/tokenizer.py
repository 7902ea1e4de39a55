"""Tokenizers of checkpoint directories: Hugging Face `tokenizer.json` (via `tokenizers`) or sentencepiece
`tokenizer.model`; special tokens from `tokenizer_config.json` / `special_tokens_map.json`; chat templates
rendered with a sandboxed Jinja environment (templates are data: nothing from a checkpoint is executed).
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from .errors import ConfigError

# Special tokens of published masked-diffusion checkpoints, found by name when the files do not declare them.
MASK_TOKEN_NAMES = ("<|mdm_mask|>", "<[MASK]>")
EOT_TOKEN_NAMES = ("<|eot_id|>", "<|im_end|>", "<|end_of_turn|>")
_ROLES = ("bos", "eos", "pad", "unk", "mask")


def _read_json(path: Path):
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not valid JSON ({e})") from None


def _content(tok):
    if isinstance(tok, dict):
        tok = tok.get("content")
    return tok if isinstance(tok, str) else None


class Tokenizer:
    """Text <-> token ids for one checkpoint, with its special tokens and chat template."""

    def __init__(self, directory: str | Path):
        d = Path(directory)
        self.directory = d
        self._hf = self._sp = None
        if (d / "tokenizer.json").is_file():
            from tokenizers import Tokenizer as HFTokenizer

            try:
                self._hf = HFTokenizer.from_file(str(d / "tokenizer.json"))
            except Exception as e:  # the tokenizers library raises its own Exception type
                raise ConfigError(f"{d / 'tokenizer.json'}: cannot be loaded ({e})") from None
            self.backend = "tokenizers"
        elif (d / "tokenizer.model").is_file():
            import sentencepiece as spm

            try:
                self._sp = spm.SentencePieceProcessor(model_file=str(d / "tokenizer.model"))
            except Exception as e:  # sentencepiece raises RuntimeError/OSError variants
                raise ConfigError(f"{d / 'tokenizer.model'}: not a sentencepiece model ({e})") from None
            self.backend = "sentencepiece"
        else:
            raise ConfigError(f"{d}: no tokenizer.json or tokenizer.model")
        cfg = _read_json(d / "tokenizer_config.json") or {}
        smap = _read_json(d / "special_tokens_map.json") or {}
        self.chat_template = cfg.get("chat_template")
        if isinstance(self.chat_template, list):  # [{"name": "default", "template": ...}, ...]
            named = {t.get("name"): t.get("template") for t in self.chat_template if isinstance(t, dict)}
            self.chat_template = named.get("default") or next(iter(named.values()), None)
        if self.chat_template is None and (d / "chat_template.jinja").is_file():
            self.chat_template = (d / "chat_template.jinja").read_text(encoding="utf-8")
        self.add_bos = bool(cfg.get("add_bos_token", False))
        # token strings by role: tokenizer_config.json, then special_tokens_map.json, then known names
        self.special: dict[str, str] = {}
        for role in _ROLES:
            s = _content(cfg.get(f"{role}_token")) or _content(smap.get(f"{role}_token"))
            if s is not None:
                self.special[role] = s
        if self._sp is not None:
            for role, pid in (("bos", self._sp.bos_id()), ("eos", self._sp.eos_id()), ("pad", self._sp.pad_id()),
                              ("unk", self._sp.unk_id())):
                if role not in self.special and pid >= 0:
                    self.special[role] = self._sp.id_to_piece(pid)
        for role, names in (("mask", MASK_TOKEN_NAMES), ("eot", EOT_TOKEN_NAMES)):
            if role not in self.special:
                found = next((n for n in names if self.token_to_id(n) is not None), None)
                if found is not None:
                    self.special[role] = found
        self.special_ids = {role: self.token_to_id(s) for role, s in self.special.items()}
        self.special_ids = {r: i for r, i in self.special_ids.items() if i is not None}
        self._all_special = set(self.special_ids.values())
        self._special_text = None  # regex of special-token strings that encode() maps to their ids itself
        if self._hf is not None:
            self._add_hf_specials()
            self._all_special |= {i for i, t in self._hf.get_added_tokens_decoder().items() if t.special}
        else:
            control = {i for i in range(self._sp.get_piece_size()) if self._sp.is_control(i) or self._sp.is_unknown(i)}
            self._all_special |= control
            if "mask" in self.special_ids:
                self._all_special.add(self.special_ids["mask"])
            # sentencepiece spells control pieces (<s>, </s>) typed in text out as ordinary pieces or bytes (it keeps
            # user-defined symbols such as the mask token whole: those it encodes itself)
            pieces = {self._sp.id_to_piece(i) for i in control} | {self.special[r] for r in self.special_ids}
            pieces = {p for p in pieces if self._sp.piece_to_id(p) not in self._sp.encode(p)}
            if pieces:
                self._special_text = re.compile("(" + "|".join(map(re.escape, sorted(pieces, key=len, reverse=True)))
                                                + ")")

    def _add_hf_specials(self) -> None:
        """Declared special tokens that tokenizer.json has only in its vocabulary become added tokens (same ids), so
        the tokenizers library matches them in text as it matches its own added tokens."""
        from tokenizers import AddedToken

        added = {t.content for t in self._hf.get_added_tokens_decoder().values()}
        missing = [self.special[r] for r in self.special_ids if self.special[r] not in added]
        if missing:
            self._hf.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in dict.fromkeys(missing)])

    # -- lookups ----------------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return self._hf.get_vocab_size(with_added_tokens=True) if self._hf else self._sp.get_piece_size()

    def token_to_id(self, token: str) -> int | None:
        if self._hf is not None:
            return self._hf.token_to_id(token)
        i = self._sp.piece_to_id(token)
        return i if (i != self._sp.unk_id() or token == self._sp.id_to_piece(i)) else None

    def id(self, role: str) -> int | None:
        """Id of a special token by role: bos, eos, pad, unk, mask, eot."""
        return self.special_ids.get(role)

    @property
    def mask_token_id(self) -> int | None:
        return self.id("mask")

    @property
    def eos_token_id(self) -> int | None:
        return self.id("eos")

    def stop_ids(self) -> set[int]:
        """End-of-sequence and end-of-turn ids: generation text ends at the first of these."""
        return {i for r, i in self.special_ids.items() if r in ("eos", "eot")}

    # -- text -------------------------------------------------------------------------------------
    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        """Token ids of text. Special tokens written in the text (a chat template's <s>, </s>, <|eot_id|>, the mask
        token of an infilling prompt) become their ids with either backend, as Hugging Face tokenizers do;
        add_special_tokens=True also prepends BOS where the tokenizer's config asks for it."""
        if not isinstance(text, str):
            raise TypeError(f"text: expected str, got {type(text).__name__}")
        if self._hf is not None:
            return self._hf.encode(text, add_special_tokens=add_special_tokens).ids
        # Text between special tokens is encoded piece by piece (each with sentencepiece's leading-space marker, as
        # Hugging Face's legacy Llama tokenizer does).
        ids = []
        for k, part in enumerate(self._special_text.split(text) if self._special_text else [text]):
            if k % 2:
                ids.append(self._sp.piece_to_id(part))
            elif part:
                ids += self._sp.encode(part)
        if add_special_tokens and self.add_bos and "bos" in self.special_ids:
            ids = [self.special_ids["bos"]] + ids
        return ids

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        ids = [int(i) for i in ids]
        if skip_special_tokens:
            ids = [i for i in ids if i not in self._all_special]
        if self._hf is not None:
            return self._hf.decode(ids, skip_special_tokens=skip_special_tokens)
        return self._sp.decode(ids)

    def token_text(self, i: int) -> str:
        """Surface text of one token in context (keeps its leading space), for live canvas rendering."""
        if self._hf is not None:
            return self._hf.decode([int(i)], skip_special_tokens=False)
        piece = self._sp.id_to_piece(int(i))
        if piece.startswith("<0x") and piece.endswith(">") and len(piece) == 6:  # byte fallback
            return bytes([int(piece[3:5], 16)]).decode("latin-1")
        return piece.replace("\u2581", " ")

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        """Render the checkpoint's chat template (Jinja, sandboxed) for a list of {role, content} messages."""
        if not self.chat_template:
            raise ConfigError(f"{self.directory}: this tokenizer has no chat template (tokenizer_config.json "
                              f"'chat_template'); use a plain prompt")
        from jinja2 import TemplateError
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        def raise_exception(message):
            raise TemplateError(message)

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = raise_exception
        try:
            return env.from_string(self.chat_template).render(
                messages=messages, add_generation_prompt=add_generation_prompt,
                bos_token=self.special.get("bos", ""), eos_token=self.special.get("eos", ""))
        except TemplateError as e:
            raise ConfigError(f"{self.directory}: chat template failed: {e}") from None


def load_tokenizer(directory: str | Path) -> Tokenizer | None:
    """The directory's tokenizer, or None when it ships none."""
    d = Path(directory)
    if not ((d / "tokenizer.json").is_file() or (d / "tokenizer.model").is_file()):
        return None
    return Tokenizer(d)
