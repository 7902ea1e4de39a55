// The CUDA source csrc/cuda/sampling.cu, compiled as host C++ for the emulator (checked: see shadow.cpp).
#include "cuda/sampling.cu"
