"""The `illada-rt` command line: one module, a subcommand each.

Exit codes: 0 ok, 2 usage (bad arguments or decoding parameters), 1 failure (unreadable checkpoint,
runtime error), 141 when the reader of stdout went away (`| head`: quiet, the status of a process killed by
SIGPIPE). Errors print one line; --debug (before or after the subcommand) shows the traceback.
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
import signal
import sys
import time

SEED_LIMIT = 2**64  # seeds are unsigned 64-bit (the Philox key); the API takes the same range
MODEL_HELP = ("a Hugging Face repo id (ORG/NAME: from the hub cache, else its config, safetensors and tokenizer are "
              "downloaded; HF_HUB_OFFLINE=1: the cache only) or a checkpoint directory")


class UsageError(Exception):
    """Bad command-line usage detected after parsing (exit code 2)."""


def _parse_ids(text: str) -> list[int]:
    try:
        return [int(t) for t in text.replace(",", " ").split()]
    except ValueError:
        raise UsageError(f"--ids: expected integers separated by commas or spaces, got {text!r}") from None


def _seed(text: str) -> int:
    """argparse type of --seed: an integer in [0, 2**64)."""
    try:
        seed = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if not 0 <= seed < SEED_LIMIT:
        raise argparse.ArgumentTypeError(f"expected an integer in [0, 2**64), got {text}")
    return seed


def cmd_generate(args) -> int:
    import illada_rt

    prompt = args.prompt if args.prompt is not None else sys.stdin.read()
    if args.prompt is None and prompt.endswith("\n"):
        prompt = prompt[:-1]
    m = illada_rt.load(args.model, device=args.device, dtype=args.dtype, mask_token_id=args.mask_id,
                       revision=args.revision)
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
    filled_ids = g.tokens[0, g.attention_mask[0]][:len(batch[0])].tolist()
    if m.mask_token_id in batch[0] and text is not None:  # infilling: the prompt, masks filled, then the generation
        text = m.decode_filled(filled_ids, out, kwargs.get("stop"))
    if args.json:
        print(json.dumps({"prompt": prompt if not args.ids else None, "prompt_ids": batch[0], "tokens": out,
                          "filled_prompt_ids": filled_ids,
                          "text": text, "nfe": g.nfe, "timings": timings,
                          "tokens_per_s": round(len(out) / max(timings["generate_s"], 1e-9), 2)}))
    elif args.ids:  # ids in, ids out: the generated ids, after the prompt's (masks filled) when it had masks
        print(" ".join(map(str, (filled_ids if m.mask_token_id in batch[0] else []) + out)))
    else:
        print(text)
        print(f"# {len(out)} tokens, {g.nfe} forwards, {timings['generate_s']:.2f} s", file=sys.stderr)
    return 0


def _dtype_name(dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _quant_info(cfg, caps, compute_dtype) -> tuple[str | None, str | None]:
    """(a description of a quantized checkpoint and of how it runs, the CPU kernel of its linears) or (None, None);
    the kernel is what QuantizedLinear picks when load() runs it on CPU in compute_dtype (quant.linear_kernel)."""
    import torch

    from illada_rt.quant import cuda_gemm_kernel, linear_kernel, read_scheme

    sch = read_scheme(cfg.raw)
    if sch is None:
        return None, None
    kernel = linear_kernel(sch.scheme, sch.granularity, torch.device("cpu"), compute_dtype)
    cuda_kernel = cuda_gemm_kernel(sch.scheme, sch.granularity)
    cuda_status = caps["cuda_kernels"].get(cuda_kernel, "") if cuda_kernel else ""
    compute = _dtype_name(compute_dtype)
    runs = {"w8a8": f"W8A8 kernel {caps['kernels']['gemm_w8a8']['cpu']}",
            "fp8w": f"FP8-weight kernel {caps['kernels']['gemm_fp8w']['cpu']}",
            "dequantized": f"weights dequantized to {compute} at load (GEMMs as for dense weights: "
                           f"{caps['kernels']['gemm (bf16 linears)']['cpu'] if compute == 'bfloat16' else 'torch'})"}[kernel]
    acts = "int8, dynamic per token" if kernel == "w8a8" else f"{compute} (weight-only)"
    ignore = f", {len(sch.ignore)} weights left unquantized" if sch.ignore else ""
    fp8 = " (W8A8 e4m3 on sm_89+, weight-only before)" if cuda_kernel == "gemm_fp8" else ""
    if cuda_kernel is None:
        on_cuda = "weights dequantized at load (no CUDA GEMM for this scheme)"
    elif cuda_status.startswith("_C_cuda"):
        on_cuda = f"the {cuda_kernel} GEMM{fp8}, weights kept quantized ({cuda_status})"
    else:
        on_cuda = f"weights dequantized at load while the {cuda_kernel} GEMM{fp8} does not run ({cuda_status})"
    return (f"{sch.scheme} weights ({sch.granularity} scales, {sch.source}), activations {acts}{ignore}; on CPU "
            f"({compute} compute): {runs}; on CUDA: {on_cuda}"), kernel


def _cuda_bytes(cfg, store) -> dict:
    import torch

    from illada_rt.quant import cuda_gemm_kernel, device_bytes_estimate, read_scheme

    sch = read_scheme(cfg.raw)
    out = {"dequantized (bf16)": device_bytes_estimate(store, "dequantized", torch.bfloat16)}
    gemm = cuda_gemm_kernel(sch.scheme, sch.granularity) if sch is not None else None
    if gemm:
        out[f"with {gemm}"] = device_bytes_estimate(store, gemm, torch.bfloat16)
    return out


def cmd_info(args) -> int:
    from collections import Counter

    import torch

    import illada_rt
    from illada_rt.api import DEFAULT_MODEL, _resolve_dtype
    from illada_rt.checkpoint import WeightStore, directory_size
    from illada_rt.config import read_config
    from illada_rt.hub import resolve
    from illada_rt.tokenizer import load_tokenizer

    path = resolve(args.model or DEFAULT_MODEL, args.revision)
    cfg = read_config(path)
    tok = load_tokenizer(path)
    store = WeightStore(path)
    compute = _resolve_dtype(None, torch.device("cpu"), store)  # what load() computes in on CPU by default
    caps = illada_rt.capabilities()
    quantization, quantized_kernel = _quant_info(cfg, caps, compute)
    stored = store.storage_dtype()
    info = {
        "path": str(path),
        "layout": cfg.layout,
        "layers": cfg.n_layers, "d_model": cfg.d_model, "heads": cfg.n_heads, "kv_heads": cfg.n_kv_heads,
        "mlp_hidden_size": cfg.mlp_hidden_size, "vocab_size": cfg.vocab_size,
        "max_sequence_length": cfg.max_sequence_length, "tied_embeddings": cfg.tied_embeddings,
        "mask_token_id": cfg.mask_token_id if cfg.mask_token_id is not None else (tok.mask_token_id if tok else None),
        # what the weight files hold (not config.json's torch_dtype): the float dtype, and tensors per dtype
        "storage_dtype": _dtype_name(stored) if stored is not None else None,
        "tensor_dtypes": dict(Counter(_dtype_name(store.entry(n).dtype) for n in store.names()).most_common()),
        "compute_dtype_cpu": _dtype_name(compute), "parameters": cfg.parameter_count(),
        "quantization": quantization, "quantized_kernel_cpu": quantized_kernel,
        "weights_bytes": directory_size(path),
        # on a GPU: quantized linears at one byte per weight when the CUDA GEMM runs them, else dequantized
        "weights_bytes_cuda": _cuda_bytes(cfg, store),
        "tokenizer": tok.backend if tok else None, "chat_template": bool(tok and tok.chat_template),
        "kernels": caps["kernels"], "cpu": caps["cpu"], "cuda_archs": caps["cuda_archs"],
        "cuda_devices": caps["cuda_devices"],
        # the CUDA kernels' first-use self-check on this GPU: per kernel passed or not, and each check's detail
        "cuda_self_check": caps["cuda_kernels"].get("self_check"),
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
    from illada_rt.quantize import logits_agreement, plan_quantize, report_prompts, write_quantized

    texts = list(args.prompt or [])
    if args.prompts_file:
        try:
            lines = [ln for ln in Path(args.prompts_file).read_text(encoding="utf-8").splitlines() if ln.strip()]
        except (OSError, UnicodeDecodeError) as e:
            raise UsageError(f"--prompts-file {args.prompts_file}: cannot read ({getattr(e, 'strerror', None) or e})"
                             ) from None
        if not lines:
            raise UsageError(f"--prompts-file {args.prompts_file}: holds no prompt (one per line)")
        texts += lines
    if texts and not args.report:
        raise UsageError("--prompt/--prompts-file go with --report")
    skip = [s for s in (args.skip or "").split(",") if s.strip()]
    plan = plan_quantize(args.src, args.dst, args.scheme, args.granularity, skip, args.force, args.revision)
    prompts = report_prompts(plan.src, plan.cfg, texts) if args.report else []  # checked before writing anything
    for note in plan.notes:
        print(f"illada-rt: note: {note}", file=sys.stderr)
    s = write_quantized(plan, measure_error=args.report, progress=not args.quiet)
    mb = 1024 * 1024
    print(f"{s.dst}: {args.scheme} ({args.granularity}) - {len(s.quantized)} weights quantized, "
          f"{len(s.ignored)} skipped; {s.bytes_before / mb:.1f} MiB -> {s.bytes_after / mb:.1f} MiB "
          f"({s.bytes_after / max(s.bytes_before, 1):.2f}x) in {s.seconds:.1f} s; copied: "
          f"{', '.join(s.copied_files) or 'nothing else'}")
    if args.report:
        print(f"{'weight':<48} {'rel. Frobenius':>14} {'max abs':>10}")
        for name, e in s.errors.items():
            print(f"{name:<48} {e['rel_frobenius']:>14.3e} {e['max_abs']:>10.3e}")
        a = logits_agreement(plan.src, plan.dst, prompts)
        print(f"logits vs the original on {a['positions']} positions: top-1 agreement "
              f"{100 * a['top1_agreement']:.2f}%, relative error {a['rel_logit_error']:.3e}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="illada-rt", description="Masked diffusion LM runtime (iLLaDA, LLaDA)")
    p.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    # --debug after the subcommand too; SUPPRESS keeps a subcommand from resetting one given before it
    debug = argparse.ArgumentParser(add_help=False)
    debug.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks on errors")
    hub = argparse.ArgumentParser(add_help=False)
    hub.add_argument("--revision", default=None, help="with a repo id: the branch, tag or commit hash (default: the "
                     "repo's default branch)")
    sub = p.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", parents=[debug, hub], help="generate text from a prompt (stdin when omitted)",
                       description="Generate from a prompt. Length defaults are shorter than the Python API's "
                       "(gen_length=128, steps=128, block_length=32) for a quick look on a CPU.")
    g.add_argument("prompt", nargs="?", help="prompt text (or token ids with --ids); read from stdin when absent")
    g.add_argument("--model", default=None, help=f"{MODEL_HELP} (default: the embedded model)")
    g.add_argument("--ids", action="store_true",
                   help="ids in, ids out: the prompt is token ids ('5,17,42' or '5 17 42') and the output is the "
                   "generated ids, space-separated (after the prompt's, masks filled, when it has masks); --json "
                   "gives ids and text")
    g.add_argument("--gen-length", type=int, default=64,
                   help="tokens to generate (default: %(default)s; the API's: 128)")
    g.add_argument("--steps", type=int, default=64,
                   help="denoising steps (forwards) in all, split evenly over the blocks; with --max-new-tokens, "
                   "steps per block (default: %(default)s; the API's: 128)")
    g.add_argument("--block-length", type=int, default=32,
                   help="tokens per semi-autoregressive block; divides --gen-length (default: %(default)s)")
    g.add_argument("--temperature", type=float, default=0.0,
                   help="Gumbel sampling temperature, 0 = greedy (default: %(default)s)")
    g.add_argument("--remasking", default="low_confidence", choices=["low_confidence", "random"],
                   help="which predictions a step keeps: the most confident or random ones (default: %(default)s)")
    g.add_argument("--cfg-scale", type=float, default=0.0,
                   help="classifier-free guidance scale, 0 = off (default: %(default)s)")
    g.add_argument("--seed", type=_seed, default=None,
                   help="sampling seed, an integer in [0, 2**64) (default: a random one)")
    g.add_argument("--threshold", type=float, default=None,
                   help="parallel decoding: transfer every masked position with confidence >= this (Fast-dLLM; "
                   "default: off)")
    g.add_argument("--factor", type=float, default=None,
                   help="parallel decoding with Fast-dLLM's factor rule (default: off)")
    g.add_argument("--cache", choices=["prefix", "dual"], default=None, help="Fast-dLLM's KV cache (default: none)")
    g.add_argument("--max-new-tokens", type=int, default=None,
                   help="variable-length generation (iLLaDA): blocks of --block-length, --steps forwards each, "
                   "until an end-of-sequence token, a --stop string or this many tokens (default: off: "
                   "--gen-length tokens)")
    g.add_argument("--stop", action="append", default=None, help="stop string (repeatable; with --max-new-tokens)")
    g.add_argument("--eos-early-stop", action="store_true", help="fixed length: stop once every row ended with EOS")
    g.add_argument("--chat", action="store_true", help="wrap the prompt in the checkpoint's chat template")
    g.add_argument("--mask-id", type=int, default=None, help="mask token id when the checkpoint does not say")
    g.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default: %(default)s)")
    g.add_argument("--dtype", default=None, help="float32, bfloat16 or float16 (default: the stored dtype; "
                   "float16 computes in float32 on CPU)")
    g.add_argument("--visual", action="store_true", help="show the canvas denoising live (on stderr)")
    g.add_argument("--json", action="store_true", help="print tokens, text, NFE and timings as JSON")
    g.set_defaults(func=cmd_generate)

    i = sub.add_parser("info", parents=[debug, hub], help="describe a checkpoint and the kernels that will run")
    i.add_argument("model", nargs="?", default=None, help=f"{MODEL_HELP} (default: the embedded model)")
    i.add_argument("--json", action="store_true")
    i.set_defaults(func=cmd_info)

    q = sub.add_parser("quantize", parents=[debug, hub],
                       help="write a quantized copy of a checkpoint (int8 W8A8 or fp8 weights)")
    q.add_argument("src", help=f"{MODEL_HELP}; LLaDA or Llama-style layout")
    q.add_argument("dst", help="output directory (written to a temporary name, renamed at the end)")
    q.add_argument("--scheme", choices=["int8", "fp8"], default="int8", help="(default: %(default)s)")
    q.add_argument("--granularity", choices=["channel", "block128"], default="channel",
                   help="weight scales per output channel or per 128x128 block (default: %(default)s)")
    q.add_argument("--skip", default=None, help="comma-separated weights to keep unquantized: lm_head, names "
                   "without .weight, or globs such as '*.blocks.0.*'")
    q.add_argument("--force", action="store_true", help="replace DST if it exists")
    q.add_argument("--report", action="store_true", help="print per-weight errors and the logits agreement")
    q.add_argument("--prompt", action="append", help="prompt for --report's logits comparison (repeatable)")
    q.add_argument("--prompts-file", help="text file, one prompt per line, for --report")
    q.add_argument("--quiet", action="store_true", help="no progress bar")
    q.set_defaults(func=cmd_quantize)
    return p


def _stdout_closed() -> int:
    """The reader of stdout went away (`| head`): point stdout and stderr at /dev/null, so that nothing more is
    written there (not even Python's flush at exit), and end with the status of a process killed by SIGPIPE."""
    try:
        null = os.open(os.devnull, os.O_WRONLY)
        for stream in (sys.stdout, sys.stderr):
            os.dup2(null, stream.fileno())
    except (OSError, ValueError):  # streams without a file descriptor (in-process callers): nothing to redirect
        pass
    return 128 + signal.SIGPIPE


def _run(args) -> int:
    """Run the subcommand; errors become one line on stderr and an exit code (--debug: the traceback)."""
    from illada_rt.errors import CheckpointError, ConfigError, DecodingError

    try:
        return args.func(args)
    except BrokenPipeError:
        raise
    except (ConfigError, CheckpointError, DecodingError, OSError) as e:
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


def main(argv: list[str] | None = None) -> int:
    # stdout is flushed before returning, so that a closed pipe shows here, where it is handled, not at exit
    try:
        try:
            args = build_parser().parse_args(argv)
        except SystemExit:  # --help, or a usage error: argparse has printed
            sys.stdout.flush()
            raise
        code = _run(args)
        sys.stdout.flush()
        return code
    except BrokenPipeError:
        return _stdout_closed()


if __name__ == "__main__":
    sys.exit(main())
