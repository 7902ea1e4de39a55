"""Roofline accounting for end-to-end decoding benches (issue 14): the job's FLOPs, counted while it runs, and the
time they would take at this machine's measured GEMM rates.

- FLOPs are counted by wrapping the model's linear (2 M N K for every GEMM, the LM head included, on the rows it
  runs on) and ops.attention (4 B Hq Tq Tk D: scores and P.V), or its compiled layer stack (the same sums over every
  block), during one untimed run of the same decode. The job's LM head is the block's rows (the rows a forward asks
  logits for), as the reference decoders compute it; the runtime runs it on the still-masked cells only where it
  can, and those executed FLOPs are kept apart (count_flops' "gemm_executed", the profile's GEMM rate).
- Peaks are measured in the same run at a large shape: PyTorch's bf16 matmul and torch._int_mm (M = 1024,
  K = N = 4096), the rates a user's PyTorch reaches on this CPU (oneDNN; AMX where the CPU has it). Where the CPU
  has no bf16 arithmetic (AVX2 only), PyTorch's bf16 matmul and _int_mm take oneDNN's slow paths (torch 2.13 on 2
  cores of an AMD EPYC Zen 3: bf16 15-20 GFLOP/s as F.linear computes it and under 1 as a @ b with b [K, N], _int_mm
  2-4 GOP/s) while its fp32 matmul runs at 70-100 GFLOP/s; bf16 operands are exact in fp32, so the bf16 peak is the
  faster of the bf16 and fp32 matmuls, and the int8 peak never less than the bf16 one. A probe at a small shape
  (torch_fast_gemms) decides whether the slow ones are worth timing at the large shape (one bf16 a @ b there takes
  ~40 s).
- The roofline time of a job is gemm_flops / gemm_peak + attention_flops / bf16_peak, the GEMM peak being the
  int8 one for W8A8 models; the roofline fraction is that time over the measured one.
"""
from __future__ import annotations

import contextlib
import functools
import inspect
import time

import torch

from illada_rt import _C, ops
from illada_rt import model as model_mod


@contextlib.contextmanager
def count_flops():
    """Yields a dict {"gemm": flops, "gemm_executed": flops, "attention": flops, "routes": {kernel: GEMM calls}}
    filled while the block runs; routes names which GEMM ran each linear ("gemm_bf16", "torch", or a quantized
    layer's kernel: "w8a8" ...), q/k/v and gate/up counting once each where they run as one call.

    "gemm" is the job's: the LM head on the rows a forward asks logits for (logits_from:logits_to, the block), as
    the reference decoders and the peers compute it. "gemm_executed" is what the GEMMs ran: the same, except that
    a decoder asking for its still-masked cells only (forward's logits_rows) has the head run on those rows where
    it computes rows independently. The roofline takes the job's FLOPs (a policy and its peer then share one for the
    same job); a GEMM's own rate, the executed ones."""
    counts = {"gemm": 0, "gemm_executed": 0, "attention": 0, "routes": {}}
    head = {}  # the forward running now: its LM head and the rows it asks logits for

    def add(flops, job_flops=None):
        counts["gemm_executed"] += flops
        counts["gemm"] += flops if job_flops is None else job_flops

    def route(x, ws):
        if all(isinstance(w, torch.Tensor) for w in ws):
            name = ops.linear_bf16_route(x, ws)
        else:
            name = "+".join(sorted({getattr(w, "kernel", "torch") for w in ws}))
        counts["routes"][name] = counts["routes"].get(name, 0) + 1
    real_linear, real_linears, real_attention = model_mod.linear, model_mod.linears, ops.attention
    real_swiglu_linear, real_stack = model_mod.swiglu_linear, model_mod.layer_stack
    real_forward = model_mod.Transformer.forward
    forward_args = inspect.signature(real_forward)

    def forward(self, *a, **kw):
        b = forward_args.bind(self, *a, **kw)
        b.apply_defaults()
        ids, lo, hi = b.arguments["ids"], b.arguments["logits_from"], b.arguments["logits_to"]
        rows = len(range(ids.shape[1])[lo:hi])
        head.update(weight=self.head, rows=ids.shape[0] * rows)
        try:
            return real_forward(self, *a, **kw)
        finally:
            head.clear()

    def linear(x, w):
        N, K = w.shape  # a tensor's or a QuantizedLinear's
        job = 2 * head["rows"] * N * K if head and w is head["weight"] else None
        add(2 * (x.numel() // x.shape[-1]) * N * K, job)
        route(x, [w])
        return real_linear(x, w)

    def linears(x, ws):  # q/k/v or gate/up sharing x
        add(sum(2 * (x.numel() // x.shape[-1]) * w.shape[0] * w.shape[1] for w in ws))
        route(x, ws)
        return real_linears(x, ws)

    def swiglu_linear(gate, up, w):  # the down projection with the SwiGLU computed inside it
        add(2 * (gate.numel() // gate.shape[-1]) * w.shape[0] * w.shape[1])
        route(gate, [w])
        return real_swiglu_linear(gate, up, w)

    def attention(q, k, v, key_mask=None):
        B, H, Tq, D = q.shape
        counts["attention"] += 4 * B * H * Tq * k.shape[2] * D
        return real_attention(q, k, v, key_mask)

    def layer_stack(stack, x, cos, sin, key_mask, cache, cache_from, timing=None):  # every block in one call
        B, L = x.shape[:2]
        T = L if cache is None or cache_from is None else cache.length
        add(2 * B * L * stack.weights)
        counts["attention"] += stack.n_layers * 4 * B * stack.n_heads * L * T * stack.head_dim
        for name, n in stack.routes.items():
            counts["routes"][name] = counts["routes"].get(name, 0) + n
        return real_stack(stack, x, cos, sin, key_mask, cache, cache_from, timing)

    model_mod.linear, model_mod.linears, model_mod.swiglu_linear = linear, linears, swiglu_linear
    model_mod.layer_stack, ops.attention, model_mod.Transformer.forward = layer_stack, attention, forward
    try:
        yield counts
    finally:
        model_mod.linear, model_mod.linears, model_mod.swiglu_linear = real_linear, real_linears, real_swiglu_linear
        model_mod.layer_stack, ops.attention = real_stack, real_attention
        model_mod.Transformer.forward = real_forward


@functools.lru_cache(maxsize=None)
def _peak_operands() -> tuple:
    a, b = torch.randn(1024, 4096), torch.randn(4096, 4096)
    return (a.bfloat16(), b.bfloat16(), a, b, torch.randint(-127, 128, (1024, 4096), dtype=torch.int8),
            torch.randint(-127, 128, (4096, 4096), dtype=torch.int8))


def _best_gops(fn, flops: float, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return flops / min(times) / 1e9


@functools.lru_cache(maxsize=None)
def torch_fast_gemms(threads: int) -> dict:
    """{"bf16": bool, "int8": bool}: whether PyTorch's bf16 F.linear / _int_mm reach half its fp32 F.linear's rate at
    M = K = N = 256 (both False on AVX2-only CPUs: oneDNN's slow paths there)."""
    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(0)
    a, w = torch.randn(256, 256, generator=g), torch.randn(256, 256, generator=g)
    ai, wi = torch.randint(-127, 128, (256, 256), dtype=torch.int8), torch.randint(-127, 128, (256, 256), dtype=torch.int8)
    flops = 2 * 256 ** 3
    fp32 = _best_gops(lambda: a @ w.t(), flops, 3)
    ab, wb = a.bfloat16(), w.bfloat16()
    return {"bf16": _best_gops(lambda: ab @ wb.t(), flops, 3) >= fp32 / 2,
            "int8": _best_gops(lambda: torch._int_mm(ai, wi.t()), flops, 3) >= fp32 / 2}


def _gemm_rates(threads: int, repeats: int) -> dict:
    torch.set_num_threads(threads)
    a, b, af, bf, ai, bi = _peak_operands()
    fast = torch_fast_gemms(threads)
    flops = 2 * 1024 * 4096 * 4096
    fp32 = round(_best_gops(lambda: af @ bf, flops, repeats), 1)
    bf16 = round(_best_gops(lambda: a @ b, flops, repeats), 1) if fast["bf16"] else None
    int8 = round(_best_gops(lambda: torch._int_mm(ai, bi), flops, repeats), 1) if fast["int8"] else None
    bf16_peak = max(bf16 or 0.0, fp32)
    return {"bf16_gemm_gops": bf16_peak, "int8_gemm_gops": max(int8 or 0.0, bf16_peak), "fp32_matmul_gops": fp32,
            # PyTorch's own bf16 / int8 rates at the large shape; None where the probe found them slow
            "torch_bf16_matmul_gops": bf16, "torch_int_mm_gops": int8}


@functools.lru_cache(maxsize=None)
def gemm_peaks(threads: int) -> dict:
    """The GEMM peaks (GOP/s; see the module's notes) at M = 1024, K = N = 4096 on `threads` threads (best of 5)."""
    return _gemm_rates(threads, 5)


def gemm_peaks_now(threads: int) -> dict:
    """gemm_peaks measured again, quickly (best of 2 after a warm-up, ~0.5 s on 2 Zen 5 cores): the end-to-end bench takes it before
    every round of a decode, so that each round's roofline is at the speed the shared machine has at that moment.
    Its phases move a run by up to ~20% within minutes, the GEMM rate with it; a peak measured once per session
    put one policy's roofline fraction 15 points apart between two runs."""
    return _gemm_rates(threads, 2)


CATEGORIES = {"gemm": ("linear", "linears", "swiglu_linear"), "attention": ("attention",),
              "norms/activations/rope": ("rms_norm", "add_rms_norm", "swiglu", "apply_rope", "rope_cos_sin"),
              "sampling/selection": ("sample_tokens", "sample_greedy", "select_confident")}


@contextlib.contextmanager
def profile():
    """Yields {category: seconds, ..., "gemm_flops": n, "calls": {op: n}, "op_seconds": {op: s}} filled while the
    block runs: the time spent inside the model's linears (GEMMs), ops.attention, the norms/activations/RoPE ops and
    sampling/selection (CPU ops are synchronous, so wall time inside a call is the op's time), per category and per
    op. What the block takes beyond their sum is Python and framework overhead (`python`, filled on exit)."""
    out = {c: 0.0 for c in CATEGORIES}
    out["calls"], out["op_seconds"] = {}, {}
    patched = []
    depth = [0]  # an op that calls another (sample_greedy -> sample_tokens) is timed once, as the outer one

    def wrap(owner, name, category):
        real = getattr(owner, name)

        def timed(*a, **kw):
            if depth[0]:
                return real(*a, **kw)
            depth[0] += 1
            t = time.perf_counter()
            try:
                return real(*a, **kw)
            finally:
                depth[0] -= 1
                dt = time.perf_counter() - t
                out[category] += dt
                out["op_seconds"][name] = out["op_seconds"].get(name, 0.0) + dt
                out["calls"][name] = out["calls"].get(name, 0) + 1
        setattr(owner, name, timed)
        patched.append((owner, name, real))

    # the compiled layer stack times its own ops (_C.LAYER_STACK_OPS, the loop's op names; the copy of a step's keys
    # and values into a cache of another layout counts as attention)
    stack_category = {name: c for c, names in CATEGORIES.items() for name in names}
    stack_category["kv_cache_write"] = "attention"

    def stack_timed(real):
        def timed(stack, x, cos, sin, key_mask, cache, cache_from, timing=None):
            t = torch.zeros(len(_C.LAYER_STACK_OPS), 2, dtype=torch.float64)
            try:
                return real(stack, x, cos, sin, key_mask, cache, cache_from, t)
            finally:
                for name, (seconds, calls) in zip(_C.LAYER_STACK_OPS, t.tolist()):
                    if calls:
                        out[stack_category[name]] += seconds
                        out["op_seconds"][name] = out["op_seconds"].get(name, 0.0) + seconds
                        out["calls"][name] = out["calls"].get(name, 0) + int(calls)
        return timed

    with count_flops() as flops:  # the timers wrap the counters
        for category, names in CATEGORIES.items():
            for name in names:
                wrap(model_mod if name in CATEGORIES["gemm"] else ops, name, category)
        real_stack = model_mod.layer_stack
        model_mod.layer_stack = stack_timed(real_stack)
        patched.append((model_mod, "layer_stack", real_stack))
        start = time.perf_counter()
        try:
            yield out
        finally:
            total = time.perf_counter() - start
            for owner, name, real in reversed(patched):
                setattr(owner, name, real)
            out["total"] = total
            out["python"] = total - sum(out[c] for c in CATEGORIES)
            out["gemm_flops"] = flops["gemm_executed"]  # the GEMMs' own rate: what they ran
            out["gemm_routes"] = flops["routes"]


def roofline(counts: dict, peaks: dict, int8: bool) -> dict:
    """The job's roofline time (s) and its effective peak (GOP/s) for report.py's '% peak' column."""
    gemm_peak = peaks["int8_gemm_gops" if int8 else "bf16_gemm_gops"] * 1e9
    t = counts["gemm"] / gemm_peak + counts["attention"] / (peaks["bf16_gemm_gops"] * 1e9)
    total = counts["gemm"] + counts["attention"]
    return {"roofline_s": t, "roofline_gops": round(total / t / 1e9, 1) if t else None}
