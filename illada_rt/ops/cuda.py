"""The CUDA kernels (`_C_cuda`) and the rule that decides when they run.

By default a kernel runs on a GPU once it has passed its first-use self-check there: the first time a CUDA kernel
is wanted on a GPU, a child process runs a short known-answer check of every kernel and of the fragment probes
(ops/cuda_selfcheck.py); the verdict is cached per GPU, compute capability, driver and build (ops/cuda_verdict.py).
A kernel that fails keeps the PyTorch reference path on that GPU, said once in one line; `illada-rt info` and
`illada_rt.capabilities()` report the verdicts. `ILLADA_RT_CUDA_KERNELS` overrides the rule:

- `verified` (default): the kernels that passed the self-check on this GPU;
- `all`: every compiled kernel, unchecked (what the GPU tests and benches use);
- `none`: none;
- a comma-separated list of kernel names (`attention,sample_tokens`), unchecked.

`ILLADA_RT_KERNELS=reference` turns every kernel off, CUDA ones included. A kernel that is asked for by name or by
`all` on a GPU it was not compiled for raises "not compiled for sm_XX"; under `verified` it quietly falls back.

Without a GPU, `emulated()` runs the same CUDA kernels on CPU tensors through the CUDA emulator (`_C_cuda_emu`, built
from the same .cu sources as host C++, with race, initialization, cp.async and bounds checks):

    with illada_rt.ops.cuda.emulated() as emu:
        model.generate(...)            # a CPU model: every attention, sampling and selection call runs a CUDA kernel
    emu.launches                       # {"attention": 96, "sample_tokens": 24, "select_transfer": 24}
"""
from __future__ import annotations

import contextlib
import contextvars
import os
from typing import Iterator

import torch

KERNELS = ("attention", "sample_tokens", "select_transfer", "gemm_w8a8", "gemm_fp8")

try:
    from .. import _C_cuda  # type: ignore[attr-defined]
except ImportError as _e:  # no CUDA compiler at build time
    _C_cuda = None
    _IMPORT_ERROR: str | None = str(_e)
else:
    _IMPORT_ERROR = None

try:
    from .. import _C_cuda_emu  # type: ignore[attr-defined]
except ImportError:  # an old build without the emulator
    _C_cuda_emu = None

_EMULATED: contextvars.ContextVar[bool] = contextvars.ContextVar("illada_rt_cuda_emulated", default=False)


class Emulation:
    """What `emulated()` yields. `launches`: kernel name -> emulated launches since the context was entered."""

    def __init__(self) -> None:
        self._start = _C_cuda_emu.launch_counts()

    @property
    def launches(self) -> dict[str, int]:
        now = _C_cuda_emu.launch_counts()
        return {k: n - self._start.get(k, 0) for k, n in sorted(now.items()) if n > self._start.get(k, 0)}


@contextlib.contextmanager
def emulated() -> Iterator[Emulation]:
    """Inside this context every op with a CUDA kernel (attention, sample_tokens, select_transfer, and the quantized
    linears: gemm_w8a8, gemm_fp8 with the e4m3 activations of sm_89+) runs that kernel
    through the CUDA emulator when its tensors are on the CPU, with the binding's argument checks and the emulator's
    checkers on (a fault raises _C_cuda_emu.EmulatedKernelError). Shapes a kernel does not take go where they go on a
    GPU: to the PyTorch reference. Nothing changes outside the context."""
    if _C_cuda_emu is None:
        raise RuntimeError("the CUDA emulator (_C_cuda_emu) is not built; reinstall illada-rt")
    token = _EMULATED.set(True)
    try:
        yield Emulation()
    finally:
        _EMULATED.reset(token)


def emulating() -> bool:
    """Whether the calling context is inside `emulated()`."""
    return _EMULATED.get()


def runs_kernel(name: str, *tensors: torch.Tensor) -> bool:
    """Whether CUDA kernel `name` runs for these tensors: all on one CUDA device where the kernel is enabled, or all
    on the CPU inside `emulated()`."""
    dev = tensors[0].device
    if not all(t.device == dev for t in tensors):
        return False
    if dev.type == "cpu":
        return emulating()
    return dev.type == "cuda" and kernel_enabled(name, dev)


def _module(device: torch.device):
    return _C_cuda_emu if device.type == "cpu" else _C_cuda


def requested() -> tuple[frozenset[str], bool]:
    """(kernels enabled by ILLADA_RT_CUDA_KERNELS, whether they were asked for explicitly); under `verified` every
    kernel, subject to its self-check on the GPU at hand."""
    raw = os.environ.get("ILLADA_RT_CUDA_KERNELS", "verified").strip().lower() or "verified"
    if raw == "verified":
        return frozenset(KERNELS), False
    if raw == "all":
        return frozenset(KERNELS), True
    if raw == "none":
        return frozenset(), True
    names = frozenset(n.strip() for n in raw.split(",") if n.strip())
    unknown = sorted(names - set(KERNELS))
    if unknown:
        raise ValueError(f"ILLADA_RT_CUDA_KERNELS: unknown kernel(s) {', '.join(unknown)}; expected verified, all, "
                         f"none or a comma-separated list of {', '.join(KERNELS)}")
    return names, True


def arch_covers(compiled: str, sm: int) -> bool:
    """Whether a module compiled for `compiled` (CMake's arch list, comma-separated: '80,90a') runs on a device of
    compute capability `sm` (major*10+minor). 'NN' and 'NN-virtual' carry PTX, which the driver compiles for NN and
    anything newer; 'NN-real' is machine code for major version NN/10 at minor >= NN%10; 'NNa' runs on NN only."""
    for entry in (e.strip().lower() for e in compiled.split(",")):
        digits = "".join(ch for ch in entry.split("-")[0] if ch.isdigit())
        if not digits:
            continue
        arch = int(digits)
        if entry.split("-")[0].endswith("a"):
            ok = sm == arch
        elif entry.endswith("-real"):
            ok = sm // 10 == arch // 10 and sm >= arch
        else:
            ok = sm >= arch
        if ok:
            return True
    return False


def _device_sm(device: torch.device) -> int:
    major, minor = torch.cuda.get_device_capability(device)
    return major * 10 + minor


def kernel_enabled(name: str, device: torch.device) -> bool:
    """Whether kernel `name` runs for tensors on CUDA `device` (see the module docstring for the rule)."""
    from . import kernel_mode

    if name not in KERNELS:
        raise ValueError(f"unknown CUDA kernel {name!r}")
    if _C_cuda is None or kernel_mode() == "reference":
        return False
    enabled, explicit = requested()
    if name not in enabled:
        return False
    sm = _device_sm(device)
    if not arch_covers(_C_cuda.compiled_archs(), sm):
        if explicit:
            raise RuntimeError(f"CUDA kernel {name}: _C_cuda was not compiled for sm_{sm} (compiled for "
                               f"{_C_cuda.compiled_archs()}); rebuild with "
                               f"SKBUILD_CMAKE_ARGS=-DCMAKE_CUDA_ARCHITECTURES={sm}")
        return False
    return explicit or passed_self_check(name, device)


def passed_self_check(name: str, device: torch.device) -> bool:
    """Whether kernel `name` passed its first-use self-check on CUDA `device` (run once, then cached)."""
    from . import cuda_verdict

    return cuda_verdict.verdict(device, _C_cuda, KERNELS)["kernels"].get(name, False)


def status() -> dict:
    """For illada_rt.capabilities(): per kernel, what runs on CUDA now and why; the self-check's verdicts on the
    first GPU when one is visible (running the check if it has not run there yet)."""
    out = {"module": _C_cuda is not None, "import_error": _IMPORT_ERROR,
           "emulator": _C_cuda_emu is not None}
    try:
        enabled, explicit = requested()
    except ValueError as e:
        enabled, explicit, out["setting_error"] = frozenset(), True, str(e)
    has_gpu = _C_cuda is not None and _C_cuda.device_count() > 0 and torch.cuda.is_available()
    verdict = None
    if has_gpu and not explicit and enabled:
        from . import cuda_verdict

        device = torch.device("cuda", 0)
        if arch_covers(_C_cuda.compiled_archs(), _device_sm(device)):
            verdict = cuda_verdict.verdict(device, _C_cuda, KERNELS)
            out["self_check"] = {k: v for k, v in verdict.items() if k != "source"}
    for name in KERNELS:
        if _C_cuda is None:
            out[name] = "reference (_C_cuda not built)"
        elif explicit:
            out[name] = ("_C_cuda (forced by ILLADA_RT_CUDA_KERNELS, unchecked)" if name in enabled
                         else "reference (ILLADA_RT_CUDA_KERNELS)")
        elif not has_gpu:
            out[name] = "reference; _C_cuda once it passes its self-check on a GPU (no GPU visible)"
        elif verdict is None:
            out[name] = "reference (_C_cuda not compiled for this GPU)"
        elif verdict["kernels"].get(name):
            out[name] = f"_C_cuda (passed its self-check on {verdict.get('gpu')})"
        else:
            out[name] = f"reference (failed its self-check on {verdict.get('gpu')})"
    return out


class _OnDevice:
    """Make `device` current for the call (kernels launch on the current device); yields (its current stream as an
    int, its index). For the CPU (the emulator) there is neither: (0, 0)."""

    def __init__(self, device: torch.device):
        self._cpu = device.type == "cpu"
        if self._cpu:
            self.index, self._ctx = 0, None
            return
        self.index = device.index if device.index is not None else torch.cuda.current_device()
        self._ctx = torch.cuda.device(self.index) if torch.cuda.current_device() != self.index else None

    def __enter__(self):
        if self._ctx is not None:
            self._ctx.__enter__()
        if self._cpu:
            return 0, 0
        return torch.cuda.current_stream(self.index).cuda_stream, self.index

    def __exit__(self, *exc):
        if self._ctx is not None:
            self._ctx.__exit__(*exc)
        return False


def attention_eligible(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> bool:
    """Shapes and layouts the CUDA attention kernel takes (anything else goes to the reference)."""
    return (q.dim() == 4 and k.dim() == 4 and v.dim() == 4 and q.dtype in (torch.bfloat16, torch.float16)
            and k.dtype == q.dtype and v.dtype == q.dtype and q.shape[-1] in (64, 128)
            and k.shape == v.shape and k.shape[0] == q.shape[0] and k.shape[-1] == q.shape[-1]
            and k.shape[1] >= 1 and q.shape[1] % k.shape[1] == 0)


def _aligned(t: torch.Tensor) -> torch.Tensor:
    """t itself when its layout suits the kernels' 16-byte loads, else a contiguous copy."""
    ok = (t.stride(-1) == 1 and t.data_ptr() % 16 == 0
          and all(t.shape[d] <= 1 or t.stride(d) % 8 == 0 for d in range(t.dim() - 1)))
    return t if ok else t.contiguous()


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask: torch.Tensor | None) -> torch.Tensor:
    """The CUDA kernel behind ops.attention: returns a [B, Hq, Tq, D] view of a [B, Tq, Hq, D] buffer."""
    q, k, v = _aligned(q), _aligned(k), _aligned(v)
    B, H, T, D = q.shape
    out = torch.empty(B, T, H, D, dtype=q.dtype, device=q.device).transpose(1, 2)
    km = None if key_mask is None else key_mask.to(torch.bool).contiguous()
    with _OnDevice(q.device) as (stream, index):
        _module(q.device).attention(q, k, v, out, km, D ** -0.5, stream, index)
    return out


def sample_tokens(logits: torch.Tensor, conf_dtype: torch.dtype = torch.float32, temperature: float = 0.0,
                  seed: int = 0, offset: int = 0, row_ids: torch.Tensor | None = None, margin: bool = False,
                  entropy: bool = False) -> tuple[torch.Tensor, ...]:
    """The CUDA sampling kernel: logits [..., V] -> token, confidence (+ margin, entropy when asked), shaped [...]."""
    rows = logits.reshape(-1, logits.shape[-1])
    if rows.stride(-1) != 1:
        rows = rows.contiguous()
    n, dev = rows.shape[0], logits.device
    token = torch.empty(n, dtype=torch.int64, device=dev)
    conf = torch.empty(n, dtype=conf_dtype, device=dev)
    mg = torch.empty(n, dtype=torch.float32, device=dev) if margin else None
    en = torch.empty(n, dtype=torch.float32, device=dev) if entropy else None
    rid = None if row_ids is None else row_ids.reshape(-1).to(device=dev, dtype=torch.int64).contiguous()
    with _OnDevice(dev) as (stream, index):
        _module(dev).sample_tokens(rows, token, conf, mg, en, float(temperature), int(seed) & (2**64 - 1),
                              int(offset) & (2**64 - 1), rid, stream, index)
    shape = logits.shape[:-1]
    outs = [token.reshape(shape), conf.reshape(shape)]
    outs += [t.reshape(shape) for t in (mg, en) if t is not None]
    return tuple(outs)


def select_transfer(confidence: torch.Tensor, x0: torch.Tensor, tokens: torch.Tensor, mask_id: int,
                    k: torch.Tensor | None = None, threshold: float | None = None,
                    transferred: torch.Tensor | None = None,
                    transfer_mask: torch.Tensor | None = None) -> None:
    """The CUDA selection kernel (in place on `tokens`); see _C_cuda.select_transfer."""
    kk = None if k is None else k.to(device=tokens.device, dtype=torch.int64).contiguous()
    with _OnDevice(tokens.device) as (stream, index):
        _module(tokens.device).select_transfer(confidence, x0, tokens, int(mask_id), kk, threshold, transferred, transfer_mask,
                                stream, index)


def select_eligible(confidence: torch.Tensor, tokens: torch.Tensor) -> bool:
    mod = _module(tokens.device)
    return (tokens.dim() == 2 and tokens.dtype == torch.int64 and confidence.dtype in (torch.float32, torch.float64)
            and mod is not None and tokens.shape[1] <= mod.select_max_block())
