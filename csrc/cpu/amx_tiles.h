// A thin tile layer for the AMX kernels, with two backends of one interface:
//   Hardware  - the AMX instructions (ldtilecfg, tileloadd, tilestored, tilezero, tdpbssd, tdpbusd, tdpbf16ps);
//               only in files compiled with -mamx-tile -mamx-int8 -mamx-bf16, only called where the CPU and the OS
//               allow AMX (cpu_features: CPUID, XCR0, arch_prctl permission).
//   Emulated  - the same operations in C++, written from the definitions in Intel's instruction-set reference
//               (palette 1: 8 tiles of up to 16 rows x 64 bytes, each tile's shape from the loaded configuration),
//               so that every machine runs the AMX kernels' tests; on an AMX machine the tests also run Hardware.
// A kernel is a template over the backend; tile numbers are template arguments (the instructions encode them).
// Shape rules the hardware enforces with #UD (a dot product whose operand shapes disagree, a tile used while
// unconfigured) are checked by the emulation, which records the first violation in fault() instead of trapping.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(ILLADA_AMX_HARDWARE)
#include <immintrin.h>
#endif

namespace illada::cpu::amx {

// The 64-byte operand of ldtilecfg (palette 1).
struct alignas(64) TileConfig {
  uint8_t palette_id = 0;
  uint8_t start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};  // bytes per row of tile t (t < 8 used)
  uint8_t rows[16] = {};    // rows of tile t
};
static_assert(sizeof(TileConfig) == 64, "ldtilecfg reads 64 bytes");

// Every tile `rows` x `colsb`.
inline TileConfig uniform_config(int rows, int colsb) {
  TileConfig c;
  c.palette_id = 1;
  for (int t = 0; t < 8; ++t) {
    c.rows[t] = static_cast<uint8_t>(rows);
    c.colsb[t] = static_cast<uint16_t>(colsb);
  }
  return c;
}

class Emulated {
 public:
  static constexpr const char* kName = "emulated";

  void configure(const TileConfig& c) {
    if (c.palette_id != 1) return set_fault("ldtilecfg: only palette 1 is emulated");
    for (int t = 0; t < 8; ++t)
      if (c.rows[t] > 16 || c.colsb[t] > 64 || (c.colsb[t] % 4) != 0)
        return set_fault("ldtilecfg: a tile exceeds 16 rows x 64 bytes (or its width is not whole dwords)");
    cfg_ = c;
    configured_ = true;
    std::memset(tile_, 0, sizeof tile_);  // ldtilecfg zeroes every tile
  }
  void release() { configured_ = false; }

  template <int T>
  void zero() {
    if (!usable(T)) return;
    std::memset(tile_[T], 0, sizeof tile_[T]);
  }

  // tileloadd: row r of tile T <- colsb bytes at base + r * stride; the bytes beyond colsb and the rows beyond
  // `rows` are zeroed.
  template <int T>
  void load(const void* base, int64_t stride) {
    if (!usable(T)) return;
    std::memset(tile_[T], 0, sizeof tile_[T]);
    for (int r = 0; r < cfg_.rows[T]; ++r)
      std::memcpy(tile_[T][r], static_cast<const uint8_t*>(base) + r * stride, cfg_.colsb[T]);
  }

  // tilestored: colsb bytes of each of the `rows` rows to base + r * stride.
  template <int T>
  void store(void* base, int64_t stride) {
    if (!usable(T)) return;
    for (int r = 0; r < cfg_.rows[T]; ++r)
      std::memcpy(static_cast<uint8_t*>(base) + r * stride, tile_[T][r], cfg_.colsb[T]);
  }

  // tdpb[s|u][s|u]d: C[m][n] (int32, wrapping) += sum over k < colsb(A)/4, i < 4 of A[m].byte[4k+i] * B[k].byte[4n+i],
  // each byte signed or unsigned as the mnemonic says.
  template <int C, int A, int B>
  void dpbssd() { dp_int8<C, A, B, true, true>(); }
  template <int C, int A, int B>
  void dpbusd() { dp_int8<C, A, B, false, true>(); }

  // tdpbf16ps: per row m, two fp32 partial sums per output column, even and odd bf16 elements of each pair kept
  // apart (temp[2n], temp[2n+1] += A[m].bf16[2k(+1)] * B[k].bf16[2n(+1)], fused, round to nearest even, denormal
  // inputs and outputs flushed to zero); then C[m][n] += temp[2n] + temp[2n+1].
  template <int C, int A, int B>
  void dpbf16ps() {
    if (!shapes_agree(C, A, B)) return;
    const int M = cfg_.rows[C], N = cfg_.colsb[C] / 4, K = cfg_.colsb[A] / 4;
    for (int m = 0; m < M; ++m) {
      float temp[32] = {};
      for (int k = 0; k < K; ++k)
        for (int n = 0; n < N; ++n)
          for (int e = 0; e < 2; ++e)
            temp[2 * n + e] = ftz(__builtin_fmaf(daz(bf16(A, m, 2 * k + e)), daz(bf16(B, k, 2 * n + e)), temp[2 * n + e]));
      for (int n = 0; n < N; ++n) {
        float c;
        std::memcpy(&c, &tile_[C][m][4 * n], 4);
        c = ftz(c + ftz(temp[2 * n] + temp[2 * n + 1]));
        std::memcpy(&tile_[C][m][4 * n], &c, 4);
      }
    }
  }

  // The first shape or state violation seen by any emulated tile unit (nullptr if none); cleared by clear_fault().
  static const char* fault() { return fault_; }
  static void clear_fault() { fault_ = nullptr; }

 private:
  static inline const char* volatile fault_ = nullptr;
  static void set_fault(const char* what) {
    if (fault_ == nullptr) fault_ = what;
  }

  bool usable(int t) {
    if (!configured_) set_fault("tile instruction before ldtilecfg");
    else if (cfg_.rows[t] == 0 || cfg_.colsb[t] == 0) set_fault("tile instruction on an unconfigured tile");
    else return true;
    return false;
  }
  // C is M x N dwords, A is M x K dwords, B is K x N dwords (rows x colsb / 4).
  bool shapes_agree(int c, int a, int b) {
    if (!usable(c) || !usable(a) || !usable(b)) return false;
    if (cfg_.rows[a] != cfg_.rows[c] || cfg_.colsb[b] != cfg_.colsb[c] || cfg_.rows[b] != cfg_.colsb[a] / 4) {
      set_fault("tile dot product: operand shapes disagree (#UD on hardware)");
      return false;
    }
    return true;
  }

  template <int C, int A, int B, bool a_signed, bool b_signed>
  void dp_int8() {
    if (!shapes_agree(C, A, B)) return;
    const int M = cfg_.rows[C], N = cfg_.colsb[C] / 4, K = cfg_.colsb[A] / 4;
    for (int m = 0; m < M; ++m)
      for (int n = 0; n < N; ++n) {
        uint32_t acc;  // int32 arithmetic that wraps, as the instruction's does
        std::memcpy(&acc, &tile_[C][m][4 * n], 4);
        for (int k = 0; k < K; ++k)
          for (int i = 0; i < 4; ++i) {
            const uint8_t x = tile_[A][m][4 * k + i], y = tile_[B][k][4 * n + i];
            const int32_t xv = a_signed ? static_cast<int8_t>(x) : x, yv = b_signed ? static_cast<int8_t>(y) : y;
            acc += static_cast<uint32_t>(xv * yv);
          }
        std::memcpy(&tile_[C][m][4 * n], &acc, 4);
      }
  }

  float bf16(int t, int row, int idx) const {
    uint16_t h;
    std::memcpy(&h, &tile_[t][row][2 * idx], 2);
    const uint32_t u = static_cast<uint32_t>(h) << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
  }
  static float daz(float f) { return std::fabs(f) < 1.17549435e-38f ? std::copysign(0.0f, f) : f; }
  static float ftz(float f) { return daz(f); }

  TileConfig cfg_{};
  bool configured_ = false;
  alignas(64) uint8_t tile_[8][16][64] = {};
};

#if defined(ILLADA_AMX_HARDWARE)
// The compiler's _tile_* intrinsics paste their tile arguments into the instruction text, so they take literal
// digits: each operation picks its literal by `if constexpr`. Dot products exist for the operand triples the kernels
// use (the 2 A x 2 B -> 4 C blocking: C0..3, A in tiles 4-5, B in 6-7); another triple fails to compile.
#define ILLADA_AMX_EACH_TILE(OP, ...)                                   \
  if constexpr (T == 0) OP(0 __VA_OPT__(, ) __VA_ARGS__);               \
  else if constexpr (T == 1) OP(1 __VA_OPT__(, ) __VA_ARGS__);          \
  else if constexpr (T == 2) OP(2 __VA_OPT__(, ) __VA_ARGS__);          \
  else if constexpr (T == 3) OP(3 __VA_OPT__(, ) __VA_ARGS__);          \
  else if constexpr (T == 4) OP(4 __VA_OPT__(, ) __VA_ARGS__);          \
  else if constexpr (T == 5) OP(5 __VA_OPT__(, ) __VA_ARGS__);          \
  else if constexpr (T == 6) OP(6 __VA_OPT__(, ) __VA_ARGS__);          \
  else OP(7 __VA_OPT__(, ) __VA_ARGS__)
#define ILLADA_AMX_DOT(OP)                                                              \
  if constexpr (C == 0 && A == 4 && B == 6) OP(0, 4, 6);                               \
  else if constexpr (C == 1 && A == 4 && B == 7) OP(1, 4, 7);                          \
  else if constexpr (C == 2 && A == 5 && B == 6) OP(2, 5, 6);                          \
  else if constexpr (C == 3 && A == 5 && B == 7) OP(3, 5, 7);                          \
  else static_assert(C < 0, "amx::Hardware: add this tile triple to ILLADA_AMX_DOT")

class Hardware {
 public:
  static constexpr const char* kName = "hardware";
  void configure(const TileConfig& c) { _tile_loadconfig(&c); }
  void release() { _tile_release(); }
  template <int T>
  void zero() { ILLADA_AMX_EACH_TILE(_tile_zero); }
  template <int T>
  void load(const void* base, int64_t stride) { ILLADA_AMX_EACH_TILE(_tile_loadd, base, stride); }
  template <int T>
  void store(void* base, int64_t stride) { ILLADA_AMX_EACH_TILE(_tile_stored, base, stride); }
  template <int C, int A, int B>
  void dpbssd() { ILLADA_AMX_DOT(_tile_dpbssd); }
  template <int C, int A, int B>
  void dpbusd() { ILLADA_AMX_DOT(_tile_dpbusd); }
  template <int C, int A, int B>
  void dpbf16ps() { ILLADA_AMX_DOT(_tile_dpbf16ps); }
  static const char* fault() { return nullptr; }
  static void clear_fault() {}
};
#undef ILLADA_AMX_EACH_TILE
#undef ILLADA_AMX_DOT
#endif

}  // namespace illada::cpu::amx
