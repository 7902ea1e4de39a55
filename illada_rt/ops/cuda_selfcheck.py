"""Known-answer self-check of the CUDA kernels, run once per GPU before they are used by default.

Each kernel runs a few small cases chosen to touch every code path (odd sizes, GQA, padding that masks whole key
tiles, Tk of 3+ tiles so every shared buffer is reused, both dtypes, strided rows, greedy and Gumbel sampling,
top-k and threshold selection) and is compared with its PyTorch reference; the fragment probes
(csrc/cuda/fragment_probe.cu) are compared bit for bit with the CUDA emulator's answer for the same inputs. The
verdict of a tensor-core kernel (attention) also needs the probes to pass.

ops/cuda.py runs this module in a child process (a kernel that faults must not take the user's process down) and
caches the verdicts per GPU, compute capability, driver and package version. By hand:

    python -m illada_rt.ops.cuda_selfcheck               # cuda:0; prints one line per check, exits 1 on a failure
    python -m illada_rt.ops.cuda_selfcheck --device cpu  # the same checks on the CUDA emulator
    python -m illada_rt.ops.cuda_selfcheck --json        # the verdicts as one JSON line (what ops/cuda.py reads)
"""
from __future__ import annotations

import argparse
import json
import sys
import traceback

import torch

from . import cuda as cuda_ops
from . import reference

CHECKS = ("fragments", "attention", "sample_tokens", "select_transfer", "gemm_w8a8", "gemm_fp8")
# kernel -> the checks its verdict needs
NEEDS = {"attention": ("fragments", "attention"), "sample_tokens": ("sample_tokens",),
         "select_transfer": ("select_transfer",), "gemm_w8a8": ("fragments", "gemm_w8a8"),
         "gemm_fp8": ("fragments", "gemm_fp8")}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _randn(*shape, seed: int, device, dtype=torch.float32) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(dtype).to(device)


def check_attention(device: torch.device) -> str:
    worst = []
    for D, dtype, (B, Hq, Hkv, Tq, Tk) in ((64, torch.bfloat16, (2, 4, 2, 37, 200)),
                                          (128, torch.float16, (1, 2, 1, 70, 131))):
        q = _randn(B, Tq, Hq, D, seed=D, device=device, dtype=dtype).transpose(1, 2)
        k = _randn(B, Hkv, Tk, D, seed=D + 1, device=device, dtype=dtype)
        v = _randn(B, Hkv, Tk, D, seed=D + 2, device=device, dtype=dtype)
        mask = torch.ones(B, Tk, dtype=torch.bool, device=device)
        mask[0, :70] = False  # the whole first 64-key tile
        out = cuda_ops.attention(q, k, v, mask)
        _sync(device)
        ref = reference.attention(q.double(), k.double(), v.double(), mask)
        same = reference.attention(q, k, v, mask).double()
        err, err_torch = (out.double() - ref).abs().max().item(), (same - ref).abs().max().item()
        if not (err <= 2 * err_torch + 1e-3):
            raise AssertionError(f"D={D} {dtype}: max error {err:.3g}, PyTorch's own {err_torch:.3g}")
        worst.append(f"D={D} {str(dtype)[6:]} err {err:.1e}")
    return ", ".join(worst)


def check_sample_tokens(device: torch.device) -> str:
    full = _randn(5, 1003, seed=3, device=device) * 3
    for x in (full[:, :1001].contiguous(), full[:, 1:1002]):  # aligned rows, and a strided unaligned view
        for dtype in (torch.float32, torch.bfloat16):
            xx = x.to(dtype)
            tok, conf = cuda_ops.sample_tokens(xx)[:2]
            rtok, rconf = reference.sample_greedy(xx)[:2]
            _sync(device)
            if not (torch.equal(tok, rtok) and torch.allclose(conf, rconf.float(), rtol=1e-4)):
                raise AssertionError(f"greedy {dtype} stride {x.stride(0)}: tokens or confidences differ")
    x = full[:, :1001].contiguous()
    tok, _ = cuda_ops.sample_tokens(x, temperature=1.0, seed=7, offset=2**33)
    noise = reference.gumbel_noise(5, 1001, 7, 2**33).to(device)
    score = x + noise
    chosen, best = score.gather(-1, tok[:, None]).squeeze(-1), score.max(-1).values
    if not bool((chosen >= best - 1e-4 * best.abs().clamp_min(1)).all()):
        raise AssertionError("Gumbel: a token is not the argmax of logits + noise")
    return "greedy (fp32, bf16, strided) and Gumbel"


def check_select_transfer(device: torch.device) -> str:
    g = torch.Generator().manual_seed(5)
    tokens = torch.full((3, 45), 9)
    tokens[:, ::4] = 1
    conf, x0 = torch.rand(3, 45, generator=g), torch.randint(10, 99, (3, 45), generator=g)
    conf[0, 8:16] = 0.5  # ties
    k = torch.tensor([3, 0, 50])
    for kw in (dict(k=k), dict(threshold=0.6)):
        want, ours = tokens.clone(), tokens.clone().to(device)
        reference.select_confident(conf, x0, kw.get("k"), want, 9, None, kw.get("threshold"))
        dkw = {n: (v.to(device) if torch.is_tensor(v) else v) for n, v in kw.items()}
        cuda_ops.select_transfer(conf.to(device), x0.to(device), ours, 9, **dkw)
        _sync(device)
        if not torch.equal(ours.cpu(), want):
            raise AssertionError(f"{'top-k' if 'k' in kw else 'threshold'}: transferred positions differ")
    return "top-k and threshold"


def _gemm_case(device: torch.device, kind: str) -> str:
    from . import cuda_gemm

    g = torch.Generator().manual_seed(11)
    M, N, K = 70, 130, 300  # odd sizes, K padded, several 64-byte stages; split-K forced to 3 and automatic
    x = (torch.randn(M, K, generator=g) * 2).to(torch.bfloat16)
    if kind == "s8":
        w = torch.randint(-127, 128, (N, K), generator=g, dtype=torch.int8)
    else:
        w = (torch.randn(N, K, generator=g) * 100).clamp(-448, 448).to(torch.float8_e4m3fn)
    ws = torch.rand(N, generator=g) * 0.01 + 1e-3
    wt = cuda_gemm.pack_weight(w, ws, "channel", device)
    # the modes this device runs: e4m3 is W8A8 on sm_89+ and weight-only before; the emulator checks both
    modes = [None] if kind == "s8" else ([False, True] if device.type == "cpu" else [cuda_gemm.fp8_weight_only(device)])
    for weight_only in modes:
        outs = [cuda_gemm.linear(x.to(device), wt, torch.float32, splits=s, weight_only=weight_only).cpu()
                for s in (1, 3, None)]
        _sync(device)
        if kind == "s8":  # integer arithmetic: exact
            q, xs = reference.quantize_per_token_s8(x.float())
            want = ((q.long() @ w.long().T).float() * xs[:, None]) * ws[None, :]
            ok = all(torch.equal(o, want) for o in outs)
        else:
            if weight_only:
                want = x.double() @ (w.double() * ws.double()[:, None]).T
            else:
                xs = x.float().abs().amax(1) / 448
                q = (x.float() / xs[:, None]).clamp(-448, 448).to(torch.float8_e4m3fn)
                want = (q.double() @ (w.double() * ws.double()[:, None]).T) * xs.double()[:, None]
            ok = all(((o.double() - want).abs() <= 1e-5 * want.abs().amax()).all() for o in outs)
        if not ok:
            mode = "" if kind == "s8" else (" weight-only" if weight_only else " W8A8")
            raise AssertionError(f"{kind}{mode}: the product differs from the reference (splits 1, 3, automatic)")
    return f"{M}x{N}x{K}, split-K 1/3/auto" + ("" if kind == "s8" else ", " + "/".join(
        "weight-only" if m else "W8A8" for m in modes))


def check_gemm_w8a8(device: torch.device) -> str:
    return _gemm_case(device, "s8")


def check_gemm_fp8(device: torch.device) -> str:
    return _gemm_case(device, "e4m3")


def check_fragments(device: torch.device) -> str:
    """The GPU's ldmatrix/mma registers against the emulator's, bit for bit (integer-valued inputs: exact in any
    accumulation order)."""
    emu = cuda_ops._C_cuda_emu
    if emu is None:
        raise AssertionError("the CUDA emulator (_C_cuda_emu) is not built: nothing to compare the probes with")
    mod = cuda_ops._module(device)
    kw = {} if device.type == "cpu" else {"stream": torch.cuda.current_stream(device).cuda_stream,
                                          "device": device.index or 0}
    g = torch.Generator().manual_seed(1)
    for num in (1, 2, 4):
        for trans in (False, True):
            src = torch.randint(0, 256, (32, 16), dtype=torch.uint8, generator=g)
            rows = torch.randperm(32, generator=g).to(torch.int32).view(1, 32)
            got, want = torch.zeros(32, num, dtype=torch.int32, device=device), torch.zeros(32, num, dtype=torch.int32)
            mod.probe_ldmatrix(src.to(device), rows.to(device), num, trans, got, **kw)
            emu.probe_ldmatrix(src, rows, num, trans, want)
            _sync(device)
            if not torch.equal(got.cpu(), want):
                raise AssertionError(f"ldmatrix x{num}{' .trans' if trans else ''}: registers differ")
    kinds = ["bf16", "f16", "s8"]
    if device.type == "cpu" or torch.cuda.get_device_capability(device) >= (8, 9):
        kinds.append("e4m3")
    elem = {"bf16": torch.bfloat16, "f16": torch.float16, "s8": torch.int8, "e4m3": torch.float8_e4m3fn}
    for kind in kinds:
        per = 2 if kind in ("bf16", "f16") else 4
        vals = torch.randint(-8, 9, (32, 6 * per), generator=g)
        regs = vals.to(elem[kind]).contiguous().view(torch.uint8).view(torch.int32).view(32, 6)
        a, b = regs[:, :4].contiguous(), regs[:, 4:].contiguous()
        c = torch.randint(-50, 50, (32, 4), generator=g, dtype=torch.int32)
        c = c if kind == "s8" else c.float()
        got, want = torch.zeros_like(c, device=device), torch.zeros_like(c)
        mod.probe_mma(kind, a.to(device), b.to(device), c.to(device), got, **kw)
        emu.probe_mma(kind, a, b, c, want)
        _sync(device)
        if not torch.equal(got.cpu(), want):
            raise AssertionError(f"mma {kind}: accumulators differ")
    return f"ldmatrix x1/x2/x4 (+trans), mma {'/'.join(kinds)}"


def run(device: torch.device | str) -> dict[str, dict]:
    """Every check on `device` ('cuda:N', or 'cpu' for the emulator): {check: {"ok": bool, "detail": str}}, and
    per kernel {"kernels": {name: bool}}."""
    device = torch.device(device)
    results: dict[str, dict] = {}
    for name in CHECKS:
        fn = globals()[f"check_{name}"]
        try:
            results[name] = {"ok": True, "detail": fn(device)}
        except Exception as e:  # noqa: BLE001 - a verdict, whatever went wrong
            last = traceback.extract_tb(e.__traceback__)[-1]
            results[name] = {"ok": False, "detail": f"{type(e).__name__}: {e} ({last.name}:{last.lineno})"}
    kernels = {k: all(results[c]["ok"] for c in needs) for k, needs in NEEDS.items()}
    return {"checks": results, "kernels": kernels}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m illada_rt.ops.cuda_selfcheck", description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda:0", help="cuda:N, or cpu for the CUDA emulator (default: cuda:0)")
    ap.add_argument("--json", action="store_true", help="print the verdicts as one JSON line")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device is visible", file=sys.stderr)
        return 2
    if device.type == "cuda" and cuda_ops._C_cuda is None:
        print(f"_C_cuda is not built: {cuda_ops._IMPORT_ERROR}", file=sys.stderr)
        return 2
    out = run(device)
    if args.json:
        print(json.dumps(out))
    else:
        for name, r in out["checks"].items():
            print(f"{name:16s} {'ok    ' if r['ok'] else 'FAILED'} {r['detail']}")
    return 0 if all(out["kernels"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
