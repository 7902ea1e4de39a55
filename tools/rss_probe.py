"""Peak resident memory added by quantizing (or, as a control, by holding every tensor of) a checkpoint, measured in
a fresh child process that samples /proc/self/statm every few milliseconds. Used by tools/quant_memory.py and by
tests/test_quantize.py.

    added, before, seconds = added_rss("quantize", SRC, DST, "int8")   # or added_rss("hold", SRC)
"""
from __future__ import annotations

import subprocess
import sys

CHILD = r"""
import os, sys, threading, time

def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

import torch
from illada_rt.checkpoint import WeightStore
from illada_rt.quantize import quantize_checkpoint
peak, done = [0], [False]
def sample():
    while not done[0]:
        peak[0] = max(peak[0], rss())
        time.sleep(0.002)
before = rss()
th = threading.Thread(target=sample)
th.start()
t0 = time.time()
if sys.argv[1] == "quantize":
    quantize_checkpoint(sys.argv[2], sys.argv[3], sys.argv[4], progress=False)
else:  # the control: what holding the whole model costs
    store = WeightStore(sys.argv[2])
    held = [store.get(n, store.entry(n).shape).clone() for n in store.names()]
done[0] = True
th.join()
print(max(peak[0], rss()) - before, before, time.time() - t0)
"""


def added_rss(mode: str, *args: str) -> tuple[int, int, float]:
    """(bytes added at peak, resident bytes before, seconds) for mode 'quantize' (SRC DST SCHEME) or 'hold' (SRC)."""
    out = subprocess.run([sys.executable, "-c", CHILD, mode, *map(str, args)], capture_output=True, text=True,
                         check=True).stdout.split()
    return int(out[0]), int(out[1]), float(out[2])
