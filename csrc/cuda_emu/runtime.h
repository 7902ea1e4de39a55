// The emulator's runtime: runs a grid CTA by CTA, each CTA's threads as cooperatively scheduled fibers in warps
// of 32. Misuse of barriers and warp collectives, shared-memory races, reads of uninitialized shared memory, reads
// before the cp.async.wait_group that lands them, and accesses outside every tensor argument are reported as
// cuda_emu::KernelError naming the kernel, the block and the thread.
#pragma once
#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

namespace cuda_emu {

struct KernelError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// A call site; `Site site = Site::here()` as a default argument records the caller's file and line.
struct Site {
  const char* file;
  int line;
  static Site here(const char* f = __builtin_FILE(), int l = __builtin_LINE()) { return {f, l}; }
};

enum class WarpOp { shfl_xor, shfl_idx, ballot, exchange };

// Every byte of shared memory holds this at CTA start, so a read before any write is visible even unchecked.
constexpr unsigned char kPoisonByte = 0xA5;
// Default and largest dynamic shared memory per CTA (an H100/H200 allows 227 KiB after cudaFuncSetAttribute).
constexpr size_t kDefaultDynamicShared = 48 * 1024;
constexpr size_t kMaxDynamicShared = 227 * 1024;
constexpr size_t kMaxStaticShared = 48 * 1024;  // the most a kernel may declare statically

struct Dims {
  unsigned x = 1, y = 1, z = 1;
};

// Runs `body` once per thread of every CTA of the grid (launches are serialized per process). `fn` identifies
// the kernel for its dynamic-shared-memory attribute.
void launch(const char* kernel, const void* fn, Dims grid, Dims block, size_t dynamic_shared_bytes,
            const std::function<void()>& body);
// cudaFuncSetAttribute(fn, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes); false when out of range.
bool set_max_dynamic_shared(const void* fn, size_t bytes);

// Launches per kernel name since the process started (the Python seam reports differences).
std::map<std::string, int64_t> launch_counts();

// The checkers (races, initialization, cp.async ordering, bounds); on by default.
void set_checks(bool on);
bool checks_enabled();

// Global memory a kernel may touch: the tensor arguments of the next launch from this OS thread. A binding
// declares them (named, for the error messages) before it calls the host code that launches.
struct GlobalRange {
  std::string name;
  uintptr_t begin, end;  // [begin, end)
};
class GlobalArgs {
 public:
  explicit GlobalArgs(std::vector<GlobalRange> ranges);
  ~GlobalArgs();
  GlobalArgs(const GlobalArgs&) = delete;
  GlobalArgs& operator=(const GlobalArgs&) = delete;
};

// ---- called from kernel code (inside a fiber) ----
void syncthreads(const char* file, int line);
uint64_t warp_collective(WarpOp op, unsigned mask, uint64_t value, int arg, int width, Site site);

// A warp-wide operation over per-lane slots (ldmatrix, mma.sync): every lane in `mask` arrives with its slot at
// the same call site, then `compute` runs once over all of them before any lane goes on.
struct WarpLanes {
  void* slot[32];
  unsigned tid[32];  // linear thread index of each lane
  unsigned mask;
  Site site;
};
void warp_exchange(const char* op_name, unsigned mask, void* slot, void (*compute)(const WarpLanes&), Site site);

void* dynamic_shared_base();
// The storage of one ILLADA_SHARED declaration (`site` identifies it): the same for every thread of the launch,
// poisoned at each CTA start, checked like all shared memory.
void* static_shared(const void* site, size_t bytes, const char* name);
unsigned current_thread();                  // linear index of the running thread in its CTA
[[noreturn]] void fail(const std::string& msg);  // report an error of the running thread; the launch raises it

}  // namespace cuda_emu
