"""The quantize handler: walk a checkpoint shard by shard and write its quantized copy.

Memory stays bounded by streaming: each output shard's safetensors header is planned from shapes and dtypes
alone, then tensors are read from the memory-mapped source, quantized and written one at a time, and each
written tensor's source pages are released (madvise), so the process holds about one source tensor and its
quantized form at once. Every input is checked first (plan_quantize), so a wrong one writes nothing; output
goes to a temporary directory beside DST that is renamed into place only when everything is written and
re-read: a failure leaves no DST that looks complete.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import hub, quant
from .checkpoint import PICKLE_SUFFIXES, SAFETENSORS_DTYPES, SafetensorsFile, WeightStore, find_weight_files
from .checkpoint import global_names, layer_names
from .config import ModelConfig, read_config
from .errors import CheckpointError
from .progress import Progress

DTYPE_NAMES = {v: k for k, v in SAFETENSORS_DTYPES.items()}
INDEX = "model.safetensors.index.json"


@dataclass
class QuantizeSummary:
    src: Path
    dst: Path
    scheme: str
    granularity: str
    bytes_before: int = 0
    bytes_after: int = 0
    seconds: float = 0.0
    quantized: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    copied_files: list[str] = field(default_factory=list)
    errors: dict[str, dict] = field(default_factory=dict)  # per quantized weight: rel_frobenius, max_abs


def linear_weight_names(cfg) -> list[str]:
    """On-disk names of every weight the scheme may quantize: the layers' linears and the untied LM head."""
    names = []
    for i in range(cfg.n_layers):
        ln = layer_names(cfg, i)
        names += [ln[k] for k in ("q", "k", "v", "o", "gate", "up", "down")]
    if not cfg.tied_embeddings:
        names.append(global_names(cfg)["head"])
    return names


def _skip_patterns(skip, cfg) -> tuple[list[str], list[str]]:
    """The skip entries as name patterns, and notes on entries that need none (lm_head of a tied model)."""
    pats, notes = [], []
    for s in skip or []:
        s = s.strip()
        if not s:
            continue
        if s == "lm_head" and cfg.tied_embeddings:
            notes.append("skip 'lm_head': this model's LM head is its embedding (tied), which is never quantized; "
                         "nothing to skip")
        elif s == "lm_head":  # the LM head under either layout's name
            pats.append(global_names(cfg)["head"][: -len(".weight")])
        else:
            pats.append(s[: -len(".weight")] if s.endswith(".weight") else s)
    return pats, notes


def _write_safetensors(path: Path, plan: list[tuple[str, torch.dtype, tuple[int, ...]]], produce, written=None) -> int:
    """Write a safetensors file whose tensors (name, dtype, shape) are produced one at a time by produce(name);
    written(name), if given, runs once each tensor is on disk."""
    header, offset = {}, 0
    for name, dtype, shape in plan:
        n = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
        header[name] = {"dtype": DTYPE_NAMES[dtype], "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    header["__metadata__"] = {"format": "pt"}
    blob = json.dumps(header, separators=(",", ":")).encode("utf-8")
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for name, dtype, shape in plan:
            t = produce(name)
            if t.dtype != dtype or tuple(t.shape) != tuple(shape):
                raise AssertionError(f"{name}: planned {dtype} {shape}, produced {t.dtype} {tuple(t.shape)}")
            if t.numel():
                f.write(memoryview(t.contiguous().reshape(-1).view(torch.uint8).numpy()))
            del t
            if written is not None:
                written(name)
    return 8 + len(blob) + offset


def _scale_shape(shape: tuple[int, int], granularity: str) -> tuple[int, ...]:
    N, K = shape
    return (N,) if granularity == "channel" else (math.ceil(N / quant.BLOCK), math.ceil(K / quant.BLOCK))


@dataclass
class QuantizePlan:
    """What quantize_checkpoint will write, decided (every input checked) before anything is written."""
    src: Path
    dst: Path              # as given
    target: Path           # the directory written: DST through symlinks
    scheme: str
    granularity: str
    cfg: ModelConfig
    files: list[Path]      # the source's safetensors files
    targets: set[str]      # on-disk names of the weights to quantize (before skip)
    ignored: list[str]     # their prefixes that skip leaves unquantized
    notes: list[str]       # skip entries that needed nothing (lm_head of a tied model)


def check_destination(src: Path, dst: Path, force: bool) -> Path:
    """The directory DST names (through symlinks), once writing or replacing it can lose nothing: refused when it
    is SRC, contains SRC or lies inside it (by path, through symlinks, or as the same directory under another
    mount), is not a directory, exists without force, or is a non-empty directory holding no config.json."""
    try:
        real_src, target = src.resolve(), dst.resolve()
    except (OSError, RuntimeError) as e:  # a symlink loop
        raise CheckpointError(f"{dst}: cannot resolve the path ({e})") from None
    if target.exists() and any(os.path.samefile(target, p) for p in (real_src, *real_src.parents)):
        raise CheckpointError(f"{dst}: the destination must not be the source or contain it (replacing it would "
                              f"delete {src})")
    if any(p.exists() and os.path.samefile(p, real_src) for p in target.parents):
        raise CheckpointError(f"{dst}: the destination must not be the source or inside it")
    if target.exists():
        if not target.is_dir():
            raise CheckpointError(f"{dst}: exists and is not a directory")
        if not force:
            raise CheckpointError(f"{dst}: already exists (pass --force to replace it)")
        if not (target / "config.json").is_file() and any(target.iterdir()):
            raise CheckpointError(f"{dst}: holds files but no config.json; --force replaces only a checkpoint "
                                  f"directory or an empty one")
    else:
        existing = next(p for p in target.parents if p.exists())
        if not existing.is_dir():
            raise CheckpointError(f"{dst}: cannot be created: {existing} is not a directory")
    return target


def plan_quantize(src, dst, scheme: str = "int8", granularity: str = "channel", skip=(),
                  force: bool = False, revision: str | None = None) -> QuantizePlan:
    """Check every input of quantize_checkpoint and decide what it writes; writes nothing (SRC, a Hugging Face repo
    id, may be downloaded: hub.resolve). Raises CheckpointError/ConfigError/ValueError with a message naming the
    problem."""
    quant.check_scheme(scheme, granularity)
    src, dst = hub.resolve(src, revision), Path(dst)
    if not src.is_dir():
        raise CheckpointError(f"{src}: not a directory (expected a checkpoint directory or a Hugging Face repo "
                              f"id, ORG/NAME)")
    cfg = read_config(src)
    if "quantization_config" in cfg.raw:
        raise CheckpointError(f"{src}: already quantized (config.json has a quantization_config); quantize the "
                              f"original checkpoint instead")
    files = find_weight_files(src)  # refuses pickle-only directories
    target = check_destination(src, dst, force)
    store = WeightStore(src)  # validates every header and the tensor name sets
    targets = set(linear_weight_names(cfg))
    missing = sorted(n for n in targets if n not in store)
    if missing:
        raise CheckpointError(f"{src}: config.json's layout expects {missing[0]!r} (and {len(missing) - 1} more), "
                              f"which the weights do not have")
    patterns, notes = _skip_patterns(skip, cfg)
    ignored = []
    for name in sorted(targets):
        prefix = name[: -len(".weight")]
        if quant.is_ignored(prefix, patterns):
            ignored.append(prefix)
        elif store.entry(name).dtype not in (torch.float32, torch.bfloat16, torch.float16):
            raise CheckpointError(f"{src}: {name!r} is stored as {store.entry(name).dtype}; expected a float weight")
    for p in patterns:
        if not any(quant.is_ignored(n[: -len(".weight")], [p]) for n in targets):
            head = "" if cfg.tied_embeddings else "lm_head, "
            raise ValueError(f"skip: {p!r} matches no quantizable weight (e.g. {head}"
                             f"{sorted(targets)[0][: -len('.weight')]}, or a glob such as '*.blocks.0.*')")
    return QuantizePlan(src, dst, target, scheme, granularity, cfg, files, targets, ignored, notes)


def quantize_checkpoint(src, dst, scheme: str = "int8", granularity: str = "channel", skip=(), force: bool = False,
                        measure_error: bool = False, progress: bool = True,
                        revision: str | None = None) -> QuantizeSummary:
    """Quantize checkpoint SRC (a directory, or a Hugging Face repo id at `revision`) into DST; returns what was
    done. Raises CheckpointError/ConfigError/ValueError with a message naming the problem, before writing anything
    when an input is wrong."""
    return write_quantized(plan_quantize(src, dst, scheme, granularity, skip, force, revision), measure_error,
                           progress)


def _unused_name(target: Path, kind: str) -> Path:
    """A free hidden name beside target for a temporary directory (an existing one is never reused)."""
    n = 0
    while os.path.lexists(path := target.parent / f".{target.name}.{kind}-{os.getpid()}{f'-{n}' if n else ''}"):
        n += 1
    return path


def _nonfinite_error(path: Path, name: str, t: torch.Tensor) -> CheckpointError | None:
    at = quant.nonfinite_at(t) if t.is_floating_point() else None
    if at is None:
        return None
    return CheckpointError(f"{path}: tensor {name!r} holds {float(t[at])} at {list(at)}; a checkpoint with inf or "
                           f"NaN weights cannot be quantized")


def write_quantized(plan: QuantizePlan, measure_error: bool = False, progress: bool = True) -> QuantizeSummary:
    """Write the planned checkpoint into a fresh directory beside DST, renamed into place once every file is
    written and re-read: a failure leaves nothing behind (nor the parent directories this run created), and an
    existing DST stays untouched until the new one is complete."""
    target, scheme, granularity, ignored = plan.target, plan.scheme, plan.granularity, set(plan.ignored)
    quantize = {n for n in plan.targets if n[: -len(".weight")] not in ignored}
    summary = QuantizeSummary(plan.src, plan.dst, scheme, granularity, ignored=list(plan.ignored),
                              bytes_before=sum(p.stat().st_size for p in plan.files))
    created = [p for p in (target.parent, *target.parent.parents) if not p.exists()]  # deepest first
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        _remove_empty(created)
        raise CheckpointError(f"{target.parent}: cannot create ({e.strerror})") from None
    tmp = _unused_name(target, "partial")
    t0 = time.perf_counter()
    bar = None
    try:
        tmp.mkdir()
        total = sum(len(SafetensorsFile(p).entries) for p in plan.files)
        if progress:  # a bar on a terminal; a few plain lines on a pipe or in a log
            bar = Progress(total, "quantize", "tensor")
        weight_map = {}
        for path in plan.files:
            sf = SafetensorsFile(path)
            out = []
            for name, e in sf.entries.items():
                if name in quantize:
                    out.append((name, quant.SCHEMES[scheme], e.shape))
                    out.append((name[: -len(".weight")] + ".weight_scale", torch.float32,
                                _scale_shape(e.shape, granularity)))
                else:
                    out.append((name, e.dtype, e.shape))
            pending: dict[str, torch.Tensor] = {}

            def produce(name, sf=sf, path=path):
                if name in pending:
                    return pending.pop(name)
                t = sf.tensor(name)
                if name in quantize:
                    try:
                        q, s = quant.quantize_weight(t, scheme, granularity)
                    except ValueError as e:
                        raise _nonfinite_error(path, name, t) or CheckpointError(f"{path}: {name!r}: {e}") from None
                    prefix = name[: -len(".weight")]
                    pending[prefix + ".weight_scale"] = s
                    summary.quantized.append(prefix)
                    if measure_error:
                        summary.errors[prefix] = quant.weight_error(t, q, s, granularity)
                    t = q
                elif (err := _nonfinite_error(path, name, t)) is not None:
                    raise err
                if bar is not None:
                    bar.update(1, path.name)
                return t

            def written(name, sf=sf):  # the source bytes of a written tensor leave resident memory
                if name in sf.entries:
                    sf.release(name)

            summary.bytes_after += _write_safetensors(tmp / path.name, out, produce, written)
            weight_map.update({name: path.name for name, _, _ in out})
            sf.close()
            del sf, produce, written
        if (plan.src / INDEX).is_file():
            index = json.loads((plan.src / INDEX).read_text(encoding="utf-8"))
            index["weight_map"] = dict(sorted(weight_map.items()))
            index.setdefault("metadata", {})["total_size"] = summary.bytes_after
            (tmp / INDEX).write_text(json.dumps(index, indent=2) + "\n")
        raw = dict(plan.cfg.raw)
        raw["quantization_config"] = quant.scheme_config(scheme, granularity, summary.ignored)
        (tmp / "config.json").write_text(json.dumps(raw, indent=2) + "\n")
        weights = {p.name for p in plan.files} | {INDEX, "config.json"}
        for p in sorted(plan.src.iterdir()):
            if p.is_file() and p.name not in weights and p.suffix not in PICKLE_SUFFIXES \
                    and not p.name.endswith(".safetensors"):
                shutil.copy2(p, tmp / p.name)  # tokenizer, generation config, ...: copied as data, never run
                summary.copied_files.append(p.name)
        WeightStore(tmp)  # re-read every header we wrote before declaring success
        _move_into_place(tmp, target)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        _remove_empty(created)
        if isinstance(e, OSError):
            raise CheckpointError(f"{plan.dst}: cannot write the quantized checkpoint ({e.strerror or e}); "
                                  f"nothing was left behind") from None
        raise
    finally:
        if bar is not None:
            bar.close()
    summary.seconds = time.perf_counter() - t0
    return summary


def _remove_empty(dirs: list[Path]) -> None:
    """Remove the directories this run created (deepest first), stopping at the first that is not empty."""
    for p in dirs:
        try:
            p.rmdir()
        except OSError:
            return


def _move_into_place(tmp: Path, target: Path) -> None:
    """Rename the finished tmp to target; an existing target is set aside first, and restored if the rename fails."""
    if not target.exists():
        tmp.rename(target)
        return
    old = _unused_name(target, "old")
    target.rename(old)
    try:
        tmp.rename(target)
    except OSError:
        old.rename(target)
        raise
    shutil.rmtree(old, ignore_errors=True)


DEFAULT_PROMPTS = ["In the beginning", "The quick brown fox jumps over the lazy dog.", "def main():\n    return 0",
                   "1, 2, 3, 5, 8, 13"]


def report_prompts(src, cfg: ModelConfig, texts=()) -> list[list[int]]:
    """Token ids for logits_agreement: the texts (default: four built-in prompts) through SRC's tokenizer, or seeded
    random ids when SRC has none and no texts are given. ValueError for texts SRC cannot encode: called before
    anything is written."""
    from .tokenizer import load_tokenizer

    tok = load_tokenizer(src)
    if tok is None:
        if texts:
            raise ValueError(f"{src} has no tokenizer (tokenizer.json or tokenizer.model) to encode text prompts "
                             f"(--prompt, --prompts-file); without them the report compares random token ids")
        g = torch.Generator().manual_seed(0)
        return [torch.randint(0, cfg.vocab_size, (32,), generator=g).tolist() for _ in range(4)]
    batch = []
    for text in texts or DEFAULT_PROMPTS:
        ids = tok.encode(text, add_special_tokens=True)
        if not ids or len(ids) > cfg.max_sequence_length:
            raise ValueError(f"prompt {text[:40]!r}: {len(ids)} tokens (expected 1 to the model's maximum length, "
                             f"{cfg.max_sequence_length})")
        batch.append(ids)
    return batch


def _load_for_forward(path, device):
    """The model at path; its forward never uses the mask token, so a checkpoint that names none loads too."""
    from .api import load
    from .tokenizer import load_tokenizer

    tok = load_tokenizer(path)
    named = read_config(path).mask_token_id is not None or (tok is not None and tok.mask_token_id is not None)
    return load(path, device=device, mask_token_id=None if named else 0)


@torch.inference_mode()
def logits_agreement(src, dst, prompts: list, device="cpu") -> dict:
    """Top-1 agreement and relative logit error of the quantized model DST against the original SRC on the given
    prompts (texts, or token-id lists). The two models are loaded one after the other, never together."""

    def run(path):
        m = _load_for_forward(path, device)
        batch = [m.encode_prompt(p) if isinstance(p, str) else list(p) for p in prompts]
        outs = [m.forward(torch.tensor([ids], dtype=torch.long)).float()[0] for ids in batch]
        del m
        return outs

    ref = run(src)
    got = run(dst)
    agree = sum(int((a.argmax(-1) == b.argmax(-1)).sum()) for a, b in zip(ref, got))
    count = sum(a.shape[0] for a in ref)
    num = math.sqrt(sum(float((a - b).pow(2).sum()) for a, b in zip(ref, got)))
    den = math.sqrt(sum(float(a.pow(2).sum()) for a in ref))
    return {"positions": count, "top1_agreement": agree / max(count, 1), "rel_logit_error": num / max(den, 1e-30)}
