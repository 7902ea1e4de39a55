// W8A8 INT8 and FP8 GEMMs and the per-row activation quantizer (see gemm.cuh for the design).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <string>
#include <type_traits>

#include "gemm.cuh"
#include "launch.cuh"
#include "mma_sm80.cuh"

namespace illada::cuda {

namespace {

using namespace sm80;

constexpr int kBM = 64, kBN = 64, kBK = 64;  // CTA tile: rows, columns, K bytes per stage
constexpr int kStride = kBK + 16;            // shared row stride (bytes): 8 ldmatrix rows -> 8 bank groups
constexpr int kThreads = 128;                // 4 warps, 2 x 2, each 32 x 32
constexpr int kQuantThreads = 256;
constexpr int kMaxSplits = 16;

__device__ __forceinline__ float load_x(const void* x, InType t, int64_t i) {
  switch (t) {
    case InType::bf16: return __bfloat162float(static_cast<const __nv_bfloat16*>(x)[i]);
    case InType::f16: return __half2float(static_cast<const __half*>(x)[i]);
    default: return static_cast<const float*>(x)[i];
  }
}

// One CTA per row: max |x| over the row, then q = x / scale rounded (see gemm.cuh).
__global__ void __launch_bounds__(kQuantThreads) quantize_rows_kernel(const QuantizeRowsParams p) {
  ILLADA_SHARED(float[kQuantThreads / 32], warp_max);
  const int64_t row = blockIdx.x;
  const int64_t base = row * p.ldx;
  float amax = 0.f;
  for (int64_t k = threadIdx.x; k < p.K; k += kQuantThreads) amax = fmaxf(amax, fabsf(load_x(p.x, p.x_type, base + k)));
  for (int off = 16; off > 0; off /= 2) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, off));
  if (threadIdx.x % 32 == 0) warp_max[threadIdx.x / 32] = amax;
  __syncthreads();
  amax = warp_max[0];
  for (int w = 1; w < kQuantThreads / 32; ++w) amax = fmaxf(amax, warp_max[w]);
  const bool s8 = p.kind == ElemKind::s8;
  const float scale = amax > 0.f ? amax / (s8 ? 127.f : 448.f) : 1.f;
  if (threadIdx.x == 0) p.scale[row] = scale;
  unsigned char* q = static_cast<unsigned char*>(p.q) + row * p.Kp;
  for (int64_t k = threadIdx.x; k < p.Kp; k += kQuantThreads) {
    const float v = k < p.K ? __fdiv_rn(load_x(p.x, p.x_type, base + k), scale) : 0.f;
    if (s8) {
      const float r = fminf(fmaxf(rintf(v), -127.f), 127.f);  // round half to even, as the CPU path
      q[k] = static_cast<unsigned char>(static_cast<int8_t>(r));
    } else {
      q[k] = __nv_cvt_float_to_fp8(v, __NV_SATFINITE, __NV_E4M3);
    }
  }
}

// f(mi, ni, i, r, c) for each of a thread's 32 accumulators: tile mi/ni, element i, at row r / column c of the
// CTA's 64 x 64 tile (the C fragment layout: rows g and g + 8, columns 2t and 2t + 1 of each 16 x 8 tile).
template <typename F>
__device__ __forceinline__ void for_each_acc(int wm, int wn, int lane, F&& f) {
  const int g = lane / 4, t = lane % 4;
#pragma unroll
  for (int mi = 0; mi < 2; ++mi)
#pragma unroll
    for (int ni = 0; ni < 4; ++ni)
#pragma unroll
      for (int i = 0; i < 4; ++i) f(mi, ni, i, wm * 32 + mi * 16 + g + (i >= 2 ? 8 : 0), wn * 32 + ni * 8 + 2 * t + (i & 1));
}

// Copy kBN rows x kBK bytes of the weight (bytes k0.., rows n0..) into shared memory (row stride kStride); rows
// past N and bytes past Kp are zero-filled.
__device__ __forceinline__ void load_weight_stage(unsigned char* sb, const GemmParams& p, int n0, int k0) {
  constexpr int kChunksPerRow = kBK / 16;
  for (int c = threadIdx.x; c < kBN * kChunksPerRow; c += kThreads) {
    const int r = c / kChunksPerRow, col = (c % kChunksPerRow) * 16;
    const bool ok = n0 + r < p.N && k0 + col < p.Kp;
    const unsigned char* src = static_cast<const unsigned char*>(p.w) + (ok ? (n0 + r) * p.ldw + k0 + col : 0);
    cp_async_16(sb + r * kStride + col, src, ok);
  }
}

// W8A8 mainloop (int8 or e4m3 on both sides): a stage is kBK bytes of K for kBM rows of A and kBN rows of W.
template <ElemKind Kind>
struct W8A8 {
  using Acc = typename std::conditional<Kind == ElemKind::s8, int, float>::type;
  static constexpr bool kActivationScale = true;
  static constexpr int kStageBytes = (kBM + kBN) * kStride;

  static __device__ __forceinline__ void load_stage(unsigned char* stage, const GemmParams& p, int m0, int n0,
                                                    int kt) {
    constexpr int kChunksPerRow = kBK / 16;
    const int k0 = kt * kBK;
    for (int c = threadIdx.x; c < kBM * kChunksPerRow; c += kThreads) {
      const int r = c / kChunksPerRow, col = (c % kChunksPerRow) * 16;
      const bool ok = m0 + r < p.M && k0 + col < p.Kp;
      const unsigned char* src = static_cast<const unsigned char*>(p.a) + (ok ? (m0 + r) * p.lda + k0 + col : 0);
      cp_async_16(stage + r * kStride + col, src, ok);
    }
    load_weight_stage(stage + kBM * kStride, p, n0, k0);
  }

  // acc[mi][ni] += the warp's 32 x 32 block of A . W^T over one stage (two k32 steps).
  static __device__ __forceinline__ void compute_stage(Acc (&acc)[2][4][4], const unsigned char* stage, int wm,
                                                       int wn, int lane) {
    const unsigned char* sa = stage;
    const unsigned char* sb = stage + kBM * kStride;
#pragma unroll
    for (int ks = 0; ks < kBK / 32; ++ks) {
      unsigned af[2][4], bf[2][4];
#pragma unroll
      for (int mi = 0; mi < 2; ++mi)
        ldmatrix_x4(af[mi], sa + (wm * 32 + mi * 16 + (lane & 15)) * kStride + ks * 32 + (lane >> 4) * 16);
#pragma unroll
      for (int nj = 0; nj < 2; ++nj)
        ldmatrix_x4(bf[nj], sb + (wn * 32 + nj * 16 + (lane & 7) + ((lane >> 4) << 3)) * kStride + ks * 32 +
                                ((lane >> 3) & 1) * 16);
#pragma unroll
      for (int mi = 0; mi < 2; ++mi)
#pragma unroll
        for (int ni = 0; ni < 4; ++ni) {
          const unsigned b0 = bf[ni / 2][(ni % 2) * 2], b1 = bf[ni / 2][(ni % 2) * 2 + 1];
          if constexpr (Kind == ElemKind::s8) mma_16832_s8(acc[mi][ni], af[mi], b0, b1);
          else mma_16832_e4m3(acc[mi][ni], af[mi], b0, b1);
        }
    }
  }
};

// e4m3 -> float, exact (every e4m3 value is a bf16 and an fp16 value too); 0x7f / 0xff are NaN.
__device__ __forceinline__ float e4m3_to_float(unsigned v) {
  const unsigned e = (v >> 3) & 15u, m = v & 7u;
  float f;
  if (e == 15u && m == 7u) f = __uint_as_float(0x7fc00000u);
  else if (e == 0u) f = static_cast<float>(m) * 0.001953125f;  // m * 2^-9
  else f = __uint_as_float(((e + 120u) << 23) | (m << 20));
  return (v & 0x80u) ? -f : f;
}

// FP8 weight-only mainloop (sm_80, where mma.sync has no e4m3): bf16/fp16 activations as they are, the e4m3
// weights widened to the activations' type in registers, mma.sync m16n8k16. A stage is kBK elements of K: kBK * 2
// bytes of kBM activation rows (row stride kAStride) and kBK bytes of kBN weight rows.
template <bool Bf16>
struct F8W {
  using Acc = float;
  static constexpr bool kActivationScale = false;
  static constexpr int kAStride = 2 * kBK + 16;
  static constexpr int kStageBytes = kBM * kAStride + kBN * kStride;

  static __device__ __forceinline__ void load_stage(unsigned char* stage, const GemmParams& p, int m0, int n0,
                                                    int kt) {
    constexpr int kChunksPerRow = 2 * kBK / 16;  // 8 elements per chunk
    const int k0 = kt * kBK;
    for (int c = threadIdx.x; c < kBM * kChunksPerRow; c += kThreads) {
      const int r = c / kChunksPerRow, ke = k0 + (c % kChunksPerRow) * 8;
      const int valid = m0 + r < p.M ? (p.K - ke >= 8 ? 16 : (p.K - ke > 0 ? 2 * (p.K - ke) : 0)) : 0;
      const unsigned char* src =
          static_cast<const unsigned char*>(p.a) + (valid ? (m0 + r) * p.lda + 2 * static_cast<int64_t>(ke) : 0);
      cp_async_16_bytes(stage + r * kAStride + (c % kChunksPerRow) * 16, src, valid);
    }
    load_weight_stage(stage + kBM * kAStride, p, n0, k0);
  }

  static __device__ __forceinline__ void compute_stage(float (&acc)[2][4][4], const unsigned char* stage, int wm,
                                                       int wn, int lane) {
    const unsigned char* sa = stage;
    const unsigned char* sb = stage + kBM * kAStride;
    const int g = lane / 4, t = lane % 4;
#pragma unroll
    for (int ks = 0; ks < kBK / 16; ++ks) {
      unsigned af[2][4];
#pragma unroll
      for (int mi = 0; mi < 2; ++mi)
        ldmatrix_x4(af[mi], sa + (wm * 32 + mi * 16 + (lane & 15)) * kAStride + (ks * 16 + (lane >> 4) * 8) * 2);
#pragma unroll
      for (int ni = 0; ni < 4; ++ni) {
        // B fragment: k = 2t, 2t+1 (b0) and 2t+8, 2t+9 (b1) of column n = g: bytes of the weight's row n
        const unsigned char* wrow = sb + (wn * 32 + ni * 8 + g) * kStride + ks * 16 + 2 * t;
        const unsigned b0 = pack2<Bf16>(e4m3_to_float(wrow[0]), e4m3_to_float(wrow[1]));
        const unsigned b1 = pack2<Bf16>(e4m3_to_float(wrow[8]), e4m3_to_float(wrow[9]));
#pragma unroll
        for (int mi = 0; mi < 2; ++mi) mma_16816<Bf16>(acc[mi][ni], af[mi], b0, b1);
      }
    }
  }
};

__device__ __forceinline__ void store_out(const GemmParams& p, int row, int col, float v) {
  const int64_t o = static_cast<int64_t>(row) * p.ldo + col;
  switch (p.out_type) {
    case OutType::bf16: static_cast<__nv_bfloat16*>(p.out)[o] = __float2bfloat16_rn(v); break;
    case OutType::f16: static_cast<__half*>(p.out)[o] = __float2half_rn(v); break;
    default: static_cast<float*>(p.out)[o] = v;
  }
}

template <class Main>
__global__ void __launch_bounds__(kThreads) gemm_kernel(const GemmParams p) {
  using Acc = typename Main::Acc;
  ILLADA_SHARED(unsigned char[2][Main::kStageBytes], smem);
  ILLADA_SHARED(int, last_split);
  const int n0 = blockIdx.x * kBN, m0 = blockIdx.y * kBM, split = blockIdx.z, splits = gridDim.z;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, wm = warp / 2, wn = warp % 2;
  const bool block128 = p.w_scale_kind == 2;

  const int k_tiles = (p.Kp + kBK - 1) / kBK;
  const int kt0 = static_cast<int>(static_cast<int64_t>(k_tiles) * split / splits);
  const int kt1 = static_cast<int>(static_cast<int64_t>(k_tiles) * (split + 1) / splits);

  Acc acc[2][4][4], part[2][4][4];
  for_each_acc(wm, wn, lane, [&](int mi, int ni, int i, int, int) { acc[mi][ni][i] = part[mi][ni][i] = 0; });

  if (kt0 < kt1) Main::load_stage(smem[0], p, m0, n0, kt0);
  cp_async_commit();
  for (int kt = kt0; kt < kt1; ++kt) {
    const int buf = (kt - kt0) & 1;
    if (kt + 1 < kt1) Main::load_stage(smem[buf ^ 1], p, m0, n0, kt + 1);
    cp_async_commit();  // an empty group on the last stage keeps the wait count uniform
    cp_async_wait<1>();
    __syncthreads();
    if (block128) {
      Main::compute_stage(part, smem[buf], wm, wn, lane);
      // the end of a 128-wide K block (or of this split's range): scale the slice by its block's weight scale
      if ((kt & 1) || kt + 1 == kt1) {
        const float s = p.w_scale[(n0 / 128) * p.w_scale_ld + kt / 2];
        for_each_acc(wm, wn, lane, [&](int mi, int ni, int i, int, int) {
          acc[mi][ni][i] = __fadd_rn(acc[mi][ni][i], __fmul_rn(static_cast<float>(part[mi][ni][i]), s));
          part[mi][ni][i] = 0;
        });
      }
    } else {
      Main::compute_stage(acc, smem[buf], wm, wn, lane);
    }
    __syncthreads();  // everyone is done with `buf` before the next stage's copies overwrite it
  }
  cp_async_wait<0>();

  // Split-K: every split writes its partial tile; the last to arrive adds them in split order.
  if (splits > 1) {
    const int tile = blockIdx.y * gridDim.x + blockIdx.x;
    Acc* ws = static_cast<Acc*>(p.workspace) + static_cast<int64_t>(tile) * splits * kBM * kBN;
    for_each_acc(wm, wn, lane, [&](int mi, int ni, int i, int r, int c) {
      ws[static_cast<int64_t>(split) * kBM * kBN + r * kBN + c] = acc[mi][ni][i];
    });
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) {
      last_split = atomicAdd(&p.counters[tile], 1) == splits - 1;
      if (last_split) p.counters[tile] = 0;  // every split has arrived: ready for the next call
    }
    __syncthreads();
    if (!last_split) return;
    __threadfence();
    for_each_acc(wm, wn, lane, [&](int mi, int ni, int i, int r, int c) {
      Acc sum = 0;
      for (int s = 0; s < splits; ++s) {
        const Acc v = __ldcg(&ws[static_cast<int64_t>(s) * kBM * kBN + r * kBN + c]);
        if constexpr (std::is_same<Acc, int>::value) sum += v;
        else sum = __fadd_rn(sum, v);
      }
      acc[mi][ni][i] = sum;
    });
  }

  // Epilogue: float(acc) * a_scale[row] * w_scale (two roundings, as the CPU path), one rounding to the output.
  for_each_acc(wm, wn, lane, [&](int mi, int ni, int i, int r, int c) {
    const int row = m0 + r, col = n0 + c;
    if (row >= p.M || col >= p.N) return;
    float v = static_cast<float>(acc[mi][ni][i]);
    if constexpr (Main::kActivationScale) v = __fmul_rn(v, p.a_scale[row]);
    if (!block128) v = __fmul_rn(v, p.w_scale[p.w_scale_kind == 1 ? 0 : col]);
    store_out(p, row, col, v);
  });
}

int device_sms() {
  int dev = 0, sms = 0;
  if (cudaGetDevice(&dev) != cudaSuccess ||
      cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess) {
    cudaGetLastError();
    return 1;
  }
  return sms;
}

int device_cc() {
  int dev = 0, major = 0, minor = 0;
  if (cudaGetDevice(&dev) != cudaSuccess ||
      cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) != cudaSuccess ||
      cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return major * 10 + minor;
}

int tiles(int M, int N) { return ((M + kBM - 1) / kBM) * ((N + kBN - 1) / kBN); }

}  // namespace

int gemm_splits(int M, int N, int Kp, int sms) {
  const int t = tiles(M, N), k_tiles = (Kp + kBK - 1) / kBK;
  if (t <= 0 || t >= sms) return 1;
  int s = (2 * sms + t - 1) / t;    // about two CTAs per SM
  s = s < k_tiles / 2 ? s : k_tiles / 2;  // at least two stages per split
  s = s < kMaxSplits ? s : kMaxSplits;
  return s > 1 ? s : 1;
}

int64_t gemm_workspace_bytes(int M, int N, int splits) {
  return splits > 1 ? static_cast<int64_t>(tiles(M, N)) * splits * kBM * kBN * 4 : 0;
}

int64_t gemm_counters(int M, int N) { return tiles(M, N); }

std::string quantize_rows(const QuantizeRowsParams& p, void* stream) {
  if (p.M == 0) return {};
  if (p.Kp % 32 != 0 || p.Kp < p.K) return "quantize_rows: Kp must be a multiple of 32, at least K";
  if (p.M > 0x7fffffff) return "quantize_rows: too many rows";
  ILLADA_LAUNCH("quantize_rows", quantize_rows_kernel, dim3(static_cast<unsigned>(p.M)), kQuantThreads, 0,
                static_cast<cudaStream_t>(stream))
  (p);
  const cudaError_t err = cudaGetLastError();
  return err == cudaSuccess ? std::string() : std::string("quantize_rows: ") + cudaGetErrorString(err);
}

std::string gemm_quantized(const GemmParams& p_in, void* stream) {
  GemmParams p = p_in;
  if (p.M == 0 || p.N == 0) return {};
  if (p.Kp % 32 != 0) return "gemm: Kp must be a multiple of 32 (pad K at pack time)";
  if (p.kind == ElemKind::s8 && p.w_scale_kind == 2) return "gemm: block128 weight scales are for e4m3 only";
  if (p.kind == ElemKind::s8 && p.weight_only) return "gemm: weight-only is the FP8 path (e4m3 weights)";
  if (p.kind == ElemKind::e4m3 && device_cc() < 89) p.weight_only = true;  // no e4m3 mma.sync before sm_89
  if (p.weight_only && (p.K <= 0 || p.K > p.Kp || p.lda % 16 != 0 || p.a_type == InType::f32))
    return "gemm: weight-only needs bf16/fp16 activations with K <= Kp and 16-byte row strides";
  if (p.splits <= 0) p.splits = gemm_splits(p.M, p.N, p.Kp, device_sms());
  const int k_tiles = (p.Kp + kBK - 1) / kBK;
  if (p.splits > kMaxSplits || p.splits > k_tiles) return "gemm: splits must be in [1, min(16, Kp / 64)]";
  if (p.splits > 1 && (p.workspace == nullptr || p.counters == nullptr)) return "gemm: split-K needs a workspace";
  const dim3 grid((p.N + kBN - 1) / kBN, (p.M + kBM - 1) / kBM, p.splits);
  if (grid.y > 65535) return "gemm: M too large";
  auto s = static_cast<cudaStream_t>(stream);
  if (p.kind == ElemKind::s8) {
    ILLADA_LAUNCH("gemm_w8a8", gemm_kernel<W8A8<ElemKind::s8>>, grid, kThreads, 0, s)(p);
  } else if (!p.weight_only) {
    ILLADA_LAUNCH("gemm_fp8", gemm_kernel<W8A8<ElemKind::e4m3>>, grid, kThreads, 0, s)(p);
  } else if (p.a_type == InType::bf16) {
    ILLADA_LAUNCH("gemm_fp8", gemm_kernel<F8W<true>>, grid, kThreads, 0, s)(p);
  } else {
    ILLADA_LAUNCH("gemm_fp8", gemm_kernel<F8W<false>>, grid, kThreads, 0, s)(p);
  }
  const cudaError_t err = cudaGetLastError();
  return err == cudaSuccess ? std::string() : std::string("gemm: ") + cudaGetErrorString(err);
}

}  // namespace illada::cuda
