"""Public API: load(path) -> Model; Model.forward / Model.generate."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from .checkpoint import WeightStore
from .config import ModelConfig, read_config
from . import hub, ops, scoring
from .decoding import generate_fast, generate_llada, generate_varlen
from .decoding.noise import RowNoise, is_seed, row_seeds
from .decoding.params import check_decoding_args
from .errors import ConfigError
from .model import Transformer
from .tokenizer import Tokenizer, load_tokenizer

DEFAULT_MODEL = Path(__file__).resolve().parent / "assets" / "default"

_DTYPE_NAMES = {
    "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
}


@dataclass
class GenerateOutput:
    tokens: torch.Tensor          # [B, P + gen_length]: (left-padded) prompt followed by generated tokens
    nfe: int                      # model forward calls made
    prompt_length: int            # P, the padded prompt width
    attention_mask: torch.Tensor  # [B, P + gen_length] bool, False on left padding
    text: str | list[str] | None = None  # decoded generation (to the first end-of-sequence token); a str
    #                                       for a str prompt, a list per row otherwise; None without tokenizer
    lengths: torch.Tensor | None = None  # [B] generated tokens per row (variable-length mode: incl. its EOS)

    @property
    def generated(self) -> torch.Tensor:
        """[B, gen_length]: the generated part of the canvas."""
        return self.tokens[:, self.prompt_length:]


@dataclass
class ChoiceScores:
    scores: list[float]   # per choice: sum of the log-probabilities at reveal time (higher is better)
    best: int             # index of the highest score


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


def _resolve_mask_id(cfg: ModelConfig, directory: Path, tokenizer: Tokenizer | None, mask_token_id) -> int:
    if mask_token_id is not None and (isinstance(mask_token_id, bool) or not isinstance(mask_token_id, int)):
        raise ValueError(f"mask_token_id: expected an int, got {mask_token_id!r}")
    found, source = cfg.mask_token_id, "config.json"
    if found is None:
        found, source = (tokenizer.mask_token_id if tokenizer else None), "the tokenizer's mask token"
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

    def __init__(self, path: Path, cfg: ModelConfig, transformer: Transformer, mask_token_id: int,
                 tokenizer: Tokenizer | None = None):
        self.path, self.config, self.transformer = path, cfg, transformer
        self.mask_token_id = mask_token_id
        self.tokenizer = tokenizer
        self.device, self.dtype = transformer.device, transformer.dtype
        # the id that padding columns hold (whatever the caller's padding held: it never reaches the model)
        self.pad_token_id = next(t for t in (cfg.pad_token_id, cfg.eos_token_id, 0, 1)
                                 if isinstance(t, int) and t != mask_token_id and 0 <= t < cfg.vocab_size)

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
        # Padding is neutral: its ids (a mask id, -1, anything) are replaced, so they are never embedded, filled or
        # counted; key masks and per-row RoPE positions keep the rest of the row from seeing them.
        return ids.masked_fill(~attn, self.pad_token_id), attn

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
    def generate(self, prompt, gen_length: int | None = 128, steps: int = 128, block_length: int = 32,
                 temperature: float = 0.0, remasking: str = "low_confidence", cfg_scale: float = 0.0,
                 seed: int | None = None, attention_mask: torch.Tensor | None = None, chat: bool = False,
                 callback=None, threshold: float | None = None, factor: float | None = None,
                 cache: str | None = None, max_new_tokens: int | None = None, stop: list[str] | None = None,
                 eos_early_stop: bool = False) -> GenerateOutput:
        """Masked-diffusion decoding of gen_length tokens after the prompt, in blocks of block_length.

        prompt: text (a str or a list of str; needs the checkpoint's tokenizer), a LongTensor [B, P], or a list
        of token-id lists. chat=True wraps each text prompt in the checkpoint's chat template as a user turn.
        Reference decoding (LLaDA's generate.py): steps forwards in all, steps / num_blocks per block.
        threshold / factor / cache select Fast-dLLM's parallel decoding and KV caches (decoding/fast.py):
        threshold=0.9 transfers every masked position of the block with confidence >= 0.9 (at least one) and
        repeats the block until it has no mask; factor=f is Fast-dLLM's factor rule; cache="prefix" or "dual".
        gen_length=None with max_new_tokens=N: iLLaDA's variable-length generation (decoding/varlen.py), one
        block at a time with `steps` forwards per block, until an end-of-sequence token, a `stop` string or N.
        eos_early_stop=True (fixed length): at a block end, a row that has ended with EOS gets EOS in the rest of
        its canvas, and decoding stops once every row has.
        seed: None (one seed per row from torch's global generator), an int (every row uses it) or one int per row;
        a row's sampling noise (temperature > 0, remasking="random") depends only on its own seed and positions,
        so row i of a batch decodes to the tokens it decodes to alone with seed[i] (decoding/noise.py).
        The mask token is never a prediction (where it scores highest the runner-up is taken), so every policy
        fills a block in at most its number of masks of forwards. Padding (attention_mask 0) never reaches the
        model: whatever ids it held, the returned canvas holds pad_token_id there.
        callback(step, tokens, transferred) runs after every step (see decoding.generate_llada).
        """
        check_decoding_args(gen_length=gen_length, steps=steps, block_length=block_length,
                            temperature=temperature, remasking=remasking, cfg_scale=cfg_scale, seed=seed,
                            threshold=threshold, factor=factor, cache=cache, max_new_tokens=max_new_tokens,
                            stop=stop, callback=callback)
        if stop and self.tokenizer is None:
            raise ValueError("stop: stop strings need a tokenizer; this checkpoint has none")
        single_text = isinstance(prompt, str)
        if single_text or (isinstance(prompt, (list, tuple)) and prompt and all(isinstance(p, str) for p in prompt)):
            prompt = [self.encode_prompt(p, chat=chat) for p in ([prompt] if single_text else prompt)]
        elif chat:
            raise ValueError("chat=True needs text prompts (a str or a list of str)")
        ids, attn = self._as_batch(prompt, attention_mask)
        self._check_length(ids.shape[1] + (gen_length or max_new_tokens))
        seeds = row_seeds(seed, ids.shape[0])  # one per row: a row's noise never depends on its batch mates
        common = dict(steps=steps, block_length=block_length, temperature=float(temperature), remasking=remasking,
                      callback=callback)
        fast = dict(threshold=threshold, factor=factor, cache=cache)
        eos = self.eos_ids()
        if gen_length is None and eos_early_stop:
            raise ValueError("eos_early_stop is for fixed-length generation; variable-length generation "
                             "(max_new_tokens) already ends each row at its end-of-sequence token")
        if gen_length is None:
            tokens, valid, lengths, nfe = generate_varlen(
                self, ids, attn, max_new_tokens=max_new_tokens, cfg_scale=float(cfg_scale),
                seeds=seeds, stop_ids=set(eos.tolist()), stop_strings=list(stop or []), **fast, **common)
            g = GenerateOutput(tokens, nfe, ids.shape[1], valid, lengths=lengths)
        else:
            if eos_early_stop and eos.numel() == 0:
                raise ValueError("eos_early_stop: this checkpoint names no end-of-sequence token")
            early = eos if eos_early_stop else None
            if any(v is not None for v in fast.values()):
                canvas, nfe = generate_fast(self, ids, attn, gen_length=gen_length, eos_ids=early,
                                            noise=RowNoise(seeds), **fast, **common)
            else:
                canvas, nfe = generate_llada(self, ids, attn, gen_length=gen_length, cfg_scale=float(cfg_scale),
                                             eos_ids=early, noise=RowNoise(seeds), **common)
            g = GenerateOutput(canvas.tokens, nfe, canvas.prompt_length, canvas.key_mask,
                               lengths=torch.full((ids.shape[0],), gen_length))
        if self.tokenizer is not None:
            texts = [self.decode_generation(row[:n], stop) for row, n in zip(g.generated, g.lengths.tolist())]
            g.text = texts[0] if single_text else texts
        return g

    def eos_ids(self) -> torch.Tensor:
        """End-of-sequence / end-of-turn ids (tokenizer's, else config.json's), canonical EOS first."""
        ids = []
        if self.tokenizer is not None:
            ids = [i for i in (self.tokenizer.id("eos"), self.tokenizer.id("eot")) if i is not None]
        if not ids and self.config.eos_token_id is not None:
            ids = [self.config.eos_token_id]
        return torch.tensor(ids, dtype=torch.long, device=self.device)

    # -- scoring ----------------------------------------------------------------------------------
    def _pair(self, context, continuation) -> tuple[list[int], list[int]]:
        """(context ids, continuation ids); text pairs split as lm-eval / LLaDA's harness does (trailing
        spaces of the context move to the continuation; the continuation is the tail of the joint encoding)."""
        if isinstance(context, str) and isinstance(continuation, str):
            tok = self._need_tokenizer()
            n = len(context) - len(context.rstrip())
            if n:
                context, continuation = context[:-n], context[-n:] + continuation
            whole = tok.encode(context + continuation, add_special_tokens=True)
            ctx = tok.encode(context, add_special_tokens=True)
            return ctx, whole[len(ctx):]
        ids = []
        for name, v in (("context", context), ("continuation", continuation)):
            if isinstance(v, torch.Tensor):
                v = v.tolist()
            if not isinstance(v, (list, tuple)) or not all(isinstance(t, int) and not isinstance(t, bool) for t in v):
                raise TypeError(f"{name}: expected text (with a text partner) or a list of token ids")
            ids.append(list(v))
        return ids[0], ids[1]

    def loglikelihood(self, context, continuation, mc_num: int = 128, batch_size: int = 32, cfg_scale: float = 0.0,
                      seed: int | None = 0) -> float:
        """LLaDA's Monte Carlo ELBO estimate of log p(continuation | context); exact for one token.

        seed: an int in [0, 2**64) keys the random masks (repeatable), None draws them from torch's global generator."""
        ctx, cont = self._pair(context, continuation)
        if not cont:
            raise ValueError("continuation: empty")
        for name, v in (("mc_num", mc_num), ("batch_size", batch_size)):
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ValueError(f"{name}: expected a positive integer, got {v!r}")
        if mc_num % batch_size:
            raise ValueError(f"mc_num ({mc_num}) must be a multiple of batch_size ({batch_size})")
        if isinstance(cfg_scale, bool) or not isinstance(cfg_scale, (int, float)) or not cfg_scale >= 0:
            raise ValueError(f"cfg_scale: expected a number >= 0, got {cfg_scale!r}")
        if seed is not None and not is_seed(seed):
            raise ValueError(f"seed: expected None or an int in [0, 2**64), got {seed!r}")
        self._check_ids(torch.tensor(ctx + cont, dtype=torch.long), "context/continuation")
        self._check_length(len(ctx) + len(cont))
        return scoring.loglikelihood(self, ctx, cont, mc_num=mc_num, batch_size=batch_size,
                                     cfg_scale=float(cfg_scale), seed=seed)

    def score_choices(self, context, choices) -> ChoiceScores:
        """iLLaDA's confidence-based multiple-choice scoring: per-choice scores and the best index."""
        if not isinstance(choices, (list, tuple)) or not choices:
            raise ValueError("choices: expected a non-empty list")
        scores = []
        for c in choices:
            ctx, cont = self._pair(context, c)
            if not cont:
                raise ValueError(f"choices: choice {c!r} is empty")
            self._check_ids(torch.tensor(ctx + cont, dtype=torch.long), "context/choice")
            self._check_length(len(ctx) + len(cont))
            scores.append(scoring.score_choice(self, ctx, cont))
        return ChoiceScores(scores, max(range(len(scores)), key=scores.__getitem__))

    # -- text -------------------------------------------------------------------------------------
    def _need_tokenizer(self) -> Tokenizer:
        if self.tokenizer is None:
            raise ValueError(f"{self.path}: text needs a tokenizer (tokenizer.json or tokenizer.model) and this "
                             f"checkpoint has none; pass token ids instead")
        return self.tokenizer

    def encode_prompt(self, text: str, chat: bool = False) -> list[int]:
        """Token ids of a text prompt (through the chat template when chat=True)."""
        tok = self._need_tokenizer()
        if chat:
            return tok.encode(tok.apply_chat_template([{"role": "user", "content": text}]))
        return tok.encode(text, add_special_tokens=True)

    def decode_filled(self, prompt_ids, generated_ids, stop: list[str] | None = None) -> str:
        """Text of an infilled prompt (its masks filled) followed by the generation: the whole prompt, whose special
        tokens (a chat template's end of turn...) are dropped but never end it, then the generation up to its first
        end-of-sequence token or stop string."""
        tok = self._need_tokenizer()
        prompt_ids, gen = [int(i) for i in prompt_ids], self._until_end(generated_ids)
        head = tok.decode(prompt_ids, skip_special_tokens=True)
        text = tok.decode(prompt_ids + gen, skip_special_tokens=True)
        if not text.startswith(head):  # a tokenizer whose decoding does not split at the prompt's end
            text = head + tok.decode(gen, skip_special_tokens=True)
        return head + _cut_at_stops(text[len(head):], stop)

    def decode_generation(self, ids, stop: list[str] | None = None) -> str:
        """Text of generated ids, ending before the first end-of-sequence / end-of-turn token and before the
        first stop string."""
        return _cut_at_stops(self._need_tokenizer().decode(self._until_end(ids), skip_special_tokens=True), stop)

    def _until_end(self, ids) -> list[int]:
        """ids (ints) up to, not including, the first end-of-sequence / end-of-turn token."""
        ids, stops = [int(i) for i in ids], self._need_tokenizer().stop_ids()
        return ids[:next((n for n, i in enumerate(ids) if i in stops), len(ids))]


def _cut_at_stops(text: str, stop: list[str] | None) -> str:
    """text before the first occurrence of any stop string."""
    for s in stop or []:
        text = text.split(s)[0]
    return text


def load(path=None, device="cpu", dtype=None, mask_token_id: int | None = None, strict: bool = True,
         revision: str | None = None, huge_pages: bool = True) -> Model:
    """Load a LLaDA or Llama-style (iLLaDA) checkpoint (config.json + safetensors): a Hugging Face repo id or a
    directory.

    path: a repo id such as "GSAI-ML/LLaDA-8B-Instruct" (a str of the form ORG/NAME that is no existing path) loads
    the snapshot at `revision` (branch, tag or commit hash; default: the default branch) from the Hugging Face cache
    (HF_HOME, HF_HUB_CACHE), or, unless HF_HUB_OFFLINE is set, downloads only the files it reads (config,
    safetensors, tokenizer) into that cache (hub.resolve); otherwise a checkpoint directory.
    path=None loads the embedded default model (illada_rt/assets/default).
    A checkpoint this runtime cannot run correctly is refused with a ConfigError / CheckpointError naming the field
    or tensor: config.json fields that change the architecture (rope_scaling, an activation other than SiLU,
    biases, QK-norm, logit scaling, ... : config.ARCHITECTURE_FIELDS), weights stored as integers without a
    quantization_config, NaN or infinite weights, tensors that belong to no part of the configured model.
    strict=False loads such a checkpoint anyway, with a warning for each problem.
    huge_pages (CPU): every linear weight the model holds, packed or dense, lives in memory advised for transparent
    huge pages where the OS offers them (ops.WeightArena): at decoding's small M the GEMMs stream their weights from
    DRAM, 7-9% faster from huge pages. A dense weight that could run from the memory map is then copied (one tensor
    at a time, the file's pages released: resident once). huge_pages=False keeps such weights as views of the map
    (a faster load, the page cache shared with other processes) and packs quantized ones into ordinary memory.
    """
    directory = hub.resolve(DEFAULT_MODEL if path is None else path, revision)
    if not directory.is_dir():
        if path is None:
            raise ConfigError(f"the embedded default model is missing from this install ({directory}); "
                              f"reinstall illada-rt or pass a checkpoint directory")
        raise ConfigError(f"{directory}: checkpoint directory does not exist")
    cfg = read_config(directory, strict=strict)
    dev = _resolve_device(device)
    if dev.type == "cpu":
        ops.retain_freed_memory()  # decoding steps reuse the heap memory they free (no page faults per step)
    tokenizer = load_tokenizer(directory)
    mask_id = _resolve_mask_id(cfg, directory, tokenizer, mask_token_id)
    store = WeightStore(directory)
    dt = _resolve_dtype(dtype, dev, store)
    return Model(directory, cfg, Transformer(cfg, store, dev, dt, strict=strict, huge_pages=huge_pages), mask_id,
                 tokenizer)
