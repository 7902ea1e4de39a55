// AMX-INT8 W8A8 GEMM (tdpbssd: signed activations x signed weights, exact int32, no compensation term). The packed
// weight layout of gemm_w8a8.h is already AMX's B layout: a block of 16 output channels holds, per group of 4 K
// values, one 64-byte row of 16 channels x 4 bytes, so a B tile is 16 consecutive rows of a block (stride 64).
// Activations are copied once into a zero-padded [round_up(M, 32), round_up(K, 64)] buffer (signed; un-shifting
// the q + 128 layout the AVX-512 quantizer writes), so every A tile load stays in bounds; a K tail shorter than a
// tile is read from a zero-padded copy of the block's last rows. The blocking is amx_gemm.h's; the epilogue
// dequantizes exactly as the AVX-512 kernel does ((acc * a_scale) * w_scale in fp32), so both give the same bits.
//
// The kernel is a template over the tile backend (amx_tiles.h): Hardware where the CPU and OS allow AMX, Emulated
// (the instruction-set reference in C++) for the tests on every other machine. Compiled with AVX-512 flags, and
// the AMX ones where the compiler has them (ILLADA_AMX_HARDWARE).
#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "../common/check.h"
#include "amx_gemm.h"
#include "amx_tiles.h"
#include "avx512_util.h"
#include "gemm_w8a8.h"
#include "scratch.h"

namespace illada::cpu {

namespace {

template <class Tiles>
void run_amx(const GemmS8Params& p) {
  const int64_t Kp = p.K4 * 4, K64 = round_up(Kp, 64), Mp = round_up(p.M, 32);
  const int64_t NB = round_up(p.N, 16) / 16;
  const size_t a_bytes = static_cast<size_t>(Mp * K64);  // zero padding: rows past M, columns past Kp
  int8_t* const a = scratch_as<int8_t>(ScratchSlot::gemm_operand, a_bytes);
  std::memset(a, 0, a_bytes);
  const uint8_t flip = p.a_shifted ? 0x80 : 0;
#pragma omp parallel for num_threads(p.n_threads) schedule(static)
  for (int64_t m = 0; m < p.M; ++m) {
    const uint8_t* src = reinterpret_cast<const uint8_t*>(p.a + m * p.lda);
    uint8_t* dst = reinterpret_cast<uint8_t*>(a + m * K64);
    for (int64_t k = 0; k < Kp; ++k) dst[k] = src[k] ^ flip;
  }
  alignas(64) static const uint8_t zero_tile[16 * 64] = {};
  auto b_tile = [&](int j, int64_t panel, int64_t s, uint8_t* scratch) -> const void* {
    const int64_t nb = panel * 2 + j, k4 = s * 16;  // block, first group of 4 K values
    if (nb >= NB) return zero_tile;
    const int8_t* rows = p.w_packed + (nb * p.K4 + k4) * 64;
    if (k4 + 16 <= p.K4) return rows;
    std::fill(scratch, scratch + 16 * 64, 0);  // K tail: the block's last rows, zero below
    std::copy(rows, p.w_packed + (nb + 1) * p.K4 * 64, reinterpret_cast<int8_t*>(scratch));
    return scratch;
  };
  auto epilogue = [&](int64_t m0, int64_t nb0, const uint32_t* c) {
    amx::for_each_result_block(p.N, nb0, [&](int j, int64_t n0, __mmask16 mask) {
      const __m512 ws = p.out_kind == OutKind::i32 ? _mm512_setzero_ps() : _mm512_maskz_loadu_ps(mask, p.w_scale + n0);
      for (int64_t i = 0; i < 32 && m0 + i < p.M; ++i)
        store_s8_row(p, _mm512_load_si512(c + i * 32 + 16 * j), m0 + i, n0, mask, ws);
    });
  };
  amx::blocked_gemm<Tiles, amx::Dot::s8s8>(p.n_threads, Mp / 32, (NB + 1) / 2, K64 / 64,
                                           reinterpret_cast<const uint8_t*>(a), K64, b_tile, epilogue);
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
  amx::with_backend(emulated, "amx tile_dot", [&](auto* tiles) {
    tile_dot<std::remove_pointer_t<decltype(tiles)>>(kind, c, c_rows, c_colsb, a, a_rows, a_colsb, b, b_rows, b_colsb);
  });
}

void gemm_s8_amx(const GemmS8Params& p, bool emulated) {
  amx::with_backend(emulated, "gemm_s8", [&](auto* tiles) { run_amx<std::remove_pointer_t<decltype(tiles)>>(p); });
}

}  // namespace illada::cpu
