"""Reading checkpoint directories: safetensors only, memory-mapped, validated before use.

The safetensors header is parsed and checked here (length, JSON, dtypes, shapes, offsets against the
file size) so a truncated or hostile file gives a clear CheckpointError instead of a crash. Tensors are
zero-copy views of a private (copy-on-write) memory map: nothing is read until a layer asks for it,
and nothing ever holds two full copies of the model. The store records which tensors were read, so the
model loader can refuse tensors that belong to nothing it built.
"""
from __future__ import annotations

import ctypes
import json
import mmap
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import torch

from .config import LAYOUT_LLADA, ModelConfig
from .errors import CheckpointError

MAX_HEADER_BYTES = 100 * 1024 * 1024  # safetensors' own limit
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")

SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}
# What an unquantized weight may be stored as (the model converts it to its compute dtype).
FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)


def has_nonfinite(t: torch.Tensor) -> bool:
    """True when t holds a NaN or an infinity. One read pass and no temporary: for 16/32/64-bit floats aminmax
    (which propagates NaN); for 8-bit floats, whose NaN (e4m3fn: S.1111.111) and inf/NaN (e5m2: exponent all ones)
    are the largest bit patterns of either sign, the largest byte read as int8 (sign 0) and as uint8 (sign 1).
    A temporary per tensor would be left in the heap between the packed weights (1-3 GiB over an 8B model)."""
    if t.numel() == 0 or not t.is_floating_point():
        return False
    if t.dtype in (torch.float8_e4m3fn, torch.float8_e5m2):
        special = 0x7F if t.dtype == torch.float8_e4m3fn else 0x7C
        return int(t.view(torch.int8).max()) >= special or int(t.view(torch.uint8).max()) >= 0x80 | special
    lo, hi = torch.aminmax(t)
    return not bool(torch.isfinite(lo) & torch.isfinite(hi))


@dataclass(frozen=True)
class TensorEntry:
    file: Path
    dtype: torch.dtype
    shape: tuple[int, ...]
    begin: int   # absolute byte offset in the file
    end: int


class SafetensorsFile:
    """One validated, memory-mapped .safetensors file."""

    def __init__(self, path: Path):
        self.path = Path(path)
        try:
            size = self.path.stat().st_size
            with open(self.path, "rb") as f:
                head = f.read(8)
                if len(head) < 8:
                    raise CheckpointError(f"{self.path}: truncated safetensors file ({size} bytes, no header)")
                (n,) = struct.unpack("<Q", head)
                if n > MAX_HEADER_BYTES or n > size - 8:
                    raise CheckpointError(
                        f"{self.path}: corrupt safetensors header length {n} (file is {size} bytes)")
                header_bytes = f.read(n)
        except OSError as e:
            raise CheckpointError(f"{self.path}: cannot read ({e.strerror})") from None
        try:
            header = json.loads(header_bytes.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CheckpointError(f"{self.path}: safetensors header is not valid JSON ({e})") from None
        if not isinstance(header, dict):
            raise CheckpointError(f"{self.path}: safetensors header is not a JSON object")
        self.metadata = header.pop("__metadata__", None) or {}
        data_start = 8 + n
        self.entries: dict[str, TensorEntry] = {}
        for name, info in header.items():
            self.entries[name] = self._entry(name, info, data_start, size)
        self._size = size
        self._mm = None

    def _entry(self, name, info, data_start, size) -> TensorEntry:
        where = f"{self.path}: tensor {name!r}"
        if not isinstance(info, dict):
            raise CheckpointError(f"{where}: header entry is not an object")
        dt = info.get("dtype")
        if dt not in SAFETENSORS_DTYPES:
            raise CheckpointError(f"{where}: unsupported dtype {dt!r}")
        shape = info.get("shape")
        if not isinstance(shape, list) or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0
                                                  for s in shape):
            raise CheckpointError(f"{where}: invalid shape {shape!r}")
        offs = info.get("data_offsets")
        if (not isinstance(offs, list) or len(offs) != 2 or not all(isinstance(o, int) for o in offs)
                or not 0 <= offs[0] <= offs[1]):
            raise CheckpointError(f"{where}: invalid data_offsets {offs!r}")
        dtype = SAFETENSORS_DTYPES[dt]
        numel = 1
        for s in shape:
            numel *= s
        nbytes = numel * torch.empty((), dtype=dtype).element_size()
        if offs[1] - offs[0] != nbytes:
            raise CheckpointError(f"{where}: data_offsets span {offs[1] - offs[0]} bytes but shape {shape} "
                                  f"of {dt} needs {nbytes}")
        begin, end = data_start + offs[0], data_start + offs[1]
        if end > size:
            raise CheckpointError(f"{where}: data ends at byte {end} but the file has {size} bytes "
                                  f"(truncated file?)")
        return TensorEntry(self.path, dtype, tuple(shape), begin, end)

    def _map(self) -> mmap.mmap:
        if self._mm is None:
            with open(self.path, "rb") as f:
                # ACCESS_COPY: private mapping, so the tensor is writable without touching the file.
                self._mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
        return self._mm

    def release(self, name: str) -> None:
        """Drop this process's resident pages of one tensor's bytes (MADV_DONTNEED): a streaming reader stays at one
        tensor's worth of memory instead of growing to the whole file, and a weight the loader copied (packed,
        converted) is resident once, as the copy. Only pages wholly inside the tensor are dropped, never one it
        shares with a neighbour. The bytes are re-read from the file (or the page cache) if touched again."""
        if self._mm is None or not hasattr(self._mm, "madvise") or not hasattr(mmap, "MADV_DONTNEED"):
            return
        e = self.entries[name]
        page = mmap.PAGESIZE
        start, end = -(-e.begin // page) * page, (e.end // page) * page
        if end > start:
            self._mm.madvise(mmap.MADV_DONTNEED, start, end - start)

    def close(self) -> None:
        """Unmap the file now (tensors still viewing it keep the mapping alive until they go)."""
        if self._mm is not None:
            try:
                self._mm.close()
            except BufferError:  # exported views remain: they own the mapping now
                pass
            self._mm = None

    def mapped_range(self) -> tuple[int, int]:
        """(address, length) of the file's memory map: lets tests prove tensors are views, not copies."""
        buf = ctypes.c_char.from_buffer(self._map())
        try:
            return ctypes.addressof(buf), self._size
        finally:
            del buf

    def tensor(self, name: str) -> torch.Tensor:
        e = self.entries[name]
        if e.end == e.begin:
            return torch.empty(e.shape, dtype=e.dtype)
        self._map()
        count = (e.end - e.begin) // torch.empty((), dtype=e.dtype).element_size()
        flat = torch.frombuffer(self._mm, dtype=e.dtype, count=count, offset=e.begin)
        return flat.view(e.shape)


def refuse_pickle_only(where, names) -> None:
    """CheckpointError when the file names hold pickle weights and no safetensors file (a directory's, or a Hugging
    Face repo's before anything is downloaded)."""
    pickles = sorted(n for n in names if Path(n).suffix in PICKLE_SUFFIXES)
    if pickles and not any(n.endswith(".safetensors") for n in names):
        raise CheckpointError(
            f"{where}: only pickle weight files found ({', '.join(pickles)}); illada-rt loads safetensors only and "
            f"never unpickles. Convert the checkpoint to safetensors first.")


def find_weight_files(directory: Path) -> list[Path]:
    """The safetensors files of a checkpoint directory (single file or index + shards)."""
    d = Path(directory)
    if not d.is_dir():
        raise CheckpointError(f"{d}: not a directory")
    index = d / "model.safetensors.index.json"
    if index.is_file():
        try:
            data = json.loads(index.read_text(encoding="utf-8"))
            wm = data["weight_map"]
            if not isinstance(wm, dict) or not all(isinstance(v, str) for v in wm.values()):
                raise TypeError("weight_map must map tensor names to file names")
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
            raise CheckpointError(f"{index}: not a valid safetensors index ({e})") from None
        files = []
        for fname in dict.fromkeys(wm.values()):
            p = d / fname
            if Path(fname).name != fname or not fname.endswith(".safetensors"):
                raise CheckpointError(f"{index}: refusing shard name {fname!r} (must be a .safetensors file "
                                      f"inside the directory)")
            if not p.is_file():
                raise CheckpointError(f"{index}: shard {fname} is missing")
            files.append(p)
        return files
    single = d / "model.safetensors"
    if single.is_file():
        return [single]
    others = sorted(d.glob("*.safetensors"))
    if others:
        return others
    refuse_pickle_only(d, [p.name for p in d.iterdir()])
    raise CheckpointError(f"{d}: no model.safetensors or model.safetensors.index.json")


class WeightStore:
    """All tensors of a checkpoint by name, across shards; reads lazily from memory maps."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        self.files = [SafetensorsFile(p) for p in find_weight_files(self.directory)]
        self._where: dict[str, SafetensorsFile] = {}
        for f in self.files:
            for name in f.entries:
                if name in self._where:
                    raise CheckpointError(f"{self.directory}: tensor {name!r} appears in both "
                                          f"{self._where[name].path.name} and {f.path.name}")
                self._where[name] = f
        self.read: set[str] = set()  # names get() has returned

    def __contains__(self, name: str) -> bool:
        return name in self._where

    def names(self) -> list[str]:
        return list(self._where)

    def entry(self, name: str) -> TensorEntry:
        return self._where[name].entries[name]

    def get(self, name: str, shape: tuple[int, ...]) -> torch.Tensor:
        if name not in self._where:
            raise CheckpointError(f"{self.directory}: missing tensor {name!r}")
        e = self.entry(name)
        if e.shape != tuple(shape):
            raise CheckpointError(f"{self.directory}: tensor {name!r} has shape {list(e.shape)}, "
                                  f"expected {list(shape)} from config.json")
        self.read.add(name)
        return self._where[name].tensor(name)

    def release(self, name: str) -> None:
        """Drop the resident pages of tensor `name`'s bytes from the memory map (SafetensorsFile.release)."""
        self._where[name].release(name)

    def storage_dtype(self) -> torch.dtype | None:
        """The float dtype the model's tensors are stored in (quantization scales do not count)."""
        dts = {f.entries[n].dtype for f in self.files for n in f.entries if not n.endswith("_scale")}
        floats = [d for d in (torch.float32, torch.bfloat16, torch.float16) if d in dts]
        return floats[0] if len(floats) == 1 else (floats[0] if floats else None)


# Canonical per-layer parameter names -> on-disk names, per layout.
def layer_names(cfg: ModelConfig, i: int) -> dict[str, str]:
    if cfg.layout == LAYOUT_LLADA:
        b = f"model.transformer.blocks.{i}."
        return {"attn_norm": b + "attn_norm.weight", "q": b + "q_proj.weight", "k": b + "k_proj.weight",
                "v": b + "v_proj.weight", "o": b + "attn_out.weight", "ff_norm": b + "ff_norm.weight",
                "gate": b + "ff_proj.weight", "up": b + "up_proj.weight", "down": b + "ff_out.weight"}
    b = f"model.layers.{i}."
    return {"attn_norm": b + "input_layernorm.weight", "q": b + "self_attn.q_proj.weight",
            "k": b + "self_attn.k_proj.weight", "v": b + "self_attn.v_proj.weight",
            "o": b + "self_attn.o_proj.weight", "ff_norm": b + "post_attention_layernorm.weight",
            "gate": b + "mlp.gate_proj.weight", "up": b + "mlp.up_proj.weight", "down": b + "mlp.down_proj.weight"}


def layer_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    d, f, kv = cfg.d_model, cfg.mlp_hidden_size, cfg.kv_dim
    return {"attn_norm": (d,), "q": (d, d), "k": (kv, d), "v": (kv, d), "o": (d, d), "ff_norm": (d,),
            "gate": (f, d), "up": (f, d), "down": (d, f)}


def global_names(cfg: ModelConfig) -> dict[str, str]:
    if cfg.layout == LAYOUT_LLADA:
        return {"embed": "model.transformer.wte.weight", "final_norm": "model.transformer.ln_f.weight",
                "head": "model.transformer.ff_out.weight"}
    return {"embed": "model.embed_tokens.weight", "final_norm": "model.norm.weight", "head": "lm_head.weight"}


def check_layout_matches(cfg: ModelConfig, store: WeightStore) -> None:
    """Fail early, with a useful message, when the tensors do not belong to the config's layout."""
    g = global_names(cfg)
    if g["embed"] not in store:
        sample = ", ".join(sorted(store.names())[:5])
        raise CheckpointError(f"{store.directory}: config.json describes the {cfg.layout} layout but tensor "
                              f"{g['embed']!r} is missing (found e.g. {sample})")
    if not cfg.tied_embeddings and g["head"] not in store:
        raise CheckpointError(f"{store.directory}: missing tensor {g['head']!r} (config says the embeddings are "
                              f"not tied)")


def directory_size(directory: Path) -> int:
    return sum(os.path.getsize(p) for p in find_weight_files(Path(directory)))
