// Fiber scheduler of the emulator: one CTA at a time on the calling OS thread, its threads as fibers. A fiber
// runs until it reaches __syncthreads, a warp collective or its end; the scheduler then resumes the next runnable
// one. When none is runnable, every live thread must wait at the same barrier (released together), or the launch
// stops with a KernelError: divergence is reported, never a hang.
#include <pthread.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <cstdlib>
#include <mutex>
#include <sstream>
#include <unordered_map>

#include "internal.h"

extern "C" {
extern char __start_cuda_emu_shared[] __attribute__((weak));
extern char __stop_cuda_emu_shared[] __attribute__((weak));
}

namespace cuda_emu {

CUDA_EMU_TLS Cta* g_cta = nullptr;
CUDA_EMU_TLS bool g_checking = false;

namespace {

constexpr size_t kStackBytes = 32 * 1024;
constexpr size_t kSharedGuard = 4096;

std::mutex g_launch_mutex;  // the static shared section is one per process
std::mutex g_registry_mutex;
std::map<std::string, int64_t> g_counts;
std::unordered_map<const void*, size_t> g_max_dynamic;
std::atomic<bool> g_checks{true};
thread_local std::vector<GlobalRange> t_globals;

std::string where(const Site& s) { return std::string(s.file) + ":" + std::to_string(s.line); }

bool same_site(const Site& a, const Site& b) {
  return a.line == b.line && (a.file == b.file || std::strcmp(a.file, b.file) == 0);
}

std::string hex(unsigned v) {
  std::ostringstream o;
  o << "0x" << std::hex << v;
  return o.str();
}

const char* op_name(const Fiber& f) {
  switch (f.op) {
    case WarpOp::shfl_xor: return "__shfl_xor_sync";
    case WarpOp::shfl_idx: return "__shfl_sync";
    case WarpOp::ballot: return "__ballot_sync";
    default: return f.op_name;
  }
}

std::string describe(const Cta& c, unsigned tid) {
  const Fiber& f = c.fibers[tid];
  switch (f.state) {
    case State::done: return thread_name(tid) + " has exited";
    case State::at_barrier: return thread_name(tid) + " waits at __syncthreads at " + where(f.site);
    case State::at_warp_op: return thread_name(tid) + " waits at " + op_name(f) + " at " + where(f.site);
    default: return thread_name(tid) + " is running";
  }
}

void switch_to_scheduler() {
  Cta& c = *g_cta;
  g_checking = false;
  fiber_switch(c.fibers[c.current].ctx, c.scheduler);
  g_checking = c.checks;
}

[[noreturn]] void fiber_main() {
  Cta& c = *g_cta;
  g_checking = c.checks;
  try {
    (*c.body)();
  } catch (...) {
    c.thrown = std::current_exception();
  }
  c.fibers[c.current].state = State::done;
  switch_to_scheduler();
  std::abort();  // a finished fiber is never resumed
}

[[noreturn]] void fail_launch(const Cta& c, const std::string& msg) {
  std::ostringstream o;
  o << "kernel '" << c.kernel << "', block (" << c.block_idx.x << "," << c.block_idx.y << "," << c.block_idx.z
    << "): " << msg;
  throw KernelError(o.str());
}

// Completes the rendezvous of the warp of thread `self` if every lane named in the mask has arrived at the same
// operation; reports a lane that exited, waits elsewhere, or does not exist.
void try_complete_warp_op(Cta& c, unsigned self) {
  Fiber& me = c.fibers[self];
  const unsigned warp0 = self / 32 * 32;
  for (unsigned lane = 0; lane < 32; ++lane) {
    if (!(me.mask >> lane & 1u)) continue;
    const unsigned t = warp0 + lane;
    if (t >= c.nthreads)
      fail(std::string(op_name(me)) + " at " + where(me.site) + ": mask names lane " + std::to_string(lane) +
           ", which does not exist (the block has " + std::to_string(c.nthreads) + " threads)");
    const Fiber& f = c.fibers[t];
    if (f.state == State::runnable) return;  // not there yet
    const bool same = f.state == State::at_warp_op && f.op == me.op && f.mask == me.mask && same_site(f.site, me.site) &&
                      (me.op != WarpOp::exchange || f.op_name == me.op_name || std::strcmp(f.op_name, me.op_name) == 0);
    if (!same)
      fail(describe(c, self) + " with mask " + hex(me.mask) + ", but lane " + std::to_string(lane) + ": " +
           describe(c, t) + (f.state == State::at_warp_op ? " with mask " + hex(f.mask) : std::string()));
  }
  if (me.op == WarpOp::exchange) {
    WarpLanes lanes{};
    lanes.mask = me.mask;
    lanes.site = me.site;
    for (unsigned lane = 0; lane < 32; ++lane)
      if (me.mask >> lane & 1u) {
        lanes.slot[lane] = c.fibers[warp0 + lane].slot;
        lanes.tid[lane] = warp0 + lane;
      }
    me.compute(lanes);
  } else {
    for (unsigned lane = 0; lane < 32; ++lane) {
      if (!(me.mask >> lane & 1u)) continue;
      Fiber& f = c.fibers[warp0 + lane];
      if (me.op == WarpOp::ballot) {
        uint64_t bits = 0;
        for (unsigned l = 0; l < 32; ++l)
          if ((me.mask >> l & 1u) && c.fibers[warp0 + l].value) bits |= 1ull << l;
        f.result = bits;
      } else {
        const unsigned arg = static_cast<unsigned>(me.arg);  // xor mask, or source lane (modulo the width, 32)
        const unsigned src = me.op == WarpOp::shfl_xor ? (lane ^ arg) : (arg & 31u);
        if (src >= 32 || !(me.mask >> src & 1u))
          fail(std::string(op_name(me)) + " at " + where(me.site) + ": lane " + std::to_string(lane) + " reads lane " +
               std::to_string(src) + ", which is not in the mask");
        f.result = c.fibers[warp0 + src].value;
      }
    }
  }
  ++c.warp_epoch[self / 32];
  c.warp_waiting[self / 32] -= __builtin_popcount(me.mask);
  for (unsigned lane = 0; lane < 32; ++lane)
    if (me.mask >> lane & 1u) c.fibers[warp0 + lane].state = State::runnable;
}

// No fiber is runnable: release the barrier if every thread waits at the same one, or report why not.
void resolve_stall(Cta& c) {
  int first_barrier = -1;
  for (unsigned i = 0; i < c.nthreads; ++i) {
    const Fiber& f = c.fibers[i];
    if (f.state == State::at_warp_op)
      fail_launch(c, describe(c, i) + ", and some lane named in its mask never arrives");
    if (f.state == State::at_barrier && first_barrier < 0) first_barrier = static_cast<int>(i);
  }
  const Fiber& first = c.fibers[first_barrier];
  for (unsigned i = 0; i < c.nthreads; ++i) {
    const Fiber& f = c.fibers[i];
    const bool same = f.state == State::at_barrier && same_site(f.site, first.site);
    if (!same) fail_launch(c, "barrier divergence: " + describe(c, first_barrier) + ", but " + describe(c, i));
  }
  for (Fiber& f : c.fibers) f.state = State::runnable;
  ++c.epoch;
}

void run_cta(Cta& c) {
  for (unsigned i = 0; i < c.nthreads; ++i) {
    Fiber& f = c.fibers[i];
    f.state = State::runnable;
    f.cp_open.clear();
    f.cp_groups.clear();
    fiber_make(f.ctx, c.stacks.get() + i * kStackBytes, kStackBytes, fiber_main);
  }
  ++c.epoch;
  c.cta_first_epoch = c.epoch;
  std::fill(c.warp_waiting.begin(), c.warp_waiting.end(), 0);
  for (;;) {
    bool ran = false, live = false;
    for (unsigned i = 0; i < c.nthreads; ++i) {
      Fiber& f = c.fibers[i];
      if (f.state != State::runnable) {
        live |= f.state != State::done;
        continue;
      }
      ran = live = true;
      c.current = i;
      threadIdx = f.idx;
      fiber_switch(c.scheduler, f.ctx);
      if (c.thrown) std::rethrow_exception(c.thrown);
      if (!c.error.empty()) fail_launch(c, c.error);
    }
    if (!live) return;
    if (!ran) resolve_stall(c);
  }
}

// The top of the calling thread's stack (0 if unknown).
uintptr_t host_stack_top() {
  pthread_attr_t attr;
  if (pthread_getattr_np(pthread_self(), &attr) != 0) return 0;
  void* addr = nullptr;
  size_t size = 0;
  uintptr_t top = 0;
  if (pthread_attr_getstack(&attr, &addr, &size) == 0) top = reinterpret_cast<uintptr_t>(addr) + size;
  pthread_attr_destroy(&attr);
  return top;
}

}  // namespace

std::string thread_name(unsigned tid) {
  const Fiber& f = g_cta->fibers[tid];
  std::ostringstream o;
  o << "thread (" << f.idx.x << "," << f.idx.y << "," << f.idx.z << ")";
  return o.str();
}

void fail(const std::string& msg) {
  Cta& c = *g_cta;
  if (c.error.empty()) c.error = msg;
  switch_to_scheduler();  // never resumed: the scheduler throws
  std::abort();
}

void syncthreads(const char* file, int line) {
  Cta& c = *g_cta;
  Fiber& f = c.fibers[c.current];
  f.state = State::at_barrier;
  f.site = {file, line};
  switch_to_scheduler();
}

namespace {
void arrive(Cta& c, unsigned self, unsigned mask, Site site) {
  Fiber& f = c.fibers[self];
  if (!(mask >> (self % 32) & 1u))
    fail(std::string(op_name(f)) + " at " + where(site) + ": " + thread_name(self) +
         " calls it but is not in the mask " + hex(mask));
  // the rendezvous can complete only once as many lanes as the mask names wait (one scan per collective)
  if (++c.warp_waiting[self / 32] >= __builtin_popcount(mask)) try_complete_warp_op(c, self);
  if (f.state != State::runnable) switch_to_scheduler();
}
}  // namespace

uint64_t warp_collective(WarpOp op, unsigned mask, uint64_t value, int arg, int width, Site site) {
  Cta& c = *g_cta;
  const unsigned self = c.current;
  Fiber& f = c.fibers[self];
  f.state = State::at_warp_op;
  f.site = site;
  f.op = op;
  f.mask = mask;
  f.value = value;
  f.arg = arg;
  if (width != 32) fail(std::string(op_name(f)) + " at " + where(site) + ": width other than 32 is not emulated");
  arrive(c, self, mask, site);
  return f.result;
}

void warp_exchange(const char* name, unsigned mask, void* slot, void (*compute)(const WarpLanes&), Site site) {
  Cta& c = *g_cta;
  const unsigned self = c.current;
  Fiber& f = c.fibers[self];
  f.state = State::at_warp_op;
  f.site = site;
  f.op = WarpOp::exchange;
  f.op_name = name;
  f.mask = mask;
  f.slot = slot;
  f.compute = compute;
  arrive(c, self, mask, site);
}

void* dynamic_shared_base() { return g_cta->shared_dynamic.base; }

void* static_shared(const void* site, size_t bytes, const char* name) {
  Cta& c = *g_cta;
  for (const auto& d : c.declared)
    if (d.first == site) return c.shared_declared.base + d.second;
  const size_t offset = (c.declared_used + 15) / 16 * 16;
  if (offset + bytes > kMaxStaticShared)
    fail(std::string("static shared memory: declaring '") + name + "' (" + std::to_string(bytes) +
         " bytes) takes the kernel past " + std::to_string(kMaxStaticShared) + " bytes");
  c.declared.emplace_back(site, offset);
  c.declared_used = offset + bytes;
  return c.shared_declared.base + offset;
}
unsigned current_thread() { return g_cta->current; }

bool set_max_dynamic_shared(const void* fn, size_t bytes) {
  if (bytes > kMaxDynamicShared) return false;
  std::lock_guard<std::mutex> lock(g_registry_mutex);
  g_max_dynamic[fn] = bytes;
  return true;
}

std::map<std::string, int64_t> launch_counts() {
  std::lock_guard<std::mutex> lock(g_registry_mutex);
  return g_counts;
}

void set_checks(bool on) { g_checks = on; }
bool checks_enabled() { return g_checks; }

GlobalArgs::GlobalArgs(std::vector<GlobalRange> ranges) { t_globals = std::move(ranges); }
GlobalArgs::~GlobalArgs() { t_globals.clear(); }

void launch(const char* kernel, const void* fn, Dims grid, Dims block, size_t dynamic_shared_bytes,
            const std::function<void()>& body) {
  const unsigned nthreads = block.x * block.y * block.z;
  const std::string name = std::string("kernel '") + kernel + "'";
  if (nthreads == 0 || nthreads > 1024 || uint64_t{grid.x} * grid.y * grid.z == 0 || grid.y > 65535 ||
      grid.z > 65535)
    throw KernelError(name + ": invalid launch configuration (cudaErrorInvalidConfiguration)");
  {
    std::lock_guard<std::mutex> lock(g_registry_mutex);
    auto it = g_max_dynamic.find(fn);
    const size_t limit = it == g_max_dynamic.end() ? kDefaultDynamicShared : it->second;
    if (dynamic_shared_bytes > limit)
      throw KernelError(name + ": " + std::to_string(dynamic_shared_bytes) +
                        " bytes of dynamic shared memory exceed the kernel's limit of " + std::to_string(limit) +
                        " (cudaFuncSetAttribute(cudaFuncAttributeMaxDynamicSharedMemorySize))");
    ++g_counts[kernel];
  }
  std::lock_guard<std::mutex> lock(g_launch_mutex);
  Cta c;
  c.kernel = kernel;
  c.body = &body;
  c.nthreads = nthreads;
  c.fibers.resize(nthreads);
  c.stacks_bytes = nthreads * kStackBytes;
  c.stacks.reset(new char[c.stacks_bytes]);
  for (unsigned i = 0; i < nthreads; ++i) c.fibers[i].idx = {i % block.x, i / block.x % block.y, i / (block.x * block.y)};
  c.warp_epoch.assign((nthreads + 31) / 32, 0);
  c.warp_waiting.assign((nthreads + 31) / 32, 0);
  c.dynamic_storage.resize(dynamic_shared_bytes + 2 * kSharedGuard);
  c.shared_dynamic.base = c.dynamic_storage.data() + kSharedGuard;
  c.shared_dynamic.size = dynamic_shared_bytes;
  c.shared_dynamic.guard = kSharedGuard;
  c.declared_storage.resize(kMaxStaticShared + 2 * kSharedGuard);
  c.shared_declared.base = c.declared_storage.data() + kSharedGuard;
  c.shared_declared.size = kMaxStaticShared;
  c.shared_declared.guard = kSharedGuard;
  if (+__start_cuda_emu_shared != +__stop_cuda_emu_shared) {
    c.shared_static.base = reinterpret_cast<unsigned char*>(__start_cuda_emu_shared);
    c.shared_static.size = static_cast<size_t>(__stop_cuda_emu_shared - __start_cuda_emu_shared);
  }
  c.checks = g_checks;
  c.globals = t_globals;
  c.host_stack_lo = reinterpret_cast<uintptr_t>(__builtin_frame_address(0));  // the frames of launch's callers
  c.host_stack_hi = host_stack_top();
  shadow_begin_launch(c);
  struct Restore {
    ~Restore() {
      g_cta = nullptr;
      g_checking = false;
    }
  } restore;
  g_cta = &c;
  blockDim = dim3(block.x, block.y, block.z);
  gridDim = dim3(grid.x, grid.y, grid.z);
  for (unsigned z = 0; z < grid.z; ++z)
    for (unsigned y = 0; y < grid.y; ++y)
      for (unsigned x = 0; x < grid.x; ++x) {
        c.block_idx = {x, y, z};
        blockIdx = c.block_idx;
        if (c.shared_static.size) std::memset(c.shared_static.base, kPoisonByte, c.shared_static.size);
        std::memset(c.shared_dynamic.base, kPoisonByte, c.shared_dynamic.size);
        std::memset(c.shared_declared.base, kPoisonByte, c.declared.empty() ? c.shared_declared.size : c.declared_used);
        run_cta(c);
      }
}

}  // namespace cuda_emu

namespace cuda_emu {
namespace {
template <typename T, typename Op>
T rmw(T* p, T v, Op op) {
  if (g_cta && g_cta->checks) check_access(p, sizeof(T), Access::atomic, g_cta->current);
  T old;
  std::memcpy(&old, p, sizeof(T));
  const T now = op(old, v);
  std::memcpy(p, &now, sizeof(T));
  return old;
}
}  // namespace
int atomic_add(int* p, int v) {
  return rmw(p, v, [](int a, int b) { return static_cast<int>(static_cast<unsigned>(a) + static_cast<unsigned>(b)); });
}
unsigned atomic_add(unsigned* p, unsigned v) { return rmw(p, v, [](unsigned a, unsigned b) { return a + b; }); }
unsigned long long atomic_add(unsigned long long* p, unsigned long long v) {
  return rmw(p, v, [](unsigned long long a, unsigned long long b) { return a + b; });
}
float atomic_add(float* p, float v) { return rmw(p, v, [](float a, float b) { return a + b; }); }
double atomic_add(double* p, double v) { return rmw(p, v, [](double a, double b) { return a + b; }); }
int atomic_max(int* p, int v) { return rmw(p, v, [](int a, int b) { return a > b ? a : b; }); }
int atomic_exch(int* p, int v) { return rmw(p, v, [](int, int b) { return b; }); }
}  // namespace cuda_emu
