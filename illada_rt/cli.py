"""The `illada-rt` command line: one module, a subcommand each."""
from __future__ import annotations

import argparse
import json
import sys
import time


def _parse_ids(text: str) -> list[int]:
    try:
        return [int(t) for t in text.replace(",", " ").split()]
    except ValueError:
        raise SystemExit(f"illada-rt: error: prompt ids must be integers separated by commas or spaces, got {text!r}")


def cmd_generate(args) -> int:
    import illada_rt

    text = args.prompt_ids if args.prompt_ids is not None else sys.stdin.read()
    ids = _parse_ids(text)
    m = illada_rt.load(args.model, device=args.device, dtype=args.dtype, mask_token_id=args.mask_id)
    t0 = time.perf_counter()
    g = m.generate([ids], gen_length=args.gen_length, steps=args.steps, block_length=args.block_length,
                   temperature=args.temperature, remasking=args.remasking, cfg_scale=args.cfg_scale, seed=args.seed)
    dt = time.perf_counter() - t0
    out = g.generated[0].tolist()
    if args.json:
        print(json.dumps({"prompt": ids, "generated": out, "nfe": g.nfe, "seconds": round(dt, 4)}))
    else:
        print(" ".join(map(str, out)))
        print(f"# {len(out)} tokens, {g.nfe} forwards, {dt:.3f} s", file=sys.stderr)
    return 0


def cmd_info(args) -> int:
    import illada_rt
    from illada_rt.checkpoint import directory_size
    from illada_rt.config import read_config

    cfg = read_config(args.model)
    caps = illada_rt.capabilities()
    info = {
        "path": str(args.model),
        "layout": cfg.layout,
        "layers": cfg.n_layers, "d_model": cfg.d_model, "heads": cfg.n_heads, "kv_heads": cfg.n_kv_heads,
        "mlp_hidden_size": cfg.mlp_hidden_size, "vocab_size": cfg.vocab_size,
        "max_sequence_length": cfg.max_sequence_length, "tied_embeddings": cfg.tied_embeddings,
        "mask_token_id": cfg.mask_token_id, "storage_dtype": cfg.storage_dtype,
        "parameters": cfg.parameter_count(), "weights_bytes": directory_size(args.model),
        "kernels": caps["kernels"], "cuda_archs": caps["cuda_archs"], "cuda_devices": caps["cuda_devices"],
    }
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        for k, v in info.items():
            print(f"{k:>20}: {v}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="illada-rt", description="Masked diffusion LM runtime (iLLaDA, LLaDA)")
    sub = p.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="decode from a prompt of token ids (stdin when omitted)")
    g.add_argument("prompt_ids", nargs="?", help="token ids, e.g. '5,17,42' (read from stdin when absent)")
    g.add_argument("--model", required=True, help="checkpoint directory (config.json + safetensors)")
    g.add_argument("--gen-length", type=int, default=32)
    g.add_argument("--steps", type=int, default=32)
    g.add_argument("--block-length", type=int, default=32)
    g.add_argument("--temperature", type=float, default=0.0)
    g.add_argument("--remasking", default="low_confidence", choices=["low_confidence", "random"])
    g.add_argument("--cfg-scale", type=float, default=0.0)
    g.add_argument("--seed", type=int, default=None)
    g.add_argument("--mask-id", type=int, default=None, help="mask token id when the checkpoint does not say")
    g.add_argument("--device", default="cpu")
    g.add_argument("--dtype", default=None, help="float32, bfloat16 or float16 (default: the stored dtype)")
    g.add_argument("--json", action="store_true", help="print tokens, NFE and timing as JSON")
    g.set_defaults(func=cmd_generate)

    i = sub.add_parser("info", help="describe a checkpoint and the kernels that will run")
    i.add_argument("model", help="checkpoint directory")
    i.add_argument("--json", action="store_true")
    i.set_defaults(func=cmd_info)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from illada_rt.errors import IlladaError

    try:
        return args.func(args)
    except (IlladaError, ValueError, TypeError) as e:
        print(f"illada-rt: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
