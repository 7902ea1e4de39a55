// AVX-512 fused norm and activation (see norm_act.h): 16 lanes, masked tails, bf16 widened on load and rounded
// to nearest even where the reference rounds. The dtype is a template parameter, so each loop is straight-line
// code. bf16 rounding is one vcvtneps2bf16 (the AVX-512 level requires AVX512_BF16), which rounds exactly as torch
// does except that it flushes denormal inputs to zero. Rather than test and branch on every vector (that halved the
// RMSNorm's speed on Zen 5), a row ORs vfpclassps masks of the values it rounded; a row that rounded a denormal (rare:
// tiny inputs or weights) is computed again with the integer rounding of avx512::to_bf16, which keeps denormals.
// Where an output overlaps an input (the model rotates q and k in place and writes residual sums over the residual),
// the row's inputs are first copied aside so that the redo reads them unchanged (rows of up to kSavedRow elements;
// longer ones take the integer rounding in one pass).
#include <immintrin.h>

#include <cmath>
#include <cstring>
#include <type_traits>

#include "avx512_util.h"
#include "norm_act.h"

namespace illada::cpu {

namespace {

inline __mmask16 tail(int64_t n) { return n >= 16 ? 0xffff : static_cast<__mmask16>((1u << n) - 1u); }

// Whether any value a row rounded was a denormal.
struct DenormalWatch {
  __mmask16 seen_mask = 0;
  void see(__m512 v) { seen_mask |= _mm512_fpclass_ps_mask(v, 0x20); }
  bool seen() const { return seen_mask != 0; }
};

// Loads, roundings and stores of one dtype; EXACT: bf16 rounding by integer arithmetic (denormals kept), else by
// vcvtneps2bf16 with the values shown to the watch.
template <bool BF16, bool EXACT>
struct Io {
  using T = std::conditional_t<BF16, uint16_t, float>;
  static __m512 widen(__m256i h) { return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16)); }
  static __m256i narrow(__m512 v, DenormalWatch& w) {
    if constexpr (EXACT) {
      return avx512::to_bf16(v);
    } else {
      w.see(v);
      return (__m256i)_mm512_cvtneps_pbh(v);  // NOLINT: a bit cast between vector types
    }
  }
  static __m512 load(const T* p, __mmask16 m) {
    if constexpr (BF16)  // full vectors unmasked: cheaper than masked moves on some CPUs
      return widen(m == 0xffff ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)) : _mm256_maskz_loadu_epi16(m, p));
    else
      return m == 0xffff ? _mm512_loadu_ps(p) : _mm512_maskz_loadu_ps(m, p);
  }
  static __m512 round(__m512 v, DenormalWatch& w) {  // to the storage dtype and back
    if constexpr (BF16)
      return widen(narrow(v, w));
    else
      return v;
  }
  static void store(T* p, __m512 v, __mmask16 m, DenormalWatch& w) { store_rounded(p, v, m, w); }
  // Stores v rounded to the dtype and returns the rounded value.
  static __m512 store_rounded(T* p, __m512 v, __mmask16 m, DenormalWatch& w) {
    if constexpr (BF16) {
      const __m256i h = narrow(v, w);
      if (m == 0xffff)
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), h);
      else
        _mm256_mask_storeu_epi16(p, m, h);
      return widen(h);
    } else {
      if (m == 0xffff)
        _mm512_storeu_ps(p, v);
      else
        _mm512_mask_storeu_ps(p, m, v);
      return v;
    }
  }
};

// Whether [a, a + a_bytes) and [b, b + b_bytes) share a byte.
inline bool overlaps(const void* a, int64_t a_bytes, const void* b, int64_t b_bytes) {
  const auto x = reinterpret_cast<uintptr_t>(a), y = reinterpret_cast<uintptr_t>(b);
  return a_bytes > 0 && b_bytes > 0 && x < y + static_cast<uintptr_t>(b_bytes) && y < x + static_cast<uintptr_t>(a_bytes);
}

inline int64_t span_bytes(int64_t rows, int64_t ld, int64_t D, int64_t elem) {
  return rows > 0 && D > 0 ? ((rows - 1) * ld + D) * elem : 0;
}

// Runs row(is_bf16, exact) for one row: the fast rounding first, again exactly where it saw a denormal (bf16 only).
template <bool BF16, class Row>
void row_with_fallback(bool exact_only, const Row& row) {
  if constexpr (BF16) {
    if (exact_only || row(std::true_type{}, std::false_type{})) row(std::true_type{}, std::true_type{});
  } else {
    (void)exact_only;
    row(std::false_type{}, std::false_type{});
  }
}

// A row's input kept aside (on the stack) while an output overwrites it, for the redo after a denormal.
constexpr int64_t kSavedRow = 4096;
template <class T>
struct SavedRow {
  alignas(64) T data[kSavedRow];
  // `row` itself, or a copy of it where outputs overlap the inputs (bf16 only: fp32 rows are never redone)
  const T* keep(const T* row, int64_t n, bool aliased) {
    if (!aliased || !std::is_same_v<T, uint16_t>) return row;
    std::memcpy(data, row, static_cast<size_t>(n) * sizeof(T));
    return data;
  }
};

// RMSNorm of each row; with ADD, of sum = round(x + r), written to p.sum first (a residual add and the next norm
// in one pass over the rows).
template <bool BF16, bool ADD>
void rms_norm_impl(const RowsParams& p) {
  using T = std::conditional_t<BF16, uint16_t, float>;
  const T* x = static_cast<const T*>(p.x);
  const T* res = static_cast<const T*>(p.r);
  const T* w = static_cast<const T*>(p.y);
  T* out = static_cast<T*>(p.out);
  T* sum = static_cast<T*>(p.sum);
  const int64_t rows = p.rows, D = p.D, ldx = p.ldx, ldr = p.ldr, ldo = p.ldo, lds = p.lds;
  const float eps = p.eps;
  // outputs over x or r: the redo reads saved copies of those rows (over the weight, or rows too long to save: the
  // exact rounding in one pass); out over sum is harmless (the second pass reads sum before writing out)
  const int64_t ob = span_bytes(rows, ldo, D, sizeof(T)), xb = span_bytes(rows, ldx, D, sizeof(T));
  const int64_t sb = ADD ? span_bytes(rows, lds, D, sizeof(T)) : 0, rb = ADD ? span_bytes(rows, ldr, D, sizeof(T)) : 0;
  const int64_t wb = D * static_cast<int64_t>(sizeof(T));
  const bool aliased = overlaps(out, ob, x, xb) || overlaps(out, ob, res, rb) || overlaps(sum, sb, x, xb) ||
                       overlaps(sum, sb, res, rb);
  const bool exact_only = overlaps(out, ob, w, wb) || overlaps(sum, sb, w, wb) || (aliased && D > kSavedRow);
  // Returns whether the fast rounding met a denormal (then the row is done again exactly).
  auto row = [w, D, eps](const T* xr, const T* rr, T* srow, T* orow, auto is_bf16, auto exact) {
    using IO = Io<decltype(is_bf16)::value, decltype(exact)::value>;
    DenormalWatch watch;
    const T* src = ADD ? srow : xr;  // the rows being normalised
    const int64_t full = D / 16 * 16;
    __m512 acc = _mm512_setzero_ps();
    auto square = [&](int64_t d, __mmask16 m) {
      __m512 v = IO::load(xr + d, m);
      if constexpr (ADD) v = IO::store_rounded(srow + d, _mm512_add_ps(v, IO::load(rr + d, m)), m, watch);
      acc = _mm512_fmadd_ps(v, v, acc);
    };
    for (int64_t d = 0; d < full; d += 16) square(d, 0xffff);
    if (full < D) square(full, tail(D - full));
    const float inv = 1.0f / std::sqrt(_mm512_reduce_add_ps(acc) / static_cast<float>(D) + eps);
    const __m512 vi = _mm512_set1_ps(inv);
    auto scale = [&](int64_t d, __mmask16 m) {
      const __m512 y = IO::round(_mm512_mul_ps(IO::load(src + d, m), vi), watch);
      IO::store(orow + d, _mm512_mul_ps(IO::load(w + d, m), y), m, watch);
    };
    for (int64_t d = 0; d < full; d += 16) scale(d, 0xffff);
    if (full < D) scale(full, tail(D - full));
    return !decltype(exact)::value && watch.seen();
  };
#pragma omp parallel for num_threads(p.n_threads) schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    SavedRow<T> saved_x, saved_r;
    const bool keep = aliased && !exact_only;
    const T* xr = saved_x.keep(x + r * ldx, D, keep);
    const T* rr = ADD ? saved_r.keep(res + r * ldr, D, keep) : nullptr;
    T* srow = ADD ? sum + r * lds : nullptr;
    row_with_fallback<BF16>(exact_only, [&](auto b, auto e) { return row(xr, rr, srow, out + r * ldo, b, e); });
  }
}

template <bool BF16>
void rope_impl(const RopeParams& p) {
  using T = std::conditional_t<BF16, uint16_t, float>;
  const T* x = static_cast<const T*>(p.x);
  T* out = static_cast<T*>(p.out);
  const int64_t half = p.D / 2, D = p.D;
  // the output may be written in place over x: then each row's input is saved for the redo
  const int64_t span_x = ((p.B - 1) * p.x_sb + (p.H - 1) * p.x_sh + (p.T - 1) * p.x_st + D) * sizeof(T);
  const int64_t span_o = ((p.B - 1) * p.o_sb + (p.H - 1) * p.o_sh + (p.T - 1) * p.o_st + D) * sizeof(T);
  const bool aliased = p.B * p.H * p.T > 0 && D > 0 && overlaps(out, span_o, x, span_x);
  const bool exact_only = aliased && D > kSavedRow;
  auto row = [&](const T* xr, T* orow, const float* c, const float* s, auto is_bf16, auto exact) {
    using IO = Io<decltype(is_bf16)::value, decltype(exact)::value>;
    DenormalWatch watch;
    for (int64_t d = 0; d < half; d += 16) {
      const __mmask16 m = tail(half - d);
      const __m512 x1 = IO::load(xr + d, m), x2 = IO::load(xr + half + d, m);
      // separate multiplies and an add (intrinsics are never contracted into FMAs)
      const __m512 lo = _mm512_sub_ps(_mm512_mul_ps(x1, _mm512_maskz_loadu_ps(m, c + d)),
                                      _mm512_mul_ps(x2, _mm512_maskz_loadu_ps(m, s + d)));
      const __m512 hi = _mm512_add_ps(_mm512_mul_ps(x2, _mm512_maskz_loadu_ps(m, c + half + d)),
                                      _mm512_mul_ps(x1, _mm512_maskz_loadu_ps(m, s + half + d)));
      IO::store(orow + d, lo, m, watch);
      IO::store(orow + half + d, hi, m, watch);
    }
    return !decltype(exact)::value && watch.seen();
  };
  // heads innermost: a position's cos/sin rows are read once for all its heads (from L1), and the model's q and
  // k ([B, T, H, D] buffers viewed as [B, H, T, D]) are walked in memory order
#pragma omp parallel for num_threads(p.n_threads) schedule(static)
  for (int64_t bth = 0; bth < p.B * p.T * p.H; ++bth) {
    const int64_t b = bth / (p.T * p.H), t = bth / p.H % p.T, h = bth % p.H;
    SavedRow<T> saved;
    const T* xr = saved.keep(x + b * p.x_sb + h * p.x_sh + t * p.x_st, D, aliased && !exact_only);
    T* orow = out + b * p.o_sb + h * p.o_sh + t * p.o_st;
    const float* c = p.cos + b * p.cs_sb + t * D;
    const float* s = p.sin + b * p.cs_sb + t * D;
    row_with_fallback<BF16>(exact_only, [&](auto bf, auto e) { return row(xr, orow, c, s, bf, e); });
  }
}

// One row of SwiGLU: orow = round(round(silu(gate)) * up) over D elements, exact_only: the integer rounding only.
template <bool BF16, class T = std::conditional_t<BF16, uint16_t, float>>
void swiglu_row(const T* gr, const T* ur, T* orow, int64_t D, bool exact_only) {
  auto row = [&](auto is_bf16, auto exact) {
    using IO = Io<decltype(is_bf16)::value, decltype(exact)::value>;
    DenormalWatch watch;
    const __m512 one = _mm512_set1_ps(1.0f);
    auto step = [&](int64_t d, __mmask16 m) {
      const __m512 g = IO::load(gr + d, m);
      // silu(g) = g / (1 + e^-g) = g * t / (1 + t) for g < 0, with t = e^-|g| <= 1 (no overflow)
      const __m512 t = avx512::exp_nonpositive(_mm512_sub_ps(_mm512_setzero_ps(), _mm512_abs_ps(g)));
      const __mmask16 neg = _mm512_cmp_ps_mask(g, _mm512_setzero_ps(), _CMP_LT_OQ);
      // below -88.7228 PyTorch's exp(-g) overflows to inf and its silu is -0 (bf16 holds no value between -88.5
      // and -89, so the exact cut does not matter for bf16 inputs)
      const __mmask16 overflow = _mm512_cmp_ps_mask(g, _mm512_set1_ps(-88.72283935546875f), _CMP_LT_OQ);
      const __m512 num = _mm512_mask_mov_ps(_mm512_mask_mul_ps(g, neg, g, t), overflow, _mm512_set1_ps(-0.0f));
      const __m512 s = IO::round(_mm512_div_ps(num, _mm512_add_ps(one, t)), watch);
      IO::store(orow + d, _mm512_mul_ps(s, IO::load(ur + d, m)), m, watch);
    };
    const int64_t full = D / 16 * 16;
    for (int64_t d = 0; d < full; d += 16) step(d, 0xffff);
    if (full < D) step(full, tail(D - full));
    return !decltype(exact)::value && watch.seen();
  };
  row_with_fallback<BF16>(exact_only, row);
}

template <bool BF16>
void swiglu_impl(const RowsParams& p) {
  using T = std::conditional_t<BF16, uint16_t, float>;
  const T* gate = static_cast<const T*>(p.x);
  const T* up = static_cast<const T*>(p.y);
  T* out = static_cast<T*>(p.out);
  const int64_t rows = p.rows, D = p.D, ldx = p.ldx, ldy = p.ldy, ldo = p.ldo;
  const int64_t ob = span_bytes(rows, ldo, D, sizeof(T));
  const bool aliased = overlaps(out, ob, gate, span_bytes(rows, ldx, D, sizeof(T))) ||
                       overlaps(out, ob, up, span_bytes(rows, ldy, D, sizeof(T)));
  const bool exact_only = aliased && D > kSavedRow;
#pragma omp parallel for num_threads(p.n_threads) schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    SavedRow<T> saved_g, saved_u;
    const bool keep = aliased && !exact_only;
    const T* gr = saved_g.keep(gate + r * ldx, D, keep);
    const T* ur = saved_u.keep(up + r * ldy, D, keep);
    swiglu_row<BF16>(gr, ur, out + r * ldo, D, exact_only);
  }
}

}  // namespace

void rms_norm_avx512(const RowsParams& p) {
  p.bf16 ? rms_norm_impl<true, false>(p) : rms_norm_impl<false, false>(p);
}
void add_rms_norm_avx512(const RowsParams& p) {
  p.bf16 ? rms_norm_impl<true, true>(p) : rms_norm_impl<false, true>(p);
}
void rope_avx512(const RopeParams& p) { p.bf16 ? rope_impl<true>(p) : rope_impl<false>(p); }
void swiglu_avx512(const RowsParams& p) { p.bf16 ? swiglu_impl<true>(p) : swiglu_impl<false>(p); }
void swiglu_row_avx512(bool bf16, const void* gate, const void* up, void* out, int64_t D) {
  if (bf16)
    swiglu_row<true>(static_cast<const uint16_t*>(gate), static_cast<const uint16_t*>(up), static_cast<uint16_t*>(out),
                     D, false);
  else
    swiglu_row<false>(static_cast<const float*>(gate), static_cast<const float*>(up), static_cast<float*>(out), D,
                      false);
}

}  // namespace illada::cpu
