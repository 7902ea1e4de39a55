"""This CPU's measured peaks, for "% of peak" in the bench reports: register-only loops of the instruction
each kernel family runs on (AVX-512 VNNI vpdpbusd for int8, vdpbf16ps for bf16, FMA for fp32; the AVX2
equivalents on CPUs without AVX-512), on torch.get_num_threads() threads, plus the clock they ran at."""
from __future__ import annotations

import functools

import torch

KINDS = ("int8_dot", "bf16_dot", "fp32_fma")


@functools.lru_cache(maxsize=None)
def measured_peaks() -> dict:
    from illada_rt import _C

    threads = torch.get_num_threads()
    peaks = {k: _C.measure_peak_ops(k, threads) for k in KINDS}
    return {"threads": threads, "isa": _C.cpu_isa(), "clock_ghz": round(_C.measure_clock_ghz(), 3),
            **{f"{k}_gops": round(v / 1e9, 1) for k, v in peaks.items()}}
