// Device queries, and a deliberately small kernel that proves the toolchain path end to end
// (nvcc -> _C_cuda -> Python) on a machine with a GPU.
#pragma once
#include <cstdint>
#include <string>

namespace illada::cuda {

// Number of visible CUDA devices (0 when the driver or a device is missing; never throws).
int device_count();

// Compute capability of `device` as major*10 + minor, or -1 if it cannot be queried.
int device_sm(int device);

// The CUDA driver's version as 1000*major + 10*minor (0 without a driver, -1 if it cannot be queried).
int driver_version();

// The calling thread's current CUDA device, or -1 when none can be queried.
int current_device();

// Fills out[i] = i * i for i < n on the GPU and copies it back; returns an empty string on success or
// the CUDA error text on failure.
std::string square_indices(int64_t n, int64_t* out_host);

}  // namespace illada::cuda
