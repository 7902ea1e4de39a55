"""The quantize handler: walk a checkpoint shard by shard and write its quantized copy.

Memory stays bounded by streaming: each output shard's safetensors header is planned from shapes and dtypes
alone, then tensors are read from the memory-mapped source, quantized and written one at a time, and each
written tensor's source pages are released (madvise), so the process holds about one source tensor and its
quantized form at once. Output goes
to a temporary directory beside DST that is renamed into place only when everything is written and re-read:
a failure leaves no DST that looks complete.
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

from . import quant
from .checkpoint import PICKLE_SUFFIXES, SAFETENSORS_DTYPES, SafetensorsFile, WeightStore, find_weight_files
from .checkpoint import global_names, layer_names
from .config import read_config
from .errors import CheckpointError

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


def _skip_patterns(skip, cfg) -> list[str]:
    pats = []
    for s in skip or []:
        s = s.strip()
        if not s:
            continue
        if s == "lm_head":  # the LM head under either layout's name
            pats.append(global_names(cfg)["head"][: -len(".weight")])
        else:
            pats.append(s[: -len(".weight")] if s.endswith(".weight") else s)
    return pats


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


def quantize_checkpoint(src, dst, scheme: str = "int8", granularity: str = "channel", skip=(), force: bool = False,
                        measure_error: bool = False, progress: bool = True) -> QuantizeSummary:
    """Quantize checkpoint directory SRC into DST; returns what was done. Raises CheckpointError/ConfigError/
    ValueError with a message naming the problem."""
    quant.check_scheme(scheme, granularity)
    src, dst = Path(src), Path(dst)
    if not src.is_dir():
        raise CheckpointError(f"{src}: not a directory (expected a Hugging Face checkpoint directory)")
    cfg = read_config(src)
    if "quantization_config" in cfg.raw:
        raise CheckpointError(f"{src}: already quantized (config.json has a quantization_config); quantize the "
                              f"original checkpoint instead")
    files = find_weight_files(src)  # refuses pickle-only directories
    if dst.resolve() == src.resolve() or src.resolve() in dst.resolve().parents:
        raise CheckpointError(f"{dst}: the destination must not be the source or inside it")
    if dst.exists() and not force:
        raise CheckpointError(f"{dst}: already exists (pass --force to replace it)")
    if dst.exists() and not dst.is_dir():
        raise CheckpointError(f"{dst}: exists and is not a directory")

    store = WeightStore(src)  # validates every header and the tensor name sets before anything is written
    targets = set(linear_weight_names(cfg))
    missing = sorted(n for n in targets if n not in store)
    if missing:
        raise CheckpointError(f"{src}: config.json's layout expects {missing[0]!r} (and {len(missing) - 1} more), "
                              f"which the weights do not have")
    patterns = _skip_patterns(skip, cfg)
    summary = QuantizeSummary(src, dst, scheme, granularity, bytes_before=sum(p.stat().st_size for p in files))
    for name in sorted(targets):
        prefix = name[: -len(".weight")]
        if quant.is_ignored(prefix, patterns):
            summary.ignored.append(prefix)
        elif store.entry(name).dtype not in (torch.float32, torch.bfloat16, torch.float16):
            raise CheckpointError(f"{src}: {name!r} is stored as {store.entry(name).dtype}; expected a float weight")
    ignored = set(summary.ignored)
    for p in patterns:
        if not any(quant.is_ignored(n[: -len(".weight")], [p]) for n in targets):
            raise ValueError(f"skip: {p!r} matches no quantizable weight (e.g. lm_head, "
                             f"{sorted(targets)[0][: -len('.weight')]}, or a glob such as '*.blocks.0.*')")

    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CheckpointError(f"{dst.parent}: cannot create ({e.strerror})") from None
    tmp = dst.parent / f".{dst.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    t0 = time.perf_counter()
    bar = None
    try:
        tmp.mkdir()
        total = sum(len(SafetensorsFile(p).entries) for p in files)
        if progress:
            from tqdm import tqdm
            bar = tqdm(total=total, unit="tensor", desc="quantize", dynamic_ncols=True)
        weight_map = {}
        for path in files:
            sf = SafetensorsFile(path)
            plan = []
            for name, e in sf.entries.items():
                if name in targets and name[: -len(".weight")] not in ignored:
                    plan.append((name, quant.SCHEMES[scheme], e.shape))
                    plan.append((name[: -len(".weight")] + ".weight_scale", torch.float32,
                                 _scale_shape(e.shape, granularity)))
                else:
                    plan.append((name, e.dtype, e.shape))
            pending: dict[str, torch.Tensor] = {}

            def produce(name, sf=sf):
                if name in pending:
                    return pending.pop(name)
                t = sf.tensor(name)
                if name in targets and name[: -len(".weight")] not in ignored:
                    q, s = quant.quantize_weight(t, scheme, granularity)
                    prefix = name[: -len(".weight")]
                    pending[prefix + ".weight_scale"] = s
                    summary.quantized.append(prefix)
                    if measure_error:
                        summary.errors[prefix] = quant.weight_error(t, q, s, granularity)
                    t = q
                if bar is not None:
                    bar.set_postfix_str(path.name)
                    bar.update(1)
                return t

            def written(name, sf=sf):  # the source bytes of a written tensor leave resident memory
                if name in sf.entries:
                    sf.release(name)

            summary.bytes_after += _write_safetensors(tmp / path.name, plan, produce, written)
            weight_map.update({name: path.name for name, _, _ in plan})
            sf.close()
            del sf, produce, written
        if (src / INDEX).is_file():
            index = json.loads((src / INDEX).read_text(encoding="utf-8"))
            index["weight_map"] = dict(sorted(weight_map.items()))
            index.setdefault("metadata", {})["total_size"] = summary.bytes_after
            (tmp / INDEX).write_text(json.dumps(index, indent=2) + "\n")
        raw = dict(cfg.raw)
        raw["quantization_config"] = quant.scheme_config(scheme, granularity, summary.ignored)
        (tmp / "config.json").write_text(json.dumps(raw, indent=2) + "\n")
        weights = {p.name for p in files} | {INDEX, "config.json"}
        for p in sorted(src.iterdir()):
            if p.is_file() and p.name not in weights and p.suffix not in PICKLE_SUFFIXES \
                    and not p.name.endswith(".safetensors"):
                shutil.copy2(p, tmp / p.name)  # tokenizer, generation config, ...: copied as data, never run
                summary.copied_files.append(p.name)
        WeightStore(tmp)  # re-read every header we wrote before declaring success
        if dst.exists():
            old = dst.parent / f".{dst.name}.old-{os.getpid()}"
            dst.rename(old)
            tmp.rename(dst)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(dst)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointError(f"{dst}: cannot write the quantized checkpoint ({e.strerror or e}); nothing was "
                              f"left behind") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        if bar is not None:
            bar.close()
    summary.seconds = time.perf_counter() - t0
    return summary


@torch.inference_mode()
def logits_agreement(src, dst, prompts: list, device="cpu") -> dict:
    """Top-1 agreement and relative logit error of the quantized model DST against the original SRC on the given
    prompts (texts, or token-id lists). The two models are loaded one after the other, never together."""
    from .api import load

    def run(path):
        m = load(path, device=device)
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
