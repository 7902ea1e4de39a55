"""The transformer forward: embedding, pre-norm bidirectional blocks, final norm, LM head.

Both on-disk layouts map onto the same math (LLaDA's LLaDALlamaBlock):
    h = x + o(Attn(RoPE(q(n)), RoPE(k(n)), v(n))),   n = RMSNorm_attn(x)
    y = h + down(silu(gate(m)) * up(m)),              m = RMSNorm_ff(h)
    logits = head(RMSNorm_final(y))                   (head = embedding when tied; no logit scaling)
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from . import ops
from .checkpoint import (FLOAT_DTYPES, WeightStore, check_layout_matches, global_names, has_nonfinite, layer_names,
                         layer_shapes)
from .config import ModelConfig
from .errors import CheckpointError
from .ops import stack as layer_stacks
from .quant import SCHEMES, QuantizedLinear, QuantScheme, load_linear, read_scheme

LINEARS = ("q", "k", "v", "o", "gate", "up", "down")


def linear(x: torch.Tensor, w) -> torch.Tensor:
    """x @ w.T for a dense weight, or the quantized layer's own GEMM."""
    return w(x) if isinstance(w, QuantizedLinear) else ops.linear_bf16(x, [w])[0]


def linears(x: torch.Tensor, ws) -> list[torch.Tensor]:
    """x @ w.T for weights sharing their input (q/k/v, gate/up): dense ones as one GEMM where a kernel fuses them."""
    if all(isinstance(w, QuantizedLinear) and w.kernel == "w8a8" for w in ws):
        return ops.linear_w8a8_multi(x, [w.packed for w in ws], out_dtype=x.dtype)
    if any(isinstance(w, QuantizedLinear) for w in ws):
        return [w(x) if isinstance(w, QuantizedLinear) else ops.linear_bf16(x, [w])[0] for w in ws]
    return ops.linear_bf16(x, ws)


def swiglu_linear(gate: torch.Tensor, up: torch.Tensor, w: QuantizedLinear) -> torch.Tensor:
    """linear(ops.swiglu(gate, up), w) for an int8 weight on the W8A8 kernel (swiglu_fuses(w)), which computes the
    SwiGLU inside its call: the same bits, one op and one [rows, hidden] intermediate fewer."""
    return ops.swiglu_linear_w8a8(gate, up, w.packed, out_dtype=gate.dtype)


def swiglu_fuses(w) -> bool:
    return isinstance(w, QuantizedLinear) and w.kernel == "w8a8"


def layer_stack(stack: layer_stacks.CompiledLayers, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                key_mask: torch.Tensor | None, cache: KVCache | None, cache_from: int | None,
                timing: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Every block over the embeddings x [B, L, d] in one compiled call (ops/stack.py), as the layer loop in
    Transformer.forward computes them, bit for bit: (h, down), the residual stream after the last block's attention
    half and that block's MLP output. A cache is filled (cache_from None: fresh [B, Hkv, L, D] views of [B, L, Hkv, D]
    buffers, the layout the loop's GEMMs leave) or updated at columns [cache_from, cache_from + L). timing: the
    profile mode's per-op accumulator (_C.LAYER_STACK_OPS)."""
    B, L, _ = x.shape
    ks = vs = None
    if cache is not None:
        if cache_from is None:
            Hkv, D = stack.n_kv_heads, stack.head_dim
            for i in range(stack.n_layers):
                cache.k[i] = torch.empty(B, L, Hkv, D, dtype=x.dtype).transpose(1, 2)
                cache.v[i] = torch.empty(B, L, Hkv, D, dtype=x.dtype).transpose(1, 2)
        ks, vs = cache.k, cache.v
    h, down = torch.empty_like(x), torch.empty_like(x)
    km = None if key_mask is None else key_mask.to(torch.bool).contiguous()
    stack.handle.forward(x, h, down, cos.contiguous(), sin.contiguous(), km, ks, vs, cache_from or 0,
                         stack.head_dim ** -0.5, max(1, torch.get_num_threads()), timing)
    return h, down


class KVCache:
    """Keys (after RoPE) and values of every layer for a whole canvas: [B, n_kv_heads, T, head_dim] each.

    Filled by a full forward (Transformer.forward(..., cache=c)); a later forward over columns
    [cache_from, cache_from + L) writes its fresh keys/values into those slots and attends to all T slots.
    That one mechanism gives Fast-dLLM's prefix cache (input = block start .. end of canvas) and its dual
    cache (input = the block). Caching after RoPE gives the same numbers as rotating cached raw keys on
    every call: the rotation of a key depends only on its own position.
    """

    def __init__(self, n_layers: int):
        self.k: list[torch.Tensor | None] = [None] * n_layers
        self.v: list[torch.Tensor | None] = [None] * n_layers

    @property
    def length(self) -> int:
        return 0 if self.k[0] is None else self.k[0].shape[2]


@dataclass
class LayerWeights:  # linears are dense tensors or QuantizedLinear (quantized checkpoints)
    attn_norm: torch.Tensor
    q: torch.Tensor | QuantizedLinear
    k: torch.Tensor | QuantizedLinear
    v: torch.Tensor | QuantizedLinear
    o: torch.Tensor | QuantizedLinear
    ff_norm: torch.Tensor
    gate: torch.Tensor | QuantizedLinear
    up: torch.Tensor | QuantizedLinear
    down: torch.Tensor | QuantizedLinear


class WeightLoader:
    """Moves a checkpoint's tensors onto the device in the compute dtype, refusing what the model cannot run
    correctly: a weight stored as integers (or 8-bit floats) without a quantization_config, NaN or infinite values
    (also those a conversion to fp16/bf16 creates), tensors that belong to nothing the model built. strict=False
    turns each refusal into a warning.

    The finiteness check is one aminmax pass per tensor: on converted tensors while they are in cache, on zero-copy
    views of the memory map a read of the file that the first forward would make anyway. A weight the model holds
    as a copy (packed for the int8 / fp8 kernels, converted to another dtype or device) has its mapped pages released
    once read, so it is resident once; the map stays resident only for the tensors used in place."""

    def __init__(self, store: WeightStore, scheme: QuantScheme | None, device: torch.device, dtype: torch.dtype,
                 strict: bool = True, huge_pages: bool = True):
        self.store, self.scheme, self.device, self.dtype, self.strict = store, scheme, device, dtype, strict
        self.released: list[str] = []  # tensors the model holds copies of: their mapped pages are not needed
        # the linears' memory on CPU: in load order, in huge pages where the OS offers them (ops.WeightArena)
        self.arena = ops.WeightArena() if huge_pages and device.type == "cpu" else None

    def refuse(self, message: str) -> None:
        if self.strict:
            raise CheckpointError(f"{self.store.directory}: {message} (illada_rt.load(..., strict=False) loads it "
                                  f"anyway)")
        warnings.warn(f"{self.store.directory}: {message}", stacklevel=4)

    def _check_dtype(self, name: str, quantizable: bool) -> None:
        dt = self.store.entry(name).dtype if name in self.store else None
        if dt is None or dt in FLOAT_DTYPES or (quantizable and self.scheme and dt in SCHEMES.values()):
            return
        if quantizable and dt in SCHEMES.values():
            self.refuse(f"tensor {name!r} is stored as {dt} but config.json has no quantization_config (the scheme "
                        f"and scales of a quantized checkpoint; `illada-rt quantize` writes both)")
        else:
            self.refuse(f"tensor {name!r} is stored as {dt}; expected a float dtype (bfloat16, float16, float32)"
                        + (" or a quantized weight with its scale" if quantizable and self.scheme else ""))

    def _check_finite(self, name: str, t: torch.Tensor, stored: torch.Tensor) -> None:
        if not has_nonfinite(t):
            return
        if has_nonfinite(stored):
            self.refuse(f"tensor {name!r} holds NaN or infinite values")
        else:
            self.refuse(f"tensor {name!r} overflows {t.dtype} (largest magnitude {float(stored.abs().max()):.4g}); "
                        f"load it with dtype=torch.float32")

    def dense(self, name: str, shape: tuple[int, ...]) -> torch.Tensor:
        """A norm or embedding weight: memory-mapped on disk; .to() copies only when the device or dtype differs."""
        self._check_dtype(name, quantizable=False)
        stored = self.store.get(name, shape)
        t = stored.to(device=self.device, dtype=self.dtype)
        self._check_finite(name, t, stored)
        self._release_if_copied(name, t, stored)
        return t

    def linear(self, name: str, shape: tuple[int, int]) -> torch.Tensor | QuantizedLinear:
        self._check_dtype(name, quantizable=True)
        w = load_linear(self.store, name, shape, self.scheme, self.device, self.dtype, self.arena)
        stored = self.store.get(name, shape)
        if isinstance(w, QuantizedLinear):  # int8 is always finite; 8-bit floats and the scales may not be
            scale = name[: -len(".weight")] + ".weight_scale"
            self._check_finite(name, stored, stored)
            s = self.store.get(scale, self.store.entry(scale).shape)
            self._check_finite(scale, s, s)
            self._release(name)  # packed (or dequantized) into memory of its own: the file's pages go
            self._release(scale)
        else:
            self._check_finite(name, w, stored)
            self._release_if_copied(name, w, stored)
        return w

    def _release_if_copied(self, name: str, t: torch.Tensor, stored: torch.Tensor) -> None:
        """Keep the mapped pages of a tensor the model runs from in place; drop them when it holds a copy."""
        if t.device != stored.device or t.data_ptr() != stored.data_ptr():
            self._release(name)

    def _release(self, name: str) -> None:
        self.store.release(name)
        self.released.append(name)

    def release_again(self) -> None:
        """Drop the released tensors' pages once more after the last read: reading a neighbour maps the pages around
        each fault that the page cache holds (the kernel's fault-around, 64 KB), released ones included."""
        for name in self.released:
            self.store.release(name)

    def check_all_read(self, cfg: ModelConfig) -> None:
        """Refuse tensors the model did not load (a layer beyond n_layers, a bias, a norm it lacks ...)."""
        store, g = self.store, global_names(cfg)
        if cfg.tied_embeddings and g["head"] in store and g["head"] not in store.read:
            shape = (cfg.embedding_size, cfg.d_model)
            if not torch.equal(store.get(g["head"], shape), store.get(g["embed"], shape)):
                self.refuse(f"config.json ties the LM head to the embedding, but the checkpoint has a different "
                            f"{g['head']!r}")
        ct = self.scheme is not None and self.scheme.source == "compressed-tensors"
        unused = [n for n in store.names() if n not in store.read and not n.endswith(".rotary_emb.inv_freq")
                  and not (ct and n.endswith(".input_scale"))]  # static FP8 activation scales: unused on CPU
        if unused:
            more = f" and {len(unused) - 5} more" if len(unused) > 5 else ""
            self.refuse(f"{len(unused)} tensor(s) belong to no part of the model config.json describes "
                        f"({cfg.layout} layout, {cfg.n_layers} layers): "
                        f"{', '.join(repr(n) for n in unused[:5])}{more}")


class Transformer:
    """Weights on one device in one compute dtype, and the forward pass over them."""

    def __init__(self, cfg: ModelConfig, store: WeightStore, device: torch.device, dtype: torch.dtype,
                 strict: bool = True, huge_pages: bool = True):
        self.cfg, self.device, self.dtype = cfg, device, dtype
        self.store = store  # keeps the memory maps open for the tensors that view them
        check_layout_matches(cfg, store)
        g = global_names(cfg)
        d, e = cfg.d_model, cfg.embedding_size

        self.scheme = read_scheme(cfg.raw)
        load = WeightLoader(store, self.scheme, device, dtype, strict, huge_pages)
        self.embed = load.dense(g["embed"], (e, d))
        shapes = layer_shapes(cfg)
        self.layers = []
        for i in range(cfg.n_layers):
            names = layer_names(cfg, i)
            self.layers.append(LayerWeights(**{k: (load.linear if k in LINEARS else load.dense)(names[k], shapes[k])
                                               for k in shapes}))
        self.final_norm = load.dense(g["final_norm"], (d,))
        self.head = self.embed if cfg.tied_embeddings else load.linear(g["head"], (e, d))
        load.check_all_read(cfg)
        load.release_again()
        self._rope = None  # (a copy of the positions or None, (T, device), cos, sin): see _rope_tables
        self._stack: layer_stacks.CompiledLayers | None | bool = False  # the blocks as one compiled call (built on first use)

    def compiled_layers(self) -> layer_stacks.CompiledLayers | None:
        """The blocks checked once into a compiled layer stack (ops/stack.py), or None where some block cannot run
        there (then every forward runs the layer loop). Built at the first forward from the weights self.layers then
        holds: the stack reads their memory, so a weight changed in place is seen, but a layer's weight replaced by
        another object afterwards is not (set self._stack = False to build it again)."""
        if self._stack is False:
            self._stack = layer_stacks.build(self.cfg, self.layers) if self.device.type == "cpu" else None
        return self._stack

    def _rope_tables(self, positions: torch.Tensor | None, T: int, device: torch.device):
        """cos/sin of the whole canvas, [T, head_dim] or [B, T, head_dim]. A decode passes the same positions (or
        none) to every forward, so the last call's tables are kept and reused while the positions are equal to a
        copy kept with them (a comparison of B x T integers against recomputing the tables' cos and sin)."""
        c, key = self._rope, (T, device)
        if c is not None and c[1] == key and (
                (positions is None and c[0] is None)
                or (positions is not None and c[0] is not None and c[0].shape == positions.shape
                    and c[0].device == positions.device and bool(torch.equal(c[0], positions)))):
            return c[2], c[3]
        pos = torch.arange(T, device=device) if positions is None else positions
        cos, sin = ops.rope_cos_sin(pos, self.cfg.head_dim, self.cfg.rope_theta)
        self._rope = (None if positions is None else positions.clone(), key, cos, sin)
        return cos, sin

    def weight_bytes(self) -> dict:
        """Bytes the weights take on their device: quantized linears as held (packed, or dequantized), dense tensors,
        and the total; plus how many linears each kernel runs ({"gemm_w8a8": 196, ...})."""
        from collections import Counter

        from .quant import weight_nbytes

        quantized = dense = 0
        kernels: Counter = Counter()
        weights = [self.embed, self.final_norm] + ([] if self.head is self.embed else [self.head])
        weights += [getattr(layer, f) for layer in self.layers for f in layer.__dataclass_fields__]
        for w in weights:
            if isinstance(w, QuantizedLinear):
                quantized += weight_nbytes(w)
                kernels[w.kernel] += 1
            else:
                dense += weight_nbytes(w)
        return {"quantized": quantized, "dense": dense, "total": quantized + dense, "kernels": dict(kernels)}

    @torch.inference_mode()
    def forward(self, ids: torch.Tensor, key_mask: torch.Tensor | None = None,
                positions: torch.Tensor | None = None, logits_from: int = 0,
                logits_to: int | None = None, cache: KVCache | None = None,
                cache_from: int | None = None, float_logits: bool = True,
                logits_rows: torch.Tensor | None = None) -> torch.Tensor:
        """ids [B, L] int64 -> float32 logits [B, logits_to - logits_from, embedding_size] (float_logits=False:
        in the compute dtype, as the LM head gives them, for a reader that widens every value to float32 exactly
        as .float() would: the decoders' sampling kernels; this saves a pass and a fresh buffer of
        rows x vocab floats per step).

        key_mask [B, T] bool: False marks padding keys nobody may attend to. positions [B, T] or [T]:
        RoPE positions of the whole canvas (default 0..T-1). Only rows logits_from:logits_to of the input
        go through the final norm and the LM head, which is where most of a small block's FLOPs would
        otherwise go. With `cache` and cache_from=None the input is the whole canvas (T = L) and its
        keys/values fill the cache; with cache_from=s the input is canvas columns [s, s + L), which
        overwrite their cache slots, and attention runs over all T cached slots.
        logits_rows [B, logits_to - logits_from] bool: only those cells' logits, [K, embedding_size] in row-major
        order of the True cells (a decoder needs the still-masked cells only: with a head that computes rows
        independently, the others never reach the final norm and the head).
        """
        cfg = self.cfg
        B, L = ids.shape
        T = L if cache_from is None else cache.length
        if cache_from is not None and not 0 <= cache_from <= T - L:
            raise ValueError(f"cache_from={cache_from} with {L} columns does not fit a cache of {T}")
        cos, sin = self._rope_tables(positions, T, ids.device)
        if cache_from is not None:
            cos, sin = cos[..., cache_from:cache_from + L, :], sin[..., cache_from:cache_from + L, :]
        h = F.embedding(ids, self.embed)
        H, Hkv, D = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        eps = cfg.rms_norm_eps
        down = None  # the previous block's MLP output, added to h together with the next norm (ops.add_rms_norm)
        stack = self.compiled_layers()
        if layer_stacks.usable(stack, h, D):
            h, down = layer_stack(stack, h, cos, sin, key_mask, cache, cache_from)
        for i, w in enumerate(self.layers if down is None else ()):
            if down is None:
                n = ops.rms_norm(h, w.attn_norm, eps)
            else:
                h, n = ops.add_rms_norm(h, down, w.attn_norm, eps, sum_out=down)  # into the GEMM's fresh output
            q, k, v = linears(n, (w.q, w.k, w.v))
            q = q.view(B, L, H, D).transpose(1, 2)
            k = k.view(B, L, Hkv, D).transpose(1, 2)
            v = v.view(B, L, Hkv, D).transpose(1, 2)
            q = ops.apply_rope(q, cos, sin, out=q)  # in place: q and k were just written by their GEMM
            k = ops.apply_rope(k, cos, sin, out=k)
            if cache is not None:
                if cache_from is None:
                    cache.k[i], cache.v[i] = k, v
                else:
                    cache.k[i][:, :, cache_from:cache_from + L] = k
                    cache.v[i][:, :, cache_from:cache_from + L] = v
                    k, v = cache.k[i], cache.v[i]
            a = ops.attention(q, k, v, key_mask).transpose(1, 2).reshape(B, L, H * D)
            o = linear(a, w.o)
            h, m = ops.add_rms_norm(h, o, w.ff_norm, eps, sum_out=o)
            g, u = linears(m, (w.gate, w.up))
            down = swiglu_linear(g, u, w.down) if swiglu_fuses(w.down) else linear(ops.swiglu(g, u), w.down)
        rows = slice(logits_from, logits_to)  # only these rows reach the head: add the last residual there only
        h, down = h[:, rows], (None if down is None else down[:, rows])
        if logits_rows is not None and (logits_rows.dtype != torch.bool or logits_rows.shape != h.shape[:2]
                                        or logits_rows.device != h.device):
            raise ValueError(f"logits_rows: expected a bool tensor {tuple(h.shape[:2])} on {h.device} (the rows "
                             f"logits_from:logits_to of each batch row), got {logits_rows.dtype} "
                             f"{tuple(logits_rows.shape)} on {logits_rows.device}")
        picked = logits_rows is not None and self._head_rows_independent(h)
        if picked:  # only the rows asked for reach the final norm and the head
            h, down = h[logits_rows], (None if down is None else down[logits_rows])
        if down is None:
            h = ops.rms_norm(h, self.final_norm, eps)
        else:
            h = ops.add_rms_norm(h, down, self.final_norm, eps)[1]
        logits = linear(h, self.head)
        if logits_rows is not None and not picked:
            logits = logits[logits_rows]
        return logits.float() if float_logits else logits

    def _head_rows_independent(self, h: torch.Tensor) -> bool:
        """Whether the LM head computes each of h's rows [B, n, d] alone, the same bits whichever other rows it runs
        with: the W8A8 kernel (per-row quantization, exact int32 sums) and the compiled bf16 GEMM (a fixed
        accumulation order per output). PyTorch's GEMMs may block by M and round differently: those heads run on
        every row, and the rows asked for are picked from their logits."""
        if isinstance(self.head, QuantizedLinear):
            return self.head.kernel == "w8a8" and ops.w8a8_runs_kernel(h)
        return ops.linear_bf16_route(h, [self.head]) == "gemm_bf16"
