// The CUDA launcher: every phase is one pass over memory, as few launches as multi_tensor_apply needs
// (one per 192 tensors or 2560 chunks). Each block walks one 65536-element chunk, a 16-byte vector of
// the parameter dtype per thread per iteration, with vector loads and stores where every pointer is
// aligned. The per-element math is csrc/extrap_math.h's phase_element, the same code the CPU kernel runs.
// grad_scale and found_inf are read on the device: a skipped step costs no host synchronization; so are
// lr and gamma when given as device tensors, which makes a step capturable in a CUDA graph.
// The stream and the current device come from the operator entry (csrc/bindings.cpp), so this file needs only
// ATen's host headers and the CUDA runtime.
#include <ATen/Dispatch.h>

#include <type_traits>

#include "../launch.h"
#include "multi_tensor_apply.cuh"
#include "runtime.h"

namespace extrap {
namespace {

#ifndef EXTRAP_CUDA_THREADS
#define EXTRAP_CUDA_THREADS 512  // (the host emulation runs with fewer: csrc/emulation)
#endif
constexpr int kThreads = EXTRAP_CUDA_THREADS;
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

// s and m are state_t: acc, or (master_weights=False) a 16-bit x's own type.
template <Phase P, bool kMomentum, typename scalar_t, typename state_t, typename acc>
__global__ void __launch_bounds__(kThreads) phase_kernel(TensorTable table, Hyper<acc> h, const acc* trust,
                                                         const float* grad_scale, const float* found_inf,
                                                         const acc* lr, const acc* gamma) {
  constexpr bool kMaster = !std::is_same<scalar_t, state_t>::value;
  constexpr int R = kRoundingOf<scalar_t, state_t>;
  const int entry = table.block_tensor[blockIdx.x];
  const int64_t begin = static_cast<int64_t>(table.block_chunk[blockIdx.x]) * kChunkSize;
  const int64_t end = min(table.numel[entry], begin + kChunkSize);
  auto* x = static_cast<scalar_t*>(table.x[entry]);
  const auto* g = static_cast<const scalar_t*>(table.g[entry]);
  auto* s = static_cast<state_t*>(table.s[entry]);
  auto* m = static_cast<state_t*>(table.m[entry]);
  const bool skip = found_inf != nullptr && *found_inf != 0.0f;
  if (grad_scale != nullptr) h.grad_factor /= static_cast<acc>(*grad_scale);
  if (lr != nullptr) h.lr = *lr;  // capturable: the rates as they are when the kernel runs
  if (gamma != nullptr) h.gamma = *gamma;
  const float step = *table.step[entry];
  const acc last_gamma = P == kUpdatePastAnchorFree ? *static_cast<const acc*>(table.last_gamma[entry]) : acc(0);
  const TensorArgs<acc> t{trust != nullptr ? trust[table.tensor[entry]] : acc(1), step <= 1.0f,
                          static_cast<uint32_t>(step), table.index[entry], last_gamma};

  auto element = [&](acc& xv, acc gv, acc& sv, acc& mv, int64_t i) {
    if (skip) {
      skipped_element<P, kMaster>(xv, sv);
    } else {
      phase_element<P, kMomentum, kMaster>(xv, gv, sv, mv, h, t, static_cast<uint64_t>(i));
      if (R != kNearest) round_stored<P, R>(xv, sv, mv, rounding_bits(h.seed, t.step, t.index, static_cast<uint64_t>(i)));
    }
  };
  // (plain fused SGD passes x as its own anchor: it is read twice and, as kUpdate, stored once)
  const bool store_s = skip ? skip_stores_anchor<P, kMaster>() : stores_anchor<P, kMaster>();
  const bool store_m = !skip && stores_momentum<P, kMomentum>();
  const bool store_x = !skip || skip_stores_param<P>();
  // each phase reads one of x and s (SPEC's traffic: a write-only x is not loaded), and m where it is used:
  // the extrapolation reads it only to extrapolate along it
  constexpr bool kReadsX = reads_param<P, kMaster>();
  const bool load_m = kMomentum && (P != kExtrapolate || h.extrapolate_with_momentum);

  constexpr int kVec = kVectorWidth<scalar_t>;
  using XVec = Vec<scalar_t, kVec>;
  using SVec = Vec<state_t, kVec>;
  const bool vector = aligned<scalar_t, kVec>(x) && aligned<scalar_t, kVec>(g) &&
                      (kReadsX || aligned<state_t, kVec>(s)) && (!load_m || aligned<state_t, kVec>(m));
  int64_t tail = begin;
  if (vector) {
    const int64_t vector_end = begin + (end - begin) / kVec * kVec;
    for (int64_t i = begin + static_cast<int64_t>(threadIdx.x) * kVec; i < vector_end;
         i += static_cast<int64_t>(kThreads) * kVec) {
      XVec xr{};
      SVec sr{};
      if (kReadsX) {
        xr = *reinterpret_cast<const XVec*>(x + i);
      } else {
        sr = *reinterpret_cast<const SVec*>(s + i);
      }
      const XVec gr = *reinterpret_cast<const XVec*>(g + i);
      SVec mr{};
      if (load_m) mr = *reinterpret_cast<const SVec*>(m + i);
#pragma unroll
      for (int k = 0; k < kVec; ++k) {
        acc xv = static_cast<acc>(xr.v[k]), sv = static_cast<acc>(sr.v[k]), mv = static_cast<acc>(mr.v[k]);
        element(xv, static_cast<acc>(gr.v[k]), sv, mv, i + k);
        xr.v[k] = static_cast<scalar_t>(xv);
        sr.v[k] = static_cast<state_t>(sv);
        mr.v[k] = static_cast<state_t>(mv);
      }
      if (store_x) *reinterpret_cast<XVec*>(x + i) = xr;
      if (store_s) *reinterpret_cast<SVec*>(s + i) = sr;
      if (store_m) *reinterpret_cast<SVec*>(m + i) = mr;
    }
    tail = vector_end;
  }
  // unaligned tensors, and the last elements of a chunk
  for (int64_t j = tail + threadIdx.x; j < end; j += kThreads) {
    acc xv = kReadsX ? static_cast<acc>(x[j]) : acc(0);
    acc sv = kReadsX ? acc(0) : static_cast<acc>(s[j]);
    acc mv = load_m ? static_cast<acc>(m[j]) : acc(0);
    element(xv, static_cast<acc>(g[j]), sv, mv, j);
    if (store_x) x[j] = static_cast<scalar_t>(xv);
    if (store_s) s[j] = static_cast<state_t>(sv);
    if (store_m) m[j] = static_cast<state_t>(mv);
  }
}

template <Phase P, bool kMomentum, typename scalar_t, typename state_t, typename acc>
void launch_phase(const Launch& L) {
  Hyper<acc> h = make_hyper<acc>(L, 1.0);
  const acc* trust = L.trust ? L.trust->data_ptr<acc>() : nullptr;
  const float* grad_scale = L.grad_scale ? L.grad_scale->data_ptr<float>() : nullptr;
  const float* found_inf = L.found_inf ? L.found_inf->data_ptr<float>() : nullptr;
  const acc* lr = L.lr_tensor ? L.lr_tensor->data_ptr<acc>() : nullptr;
  const acc* gamma = L.gamma_tensor ? L.gamma_tensor->data_ptr<acc>() : nullptr;
  auto stream = reinterpret_cast<cudaStream_t>(L.stream);
  multi_tensor_apply(L.params, L.grads, L.anchors, L.momenta, L.steps, L.indices, L.last_gammas,
                     [&](TensorTable& table, int blocks) {
    launch_kernel(phase_kernel<P, kMomentum, scalar_t, state_t, acc>, blocks, kThreads, stream, table, h, trust,
                  grad_scale, found_inf, lr, gamma);
    const cudaError_t err = cudaGetLastError();
    TORCH_CHECK(err == cudaSuccess, "extrap_kernels: CUDA launch failed: ", cudaGetErrorString(err));
  });
}

}  // namespace

void apply_cuda(const Launch& L) {
  if (L.params.empty()) return;
  TORCH_CHECK(!L.grad_scale || L.grad_scale->scalar_type() == at::kFloat, "grad_scale must be float32");
  TORCH_CHECK(!L.found_inf || L.found_inf->scalar_type() == at::kFloat, "found_inf must be float32");
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, L.params[0].scalar_type(), "extrap_cuda", [&] {
    using acc = std::conditional_t<std::is_same<scalar_t, double>::value, double, float>;
    with_phase(L, [&](auto phase, auto momentum) {
      constexpr Phase P = decltype(phase)::value;
      constexpr bool M = decltype(momentum)::value;
      if constexpr (!std::is_same<scalar_t, acc>::value) {
        if (L.rounds_stochastically()) return launch_phase<P, M, scalar_t, scalar_t, acc>(L);
      }
      launch_phase<P, M, scalar_t, acc, acc>(L);
    });
  });
}

}  // namespace extrap
