// Small kernels that exercise the emulator and, deliberately broken, each of its checks. Launchers over raw
// pointers; the binding declares the tensor arguments (GlobalArgs) before calling them.
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
// Thread t writes s[t] = t, then (t > 0) reads its neighbour's s[t - 1] into out[t]; `barrier` puts a
// __syncthreads between (correct), `warp_sync` a __syncwarp (correct within one warp); neither is a race.
void neighbour_exchange(int32_t* out, unsigned block, bool barrier, bool warp_sync);
// s[t] = t, barrier, out[t] = s[(t + 1) % block], then s[t] = 0: without a second barrier, thread t overwrites
// what thread t - 1 read in the same interval (a write-after-read race) unless `barrier`.
void read_then_overwrite(int32_t* out, unsigned block, bool barrier);
// out[t] = x[t] for t < block: reads past x's end when x has fewer than `block` elements.
void copy_block(const float* x, float* out, unsigned block);
// Dynamic shared memory of `elems` ints; thread t writes index t + offset and reads it back into out[t].
void shared_index(int32_t* out, unsigned block, unsigned elems, int offset);
// Each thread cp.async-copies 16 bytes of x into shared memory, commits, then (if `wait`) waits; after a barrier
// thread t reads its neighbour's chunk into out.
void cp_async_exchange(const float* x, float* out, unsigned block, bool wait);
// Each of 32 threads copies 16 bytes of x (cp.async.ca) with only `src_bytes` read: out gets those, then zeros.
void cp_async_zero_fill(const float* x, float* out, int src_bytes);
// A function-template kernel: thread t writes s[t] then reads s[t - 1] (a race unless `barrier`). With
// `declared`, s is declared with ILLADA_SHARED (checked); otherwise with a plain `__shared__`, which GCC turns into
// a host global inside a template: the write is reported as such.
void template_exchange(int32_t* out, unsigned block, bool barrier, bool declared);

}  // namespace cuda_emu::tests
