// Fiber scheduler of the emulator: one CTA at a time on the calling OS thread, its threads as ucontext fibers.
// A fiber runs until it reaches __syncthreads, a warp collective or its end; the scheduler then resumes the next
// runnable one. When none is runnable, every live thread must wait at the same barrier (released together), or
// the launch stops with a KernelError: divergence is reported, never a hang.
#include <ucontext.h>

#include <exception>
#include <memory>
#include <mutex>
#include <sstream>
#include <vector>

#include "cuda_names.h"

extern "C" {
extern char __start_cuda_emu_shared[] __attribute__((weak));
extern char __stop_cuda_emu_shared[] __attribute__((weak));
}

namespace cuda_emu {
namespace {

enum class State { runnable, at_barrier, at_warp_op, done };

struct Fiber {
  ucontext_t ctx;
  std::unique_ptr<char[]> stack;
  uint3 idx{};
  State state = State::runnable;
  Site site{nullptr, 0};  // where it waits
  WarpOp op{};
  unsigned mask = 0;
  uint64_t value = 0;
  int arg = 0;
  uint64_t result = 0;
};

constexpr size_t kStackBytes = 128 * 1024;

struct Cta {
  const char* kernel = "";
  const std::function<void()>* body = nullptr;
  uint3 block_idx{};
  unsigned nthreads = 0;
  std::vector<Fiber> fibers;
  std::vector<unsigned char> dynamic_shared;
  ucontext_t scheduler;
  unsigned current = 0;
  std::string error;
  std::exception_ptr thrown;
};

thread_local Cta* g_cta = nullptr;
std::mutex g_launch_mutex;  // the static shared section is one per process

std::string where(const Site& s) { return std::string(s.file) + ":" + std::to_string(s.line); }

std::string thread_name(const Fiber& f) {
  std::ostringstream o;
  o << "thread (" << f.idx.x << "," << f.idx.y << "," << f.idx.z << ")";
  return o.str();
}

std::string hex(unsigned v) {
  std::ostringstream o;
  o << "0x" << std::hex << v;
  return o.str();
}

const char* op_name(WarpOp op) {
  switch (op) {
    case WarpOp::shfl_xor: return "__shfl_xor_sync";
    case WarpOp::shfl_idx: return "__shfl_sync";
    default: return "__ballot_sync";
  }
}

std::string describe(const Fiber& f) {
  switch (f.state) {
    case State::done: return thread_name(f) + " has exited";
    case State::at_barrier: return thread_name(f) + " waits at __syncthreads at " + where(f.site);
    case State::at_warp_op: return thread_name(f) + " waits at " + std::string(op_name(f.op)) + " at " + where(f.site);
    default: return thread_name(f) + " is running";
  }
}

void fiber_main() {
  Cta& c = *g_cta;
  try {
    (*c.body)();
  } catch (...) {
    c.thrown = std::current_exception();
  }
  c.fibers[c.current].state = State::done;
  // returning resumes uc_link (the scheduler)
}

// From inside a fiber: give control back to the scheduler.
void yield_to_scheduler() {
  Cta& c = *g_cta;
  swapcontext(&c.fibers[c.current].ctx, &c.scheduler);
}

void fail_in_fiber(const std::string& msg) {
  Cta& c = *g_cta;
  if (c.error.empty()) c.error = msg;
  yield_to_scheduler();  // never resumed: the scheduler throws
}

[[noreturn]] void fail(const Cta& c, const std::string& msg) {
  std::ostringstream o;
  o << "kernel '" << c.kernel << "', block (" << c.block_idx.x << "," << c.block_idx.y << "," << c.block_idx.z
    << "): " << msg;
  throw KernelError(o.str());
}

// Completes the rendezvous of the warp of lane `self` if every lane named in the mask has arrived at the same
// operation; reports a lane that exited, waits elsewhere, or does not exist.
void try_complete_warp_op(Cta& c, unsigned self) {
  Fiber& me = c.fibers[self];
  unsigned warp0 = self / 32 * 32;
  for (unsigned lane = 0; lane < 32; ++lane) {
    if (!(me.mask >> lane & 1u)) continue;
    unsigned t = warp0 + lane;
    if (t >= c.nthreads) {
      fail_in_fiber(std::string(op_name(me.op)) + " at " + where(me.site) + ": mask names lane " +
                    std::to_string(lane) + ", which does not exist (the block has " + std::to_string(c.nthreads) +
                    " threads)");
      return;
    }
    const Fiber& f = c.fibers[t];
    if (f.state == State::runnable) return;  // not there yet
    bool same = f.state == State::at_warp_op && f.op == me.op && f.mask == me.mask && f.site.line == me.site.line &&
                std::string(f.site.file) == me.site.file;
    if (!same) {
      fail_in_fiber(describe(me) + " with mask " + hex(me.mask) + ", but lane " + std::to_string(lane) + ": " +
                    describe(f) + (f.state == State::at_warp_op ? " with mask " + hex(f.mask) : std::string()));
      return;
    }
  }
  for (unsigned lane = 0; lane < 32; ++lane) {
    if (!(me.mask >> lane & 1u)) continue;
    Fiber& f = c.fibers[warp0 + lane];
    if (me.op == WarpOp::ballot) {
      uint64_t bits = 0;
      for (unsigned l = 0; l < 32; ++l)
        if ((me.mask >> l & 1u) && c.fibers[warp0 + l].value) bits |= 1ull << l;
      f.result = bits;
    } else {
      unsigned arg = static_cast<unsigned>(me.arg);  // xor mask, or source lane (modulo the width, 32)
      unsigned src = me.op == WarpOp::shfl_xor ? (lane ^ arg) : (arg & 31u);
      if (src >= 32 || !(me.mask >> src & 1u)) {
        fail_in_fiber(std::string(op_name(me.op)) + " at " + where(me.site) + ": lane " + std::to_string(lane) +
                      " reads lane " + std::to_string(src) + ", which is not in the mask");
        return;
      }
      f.result = c.fibers[warp0 + src].value;
    }
  }
  for (unsigned lane = 0; lane < 32; ++lane)
    if (me.mask >> lane & 1u) c.fibers[warp0 + lane].state = State::runnable;
}

// No fiber is runnable: release the barrier if every thread waits at the same one, or report why not.
void resolve_stall(Cta& c) {
  const Fiber* first_barrier = nullptr;
  for (const Fiber& f : c.fibers) {
    if (f.state == State::at_warp_op) fail(c, describe(f) + ", and some lane named in its mask never arrives");
    if (f.state == State::at_barrier && !first_barrier) first_barrier = &f;
  }
  for (const Fiber& f : c.fibers) {
    bool same = f.state == State::at_barrier && f.site.line == first_barrier->site.line &&
                std::string(f.site.file) == first_barrier->site.file;
    if (!same) fail(c, "barrier divergence: " + describe(*first_barrier) + ", but " + describe(f));
  }
  for (Fiber& f : c.fibers) f.state = State::runnable;
}

void run_cta(Cta& c) {
  for (unsigned i = 0; i < c.nthreads; ++i) {
    Fiber& f = c.fibers[i];
    f.state = State::runnable;
    getcontext(&f.ctx);
    f.ctx.uc_stack.ss_sp = f.stack.get();
    f.ctx.uc_stack.ss_size = kStackBytes;
    f.ctx.uc_link = &c.scheduler;
    makecontext(&f.ctx, fiber_main, 0);
  }
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
      swapcontext(&c.scheduler, &f.ctx);
      if (c.thrown) std::rethrow_exception(c.thrown);
      if (!c.error.empty()) fail(c, c.error);
    }
    if (!live) return;
    if (!ran) resolve_stall(c);
  }
}

}  // namespace

void syncthreads(const char* file, int line) {
  Cta& c = *g_cta;
  Fiber& f = c.fibers[c.current];
  f.state = State::at_barrier;
  f.site = {file, line};
  yield_to_scheduler();
}

uint64_t warp_collective(WarpOp op, unsigned mask, uint64_t value, int arg, int width, Site site) {
  Cta& c = *g_cta;
  unsigned self = c.current;
  Fiber& f = c.fibers[self];
  f.state = State::at_warp_op;
  f.site = site;
  f.op = op;
  f.mask = mask;
  f.value = value;
  f.arg = arg;
  if (width != 32) fail_in_fiber(std::string(op_name(op)) + " at " + where(site) + ": width other than 32 is not emulated yet");
  if (!(mask >> (self % 32) & 1u))
    fail_in_fiber(std::string(op_name(op)) + " at " + where(site) + ": " + thread_name(f) +
                  " calls it but is not in the mask");
  try_complete_warp_op(c, self);
  if (f.state != State::runnable) yield_to_scheduler();
  return f.result;
}

void* dynamic_shared_base() { return g_cta->dynamic_shared.data(); }

void launch(const char* kernel, Dims grid, Dims block, size_t dynamic_shared_bytes, const std::function<void()>& body) {
  unsigned nthreads = block.x * block.y * block.z;
  if (nthreads == 0 || nthreads > 1024 || grid.x * grid.y * grid.z == 0)
    throw KernelError(std::string("kernel '") + kernel + "': invalid launch configuration");
  std::lock_guard<std::mutex> lock(g_launch_mutex);
  Cta c;
  c.kernel = kernel;
  c.body = &body;
  c.nthreads = nthreads;
  c.fibers.resize(nthreads);
  for (unsigned i = 0; i < nthreads; ++i) {
    c.fibers[i].stack.reset(new char[kStackBytes]);
    c.fibers[i].idx = {i % block.x, i / block.x % block.y, i / (block.x * block.y)};
  }
  c.dynamic_shared.resize(dynamic_shared_bytes);
  struct Restore {
    ~Restore() { g_cta = nullptr; }
  } restore;
  g_cta = &c;
  blockDim = dim3(block.x, block.y, block.z);
  gridDim = dim3(grid.x, grid.y, grid.z);
  for (unsigned z = 0; z < grid.z; ++z)
    for (unsigned y = 0; y < grid.y; ++y)
      for (unsigned x = 0; x < grid.x; ++x) {
        c.block_idx = {x, y, z};
        blockIdx = c.block_idx;
        if (+__start_cuda_emu_shared != +__stop_cuda_emu_shared)
          std::memset(__start_cuda_emu_shared, kPoisonByte, __stop_cuda_emu_shared - __start_cuda_emu_shared);
        std::memset(c.dynamic_shared.data(), kPoisonByte, c.dynamic_shared.size());
        run_cta(c);
      }
}

}  // namespace cuda_emu
