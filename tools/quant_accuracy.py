"""Measure what quantization costs in accuracy: the figures in the README's "Quantized checkpoints" section.

    python tools/quant_accuracy.py [--json out.json]

1. Random LLaDA-format checkpoints with spread confidences (three seeds): top-1 agreement and relative logit
   error against the fp32 model, for each scheme/granularity as the runtime runs it, beside plain
   per-output-channel round-to-nearest (RTN) weights of the same format run in fp32.
2. The embedded default model: held-out masked-diffusion loss (LLaDA's bound on the negative log-likelihood,
   nats/token; the held-out chapters and fixed masks of tools/train_tiny.py) for bf16, int8 and fp8.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import illada_rt  # noqa: E402
from illada_rt import quant  # noqa: E402
from illada_rt.quantize import quantize_checkpoint  # noqa: E402
from illada_rt.synthetic import TinySpec, write_checkpoint  # noqa: E402

VARIANTS = [("int8", "channel"), ("int8", "block128"), ("fp8", "channel"), ("fp8", "block128")]


def _metrics(got, ref):
    return {"top1_agreement": float((got.argmax(-1) == ref.argmax(-1)).float().mean()),
            "rel_logit_error": float((got - ref).norm() / ref.norm())}


def _rtn_model(src, scheme):
    m = illada_rt.load(src, dtype="float32")
    for layer in m.transformer.layers:
        for k in ("q", "k", "v", "o", "gate", "up", "down"):
            q, s = quant.quantize_weight(getattr(layer, k), scheme)
            setattr(layer, k, quant.dequantize_weight(q, s, "channel"))
    if m.transformer.head is not m.transformer.embed:
        q, s = quant.quantize_weight(m.transformer.head, scheme)
        m.transformer.head = quant.dequantize_weight(q, s, "channel")
    return m


def random_models(tmp: Path) -> list[dict]:
    rows = []
    for seed in (21, 22, 23):
        spec = TinySpec(d_model=256, n_heads=8, n_kv_heads=4, n_layers=4, mlp_hidden_size=704, vocab_size=2000,
                        mask_token_id=1999, quiet_token=1999, head_gain=6.0, seed=seed)
        src = write_checkpoint(tmp / f"src{seed}", spec)
        ids = torch.randint(0, 1999, (4, 96), generator=torch.Generator().manual_seed(seed))
        ids[:, 48:] = 1999  # half the canvas masked, as during decoding
        ref = illada_rt.load(src, dtype="float32").forward(ids)
        for scheme in ("int8", "fp8"):
            rows.append({"seed": seed, "variant": f"RTN {scheme} weights, fp32 compute (baseline)",
                         **_metrics(_rtn_model(src, scheme).forward(ids), ref)})
        for scheme, gran in VARIANTS:
            dst = tmp / f"q{seed}-{scheme}-{gran}"
            quantize_checkpoint(src, dst, scheme, gran, progress=False)
            m = illada_rt.load(dst, dtype="float32")
            kernel = m.transformer.layers[0].q.kernel
            rows.append({"seed": seed, "variant": f"{scheme} {gran} ({kernel})", **_metrics(m.forward(ids), ref)})
    return rows


def held_out_windows(tok_path: Path, seq: int = 128, n: int = 128):
    """tools/train_tiny.py's held-out chapters (same split, same fixed masks), tokenized by the shipped model."""
    import sentencepiece as spm
    import train_tiny

    docs = train_tiny.chapters(train_tiny.kjv_text())
    order = list(range(len(docs)))
    random.Random(0).shuffle(order)
    val_docs = [docs[i] for i in sorted(order[:max(1, len(docs) // 50)])]
    sp = spm.SentencePieceProcessor(model_file=str(tok_path))
    ids = []
    for d in val_docs:
        ids += sp.encode(d) + [train_tiny.SPECIALS["eos"][1]]
    val = torch.tensor(ids)
    g = torch.Generator().manual_seed(1234)
    starts = torch.randint(0, val.numel() - seq, (n,), generator=g)
    x = torch.stack([val[s:s + seq] for s in starts])
    t = (1 - 1e-3) * torch.rand(n, generator=g) + 1e-3
    u = torch.rand(x.shape, generator=g)
    return x, t, u


@torch.inference_mode()
def diffusion_loss(m, x, t, u) -> float:
    masked = u < t[:, None]
    total = 0.0
    for i in range(0, x.shape[0], 16):
        xb, mb, tb = x[i:i + 16], masked[i:i + 16], t[i:i + 16]
        logits = m.forward(torch.where(mb, torch.full_like(xb, m.mask_token_id), xb))
        ce = F.cross_entropy(logits[mb].float(), xb[mb], reduction="none")
        total += float((ce / tb[:, None].expand_as(xb)[mb]).sum())
    return total / x.numel()


def default_model(tmp: Path) -> list[dict]:
    src = Path(illada_rt.__file__).parent / "assets" / "default"
    x, t, u = held_out_windows(src / "tokenizer.model")
    rows = [{"variant": "bf16 (as shipped)", "held_out_loss": diffusion_loss(illada_rt.load(src), x, t, u)}]
    for scheme, gran in VARIANTS:
        dst = tmp / f"default-{scheme}-{gran}"
        quantize_checkpoint(src, dst, scheme, gran, progress=False)
        rows.append({"variant": f"{scheme} {gran}", "held_out_loss": diffusion_loss(illada_rt.load(dst), x, t, u)})
    base = rows[0]["held_out_loss"]
    for r in rows:
        r["relative_change"] = r["held_out_loss"] / base - 1
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as d:
        rnd = random_models(Path(d))
        print("| seed | variant | top-1 agreement | relative logit error |\n|---|---|---:|---:|")
        for r in rnd:
            print(f"| {r['seed']} | {r['variant']} | {100 * r['top1_agreement']:.2f}% | {r['rel_logit_error']:.2e} |")
        dm = default_model(Path(d))
        print("\n| default model | held-out loss (nats/token) | vs bf16 |\n|---|---:|---:|")
        for r in dm:
            print(f"| {r['variant']} | {r['held_out_loss']:.4f} | {100 * r['relative_change']:+.2f}% |")
    if a.json:
        a.json.write_text(json.dumps({"random_models": rnd, "default_model": dm}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
