// Per-thread grow-only scratch (see scratch.h).
#include "scratch.h"

#include <cstdlib>
#include <new>

namespace illada::cpu {

namespace {

struct Slots {
  void* ptr[static_cast<int>(ScratchSlot::count)] = {};
  size_t cap[static_cast<int>(ScratchSlot::count)] = {};
  ~Slots() {
    for (void* p : ptr) std::free(p);
  }
};

thread_local Slots slots;

}  // namespace

void* scratch(ScratchSlot slot, size_t bytes) {
  const int s = static_cast<int>(slot);
  if (bytes > slots.cap[s] || slots.ptr[s] == nullptr) {
    // grow by at least half again, so a canvas that lengthens step by step does not reallocate every call
    size_t cap = bytes + bytes / 2;
    cap = (cap + 63) / 64 * 64;
    if (cap == 0) cap = 64;
    void* p = std::aligned_alloc(64, cap);
    if (p == nullptr) throw std::bad_alloc();
    std::free(slots.ptr[s]);
    slots.ptr[s] = p;
    slots.cap[s] = cap;
  }
  return slots.ptr[s];
}

void release_scratch(ScratchSlot slot) {
  const int s = static_cast<int>(slot);
  std::free(slots.ptr[s]);
  slots.ptr[s] = nullptr;
  slots.cap[s] = 0;
}

}  // namespace illada::cpu
