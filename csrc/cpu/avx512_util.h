// Small AVX-512 helpers shared by the avx512 kernel files (include only from files compiled with AVX-512 flags).
#pragma once
#include <immintrin.h>

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

}  // namespace illada::cpu::avx512
