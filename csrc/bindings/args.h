// Scalar arguments shared by the CPU bindings: the ISA override and the thread count.
#pragma once
#include <pybind11/pybind11.h>

#include <string>

#include "../common/check.h"
#include "../common/cpu_features.h"

namespace illada::bind {

// None -> the active ISA (best supported, capped by ILLADA_RT_CPU_ISA); a name -> that level if supported.
// "amx_emulated" -> the amx level with the AMX kernels' tiles emulated in C++ (amx_tiles.h), on any CPU with the
// avx512 level (what the rest of the amx level runs): how the AMX kernels are tested where AMX is absent.
inline cpu::Isa isa_arg(const pybind11::object& isa) {
  cpu::set_amx_emulation(false);
  if (isa.is_none()) return cpu::active_isa();
  cpu::Isa out;
  const std::string name = pybind11::cast<std::string>(isa);
  if (name == "amx_emulated") {
    cpu::checked_isa(cpu::Isa::avx512);
    cpu::set_amx_emulation(true);
    return cpu::Isa::amx;
  }
  ILLADA_CHECK(cpu::parse_isa(name, &out),
               "isa: expected one of generic, avx2, avx512, amx, amx_emulated; got '" << name << "'");
  return cpu::checked_isa(out);
}

inline int threads_arg(int n_threads) {
  ILLADA_CHECK(n_threads >= 1, "n_threads: must be >= 1, got " << n_threads);
  return n_threads;
}

}  // namespace illada::bind
