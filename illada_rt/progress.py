"""Progress that suits where it goes: a bar redrawn in place on a terminal, a few plain lines on a pipe or in a log."""
from __future__ import annotations

import sys
import time


def is_terminal(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


class Progress:
    """Counts units done of total. On a terminal a tqdm bar; elsewhere one line each time another 1/lines of the
    total is done ("quantize: 50% (12/24 tensors) in 3.1 s, model-00002.safetensors"): `lines` lines in all."""

    def __init__(self, total: int, desc: str, unit: str, stream=None, lines: int = 4):
        self.total, self.desc, self.unit, self.lines = total, desc, unit, lines
        self.stream = sys.stderr if stream is None else stream
        self.done, self.printed, self.t0 = 0, 0, time.perf_counter()
        self.bar = None
        if is_terminal(self.stream):
            from tqdm import tqdm
            self.bar = tqdm(total=total, unit=unit, desc=desc, dynamic_ncols=True, file=self.stream)

    def update(self, n: int = 1, note: str = "") -> None:
        self.done += n
        if self.bar is not None:
            self.bar.set_postfix_str(note, refresh=False)
            self.bar.update(n)
            return
        reached = self.lines if self.done >= self.total else self.done * self.lines // max(self.total, 1)
        if reached > self.printed:
            self.printed = reached
            pct = 100 * self.done // max(self.total, 1)
            tail = f", {note}" if note else ""
            print(f"{self.desc}: {pct}% ({self.done}/{self.total} {self.unit}s) in "
                  f"{time.perf_counter() - self.t0:.1f} s{tail}", file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
