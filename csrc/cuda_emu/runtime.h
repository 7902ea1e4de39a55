// The emulator's runtime: runs a grid CTA by CTA, each CTA's threads as cooperatively scheduled fibers in warps
// of 32. Misuse of barriers and warp collectives is reported as cuda_emu::KernelError naming the kernel.
#pragma once
#include <cstddef>
#include <cstdint>
#include <functional>
#include <stdexcept>
#include <string>

namespace cuda_emu {

struct KernelError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct Site {
  const char* file;
  int line;
};

enum class WarpOp { shfl_xor, shfl_idx, ballot };

// Every byte of shared memory holds this at CTA start, so a read before any write is visible.
constexpr unsigned char kPoisonByte = 0xA5;

struct Dims {
  unsigned x = 1, y = 1, z = 1;
};

// Runs `body` once per thread of every CTA of the grid (one launch at a time per process).
void launch(const char* kernel, Dims grid, Dims block, size_t dynamic_shared_bytes, const std::function<void()>& body);

// Called from kernel code (inside a fiber).
void syncthreads(const char* file, int line);
uint64_t warp_collective(WarpOp op, unsigned mask, uint64_t value, int arg, int width, Site site);
void* dynamic_shared_base();

}  // namespace cuda_emu
