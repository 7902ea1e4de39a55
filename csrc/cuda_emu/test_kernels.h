// Small kernels that exercise the emulator (and, deliberately broken, its checks). Launchers over raw pointers.
#pragma once
#include <cstdint>

namespace cuda_emu::tests {

// out[0] += sum of x[0..n): grid-stride sums, a shared-memory block reduction, a warp shuffle, an atomicAdd.
// out[0] must be zero on entry; block >= 32.
void block_sum(const float* x, int n, float* out, unsigned grid, unsigned block);
// out[i] = bits of the lanes of i's warp (existing lanes only) whose x is > 0, via __ballot_sync and __shfl_sync.
void warp_ballot(const float* x, int n, int32_t* out, unsigned grid, unsigned block);
// Deliberately broken: __syncthreads inside `if (threadIdx.x < 16)`.
void divergent_barrier(unsigned block);
// Deliberately broken: half the block at one __syncthreads, half at another.
void split_barrier(unsigned block);
// Deliberately broken: lanes 0-15 shuffle at one call site, lanes 16-31 at another, full mask.
void divergent_shuffle();
// Reads static and dynamic shared memory before any write (then writes it): out_static[b * block + t] and
// out_dynamic[...] hold what thread t of CTA b read.
void shared_before_write(int32_t* out_static, int32_t* out_dynamic, unsigned grid, unsigned block);

}  // namespace cuda_emu::tests
