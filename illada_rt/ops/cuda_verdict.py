"""The first-use verdict on the CUDA kernels of one GPU: the self-check (ops/cuda_selfcheck.py) runs once in a child
process, and its verdict is cached per GPU name, compute capability, driver, and illada-rt build in the user's cache
directory (`$ILLADA_RT_CACHE_DIR`, else `$XDG_CACHE_HOME/illada-rt`, else `~/.cache/illada-rt`), file
`cuda-self-check.json`. A kernel that fails stays off on that GPU, said once, in one line on stderr.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import torch

CACHE_FILE = "cuda-self-check.json"
CHILD_TIMEOUT_S = 600

_memory: dict[str, dict] = {}
_said: set[str] = set()
_lock = threading.Lock()


def cache_path() -> Path:
    root = os.environ.get("ILLADA_RT_CACHE_DIR")
    if not root:
        xdg = os.environ.get("XDG_CACHE_HOME")
        root = str(Path(xdg) / "illada-rt") if xdg else str(Path.home() / ".cache" / "illada-rt")
    return Path(root) / CACHE_FILE


def identity(device: torch.device, module) -> dict:
    """What the verdict depends on: the GPU, its compute capability, the driver, and this build of the kernels."""
    from .. import __version__

    index = device.index if device.index is not None else torch.cuda.current_device()
    major, minor = torch.cuda.get_device_capability(index)
    try:
        st = Path(module.__file__).stat()
        build = f"{st.st_size}-{int(st.st_mtime)}"
    except (OSError, AttributeError, TypeError):
        build = "unknown"
    return {"gpu": torch.cuda.get_device_name(index), "sm": major * 10 + minor, "driver": module.driver_version(),
            "illada_rt": __version__, "build": build, "index": index}


def _key(ident: dict) -> str:
    return json.dumps({k: v for k, v in ident.items() if k != "index"}, sort_keys=True)


def run_child(index: int) -> dict:
    """The self-check in a child process (a kernel that faults must not take this process down)."""
    cmd = [sys.executable, "-m", "illada_rt.ops.cuda_selfcheck", "--device", f"cuda:{index}", "--json"]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=CHILD_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return {"kernels": {}, "checks": {"child": {"ok": False, "detail": f"timed out after {CHILD_TIMEOUT_S} s"}}}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if lines:
        try:
            return json.loads(lines[-1])
        except json.JSONDecodeError:
            pass
    tail = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])
    return {"kernels": {}, "checks": {"child": {"ok": False, "detail": f"exit status {proc.returncode}: {tail}"}}}


def _read_cache(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_cache(path: Path, key: str, verdict: dict) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        data = _read_cache(path)
        data[key] = verdict
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only home: the check reruns next time, nothing else changes


def verdict(device: torch.device, module, kernels: tuple[str, ...]) -> dict:
    """{"kernels": {name: passed}, "checks": {...}, "gpu": ..., "source": "memory"|"cache"|"run"} for `device`."""
    ident = identity(device, module)
    key = _key(ident)
    with _lock:
        if key in _memory:
            return _memory[key]
        path = cache_path()
        cached = _read_cache(path).get(key)
        if cached is not None:
            result = dict(cached, source="cache")
        else:
            where = f"{ident['gpu']} (sm_{ident['sm']})"
            print(f"illada-rt: checking the CUDA kernels on {where} once (about a minute; the verdict is cached "
                  f"in {path})", file=sys.stderr)
            child = run_child(ident["index"])
            result = {"kernels": child.get("kernels", {}), "checks": child.get("checks", {}), "gpu": where}
            _write_cache(path, key, result)
            result = dict(result, source="run")
        result["kernels"] = {k: bool(result.get("kernels", {}).get(k, False)) for k in kernels}
        _memory[key] = result
        failed = sorted(k for k, ok in result["kernels"].items() if not ok)
        if failed and key not in _said:
            _said.add(key)
            print(f"illada-rt: CUDA kernel(s) {', '.join(failed)} failed their self-check on {result.get('gpu')}; "
                  f"the PyTorch path runs instead (details: illada-rt info)", file=sys.stderr)
        return result


def forget() -> None:
    """Drop the in-process verdicts (tests)."""
    with _lock:
        _memory.clear()
        _said.clear()
