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


@functools.lru_cache(maxsize=None)
def measured_gpu_peaks() -> dict:
    """This GPU's ceilings, measured in the same session (METHOD.md's "two numbers"): the bf16 matrix rate of an
    8192^3 torch.matmul on random data, and device-to-device copy bandwidth counting bytes read plus written. Keys
    follow measured_peaks(): bf16_mma_gops, copy_gbps."""
    dev = torch.device("cuda")
    a = torch.randn(8192, 8192, device=dev, dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device=dev, dtype=torch.bfloat16)
    src = torch.randn(2 * 1024 ** 3 // 4, device=dev)  # 2 GiB
    dst = torch.empty_like(src)

    def timed(fn, n):
        for _ in range(3):
            fn()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(n):
            fn()
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end) / 1e3 / n

    mm = timed(lambda: torch.matmul(a, b), 10)
    cp = timed(lambda: dst.copy_(src), 10)
    out = {"device": torch.cuda.get_device_name(dev), "bf16_mma_gops": round(2 * 8192 ** 3 / mm / 1e9, 1),
           "copy_gbps": round(2 * 2 * 1024 ** 3 / cp / 1e9, 1)}
    # the int8 and fp8 tensor-core rates, as PyTorch reaches them (cuBLASLt) at the same size
    ai = torch.randint(-127, 128, (8192, 8192), device=dev, dtype=torch.int8)
    bi = torch.randint(-127, 128, (8192, 8192), device=dev, dtype=torch.int8)
    out["int8_mma_gops"] = round(2 * 8192 ** 3 / timed(lambda: torch._int_mm(ai, bi.t()), 10) / 1e9, 1)
    del ai, bi
    if torch.cuda.get_device_capability(dev) >= (8, 9):
        af, bf = a.to(torch.float8_e4m3fn), b.to(torch.float8_e4m3fn)
        one = torch.ones((), device=dev)
        out["fp8_mma_gops"] = round(2 * 8192 ** 3 / timed(
            lambda: torch._scaled_mm(af, bf.t(), one, one, out_dtype=torch.bfloat16), 10) / 1e9, 1)
    return out
