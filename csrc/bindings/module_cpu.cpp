// illada_rt._C: the CPU kernels. Framework-free: tensors arrive through DLPack (see dlpack_view.h).
#include <pybind11/pybind11.h>

#include "../common/check.h"
#include "registry.h"

namespace py = pybind11;

PYBIND11_MODULE(_C, m) {
  m.doc() = "illada-rt CPU kernels";
  py::register_exception<illada::Error>(m, "KernelArgumentError", PyExc_ValueError);
  py::register_exception<illada::TypeError>(m, "KernelTypeError", PyExc_TypeError);
  illada::bind::register_cpu_features(m);
  illada::bind::register_sampling(m);
  illada::bind::register_gemm(m);
  illada::bind::register_attention(m);
  illada::bind::register_norm_act(m);
  illada::bind::register_layers(m);
}
