// Grow-only, per-thread scratch memory for the temporaries of a kernel call (packed keys and values, quantized or
// padded activations). A large temporary taken from malloc on every call can come back as fresh pages each time
// (glibc returns the top of the heap to the OS past its trim threshold), and first-touch page faults then cost more
// than the work at decoding's shapes: CPU attention of 32 queries against 1024 keys took 2.1 ms with per-call
// buffers and 0.6 ms with the memory kept (AMD EPYC Zen 5, 2 threads). The calling thread (not the OpenMP workers)
// takes the scratch; each slot belongs to one kernel family, which never calls another kernel using the same slot.
// The memory is held until the thread exits (the largest call's size per slot).
#pragma once
#include <cstddef>

namespace illada::cpu {

enum class ScratchSlot : int {
  attention_keys, attention_values, attention_mask,  // attention_avx512
  linear_activations, linear_scales,                 // linear_w8a8_segments (quantized x and its row scales)
  linear_swiglu,                                     // linear_w8a8_segments' swiglu(gate, up) rows (the down projection)
  gemm_operand,                                      // a GEMM's own padded copy of A (AMX kernels, odd-K FP8)
  gemm_bf16_operand,                                 // gemm_bf16_avx2's x widened to fp32
  layer_stack,                                       // layer_stack's activations (norm output, q/k/v, MLP rows)
  count
};

// At least `bytes` of 64-byte aligned memory, contents unspecified; valid until the next call for the same slot on
// this thread.
void* scratch(ScratchSlot slot, size_t bytes);

// Frees a slot's memory on this thread (the next call for it allocates again): for a call that needed far more than
// the usual, whose memory should not stay held while the thread idles.
void release_scratch(ScratchSlot slot);

template <class T>
T* scratch_as(ScratchSlot slot, size_t n) {
  return static_cast<T*>(scratch(slot, n * sizeof(T)));
}

}  // namespace illada::cpu
