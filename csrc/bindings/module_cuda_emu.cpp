// illada_rt._C_cuda_emu: the CUDA emulator (csrc/cuda_emu/) and small kernels that exercise it on CPU tensors.
// A misuse of barriers or warp collectives inside a kernel raises EmulatedKernelError (a RuntimeError).
#include <pybind11/pybind11.h>

#include "../common/check.h"
#include "../cuda_emu/runtime.h"
#include "../cuda_emu/test_kernels.h"
#include "dlpack_view.h"

namespace py = pybind11;
using illada::bind::DType;
using illada::bind::TensorView;

namespace {

// A contiguous 1-D CPU tensor of `dtype` with at least `min_numel` elements.
TensorView vector_arg(py::handle obj, const char* name, DType dtype, int64_t min_numel) {
  TensorView v = illada::bind::view(obj, name);
  v.expect_dtype({dtype});
  v.expect_cpu();
  ILLADA_CHECK(v.ndim() == 1 && (v.shape[0] <= 1 || v.strides[0] == 1), name << ": expected a contiguous 1-D tensor");
  ILLADA_CHECK(v.numel() >= min_numel, name << ": expected at least " << min_numel << " elements, got " << v.numel());
  return v;
}

void check_launch(unsigned grid, unsigned block, unsigned min_block) {
  ILLADA_CHECK(grid >= 1, "grid must be >= 1, got " << grid);
  ILLADA_CHECK(block >= min_block && block <= 1024, "block must be in [" << min_block << ", 1024], got " << block);
}

}  // namespace

PYBIND11_MODULE(_C_cuda_emu, m) {
  namespace t = cuda_emu::tests;
  m.doc() = "illada-rt CUDA emulator: CUDA kernels as host C++, CTA by CTA, threads as fibers";
  py::register_exception<illada::Error>(m, "KernelArgumentError", PyExc_ValueError);
  py::register_exception<illada::TypeError>(m, "KernelTypeError", PyExc_TypeError);
  py::register_exception<cuda_emu::KernelError>(m, "EmulatedKernelError", PyExc_RuntimeError);
  m.attr("POISON_BYTE") = static_cast<int>(cuda_emu::kPoisonByte);
  m.def(
      "block_sum",
      [](py::handle x, py::handle out, unsigned grid, unsigned block) {
        check_launch(grid, block, 32);
        auto xv = vector_arg(x, "x", DType::f32, 0);
        auto ov = vector_arg(out, "out", DType::f32, 1);
        ILLADA_CHECK(xv.numel() < (int64_t{1} << 31), "x: too many elements");
        py::gil_scoped_release nogil;
        t::block_sum(xv.ptr<float>(), static_cast<int>(xv.numel()), ov.ptr<float>(), grid, block);
      },
      py::arg("x"), py::arg("out"), py::arg("grid"), py::arg("block"),
      "out[0] += x.sum(): shared-memory block reduction, __syncthreads, __shfl_xor_sync, atomicAdd (block >= 32)");
  m.def(
      "warp_ballot",
      [](py::handle x, py::handle out, unsigned grid, unsigned block) {
        check_launch(grid, block, 1);
        auto xv = vector_arg(x, "x", DType::f32, 0);
        auto ov = vector_arg(out, "out", DType::i32, xv.numel());
        ILLADA_CHECK(xv.numel() < (int64_t{1} << 31), "x: too many elements");
        py::gil_scoped_release nogil;
        t::warp_ballot(xv.ptr<float>(), static_cast<int>(xv.numel()), ov.ptr<int32_t>(), grid, block);
      },
      py::arg("x"), py::arg("out"), py::arg("grid"), py::arg("block"),
      "out[i] = __ballot_sync over the existing lanes of i's warp of x > 0, broadcast from lane 0 by __shfl_sync");
  m.def(
      "shared_before_write",
      [](py::handle out_static, py::handle out_dynamic, unsigned grid, unsigned block) {
        check_launch(grid, block, 1);
        auto sv = vector_arg(out_static, "out_static", DType::i32, int64_t{grid} * block);
        auto dv = vector_arg(out_dynamic, "out_dynamic", DType::i32, int64_t{grid} * block);
        py::gil_scoped_release nogil;
        t::shared_before_write(sv.ptr<int32_t>(), dv.ptr<int32_t>(), grid, block);
      },
      py::arg("out_static"), py::arg("out_dynamic"), py::arg("grid"), py::arg("block"),
      "each thread stores what it reads from static and dynamic shared memory before any write");
  m.def("divergent_barrier", &t::divergent_barrier, py::arg("block"), "broken: __syncthreads under threadIdx.x < 16");
  m.def("split_barrier", &t::split_barrier, py::arg("block"), "broken: two __syncthreads call sites");
  m.def("divergent_shuffle", &t::divergent_shuffle, "broken: lanes 0-15 and 16-31 shuffle at different call sites");
}
