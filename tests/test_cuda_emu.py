"""The CUDA emulator (illada_rt._C_cuda_emu, csrc/cuda_emu/): small kernels written as CUDA source run on the CPU,
CTA by CTA with each CTA's threads as fibers in warps of 32. Correct kernels agree with PyTorch; broken ones
(divergent barriers, divergent warp shuffles) raise an error naming the kernel instead of hanging; shared memory
holds the poison pattern until written. Each checker (shared-memory races, uninitialized shared reads, reads before
cp.async.wait_group, out-of-bounds global and shared accesses) fires on a deliberately broken kernel and stays quiet
on its corrected twin.
"""
import contextlib

import pytest
import torch

from illada_rt import _C_cuda_emu as emu

pytestmark = pytest.mark.skipif(not emu.INSTRUMENTED, reason="the emulator's checkers need a GCC or Clang build")


@contextlib.contextmanager
def checks_off():
    emu.set_checks(False)
    try:
        yield
    finally:
        emu.set_checks(True)

POISON_I32 = int.from_bytes(bytes([emu.POISON_BYTE] * 4), "little", signed=True)


@pytest.mark.parametrize("n, grid, block", [(1001, 3, 50), (1, 1, 32), (0, 2, 33), (4096, 4, 256), (777, 1, 1024),
                                            (5000, 7, 97)])
def test_block_sum_matches_torch_sum(n, grid, block):
    g = torch.Generator().manual_seed(n + block)
    x = torch.randn(n, generator=g)
    out = torch.zeros(1)
    emu.block_sum(x, out, grid, block)
    ref = x.double().sum().item()
    assert abs(out.item() - ref) <= 1e-6 * (x.double().abs().sum().item() + 1)


def ballot_reference(x, block):
    """out[i] (as int32 bits): bit l set when lane l of i's warp (within its CTA) exists and holds x > 0."""
    n = len(x)
    out = []
    for i in range(n):
        cta_first = i // block * block
        warp_first = cta_first + (i - cta_first) // 32 * 32
        warp_end = min(warp_first + 32, cta_first + block)
        bits = sum(1 << (j - warp_first) for j in range(warp_first, warp_end) if j < n and x[j] > 0)
        out.append(bits - (1 << 32) if bits >= 1 << 31 else bits)
    return torch.tensor(out, dtype=torch.int32)


@pytest.mark.parametrize("n, block", [(200, 50), (1, 1), (95, 20), (256, 64), (333, 97)])
def test_ballot_and_shuffle_over_partial_warps(n, block):
    g = torch.Generator().manual_seed(n)
    x = torch.randn(n, generator=g)
    grid = (n + block - 1) // block
    out = torch.full((n,), -7, dtype=torch.int32)
    emu.warp_ballot(x, out, grid, block)
    assert torch.equal(out, ballot_reference(x.tolist(), block))


def test_barrier_under_divergent_branch_names_the_kernel():
    with pytest.raises(emu.EmulatedKernelError, match=r"kernel 'divergent_barrier'.*barrier divergence.*exited"):
        emu.divergent_barrier(64)
    emu.divergent_barrier(16)  # every thread takes the branch: a legal barrier


def test_barriers_at_different_call_sites_are_an_error():
    with pytest.raises(emu.EmulatedKernelError, match=r"kernel 'split_barrier'.*test_kernels\.cpp:\d+.*:\d+"):
        emu.split_barrier(48)


def test_shuffle_at_different_call_sites_is_an_error():
    with pytest.raises(emu.EmulatedKernelError, match=r"kernel 'divergent_shuffle'.*__shfl_xor_sync"):
        emu.divergent_shuffle()


def test_emulator_usable_after_an_error():
    with pytest.raises(RuntimeError):
        emu.divergent_shuffle()
    x = torch.arange(100, dtype=torch.float32)
    out = torch.zeros(1)
    emu.block_sum(x, out, 2, 40)
    assert out.item() == 4950.0


@pytest.mark.parametrize("grid, block", [(1, 1), (3, 50), (2, 1024)])
def test_shared_memory_is_poisoned_at_every_cta_start(grid, block):
    static = torch.zeros(grid * block, dtype=torch.int32)
    dynamic = torch.zeros(grid * block, dtype=torch.int32)
    with checks_off():  # the initialization checker would stop the first read
        emu.shared_before_write(static, dynamic, grid, block)  # each CTA zeroes what it read: the next must re-poison
    assert POISON_I32 != 0 and bool((static == POISON_I32).all()) and bool((dynamic == POISON_I32).all())


def test_read_of_uninitialized_shared_memory_is_reported():
    out = torch.zeros(64, dtype=torch.int32)
    with pytest.raises(emu.EmulatedKernelError, match=r"shared_before_write.*read of uninitialized static shared "
                                                      r"memory .* by thread \(0,0,0\)"):
        emu.shared_before_write(out, out.clone(), 1, 64)


@pytest.mark.parametrize("block", [2, 32, 100])
def test_read_of_a_neighbours_write_without_a_barrier_is_a_race(block):
    out = torch.zeros(block, dtype=torch.int32)
    with pytest.raises(emu.EmulatedKernelError, match=r"shared-memory race at static shared memory offset \d+: "
                                                      r"thread \(1,0,0\) reads what thread \(0,0,0\) wrote"):
        emu.neighbour_exchange(out, block, False, False)
    emu.neighbour_exchange(out, block, True, False)  # with the barrier: no race, and the right values
    assert out.tolist() == [-1] + list(range(block - 1))


def test_warp_synchronous_exchange_is_ordered_by_the_warp_collective():
    out = torch.zeros(32, dtype=torch.int32)
    emu.neighbour_exchange(out, 32, False, True)  # __syncwarp orders the lanes of one warp
    assert out.tolist() == [-1] + list(range(31))
    out = torch.zeros(64, dtype=torch.int32)  # but not lanes of different warps: thread 32 reads thread 31's write
    with pytest.raises(emu.EmulatedKernelError, match=r"thread \(32,0,0\) reads what thread \(31,0,0\) wrote"):
        emu.neighbour_exchange(out, 64, False, True)


def test_overwrite_of_what_another_thread_read_in_the_same_interval_is_a_race():
    out = torch.zeros(40, dtype=torch.int32)
    with pytest.raises(emu.EmulatedKernelError, match=r"thread \(1,0,0\) writes what thread \(0,0,0\) read"):
        emu.read_then_overwrite(out, 40, False)
    emu.read_then_overwrite(out, 40, True)
    assert out.tolist() == [(t + 1) % 40 for t in range(40)]


@pytest.mark.parametrize("n", [0, 5, 63])
def test_global_read_past_a_tensor_is_out_of_bounds(n):
    x, out = torch.arange(float(n)), torch.zeros(64)
    with pytest.raises(emu.EmulatedKernelError, match=rf"out-of-bounds global read of 4 bytes .* by thread "
                                                      rf"\({n},0,0\)"):
        emu.copy_block(x, out, 64)
    emu.copy_block(torch.arange(64.0), out, 64)
    assert out.tolist() == list(range(64))


def test_global_write_past_a_tensor_is_out_of_bounds():
    x = torch.arange(64.0)
    big = torch.zeros(100)
    with pytest.raises(emu.EmulatedKernelError, match=r"out-of-bounds global write .*past the end of `out`"):
        emu.copy_block(x, big[:63], 64)  # a view: the bytes after it belong to `big`, not to the argument
    assert big[63:].eq(0).all()


@pytest.mark.parametrize("offset", [1, -1])
def test_dynamic_shared_access_outside_the_launch_size_is_out_of_bounds(offset):
    out = torch.zeros(32, dtype=torch.int32)
    with pytest.raises(emu.EmulatedKernelError, match=r"out-of-bounds write of 4 bytes of dynamic shared memory "
                                                      r"\(128 bytes\)"):
        emu.shared_index(out, 32, 32, offset)
    emu.shared_index(out, 32, 33, 1 if offset > 0 else 0)
    assert out.tolist() == list(range(32))


def test_read_before_cp_async_wait_group_is_reported():
    x, out = torch.arange(4.0 * 64), torch.zeros(4 * 64)
    with pytest.raises(emu.EmulatedKernelError, match=r"cp_async_exchange.*read of static shared memory offset "
                                                      r"\d+ by thread \(0,0,0\) before the cp.async.wait_group"):
        emu.cp_async_exchange(x, out, 64, False)
    emu.cp_async_exchange(x, out, 64, True)
    assert out.tolist() == torch.roll(x.view(64, 4), -1, 0).flatten().tolist()


def test_without_the_wait_the_data_is_poison_even_unchecked():
    x, out = torch.arange(4.0 * 64), torch.zeros(4 * 64)
    with checks_off():
        emu.cp_async_exchange(x, out, 64, False)
    assert (out.view(torch.int32) == POISON_I32).all()


def test_launch_counts_per_kernel_name():
    before = emu.launch_counts().get("copy_block", 0)
    emu.copy_block(torch.arange(8.0), torch.zeros(8), 8)
    emu.copy_block(torch.arange(8.0), torch.zeros(8), 8)
    assert emu.launch_counts()["copy_block"] == before + 2


def test_bad_launch_arguments_are_value_errors():
    with pytest.raises(ValueError, match="block must be in"):
        emu.block_sum(torch.ones(4), torch.zeros(1), 1, 16)
    with pytest.raises(ValueError, match="grid must be"):
        emu.warp_ballot(torch.ones(4), torch.zeros(4, dtype=torch.int32), 0, 32)
    with pytest.raises(TypeError, match="x: expected dtype float32"):
        emu.block_sum(torch.ones(4, dtype=torch.float64), torch.zeros(1), 1, 32)


def test_shared_memory_of_template_kernels_is_checked_when_declared_with_illada_shared():
    out = torch.zeros(64, dtype=torch.int32)
    with pytest.raises(emu.EmulatedKernelError, match=r"template_exchange.*shared-memory race at static shared "
                                                      r"memory offset \d+: thread \(1,0,0\) reads"):
        emu.template_exchange(out, 64, False, True)
    emu.template_exchange(out, 64, True, True)
    assert out.tolist() == [-1] + list(range(63))


def test_plain_shared_in_a_template_kernel_is_reported_not_silently_unchecked():
    """GCC drops the section attribute of static locals in function templates: such a `__shared__` would be a host
    global, outside every checker. Its first write says so and names the fix."""
    out = torch.zeros(64, dtype=torch.int32)
    with pytest.raises(emu.EmulatedKernelError, match=r"write of a host global .*ILLADA_SHARED"):
        emu.template_exchange(out, 64, True, False)
