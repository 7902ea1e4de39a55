// The CUDA source csrc/cuda/gemm_sm80.cu, compiled as host C++ for the emulator (checked: see shadow.cpp).
#include "cuda/gemm_sm80.cu"
