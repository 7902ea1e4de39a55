// The CUDA source csrc/cuda/fragment_probe.cu, compiled as host C++ for the emulator (checked: see shadow.cpp).
#include "cuda/fragment_probe.cu"
