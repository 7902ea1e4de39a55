"""Quantize a checkpoint: a thin script over `illada-rt quantize` (same arguments).

    python tools/quantize.py SRC DST --scheme int8|fp8 [--granularity channel|block128] [--skip lm_head,...]
                             [--force] [--report [--prompt TEXT ...]]
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from illada_rt.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["quantize", *sys.argv[1:]]))
