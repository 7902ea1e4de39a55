// Cooperative fibers for the emulator's threads. On x86-64 a switch saves and restores only the callee-saved
// registers, MXCSR and the x87 control word (tens of nanoseconds; a kernel emulation switches millions of times);
// elsewhere it falls back to ucontext, whose swapcontext also makes a signal-mask system call.
#pragma once
#include <cstddef>

#if !defined(__x86_64__)
#include <ucontext.h>
#endif

namespace cuda_emu {

struct FiberContext {
#if defined(__x86_64__)
  void* sp = nullptr;
#else
  ucontext_t uc;
#endif
};

// Prepares `f` to start `entry` (which must never return) on the given stack.
void fiber_make(FiberContext& f, char* stack, size_t size, void (*entry)());
// Saves the running context into `from` and resumes `to`.
void fiber_switch(FiberContext& from, FiberContext& to);

}  // namespace cuda_emu
