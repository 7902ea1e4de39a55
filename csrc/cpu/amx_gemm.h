// The blocking loop the AMX GEMMs share (include only from files compiled with the AVX-512/AMX flags): every tile
// 16 rows x 64 bytes; per task 32 rows x 32 output channels as C tiles 0-3 (int32 or fp32), A tiles 4-5 (two
// 16-row slices of the activations, one 64-byte K step each), B tiles 6-7 (two 16-channel blocks in the VNNI layout:
// one 64-byte row per 4 int8 or 2 bf16 K values). Tasks are (panel of 2 blocks) x (block of 32 rows), panel-major.
#pragma once
#include <immintrin.h>

#include <cstdint>

#include "../common/check.h"
#include "amx_tiles.h"

namespace illada::cpu::amx {

enum class Dot { s8s8, bf16 };

// The (up to) two 16-channel blocks of a task's results that hold channels below N: fn(j, n0, mask) with j the
// block in the task, n0 its first channel and mask its valid channels.
template <class Fn>
void for_each_result_block(int64_t N, int64_t nb0, const Fn& fn) {
  for (int j = 0; j < 2; ++j) {
    const int64_t n0 = (nb0 + j) * 16;
    if (n0 >= N) return;
    fn(j, n0, static_cast<__mmask16>((1u << (N - n0 < 16 ? N - n0 : 16)) - 1u));
  }
}

// fn(Backend* tag) with the hardware's tiles, or the emulation's when `emulated` (a build whose compiler lacked the
// AMX flags has only the emulation, and says so when asked for the hardware).
template <class Fn>
void with_backend(bool emulated, const char* what, const Fn& fn) {
#if defined(ILLADA_AMX_HARDWARE)
  if (!emulated) return fn(static_cast<Hardware*>(nullptr));
#endif
  ILLADA_CHECK(emulated, what << ": this build has no AMX instructions (the compiler lacked -mamx-tile/int8/bf16)");
  fn(static_cast<Emulated*>(nullptr));
}

// a: the activations zero-padded to whole tiles, row stride a_stride bytes (row_blocks * 32 rows, k_steps * 64
// bytes each). b_tile(j, panel, s, scratch) returns the B tile of block 2 * panel + j at K step s (in the weights,
// or built in the 1 KB `scratch`). epilogue(m0, nb0, c) consumes the 32 x 32 results, c[row * 32 + col] as 4 bytes.
template <class Tiles, Dot kind, class BTile, class Epilogue>
void blocked_gemm(int n_threads, int64_t row_blocks, int64_t panels, int64_t k_steps, const uint8_t* a,
                  int64_t a_stride, const BTile& b_tile, const Epilogue& epilogue) {
  Tiles::clear_fault();
#pragma omp parallel num_threads(n_threads)
  {
    Tiles t;
    t.configure(uniform_config(16, 64));
    alignas(64) uint32_t c[32 * 32];
    alignas(64) uint8_t scratch[2][16 * 64];
#pragma omp for collapse(2) schedule(static)
    for (int64_t panel = 0; panel < panels; ++panel)
      for (int64_t rb = 0; rb < row_blocks; ++rb) {
        const int64_t m0 = rb * 32;
        t.template zero<0>();
        t.template zero<1>();
        t.template zero<2>();
        t.template zero<3>();
        for (int64_t s = 0; s < k_steps; ++s) {
          t.template load<4>(a + m0 * a_stride + s * 64, a_stride);
          t.template load<5>(a + (m0 + 16) * a_stride + s * 64, a_stride);
          t.template load<6>(b_tile(0, panel, s, scratch[0]), 64);
          t.template load<7>(b_tile(1, panel, s, scratch[1]), 64);
          if constexpr (kind == Dot::s8s8) {
            t.template dpbssd<0, 4, 6>();
            t.template dpbssd<1, 4, 7>();
            t.template dpbssd<2, 5, 6>();
            t.template dpbssd<3, 5, 7>();
          } else {
            t.template dpbf16ps<0, 4, 6>();
            t.template dpbf16ps<1, 4, 7>();
            t.template dpbf16ps<2, 5, 6>();
            t.template dpbf16ps<3, 5, 7>();
          }
        }
        t.template store<0>(c, 128);
        t.template store<1>(c + 16, 128);
        t.template store<2>(c + 16 * 32, 128);
        t.template store<3>(c + 16 * 32 + 16, 128);
        epilogue(m0, panel * 2, static_cast<const uint32_t*>(c));
      }
    t.release();
  }
  ILLADA_CHECK(Tiles::fault() == nullptr, "AMX GEMM (" << Tiles::kName << " tiles): " << Tiles::fault());
}

}  // namespace illada::cpu::amx
