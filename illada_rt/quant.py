"""Weight quantization: the pure functions (quantize / dequantize one weight), the on-disk scheme description
(`quantization_config` in config.json) and the quantized linear layer the model runs.

Format (see README "Quantized checkpoints"): each quantized linear `<name>` stores `<name>.weight` as int8
(safetensors I8) or float8_e4m3fn (F8_E4M3) and `<name>.weight_scale` as float32, per output channel ([N]) or
per 128x128 block ([ceil(N/128), ceil(K/128)]); the real weight is weight * scale. Symmetric round to nearest:
scale = max|w| / 127 (int8) or / 448 (e4m3's largest normal), 1 where the group is all zero.
"""
from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from . import ops
from .errors import CheckpointError, ConfigError

SCHEMES = {"int8": torch.int8, "fp8": torch.float8_e4m3fn}
GRANULARITIES = ("channel", "block128")
QMAX = {"int8": 127.0, "fp8": 448.0}
BLOCK = 128
QUANT_METHOD = "illada-rt"


def check_scheme(scheme: str, granularity: str) -> None:
    if scheme not in SCHEMES:
        raise ValueError(f"scheme: expected one of {', '.join(SCHEMES)}, got {scheme!r}")
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity: expected one of {', '.join(GRANULARITIES)}, got {granularity!r}")


def _block_view(w: torch.Tensor) -> tuple[torch.Tensor, int, int]:
    """[N, K] -> zero-padded [Nb, 128, Kb, 128] view of a copy, with the original N, K."""
    N, K = w.shape
    Nb, Kb = math.ceil(N / BLOCK), math.ceil(K / BLOCK)
    padded = F.pad(w, (0, Kb * BLOCK - K, 0, Nb * BLOCK - N))
    return padded.view(Nb, BLOCK, Kb, BLOCK), N, K


def _expand_scale(scale: torch.Tensor, N: int, K: int, granularity: str) -> torch.Tensor:
    if granularity == "channel":
        return scale.reshape(N, 1)
    return scale.repeat_interleave(BLOCK, 0)[:N].repeat_interleave(BLOCK, 1)[:, :K]


ROW_CHUNK = 1024  # rows quantized at a time: bounds the float temporaries to a few MB per K=4096 row block


def nonfinite_at(t: torch.Tensor) -> tuple[int, ...] | None:
    """Index of t's first inf or NaN element (checked ROW_CHUNK rows at a time), None when every one is finite."""
    rows = t.reshape(t.shape[0] if t.dim() else 1, -1)
    for r0 in range(0, rows.shape[0], ROW_CHUNK):
        bad = ~torch.isfinite(rows[r0:r0 + ROW_CHUNK])
        if bad.any():
            flat = r0 * rows.shape[1] + int(bad.reshape(-1).nonzero()[0])
            return tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), t.shape))
    return None


def quantize_weight(w: torch.Tensor, scheme: str, granularity: str = "channel") -> tuple[torch.Tensor, torch.Tensor]:
    """w [N, K] float -> (q [N, K] int8 or float8_e4m3fn, scale float32 [N] or [ceil(N/128), ceil(K/128)]).

    Works through ROW_CHUNK rows at a time (a multiple of the 128-row block), so quantizing a 0.5 G-element LM
    head needs its 1-byte output plus a few chunk-sized float temporaries, not several fp32 copies."""
    check_scheme(scheme, granularity)
    if w.dim() != 2 or not w.is_floating_point():
        raise ValueError(f"quantize_weight: expected a 2-D float weight, got {w.dtype} {tuple(w.shape)}")
    N, K = w.shape
    q = torch.empty((N, K), dtype=SCHEMES[scheme])
    scales = []
    # One fp32 work buffer reused for every chunk, and in-place ops: no per-chunk allocations (repeated large
    # temporaries made glibc's heap hold on to ~1.5 GB while quantizing an 8B model's LM head).
    buf = torch.empty((min(ROW_CHUNK, N), K), dtype=torch.float32)
    absbuf = torch.empty_like(buf) if granularity == "channel" else None
    for r0 in range(0, N, ROW_CHUNK):
        rows = min(ROW_CHUNK, N - r0)
        wf = buf[:rows]
        wf.copy_(w[r0:r0 + rows])
        if granularity == "channel":
            amax = torch.abs(wf, out=absbuf[:rows]).amax(dim=1) if K else torch.zeros(rows)
        else:
            blocks, _, _ = _block_view(wf)
            amax = blocks.abs().amax(dim=(1, 3))
        if not torch.isfinite(amax).all():
            r, c = nonfinite_at(wf)
            raise ValueError(f"quantize_weight: the weight holds {float(wf[r, c])} at [{r0 + r}, {c}]")
        scale = torch.where(amax > 0, amax / QMAX[scheme], torch.ones_like(amax)).to(torch.float32)
        wf.div_(_expand_scale(scale, rows, K, granularity))
        if scheme == "int8":
            wf.round_().clamp_(-127, 127)
        else:
            wf.clamp_(-448.0, 448.0)
        q[r0:r0 + rows].copy_(wf)  # exact for int8 (integral values); round-to-nearest-even into e4m3
        scales.append(scale)
    scale = torch.cat(scales) if scales else torch.empty((0,) if granularity == "channel" else (0, math.ceil(K / BLOCK)))
    return q, scale


def dequantize_weight(q: torch.Tensor, scale: torch.Tensor, granularity: str,
                      dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The real weight q * scale, in `dtype` (computed in float32)."""
    N, K = q.shape
    if granularity == "tensor":
        return (q.float() * scale.float().reshape(())).to(dtype)
    return (q.float() * _expand_scale(scale.float(), N, K, granularity)).to(dtype)


def weight_error(w: torch.Tensor, q: torch.Tensor, scale: torch.Tensor, granularity: str) -> dict:
    """Relative Frobenius error and max abs error of the quantized weight against the original, computed ROW_CHUNK
    rows at a time (a whole-tensor fp32 difference of an 8B model's LM head would be several GB)."""
    err2 = ref2 = 0.0
    max_abs = 0.0
    for r0 in range(0, q.shape[0], ROW_CHUNK):
        rows = slice(r0, r0 + ROW_CHUNK)
        if granularity == "channel":
            s = scale[rows]
        elif granularity == "block128":
            s = scale[r0 // BLOCK:(r0 + ROW_CHUNK) // BLOCK + 1]
        else:
            s = scale
        wf = w[rows].float()
        d = dequantize_weight(q[rows], s, granularity) - wf
        err2 += float(d.double().pow(2).sum())
        ref2 += float(wf.double().pow(2).sum())
        if d.numel():
            max_abs = max(max_abs, float(d.abs().max()))
    return {"rel_frobenius": (err2 / ref2) ** 0.5 if ref2 > 0 else 0.0, "max_abs": max_abs}


# --------------------------------------------------------------------------------------- scheme on disk
@dataclass(frozen=True)
class QuantScheme:
    """What a quantized checkpoint holds, read from config.json's quantization_config."""
    scheme: str            # "int8" or "fp8"
    granularity: str       # "channel", "block128" or "tensor" (compressed-tensors per-tensor FP8)
    ignore: tuple[str, ...]  # linear names (without .weight) left in the original dtype
    source: str            # "illada-rt" or "compressed-tensors"


def scheme_config(scheme: str, granularity: str, ignore: list[str]) -> dict:
    """The quantization_config written into config.json: a full description of the scheme."""
    check_scheme(scheme, granularity)
    return {
        "quant_method": QUANT_METHOD,
        "scheme": scheme,
        "granularity": granularity,
        "weights": {"num_bits": 8, "type": "int" if scheme == "int8" else "float",
                    "format": "int8" if scheme == "int8" else "float8_e4m3fn", "symmetric": True,
                    "strategy": "channel" if granularity == "channel" else "block",
                    "block_structure": None if granularity == "channel" else [BLOCK, BLOCK],
                    "scale": "<name>.weight_scale float32, weight = q * scale", "rounding": "nearest"},
        "input_activations": ({"num_bits": 8, "type": "int", "symmetric": True, "strategy": "token",
                               "dynamic": True} if scheme == "int8" else None),
        "ignore": sorted(ignore),
    }


def read_scheme(raw_config: dict, source: str = "config.json") -> QuantScheme | None:
    """QuantScheme from a config dict, None for an unquantized checkpoint; ConfigError for what we cannot run."""
    qc = raw_config.get("quantization_config")
    if qc is None:
        return None
    if not isinstance(qc, dict):
        raise ConfigError(f"{source}: quantization_config must be an object")
    method = qc.get("quant_method")
    if method == QUANT_METHOD:
        scheme, gran = qc.get("scheme"), qc.get("granularity")
        try:
            check_scheme(scheme, gran)
        except ValueError as e:
            raise ConfigError(f"{source}: quantization_config: {e}") from None
        ignore = qc.get("ignore") or []
        if not isinstance(ignore, list) or not all(isinstance(s, str) for s in ignore):
            raise ConfigError(f"{source}: quantization_config.ignore must be a list of names")
        return QuantScheme(scheme, gran, tuple(ignore), QUANT_METHOD)
    if method == "compressed-tensors":
        return _read_compressed_tensors(qc, source)
    raise ConfigError(f"{source}: quantization_config.quant_method {method!r} is not supported (supported: "
                      f"{QUANT_METHOD!r} from `illada-rt quantize`, 'compressed-tensors' FP8)")


def _read_compressed_tensors(qc: dict, source: str) -> QuantScheme:
    """compressed-tensors / vLLM FP8: float 8-bit weights, per-tensor or per-channel weight_scale."""
    groups = qc.get("config_groups") or {}
    if not isinstance(groups, dict) or len(groups) != 1:
        raise ConfigError(f"{source}: compressed-tensors: expected exactly one config group, got {len(groups)}")
    (group,) = groups.values()
    w = (group or {}).get("weights") or {}
    if w.get("type") != "float" or w.get("num_bits") != 8:
        raise ConfigError(f"{source}: compressed-tensors: only 8-bit float (FP8 e4m3) weights are supported, got "
                          f"type={w.get('type')!r} num_bits={w.get('num_bits')!r}")
    strategy = w.get("strategy")
    if strategy not in ("tensor", "channel"):
        raise ConfigError(f"{source}: compressed-tensors: weight strategy {strategy!r} is not supported "
                          f"(tensor or channel)")
    ignore = [str(s) for s in qc.get("ignore") or []]
    return QuantScheme("fp8", strategy, tuple(ignore), "compressed-tensors")


def is_ignored(name: str, patterns) -> bool:
    """name: a linear's tensor prefix (without .weight). Patterns: exact names, fnmatch globs, 'lm_head'."""
    for p in patterns:
        if p.startswith("re:"):  # compressed-tensors writes regexes as "re:..."
            import re
            if re.fullmatch(p[3:], name):
                return True
        elif name == p or fnmatch.fnmatchcase(name, p) or name.endswith("." + p):
            return True
    return False


# ------------------------------------------------------------------------------------ the linear op
def cuda_gemm_kernel(scheme: str, granularity: str) -> str | None:
    """The CUDA GEMM that runs a scheme's linears with the weights kept quantized, or None (dequantized at load)."""
    if scheme == "int8" and granularity == "channel":
        return "gemm_w8a8"
    if scheme == "fp8" and granularity in ("channel", "tensor", "block128"):
        return "gemm_fp8"  # W8A8 FP8 on sm_89+, weight-only (e4m3 widened in registers) before
    return None


def linear_kernel(scheme: str, granularity: str, device: torch.device, dtype: torch.dtype) -> str:
    """How a quantized linear runs (QuantizedLinear, and `illada-rt info`): on CPU "w8a8", "fp8w" or "dequantized";
    on CUDA "gemm_w8a8" or "gemm_fp8" (the quantized CUDA GEMMs, where they are enabled: ops/cuda.py) or
    "dequantized"."""
    if device.type == "cuda":
        from .ops import cuda as cuda_ops

        gemm = cuda_gemm_kernel(scheme, granularity)
        if gemm and dtype in (torch.float32, torch.bfloat16, torch.float16) and cuda_ops.kernel_enabled(gemm, device):
            return gemm
        return "dequantized"
    if device.type != "cpu":
        return "dequantized"
    if scheme == "int8" and granularity == "channel":
        return "w8a8"
    if (scheme == "fp8" and granularity in ("channel", "tensor") and dtype == torch.bfloat16
            and ops.fp8_kernel_available()):
        return "fp8w"
    return "dequantized"


class QuantizedLinear:
    """A quantized weight as the model runs it. On CPU, int8 per-channel runs the fused W8A8 kernel (activations
    quantized per token, int32 GEMM) and fp8 per-channel/per-tensor with bf16 compute runs the FP8-weight kernel
    (one byte per weight, widened in registers) where the CPU has AVX-512 BF16. On CUDA, int8 per-channel runs the
    W8A8 INT8 GEMM and fp8 (channel, tensor or block128 scales) the FP8 GEMM (W8A8 on sm_89+, weight-only before),
    the weight kept at one byte per element in GPU memory. Every other case holds the dequantized weight in the compute dtype."""

    def __init__(self, q: torch.Tensor, scale: torch.Tensor, granularity: str, device: torch.device,
                 dtype: torch.dtype, name: str, arena: ops.WeightArena | None = None):
        self.name, self.shape, self.dtype = name, tuple(q.shape), dtype
        self.packed = None
        self.dense = None
        N = q.shape[0]
        self.kernel = linear_kernel("int8" if q.dtype == torch.int8 else "fp8", granularity, device, dtype)
        if self.kernel == "w8a8":
            self.packed = ops.pack_int8_weight(q, scale.reshape(-1), arena)
        elif self.kernel == "fp8w":
            self.packed = ops.pack_fp8_weight(q, scale.reshape(-1).expand(N) if scale.numel() == 1 else scale, arena)
        elif self.kernel in ("gemm_w8a8", "gemm_fp8"):
            from .ops import cuda_gemm

            self.packed = cuda_gemm.pack_weight(q, scale, granularity, device)
        else:
            self.dense = dequantize_weight(q, scale, granularity, dtype).to(device)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.kernel == "w8a8":
            return ops.linear_w8a8(x, self.packed, out_dtype=x.dtype)
        if self.kernel == "fp8w":
            return ops.linear_fp8w(x, self.packed, out_dtype=x.dtype)
        if self.kernel in ("gemm_w8a8", "gemm_fp8"):
            from .ops import cuda_gemm

            return cuda_gemm.linear(x, self.packed, out_dtype=x.dtype)
        # as the model runs a dense weight: on an AVX2-only CPU (fp8 has no kernel there) the bf16 GEMM, not
        # PyTorch's bf16 F.linear at a fraction of its speed
        return ops.linear_bf16(x, [self.dense])[0]


def weight_nbytes(w) -> int:
    """Bytes a weight takes where it lives: a dense tensor, or a QuantizedLinear as held (packed or dequantized)."""
    if isinstance(w, QuantizedLinear):
        if w.dense is not None:
            return w.dense.numel() * w.dense.element_size()
        p = w.packed
        if hasattr(p, "nbytes"):
            return int(p.nbytes)
        return sum(t.numel() * t.element_size() for t in (getattr(p, "packed", None), getattr(p, "colsum", None),
                                                           getattr(p, "scale", None)) if t is not None)
    return w.numel() * w.element_size()


def device_bytes_estimate(store, kernel: str, dtype: torch.dtype) -> int:
    """The bytes a load would hold on the device with quantized linears run by `kernel` ("gemm_w8a8"/"gemm_fp8":
    one byte per weight, K padded to 32, float32 scales; "dequantized": the compute dtype): what `illada-rt info`
    reports for CUDA, without loading anything."""
    elem = torch.tensor([], dtype=dtype).element_size()
    total = 0
    for name in store.names():
        e = store.entry(name)
        n = 1
        for d in e.shape:
            n *= d
        if e.dtype in SCHEMES.values() and len(e.shape) == 2 and kernel.startswith("gemm"):
            total += e.shape[0] * ((e.shape[1] + 31) // 32 * 32)
        elif name.endswith(".weight_scale"):
            total += 4 * n if kernel.startswith("gemm") else 0
        else:
            total += n * elem
    return total


def load_linear(store, name: str, shape: tuple[int, int], scheme: QuantScheme | None, device: torch.device,
                dtype: torch.dtype, arena: ops.WeightArena | None = None):
    """The weight `name` (ending in .weight) as a dense tensor or a QuantizedLinear, per the scheme and what the
    file holds. With an `arena` (CPU), a weight packed for a CPU kernel goes into its memory, and so does a dense
    one where WeightArena.copy_of finds it pays (huge pages), converted to dtype in the same pass."""
    entry = store.entry(name) if name in store else None
    if scheme is None or entry is None or entry.dtype not in (torch.int8, torch.float8_e4m3fn):
        t = store.get(name, shape)
        return arena.copy_of(t, dtype) if arena is not None else t.to(device=device, dtype=dtype)
    prefix = name[: -len(".weight")]
    scale_name = prefix + ".weight_scale"
    if scale_name not in store:
        raise CheckpointError(f"{store.directory}: quantized tensor {name!r} has no {scale_name!r}")
    q = store.get(name, shape)
    scale = store.entry(scale_name)
    s = store.get(scale_name, scale.shape).to(torch.float32, copy=True)  # a copy: the mapped pages are released
    N, K = shape
    if scheme.source == QUANT_METHOD:  # our own files: the declared granularity, shape-checked below
        gran = scheme.granularity
        want = (N,) if gran == "channel" else (math.ceil(N / BLOCK), math.ceil(K / BLOCK))
        if tuple(s.shape) != want:
            raise CheckpointError(f"{store.directory}: {scale_name!r} has shape {list(s.shape)}; {gran} scales "
                                  f"for a weight of {list(shape)} are {list(want)}")
    elif s.numel() == 1:
        gran = "tensor"
    elif s.numel() == N and (s.dim() == 1 or (s.dim() == 2 and s.shape[1] == 1)):
        gran = "channel"
    elif tuple(s.shape) == (math.ceil(N / BLOCK), math.ceil(K / BLOCK)):
        gran = "block128"
    else:
        raise CheckpointError(f"{store.directory}: {scale_name!r} has shape {list(s.shape)}, which fits neither "
                              f"per-tensor, per-channel [{N}] nor 128x128 blocks for a weight of {list(shape)}")
    if (q.dtype == torch.int8) != (scheme.scheme == "int8"):
        raise CheckpointError(f"{store.directory}: {name!r} is {q.dtype} but quantization_config says "
                              f"{scheme.scheme}")
    return QuantizedLinear(q, s, gran, device, dtype, prefix, arena)
