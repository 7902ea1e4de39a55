// Bidirectional attention forward, tensor-core path for sm_80 and newer (mma.sync m16n8k16, ldmatrix, cp.async
// double buffering). Hopper runs it too; a wgmma/TMA path for sm_90a is the next step once this one is verified
// on a GPU (see bench/gpu_check.sh).
//
// One CTA = 4 warps = 64 query rows of one (batch, query head); each warp owns 16 rows. Keys stream through shared
// memory 64 at a time (K and V double-buffered); scores and probabilities stay in registers (the score
// accumulators are reused directly as the A operand of P.V), softmax is online in base 2 with the scale folded in.
#include <cuda_runtime.h>

#include <cfloat>
#include <cmath>
#include <string>

#include "attention_bidir.cuh"
#include "launch.cuh"
#include "mma_sm80.cuh"

namespace illada::cuda {

namespace {

using namespace sm80;

constexpr int kBlockM = 64;  // query rows per CTA
constexpr int kBlockN = 64;  // keys per shared-memory tile
constexpr int kWarps = 4;
constexpr int kThreads = kWarps * 32;

template <int D>
struct Tile {
  static constexpr int kStride = D + 8;  // +16 bytes per row: the 8 row addresses of each ldmatrix hit 8 bank groups
  static constexpr int kQ = kBlockM * kStride;  // elements
  static constexpr int kKV = kBlockN * kStride;
  static constexpr size_t kSmemBytes = static_cast<size_t>(kQ + 4 * kKV) * 2;  // Q, K[2], V[2] (16-bit elements)
  static constexpr int kChunksPerRow = D / 8;                                   // 16-byte chunks
};

// Copy `rows` x D elements starting at row `row0` of a [*, D] matrix with row stride `ld` into shared memory;
// rows at or past `limit` are zero-filled.
template <int D>
__device__ __forceinline__ void load_tile(uint16_t* smem, const uint16_t* gmem, int64_t ld, int row0, int limit) {
  constexpr int kChunks = kBlockN * Tile<D>::kChunksPerRow;
  static_assert(kBlockN == kBlockM, "Q and K/V tiles share the loader");
#pragma unroll
  for (int i = 0; i < kChunks / kThreads; ++i) {
    const int c = threadIdx.x + i * kThreads;
    const int r = c / Tile<D>::kChunksPerRow;
    const int col = (c % Tile<D>::kChunksPerRow) * 8;
    const bool ok = row0 + r < limit;
    const uint16_t* src = ok ? gmem + static_cast<int64_t>(row0 + r) * ld + col : gmem;
    cp_async_16(smem + r * Tile<D>::kStride + col, src, ok);
  }
}

template <int D, bool Bf16>
__global__ void __launch_bounds__(kThreads) attention_bidir_sm80_kernel(const AttentionParams p) {
  ILLADA_DYNAMIC_SHARED(uint16_t, smem);
  uint16_t* sQ = smem;
  uint16_t* sK = sQ + Tile<D>::kQ;       // two buffers of kKV
  uint16_t* sV = sK + 2 * Tile<D>::kKV;  // two buffers of kKV

  const int m_block = blockIdx.x, head = blockIdx.y, b = blockIdx.z;
  const int kv_head = head / (p.heads_q / p.heads_kv);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int g = lane / 4, t = lane % 4;

  const uint16_t* q = static_cast<const uint16_t*>(p.q) + b * p.q_batch_stride + head * p.q_head_stride;
  const uint16_t* k = static_cast<const uint16_t*>(p.k) + b * p.k_batch_stride + kv_head * p.k_head_stride;
  const uint16_t* v = static_cast<const uint16_t*>(p.v) + b * p.v_batch_stride + kv_head * p.v_head_stride;
  const uint8_t* mask = p.key_mask ? p.key_mask + b * p.mask_batch_stride : nullptr;
  const int q0 = m_block * kBlockM;
  const int n_tiles = (p.tk + kBlockN - 1) / kBlockN;

  load_tile<D>(sQ, q, p.q_row_stride, q0, p.tq);
  if (n_tiles > 0) {
    load_tile<D>(sK, k, p.k_row_stride, 0, p.tk);
    load_tile<D>(sV, v, p.v_row_stride, 0, p.tk);
  }
  cp_async_commit();

  constexpr int kSteps = D / 16;  // k-steps over the head dim
  unsigned qa[kSteps][4];
  float o[D / 8][4];
#pragma unroll
  for (int i = 0; i < D / 8; ++i) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.f;
  float m_run[2] = {-INFINITY, -INFINITY};  // running max (base-2 scaled scores) of rows g and g+8
  float l_run[2] = {0.f, 0.f};              // this thread's share of the running denominators
  const float scale_log2 = p.scale * 1.4426950408889634f;

  for (int j = 0; j < n_tiles; ++j) {
    const int buf = j & 1;
    if (j + 1 < n_tiles) {
      load_tile<D>(sK + (buf ^ 1) * Tile<D>::kKV, k, p.k_row_stride, (j + 1) * kBlockN, p.tk);
      load_tile<D>(sV + (buf ^ 1) * Tile<D>::kKV, v, p.v_row_stride, (j + 1) * kBlockN, p.tk);
    }
    cp_async_commit();  // an empty group on the last tile keeps the wait count uniform
    cp_async_wait<1>();
    __syncthreads();

    if (j == 0) {  // Q fragments once, straight from shared memory into registers
#pragma unroll
      for (int ks = 0; ks < kSteps; ++ks)
        ldmatrix_x4(qa[ks], sQ + (warp * 16 + (lane & 15)) * Tile<D>::kStride + ks * 16 + (lane >> 4) * 8);
    }

    // S = Q K^T for this warp's 16 rows x 64 keys.
    const uint16_t* kt = sK + buf * Tile<D>::kKV;
    float s[kBlockN / 8][4];
#pragma unroll
    for (int i = 0; i < kBlockN / 8; ++i) s[i][0] = s[i][1] = s[i][2] = s[i][3] = 0.f;
#pragma unroll
    for (int np = 0; np < kBlockN / 16; ++np) {
#pragma unroll
      for (int ks = 0; ks < kSteps; ++ks) {
        unsigned bk[4];
        ldmatrix_x4(bk, kt + (np * 16 + (lane & 7) + ((lane >> 4) << 3)) * Tile<D>::kStride + ks * 16 +
                            ((lane >> 3) & 1) * 8);
        mma_16816<Bf16>(s[2 * np], qa[ks], bk[0], bk[1]);
        mma_16816<Bf16>(s[2 * np + 1], qa[ks], bk[2], bk[3]);
      }
    }

    // Scale into base 2, mask keys past tk or masked out, online softmax per row.
    const int key0 = j * kBlockN;
#pragma unroll
    for (int nt = 0; nt < kBlockN / 8; ++nt) {
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int key = key0 + nt * 8 + 2 * t + e;
        const bool ok = key < p.tk && (mask == nullptr || mask[key] != 0);
        s[nt][e] = ok ? s[nt][e] * scale_log2 : -INFINITY;
        s[nt][2 + e] = ok ? s[nt][2 + e] * scale_log2 : -INFINITY;
      }
    }
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      float mx = m_run[r];
#pragma unroll
      for (int nt = 0; nt < kBlockN / 8; ++nt) mx = fmaxf(mx, fmaxf(s[nt][2 * r], s[nt][2 * r + 1]));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
      const float base = mx == -INFINITY ? 0.f : mx;  // a row with nothing attended so far stays at zero
      const float corr = exp2f(m_run[r] - base);
      m_run[r] = mx;
      float sum = 0.f;
#pragma unroll
      for (int nt = 0; nt < kBlockN / 8; ++nt) {
        s[nt][2 * r] = exp2f(s[nt][2 * r] - base);
        s[nt][2 * r + 1] = exp2f(s[nt][2 * r + 1] - base);
        sum += s[nt][2 * r] + s[nt][2 * r + 1];
      }
      l_run[r] = l_run[r] * corr + sum;
#pragma unroll
      for (int dt = 0; dt < D / 8; ++dt) {
        o[dt][2 * r] *= corr;
        o[dt][2 * r + 1] *= corr;
      }
    }

    // O += P V, P rounded to the input dtype (as SDPA does) and fed from the score registers.
    const uint16_t* vt = sV + buf * Tile<D>::kKV;
#pragma unroll
    for (int kk = 0; kk < kBlockN / 16; ++kk) {
      const unsigned pa[4] = {pack2<Bf16>(s[2 * kk][0], s[2 * kk][1]), pack2<Bf16>(s[2 * kk][2], s[2 * kk][3]),
                              pack2<Bf16>(s[2 * kk + 1][0], s[2 * kk + 1][1]),
                              pack2<Bf16>(s[2 * kk + 1][2], s[2 * kk + 1][3])};
#pragma unroll
      for (int dp = 0; dp < D / 16; ++dp) {
        unsigned bv[4];
        ldmatrix_x4_trans(bv, vt + (kk * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * Tile<D>::kStride + dp * 16 +
                                  (lane >> 4) * 8);
        mma_16816<Bf16>(o[2 * dp], pa, bv[0], bv[1]);
        mma_16816<Bf16>(o[2 * dp + 1], pa, bv[2], bv[3]);
      }
    }
    __syncthreads();  // everyone is done with `buf` before the next iteration's copies overwrite it
  }
  cp_async_wait<0>();

  // Normalize and store: rows g and g+8 of this warp, two adjacent columns per register pair.
  uint16_t* out = static_cast<uint16_t*>(p.out) + b * p.o_batch_stride + head * p.o_head_stride;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    float l = l_run[r];
    l += __shfl_xor_sync(0xffffffffu, l, 1);
    l += __shfl_xor_sync(0xffffffffu, l, 2);
    const float inv = l > 0.f ? 1.f / l : 0.f;
    const int row = q0 + warp * 16 + g + 8 * r;
    if (row < p.tq) {
      uint16_t* dst = out + static_cast<int64_t>(row) * p.o_row_stride + 2 * t;
#pragma unroll
      for (int dt = 0; dt < D / 8; ++dt)
        *reinterpret_cast<unsigned*>(dst + dt * 8) = pack2<Bf16>(o[dt][2 * r] * inv, o[dt][2 * r + 1] * inv);
    }
  }
}

template <int D, bool Bf16>
cudaError_t launch(const AttentionParams& p, cudaStream_t stream) {
  auto kernel = attention_bidir_sm80_kernel<D, Bf16>;
  constexpr size_t smem = Tile<D>::kSmemBytes;
  cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
  if (err != cudaSuccess) return err;
  const dim3 grid((p.tq + kBlockM - 1) / kBlockM, p.heads_q, p.batch);
  ILLADA_LAUNCH("attention", kernel, grid, kThreads, smem, stream)(p);
  return cudaGetLastError();
}

}  // namespace

bool attention_head_dim_supported(int head_dim) { return head_dim == 64 || head_dim == 128; }

std::string attention_bidir(const AttentionParams& p, void* stream_ptr) {
  if (!attention_head_dim_supported(p.head_dim)) return "attention_bidir: head_dim must be 64 or 128";
  if (p.heads_kv <= 0 || p.heads_q % p.heads_kv != 0) return "attention_bidir: heads_kv must divide heads_q";
  if (p.batch > 65535 || p.heads_q > 65535) return "attention_bidir: batch and heads must be at most 65535";
  if (p.batch == 0 || p.heads_q == 0 || p.tq == 0) return {};
  auto stream = static_cast<cudaStream_t>(stream_ptr);
  cudaError_t err;
  if (p.head_dim == 64)
    err = p.is_bf16 ? launch<64, true>(p, stream) : launch<64, false>(p, stream);
  else
    err = p.is_bf16 ? launch<128, true>(p, stream) : launch<128, false>(p, stream);
  return err == cudaSuccess ? std::string() : std::string("attention_bidir: ") + cudaGetErrorString(err);
}

}  // namespace illada::cuda
