// AMX-INT8 W8A8 GEMM (tdpbssd: signed activations x signed weights, exact int32, no compensation term). The packed
// weight layout of gemm_w8a8.h is already AMX's B layout: a block of 16 output channels holds, per group of 4 K
// values, one 64-byte row of 16 channels x 4 bytes, so a B tile is 16 consecutive rows of a block (stride 64).
// Activations are copied once into a zero-padded [round_up(M, 16), round_up(K, 64)] buffer (signed; un-shifting
// the q + 128 layout the AVX-512 quantizer writes), so every A tile load stays in bounds; a K tail shorter than a
// tile is read from a zero-padded copy of the block's last rows. Register blocking: 2 A tiles x 2 B tiles -> 4 C
// tiles (32 rows x 32 channels) per task; the epilogue stores the C tiles and dequantizes exactly as the AVX-512
// kernel does ((acc * a_scale) * w_scale in fp32), so both give the same bits.
//
// The kernel is a template over the tile backend (amx_tiles.h): Hardware where the CPU and OS allow AMX, Emulated
// (the instruction-set reference in C++) for the tests on every other machine. Compiled with AVX-512 flags, and
// the AMX ones where the compiler has them (ILLADA_AMX_HARDWARE).
#include <immintrin.h>

#include <algorithm>
#include <stdexcept>
#include <string>
#include <vector>

#include "../common/check.h"
#include "amx_tiles.h"
#include "avx512_util.h"
#include "gemm_w8a8.h"

namespace illada::cpu {

namespace {

constexpr int64_t kTileRows = 16, kTileBytes = 64;

template <class Tiles>
void run_amx(const GemmS8Params& p) {
  const int64_t Kp = p.K4 * 4, K64 = round_up(Kp, kTileBytes), Mp = round_up(p.M, 2 * kTileRows);
  const int64_t NB = round_up(p.N, 16) / 16, panels = (NB + 1) / 2, row_blocks = Mp / (2 * kTileRows);
  const int64_t k_steps = K64 / kTileBytes;
  std::vector<int8_t> a(static_cast<size_t>(Mp * K64), 0);
  const uint8_t flip = p.a_shifted ? 0x80 : 0;
#pragma omp parallel for num_threads(p.n_threads) schedule(static)
  for (int64_t m = 0; m < p.M; ++m) {
    const uint8_t* src = reinterpret_cast<const uint8_t*>(p.a + m * p.lda);
    uint8_t* dst = reinterpret_cast<uint8_t*>(a.data() + m * K64);
    for (int64_t k = 0; k < Kp; ++k) dst[k] = src[k] ^ flip;
  }
  Tiles::clear_fault();
#pragma omp parallel num_threads(p.n_threads)
  {
    Tiles t;
    t.configure(amx::uniform_config(kTileRows, kTileBytes));
    alignas(64) int32_t c[2 * kTileRows][32];
    alignas(64) int8_t b_tail[2][kTileRows * kTileBytes];
    alignas(64) static const int8_t b_zero[kTileRows * kTileBytes] = {};
#pragma omp for collapse(2) schedule(static)
    for (int64_t panel = 0; panel < panels; ++panel)
      for (int64_t rb = 0; rb < row_blocks; ++rb) {
        const int64_t m0 = rb * 2 * kTileRows, nb0 = panel * 2;
        t.template zero<0>();
        t.template zero<1>();
        t.template zero<2>();
        t.template zero<3>();
        for (int64_t s = 0; s < k_steps; ++s) {
          const int64_t k4 = s * kTileRows;  // first group of 4 K values of this step
          const int8_t* b[2];
          for (int j = 0; j < 2; ++j) {
            const int64_t nb = nb0 + j;
            if (nb >= NB) {
              b[j] = b_zero;
            } else if (k4 + kTileRows <= p.K4) {
              b[j] = p.w_packed + (nb * p.K4 + k4) * kTileBytes;
            } else {  // K tail: the block's last rows, zero below
              std::fill(b_tail[j], b_tail[j] + sizeof b_tail[j], 0);
              std::copy(p.w_packed + (nb * p.K4 + k4) * kTileBytes, p.w_packed + (nb + 1) * p.K4 * kTileBytes, b_tail[j]);
              b[j] = b_tail[j];
            }
          }
          t.template load<4>(a.data() + m0 * K64 + s * kTileBytes, K64);
          t.template load<5>(a.data() + (m0 + kTileRows) * K64 + s * kTileBytes, K64);
          t.template load<6>(b[0], kTileBytes);
          t.template load<7>(b[1], kTileBytes);
          t.template dpbssd<0, 4, 6>();
          t.template dpbssd<1, 4, 7>();
          t.template dpbssd<2, 5, 6>();
          t.template dpbssd<3, 5, 7>();
        }
        t.template store<0>(&c[0][0], sizeof c[0]);
        t.template store<1>(&c[0][16], sizeof c[0]);
        t.template store<2>(&c[kTileRows][0], sizeof c[0]);
        t.template store<3>(&c[kTileRows][16], sizeof c[0]);
        for (int j = 0; j < 2; ++j) {
          const int64_t n0 = (nb0 + j) * 16;
          if (n0 >= p.N) break;
          const int64_t valid = std::min<int64_t>(16, p.N - n0);
          const __mmask16 mask = static_cast<__mmask16>((1u << valid) - 1u);
          __m512 ws = _mm512_setzero_ps();
          if (p.out_kind != OutKind::i32) ws = _mm512_maskz_loadu_ps(mask, p.w_scale + n0);
          for (int64_t i = 0; i < 2 * kTileRows && m0 + i < p.M; ++i)
            store_s8_row(p, _mm512_load_si512(&c[i][16 * j]), m0 + i, n0, mask, ws);
        }
      }
    t.release();
  }
  ILLADA_CHECK(Tiles::fault() == nullptr, "gemm_s8 (AMX, " << Tiles::kName << " tiles): " << Tiles::fault());
}

}  // namespace

namespace {

template <class Tiles>
void tile_dot(TileDotKind kind, uint8_t* c, int c_rows, int c_colsb, const uint8_t* a, int a_rows, int a_colsb,
              const uint8_t* b, int b_rows, int b_colsb) {
  amx::TileConfig cfg;
  cfg.palette_id = 1;
  cfg.rows[0] = static_cast<uint8_t>(c_rows);
  cfg.colsb[0] = static_cast<uint16_t>(c_colsb);
  cfg.rows[4] = static_cast<uint8_t>(a_rows);
  cfg.colsb[4] = static_cast<uint16_t>(a_colsb);
  cfg.rows[6] = static_cast<uint8_t>(b_rows);
  cfg.colsb[6] = static_cast<uint16_t>(b_colsb);
  Tiles::clear_fault();
  Tiles t;
  t.configure(cfg);
  t.template load<0>(c, c_colsb);
  t.template load<4>(a, a_colsb);
  t.template load<6>(b, b_colsb);
  switch (kind) {
    case TileDotKind::dpbssd: t.template dpbssd<0, 4, 6>(); break;
    case TileDotKind::dpbusd: t.template dpbusd<0, 4, 6>(); break;
    case TileDotKind::dpbf16ps: t.template dpbf16ps<0, 4, 6>(); break;
  }
  t.template store<0>(c, c_colsb);
  t.release();
  ILLADA_CHECK(Tiles::fault() == nullptr, "amx tile_dot (" << Tiles::kName << "): " << Tiles::fault());
}

}  // namespace

void amx_tile_dot(TileDotKind kind, bool emulated, uint8_t* c, int c_rows, int c_colsb, const uint8_t* a, int a_rows,
                  int a_colsb, const uint8_t* b, int b_rows, int b_colsb) {
#if defined(ILLADA_AMX_HARDWARE)
  if (!emulated) return tile_dot<amx::Hardware>(kind, c, c_rows, c_colsb, a, a_rows, a_colsb, b, b_rows, b_colsb);
#endif
  ILLADA_CHECK(emulated, "amx tile_dot: this build has no AMX instructions");
  tile_dot<amx::Emulated>(kind, c, c_rows, c_colsb, a, a_rows, a_colsb, b, b_rows, b_colsb);
}

void gemm_s8_amx(const GemmS8Params& p, bool emulated) {
#if defined(ILLADA_AMX_HARDWARE)
  if (!emulated) return run_amx<amx::Hardware>(p);
#endif
  ILLADA_CHECK(emulated, "gemm_s8: this build has no AMX instructions (the compiler lacked -mamx-int8)");
  run_amx<amx::Emulated>(p);
}

}  // namespace illada::cpu
