// Host implementations of the wrapped PTX instructions (see ptx.h). Fragment layouts, with lane = 0..31,
// g = lane >> 2 and t = lane & 3, elements low to high within each 32-bit register (PTX ISA, "Matrix Fragments
// for mma.m16n8k16" / "... mma.m16n8k32" and "ldmatrix"):
//   m16n8k16 A a0..a7: row g for i in {0,1,4,5} else g+8; col 2t + (i&1), +8 for i >= 4
//            B b0..b3: k = 2t + (i&1), +8 for i >= 2; n = g
//            C c0..c3: row g for i < 2 else g+8; col 2t + (i&1)
//   m16n8k32 A a0..a15: row g for i in 0..3, 8..11 else g+8; col 4t + (i&3), +16 for i >= 8
//            B b0..b7: k = 4t + (i&3), +16 for i >= 4; n = g;  C as above
//   ldmatrix: matrix j's row r comes from lane 8j + r's address; lane L receives row L>>2, columns 2(L&3) and
//            2(L&3)+1 (with .trans: rows 2(L&3) and 2(L&3)+1 of column L>>2) in register j.
#include "ptx.h"

#include <cmath>
#include <cstring>
#include <string>

#include "internal.h"

namespace cuda_emu::ptx {

namespace {

std::string where(const Site& s) { return std::string(s.file) + ":" + std::to_string(s.line); }

uint16_t half_of(uint32_t reg, int i) { return static_cast<uint16_t>(reg >> (16 * i)); }
uint8_t byte_of(uint32_t reg, int i) { return static_cast<uint8_t>(reg >> (8 * i)); }

struct LdmatrixSlot {
  const void* addr;
  uint32_t r[4];
  int num;
  bool trans;
};

void ldmatrix_compute(const WarpLanes& w) {
  auto* s0 = static_cast<LdmatrixSlot*>(w.slot[0]);
  const int num = s0->num;
  const bool trans = s0->trans;
  for (unsigned lane = 0; lane < 32; ++lane) {
    auto* s = static_cast<LdmatrixSlot*>(w.slot[lane]);
    if (s->num != num || s->trans != trans) fail("ldmatrix at " + where(w.site) + ": lanes disagree on the shape");
  }
  uint16_t m[4][8][8];
  for (int j = 0; j < num; ++j)
    for (int r = 0; r < 8; ++r) {
      const unsigned lane = 8 * j + r;
      const void* p = static_cast<LdmatrixSlot*>(w.slot[lane])->addr;
      if (reinterpret_cast<uintptr_t>(p) % 16 != 0)
        fail("ldmatrix at " + where(w.site) + ": lane " + std::to_string(lane) +
             "'s row address is not 16-byte aligned");
      if (!in_shared(p, 16))
        fail("ldmatrix at " + where(w.site) + ": lane " + std::to_string(lane) +
             "'s row address is outside shared memory");
      check_access(p, 16, Access::read, w.tid[lane]);
      std::memcpy(m[j][r], p, 16);
    }
  for (unsigned lane = 0; lane < 32; ++lane) {
    auto* s = static_cast<LdmatrixSlot*>(w.slot[lane]);
    const int row = lane >> 2, col = 2 * (lane & 3);
    for (int j = 0; j < num; ++j) {
      const uint16_t lo = trans ? m[j][col][row] : m[j][row][col];
      const uint16_t hi = trans ? m[j][col + 1][row] : m[j][row][col + 1];
      s->r[j] = static_cast<uint32_t>(lo) | static_cast<uint32_t>(hi) << 16;
    }
  }
}

template <typename Acc>
struct MmaSlot {
  const uint32_t* a;
  const uint32_t* b;
  const Acc* c;
  Acc* d;
  Acc out[4];
};

// Gathers the 16 x K A, K x 8 B and 16 x 8 C of a warp's fragments (K = 16 for 16-bit, 32 for 8-bit elements).
template <typename Acc, int K, typename Elem>
void gather(const WarpLanes& w, double (&A)[16][K], double (&B)[K][8], Acc (&C)[16][8], Elem elem) {
  for (unsigned lane = 0; lane < 32; ++lane) {
    auto* s = static_cast<MmaSlot<Acc>*>(w.slot[lane]);
    const int g = lane >> 2, t = lane & 3;
    constexpr int per = K / 8;  // elements per 32-bit register: 2 (16-bit) or 4 (8-bit)
    for (int i = 0; i < 4 * per; ++i) {  // A: a0..a(4*per-1)
      const int reg = i / per, e = i % per;
      const int row = g + ((reg & 1) ? 8 : 0);
      const int col = per * t + e + ((reg & 2) ? 4 * per : 0);
      A[row][col] = elem(s->a[reg], e);
    }
    for (int i = 0; i < 2 * per; ++i) {  // B: b0..b(2*per-1)
      const int reg = i / per, e = i % per;
      const int k = per * t + e + (reg ? 4 * per : 0);
      B[k][g] = elem(s->b[reg], e);
    }
    for (int i = 0; i < 4; ++i) C[g + (i >= 2 ? 8 : 0)][2 * t + (i & 1)] = s->c[i];
  }
}

template <typename Acc>
void scatter(const WarpLanes& w, const Acc (&D)[16][8]) {
  for (unsigned lane = 0; lane < 32; ++lane) {
    auto* s = static_cast<MmaSlot<Acc>*>(w.slot[lane]);
    const int g = lane >> 2, t = lane & 3;
    for (int i = 0; i < 4; ++i) s->out[i] = D[g + (i >= 2 ? 8 : 0)][2 * t + (i & 1)];
  }
}

struct E4m3Table {  // every e4m3 value, decoded once
  float v[256];
  E4m3Table() {
    for (int i = 0; i < 256; ++i) v[i] = e4m3_to_float(static_cast<uint8_t>(i));
  }
};
const E4m3Table& e4m3_table() {
  static const E4m3Table t;
  return t;
}

struct ElemBf16 {
  double operator()(uint32_t r, int e) const { return bf16_to_float(half_of(r, e)); }
};
struct ElemF16 {
  double operator()(uint32_t r, int e) const { return f16_to_float(half_of(r, e)); }
};
struct ElemE4m3 {
  const float* lut = e4m3_table().v;
  double operator()(uint32_t r, int e) const { return lut[byte_of(r, e)]; }
};

// Float accumulation: the products are exact in double and the K-term sum plus c is rounded to fp32 once. (The
// hardware's internal order and precision are unspecified; the result agrees to fp32 rounding of the sum.)
template <int K, typename Elem>
void mma_float(const WarpLanes& w, Elem elem) {
  double A[16][K], B[K][8];
  float C[16][8], D[16][8];
  gather<float, K>(w, A, B, C, elem);
  for (int i = 0; i < 16; ++i)
    for (int j = 0; j < 8; ++j) {
      double acc = C[i][j];
      for (int k = 0; k < K; ++k) acc += A[i][k] * B[k][j];
      D[i][j] = static_cast<float>(acc);
    }
  scatter<float>(w, D);
}

void mma_bf16_compute(const WarpLanes& w) { mma_float<16>(w, ElemBf16{}); }
void mma_f16_compute(const WarpLanes& w) { mma_float<16>(w, ElemF16{}); }
void mma_e4m3_compute(const WarpLanes& w) { mma_float<32>(w, ElemE4m3{}); }
void mma_s8_compute(const WarpLanes& w) {
  // integer arithmetic throughout (the fragments' layout as in gather(), specialized: this is the hot path of the
  // emulated int8 GEMM)
  int32_t A[16][32], B[8][32];
  for (unsigned lane = 0; lane < 32; ++lane) {
    auto* s = static_cast<MmaSlot<int32_t>*>(w.slot[lane]);
    const int g = lane >> 2, t = lane & 3;
    for (int reg = 0; reg < 4; ++reg)
      for (int e = 0; e < 4; ++e)
        A[g + ((reg & 1) ? 8 : 0)][4 * t + e + ((reg & 2) ? 16 : 0)] = static_cast<int8_t>(byte_of(s->a[reg], e));
    for (int reg = 0; reg < 2; ++reg)
      for (int e = 0; e < 4; ++e) B[g][4 * t + e + (reg ? 16 : 0)] = static_cast<int8_t>(byte_of(s->b[reg], e));
  }
  int32_t D[16][8];
  for (unsigned lane = 0; lane < 32; ++lane) {
    auto* s = static_cast<MmaSlot<int32_t>*>(w.slot[lane]);
    const int g = lane >> 2, t = lane & 3;
    for (int i = 0; i < 4; ++i) {
      const int row = g + (i >= 2 ? 8 : 0), col = 2 * t + (i & 1);
      int32_t dot = 0;  // |dot| <= 32 * 128 * 128: no overflow
      for (int k = 0; k < 32; ++k) dot += A[row][k] * B[col][k];
      D[row][col] = static_cast<int32_t>(static_cast<uint32_t>(s->c[i]) + static_cast<uint32_t>(dot));  // wraps
    }
  }
  scatter<int32_t>(w, D);
}

template <typename Acc>
void run_mma(const char* name, void (*compute)(const WarpLanes&), Acc* d, const uint32_t* a, const uint32_t* b,
             const Acc* c, Site site) {
  MmaSlot<Acc> slot{a, b, c, d, {}};
  warp_exchange(name, 0xffffffffu, &slot, compute, site);
  for (int i = 0; i < 4; ++i) d[i] = slot.out[i];
}

}  // namespace

void cp_async(void* smem, const void* gmem, int cp_size, int src_size, bool cache_global, Site site) {
  Cta& c = *g_cta;
  const unsigned tid = c.current;
  const std::string op = std::string(cache_global ? "cp.async.cg" : "cp.async.ca") + " at " + where(site);
  if (cache_global ? cp_size != 16 : (cp_size != 4 && cp_size != 8 && cp_size != 16))
    fail(op + ": cp-size " + std::to_string(cp_size) + " is not allowed");
  if (src_size < 0 || src_size > cp_size) fail(op + ": src-size must be in [0, cp-size]");
  if (reinterpret_cast<uintptr_t>(smem) % cp_size || (src_size > 0 && reinterpret_cast<uintptr_t>(gmem) % cp_size))
    fail(op + ": addresses must be aligned to cp-size (" + std::to_string(cp_size) + " bytes)");
  if (!in_shared(smem, cp_size)) fail(op + ": the destination is outside shared memory");
  Fiber::Copy copy{smem, {}, cp_size};
  if (src_size > 0) {
    check_access(gmem, src_size, Access::read, tid);
    std::memcpy(copy.data, gmem, src_size);
  }
  mark_pending(smem, cp_size, tid);
  c.fibers[tid].cp_open.push_back(copy);
}

void cp_async_commit() {
  Fiber& f = g_cta->fibers[g_cta->current];
  f.cp_groups.push_back(std::move(f.cp_open));  // an empty group is a group
  f.cp_open.clear();
}

void cp_async_wait(int n) {
  Cta& c = *g_cta;
  Fiber& f = c.fibers[c.current];
  while (static_cast<int>(f.cp_groups.size()) > n) {
    for (const Fiber::Copy& copy : f.cp_groups.front()) land(copy.dst, copy.data, copy.bytes, c.current);
    f.cp_groups.erase(f.cp_groups.begin());
  }
}

void ldmatrix(uint32_t* r, int num, bool trans, const void* smem, Site site) {
  LdmatrixSlot slot{smem, {}, num, trans};
  warp_exchange("ldmatrix", 0xffffffffu, &slot, ldmatrix_compute, site);
  for (int j = 0; j < num; ++j) r[j] = slot.r[j];
}

void mma_m16n8k16(float* d, const uint32_t* a, const uint32_t* b, const float* c, bool bf16, Site site) {
  run_mma<float>(bf16 ? "mma.m16n8k16.bf16" : "mma.m16n8k16.f16", bf16 ? mma_bf16_compute : mma_f16_compute, d, a, b,
                 c, site);
}
void mma_m16n8k32_s8(int32_t* d, const uint32_t* a, const uint32_t* b, const int32_t* c, Site site) {
  run_mma<int32_t>("mma.m16n8k32.s8", mma_s8_compute, d, a, b, c, site);
}
void mma_m16n8k32_e4m3(float* d, const uint32_t* a, const uint32_t* b, const float* c, Site site) {
  run_mma<float>("mma.m16n8k32.e4m3", mma_e4m3_compute, d, a, b, c, site);
}

float bf16_to_float(uint16_t h) {
  const uint32_t u = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

float f16_to_float(uint16_t h) {
  const int sign = h >> 15, exp = (h >> 10) & 31, mant = h & 1023;
  float v;
  if (exp == 0) v = std::ldexp(static_cast<float>(mant), -24);
  else if (exp == 31) v = mant ? NAN : INFINITY;
  else v = std::ldexp(static_cast<float>(mant | 1024), exp - 25);
  return sign ? -v : v;
}

float e4m3_to_float(uint8_t b) {
  const int sign = b >> 7, exp = (b >> 3) & 15, mant = b & 7;
  float v;
  if (exp == 15 && mant == 7) v = NAN;  // e4m3 has no infinity
  else if (exp == 0) v = std::ldexp(static_cast<float>(mant), -9);
  else v = std::ldexp(static_cast<float>(mant | 8), exp - 10);
  return sign ? -v : v;
}

uint16_t float_to_bf16_rn(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if (std::isnan(f)) return 0x7fff;
  u += 0x7fff + ((u >> 16) & 1);
  return static_cast<uint16_t>(u >> 16);
}

uint16_t float_to_f16_rn(float f) {
  if (std::isnan(f)) return 0x7fff;
  uint32_t u;
  std::memcpy(&u, &f, 4);
  const uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000);
  const float a = std::fabs(f);
  if (a >= 65520.f) return sign | 0x7c00;  // rounds to infinity
  if (a < std::ldexp(1.f, -14)) {          // subnormal: multiples of 2^-24, nearest even
    const float q = std::nearbyint(a * std::ldexp(1.f, 24));  // exact scaling; default rounding is to nearest even
    return sign | static_cast<uint16_t>(q);
  }
  const uint32_t au = u & 0x7fffffffu;
  uint32_t h = ((au >> 23) - 112) << 10 | ((au >> 13) & 1023);  // exponent rebias 127 -> 15
  const uint32_t rest = au & 0x1fff;
  if (rest > 0x1000 || (rest == 0x1000 && (h & 1))) ++h;  // may carry into the exponent, correctly
  return sign | static_cast<uint16_t>(h);
}

uint8_t float_to_e4m3_rn(float f, bool satfinite) {
  if (std::isnan(f)) return 0x7f;
  const uint8_t sign = std::signbit(f) ? 0x80 : 0;
  const float a = std::fabs(f);
  if (a > 448.f) {  // the largest finite, or what rounds past it
    if (satfinite) return sign | 0x7e;
    if (a >= 464.f) return sign | 0x7f;  // round-to-nearest-even would give 480, which e4m3 cannot hold: NaN
    return sign | 0x7e;
  }
  if (a < std::ldexp(1.f, -6)) {  // subnormal: multiples of 2^-9 (8 of them make the smallest normal, 0x08)
    return sign | static_cast<uint8_t>(std::nearbyint(a * 512.f));
  }
  int e;
  std::frexp(a, &e);  // a = m * 2^e, m in [0.5, 1)
  e -= 1;             // a = 1.f * 2^e
  float q = std::nearbyint(std::ldexp(a, 3 - e));  // 8 .. 16
  if (q == 16.f) q = 8.f, ++e;
  return sign | static_cast<uint8_t>(((e + 7) << 3) | (static_cast<int>(q) - 8));
}

}  // namespace cuda_emu::ptx
