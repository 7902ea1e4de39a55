"""The `illada-rt` command line: one module, a subcommand each.

Exit codes: 0 ok, 2 usage (bad arguments or decoding parameters), 1 failure (unreadable checkpoint,
runtime error). Errors print one line; --debug shows the traceback.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
import sys
import time


class UsageError(Exception):
    """Bad command-line usage detected after parsing (exit code 2)."""


def _parse_ids(text: str) -> list[int]:
    try:
        return [int(t) for t in text.replace(",", " ").split()]
    except ValueError:
        raise UsageError(f"--ids: expected integers separated by commas or spaces, got {text!r}") from None


def cmd_generate(args) -> int:
    import illada_rt

    prompt = args.prompt if args.prompt is not None else sys.stdin.read()
    if args.prompt is None and prompt.endswith("\n"):
        prompt = prompt[:-1]
    m = illada_rt.load(args.model, device=args.device, dtype=args.dtype, mask_token_id=args.mask_id)
    kwargs = dict(gen_length=args.gen_length, steps=args.steps, block_length=args.block_length,
                  temperature=args.temperature, remasking=args.remasking, cfg_scale=args.cfg_scale, seed=args.seed,
                  threshold=args.threshold, factor=args.factor, cache=args.cache, eos_early_stop=args.eos_early_stop)
    if args.max_new_tokens is not None:
        kwargs.update(gen_length=None, max_new_tokens=args.max_new_tokens, stop=args.stop or None)
    elif args.stop:
        raise UsageError("--stop needs --max-new-tokens (variable-length generation)")
    if args.ids:
        if args.chat:
            raise UsageError("--chat needs a text prompt, not --ids")
        batch = [_parse_ids(prompt)]
    else:
        if m.tokenizer is None:
            raise UsageError(f"{m.path} has no tokenizer: pass token ids with --ids")
        batch = [m.encode_prompt(prompt, chat=args.chat)]
    timings = {}
    t0 = time.perf_counter()
    if args.visual:
        from .visual import CanvasRenderer

        with CanvasRenderer(m, prompt_length=len(batch[0])) as view:
            g = m.generate(batch, callback=view, **kwargs)
    else:
        g = m.generate(batch, **kwargs)
    timings["generate_s"] = round(time.perf_counter() - t0, 4)
    out = g.generated[0, :int(g.lengths[0])].tolist()
    text = g.text[0] if g.text is not None else None
    filled = None
    if m.mask_token_id in batch[0]:  # infilling: show the prompt with its masks filled, then the generation
        row = g.tokens[0, g.attention_mask[0]][:len(batch[0]) + len(out)].tolist()
        filled = m.decode_generation(row) if text is not None else None
        text = filled
    if args.json:
        print(json.dumps({"prompt": prompt if not args.ids else None, "prompt_ids": batch[0], "tokens": out,
                          "filled_prompt_ids": g.tokens[0, g.attention_mask[0]][:len(batch[0])].tolist(),
                          "text": text, "nfe": g.nfe, "timings": timings,
                          "tokens_per_s": round(len(out) / max(timings["generate_s"], 1e-9), 2)}))
    else:
        print(text if text is not None else " ".join(map(str, out)))
        print(f"# {len(out)} tokens, {g.nfe} forwards, {timings['generate_s']:.2f} s", file=sys.stderr)
    return 0


def _quant_info(cfg, caps) -> str | None:
    from illada_rt.quant import read_scheme

    sch = read_scheme(cfg.raw)
    if sch is None:
        return None
    if sch.scheme == "int8" and sch.granularity == "channel":
        runs = f"W8A8 kernel {caps['kernels']['gemm_w8a8']['cpu']} on CPU"
    elif sch.scheme == "fp8" and sch.granularity in ("channel", "tensor"):
        runs = (f"FP8-weight kernel {caps['kernels']['gemm_fp8w']['cpu']} on CPU; otherwise weights dequantized "
                f"to the compute dtype at load")
    else:
        runs = "weights dequantized to the compute dtype at load (torch GEMMs)"
    ignore = f", {len(sch.ignore)} weights left unquantized" if sch.ignore else ""
    return f"{sch.scheme} weights ({sch.granularity} scales, {sch.source}), activations {sch.activations}{ignore}; {runs}"


def cmd_info(args) -> int:
    import illada_rt
    from illada_rt.api import DEFAULT_MODEL
    from illada_rt.checkpoint import directory_size
    from illada_rt.config import read_config
    from illada_rt.tokenizer import load_tokenizer

    path = args.model or DEFAULT_MODEL
    cfg = read_config(path)
    tok = load_tokenizer(path)
    caps = illada_rt.capabilities()
    info = {
        "path": str(path),
        "layout": cfg.layout,
        "layers": cfg.n_layers, "d_model": cfg.d_model, "heads": cfg.n_heads, "kv_heads": cfg.n_kv_heads,
        "mlp_hidden_size": cfg.mlp_hidden_size, "vocab_size": cfg.vocab_size,
        "max_sequence_length": cfg.max_sequence_length, "tied_embeddings": cfg.tied_embeddings,
        "mask_token_id": cfg.mask_token_id if cfg.mask_token_id is not None else (tok.mask_token_id if tok else None),
        "storage_dtype": cfg.storage_dtype, "parameters": cfg.parameter_count(),
        "quantization": _quant_info(cfg, caps),
        "weights_bytes": directory_size(path),
        "tokenizer": tok.backend if tok else None, "chat_template": bool(tok and tok.chat_template),
        "kernels": caps["kernels"], "cpu": caps["cpu"], "cuda_archs": caps["cuda_archs"],
        "cuda_devices": caps["cuda_devices"],
    }
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        for k, v in info.items():
            if k == "kernels":  # one line per op: what runs on each device
                print(f"{k:>20}:")
                for op, where in v.items():
                    print(f"{op:>22}: " + "; ".join(f"{dev} {impl}" for dev, impl in where.items()))
            else:
                print(f"{k:>20}: {v}")
    return 0


def cmd_quantize(args) -> int:
    from illada_rt.quantize import logits_agreement, quantize_checkpoint

    prompts = list(args.prompt or [])
    if args.prompts_file:
        try:
            prompts += [ln for ln in Path(args.prompts_file).read_text(encoding="utf-8").splitlines() if ln.strip()]
        except OSError as e:
            raise UsageError(f"--prompts-file {args.prompts_file}: cannot read ({e.strerror})") from None
    if prompts and not args.report:
        raise UsageError("--prompt/--prompts-file go with --report")
    skip = [s for s in (args.skip or "").split(",") if s.strip()]
    s = quantize_checkpoint(args.src, args.dst, scheme=args.scheme, granularity=args.granularity, skip=skip,
                            force=args.force, measure_error=args.report, progress=not args.quiet)
    mb = 1024 * 1024
    print(f"{s.dst}: {args.scheme} ({args.granularity}) - {len(s.quantized)} weights quantized, "
          f"{len(s.ignored)} skipped; {s.bytes_before / mb:.1f} MiB -> {s.bytes_after / mb:.1f} MiB "
          f"({s.bytes_after / max(s.bytes_before, 1):.2f}x) in {s.seconds:.1f} s; copied: "
          f"{', '.join(s.copied_files) or 'nothing else'}")
    if args.report:
        print(f"{'weight':<48} {'rel. Frobenius':>14} {'max abs':>10}")
        for name, e in s.errors.items():
            print(f"{name:<48} {e['rel_frobenius']:>14.3e} {e['max_abs']:>10.3e}")
        if not prompts:
            import illada_rt
            from illada_rt.tokenizer import load_tokenizer

            if load_tokenizer(args.src) is None:  # no tokenizer: seeded random token sequences
                import torch

                vocab = illada_rt.load(args.dst).config.vocab_size
                g = torch.Generator().manual_seed(0)
                prompts = [torch.randint(0, vocab, (32,), generator=g).tolist() for _ in range(4)]
            else:
                prompts = ["In the beginning", "The quick brown fox jumps over the lazy dog.",
                           "def main():\n    return 0", "1, 2, 3, 5, 8, 13"]
        a = logits_agreement(args.src, args.dst, prompts)
        print(f"logits vs the original on {a['positions']} positions: top-1 agreement "
              f"{100 * a['top1_agreement']:.2f}%, relative error {a['rel_logit_error']:.3e}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="illada-rt", description="Masked diffusion LM runtime (iLLaDA, LLaDA)")
    p.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = p.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="generate text from a prompt (stdin when omitted)")
    g.add_argument("prompt", nargs="?", help="prompt text (or token ids with --ids); read from stdin when absent")
    g.add_argument("--model", default=None, help="checkpoint directory (default: the embedded model)")
    g.add_argument("--ids", action="store_true", help="the prompt is token ids, e.g. '5,17,42'; print ids")
    g.add_argument("--gen-length", type=int, default=64)
    g.add_argument("--steps", type=int, default=64)
    g.add_argument("--block-length", type=int, default=32)
    g.add_argument("--temperature", type=float, default=0.0)
    g.add_argument("--remasking", default="low_confidence", choices=["low_confidence", "random"])
    g.add_argument("--cfg-scale", type=float, default=0.0)
    g.add_argument("--seed", type=int, default=None)
    g.add_argument("--threshold", type=float, default=None,
                   help="parallel decoding: transfer every masked position with confidence >= this (Fast-dLLM)")
    g.add_argument("--factor", type=float, default=None, help="parallel decoding with Fast-dLLM's factor rule")
    g.add_argument("--cache", choices=["prefix", "dual"], default=None, help="Fast-dLLM's KV cache")
    g.add_argument("--max-new-tokens", type=int, default=None,
                   help="variable-length generation (iLLaDA): one block at a time up to this many tokens")
    g.add_argument("--stop", action="append", default=None, help="stop string (repeatable; with --max-new-tokens)")
    g.add_argument("--eos-early-stop", action="store_true", help="fixed length: stop once every row ended with EOS")
    g.add_argument("--chat", action="store_true", help="wrap the prompt in the checkpoint's chat template")
    g.add_argument("--mask-id", type=int, default=None, help="mask token id when the checkpoint does not say")
    g.add_argument("--device", default="cpu")
    g.add_argument("--dtype", default=None, help="float32, bfloat16 or float16 (default: the stored dtype)")
    g.add_argument("--visual", action="store_true", help="show the canvas denoising live (on stderr)")
    g.add_argument("--json", action="store_true", help="print tokens, text, NFE and timings as JSON")
    g.set_defaults(func=cmd_generate)

    i = sub.add_parser("info", help="describe a checkpoint and the kernels that will run")
    i.add_argument("model", nargs="?", default=None, help="checkpoint directory (default: the embedded model)")
    i.add_argument("--json", action="store_true")
    i.set_defaults(func=cmd_info)

    q = sub.add_parser("quantize", help="write a quantized copy of a checkpoint (int8 W8A8 or fp8 weights)")
    q.add_argument("src", help="checkpoint directory (LLaDA or Llama-style layout)")
    q.add_argument("dst", help="output directory (written to a temporary name, renamed at the end)")
    q.add_argument("--scheme", choices=["int8", "fp8"], default="int8")
    q.add_argument("--granularity", choices=["channel", "block128"], default="channel",
                   help="weight scales per output channel or per 128x128 block")
    q.add_argument("--skip", default=None, help="comma-separated weights to keep unquantized: lm_head, names "
                   "without .weight, or globs such as '*.blocks.0.*'")
    q.add_argument("--force", action="store_true", help="replace DST if it exists")
    q.add_argument("--report", action="store_true", help="print per-weight errors and the logits agreement")
    q.add_argument("--prompt", action="append", help="prompt for --report's logits comparison (repeatable)")
    q.add_argument("--prompts-file", help="text file, one prompt per line, for --report")
    q.add_argument("--quiet", action="store_true", help="no progress bar")
    q.set_defaults(func=cmd_quantize)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from illada_rt.errors import CheckpointError, ConfigError

    try:
        return args.func(args)
    except (ConfigError, CheckpointError, OSError) as e:
        if args.debug:
            raise
        print(f"illada-rt: error: {e}", file=sys.stderr)
        return 1
    except (UsageError, ValueError, TypeError) as e:
        if args.debug:
            raise
        print(f"illada-rt: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as e:  # a bug: one line unless --debug
        if args.debug:
            raise
        print(f"illada-rt: internal error: {type(e).__name__}: {e} (rerun with --debug for the traceback)",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
