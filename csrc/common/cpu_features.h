// Run-time CPU feature detection and ISA selection, in one place. Kernels come in variants compiled with
// their own flags (generic, avx2, avx512, amx); the dispatcher calls the best variant that the CPU and the OS
// support (CPUID + xgetbv, and for AMX the kernel's permission via arch_prctl), capped by
// ILLADA_RT_CPU_ISA=generic|avx2|avx512|amx (read once, at first use).
#pragma once
#include <string>
#include <vector>

namespace illada::cpu {

enum class Isa : int { generic = 0, avx2 = 1, avx512 = 2, amx = 3 };

struct CpuFeatures {
  bool avx2 = false, fma = false, f16c = false;              // AVX2 level (OS saves YMM state)
  bool avx512f = false, avx512bw = false, avx512vl = false;  // AVX-512 (OS saves ZMM/opmask state)
  bool avx512dq = false;
  bool avx512_vnni = false, avx512_bf16 = false;
  bool amx_tile = false, amx_int8 = false, amx_bf16 = false;  // CPUID bits
  bool amx_permitted = false;                                 // the OS granted AMX tile data (arch_prctl)
};

const CpuFeatures& cpu_features();
const char* isa_name(Isa isa);
bool parse_isa(const std::string& name, Isa* out);

// Highest ISA this machine supports (each level requires the ones below it).
Isa best_isa();
// best_isa() capped by ILLADA_RT_CPU_ISA; throws illada::Error for an unknown name.
Isa active_isa();
// Every ISA up to best_isa(), lowest first (the tests run each).
std::vector<Isa> supported_isas();
// `requested` if supported, else throws illada::Error naming what is missing.
Isa checked_isa(Isa requested);

// The AMX kernels' tile backend for calls made from this thread: the emulation of the tile instructions (set by the
// bindings for isa="amx_emulated", which the tests use on CPUs without AMX) or the hardware's.
void set_amx_emulation(bool on);
bool amx_emulation();

}  // namespace illada::cpu
