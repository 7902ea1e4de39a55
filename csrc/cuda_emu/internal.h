// State shared by the emulator's scheduler (runtime.cpp), its checkers (shadow.cpp) and the PTX instructions
// (ptx.cpp). Not for kernel code.
#pragma once
#include <exception>
#include <memory>
#include <string>
#include <vector>

#include "cuda_names.h"
#include "fiber.h"
#include "runtime.h"

namespace cuda_emu {

enum class State { runnable, at_barrier, at_warp_op, done };

struct Fiber {
  FiberContext ctx;
  uint3 idx{};
  State state = State::runnable;
  Site site{nullptr, 0};  // where it waits
  WarpOp op{};
  const char* op_name = nullptr;
  unsigned mask = 0;
  uint64_t value = 0;
  int arg = 0;
  uint64_t result = 0;
  void* slot = nullptr;
  void (*compute)(const WarpLanes&) = nullptr;
  // cp.async: copies issued since the last commit, then the committed groups, oldest first
  struct Copy {
    void* dst;
    unsigned char data[16];
    int bytes;
  };
  std::vector<Copy> cp_open;
  std::vector<std::vector<Copy>> cp_groups;
};

// Per-byte shadow of a shared-memory window (see shadow.cpp for the rules).
struct Cell {
  uint32_t w_epoch = 0;  // barrier interval of the last write (0: never written in this launch)
  uint32_t r_epoch = 0;  // barrier interval of the reads recorded below
  uint32_t w_wep = 0;    // the writer's warp epoch at the write
  uint32_t r_wep = 0;    // the latest warp epoch among the recorded reads
  uint16_t w_tid = 0;
  uint16_t r_tid = 0;
  uint8_t flags = 0;     // kPending, kAtomic, kMultiThread, kMultiWarp
};
constexpr uint8_t kPending = 1, kAtomic = 2, kMultiThread = 4, kMultiWarp = 8;

struct Window {
  explicit Window(const char* n) : name(n) {}
  const char* name;
  unsigned char* base = nullptr;
  size_t size = 0;
  size_t guard = 0;  // bytes on each side that belong to no one: an access there is out of bounds
  std::vector<Cell> cells;
};

struct Cta {
  const char* kernel = "";
  const std::function<void()>* body = nullptr;
  uint3 block_idx{};
  unsigned nthreads = 0;
  std::vector<Fiber> fibers;
  std::unique_ptr<char[]> stacks;  // one region for all fibers' stacks
  size_t stacks_bytes = 0;
  std::vector<unsigned char> dynamic_storage;  // guard + dynamic shared memory + guard
  FiberContext scheduler;
  unsigned current = 0;
  std::string error;
  std::exception_ptr thrown;
  // checkers
  bool checks = true;
  uint32_t epoch = 1;            // barrier interval, increasing through the launch
  uint32_t cta_first_epoch = 1;  // first interval of the running CTA
  std::vector<uint32_t> warp_epoch;  // completed collectives per warp
  std::vector<int> warp_waiting;     // lanes of each warp waiting at a collective
  Window shared_static{"static shared memory"}, shared_dynamic{"dynamic shared memory"};
  Window shared_declared{"static shared memory"};  // ILLADA_SHARED declarations, laid out as they first run
  std::vector<unsigned char> declared_storage;     // guard + kMaxStaticShared + guard
  std::vector<std::pair<const void*, size_t>> declared;  // site -> offset in shared_declared
  size_t declared_used = 0;
  std::vector<GlobalRange> globals;
  uintptr_t host_stack_lo = 0, host_stack_hi = 0;  // the launching thread's frames (kernel parameters)
};

extern CUDA_EMU_TLS Cta* g_cta;
extern CUDA_EMU_TLS bool g_checking;  // a fiber with checks on is running on this OS thread

enum class Access { read, write, atomic };
const char* access_name(Access a);

// Shadow checks of an access of `n` bytes at `p` by thread `tid` of the running CTA (anywhere: shared, global,
// stack). Report through fail().
void check_access(const void* p, size_t n, Access a, unsigned tid);
// cp.async: issue marks the destination pending (a write, checked); land copies the bytes and makes them written.
void mark_pending(void* dst, size_t n, unsigned tid);
void land(void* dst, const void* src, size_t n, unsigned tid);
// Whether [p, p+n) lies in the running CTA's shared memory.
bool in_shared(const void* p, size_t n);
// Set up the windows' shadows at launch; called by the scheduler.
void shadow_begin_launch(Cta& c);
std::string thread_name(unsigned tid);

}  // namespace cuda_emu
