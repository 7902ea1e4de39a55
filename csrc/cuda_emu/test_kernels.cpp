// Kernels written as CUDA source (the names come from cuda_names.h), run by the emulator with its checks (this file
// is compiled with the same instrumentation as the real kernel sources).
#include "test_kernels.h"

#include "cuda/launch.cuh"
#include "cuda/mma_sm80.cuh"
#include "cuda_names.h"

namespace cuda_emu::tests {
namespace {

__global__ void block_sum_kernel(const float* __restrict__ x, int n, float* out) {
  __shared__ float partial[1024];
  float v = 0.f;
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) v += x[i];
  partial[threadIdx.x] = v;
  __syncthreads();
  if (threadIdx.x < 32) {
    float w = 0.f;
    for (unsigned i = threadIdx.x; i < blockDim.x; i += 32) w += partial[i];
    for (int offset = 16; offset > 0; offset >>= 1) w += __shfl_xor_sync(0xffffffffu, w, offset);
    if (threadIdx.x == 0) atomicAdd(out, w);
  }
}

__global__ void warp_ballot_kernel(const float* x, int n, int32_t* out) {
  unsigned warp_first = threadIdx.x / 32 * 32;
  unsigned lanes = blockDim.x - warp_first < 32 ? blockDim.x - warp_first : 32;
  unsigned mask = lanes == 32 ? 0xffffffffu : (1u << lanes) - 1;
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  unsigned bits = __ballot_sync(mask, i < n && x[i] > 0.f);
  bits = __shfl_sync(mask, threadIdx.x % 32 == 0 ? bits : 0u, 0);  // lane 0's answer, broadcast
  if (i < n) out[i] = static_cast<int32_t>(bits);
}

__global__ void divergent_barrier_kernel() {
  if (threadIdx.x < 16) __syncthreads();
}

__global__ void split_barrier_kernel() {
  if (threadIdx.x < 16) {
    __syncthreads();
  } else {
    __syncthreads();
  }
}

__global__ void divergent_shuffle_kernel() {
  float v = threadIdx.x;
  if (threadIdx.x < 16)
    v = __shfl_xor_sync(0xffffffffu, v, 1);
  else
    v = __shfl_xor_sync(0xffffffffu, v, 1);
  (void)v;
}

__global__ void shared_before_write_kernel(int32_t* out_static, int32_t* out_dynamic) {
  __shared__ int32_t s[1024];
  ILLADA_DYNAMIC_SHARED(int32_t, d);
  unsigned t = blockIdx.x * blockDim.x + threadIdx.x;
  out_static[t] = s[threadIdx.x];
  out_dynamic[t] = d[threadIdx.x];
  s[threadIdx.x] = 0;  // the next CTA must see poison again
  d[threadIdx.x] = 0;
}

__global__ void neighbour_exchange_kernel(int32_t* out, bool barrier, bool warp_sync) {
  __shared__ int32_t s[1024];
  const int t = threadIdx.x;
  s[t] = t;
  if (barrier) __syncthreads();
  if (warp_sync) __syncwarp();
  out[t] = t > 0 ? s[t - 1] : -1;
}

__global__ void read_then_overwrite_kernel(int32_t* out, bool barrier) {
  __shared__ int32_t s[1024];
  const int t = threadIdx.x;
  s[t] = t;
  __syncthreads();
  out[t] = s[(t + 1) % blockDim.x];
  if (barrier) __syncthreads();
  s[t] = 0;
}

__global__ void copy_block_kernel(const float* x, float* out) { out[threadIdx.x] = x[threadIdx.x]; }

__global__ void shared_index_kernel(int32_t* out, int offset) {
  ILLADA_DYNAMIC_SHARED(int32_t, d);
  const int t = threadIdx.x;
  d[t + offset] = t;
  out[t] = d[t + offset];
}

__global__ void cp_async_exchange_kernel(const float* x, float* out, bool wait) {
  __shared__ __align__(16) float s[4 * 1024];
  const int t = threadIdx.x;
  illada::cuda::sm80::cp_async_16(&s[4 * t], &x[4 * t], true);
  illada::cuda::sm80::cp_async_commit();
  if (wait) illada::cuda::sm80::cp_async_wait<0>();
  __syncthreads();
  const int src = (t + 1) % blockDim.x;
  for (int i = 0; i < 4; ++i) out[4 * t + i] = s[4 * src + i];
}

__global__ void cp_async_zero_fill_kernel(const float* x, float* out, int src_bytes) {
  __shared__ __align__(16) float s[4 * 32];
  const int t = threadIdx.x;
  illada::cuda::sm80::cp_async_ca<16>(&s[4 * t], &x[4 * t], src_bytes);
  illada::cuda::sm80::cp_async_commit();
  illada::cuda::sm80::cp_async_wait<0>();
  __syncthreads();
  for (int i = 0; i < 4; ++i) out[4 * t + i] = s[4 * t + i];
}

template <bool Declared>
__global__ void template_exchange_kernel(int32_t* out, bool barrier) {
  const int t = threadIdx.x;
  if constexpr (Declared) {
    ILLADA_SHARED(int32_t[1024], s);
    s[t] = t;
    if (barrier) __syncthreads();
    out[t] = t > 0 ? s[t - 1] : -1;
  } else {
    __shared__ int32_t s[1024];
    s[t] = t;
    if (barrier) __syncthreads();
    out[t] = t > 0 ? s[t - 1] : -1;
  }
}

}  // namespace

void template_exchange(int32_t* out, unsigned block, bool barrier, bool declared) {
  if (declared)
    ILLADA_LAUNCH("template_exchange", template_exchange_kernel<true>, 1, block, 0, 0)(out, barrier);
  else
    ILLADA_LAUNCH("template_exchange", template_exchange_kernel<false>, 1, block, 0, 0)(out, barrier);
}

void block_sum(const float* x, int n, float* out, unsigned grid, unsigned block) {
  ILLADA_LAUNCH("block_sum", block_sum_kernel, grid, block, 0, 0)(x, n, out);
}
void warp_ballot(const float* x, int n, int32_t* out, unsigned grid, unsigned block) {
  ILLADA_LAUNCH("warp_ballot", warp_ballot_kernel, grid, block, 0, 0)(x, n, out);
}
void divergent_barrier(unsigned block) { ILLADA_LAUNCH("divergent_barrier", divergent_barrier_kernel, 1, block, 0, 0)(); }
void split_barrier(unsigned block) { ILLADA_LAUNCH("split_barrier", split_barrier_kernel, 1, block, 0, 0)(); }
void divergent_shuffle() { ILLADA_LAUNCH("divergent_shuffle", divergent_shuffle_kernel, 1, 32, 0, 0)(); }
void shared_before_write(int32_t* out_static, int32_t* out_dynamic, unsigned grid, unsigned block) {
  ILLADA_LAUNCH("shared_before_write", shared_before_write_kernel, grid, block, block * sizeof(int32_t), 0)
  (out_static, out_dynamic);
}
void neighbour_exchange(int32_t* out, unsigned block, bool barrier, bool warp_sync) {
  ILLADA_LAUNCH("neighbour_exchange", neighbour_exchange_kernel, 1, block, 0, 0)(out, barrier, warp_sync);
}
void read_then_overwrite(int32_t* out, unsigned block, bool barrier) {
  ILLADA_LAUNCH("read_then_overwrite", read_then_overwrite_kernel, 1, block, 0, 0)(out, barrier);
}
void copy_block(const float* x, float* out, unsigned block) {
  ILLADA_LAUNCH("copy_block", copy_block_kernel, 1, block, 0, 0)(x, out);
}
void shared_index(int32_t* out, unsigned block, unsigned elems, int offset) {
  ILLADA_LAUNCH("shared_index", shared_index_kernel, 1, block, elems * sizeof(int32_t), 0)(out, offset);
}
void cp_async_zero_fill(const float* x, float* out, int src_bytes) {
  ILLADA_LAUNCH("cp_async_zero_fill", cp_async_zero_fill_kernel, 1, 32, 0, 0)(x, out, src_bytes);
}
void cp_async_exchange(const float* x, float* out, unsigned block, bool wait) {
  ILLADA_LAUNCH("cp_async_exchange", cp_async_exchange_kernel, 1, block, 0, 0)(x, out, wait);
}

}  // namespace cuda_emu::tests
