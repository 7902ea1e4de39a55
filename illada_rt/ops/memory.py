"""Memory for the CPU runtime: the arena that holds a model's linear weights in transparent huge pages, and the
malloc settings that let a decoding step reuse the memory the previous one freed."""
from __future__ import annotations

import ctypes
import functools
import mmap
import os
import platform
import weakref

import torch


def round_up(v: int, m: int) -> int:
    return (v + m - 1) // m * m


# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
_MALLOC_SETTINGS = {_M_MMAP_THRESHOLD: 32 << 20, _M_TRIM_THRESHOLD: 128 << 20, _M_TOP_PAD: 16 << 20}


@functools.lru_cache(maxsize=None)
def retain_freed_memory() -> bool:
    """Have glibc's malloc keep the memory a decoding step frees for the next step instead of handing it back to the
    OS (allocations up to 32 MiB come from the heap, which grows 16 MiB at a time and keeps up to 128 MiB free at
    its top). A forward allocates and frees its activations, logits and GEMM outputs, megabytes per layer at a
    canvas's M; with glibc's default, freed blocks at the top of the heap or above its adaptive mmap threshold go
    back to the OS, and every step faults them in again as fresh zeroed pages (an exact int8 decode of the 176M
    bench model took 20,000-60,000 page faults, 0.02-0.19 s of system time, on the AMD EPYC; none with these).
    Process-wide and once per process (illada_rt.load calls it for CPU models); ILLADA_RT_MALLOC=system keeps
    glibc's defaults. Returns whether the settings were applied (glibc only)."""
    choice = os.environ.get("ILLADA_RT_MALLOC", "retain").strip().lower() or "retain"
    if choice not in ("retain", "system"):
        raise ValueError(f"ILLADA_RT_MALLOC must be retain or system, got {choice!r}")
    if choice == "system" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # pragma: no cover - glibc under another soname
        return False
    return all(libc.mallopt(param, value) == 1 for param, value in _MALLOC_SETTINGS.items())


class WeightArena:
    """Memory for one model's linear weights on CPU (the packed int8/fp8 ones, and the dense ones that
    illada_rt.load(huge_pages=True) copies): mappings of CHUNK bytes (or one per larger weight), each starting on a
    2 MiB boundary and advised for transparent huge pages where the OS offers them (Linux, THP in "madvise" or
    "always" mode), handed out in order, so one layer's weights lie side by side.

    Why: at decoding's small M the GEMMs stream every weight from DRAM once per forward, and with 4 KiB pages each
    64 KiB panel of int8 weights crosses 16 pages the hardware prefetchers stop at and the TLB misses on. Packed
    into huge pages, a 176M-model layer's W8A8 GEMMs at M = 32 ran 9% faster and the dual-cache int8 decode of the
    bench 4-6%, the dense bf16 dual-cache decode 4-6% too (AMD EPYC Zen 5, 2 threads, in-process A/B against the
    same weights in 4 KiB pages). The weights are written once, by the packing or the copy, so the pages are
    faulted in as huge pages from the start.

    Each tensor handed out is a view that keeps its mapping alive: a mapping is unmapped when the last weight in it
    is gone and this arena has moved on from it. Unused space is never touched, so costs no memory beyond at most
    one huge page per mapping. Small requests (under SMALL bytes), and every request where the OS has no THP
    advice, get ordinary torch.empty memory."""

    CHUNK = 64 << 20
    SMALL = 256 << 10
    HUGE = 2 << 20

    def __init__(self) -> None:
        self._base: torch.Tensor | None = None  # the current mapping as uint8, from its first 2 MiB boundary
        self._used = 0
        self.mappings: list[weakref.ref] = []  # each mapping made, alive while a weight in it is

    @staticmethod
    def available() -> bool:
        return hasattr(mmap, "MADV_HUGEPAGE")

    @staticmethod
    def huge_pages_offered() -> bool:
        """The OS gives huge pages to memory that asks for them (Linux THP in "always" or "madvise" mode)."""
        return WeightArena.available() and "[never]" not in _thp_mode()

    def _map(self, nbytes: int) -> torch.Tensor:
        size = round_up(nbytes, self.HUGE) + self.HUGE  # room to start on a 2 MiB boundary
        # private: a shared anonymous map is shmem, whose huge pages follow another setting (shmem_enabled)
        m = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        try:
            m.madvise(mmap.MADV_HUGEPAGE)
        except OSError:  # a kernel without THP: ordinary pages, same layout
            pass
        whole = torch.frombuffer(m, dtype=torch.uint8)  # keeps m alive as long as any view of it lives
        skip = -whole.data_ptr() % self.HUGE
        self.mappings.append(weakref.ref(m))
        return whole[skip:skip + size - self.HUGE]

    def empty(self, numel: int, dtype: torch.dtype) -> torch.Tensor:
        """An uninitialised 1-D tensor of numel elements, 4 KiB aligned."""
        nbytes = numel * torch.empty((), dtype=dtype).element_size()
        if nbytes < self.SMALL or not self.available():
            return torch.empty(numel, dtype=dtype)
        start = round_up(self._used, 4096)
        if self._base is None or start + nbytes > self._base.numel():
            if nbytes > self.CHUNK // 2:  # a large weight gets a mapping of its own; the current one stays open
                return self._map(nbytes)[:nbytes].view(dtype)
            self._base, start = self._map(self.CHUNK), 0
        self._used = start + nbytes
        return self._base[start:start + nbytes].view(dtype)

    def copy_of(self, t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """A dense CPU weight converted to dtype: into this arena where that pays (at least SMALL bytes, the OS
        offering huge pages), in one pass; else t.to(dtype), a view of t when it already has that dtype."""
        if t.numel() * torch.empty((), dtype=dtype).element_size() < self.SMALL or not self.huge_pages_offered():
            return t.to(dtype=dtype)
        c = self.empty(t.numel(), dtype).view(t.shape)
        c.copy_(t)
        return c


@functools.lru_cache(maxsize=None)
def _thp_mode() -> str:
    """Linux's transparent-huge-page mode line ("always [madvise] never"), or "[never]" where there is none."""
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            return f.read()
    except OSError:
        return "[never]"


def weight_memory(arena: WeightArena | None, numel: int, dtype: torch.dtype) -> torch.Tensor:
    """numel elements of dtype for a packed weight: from `arena` where one is given, else torch.empty's."""
    return arena.empty(numel, dtype) if arena is not None else torch.empty(numel, dtype=dtype)
