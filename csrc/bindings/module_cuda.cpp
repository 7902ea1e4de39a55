// illada_rt._C_cuda: CUDA kernels. Built only where CMake finds a CUDA compiler; importing it on a
// machine without a GPU works (queries report zero devices), and calls that need a GPU raise.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <string>
#include <vector>

#include "../common/check.h"
#include "../cuda/toolchain_check.cuh"
#include "cuda_registry.h"

namespace py = pybind11;

namespace illada::bind {
void check_current_device(int device) {
  const int current = cuda::current_device();
  ILLADA_CHECK(current == device, "device: the tensors are on cuda:" << device << " but the current CUDA device is "
                                      << (current < 0 ? std::string("unavailable") : "cuda:" + std::to_string(current))
                                      << " (use torch.cuda.device(...))");
}
}  // namespace illada::bind

#ifndef ILLADA_CUDA_ARCHS
#define ILLADA_CUDA_ARCHS ""
#endif

PYBIND11_MODULE(_C_cuda, m) {
  m.doc() = "illada-rt CUDA kernels";
  py::register_exception<illada::Error>(m, "KernelArgumentError", PyExc_ValueError);
  illada::bind::register_cuda_attention(m);
  illada::bind::register_cuda_sampling(m);
  illada::bind::register_cuda_probe(m);
  illada::bind::register_cuda_gemm(m);
  m.def("current_device", &illada::cuda::current_device, "The calling thread's current CUDA device, or -1.");
  m.def("compiled_archs", [] { return std::string(ILLADA_CUDA_ARCHS); },
        "Comma-separated CUDA architectures this module was compiled for (CMAKE_CUDA_ARCHITECTURES).");
  m.def("device_count", &illada::cuda::device_count, "Visible CUDA devices (0 without a driver or GPU).");
  m.def("driver_version", &illada::cuda::driver_version,
        "The CUDA driver's version as 1000*major + 10*minor (0 without a driver, -1 if unknown).");
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
