#include "cpu_features.h"

#include <cstdlib>

#include "check.h"

#if defined(__x86_64__) || defined(_M_X64)
#include <cpuid.h>
#if defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#endif
#define ILLADA_X86 1
#endif

namespace illada::cpu {

namespace {

#ifdef ILLADA_X86
uint64_t xgetbv0() {
  uint32_t lo, hi;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  return (static_cast<uint64_t>(hi) << 32) | lo;
}

bool request_amx_permission() {
#if defined(__linux__)
  // Linux >= 5.16: a process must ask before using AMX tile data (XFEATURE_XTILEDATA = 18).
  constexpr long kArchGetXcompPerm = 0x1022, kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
  if (syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) != 0) return false;
  unsigned long bitmask = 0;
  if (syscall(SYS_arch_prctl, kArchGetXcompPerm, &bitmask) != 0) return false;
  return (bitmask >> kXfeatureXtiledata) & 1;
#else
  return false;
#endif
}
#endif

CpuFeatures detect() {
  CpuFeatures f;
#ifdef ILLADA_X86
  unsigned a, b, c, d;
  if (!__get_cpuid(1, &a, &b, &c, &d)) return f;
  const bool osxsave = (c >> 27) & 1, avx = (c >> 28) & 1;
  f.fma = (c >> 12) & 1;
  f.f16c = (c >> 29) & 1;
  if (!osxsave || !avx) return f;
  const uint64_t xcr0 = xgetbv0();
  const bool os_ymm = (xcr0 & 0x6) == 0x6;           // SSE + AVX state
  const bool os_zmm = (xcr0 & 0xe6) == 0xe6;         // + opmask, ZMM_Hi256, Hi16_ZMM
  const bool os_amx = (xcr0 & 0x60000) == 0x60000;   // XTILECFG + XTILEDATA
  unsigned max_leaf = __get_cpuid_max(0, nullptr);
  if (max_leaf < 7) return f;
  __cpuid_count(7, 0, a, b, c, d);
  f.avx2 = os_ymm && ((b >> 5) & 1) && f.fma;
  f.avx512f = os_zmm && ((b >> 16) & 1);
  f.avx512dq = f.avx512f && ((b >> 17) & 1);
  f.avx512bw = f.avx512f && ((b >> 30) & 1);
  f.avx512vl = f.avx512f && ((b >> 31) & 1);
  f.avx512_vnni = f.avx512f && ((c >> 11) & 1);
  f.amx_bf16 = os_amx && ((d >> 22) & 1);
  f.amx_tile = os_amx && ((d >> 24) & 1);
  f.amx_int8 = os_amx && ((d >> 25) & 1);
  unsigned a1, b1, c1, d1;
  __cpuid_count(7, 1, a1, b1, c1, d1);
  f.avx512_bf16 = f.avx512f && ((a1 >> 5) & 1);
  if (f.amx_tile) f.amx_permitted = request_amx_permission();
#endif
  return f;
}

bool supports(const CpuFeatures& f, Isa isa) {
  switch (isa) {
    case Isa::generic: return true;
    case Isa::avx2: return f.avx2 && f.fma && f.f16c;
    case Isa::avx512:
      return supports(f, Isa::avx2) && f.avx512f && f.avx512bw && f.avx512vl && f.avx512dq && f.avx512_vnni &&
             f.avx512_bf16;
    case Isa::amx: return supports(f, Isa::avx512) && f.amx_tile && f.amx_int8 && f.amx_bf16 && f.amx_permitted;
  }
  return false;
}

}  // namespace

const CpuFeatures& cpu_features() {
  static const CpuFeatures f = detect();
  return f;
}

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::generic: return "generic";
    case Isa::avx2: return "avx2";
    case Isa::avx512: return "avx512";
    case Isa::amx: return "amx";
  }
  return "?";
}

bool parse_isa(const std::string& name, Isa* out) {
  for (Isa i : {Isa::generic, Isa::avx2, Isa::avx512, Isa::amx})
    if (name == isa_name(i)) {
      *out = i;
      return true;
    }
  return false;
}

Isa best_isa() {
  static const Isa best = [] {
    Isa b = Isa::generic;
    for (Isa i : {Isa::avx2, Isa::avx512, Isa::amx})
      if (supports(cpu_features(), i)) b = i;
    return b;
  }();
  return best;
}

std::vector<Isa> supported_isas() {
  std::vector<Isa> out;
  for (int i = 0; i <= static_cast<int>(best_isa()); ++i) out.push_back(static_cast<Isa>(i));
  return out;
}

Isa active_isa() {
  const char* env = std::getenv("ILLADA_RT_CPU_ISA");
  if (env == nullptr || *env == '\0') return best_isa();
  Isa want;
  ILLADA_CHECK(parse_isa(env, &want),
               "ILLADA_RT_CPU_ISA must be one of generic, avx2, avx512, amx; got '" << env << "'");
  return want < best_isa() ? want : best_isa();  // asking for more than the CPU has gives the best it has
}

namespace {
thread_local bool amx_emulated = false;
}

void set_amx_emulation(bool on) { amx_emulated = on; }
bool amx_emulation() { return amx_emulated; }

Isa checked_isa(Isa requested) {
  ILLADA_CHECK(requested <= best_isa(), "isa: this CPU does not support '" << isa_name(requested)
                                                                            << "' (best: " << isa_name(best_isa()) << ")");
  return requested;
}

}  // namespace illada::cpu
