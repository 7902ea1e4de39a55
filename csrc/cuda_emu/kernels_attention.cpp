// The CUDA source csrc/cuda/attention_bidir_sm80.cu, compiled as host C++ for the emulator (checked: see shadow.cpp).
#include "cuda/attention_bidir_sm80.cu"
