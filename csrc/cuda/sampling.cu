// Masked-token sampling kernels (see sampling.cuh). One CTA per row in both kernels.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cfloat>
#include <climits>
#include <cmath>
#include <string>

#include "../common/philox.h"
#include "launch.cuh"
#include "sampling.cuh"

namespace illada::cuda {

namespace {

constexpr int kSampleThreads = 512;
constexpr int kSelectThreads = 512;
constexpr int64_t kSelectMaxBlock = 4096;

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }

__device__ __forceinline__ float exp_acc(float x) { return expf(x); }
__device__ __forceinline__ double exp_acc(double x) { return exp(x); }
__device__ __forceinline__ float log_acc(float x) { return logf(x); }
__device__ __forceinline__ double log_acc(double x) { return log(x); }

// One thread's (then one CTA's) view of a row: the softmax statistics relative to the running max m, the
// runner-up logit, and the best (possibly noisy) score with its index and raw logit.
template <typename Acc>
struct RowState {
  Acc m;      // max logit so far (-inf: nothing seen)
  Acc s;      // sum of exp(x - m)
  Acc t;      // sum of exp(x - m) * (x - m)  (entropy = log s - t / s)
  Acc top2;   // second largest logit (equal to m when the maximum repeats)
  float best;       // best score: the logit, or logit + T * gumbel
  float best_raw;   // the logit at best_idx
  int best_idx;     // INT_MAX: nothing seen

  __device__ void init() {
    m = -INFINITY;
    s = 0;
    t = 0;
    top2 = -INFINITY;
    best = -INFINITY;
    best_raw = -INFINITY;
    best_idx = INT_MAX;
  }

  __device__ __forceinline__ void add(float x, float score, int idx, bool want_entropy) {
    if (score > best || (score == best && idx < best_idx) || best_idx == INT_MAX) {
      if (!(score != score)) {  // a NaN score never wins
        best = score;
        best_raw = x;
        best_idx = idx;
      }
    }
    const Acc xa = static_cast<Acc>(x);
    if (xa == -INFINITY) return;  // probability 0 (a suppressed token): adds nothing, and exp(-inf - -inf) is NaN
    if (xa > m) {
      if (m == -INFINITY) {
        s = 1;
        t = 0;
      } else {
        const Acc a = exp_acc(m - xa);
        if (want_entropy) t = a * (t + s * (m - xa));
        s = s * a + 1;
      }
      top2 = m;
      m = xa;
    } else {
      if (xa > top2) top2 = xa;
      const Acc e = exp_acc(xa - m);
      s += e;
      if (want_entropy) t += e * (xa - m);
    }
  }

  __device__ void merge(const RowState& o) {
    if (o.best_idx != INT_MAX &&
        (best_idx == INT_MAX || o.best > best || (o.best == best && o.best_idx < best_idx))) {
      best = o.best;
      best_raw = o.best_raw;
      best_idx = o.best_idx;
    }
    if (o.s == 0 && o.m == -INFINITY) return;
    if (s == 0 && m == -INFINITY) {
      m = o.m;
      s = o.s;
      t = o.t;
      top2 = o.top2;
      return;
    }
    const Acc M = m > o.m ? m : o.m;
    const Acc a1 = exp_acc(m - M), a2 = exp_acc(o.m - M);
    t = a1 * (t + s * (m - M)) + a2 * (o.t + o.s * (o.m - M));
    s = s * a1 + o.s * a2;
    const Acc lo = m < o.m ? m : o.m, t2 = top2 > o.top2 ? top2 : o.top2;
    top2 = lo > t2 ? lo : t2;
    m = M;
  }

  __device__ RowState shfl_xor(int lane_mask) const {
    RowState r;
    r.m = __shfl_xor_sync(0xffffffffu, m, lane_mask);
    r.s = __shfl_xor_sync(0xffffffffu, s, lane_mask);
    r.t = __shfl_xor_sync(0xffffffffu, t, lane_mask);
    r.top2 = __shfl_xor_sync(0xffffffffu, top2, lane_mask);
    r.best = __shfl_xor_sync(0xffffffffu, best, lane_mask);
    r.best_raw = __shfl_xor_sync(0xffffffffu, best_raw, lane_mask);
    r.best_idx = __shfl_xor_sync(0xffffffffu, best_idx, lane_mask);
    return r;
  }
};

// Gumbel noise for vocabulary index v of a row: word v % 4 of Philox(counter = (v / 4, row, offset), key = seed).
struct Noise {
  uint32_t k0, k1, row_lo, row_hi, off_lo, off_hi;
  __device__ __forceinline__ Philox4 draw4(uint32_t v4) const {
    return philox4x32_10(Philox4{{v4, row_lo, off_lo, off_hi ^ row_hi}}, k0, k1);
  }
};
__device__ __forceinline__ float gumbel(uint32_t word) { return -logf(-logf(uniform_open01(word))); }

template <typename In, typename Acc, bool WithNoise>
__global__ void __launch_bounds__(kSampleThreads) sample_tokens_kernel(const SampleParams p) {
  const int64_t row = blockIdx.x;
  const In* x = static_cast<const In*>(p.logits) + row * p.ld;
  const int vocab = static_cast<int>(p.vocab);
  const bool want_entropy = p.entropy != nullptr;
  Noise noise{};
  if constexpr (WithNoise) {
    const uint64_t rid = p.row_ids ? static_cast<uint64_t>(p.row_ids[row]) : static_cast<uint64_t>(row);
    noise = Noise{static_cast<uint32_t>(p.seed), static_cast<uint32_t>(p.seed >> 32), static_cast<uint32_t>(rid),
                  static_cast<uint32_t>(rid >> 32), static_cast<uint32_t>(p.offset),
                  static_cast<uint32_t>(p.offset >> 32)};
  }
  const float temp = p.temperature;

  RowState<Acc> st;
  st.init();
  // Groups of 8 consecutive logits per thread (one 16-byte load for 16-bit types, two for float32).
  const bool vec = (reinterpret_cast<uintptr_t>(x) % 16) == 0;
  const int n_groups = vec ? vocab / 8 : 0;
  for (int gi = threadIdx.x; gi < n_groups; gi += kSampleThreads) {
    const int v0 = gi * 8;
    float vals[8];
    if constexpr (sizeof(In) == 4) {
      const float4 a = reinterpret_cast<const float4*>(x + v0)[0];
      const float4 b = reinterpret_cast<const float4*>(x + v0)[1];
      vals[0] = a.x, vals[1] = a.y, vals[2] = a.z, vals[3] = a.w;
      vals[4] = b.x, vals[5] = b.y, vals[6] = b.z, vals[7] = b.w;
    } else {
      const uint4 raw = *reinterpret_cast<const uint4*>(x + v0);
      const In* h = reinterpret_cast<const In*>(&raw);
#pragma unroll
      for (int i = 0; i < 8; ++i) vals[i] = to_float(h[i]);
    }
    if constexpr (WithNoise) {
      const Philox4 r0 = noise.draw4(static_cast<uint32_t>(v0 / 4));
      const Philox4 r1 = noise.draw4(static_cast<uint32_t>(v0 / 4 + 1));
#pragma unroll
      for (int i = 0; i < 8; ++i) {
        const uint32_t w = i < 4 ? r0.v[i] : r1.v[i - 4];
        st.add(vals[i], __fadd_rn(vals[i], __fmul_rn(temp, gumbel(w))), v0 + i, want_entropy);
      }
    } else {
#pragma unroll
      for (int i = 0; i < 8; ++i) st.add(vals[i], vals[i], v0 + i, want_entropy);
    }
  }
  for (int v = n_groups * 8 + threadIdx.x; v < vocab; v += kSampleThreads) {  // the tail (or all, unaligned)
    const float val = to_float(x[v]);
    float score = val;
    if constexpr (WithNoise)
      score = __fadd_rn(val, __fmul_rn(temp, gumbel(noise.draw4(static_cast<uint32_t>(v / 4)).v[v % 4])));
    st.add(val, score, v, want_entropy);
  }

  // CTA reduction: within warps by shuffles, then warp 0 over the warps' results.
  for (int off = 16; off > 0; off /= 2) st.merge(st.shfl_xor(off));
  ILLADA_SHARED(RowState<Acc>[kSampleThreads / 32], warp_state);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) warp_state[warp] = st;
  __syncthreads();
  if (warp != 0) return;
  if (lane < kSampleThreads / 32) st = warp_state[lane];
  else st.init();
  for (int off = 16; off > 0; off /= 2) st.merge(st.shfl_xor(off));
  if (lane != 0) return;

  const int idx = st.best_idx == INT_MAX ? 0 : st.best_idx;
  p.token[row] = idx;
  const Acc inv_s = Acc(1) / st.s;
  const Acc conf = exp_acc(static_cast<Acc>(st.best_raw) - st.m) * inv_s;
  if (p.confidence_f64) static_cast<double*>(p.confidence)[row] = static_cast<double>(conf);
  else static_cast<float*>(p.confidence)[row] = static_cast<float>(conf);
  if (p.margin) p.margin[row] = static_cast<float>(inv_s - exp_acc(st.top2 - st.m) * inv_s);
  if (p.entropy) p.entropy[row] = static_cast<float>(log_acc(st.s) - st.t * inv_s);
}

template <typename In, typename Acc, bool WithNoise>
void launch_sample_kernel(const SampleParams& p, cudaStream_t stream) {
  auto* kernel = sample_tokens_kernel<In, Acc, WithNoise>;
  ILLADA_LAUNCH("sample_tokens", kernel, dim3(static_cast<unsigned>(p.rows)), kSampleThreads, 0, stream)(p);
}

template <typename In>
cudaError_t launch_sample(const SampleParams& p, cudaStream_t stream) {
  const bool noise = p.temperature > 0.f;
  if (p.confidence_f64) {
    if (noise) launch_sample_kernel<In, double, true>(p, stream);
    else launch_sample_kernel<In, double, false>(p, stream);
  } else {
    if (noise) launch_sample_kernel<In, float, true>(p, stream);
    else launch_sample_kernel<In, float, false>(p, stream);
  }
  return cudaGetLastError();
}

// ---- selection -------------------------------------------------------------------------------------------------

// j outranks i: NaN above numbers, then larger confidence, then lower position.
__device__ __forceinline__ bool outranks(double cj, int j, double ci, int i) {
  const bool nj = cj != cj, ni = ci != ci;
  if (nj != ni) return nj;
  if (!nj && cj != ci) return cj > ci;
  return j < i;
}

__global__ void __launch_bounds__(kSelectThreads) select_transfer_kernel(const SelectParams p) {
  ILLADA_DYNAMIC_SHARED(unsigned char, select_smem);
  const int n = static_cast<int>(p.block);
  double* conf = reinterpret_cast<double*>(select_smem);
  unsigned char* cand = select_smem + sizeof(double) * n;
  ILLADA_SHARED(int[2], counts);  // candidates, candidates at or above the threshold
  const int64_t b = blockIdx.x;
  int64_t* tokens = p.tokens + b * p.tokens_ld;
  if (threadIdx.x == 0) counts[0] = counts[1] = 0;
  __syncthreads();
  int n_cand = 0, n_above = 0;
  for (int i = threadIdx.x; i < n; i += kSelectThreads) {
    const double c = p.confidence_f64 ? static_cast<const double*>(p.confidence)[b * p.conf_ld + i]
                                      : static_cast<double>(static_cast<const float*>(p.confidence)[b * p.conf_ld + i]);
    const bool is_cand = tokens[i] == p.mask_id;
    conf[i] = c;
    cand[i] = is_cand;
    n_cand += is_cand;
    n_above += is_cand && (c != c || c >= p.threshold);  // a NaN ranks first, so it counts as above
  }
  atomicAdd(&counts[0], n_cand);
  if (p.use_threshold) atomicAdd(&counts[1], n_above);
  __syncthreads();
  const int total = counts[0];
  int64_t k_row;
  if (p.use_threshold) k_row = total > 0 ? (counts[1] > 1 ? counts[1] : 1) : 0;
  else k_row = p.k[b] < 0 ? 0 : (p.k[b] < total ? p.k[b] : total);

  for (int i = threadIdx.x; i < n; i += kSelectThreads) {
    bool take = false;
    if (cand[i] && k_row > 0) {
      const double ci = conf[i];
      int rank = 0;
      for (int j = 0; j < n && rank < k_row; ++j) rank += cand[j] && j != i && outranks(conf[j], j, ci, i);
      take = rank < k_row;
    }
    if (take) tokens[i] = p.x0[b * p.x0_ld + i];
    if (p.transfer_mask) p.transfer_mask[b * p.block + i] = take;
  }
  if (threadIdx.x == 0 && p.transferred) p.transferred[b] = k_row;
}

}  // namespace

std::string sample_tokens(const SampleParams& p, void* stream_ptr) {
  if (p.rows == 0) return {};
  if (p.vocab < 1 || p.vocab > INT_MAX) return "sample_tokens: vocab must be in [1, 2^31-1]";
  if (p.rows > INT_MAX) return "sample_tokens: too many rows";
  auto stream = static_cast<cudaStream_t>(stream_ptr);
  cudaError_t err = cudaSuccess;
  switch (p.logits_type) {
    case LogitsType::f32: err = launch_sample<float>(p, stream); break;
    case LogitsType::bf16: err = launch_sample<__nv_bfloat16>(p, stream); break;
    case LogitsType::f16: err = launch_sample<__half>(p, stream); break;
  }
  return err == cudaSuccess ? std::string() : std::string("sample_tokens: ") + cudaGetErrorString(err);
}

int64_t select_max_block() { return kSelectMaxBlock; }

std::string select_transfer(const SelectParams& p, void* stream_ptr) {
  if (p.batch == 0 || p.block == 0) return {};
  if (p.block > kSelectMaxBlock) return "select_transfer: block larger than select_max_block()";
  if (p.batch > INT_MAX) return "select_transfer: batch too large";
  const size_t smem = static_cast<size_t>(p.block) * (sizeof(double) + 1);
  auto stream = static_cast<cudaStream_t>(stream_ptr);
  ILLADA_LAUNCH("select_transfer", select_transfer_kernel, dim3(static_cast<unsigned>(p.batch)), kSelectThreads, smem,
                stream)(p);
  const cudaError_t err = cudaGetLastError();
  return err == cudaSuccess ? std::string() : std::string("select_transfer: ") + cudaGetErrorString(err);
}

}  // namespace illada::cuda
