"""The quantized CUDA GEMMs (csrc/cuda/gemm_sm80.cu) as ops: weights in the kernels' layout, and the linear
x -> quantize_rows -> gemm (W8A8 INT8 `gemm_w8a8`, W8A8 FP8 `gemm_fp8`). CUDA tensors run _C_cuda; CPU tensors run
the same kernels on the CUDA emulator (ops.cuda.emulated())."""
from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass

import torch

from . import cuda as _cuda

KIND_OF = {torch.int8: "s8", torch.float8_e4m3fn: "e4m3"}
KERNEL_OF = {"s8": "gemm_w8a8", "e4m3": "gemm_fp8"}
EMULATED_SMS = 132  # the emulator's device is shaped like an H200


@dataclass(frozen=True, eq=False)
class GemmWeight:
    """A quantized weight in the CUDA GEMM's layout: q [N, Kp] int8 (s8) or uint8 holding e4m3 bits, K zero-padded
    to Kp, a multiple of 32; scale float32: [N] per channel, [1] per tensor, [ceil(N/128), ceil(K/128)] block128."""
    q: torch.Tensor
    scale: torch.Tensor
    scale_kind: str
    kind: str
    N: int
    K: int

    @property
    def nbytes(self) -> int:
        return self.q.numel() * self.q.element_size() + self.scale.numel() * 4


def pack_weight(q: torch.Tensor, scale: torch.Tensor, granularity: str, device: torch.device | str) -> GemmWeight:
    """q [N, K] int8 or float8_e4m3fn (any device), scale per `granularity` ('channel', 'tensor', 'block128') ->
    GemmWeight on `device`, one byte per weight (plus K padding to 32): nothing is dequantized."""
    if q.dim() != 2 or q.dtype not in KIND_OF:
        raise ValueError(f"weight: expected a 2-D int8 or float8_e4m3fn tensor, got {q.dtype} {tuple(q.shape)}")
    kind = KIND_OF[q.dtype]
    if granularity not in ("channel", "tensor", "block128") or (granularity == "block128" and kind != "e4m3"):
        raise ValueError(f"granularity {granularity!r} has no {kind} CUDA GEMM (channel or tensor; block128 for fp8)")
    N, K = q.shape
    Kp = (K + 31) // 32 * 32
    device = torch.device(device)
    bytes_dtype = torch.int8 if kind == "s8" else torch.uint8
    out = torch.zeros(N, Kp, dtype=bytes_dtype, device=device)
    out[:, :K].copy_(q.view(bytes_dtype))
    s = torch.as_tensor(scale).to(device=device, dtype=torch.float32)
    want = {"channel": (N,), "tensor": (1,), "block128": (-(-N // 128), -(-K // 128))}[granularity]
    s = s.reshape(want).contiguous()
    return GemmWeight(out, s, granularity, kind, N, K)


_cpu_layouts: dict[int, GemmWeight] = {}


def from_cpu_weight(w, scale_kind: str = "channel") -> GemmWeight:
    """The GEMM layout of an ops.Int8Weight / ops.Fp8Weight (the CPU kernels' packing), made once per weight: what
    a CPU model's linear runs inside ops.cuda.emulated()."""
    key = id(w)
    got = _cpu_layouts.get(key)
    if got is None:
        got = pack_weight(w.weight(), w.scale, scale_kind, "cpu")
        _cpu_layouts[key] = got
        weakref.finalize(w, _cpu_layouts.pop, key, None)
    return got


_workspaces: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
_ws_lock = threading.Lock()


def _workspace(device: torch.device, stream: int, nbytes: int, ncounters: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Split-K scratch per (device, stream), grown as needed; the kernel leaves its counters at zero."""
    key = (str(device), stream)
    with _ws_lock:
        ws, cnt = _workspaces.get(key, (None, None))
        if ws is None or ws.numel() < nbytes or cnt.numel() < ncounters:
            ws = torch.empty(max(nbytes, 16, 0 if ws is None else ws.numel()), dtype=torch.uint8, device=device)
            cnt = torch.zeros(max(ncounters, 1, 0 if cnt is None else cnt.numel()), dtype=torch.int32, device=device)
            _workspaces[key] = (ws, cnt)
        return ws, cnt


def _sms(device: torch.device) -> int:
    if device.type == "cpu":
        return EMULATED_SMS
    return torch.cuda.get_device_properties(device).multi_processor_count


def quantize_rows(x: torch.Tensor, kind: str, Kp: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """x [M, K] -> (q [M, Kp] int8 or uint8 e4m3 bits, scale [M] float32), the kernel the GEMM linear runs first."""
    M, K = x.shape
    Kp = Kp or (K + 31) // 32 * 32
    q = torch.empty(M, Kp, dtype=torch.int8 if kind == "s8" else torch.uint8, device=x.device)
    scale = torch.empty(M, dtype=torch.float32, device=x.device)
    with _cuda._OnDevice(x.device) as (stream, index):
        _cuda._module(x.device).quantize_rows(x, q, scale, kind, stream, index)
    return q, scale


def fp8_weight_only(device: torch.device) -> bool:
    """Whether e4m3 weights run weight-only here (16-bit activations, weights widened in registers): GPUs before
    sm_89 have no e4m3 mma.sync. The emulator models an sm_90 GPU (W8A8 FP8) unless told otherwise."""
    return device.type == "cuda" and torch.cuda.get_device_capability(device) < (8, 9)


def linear(x: torch.Tensor, w: GemmWeight, out_dtype: torch.dtype | None = None, splits: int | None = None,
           weight_only: bool | None = None) -> torch.Tensor:
    """x [..., K] float -> [..., N] in out_dtype (default: x's dtype if 16-bit, else float32; float32, bfloat16 or
    float16): activations quantized per token,
    the quantized GEMM with the scales applied in its epilogue. For e4m3 weights with `weight_only` (default: on GPUs
    before sm_89) the activations stay 16-bit and the weights are widened in registers instead."""
    if x.shape[-1] != w.K:
        raise ValueError(f"x: last dimension {x.shape[-1]} does not match the weight's K = {w.K}")
    if x.device != w.q.device:
        raise ValueError(f"x is on {x.device} but the weight is on {w.q.device}")
    out_dtype = out_dtype or (x.dtype if x.dtype in (torch.bfloat16, torch.float16) else torch.float32)
    if out_dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise ValueError(f"out_dtype: the GEMM writes float32, bfloat16 or float16, got {out_dtype}")
    x2 = x.reshape(-1, w.K)
    if x2.stride(-1) != 1 or x2.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        x2 = x2.contiguous().to(torch.float32 if x2.dtype not in (torch.bfloat16, torch.float16) else x2.dtype)
    M, Kp = x2.shape[0], w.q.shape[1]
    mod = _cuda._module(x.device)
    if weight_only is None:
        weight_only = w.kind == "e4m3" and fp8_weight_only(x.device)
    if weight_only:
        if w.kind != "e4m3":
            raise ValueError("weight_only: the weight-only path is for e4m3 weights")
        a = x2 if x2.dtype in (torch.bfloat16, torch.float16) else x2.to(torch.bfloat16)
        if (M > 1 and a.stride(0) % 8) or a.data_ptr() % 16:  # the kernel's 16-byte row loads: a padded copy
            buf = torch.zeros(M, (w.K + 7) // 8 * 8, dtype=a.dtype, device=a.device)
            buf[:, :w.K] = a
            a = buf[:, :w.K]
        xs = None
    else:
        a, xs = quantize_rows(x2, w.kind, Kp)
    out = torch.empty(M, w.N, dtype=out_dtype, device=x.device)
    with _cuda._OnDevice(x.device) as (stream, index):
        n_splits = splits if splits else mod.gemm_splits(M, w.N, Kp, _sms(x.device))
        ws, cnt = _workspace(x.device, stream, mod.gemm_workspace_bytes(M, w.N, n_splits), mod.gemm_counters(M, w.N))
        mod.gemm(w.kind, a, w.q, xs, w.scale, w.scale_kind, out, n_splits, ws, cnt, stream, index)
    return out.reshape(*x.shape[:-1], w.N)
