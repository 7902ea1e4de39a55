// One register_<area> per area of ops; module_cpu.cpp calls each.
#pragma once
#include <pybind11/pybind11.h>

namespace illada::bind {
void register_sampling(pybind11::module_& m);
void register_gemm(pybind11::module_& m);
void register_attention(pybind11::module_& m);
void register_norm_act(pybind11::module_& m);
void register_layers(pybind11::module_& m);
void register_cpu_features(pybind11::module_& m);
}  // namespace illada::bind
