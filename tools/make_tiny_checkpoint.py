"""Write a small seeded random checkpoint (LLaDA or Llama-style layout) for demos, tests and benches.

    python tools/make_tiny_checkpoint.py DIR [--layout llada|llama] [--layers 2] [--d-model 64] ...
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from illada_rt.synthetic import TinySpec, write_checkpoint  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", type=Path)
    p.add_argument("--layout", choices=["llada", "llama"], default="llada")
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--d-model", type=int, default=64)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--kv-heads", type=int, default=4)
    p.add_argument("--mlp", type=int, default=96)
    p.add_argument("--vocab", type=int, default=101)
    p.add_argument("--mask-id", type=int, default=100, help="-1 leaves mask_token_id out of config.json")
    p.add_argument("--tied", action="store_true")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    p.add_argument("--shards", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    spec = TinySpec(layout=a.layout, d_model=a.d_model, n_heads=a.heads, n_kv_heads=a.kv_heads, n_layers=a.layers,
                    mlp_hidden_size=a.mlp, vocab_size=a.vocab, tied=a.tied,
                    mask_token_id=None if a.mask_id < 0 else a.mask_id, dtype=a.dtype, shards=a.shards,
                    seed=a.seed)
    write_checkpoint(a.out, spec)
    print(f"wrote {a.out} ({spec.layout}, {spec.n_layers} layers, d_model {spec.d_model}, vocab {spec.vocab_size})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
