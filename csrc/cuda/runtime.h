// What the CUDA launcher needs from the CUDA runtime: the runtime itself, or (EXTRAP_CUDA_EMULATION) a
// host stand-in that runs a kernel's blocks and threads one after another on the CPU. The emulation
// (csrc/emulation/cuda_on_host.cpp) compiles csrc/cuda/extrap_cuda.cu unchanged with a C++ compiler, so
// the tests can hold the device code that runs on a GPU to the reference on a machine without one.
// It is faithful for kernels whose threads do not communicate (no shared memory, no __syncthreads,
// no warp intrinsics), which is what the phase kernels are: every thread owns its elements.
#pragma once

#ifndef EXTRAP_CUDA_EMULATION
#include <cuda_runtime.h>

#include <utility>

namespace extrap {
// kernel<<<blocks, threads, 0, stream>>>(args...), as a function the emulation can replace.
template <typename... Params, typename... Args>
void launch_kernel(void (*kernel)(Params...), int blocks, int threads, cudaStream_t stream, Args&&... args) {
  kernel<<<blocks, threads, 0, stream>>>(std::forward<Args>(args)...);
}
}  // namespace extrap

#else
#include <algorithm>
#include <cstdint>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(threads)

struct EmulatedIndex {
  unsigned x = 0, y = 0, z = 0;
};
// the running block and thread: one thread of the host runs them all, in order
inline thread_local EmulatedIndex blockIdx, threadIdx;

using cudaStream_t = void*;
using cudaError_t = int;
constexpr cudaError_t cudaSuccess = 0;
inline cudaError_t cudaGetLastError() { return cudaSuccess; }
inline const char* cudaGetErrorString(cudaError_t) { return "no error"; }
using std::min;  // the device's integer min()

namespace extrap {
template <typename... Params, typename... Args>
void launch_kernel(void (*kernel)(Params...), int blocks, int threads, cudaStream_t, Args&&... args) {
  for (int b = 0; b < blocks; ++b) {
    for (int t = 0; t < threads; ++t) {
      blockIdx.x = static_cast<unsigned>(b);
      threadIdx.x = static_cast<unsigned>(t);
      kernel(args...);  // (by value, as a launch copies its arguments)
    }
  }
}
}  // namespace extrap
#endif
