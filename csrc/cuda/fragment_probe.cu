// Fragment probes (see fragment_probe.cuh). Built by nvcc into _C_cuda and as host C++ into the emulator.
#include <cuda_runtime.h>

#include <cstdint>
#include <string>
#include <type_traits>

#include "fragment_probe.cuh"
#include "launch.cuh"
#include "mma_sm80.cuh"

namespace illada::cuda {

namespace {

using namespace sm80;

template <int Num, bool Trans>
__device__ __forceinline__ void load_and_store(const uint16_t* row, uint32_t* out, int lane) {
  unsigned r[Num];
  ldmatrix<Num, Trans>(r, row);
  for (int j = 0; j < Num; ++j) out[lane * Num + j] = r[j];
}

__global__ void ldmatrix_probe_kernel(const uint4* src, const int32_t* row_of_lane, int num, bool trans,
                                      uint32_t* out) {
  ILLADA_SHARED(uint4[32], tile);  // 32 rows of 8 b16
  const int lane = threadIdx.x;
  tile[lane] = src[lane];
  __syncthreads();
  const uint16_t* row = reinterpret_cast<const uint16_t*>(&tile[row_of_lane[lane] & 31]);
  if (num == 1) trans ? load_and_store<1, true>(row, out, lane) : load_and_store<1, false>(row, out, lane);
  else if (num == 2) trans ? load_and_store<2, true>(row, out, lane) : load_and_store<2, false>(row, out, lane);
  else trans ? load_and_store<4, true>(row, out, lane) : load_and_store<4, false>(row, out, lane);
}

template <ProbeKind Kind>
__global__ void mma_probe_kernel(const uint32_t* a, const uint32_t* b, const void* c, void* d) {
  const int lane = threadIdx.x;
  const unsigned fa[4] = {a[lane * 4], a[lane * 4 + 1], a[lane * 4 + 2], a[lane * 4 + 3]};
  if constexpr (Kind == ProbeKind::s8) {
    int acc[4];
    for (int i = 0; i < 4; ++i) acc[i] = static_cast<const int32_t*>(c)[lane * 4 + i];
    mma_16832_s8(acc, fa, b[lane * 2], b[lane * 2 + 1]);
    for (int i = 0; i < 4; ++i) static_cast<int32_t*>(d)[lane * 4 + i] = acc[i];
  } else {
    float acc[4];
    for (int i = 0; i < 4; ++i) acc[i] = static_cast<const float*>(c)[lane * 4 + i];
    if constexpr (Kind == ProbeKind::e4m3) mma_16832_e4m3(acc, fa, b[lane * 2], b[lane * 2 + 1]);
    else mma_16816<Kind == ProbeKind::bf16>(acc, fa, b[lane * 2], b[lane * 2 + 1]);
    for (int i = 0; i < 4; ++i) static_cast<float*>(d)[lane * 4 + i] = acc[i];
  }
}

template <ProbeKind Kind>
__global__ void tile_gemm_probe_kernel(const unsigned char* a, const unsigned char* bt, int row_bytes, void* c) {
  ILLADA_DYNAMIC_SHARED(unsigned char, smem);
  unsigned char* sa = smem;                   // 16 rows
  unsigned char* sb = smem + 16 * row_bytes;  // 8 rows
  const int lane = threadIdx.x;
  for (int i = lane; i < 16 * row_bytes / 16; i += 32) cp_async_16(sa + 16 * i, a + 16 * i, true);
  for (int i = lane; i < 8 * row_bytes / 16; i += 32) cp_async_16(sb + 16 * i, bt + 16 * i, true);
  cp_async_commit();
  cp_async_wait<0>();
  __syncthreads();
  using Acc = typename std::conditional<Kind == ProbeKind::s8, int, float>::type;
  Acc acc[4] = {0, 0, 0, 0};
  for (int kb = 0; kb < row_bytes; kb += 32) {  // 32 bytes of K: 16 two-byte or 32 one-byte elements
    unsigned fa[4], fb[2];
    ldmatrix<4, false>(fa, sa + (lane & 15) * row_bytes + kb + (lane >> 4) * 16);
    ldmatrix<2, false>(fb, sb + (lane & 7) * row_bytes + kb + ((lane >> 3) & 1) * 16);
    if constexpr (Kind == ProbeKind::s8) mma_16832_s8(acc, fa, fb[0], fb[1]);
    else if constexpr (Kind == ProbeKind::e4m3) mma_16832_e4m3(acc, fa, fb[0], fb[1]);
    else mma_16816<Kind == ProbeKind::bf16>(acc, fa, fb[0], fb[1]);
  }
  const int g = lane >> 2, t = lane & 3;
  Acc* out = static_cast<Acc*>(c);
  for (int i = 0; i < 4; ++i) out[(g + (i >= 2 ? 8 : 0)) * 8 + 2 * t + (i & 1)] = acc[i];
}

template <ProbeKind Kind>
void launch_mma(const uint32_t* a, const uint32_t* b, const void* c, void* d, cudaStream_t stream) {
  auto* kernel = mma_probe_kernel<Kind>;
  ILLADA_LAUNCH("fragment_probe", kernel, dim3(1), dim3(32), 0, stream)(a, b, c, d);
}

template <ProbeKind Kind>
void launch_tile(const void* a, const void* bt, int row_bytes, void* c, cudaStream_t stream) {
  auto* kernel = tile_gemm_probe_kernel<Kind>;
  const size_t smem = static_cast<size_t>(24) * row_bytes;
  ILLADA_LAUNCH("fragment_probe", kernel, dim3(1), dim3(32), smem, stream)
  (static_cast<const unsigned char*>(a), static_cast<const unsigned char*>(bt), row_bytes, c);
}

std::string result(const char* what) {
  const cudaError_t err = cudaGetLastError();
  return err == cudaSuccess ? std::string() : std::string(what) + ": " + cudaGetErrorString(err);
}

}  // namespace

std::string probe_ldmatrix(const void* src, const int32_t* row_of_lane, int num, bool trans, uint32_t* out,
                           void* stream) {
  if (num != 1 && num != 2 && num != 4) return "probe_ldmatrix: num must be 1, 2 or 4";
  ILLADA_LAUNCH("fragment_probe", ldmatrix_probe_kernel, dim3(1), dim3(32), 0, static_cast<cudaStream_t>(stream))
  (static_cast<const uint4*>(src), row_of_lane, num, trans, out);
  return result("probe_ldmatrix");
}

std::string probe_mma(ProbeKind kind, const uint32_t* a, const uint32_t* b, const void* c, void* d, void* stream) {
  auto s = static_cast<cudaStream_t>(stream);
  switch (kind) {
    case ProbeKind::bf16: launch_mma<ProbeKind::bf16>(a, b, c, d, s); break;
    case ProbeKind::f16: launch_mma<ProbeKind::f16>(a, b, c, d, s); break;
    case ProbeKind::s8: launch_mma<ProbeKind::s8>(a, b, c, d, s); break;
    case ProbeKind::e4m3: launch_mma<ProbeKind::e4m3>(a, b, c, d, s); break;
  }
  return result("probe_mma");
}

std::string probe_tile_gemm(ProbeKind kind, const void* a, const void* bt, int row_bytes, void* c, void* stream) {
  if (row_bytes <= 0 || row_bytes % 32 != 0 || row_bytes > kProbeMaxRowBytes)
    return "probe_tile_gemm: row_bytes must be a positive multiple of 32, at most 1024";
  auto s = static_cast<cudaStream_t>(stream);
  switch (kind) {
    case ProbeKind::bf16: launch_tile<ProbeKind::bf16>(a, bt, row_bytes, c, s); break;
    case ProbeKind::f16: launch_tile<ProbeKind::f16>(a, bt, row_bytes, c, s); break;
    case ProbeKind::s8: launch_tile<ProbeKind::s8>(a, bt, row_bytes, c, s); break;
    case ProbeKind::e4m3: launch_tile<ProbeKind::e4m3>(a, bt, row_bytes, c, s); break;
  }
  return result("probe_tile_gemm");
}

}  // namespace illada::cuda
