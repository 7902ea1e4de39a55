// The emulator's checkers, fed by every load and store of kernel code: the kernel sources are compiled with
// ThreadSanitizer's instrumentation pass, so the compiler calls __tsan_{read,write}N before each access, and this
// file supplies those functions (no sanitizer runtime is linked).
//
// - Shared memory (both windows) has a per-byte shadow: the last writer and the readers of the current barrier
//   interval. Two accesses by different threads in one interval, at least one a write, are a race unless both
//   threads are lanes of one warp and a collective of that warp (shuffle, ballot, ldmatrix, mma) came between.
//   Atomics do not race with atomics. A read of a byte that no thread of this CTA wrote is uninitialized; a read
//   of a byte whose cp.async has not landed (no covering cp.async.wait_group yet) is reported as such.
// - Any other address must lie in a tensor argument of the launch (GlobalArgs), in a fiber's stack, in the
//   launching thread's frames (the kernel's parameters), in this module's image, or be one of the index
//   variables; anything else is an out-of-bounds access, reported with the nearest argument.
#include <dlfcn.h>
#include <link.h>

#include <cstdio>
#include <mutex>
#include <sstream>

#include "internal.h"

namespace cuda_emu {
namespace {

struct Image {
  uintptr_t lo = 0, hi = 0;
};
std::vector<Image> g_image;
std::once_flag g_image_once;

// The loaded segments of the module that holds this code (constants, tables, statics).
void find_image() {
  Dl_info info{};
  if (!dladdr(reinterpret_cast<void*>(&find_image), &info)) return;
  struct Ctx {
    const void* base;
    std::vector<Image>* out;
  } ctx{info.dli_fbase, &g_image};
  dl_iterate_phdr(
      [](dl_phdr_info* i, size_t, void* data) {
        auto* x = static_cast<Ctx*>(data);
        bool mine = false;
        for (int k = 0; k < i->dlpi_phnum; ++k)
          if (i->dlpi_phdr[k].p_type == PT_LOAD && i->dlpi_addr + i->dlpi_phdr[k].p_vaddr <=
                                                        reinterpret_cast<uintptr_t>(x->base) + 0x1000 &&
              reinterpret_cast<uintptr_t>(x->base) < i->dlpi_addr + i->dlpi_phdr[k].p_vaddr + i->dlpi_phdr[k].p_memsz)
            mine = true;
        if (!mine) return 0;
        for (int k = 0; k < i->dlpi_phnum; ++k)
          if (i->dlpi_phdr[k].p_type == PT_LOAD) {
            const uintptr_t lo = i->dlpi_addr + i->dlpi_phdr[k].p_vaddr;
            x->out->push_back({lo, lo + i->dlpi_phdr[k].p_memsz});
          }
        return 1;
      },
      &ctx);
}

std::string hexaddr(uintptr_t p) {
  std::ostringstream o;
  o << "0x" << std::hex << p;
  return o.str();
}

bool index_variable(uintptr_t a, size_t n) {
  auto in = [&](const void* obj, size_t size) {
    const auto b = reinterpret_cast<uintptr_t>(obj);
    return a >= b && a + n <= b + size;
  };
  return in(&threadIdx, sizeof threadIdx) || in(&blockIdx, sizeof blockIdx) || in(&blockDim, sizeof blockDim) ||
         in(&gridDim, sizeof gridDim);
}

Window* window_of(Cta& c, uintptr_t a) {
  for (Window* w : {&c.shared_dynamic, &c.shared_declared, &c.shared_static}) {
    const auto b = reinterpret_cast<uintptr_t>(w->base);
    if (w->base && a + w->guard >= b && a < b + w->size + w->guard) return w;
  }
  return nullptr;
}

std::string out_of_bounds(const Cta& c, uintptr_t a, size_t n, Access k, unsigned tid) {
  std::ostringstream o;
  o << "out-of-bounds global " << access_name(k) << " of " << n << " bytes at " << hexaddr(a) << " by "
    << thread_name(tid);
  const GlobalRange* near = nullptr;
  uintptr_t best = UINTPTR_MAX;
  for (const GlobalRange& r : c.globals) {
    const uintptr_t d = a >= r.end ? a - r.end : (a < r.begin ? r.begin - a : 0);
    if (d < best) best = d, near = &r;
  }
  if (near == nullptr) {
    o << " (the launch declared no tensor arguments)";
  } else if (a + n > near->end && a < near->end) {
    o << ": its last " << (a + n - near->end) << " bytes are past the end of `" << near->name << "`";
  } else if (a >= near->end) {
    o << ": " << (a - near->end) << " bytes past the end of `" << near->name << "` (" << (near->end - near->begin)
      << " bytes)";
  } else {
    o << ": " << (near->begin - a) << " bytes before the start of `" << near->name << "`";
  }
  return o.str();
}

bool ordered(const Cta& c, unsigned prev_tid, uint32_t prev_wep, unsigned tid) {
  if (prev_tid == tid) return true;
  return prev_tid / 32 == tid / 32 && c.warp_epoch[tid / 32] > prev_wep;
}

std::string at(const Window& w, uintptr_t a) {
  return w.name + std::string(" offset ") + std::to_string(a - reinterpret_cast<uintptr_t>(w.base));
}

void check_shared(Cta& c, Window& w, uintptr_t a, size_t n, Access k, unsigned tid) {
  const auto b = reinterpret_cast<uintptr_t>(w.base);
  if (a < b || a + n > b + w.size) {
    std::ostringstream o;
    o << "out-of-bounds " << access_name(k) << " of " << n << " bytes of " << w.name << " (" << w.size
      << " bytes) at offset " << static_cast<int64_t>(a - b) << " by " << thread_name(tid);
    fail(o.str());
  }
  const uint32_t wep = c.warp_epoch[tid / 32];
  for (size_t i = 0; i < n; ++i) {
    Cell& cell = w.cells[a - b + i];
    const bool written = cell.w_epoch >= c.cta_first_epoch;
    if (k != Access::write && written && (cell.flags & kPending))
      fail(std::string(access_name(k)) + " of " + at(w, a + i) + " by " + thread_name(tid) + " before the cp.async.wait_group that lands it (" +
           "copy issued by " + thread_name(cell.w_tid) + ")");
    if (k != Access::write && !written)
      fail(std::string(access_name(k)) + " of uninitialized " + at(w, a + i) + " by " + thread_name(tid) +
           " (no thread of this block wrote it)");
    const bool both_atomic = k == Access::atomic && (cell.flags & kAtomic);
    if (written && cell.w_epoch == c.epoch && !both_atomic && !ordered(c, cell.w_tid, cell.w_wep, tid))
      fail("shared-memory race at " + at(w, a + i) + ": " + thread_name(tid) + " " + access_name(k) +
           "s what " + thread_name(cell.w_tid) + " wrote in the same barrier interval");
    if (k != Access::read && cell.r_epoch == c.epoch) {
      const bool reader_ok = !(cell.flags & kMultiWarp) && cell.r_tid / 32 == tid / 32 &&
                             (c.warp_epoch[tid / 32] > cell.r_wep ||
                              (!(cell.flags & kMultiThread) && cell.r_tid == tid));
      if (!reader_ok)
        fail("shared-memory race at " + at(w, a + i) + ": " + thread_name(tid) + " " + access_name(k) +
             "s what " + thread_name(cell.r_tid) + ((cell.flags & (kMultiThread | kMultiWarp)) ? " and others" : "") +
             " read in the same barrier interval");
    }
    if (k == Access::read) {
      if (cell.r_epoch != c.epoch) {
        cell.r_epoch = c.epoch;
        cell.r_tid = static_cast<uint16_t>(tid);
        cell.r_wep = wep;
        cell.flags &= ~(kMultiThread | kMultiWarp);
      } else {
        if (cell.r_tid != tid) cell.flags |= kMultiThread;
        if (cell.r_tid / 32 != tid / 32) cell.flags |= kMultiWarp;
        cell.r_wep = wep;
      }
    } else {
      cell.w_epoch = c.epoch;
      cell.w_tid = static_cast<uint16_t>(tid);
      cell.w_wep = wep;
      cell.flags = (cell.flags & ~(kPending | kAtomic)) | (k == Access::atomic ? kAtomic : 0);
      cell.r_epoch = 0;
    }
  }
}

}  // namespace

const char* access_name(Access a) {
  switch (a) {
    case Access::read: return "read";
    case Access::write: return "write";
    default: return "atomic";
  }
}

void shadow_begin_launch(Cta& c) {
  std::call_once(g_image_once, find_image);
  for (Window* w : {&c.shared_static, &c.shared_dynamic, &c.shared_declared})
    w->cells.assign(c.checks ? w->size : 0, Cell{});
}

bool in_shared(const void* p, size_t n) {
  Cta& c = *g_cta;
  const auto a = reinterpret_cast<uintptr_t>(p);
  for (const Window* w : {&c.shared_dynamic, &c.shared_declared, &c.shared_static}) {
    const auto b = reinterpret_cast<uintptr_t>(w->base);
    if (w->base && a >= b && a + n <= b + w->size) return true;
  }
  return false;
}

void check_access(const void* p, size_t n, Access k, unsigned tid) {
  Cta& c = *g_cta;
  if (!c.checks) return;
  const auto a = reinterpret_cast<uintptr_t>(p);
  const auto stacks = reinterpret_cast<uintptr_t>(c.stacks.get());
  if (a >= stacks && a + n <= stacks + c.stacks_bytes) return;
  if (Window* w = window_of(c, a)) return check_shared(c, *w, a, n, k, tid);
  for (const GlobalRange& r : c.globals)
    if (a >= r.begin && a + n <= r.end) return;
  if (a >= c.host_stack_lo && a + n <= c.host_stack_hi) return;
  for (const Image& m : g_image)
    if (a >= m.lo && a + n <= m.hi) {
      if (k == Access::read) return;  // constants and tables
      fail(std::string(access_name(k)) + " of a host global at " + hexaddr(a) + " by " + thread_name(tid) +
           ": a `__shared__` variable inside a function template? (GCC drops the section attribute of static "
           "locals in templates: declare shared memory with ILLADA_SHARED, csrc/cuda/launch.cuh)");
    }
  if (index_variable(a, n)) return;
  fail(out_of_bounds(c, a, n, k, tid));
}

void mark_pending(void* dst, size_t n, unsigned tid) {
  Cta& c = *g_cta;
  std::memset(dst, kPoisonByte, n);
  if (!c.checks) return;
  const auto a = reinterpret_cast<uintptr_t>(dst);
  Window* w = window_of(c, a);
  check_shared(c, *w, a, n, Access::write, tid);
  for (size_t i = 0; i < n; ++i) w->cells[a - reinterpret_cast<uintptr_t>(w->base) + i].flags |= kPending;
}

void land(void* dst, const void* src, size_t n, unsigned tid) {
  Cta& c = *g_cta;
  std::memcpy(dst, src, n);
  if (!c.checks) return;
  const auto a = reinterpret_cast<uintptr_t>(dst);
  Window* w = window_of(c, a);
  for (size_t i = 0; i < n; ++i) {
    Cell& cell = w->cells[a - reinterpret_cast<uintptr_t>(w->base) + i];
    cell.flags &= ~kPending;
    cell.w_epoch = c.epoch;
    cell.w_tid = static_cast<uint16_t>(tid);
    cell.w_wep = c.warp_epoch[tid / 32];
  }
}

}  // namespace cuda_emu

// ---- the instrumentation's entry points (ThreadSanitizer's compiler pass; no TSan runtime is linked) ----
using cuda_emu::Access;
namespace {
inline void hook(uintptr_t p, size_t n, Access k) {
  if (cuda_emu::g_checking) cuda_emu::check_access(reinterpret_cast<const void*>(p), n, k, cuda_emu::g_cta->current);
}
}  // namespace
extern "C" {
#define CUDA_EMU_HOOKS(n)                                                           \
  void __tsan_read##n(uintptr_t p) { hook(p, n, Access::read); }                   \
  void __tsan_write##n(uintptr_t p) { hook(p, n, Access::write); }                 \
  void __tsan_unaligned_read##n(uintptr_t p) { hook(p, n, Access::read); }         \
  void __tsan_unaligned_write##n(uintptr_t p) { hook(p, n, Access::write); }
CUDA_EMU_HOOKS(1)
CUDA_EMU_HOOKS(2)
CUDA_EMU_HOOKS(4)
CUDA_EMU_HOOKS(8)
CUDA_EMU_HOOKS(16)
void __tsan_read_range(uintptr_t p, size_t n) { hook(p, n, Access::read); }
void __tsan_write_range(uintptr_t p, size_t n) { hook(p, n, Access::write); }
void __tsan_init() {}
void __tsan_func_entry(void*) {}
void __tsan_func_exit() {}
}
