// Known-answer probes of the warp-level instructions in mma_sm80.cuh: one warp each, inputs and each lane's
// registers in global memory. The emulator's tests check them against the PTX ISA's definitions; on a GPU the same
// probes are compared bit for bit with the emulator's answers, the one check that catches the emulator and the
// kernels sharing a misreading of the documentation.
#pragma once
#include <cstdint>
#include <string>

namespace illada::cuda {

enum class ProbeKind : int { bf16 = 0, f16 = 1, s8 = 2, e4m3 = 3 };

// src: 32 rows of 16 bytes (four 8x8 b16 matrices); lane L gives the address of row row_of_lane[L] (0..31).
// out[L * num + j] = lane L's register j after ldmatrix .x{num}{.trans}.
std::string probe_ldmatrix(const void* src, const int32_t* row_of_lane, int num, bool trans, uint32_t* out,
                           void* stream);

// One mma.sync per lane's fragments: a[L*4 + i], b[L*2 + i], c/d[L*4 + i] (float, or int32 for s8).
// bf16/f16: m16n8k16; s8/e4m3: m16n8k32 (e4m3 needs sm_89+ on a GPU).
std::string probe_mma(ProbeKind kind, const uint32_t* a, const uint32_t* b, const void* c, void* d, void* stream);

// c[16][8] = a[16][K] * bt[8][K]^T through cp.async (global -> shared), ldmatrix and mma.sync, as a GEMM tile is
// computed: rows of `row_bytes` bytes (K elements), a multiple of 32. c is float (int32 for s8).
std::string probe_tile_gemm(ProbeKind kind, const void* a, const void* bt, int row_bytes, void* c, void* stream);
constexpr int kProbeMaxRowBytes = 1024;

}  // namespace illada::cuda
