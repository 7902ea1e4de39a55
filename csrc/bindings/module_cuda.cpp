// illada_rt._C_cuda: CUDA kernels. Built only where CMake finds a CUDA compiler; importing it on a
// machine without a GPU works (queries report zero devices), and calls that need a GPU raise.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <string>
#include <vector>

#include "../common/check.h"
#include "../cuda/toolchain_check.cuh"

namespace py = pybind11;

#ifndef ILLADA_CUDA_ARCHS
#define ILLADA_CUDA_ARCHS ""
#endif

PYBIND11_MODULE(_C_cuda, m) {
  m.doc() = "illada-rt CUDA kernels";
  py::register_exception<illada::Error>(m, "KernelArgumentError", PyExc_ValueError);
  m.def("compiled_archs", [] { return std::string(ILLADA_CUDA_ARCHS); },
        "Semicolon-separated CUDA architectures this module was compiled for (CMAKE_CUDA_ARCHITECTURES).");
  m.def("device_count", &illada::cuda::device_count, "Visible CUDA devices (0 without a driver or GPU).");
  m.def("device_sm", &illada::cuda::device_sm, py::arg("device") = 0,
        "Compute capability of a device as major*10+minor, or -1.");
  m.def(
      "toolchain_check",
      [](int64_t n) {
        ILLADA_CHECK(n >= 0 && n <= (1 << 24), "n: must be in [0, 2^24], got " << n);
        if (illada::cuda::device_count() == 0) throw std::runtime_error("toolchain_check: no CUDA device is visible");
        std::vector<int64_t> out(static_cast<size_t>(n));
        std::string err;
        {
          py::gil_scoped_release nogil;
          err = illada::cuda::square_indices(n, out.data());
        }
        if (!err.empty()) throw std::runtime_error("toolchain_check: CUDA error: " + err);
        return out;
      },
      py::arg("n") = 16, "Run a tiny kernel (out[i] = i*i) on the GPU: proves the CUDA build path works.");
}
