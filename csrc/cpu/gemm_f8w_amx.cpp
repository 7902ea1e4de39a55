// AMX-BF16 FP8-weight GEMM (tdpbf16ps). The packed fp8 layout (gemm_f8w.h: blocks of 16 channels, K in pairs) widens
// row by row into AMX's bf16 B layout: 32 e4m3 bytes (16 channels x 2 K values) -> one 64-byte tile row, exactly
// (every e4m3 value is a bf16 value), 16 rows per tile, built in a 1 KB scratch at each K step. Activations are
// copied once into a zero-padded [round_up(M, 32), round_up(K, 32)] bf16 buffer: the padding multiplies zero weights
// by zeros (an odd K's last pair included), never by whatever followed a row. fp32 accumulation in the tiles; the
// epilogue scales by the per-channel scale. The blocking is amx_gemm.h's; tiles from amx_tiles.h (hardware or
// emulated). Accumulation order differs from the AVX-512 kernel's, so results agree to fp32 rounding, not bit for bit.
#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <type_traits>

#include "amx_gemm.h"
#include "amx_tiles.h"
#include "avx512_util.h"
#include "gemm_f8w.h"
#include "gemm_w8a8.h"  // round_up
#include "scratch.h"

namespace illada::cpu {

namespace {

template <class Tiles>
void run_amx(const GemmF8Params& p) {
  const int64_t K32 = round_up(p.K, 32), Mp = round_up(p.M, 32), NB = round_up(p.N, 16) / 16;
  const size_t a_elems = static_cast<size_t>(Mp * K32);  // zero padding: rows past M, columns past K
  uint16_t* const a = scratch_as<uint16_t>(ScratchSlot::gemm_operand, a_elems);
  std::memset(a, 0, a_elems * 2);
#pragma omp parallel for num_threads(p.n_threads) schedule(static)
  for (int64_t m = 0; m < p.M; ++m) std::memcpy(a + m * K32, p.x + m * p.ldx, static_cast<size_t>(p.K) * 2);
  auto b_tile = [&](int j, int64_t panel, int64_t s, uint8_t* scratch) -> const void* {
    const int64_t nb = panel * 2 + j;
    for (int64_t r = 0; r < 16; ++r) {  // tile row r: K pair s * 16 + r of the block's 16 channels
      const int64_t k2 = s * 16 + r;
      const __m512i row = nb < NB && k2 < p.K2
                              ? widen_e4m3(_mm256_loadu_si256(
                                    reinterpret_cast<const __m256i*>(p.w_packed + (nb * p.K2 + k2) * 32)))
                              : _mm512_setzero_si512();
      _mm512_store_si512(scratch + r * 64, row);
    }
    return scratch;
  };
  auto epilogue = [&](int64_t m0, int64_t nb0, const uint32_t* c) {
    amx::for_each_result_block(p.N, nb0, [&](int j, int64_t n0, __mmask16 mask) {
      const __m512 ws = _mm512_maskz_loadu_ps(mask, p.w_scale + n0);
      for (int64_t i = 0; i < 32 && m0 + i < p.M; ++i) {
        const __m512 f = _mm512_mul_ps(_mm512_castsi512_ps(_mm512_load_si512(c + i * 32 + 16 * j)), ws);
        const int64_t o = (m0 + i) * p.ldo + n0;
        if (p.out_is_bf16)
          _mm256_mask_storeu_epi16(static_cast<uint16_t*>(p.out) + o, mask, avx512::to_bf16(f));
        else
          _mm512_mask_storeu_ps(static_cast<float*>(p.out) + o, mask, f);
      }
    });
  };
  amx::blocked_gemm<Tiles, amx::Dot::bf16>(p.n_threads, Mp / 32, (NB + 1) / 2, K32 / 32,
                                           reinterpret_cast<const uint8_t*>(a), K32 * 2, b_tile, epilogue);
}

}  // namespace

void gemm_f8w_amx(const GemmF8Params& p, bool emulated) {
  amx::with_backend(emulated, "gemm_f8w", [&](auto* tiles) { run_amx<std::remove_pointer_t<decltype(tiles)>>(p); });
}

}  // namespace illada::cpu
