// What every kernel of the CUDA launcher (extrap_cuda.cu) shares: the block size, 16-byte vectors, the chunk
// a block walks and the walk itself (aligned vectors, then a tail), the launch's values read on the device,
// the one checked launch, and the choice of argument table. Included by extrap_cuda.cu alone, inside its
// anonymous namespace (the host emulation compiles the same file).
#pragma once

#include <atomic>
#include <type_traits>
#include <utility>

#include "../launch.h"
#include "multi_tensor_apply.cuh"
#include "runtime.h"

namespace extrap {
namespace {

#ifndef EXTRAP_CUDA_THREADS
#define EXTRAP_CUDA_THREADS 512  // (the host emulation runs with fewer: csrc/emulation)
#endif
constexpr int kThreads = EXTRAP_CUDA_THREADS;
static_assert(sizeof(Hyper<double>) + 10 * sizeof(void*) <= kOtherArgBytes,
              "a kernel's arguments besides its table must fit what the table sizes leave");
// The adaptive phases hold six arrays' vectors in registers (x g s m v v_max): half the threads per block,
// so that each may use up to 255 registers (with 512, the 128 allowed spilled the bf16 kernels on sm_90).
constexpr int kAdaptiveThreads = kThreads < 256 ? kThreads : 256;
// Elements per thread per iteration: a 16-byte load of the parameter dtype (4 fp32, 8 bf16/fp16; fp64
// takes 4, two 16-byte loads). The fp32 state of a 16-bit parameter then moves in 32-byte pieces.
template <typename scalar_t>
constexpr int kVectorWidth = sizeof(scalar_t) >= 4 ? 4 : 16 / static_cast<int>(sizeof(scalar_t));

template <typename T, int N>
struct alignas(sizeof(T) * N) Vec {
  T v[N];
};

template <typename T, int N>
__device__ __forceinline__ bool aligned(const void* p) {
  return reinterpret_cast<uintptr_t>(p) % (sizeof(T) * N) == 0;
}

// The chunk a block walks: table entry `entry`, elements [begin, end) of its tensor.
struct Chunk {
  int entry;
  int64_t begin, end;
};
template <typename Table>
__device__ __forceinline__ Chunk chunk_of_block(const Table& table) {
  const int entry = table.block_tensor[blockIdx.x];
  const int64_t begin = static_cast<int64_t>(table.block_chunk[blockIdx.x]) * kChunkSize;
  return {entry, begin, min(table.numel[entry], begin + kChunkSize)};
}

// The walk of every phase kernel over its chunk [begin, end), around the per-element math: where `vector`
// (every array the kernel moves is aligned to kVec elements), the block's kBlockThreads threads take kVec
// elements at a time from `begin`, `at_vector(i)` loading, computing and storing elements i .. i + kVec - 1
// in 16-byte accesses; then `at_element(j)` takes what is left one element at a time (an unaligned
// tensor, or a chunk's last elements).
template <int kVec, int kBlockThreads, typename AtVector, typename AtElement>
__device__ __forceinline__ void walk_chunk(int64_t begin, int64_t end, bool vector, AtVector&& at_vector,
                                           AtElement&& at_element) {
  int64_t tail = begin;
  if (vector) {
    const int64_t vector_end = begin + (end - begin) / kVec * kVec;
    for (int64_t i = begin + static_cast<int64_t>(threadIdx.x) * kVec; i < vector_end;
         i += static_cast<int64_t>(kBlockThreads) * kVec) {
      at_vector(i);
    }
    tail = vector_end;
  }
  for (int64_t j = tail + threadIdx.x; j < end; j += kBlockThreads) at_element(j);
}

// An element's x and s in the arithmetic's type, and their stores. A compensated x (anchor_t int16_t: s holds its
// remainders, x its own anchor) is both as its joined value, split again on store (launch.h's joined, store_split).
template <typename acc, typename scalar_t, typename anchor_t>
__device__ __forceinline__ void load_param_and_anchor(scalar_t x, anchor_t s, acc& xv, acc& sv) {
  if constexpr (std::is_same<anchor_t, int16_t>::value) {
    sv = xv = joined(x, s);
  } else {
    xv = static_cast<acc>(x);
    sv = static_cast<acc>(s);
  }
}
template <typename acc, typename scalar_t, typename anchor_t>
__device__ __forceinline__ void store_param_and_anchor(scalar_t& x, anchor_t& s, acc xv, acc sv) {
  if constexpr (std::is_same<anchor_t, int16_t>::value) {
    store_split(x, s, xv);
  } else {
    x = static_cast<scalar_t>(xv);
    s = static_cast<anchor_t>(sv);
  }
}

// The launch's values as the kernel runs: 1 / grad_scale folded into the gradient factor, and the
// capturable rates read now (a replayed CUDA graph sees their current values).
template <typename acc>
__device__ __forceinline__ void read_device_values(Hyper<acc>& h, const acc* grad_scale, const acc* lr,
                                                   const acc* gamma) {
  if (grad_scale != nullptr) h.grad_factor /= *grad_scale;
  if (lr != nullptr) h.lr = *lr;
  if (gamma != nullptr) h.gamma = *gamma;
}

// AMP's gradients are written back unscaled (torch's fused optimizers leave them so) where the launch has
// its loss scale and does not skip: 1 / loss_scale, read on the device.
template <typename acc>
__device__ __forceinline__ acc grad_unscale(const acc* loss_scale) {
  return loss_scale != nullptr ? acc(1) / *loss_scale : acc(1);
}
template <typename acc, typename T, int N>
__device__ __forceinline__ void store_unscaled(T* g, Vec<T, N> values, acc unscale) {
#pragma unroll
  for (int k = 0; k < N; ++k) values.v[k] = static_cast<T>(static_cast<acc>(values.v[k]) * unscale);
  *reinterpret_cast<Vec<T, N>*>(g) = values;
}

// The adaptive launches' capturable betas, read as the kernel runs.
template <typename acc>
__device__ __forceinline__ void read_device_betas(Hyper<acc>& h, const double* beta1, const double* beta2) {
  if (beta1 != nullptr || beta2 != nullptr) {
    set_betas(h, beta1 != nullptr ? *beta1 : h.beta1, beta2 != nullptr ? *beta2 : h.beta2);
  }
}

// The one way this file launches a kernel (runtime.h's launch_kernel), checked at once: an error is the
// launch's, not a later call's.
template <typename... Params, typename... Args>
void launch_checked(void (*kernel)(Params...), int64_t blocks, int threads, cudaStream_t stream, Args&&... args) {
  launch_kernel(kernel, static_cast<int>(blocks), threads, stream, std::forward<Args>(args)...);
  const cudaError_t err = cudaGetLastError();
  TORCH_CHECK(err == cudaSuccess, "extrap_kernels: CUDA launch failed: ", cudaGetErrorString(err));
}

// nvcc before 12.1 refuses kernel arguments over 4 KB: only the small table is compiled there.
#if defined(EXTRAP_CUDA_EMULATION) || CUDART_VERSION >= 12010
#define EXTRAP_LARGE_TABLES 1
#else
#define EXTRAP_LARGE_TABLES 0
#endif

std::atomic<bool> force_small_tables{false};

// body(Tag<LargeTable>) where this launch may pass 26 KB of arguments, else body(Tag<SmallTable>).
template <typename Body>
void with_table(Body&& body) {
#if EXTRAP_LARGE_TABLES
  if (large_kernel_args()) return body(Tag<LargeTable>{});
#endif
  body(Tag<SmallTable>{});
}

}  // namespace
}  // namespace extrap
