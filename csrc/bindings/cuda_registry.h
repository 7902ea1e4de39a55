// One register_cuda_<area> per area of CUDA ops; module_cuda.cpp calls each.
#pragma once
#include <pybind11/pybind11.h>

#include <initializer_list>
#include <stdexcept>
#include <string>

#include "dlpack_view.h"
#ifdef ILLADA_CUDA_EMU
#include "../cuda_emu/runtime.h"
#endif

namespace illada::bind {
void register_cuda_attention(pybind11::module_& m);
void register_cuda_sampling(pybind11::module_& m);
void register_cuda_probe(pybind11::module_& m);
void register_cuda_gemm(pybind11::module_& m);

// Raises unless `device` is the calling thread's current CUDA device (kernels launch on the current device).
void check_current_device(int device);

// Check the current device, then run a kernel launcher (returns "" or a CUDA error text) without the GIL and raise
// RuntimeError on error. `args` are the launch's tensors: on the emulator, the only global memory its kernels may
// touch (an access outside them is reported with the nearest one's name).
template <typename Launch>
void launch_on(int device, std::initializer_list<const TensorView*> args, Launch&& launch) {
  std::string err;
#ifdef ILLADA_CUDA_EMU
  (void)device;
  std::vector<cuda_emu::GlobalRange> ranges;
  for (const TensorView* t : args) {
    const auto span = t->byte_span();
    if (span.first != span.second) ranges.push_back({t->name, span.first, span.second});
  }
  {
    pybind11::gil_scoped_release nogil;
    cuda_emu::GlobalArgs declared(std::move(ranges));
    err = launch();
  }
#else
  (void)args;
  check_current_device(device);
  {
    pybind11::gil_scoped_release nogil;
    err = launch();
  }
#endif
  if (!err.empty()) throw std::runtime_error(err);
}
}  // namespace illada::bind
