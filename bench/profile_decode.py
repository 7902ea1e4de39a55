"""Where a decode's time goes (issue 14's profile mode): GEMMs (with their own % of this machine's measured GEMM
peak), attention, norms/activations/RoPE, sampling/selection, and the Python/framework rest, per policy, on one of
the bench models. One run per policy after a warm-up; name the CPU beside any figure you quote.

    python bench/profile_decode.py --model 176m --policy exact dual dual_int8
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import illada_rt  # noqa: E402
from conftest import BENCH_MODELS  # noqa: E402
from illada_rt.synthetic import write_checkpoint  # noqa: E402
from roofline import CATEGORIES, gemm_peaks, gemm_peaks_now, profile  # noqa: E402

POLICIES = {"exact": {}, "prefix": {"cache": "prefix"}, "dual": {"cache": "dual"}, "exact_int8": {},
            "prefix_int8": {"cache": "prefix"}, "dual_int8": {"cache": "dual"},
            # the same loops on PyTorch's own kernels (ILLADA_RT_KERNELS=reference): the peers of test_bench_fast.py
            "eager_exact": {}, "eager_dual": {"cache": "dual"}}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="small", choices=sorted(BENCH_MODELS))
    ap.add_argument("--policy", nargs="+", default=["exact", "dual", "dual_int8"], choices=list(POLICIES))
    ap.add_argument("--prompt", type=int, default=64)
    ap.add_argument("--gen", type=int, default=128)
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--block", type=int, default=32)
    ap.add_argument("--ops", action="store_true", help="also print each op's time and calls")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        path = write_checkpoint(Path(tmp) / args.model, BENCH_MODELS[args.model])
        models = {"bf16": illada_rt.load(path)}
        if any(p.startswith("eager_") for p in args.policy):  # PyTorch with its weights in ordinary pages
            models["peer"] = illada_rt.load(path, huge_pages=False)
        if any(p.endswith("_int8") for p in args.policy):
            from illada_rt.quantize import quantize_checkpoint

            quantize_checkpoint(path, Path(tmp) / "int8", "int8", progress=False)
            models["int8"] = illada_rt.load(Path(tmp) / "int8")
        peaks = gemm_peaks(torch.get_num_threads())
        cpu = illada_rt.capabilities()["cpu"]
        print(f"{cpu.get('model') or platform.processor()}, {torch.get_num_threads()} threads, ISA {cpu.get('isa')}; "
              f"GEMM peaks (same run): bf16 {peaks['bf16_gemm_gops']} GFLOP/s, int8 {peaks['int8_gemm_gops']} GOP/s; "
              "each policy's GEMM % is against the rate measured again right before its profiled decode")
        cols = list(CATEGORIES) + ["python"]
        print("| policy | total s | " + " | ".join(cols) + " | GEMM % of peak | GEMM calls by kernel |")
        print("|---|---:|" + "---:|" * len(cols) + "---:|---|")
        for name in args.policy:
            m = models["int8" if name.endswith("_int8") else "peer" if name.startswith("eager_") else "bf16"]
            prompt = torch.randint(1, m.config.vocab_size - 1, (1, args.prompt),
                                   generator=torch.Generator().manual_seed(0))
            kw = dict(gen_length=args.gen, steps=args.steps, block_length=args.block, **POLICIES[name])
            eager = name.startswith("eager_")
            if eager:
                os.environ["ILLADA_RT_KERNELS"] = "reference"
            try:
                m.generate(prompt, **kw)  # warm-up
                now = gemm_peaks_now(torch.get_num_threads())  # the GEMM rate of this moment (the machine drifts)
                with profile() as prof:
                    m.generate(prompt, **kw)
            finally:
                if eager:
                    os.environ.pop("ILLADA_RT_KERNELS", None)
            peak = now["int8_gemm_gops" if name.endswith("_int8") else "bf16_gemm_gops"] * 1e9
            gemm_pct = 100 * prof["gemm_flops"] / prof["gemm"] / peak if prof["gemm"] else 0
            cells = [f"{prof[c]:.2f} ({100 * prof[c] / prof['total']:.0f}%)" for c in cols]
            routes = ", ".join(f"{k} {v}" for k, v in sorted(prof["gemm_routes"].items()))
            print(f"| {name} | {prof['total']:.2f} | " + " | ".join(cells) + f" | {gemm_pct:.0f}% | {routes} |")
            if args.ops:
                per_op = sorted(prof["op_seconds"].items(), key=lambda kv: -kv[1])
                print("    " + ", ".join(f"{op} {s * 1e3:.1f} ms / {prof['calls'][op]} calls "
                                       f"({s / prof['calls'][op] * 1e6:.0f} us)" for op, s in per_op))
    return 0


if __name__ == "__main__":
    sys.exit(main())
