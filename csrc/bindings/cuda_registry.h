// One register_cuda_<area> per area of CUDA ops; module_cuda.cpp calls each.
#pragma once
#include <pybind11/pybind11.h>

#include <stdexcept>
#include <string>

namespace illada::bind {
void register_cuda_attention(pybind11::module_& m);
void register_cuda_sampling(pybind11::module_& m);

// Raises unless `device` is the calling thread's current CUDA device (kernels launch on the current device).
void check_current_device(int device);

// Check the current device, then run a kernel launcher (returns "" or a CUDA error text) without the GIL and raise
// RuntimeError on error.
template <typename Launch>
void launch_on(int device, Launch&& launch) {
  check_current_device(device);
  std::string err;
  {
    pybind11::gil_scoped_release nogil;
    err = launch();
  }
  if (!err.empty()) throw std::runtime_error(err);
}
}  // namespace illada::bind
