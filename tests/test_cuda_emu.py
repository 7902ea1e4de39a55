"""The CUDA emulator (illada_rt._C_cuda_emu, csrc/cuda_emu/): small kernels written as CUDA source run on the CPU,
CTA by CTA with each CTA's threads as fibers in warps of 32. Correct kernels agree with PyTorch; broken ones
(divergent barriers, divergent warp shuffles) raise an error naming the kernel instead of hanging; shared memory
holds the poison pattern until written.
"""
import pytest
import torch

from illada_rt import _C_cuda_emu as emu

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
    emu.shared_before_write(static, dynamic, grid, block)  # each CTA zeroes what it read: the next must re-poison
    assert POISON_I32 != 0 and bool((static == POISON_I32).all()) and bool((dynamic == POISON_I32).all())


def test_bad_launch_arguments_are_value_errors():
    with pytest.raises(ValueError, match="block must be in"):
        emu.block_sum(torch.ones(4), torch.zeros(1), 1, 16)
    with pytest.raises(ValueError, match="grid must be"):
        emu.warp_ballot(torch.ones(4), torch.zeros(4, dtype=torch.int32), 0, 32)
    with pytest.raises(TypeError, match="x: expected dtype float32"):
        emu.block_sum(torch.ones(4, dtype=torch.float64), torch.zeros(1), 1, 32)
