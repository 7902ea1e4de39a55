#include <cuda_runtime.h>

#include "toolchain_check.cuh"

namespace illada::cuda {

namespace {
__global__ void square_indices_kernel(int64_t* out, int64_t n) {
  int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) out[i] = i * i;
}
}  // namespace

int device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no device" error
    return 0;
  }
  return n;
}

int device_sm(int device) {
  cudaDeviceProp prop{};
  if (cudaGetDeviceProperties(&prop, device) != cudaSuccess) {
    cudaGetLastError();
    return -1;
  }
  return prop.major * 10 + prop.minor;
}

int driver_version() {
  int v = -1;
  if (cudaDriverGetVersion(&v) != cudaSuccess) {
    cudaGetLastError();
    return -1;
  }
  return v;
}

int current_device() {
  int d = -1;
  if (cudaGetDevice(&d) != cudaSuccess) {
    cudaGetLastError();
    return -1;
  }
  return d;
}

std::string square_indices(int64_t n, int64_t* out_host) {
  if (n <= 0) return {};
  int64_t* dev = nullptr;
  cudaError_t err = cudaMalloc(&dev, n * sizeof(int64_t));
  if (err != cudaSuccess) return cudaGetErrorString(err);
  const int threads = 128;
  const int64_t blocks = (n + threads - 1) / threads;
  square_indices_kernel<<<static_cast<unsigned>(blocks), threads>>>(dev, n);
  err = cudaGetLastError();
  if (err == cudaSuccess) err = cudaMemcpy(out_host, dev, n * sizeof(int64_t), cudaMemcpyDeviceToHost);
  cudaFree(dev);
  return err == cudaSuccess ? std::string() : std::string(cudaGetErrorString(err));
}

}  // namespace illada::cuda
