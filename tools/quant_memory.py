"""Peak memory of `illada-rt quantize` on an 8B-shaped checkpoint (the README's figure).

    python tools/quant_memory.py [--work /tmp/q8b] [--scheme int8] [--shards 6] [--keep]

Writes a synthetic checkpoint with LLaDA-8B's shapes (d_model 4096, 32 layers, MLP 12288, vocab 126464,
untied head; bf16, ~16 GB) in `--shards` shards, filled with a tiled random pattern (the values do not matter
for memory), then quantizes it in a child process while sampling that process's resident memory every few ms.
Prints the peak added by quantizing, the largest shard, the total and the time; deletes everything unless --keep.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

sys.path.insert(0, str(Path(__file__).resolve().parent))

from illada_rt.quantize import _write_safetensors  # noqa: E402
from rss_probe import added_rss  # noqa: E402

CONFIG = {"model_type": "llada", "d_model": 4096, "n_heads": 32, "n_kv_heads": 32, "n_layers": 32,
          "mlp_hidden_size": 12288, "vocab_size": 126464, "embedding_size": 126464, "rope_theta": 500000.0,
          "rms_norm_eps": 1e-5, "max_sequence_length": 4096, "weight_tying": False, "mask_token_id": 126336,
          "torch_dtype": "bfloat16"}

def tensors():
    d, f, V = CONFIG["d_model"], CONFIG["mlp_hidden_size"], CONFIG["vocab_size"]
    out = [("model.transformer.wte.weight", (V, d))]
    for i in range(CONFIG["n_layers"]):
        b = f"model.transformer.blocks.{i}."
        out += [(b + "attn_norm.weight", (d,)), (b + "q_proj.weight", (d, d)), (b + "k_proj.weight", (d, d)),
                (b + "v_proj.weight", (d, d)), (b + "attn_out.weight", (d, d)), (b + "ff_norm.weight", (d,)),
                (b + "ff_proj.weight", (f, d)), (b + "up_proj.weight", (f, d)), (b + "ff_out.weight", (d, f))]
    return out + [("model.transformer.ln_f.weight", (d,)), ("model.transformer.ff_out.weight", (V, d))]


def write_source(root: Path, shards: int) -> list[int]:
    root.mkdir(parents=True, exist_ok=True)
    pattern = (torch.randn(1 << 24, generator=torch.Generator().manual_seed(0)) * 0.02).to(torch.bfloat16)

    def fill(shape):
        n = 1
        for s in shape:
            n *= s
        reps = -(-n // pattern.numel())
        return pattern.repeat(reps)[:n].view(shape) if len(shape) > 1 else torch.ones(shape, dtype=torch.bfloat16)

    items = tensors()
    total = sum(torch.Size(s).numel() * 2 for _, s in items)
    per, groups, cur, size = total / shards, [], [], 0
    for name, shape in items:
        cur.append((name, shape))
        size += torch.Size(shape).numel() * 2
        if size >= per * (len(groups) + 1) and len(groups) < shards - 1:
            groups.append(cur)
            cur = []
    groups.append(cur)
    weight_map, sizes = {}, []
    for k, group in enumerate(groups):
        fname = f"model-{k + 1:05d}-of-{len(groups):05d}.safetensors"
        plan = [(n, torch.bfloat16, s) for n, s in group]
        shapes = dict(group)
        sizes.append(_write_safetensors(root / fname, plan, lambda n: fill(shapes[n])))
        weight_map.update({n: fname for n, _ in group})
        print(f"wrote {fname}: {sizes[-1] / 2**30:.2f} GiB", flush=True)
    (root / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": sum(sizes)},
                                                                   "weight_map": weight_map}))
    (root / "config.json").write_text(json.dumps(CONFIG, indent=2))
    return sizes


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/illada-q8b"))
    ap.add_argument("--scheme", default="int8", choices=["int8", "fp8"])
    ap.add_argument("--shards", type=int, default=6)
    ap.add_argument("--keep", action="store_true")
    a = ap.parse_args()
    src, dst = a.work / "src", a.work / f"dst-{a.scheme}"
    try:
        t0 = time.time()
        sizes = write_source(src, a.shards)
        print(f"source: {sum(sizes) / 2**30:.2f} GiB in {len(sizes)} shards, written in {time.time() - t0:.0f} s")
        added, before, secs = added_rss("quantize", src, dst, a.scheme)
        after = sum(p.stat().st_size for p in dst.glob("*.safetensors"))
        print(json.dumps({"scheme": a.scheme, "source_gib": round(sum(sizes) / 2**30, 2),
                          "largest_shard_gib": round(max(sizes) / 2**30, 2), "output_gib": round(after / 2**30, 2),
                          "peak_added_rss_gib": round(added / 2**30, 3), "process_rss_before_gib":
                          round(before / 2**30, 3), "seconds": round(secs, 1)}))
    finally:
        if not a.keep:
            shutil.rmtree(a.work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
