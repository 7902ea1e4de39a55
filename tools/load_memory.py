"""Resident memory of a loaded model (the README's table): for each checkpoint directory, a fresh process loads it
with illada_rt.load() and reports RssAnon / RssFile from /proc/self/status after importing, after loading and after
a decode, the load time, and the bytes the weights take on disk (what a model holding each weight once should
need). Make the 8B-shaped checkpoints with tools/quant_memory.py --keep (bf16 source and its int8 copy) and
`illada-rt quantize --scheme fp8 SRC DST`.

    python tools/load_memory.py DIR [DIR ...] [--threads N] [--no-finite-check]

The decode is 32 tokens after a 32-token prompt, one block, 4 steps, dual cache. --no-finite-check skips load()'s
NaN/inf pass (to measure what that pass costs in time and file-backed pages).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from illada_rt.checkpoint import WeightStore  # noqa: E402

CHILD = r"""
import json, sys, time
import torch

def rss():
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("RssAnon", "RssFile"):
                out[key] = int(value.split()[0]) * 1024
    return out

import illada_rt
import illada_rt.model
torch.set_num_threads(int(sys.argv[2]))
if sys.argv[3] == "1":
    illada_rt.model.has_nonfinite = lambda t: False
start = rss()
t0 = time.time()
model = illada_rt.load(sys.argv[1])
load_s = time.time() - t0
loaded = rss()
t0 = time.time()
model.generate(torch.arange(1, 33)[None], gen_length=32, steps=4, block_length=32, cache="dual")
decode_s = time.time() - t0
print(json.dumps({"start": start, "loaded": loaded, "decoded": rss(), "load_s": load_s, "decode_s": decode_s}))
"""

GIB = 2 ** 30


def measure(directory: Path, threads: int, no_check: bool) -> dict:
    store = WeightStore(directory)
    weights = sum(e.end - e.begin for e in map(store.entry, store.names()))
    out = subprocess.run([sys.executable, "-c", CHILD, str(directory), str(threads), "1" if no_check else "0"],
                         capture_output=True, text=True, check=True).stdout
    r = json.loads(out.strip().splitlines()[-1])
    return {"checkpoint": str(directory), "weights_gib": weights / GIB, "load_s": r["load_s"],
            "decode_s": r["decode_s"],
            **{f"{when}_{k}_gib": r[when][k] / GIB for when in ("start", "loaded", "decoded")
               for k in ("RssAnon", "RssFile")}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dirs", nargs="+", type=Path)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: what torch uses)")
    ap.add_argument("--no-finite-check", action="store_true")
    a = ap.parse_args()
    import torch
    threads = a.threads or torch.get_num_threads()
    rows = []
    for d in a.dirs:
        rows.append(measure(d, threads, a.no_finite_check))
        print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in rows[-1].items()}), flush=True)
    print("\n| checkpoint | weights | load | resident after load (anon + file) | after a decode (anon + file) |")
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        load = r["loaded_RssAnon_gib"] + r["loaded_RssFile_gib"]
        dec = r["decoded_RssAnon_gib"] + r["decoded_RssFile_gib"]
        print(f"| {Path(r['checkpoint']).name} | {r['weights_gib']:.2f} GiB | {r['load_s']:.1f} s | {load:.2f} GiB "
              f"({r['loaded_RssAnon_gib']:.2f} + {r['loaded_RssFile_gib']:.2f}) | {dec:.2f} GiB "
              f"({r['decoded_RssAnon_gib']:.2f} + {r['decoded_RssFile_gib']:.2f}) |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
