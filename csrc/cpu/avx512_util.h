// Small AVX-512 helpers shared by the avx512 kernel files (include only from files compiled with AVX-512 flags).
#pragma once
#include <immintrin.h>

#include <algorithm>
#include <cstdint>

namespace illada::cpu::avx512 {

// fp32 -> bf16 round-to-nearest-even, NaN kept quiet; exact for denormals (vcvtneps2bf16 would flush them),
// so results equal torch's .to(torch.bfloat16).
inline __m256i to_bf16(__m512 f) {
  const __m512i u = _mm512_castps_si512(f);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
  __m512i r = _mm512_srli_epi32(_mm512_add_epi32(u, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff))), 16);
  const __mmask16 nan = _mm512_cmp_ps_mask(f, f, _CMP_UNORD_Q);
  r = _mm512_mask_or_epi32(r, nan, _mm512_srli_epi32(u, 16), _mm512_set1_epi32(0x40));
  return _mm512_cvtepi32_epi16(r);
}

// exp(x) for x <= 0 in fp32: range reduction to 2^n * e^r and a degree-6 polynomial (~1 ulp); exp(-104) and
// below give exactly 0, so -inf inputs contribute nothing.
inline __m512 exp_nonpositive(__m512 x) {  // x <= 0
  x = _mm512_max_ps(x, _mm512_set1_ps(-104.0f));  // exp(-104) rounds to 0 in fp32: -inf logits add exactly 0
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 y = _mm512_set1_ps(1.0f / 720);
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(1.0f / 120));
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(1.0f / 24));
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(1.0f / 6));
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(0.5f));
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(1.0f));
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(1.0f));
  return _mm512_scalef_ps(y, n);
}

// The register-tile instantiation for a tile of mr (1..6) rows and nv (1..4) vectors: Tile<MR, NV>::run.
// Give each kernel's Tile a distinct name: instantiations of this template for same-named tile templates in
// different files' anonymous namespaces can be merged by the linker.
template <template <int, int> class Tile>
auto pick_tile(int mr, int nv) -> decltype(&Tile<6, 4>::run) {
  auto by_nv = [nv](auto r1, auto r2, auto r3, auto r4) { return nv == 1 ? r1 : nv == 2 ? r2 : nv == 3 ? r3 : r4; };
  switch (mr) {
    case 1: return by_nv(&Tile<1, 1>::run, &Tile<1, 2>::run, &Tile<1, 3>::run, &Tile<1, 4>::run);
    case 2: return by_nv(&Tile<2, 1>::run, &Tile<2, 2>::run, &Tile<2, 3>::run, &Tile<2, 4>::run);
    case 3: return by_nv(&Tile<3, 1>::run, &Tile<3, 2>::run, &Tile<3, 3>::run, &Tile<3, 4>::run);
    case 4: return by_nv(&Tile<4, 1>::run, &Tile<4, 2>::run, &Tile<4, 3>::run, &Tile<4, 4>::run);
    case 5: return by_nv(&Tile<5, 1>::run, &Tile<5, 2>::run, &Tile<5, 3>::run, &Tile<5, 4>::run);
    default: return by_nv(&Tile<6, 1>::run, &Tile<6, 2>::run, &Tile<6, 3>::run, &Tile<6, 4>::run);
  }
}

// Rows [m_begin, m_end) as register tiles of at most max_mr rows, sized evenly (32 rows at 6: 6 6 5 5 5 5, not
// 6 6 6 6 6 2, whose 2-row tile runs at a third of the rate); fn(m0, mr) per tile, in order.
template <class Fn>
void for_each_row_tile(int64_t m_begin, int64_t m_end, int max_mr, const Fn& fn) {
  const int64_t rows = m_end - m_begin, tiles = (rows + max_mr - 1) / max_mr;
  for (int64_t t = 0, m0 = m_begin; t < tiles; ++t) {
    const int mr = static_cast<int>(rows / tiles + (t < rows % tiles ? 1 : 0));
    fn(m0, mr);
    m0 += mr;
  }
}

}  // namespace illada::cpu::avx512
