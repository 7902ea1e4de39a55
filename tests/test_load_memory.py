"""Memory after load: a weight that is copied at load (packed for the int8 / fp8 kernels, converted to another dtype)
is resident once, as the copy; the memory-mapped file stays resident only for the tensors the model runs from in
place. Measured from this process's own page tables (/proc/self/smaps: resident pages per mapping of a shard)."""
import mmap
import os
from pathlib import Path

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

import illada_rt
from illada_rt import ops
from illada_rt.checkpoint import WeightStore, has_nonfinite
from illada_rt.quantize import quantize_checkpoint
from illada_rt.synthetic import TinySpec, write_checkpoint

PAGE = mmap.PAGESIZE
SPEC = TinySpec(d_model=256, n_heads=4, n_kv_heads=4, n_layers=2, mlp_hidden_size=768, vocab_size=101,
                dtype="bfloat16", shards=3, seed=21)


def resident_file_bytes(files) -> int:
    """Resident bytes of every mapping of `files` in this process (smaps 'Rss' of each mapping)."""
    names, total, counting = {str(Path(f).resolve()) for f in files}, 0, False
    with open("/proc/self/smaps") as f:
        for line in f:
            first = line.split(maxsplit=1)[0]
            if "-" in first and not first.endswith(":"):  # a mapping's header line: address range ... [path]
                parts = line.split(maxsplit=5)
                counting = len(parts) == 6 and parts[5].strip() in names
            elif counting and first == "Rss:":
                total += int(line.split()[1]) * 1024
    return total


def allowed_pages(directory, in_place) -> int:
    """Bytes of the pages that may stay resident: every page of a tensor used in place, and the first and last page
    of every other tensor (a page it shares with a neighbour is not its own to drop)."""
    store, pages = WeightStore(directory), set()
    for name in store.names():
        e = store.entry(name)
        if e.end == e.begin:
            continue
        first, last = e.begin // PAGE, (e.end - 1) // PAGE
        span = range(first, last + 1) if in_place(e) else (first, last)
        pages.update((str(e.file), p) for p in span)
    return len(pages) * PAGE


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    return write_checkpoint(tmp_path_factory.mktemp("loadmem") / "src", SPEC)


def _check(directory, dtype, in_place):
    files = sorted(Path(directory).glob("*.safetensors"))
    model = illada_rt.load(directory, dtype=dtype)
    resident, allowed = resident_file_bytes(files), allowed_pages(directory, in_place)
    copied = sum(f.stat().st_size for f in files) - allowed
    assert copied > 4 * allowed  # the check can tell: what must be dropped outweighs what may stay
    assert resident <= allowed, (f"{resident} bytes of the shard files still resident after load; only the "
                                 f"{allowed} bytes of tensors used in place may be")
    ids = torch.randint(0, 100, (1, 8), generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(model.forward(ids)).all()  # the model still runs from what it kept


@pytest.mark.parametrize("scheme", ["int8", "fp8"])
def test_quantized_weights_are_resident_once(source, tmp_path, scheme):
    dst = tmp_path / scheme
    quantize_checkpoint(source, dst, scheme, progress=False)
    _check(dst, torch.bfloat16, lambda e: e.dtype == torch.bfloat16)  # embedding and norms run from the map


def test_linears_copied_into_huge_pages_drop_the_mapped_source(source, monkeypatch):
    """load(huge_pages=True), the default, copies the dense linears into the arena where the OS offers huge pages:
    their mapped pages go, the embedding and norms stay mapped (used in place)."""
    if not ops.WeightArena.huge_pages_offered():
        pytest.skip("no transparent huge pages on this machine: the linears stay mapped")
    monkeypatch.setattr(ops.WeightArena, "SMALL", 0)  # this model's linears are small: every one into the arena
    store = WeightStore(source)
    kept = {store.entry(n) for n in store.names() if n.endswith(("wte.weight", "norm.weight", "ln_f.weight"))}
    assert len(kept) == 2 * SPEC.n_layers + 2
    _check(source, torch.bfloat16, lambda e: e in kept)


def test_converted_weights_drop_the_mapped_source(source):
    _check(source, torch.float32, lambda e: False)  # every tensor is copied into float32


@pytest.mark.parametrize("dtype", [torch.float8_e4m3fn, torch.float8_e5m2])
def test_fp8_finiteness_check_reads_every_pattern_and_allocates_nothing(dtype):
    """A temporary per fp8 tensor in load()'s NaN/inf check stayed in the heap between the packed weights
    (+1 to 3 GiB resident over an 8B fp8 model); the check must find every non-finite byte without one."""
    patterns = torch.arange(256, dtype=torch.uint8).view(dtype)
    bad = ~torch.isfinite(patterns.float())
    assert int(bad.sum()) == (2 if dtype == torch.float8_e4m3fn else 8)
    for b in range(256):
        assert has_nonfinite(patterns[b:b + 1]) == bool(bad[b]), b
        assert has_nonfinite(torch.cat([torch.zeros(999, dtype=torch.uint8).view(dtype), patterns[b:b + 1]])) \
            == bool(bad[b]), b
    big = torch.zeros(1 << 20, dtype=dtype)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as p:
        assert not has_nonfinite(big)
    assert max(e.cpu_memory_usage for e in p.events()) < 1024  # a scalar result, no mask the size of the tensor


def _smaps_fields(address: int) -> dict:
    """The /proc/self/smaps fields of the mapping (VMA) holding `address`."""
    with open("/proc/self/smaps") as f:
        found, fields = False, {}
        for line in f:
            first = line.split(maxsplit=1)[0]
            if "-" in first and not first.endswith(":"):
                if found:
                    break
                lo, hi = (int(v, 16) for v in first.split("-"))
                found = lo <= address < hi
            elif found and ":" in first:
                fields[first[:-1]] = line.split()[1]
    return fields


needs_thp_advice = pytest.mark.skipif(not ops.WeightArena.available(), reason="no MADV_HUGEPAGE on this OS")


@needs_thp_advice
def test_weight_arena_lays_weights_out_in_order_in_huge_page_aligned_mappings():
    arena = ops.WeightArena()
    small = arena.empty(1000, torch.int8)  # under SMALL: torch.empty's memory
    a = arena.empty(3 << 20, torch.int8)
    b = arena.empty(1 << 20, torch.uint8)
    big = arena.empty(ops.WeightArena.CHUNK, torch.int8)  # over half a chunk: a mapping of its own
    c = arena.empty(5000 << 10, torch.int8)
    e = arena.empty(30 << 20, torch.int8)
    d = arena.empty(30 << 20, torch.int8)  # does not fit the chunk's rest: a new chunk
    assert len(arena.mappings) == 3 and small.numel() == 1000 and e.data_ptr() == c.data_ptr() + (5000 << 10)
    assert a.data_ptr() % (2 << 20) == 0 and big.data_ptr() % (2 << 20) == 0 and d.data_ptr() % (2 << 20) == 0
    assert b.data_ptr() == a.data_ptr() + (3 << 20) and c.data_ptr() == b.data_ptr() + (1 << 20)  # side by side
    for t in (a, b, big, c, d):
        t.fill_(7)
        assert t.dtype in (torch.int8, torch.uint8) and t.is_contiguous() and int(t[-1]) == 7
    path = "/sys/kernel/mm/transparent_hugepage/enabled"
    if os.path.exists(path) and "[never]" not in open(path).read():
        assert _smaps_fields(a.data_ptr()).get("THPeligible") == "1"


@needs_thp_advice
def test_weight_arena_mappings_go_with_their_last_weight():
    arena = ops.WeightArena()
    a = arena.empty(1 << 20, torch.int8)
    big = arena.empty(ops.WeightArena.CHUNK, torch.int8)
    chunk, own = arena.mappings
    del big
    assert own() is None and chunk() is not None  # nothing else holds a large weight's own mapping
    del arena
    assert chunk() is not None  # a's view keeps its chunk
    del a
    assert chunk() is None


@needs_thp_advice
def test_quantized_model_packs_into_its_arena_and_runs_alike(source, tmp_path, monkeypatch):
    dst = tmp_path / "int8"
    quantize_checkpoint(source, dst, "int8", progress=False)
    ids = torch.randint(0, 100, (1, 8), generator=torch.Generator().manual_seed(0))
    monkeypatch.setattr(ops.WeightArena, "SMALL", 0)  # this model's weights are small: every one in the arena
    model = illada_rt.load(dst)
    layer = model.transformer.layers[0]
    q, k = layer.q.packed.packed, layer.k.packed.packed
    assert q.data_ptr() % (2 << 20) == 0 and k.data_ptr() == q.data_ptr() + q.numel()  # in load order, side by side
    monkeypatch.setattr(ops.WeightArena, "available", staticmethod(lambda: False))
    plain = illada_rt.load(dst)
    assert torch.equal(model.forward(ids), plain.forward(ids))


_STEP_ALLOCATIONS = """
import resource, sys, torch
if sys.argv[1] == "load":
    import illada_rt
    illada_rt.load(sys.argv[2])  # a CPU model: retain_freed_memory applies (ILLADA_RT_MALLOC permitting)
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
# a step's buffers (activations, logits, GEMM outputs: an 8B model's at a long canvas), 90 MB in all: glibc's
# adaptive thresholds top out at 32 MB (mmap) and 64 MB (trim), so with its defaults these go back to the OS after
# every step whatever the process allocated before
sizes = [24 << 20, 30 << 20, 20 << 20, 16 << 20]
def step():
    buffers = [torch.empty(s, dtype=torch.uint8).fill_(1) for s in sizes]
    del buffers
step(), step()
before = faults()
for _ in range(10):
    step()
print(faults() - before)
"""


@pytest.mark.skipif(__import__("platform").libc_ver()[0] != "glibc", reason="the malloc settings are glibc's")
@pytest.mark.parametrize("env,retained", [({}, True), ({"ILLADA_RT_MALLOC": "system"}, False)])
def test_decoding_steps_reuse_the_memory_they_free(source, env, retained, tmp_path):
    """After illada_rt.load, buffers a step frees are reused by the next step without page faults; with glibc's
    default (ILLADA_RT_MALLOC=system) the same pattern faults thousands of pages back in (all 90 MB of them every
    step when run from a neutral directory, as here; glibc's adaptive thresholds follow what the process did
    before, so less elsewhere)."""
    import subprocess
    import sys

    run = subprocess.run([sys.executable, "-c", _STEP_ALLOCATIONS, "load", str(source)], capture_output=True,
                         text=True, env={**os.environ, **env}, timeout=300, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    faults = int(run.stdout.split()[-1])
    assert (faults < 100) if retained else (faults > 1000), faults


def test_malloc_choice_is_checked(monkeypatch):
    monkeypatch.setenv("ILLADA_RT_MALLOC", "jemalloc")
    ops.retain_freed_memory.cache_clear()
    try:
        with pytest.raises(ValueError, match="ILLADA_RT_MALLOC must be retain or system"):
            ops.retain_freed_memory()
    finally:
        ops.retain_freed_memory.cache_clear()
