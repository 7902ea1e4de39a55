"""One Python function per op: the compiled kernel for the tensor's device when one exists and is
enabled, else the plain-PyTorch reference (ops/reference.py).

`ILLADA_RT_KERNELS=reference` forces the reference everywhere (read at call time, so tests and benches
can flip it).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch

from . import cuda as _cuda
from . import reference
from .memory import WeightArena, retain_freed_memory, round_up as _round_up, weight_memory  # noqa: F401

try:  # the compiled CPU kernels; absent only in a broken or source-only install
    from .. import _C  # type: ignore[attr-defined]
except ImportError as _e:  # pragma: no cover - exercised only without a build
    _C = None
    _C_IMPORT_ERROR = str(_e)
else:
    _C_IMPORT_ERROR = None

KERNEL_MODES = ("auto", "reference")


# os.environ's backing dict (CPython keeps the raw bytes there): read on every op, the variable may change at any
# time (tests and benches switch it), and a lookup there costs a tenth of os.environ.get's encode-and-decode.
_ENV_BYTES = getattr(os.environ, "_data", None)
_ENV_KEY = os.environ.encodekey("ILLADA_RT_KERNELS") if hasattr(os.environ, "encodekey") else None
_MODE_CACHE: dict = {}  # raw value -> parsed mode


def kernel_mode() -> str:
    raw = _ENV_BYTES.get(_ENV_KEY) if _ENV_KEY is not None else os.environ.get("ILLADA_RT_KERNELS")
    mode = _MODE_CACHE.get(raw)
    if mode is None:
        text = raw.decode() if isinstance(raw, bytes) else (raw or "")
        mode = text.strip().lower() or "auto"
        if mode not in KERNEL_MODES:
            raise ValueError(f"ILLADA_RT_KERNELS must be one of {', '.join(KERNEL_MODES)}, got {mode!r}")
        _MODE_CACHE[raw] = mode
    return mode


def use_cpu_kernel(*tensors: torch.Tensor) -> bool:
    if _C is None:
        return False
    for t in tensors:  # (a loop: a generator in all() costs more than the checks at a decoding step's sizes)
        if not t.is_cpu:
            return False
    return kernel_mode() == "auto"


def use_cuda_kernel(name: str, *tensors: torch.Tensor) -> bool:
    """Whether CUDA kernel `name` runs for these tensors: on one CUDA device where it is enabled, or on the CPU
    through the CUDA emulator inside ops.cuda.emulated() (rule in ops/cuda.py)."""
    return _cuda.runs_kernel(name, *tensors)


# The model-side ops run through torch (oneDNN/MKL on CPU, cuBLAS/cuDNN on GPU) until the fused kernels
# of the CPU and CUDA kernel work land; they keep their place here so callers never change.
rope_cos_sin = reference.rope_cos_sin


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """Rotate-half RoPE (reference.apply_rope), fused on AVX2 and AVX-512 CPUs: bit-identical to the reference in fp32 and
    bf16 (same roundings, no FMA). x [B, H, T, D]; the result is a [B, H, T, D] view of a [B, T, H, D] buffer, or
    `out` (x's shape and dtype; out=x rotates in place, which the model does: x was just written by its GEMM and is
    still in cache, where a fresh buffer would be fetched from memory before being written)."""
    if out is not None and (out.shape != x.shape or out.dtype != x.dtype or out.device != x.device):
        raise ValueError(f"out: expected {tuple(x.shape)} {x.dtype} on {x.device}, got {tuple(out.shape)} {out.dtype} "
                         f"on {out.device}")
    if (x.dim() == 4 and use_cpu_kernel(x, cos, sin) and cpu_isa() in ("avx2", "avx512", "amx")
            and x.dtype in (torch.float32, torch.bfloat16) and x.stride(-1) == 1 and x.shape[-1] % 2 == 0
            and cos.dtype == torch.float32 and sin.dtype == torch.float32 and cos.dim() in (2, 3)
            and (out is None or out.stride(-1) == 1)):
        B, H, T, D = x.shape
        if out is None:
            out = torch.empty(B, T, H, D, dtype=x.dtype).transpose(1, 2)
        _C.rope(x, cos.contiguous(), sin.contiguous(), out, _threads())
        return out
    rotated = reference.apply_rope(x, cos, sin)
    return rotated if out is None else out.copy_(rotated)


def _fused_rows_ok(*tensors: torch.Tensor) -> bool:
    """The fused bf16 kernels run on CPU with AVX2 or AVX-512, where they round exactly as the reference does; fp32
    stays on torch (the kernels' fp32 results differ in the last ulp, which the stored reference outputs would
    notice)."""
    return (use_cpu_kernel(*tensors) and cpu_isa() in ("avx2", "avx512", "amx")
            and all(t.dtype == torch.bfloat16 and t.stride(-1) == 1 for t in tensors))


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """LLaDA's RMSNorm (reference.rms_norm), fused for bf16 on CPU (bit-identical to the reference)."""
    if x.dim() >= 1 and x.shape[-1] and _fused_rows_ok(x, weight) and weight.is_contiguous():
        x2 = x if x.dim() >= 2 and x.is_contiguous() else _rows(x)  # the binding takes [..., D] rows as they are
        out = torch.empty_like(x2)
        _C.rms_norm(x2, weight, float(eps), out, _threads())
        return out if x2 is x else out.reshape(x.shape)
    return reference.rms_norm(x, weight, eps)


def add_rms_norm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float,
                 sum_out: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(x + residual, rms_norm(x + residual)): a block's residual add and the RMSNorm that follows it, in one pass for
    bf16 on CPU (bit-identical to the two reference ops: the sum is rounded as torch rounds it). sum_out (x's shape
    and dtype) receives the sum; the model passes the residual itself, the output its GEMM just wrote, which is still
    in cache where a fresh buffer would first be fetched from memory."""
    if sum_out is not None and (sum_out.shape != x.shape or sum_out.dtype != x.dtype or sum_out.device != x.device):
        raise ValueError(f"sum_out: expected {tuple(x.shape)} {x.dtype} on {x.device}, got {tuple(sum_out.shape)} "
                         f"{sum_out.dtype} on {sum_out.device}")
    if (x.dim() >= 2 and x.shape == residual.shape and x.shape[-1] and _fused_rows_ok(x, residual, weight)
            and weight.is_contiguous() and (sum_out is None or sum_out.is_contiguous())):
        # the binding views each operand's leading dimensions as rows: only strided slices need copying
        total = sum_out if sum_out is not None else torch.empty(x.shape, dtype=x.dtype)
        out = torch.empty(x.shape, dtype=x.dtype)
        _C.add_rms_norm(x if x.is_contiguous() else _rows(x), residual if residual.is_contiguous() else _rows(residual),
                        weight, float(eps), total, out, _threads())
        return total, out
    total = x + residual if sum_out is None else torch.add(x, residual, out=sum_out)
    return total, reference.rms_norm(total, weight, eps)


def _swiglu_kernel(g2: torch.Tensor, u2: torch.Tensor) -> torch.Tensor:
    out = torch.empty(g2.shape, dtype=g2.dtype)
    _C.swiglu(g2, u2, out, _threads())
    return out


_SWIGLU_KERNEL_WINS: dict = {}  # threads -> whether the fused kernel beat PyTorch's silu * up on this CPU


def swiglu_uses_kernel() -> bool:
    """Whether bf16 SwiGLU runs the fused kernel here: measured once per thread count on this CPU (best of 5 on a
    64 x 4096 problem), since the two give the same bits and only speed differs. The kernel is one pass with its own
    exp and a division per element: 1.3-1.6x PyTorch on Zen 5 (bench/test_bench_norm_act.py), but no CPU is assumed."""
    threads = _threads()
    if threads not in _SWIGLU_KERNEL_WINS:
        import time

        g = torch.linspace(-8, 8, 64 * 4096).reshape(64, 4096).to(torch.bfloat16)

        def best(fn):
            fn()
            times = []
            for _ in range(5):
                t = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t)
            return min(times)
        _SWIGLU_KERNEL_WINS[threads] = best(lambda: _swiglu_kernel(g, g)) < best(lambda: reference.swiglu(g, g))
    return _SWIGLU_KERNEL_WINS[threads]


def swiglu(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up: for bf16 on CPU the fused kernel (bit-identical to the reference) where it is the faster of
    the two here (swiglu_uses_kernel), else PyTorch's."""
    if (gate.shape == up.shape and gate.dim() >= 1 and gate.shape[-1] and _fused_rows_ok(gate, up)
            and swiglu_uses_kernel()):
        if gate.dim() >= 2 and gate.is_contiguous() and up.is_contiguous():  # rows as they are
            return _swiglu_kernel(gate, up)
        return _swiglu_kernel(_rows(gate), _rows(up)).reshape(gate.shape)
    return reference.swiglu(gate, up)


def _attention_mode() -> str:
    mode = os.environ.get("ILLADA_RT_ATTENTION", "auto").strip().lower() or "auto"
    if mode not in ("auto", "kernel", "torch"):
        raise ValueError(f"ILLADA_RT_ATTENTION must be auto, kernel or torch, got {mode!r}")
    return mode


def attention_runs_kernel(dtype: torch.dtype, head_dim: int) -> bool:
    """Whether CPU attention of CPU-kernel-eligible operands of this dtype and head dim runs the compiled kernel
    (ILLADA_RT_ATTENTION: `kernel` always, `torch` never, `auto` for bf16 at head dim 64 or 128 on AVX-512)."""
    mode = _attention_mode()
    return mode == "kernel" or (mode == "auto" and dtype == torch.bfloat16 and head_dim in (64, 128)
                                and cpu_isa() in ("avx512", "amx"))


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
              key_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Bidirectional attention, q [B, Hq, Tq, D], k/v [B, Hkv, Tk, D], key_mask [B, Tk] bool (True = attend).

    ILLADA_RT_ATTENTION=auto (default) runs the compiled kernel where it beats PyTorch's SDPA on the CPUs measured
    (bf16, head dim 64 or 128, AVX-512: scores with vdpbf16ps, GQA without repeating k/v) and SDPA otherwise;
    `kernel` forces the kernel (fp32 and other head dims too), `torch` forces SDPA. Returns a [B, Hq, Tq, D] view of
    a [B, Tq, Hq, D] buffer, the layout the model reshapes next."""
    mode = _attention_mode()
    if (mode != "torch" and _cuda.attention_eligible(q, k, v)
            and (key_mask is None or tuple(key_mask.shape) == (q.shape[0], k.shape[2]))
            and use_cuda_kernel("attention", q, k, v, *(() if key_mask is None else (key_mask,)))):
        return _cuda.attention(q, k, v, key_mask)
    usable = (mode != "torch" and use_cpu_kernel(q, k, v) and q.dtype in (torch.float32, torch.bfloat16)
              and k.dtype == q.dtype and v.dtype == q.dtype and q.stride(-1) == 1 and k.stride(-1) == 1
              and v.stride(-1) == 1)
    if usable and attention_runs_kernel(q.dtype, q.shape[-1]):
        B, H, T, D = q.shape
        out = torch.empty(B, T, H, D, dtype=q.dtype).transpose(1, 2)
        km = None if key_mask is None else key_mask.to(torch.bool).contiguous()
        _C.attention(q, k, v, out, km, D ** -0.5, _threads())
        return out
    return reference.attention(q, k, v, key_mask)


def select_confident(confidence: torch.Tensor, x0: torch.Tensor, k: torch.Tensor | None, tokens: torch.Tensor,
                     mask_id: int, transferred: torch.Tensor | None = None, threshold: float | None = None) -> None:
    """Per row, write x0 into the k most confident still-masked positions of `tokens` (in place), or with k=None
    and `threshold`, into every still-masked position whose confidence is >= threshold and at least the most
    confident one (Fast-dLLM's threshold rule).

    confidence [B, L] float32/float64, x0 [B, L] int64, k [B] int64, tokens [B, L] int64 (may be a slice
    of the canvas). Ties go to the lower position.
    """
    if (k is None) == (threshold is None):
        raise ValueError("select_confident: pass exactly one of k and threshold")
    if (_cuda.select_eligible(confidence, tokens) and x0.dtype == torch.int64
            and use_cuda_kernel("select_transfer", confidence, x0, tokens)):
        _cuda.select_transfer(confidence, x0, tokens, mask_id, k=k, threshold=threshold, transferred=transferred)
    elif use_cpu_kernel(confidence, x0, tokens, *(() if k is None else (k,))):
        _C.select_confident(confidence, x0, k, tokens, int(mask_id), transferred, threshold)
    else:
        reference.select_confident(confidence, x0, k, tokens, mask_id, transferred, threshold)


def sample_greedy(logits: torch.Tensor, conf_dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """logits [..., V] -> (token [...] int64 = argmax, confidence [...] = its softmax probability in conf_dtype:
    float32, or float64 computed in double precision as a float64 softmax is): sample_tokens at temperature 0."""
    rows = logits.reshape(-1, logits.shape[-1])
    token, conf = sample_tokens(rows, conf_dtype)
    return token.reshape(logits.shape[:-1]), conf.reshape(logits.shape[:-1])


def _cpu_sampling_kernel(logits: torch.Tensor, temperature: float) -> bool:
    """sample_tokens runs the CPU kernel on these logits (float32 or bfloat16; without AVX2 only in Gumbel mode)."""
    kernel_isas = ("avx2", "avx512", "amx") if temperature == 0 else ("generic", "avx2", "avx512", "amx")
    return use_cpu_kernel(logits) and logits.dtype in (torch.float32, torch.bfloat16) and cpu_isa() in kernel_isas


def sampling_kernel_reads(logits: torch.Tensor, temperature: float) -> bool:
    """True where sample_tokens hands these logits (a non-float32 dtype) to the CPU kernel, which widens each value
    to float32 and so gives bit for bit what it gives for logits.float(): the decoders skip that copy there."""
    return logits.dtype == torch.bfloat16 and _cpu_sampling_kernel(logits, temperature)


def sample_tokens(logits: torch.Tensor, conf_dtype: torch.dtype = torch.float32, temperature: float = 0.0,
                  seed: int = 0, offset: int = 0, row_ids: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """logits [R, V] -> (token [R], confidence [R]): the argmax, or with temperature > 0 the Gumbel-max of
    logits + temperature * g with g drawn by Philox4x32-10 from (seed, row id, offset), the same noise on CPU and
    CUDA (reference.gumbel_noise defines it); the confidence is the chosen token's softmax probability (float32, or
    float64 in double precision). row_ids [R] (default 0..R-1) names each row's noise stream, so a row's draw does
    not depend on its batch mates. `generate` samples with it (decoding/llada.py: propose).

    The CPU kernel runs with AVX2 or AVX-512; its portable version is slower than PyTorch's softmax at temperature
    0, so without AVX2 it serves only the Gumbel mode. The CUDA kernel runs when enabled (ops/cuda.py)."""
    if logits.dim() != 2 or logits.shape[-1] == 0:
        raise ValueError(f"logits: expected [rows, vocab] with vocab >= 1, got shape {tuple(logits.shape)}")
    if not (temperature >= 0 and temperature < float("inf")):
        raise ValueError(f"temperature: must be finite and >= 0, got {temperature}")
    if conf_dtype not in (torch.float32, torch.float64):
        raise ValueError(f"conf_dtype: float32 or float64, got {conf_dtype}")
    seed, offset = int(seed) & (2**64 - 1), int(offset) & (2**64 - 1)
    if (logits.dtype in (torch.float32, torch.bfloat16, torch.float16)
            and use_cuda_kernel("sample_tokens", logits)):
        return _cuda.sample_tokens(logits, conf_dtype, temperature, seed, offset, row_ids)[:2]
    if _cpu_sampling_kernel(logits, temperature):
        rows = logits if logits.stride(-1) == 1 else logits.contiguous()
        token = torch.empty(rows.shape[0], dtype=torch.int64)
        conf = torch.empty(rows.shape[0], dtype=conf_dtype)
        rid = None if row_ids is None else row_ids.to(torch.int64).contiguous()
        _C.sample_greedy(rows, token, conf, None, None, _threads(), None, temperature=float(temperature), seed=seed,
                         offset=offset, row_ids=rid)
        return token, conf
    rid = None if row_ids is None else row_ids.cpu().numpy()
    return reference.sample_tokens(logits, conf_dtype, temperature, seed, offset, rid)


def _rows(x: torch.Tensor) -> torch.Tensor:
    """x [..., K] as a 2-D [rows, K] with a contiguous last dimension (K = 0 included)."""
    x2 = x.reshape(x.shape[:-1].numel(), x.shape[-1])
    return x2 if x2.stride(-1) == 1 else x2.contiguous()


def _gemm_rows(x: torch.Tensor) -> tuple[torch.Tensor, tuple]:
    """(x as the GEMM bindings take it, the leading shape of its outputs): a contiguous x of rank >= 2 as it is (the
    bindings view its leading dimensions as rows), anything else as _rows(x)."""
    if x.dim() >= 2 and x.is_contiguous():
        return x, tuple(x.shape[:-1])
    return _rows(x), tuple(x.shape[:-1])


def _threads() -> int:
    return max(1, torch.get_num_threads())


@dataclass(frozen=True)
class Int8Weight:
    """An int8 weight [N, K] with per-output-channel scales, packed once for the CPU W8A8 kernel.

    packed: int8 [round_up(N, 16) * round_up(K, 4)] (blocks of 16 channels, K in groups of 4), colsum: int32
    [round_up(N, 16)], scale: float32 [N]. `weight()` recovers the plain [N, K] int8 matrix (for the reference
    path and other devices). `handle`: the three checked once for the compiled kernel (_C.PackedW8A8), which then
    converts only the activations and outputs per call; None without a build.
    """
    packed: torch.Tensor
    colsum: torch.Tensor
    scale: torch.Tensor
    N: int
    K: int
    handle: object = field(default=None, compare=False, repr=False)

    def weight(self) -> torch.Tensor:
        Np, Kp = _round_up(self.N, 16), _round_up(self.K, 4)
        blocks = self.packed.view(Np // 16, Kp // 4, 16, 4).permute(0, 2, 1, 3).reshape(Np, Kp)
        return blocks[:self.N, :self.K].contiguous()


def _check_quantized_weight(weight, scale, dtype: torch.dtype) -> tuple[int, int, torch.Tensor]:
    """(N, K, float32 contiguous per-channel scale) of a 2-D weight of `dtype`, or a ValueError naming the problem."""
    if not isinstance(weight, torch.Tensor) or weight.dtype != dtype or weight.dim() != 2:
        raise ValueError(f"weight: expected a 2-D {str(dtype).replace('torch.', '')} tensor, got "
                         f"{getattr(weight, 'dtype', type(weight).__name__)} {tuple(getattr(weight, 'shape', ()))}")
    N, K = weight.shape
    scale = torch.as_tensor(scale).to(torch.float32).reshape(-1).contiguous()
    if scale.numel() != N:
        raise ValueError(f"scale: expected {N} per-channel scales for weight {tuple(weight.shape)}, got {scale.numel()}")
    return N, K, scale


# Rows (M = batch x tokens) up to which bf16 linears run the compiled kernel; above, PyTorch's (oneDNN) GEMM, which
# reaches the machine's bf16 peak once M is large. Measured on Zen 5 (bench/test_bench_gemm.py, impl "bf16" beside
# "torch_bf16"): at M = 32 the kernel is 1.0-1.4x oneDNN (1.3-1.6x with weights out of cache), at M >= 256 ~0.8x.
BF16_GEMM_MAX_M = 64


def linear_bf16_route(x: torch.Tensor, weights, force: bool = False) -> str:
    """Which GEMM linear_bf16 runs for these operands: "gemm_bf16" (the compiled kernel) or "torch" (F.linear).
    With AVX-512 BF16 (or AMX) the kernel takes up to BF16_GEMM_MAX_M rows; on an AVX2-only CPU it takes every M:
    there PyTorch's bf16 matmul is oneDNN's slow path (torch 2.13 on 2 cores of an AMD EPYC Zen 3: F.linear 15-20
    GFLOP/s at M = 32 to 1024, a @ b with b [K, N] under 1; the kernel 3.5-4.8x F.linear in bench/test_bench_gemm.py)."""
    rows = x.shape[:-1].numel() if x.dim() else 0
    isa = cpu_isa()
    ok = (use_cpu_kernel(x, *weights) and isa in ("avx2", "avx512", "amx") and x.dtype == torch.bfloat16
          and all(w.dtype == torch.bfloat16 and w.stride(-1) == 1 for w in weights))
    return "gemm_bf16" if ok and (force or isa == "avx2" or rows <= BF16_GEMM_MAX_M) else "torch"


def linear_bf16(x: torch.Tensor, weights, isa: str | None = None, force: bool = False) -> list[torch.Tensor]:
    """x [..., K] bfloat16 against 1 to 4 dense bfloat16 weights [N_s, K] (q/k/v or gate/up) -> one [..., N_s]
    bfloat16 output per weight: x @ w.T with fp32 accumulation. The weights are read in place, never repacked
    (a memory map's views, or the loader's huge-page copies: illada_rt.load(huge_pages=)). Runs the compiled kernel
    on CPU where linear_bf16_route says so (AVX-512 BF16: at most BF16_GEMM_MAX_M rows, always with `force`; AVX2:
    every M), else PyTorch's F.linear per weight."""
    weights = list(weights)
    if not 1 <= len(weights) <= 4:
        raise ValueError(f"weights: expected 1 to 4 weights, got {len(weights)}")
    for i, w in enumerate(weights):
        if not isinstance(w, torch.Tensor) or w.dim() != 2 or w.shape[1] != x.shape[-1]:
            raise ValueError(f"weights[{i}]: expected a 2-D tensor [N, {x.shape[-1]}], got "
                             f"{tuple(getattr(w, 'shape', ())) or type(w).__name__}")
    if linear_bf16_route(x, weights, force) == "torch":  # (also for fp32, other devices, the reference mode)
        return [torch.nn.functional.linear(x, w) for w in weights]
    x2, lead = _gemm_rows(x)
    outs = [torch.empty((*lead, w.shape[0]), dtype=torch.bfloat16) for w in weights]
    _C.gemm_bf16(x2, weights, outs, _threads(), isa)
    return outs


def pack_int8_weight(weight: torch.Tensor, scale: torch.Tensor, arena: WeightArena | None = None) -> Int8Weight:
    """weight [N, K] int8 (CPU), scale [N] (per output channel) -> Int8Weight; the packed copy in `arena`'s memory
    when one is given (a model's loader passes its own), else torch.empty's."""
    N, K, scale = _check_quantized_weight(weight, scale, torch.int8)
    numel = _round_up(N, 16) * _round_up(K, 4)
    packed = weight_memory(arena, numel, torch.int8)
    colsum = torch.empty(_round_up(N, 16), dtype=torch.int32)
    if _C is not None:
        _C.pack_w8(weight.cpu().contiguous(), packed, colsum, _threads())
    else:  # pragma: no cover - only without a build
        Np, Kp = _round_up(N, 16), _round_up(K, 4)
        full = torch.zeros(Np, Kp, dtype=torch.int8)
        full[:N, :K] = weight
        packed.copy_(full.view(Np // 16, 16, Kp // 4, 4).permute(0, 2, 1, 3).reshape(-1))
        colsum.copy_(full.int().sum(1))
    handle = _C.PackedW8A8(packed, colsum, scale, K) if _C is not None else None
    return Int8Weight(packed, colsum, scale, N, K, handle)


def _w8a8_handle(w: Int8Weight):
    """The weight as the compiled linears take it (pack_int8_weight makes it once; an Int8Weight built by hand
    gets one per call)."""
    return w.handle if w.handle is not None else _C.PackedW8A8(w.packed, w.colsum, w.scale, w.K)


def w8a8_runs_kernel(x: torch.Tensor, out_dtype: torch.dtype | None = None) -> bool:
    """Whether the W8A8 linears run the compiled CPU kernel for activations x (else the reference or the CUDA
    emulator's GEMM). The kernel quantizes and computes each row of x on its own: a row's output does not depend on
    the other rows."""
    return (use_cpu_kernel(x) and not _cuda.emulating() and x.dtype in (torch.float32, torch.bfloat16)
            and (out_dtype or x.dtype) in (torch.float32, torch.bfloat16))


def linear_w8a8(x: torch.Tensor, w: Int8Weight, out_dtype: torch.dtype | None = None,
                isa: str | None = None) -> torch.Tensor:
    """x [..., K] float32/bfloat16 -> [..., N] (out_dtype, default x's dtype): activations quantized per token
    to int8, exact int32 GEMM against the packed weight, dequantized by x_scale * w_scale."""
    if x.shape[-1] != w.K:
        raise ValueError(f"x: last dimension {x.shape[-1]} does not match the weight's K = {w.K}")
    out_dtype = out_dtype or x.dtype
    if x.device.type == "cpu" and _cuda.emulating():  # the CUDA GEMM on the emulator
        from . import cuda_gemm
        return cuda_gemm.linear(x, cuda_gemm.from_cpu_weight(w), out_dtype)
    if not w8a8_runs_kernel(x, out_dtype):
        return reference.linear_w8a8(x, w.weight().to(x.device), w.scale.to(x.device), out_dtype)
    x2, lead = _gemm_rows(x)
    out = torch.empty((*lead, w.N), dtype=out_dtype)
    _C.linear_w8a8_packed(x2, (_w8a8_handle(w),), (out,), _threads(), isa)
    return out


def swiglu_linear_w8a8(gate: torch.Tensor, up: torch.Tensor, w: Int8Weight, out_dtype: torch.dtype | None = None,
                       isa: str | None = None) -> torch.Tensor:
    """linear_w8a8(swiglu(gate, up), w), bit for bit: the MLP's down projection. The W8A8 kernel computes each
    row's SwiGLU while it quantizes it, inside its own call (no [..., K] intermediate, no separate op)."""
    if gate.shape != up.shape or gate.dtype != up.dtype:
        raise ValueError(f"gate and up: expected one shape and dtype, got {tuple(gate.shape)} {gate.dtype} and "
                         f"{tuple(up.shape)} {up.dtype}")
    if gate.shape[-1] != w.K:
        raise ValueError(f"gate: last dimension {gate.shape[-1]} does not match the weight's K = {w.K}")
    out_dtype = out_dtype or gate.dtype
    if not (w8a8_runs_kernel(gate, out_dtype) and use_cpu_kernel(up)):
        return linear_w8a8(swiglu(gate, up), w, out_dtype, isa)
    g2, lead = _gemm_rows(gate)
    u2, _ = _gemm_rows(up)
    out = torch.empty((*lead, w.N), dtype=out_dtype)
    _C.linear_w8a8_packed(g2, (_w8a8_handle(w),), (out,), _threads(), isa, up=u2)
    return out


def linear_w8a8_multi(x: torch.Tensor, ws, out_dtype: torch.dtype | None = None,
                      isa: str | None = None) -> list[torch.Tensor]:
    """linear_w8a8 of x against 1 to 4 Int8Weights sharing it (q/k/v, gate/up): one activation quantization and
    one call for all; each output equals linear_w8a8(x, w) bit for bit."""
    ws = list(ws)
    if not 1 <= len(ws) <= 4:
        raise ValueError(f"ws: expected 1 to 4 weights, got {len(ws)}")
    out_dtype = out_dtype or x.dtype
    if not w8a8_runs_kernel(x, out_dtype) or len({w.K for w in ws}) != 1:
        return [linear_w8a8(x, w, out_dtype, isa) for w in ws]
    if x.shape[-1] != ws[0].K:
        raise ValueError(f"x: last dimension {x.shape[-1]} does not match the weight's K = {ws[0].K}")
    x2, lead = _gemm_rows(x)
    outs = [torch.empty((*lead, w.N), dtype=out_dtype) for w in ws]
    _C.linear_w8a8_packed(x2, [_w8a8_handle(w) for w in ws], outs, _threads(), isa)
    return outs


@dataclass(frozen=True)
class Fp8Weight:
    """A float8 e4m3 weight [N, K] with per-output-channel scales, packed for the CPU FP8-weight kernel:
    packed uint8 [round_up(N, 16) * round_up(K, 2)] (blocks of 16 channels, K in pairs), scale float32 [N]."""
    packed: torch.Tensor
    scale: torch.Tensor
    N: int
    K: int

    def weight(self) -> torch.Tensor:
        Np, Kp = _round_up(self.N, 16), _round_up(self.K, 2)
        blocks = self.packed.view(Np // 16, Kp // 2, 16, 2).permute(0, 2, 1, 3).reshape(Np, Kp)
        return blocks[:self.N, :self.K].contiguous().view(torch.float8_e4m3fn)


def fp8_kernel_available() -> bool:
    """The FP8-weight kernel runs where the CPU has AVX-512 BF16 (its portable version is a slow floor only)."""
    return _C is not None and kernel_mode() == "auto" and cpu_isa() in ("avx512", "amx")


def pack_fp8_weight(weight: torch.Tensor, scale: torch.Tensor, arena: WeightArena | None = None) -> Fp8Weight:
    """weight [N, K] float8_e4m3fn (CPU), scale [N] -> Fp8Weight (the packed copy in `arena`'s memory if given)."""
    N, K, scale = _check_quantized_weight(weight, scale, torch.float8_e4m3fn)
    if _C is None:  # pragma: no cover - only without a build
        raise RuntimeError("the compiled module illada_rt._C is missing")
    numel = _round_up(N, 16) * _round_up(K, 2)
    packed = weight_memory(arena, numel, torch.uint8)
    _C.pack_f8(weight.cpu().contiguous().view(torch.uint8), packed, _threads())
    return Fp8Weight(packed, scale, N, K)


def linear_fp8w(x: torch.Tensor, w: Fp8Weight, out_dtype: torch.dtype | None = None,
                isa: str | None = None) -> torch.Tensor:
    """x [..., K] bfloat16 -> [..., N]: (x . q^T) * scale, weights widened to bf16 in registers."""
    if x.shape[-1] != w.K:
        raise ValueError(f"x: last dimension {x.shape[-1]} does not match the weight's K = {w.K}")
    out_dtype = out_dtype or x.dtype
    if x.device.type == "cpu" and _cuda.emulating():  # the CUDA GEMM on the emulator: W8A8 FP8 (as on sm_89+)
        from . import cuda_gemm
        return cuda_gemm.linear(x, cuda_gemm.from_cpu_weight(w), out_dtype)
    if not (use_cpu_kernel(x) and x.dtype == torch.bfloat16 and out_dtype in (torch.float32, torch.bfloat16)):
        return reference.linear_fp8w(x, w.weight().to(x.device), w.scale.to(x.device), out_dtype)
    x2, lead = _gemm_rows(x)
    out = torch.empty((*lead, w.N), dtype=out_dtype)
    _C.gemm_f8w(x2, w.packed, w.scale, out, _threads(), isa)
    return out


def cpu_isa() -> str:
    """The ISA the CPU kernels run with ('generic', 'avx2', 'avx512' or 'amx'), or 'none' without a build."""
    return _C.cpu_isa() if _C is not None else "none"


def cpu_isas() -> list[str]:
    """Every ISA level this CPU supports, lowest first (the tests run each)."""
    return list(_C.cpu_isas()) if _C is not None else []


def compiled_status() -> dict:
    """Which compiled modules exist here (used by illada_rt.capabilities())."""
    status = {"_C": _C is not None, "_C_error": _C_IMPORT_ERROR, "_C_cuda": False, "cuda_archs": None,
              "cuda_devices": 0}
    try:
        from .. import _C_cuda  # type: ignore[attr-defined]
    except ImportError:
        return status
    status.update(_C_cuda=True, cuda_archs=_C_cuda.compiled_archs(), cuda_devices=_C_cuda.device_count())
    return status
