#include "fiber.h"

#include <cstdint>
#include <cstring>

#if defined(__x86_64__)
// cuda_emu_fiber_switch(void** save_sp, void* new_sp): push the callee-saved registers and the floating-point
// control state on the current stack, store the stack pointer, load the other one and pop its state.
asm(R"(
    .text
    .globl cuda_emu_fiber_switch
    .hidden cuda_emu_fiber_switch
    .type cuda_emu_fiber_switch,@function
cuda_emu_fiber_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    subq $8, %rsp
    stmxcsr (%rsp)
    fnstcw 4(%rsp)
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    ldmxcsr (%rsp)
    fldcw 4(%rsp)
    addq $8, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size cuda_emu_fiber_switch, .-cuda_emu_fiber_switch
)");
extern "C" void cuda_emu_fiber_switch(void** save_sp, void* new_sp);
#endif

namespace cuda_emu {

#if defined(__x86_64__)
void fiber_make(FiberContext& f, char* stack, size_t size, void (*entry)()) {
  auto top = (reinterpret_cast<uintptr_t>(stack) + size) & ~uintptr_t{15};
  auto* slot = reinterpret_cast<uint64_t*>(top);
  slot[-1] = 0;                                      // a null return address above the entry, for backtraces
  slot[-2] = reinterpret_cast<uintptr_t>(entry);     // `ret` lands here with rsp = top - 8, as after a call
  for (int i = 3; i <= 8; ++i) slot[-i] = 0;         // rbp, rbx, r12..r15
  uint32_t mxcsr;
  uint16_t fpucw;
  asm volatile("stmxcsr %0" : "=m"(mxcsr));
  asm volatile("fnstcw %0" : "=m"(fpucw));
  char* state = reinterpret_cast<char*>(&slot[-9]);  // the current floating-point modes
  std::memcpy(state, &mxcsr, 4);
  std::memcpy(state + 4, &fpucw, 2);
  f.sp = &slot[-9];
}

void fiber_switch(FiberContext& from, FiberContext& to) { cuda_emu_fiber_switch(&from.sp, to.sp); }
#else
void fiber_make(FiberContext& f, char* stack, size_t size, void (*entry)()) {
  getcontext(&f.uc);
  f.uc.uc_stack.ss_sp = stack;
  f.uc.uc_stack.ss_size = size;
  f.uc.uc_link = nullptr;
  makecontext(&f.uc, entry, 0);
}

void fiber_switch(FiberContext& from, FiberContext& to) { swapcontext(&from.uc, &to.uc); }
#endif

}  // namespace cuda_emu
