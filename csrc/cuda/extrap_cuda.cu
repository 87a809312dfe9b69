// The CUDA launcher: every phase is one pass over memory, as few launches as multi_tensor_apply needs
// (one per 192 tensors or 2560 chunks). Each block walks one 65536-element chunk, a 16-byte vector of
// the parameter dtype per thread per iteration, with vector loads and stores where every pointer is
// aligned. The per-element math is csrc/extrap_math.h's phase_element, the same code the CPU kernel runs.
// grad_scale and found_inf are read on the device: a skipped step costs no host synchronization; so are
// lr and gamma when given as device tensors, which makes a step capturable in a CUDA graph.
// The stream and the current device come from the operator entry (csrc/bindings.cpp), so this file needs only
// ATen's host headers and the CUDA runtime.
#include <ATen/Dispatch.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <type_traits>

#include "../launch.h"
#include "kernel_skeleton.cuh"

namespace extrap {
namespace {

// s and m are state_t: acc, or (master_weights=False) a 16-bit x's own type; or (state_t int16_t: launch.h's
// with_anchor_type) s holds a compensated bf16 x's remainders, x its own anchor joined on load and split on store, and
// m is acc.
template <Phase P, bool kMomentum, typename scalar_t, typename state_t, typename acc, typename Table>
__global__ void __launch_bounds__(kThreads)
    phase_kernel(Table table, Hyper<acc> h, const acc* trust, const acc* grad_scale, const float* found_inf,
                 const acc* lr, const acc* gamma, const acc* loss_scale) {
  constexpr bool kCompensated = std::is_same<state_t, int16_t>::value;
  using momentum_t = std::conditional_t<kCompensated, acc, state_t>;
  constexpr bool kMaster = !std::is_same<scalar_t, state_t>::value && !kCompensated;
  constexpr int R = kRoundingOf<scalar_t, state_t>;
  const Chunk chunk = chunk_of_block(table);
  const int entry = chunk.entry;
  const int64_t begin = chunk.begin, end = chunk.end;
  auto* x = static_cast<scalar_t*>(table.x[entry]);
  auto* g = static_cast<scalar_t*>(table.g[entry]);
  auto* s = static_cast<state_t*>(table.s[entry]);
  auto* m = static_cast<momentum_t*>(table.m[entry]);
  const bool skip = found_inf != nullptr && *found_inf != 0.0f;
  const bool store_g = loss_scale != nullptr && !skip;
  const acc unscale = grad_unscale(loss_scale);
  read_device_values(h, grad_scale, lr, gamma);
  const float step = *table.step[entry];
  const acc last_gamma = P == kUpdatePastAnchorFree ? *static_cast<const acc*>(table.last_gamma[entry]) : acc(0);
  const TensorArgs<acc> t{trust != nullptr ? trust[table.tensor[entry]] : acc(1), step <= 1.0f,
                          static_cast<uint32_t>(step), table.index[entry], last_gamma};

  auto element = [&](acc& xv, acc gv, acc& sv, acc& mv, int64_t i) {
    if (skip) {
      skipped_element<P, kMaster>(xv, sv);
    } else {
      phase_element<P, kMomentum, kMaster>(xv, gv, sv, mv, h, t, static_cast<uint64_t>(i));
      if (R != kNearest)
        round_stored<P, R>(xv, sv, mv, rounding_bits(h.seed, t.step, t.index, static_cast<uint64_t>(i)));
    }
  };
  // (plain fused SGD passes x as its own anchor: it is read twice and, as kUpdate, stored once; a compensated x is
  // read and stored with its remainders, and a skipped step moves neither)
  const bool store_x = kCompensated ? !skip : !skip || skip_stores_param<P>();
  const bool store_s = kCompensated ? store_x : (skip ? skip_stores_anchor<P, kMaster>() : stores_anchor<P, kMaster>());
  const bool store_m = !skip && stores_momentum<P, kMomentum>();
  // each phase reads one of x and s (SPEC's traffic: a write-only x is not loaded), and m where it is used:
  // the extrapolation reads it only to extrapolate along it
  constexpr bool kReadsX = reads_param<P, kMaster>() || kCompensated;
  constexpr bool kReadsS = !reads_param<P, kMaster>() || kCompensated;
  const bool load_m = kMomentum && (P != kExtrapolate || h.extrapolate_with_momentum);

  constexpr int kVec = kVectorWidth<scalar_t>;
  using XVec = Vec<scalar_t, kVec>;
  using SVec = Vec<state_t, kVec>;
  using MVec = Vec<momentum_t, kVec>;
  const bool vector = aligned<scalar_t, kVec>(x) && aligned<scalar_t, kVec>(g) &&
                      (!kReadsS || aligned<state_t, kVec>(s)) && (!load_m || aligned<momentum_t, kVec>(m));
  auto at_vector = [&](int64_t i) {
    XVec xr{};
    SVec sr{};
    if (kReadsX) xr = *reinterpret_cast<const XVec*>(x + i);
    if (kReadsS) sr = *reinterpret_cast<const SVec*>(s + i);
    const XVec gr = *reinterpret_cast<const XVec*>(g + i);
    MVec mr{};
    if (load_m) mr = *reinterpret_cast<const MVec*>(m + i);
#pragma unroll
    for (int k = 0; k < kVec; ++k) {
      acc xv, sv, mv = static_cast<acc>(mr.v[k]);
      load_param_and_anchor(xr.v[k], sr.v[k], xv, sv);
      element(xv, static_cast<acc>(gr.v[k]), sv, mv, i + k);
      store_param_and_anchor(xr.v[k], sr.v[k], xv, sv);
      mr.v[k] = static_cast<momentum_t>(mv);
    }
    if (store_x) *reinterpret_cast<XVec*>(x + i) = xr;
    if (store_s) *reinterpret_cast<SVec*>(s + i) = sr;
    if (store_m) *reinterpret_cast<MVec*>(m + i) = mr;
    if (store_g) store_unscaled(g + i, gr, unscale);
  };
  auto at_element = [&](int64_t j) {
    scalar_t xe = kReadsX ? x[j] : scalar_t(0);
    state_t se = kReadsS ? s[j] : state_t(0);
    acc xv, sv, mv = load_m ? static_cast<acc>(m[j]) : acc(0);
    load_param_and_anchor(xe, se, xv, sv);
    const acc gv = static_cast<acc>(g[j]);
    element(xv, gv, sv, mv, j);
    store_param_and_anchor(xe, se, xv, sv);
    if (store_x) x[j] = xe;
    if (store_s) s[j] = se;
    if (store_m) m[j] = static_cast<momentum_t>(mv);
    if (store_g) g[j] = static_cast<scalar_t>(gv * unscale);
  };
  walk_chunk<kVec, kThreads>(begin, end, vector, at_vector, at_element);
}

template <Phase P, bool kMomentum, typename scalar_t, typename state_t, typename acc>
void launch_phase(const Launch& L) {
  Hyper<acc> h = make_hyper<acc>(L, 1.0);
  const acc* trust = L.trust ? L.trust->data_ptr<acc>() : nullptr;
  const acc* grad_scale = L.grad_scale ? L.grad_scale->data_ptr<acc>() : nullptr;
  const float* found_inf = L.found_inf ? L.found_inf->data_ptr<float>() : nullptr;
  const acc* lr = L.lr_tensor ? L.lr_tensor->data_ptr<acc>() : nullptr;
  const acc* gamma = L.gamma_tensor ? L.gamma_tensor->data_ptr<acc>() : nullptr;
  const acc* loss_scale = L.loss_scale ? L.loss_scale->data_ptr<acc>() : nullptr;
  auto stream = reinterpret_cast<cudaStream_t>(L.stream);
  with_table([&](auto tag) {
    using Table = typename decltype(tag)::type;
    multi_tensor_apply<Table>(L.params, L.grads, L.anchors, L.momenta, L.steps, L.indices, L.last_gammas, {}, {},
                              [&](Table& table, int blocks) {
                                launch_checked(phase_kernel<P, kMomentum, scalar_t, state_t, acc, Table>, blocks,
                                               kThreads, stream, table, h, trust, grad_scale, found_inf, lr, gamma,
                                               loss_scale);
                              });
  });
}

// The adaptive bases (Adam, AdamW, LAMB): as phase_kernel, with the second moments (and their maxima)
// moved beside m, and adaptive_element's math. The moments are moment_t: acc, or 16-bit (exp_avg_dtype), rounded
// stochastically by an update; s is anchor_t: acc, or (master_weights=False) a 16-bit x's own type, whose stored
// values are rounded stochastically; or int16_t, a compensated bf16 x's remainders (x its own anchor, joined on load
// and split on store, as phase_kernel's).
// M: the moments the launch keeps (extrap_math.h's Moments: Adagrad's m = g' is neither loaded nor stored, nor is
// NovoGrad's v, one norm per tensor, which comes as `trust`).
template <Phase P, int M, typename scalar_t, typename anchor_t, typename moment_t, typename acc, typename Table>
__global__ void __launch_bounds__(kAdaptiveThreads)
    adaptive_kernel(Table table, Hyper<acc> h, const acc* trust, const acc* grad_scale, const float* found_inf,
                    const acc* lr, const acc* gamma, const double* beta1, const double* beta2, const acc* loss_scale) {
  constexpr bool kCompensated = std::is_same<anchor_t, int16_t>::value;
  constexpr bool kMaster = !std::is_same<scalar_t, anchor_t>::value && !kCompensated;
  constexpr int R = kRoundingOf<scalar_t, anchor_t>;
  constexpr int RM = kRoundingOf<moment_t, moment_t>;
  const Chunk chunk = chunk_of_block(table);
  const int entry = chunk.entry;
  const int64_t begin = chunk.begin, end = chunk.end;
  auto* x = static_cast<scalar_t*>(table.x[entry]);
  auto* g = static_cast<scalar_t*>(table.g[entry]);
  auto* s = static_cast<anchor_t*>(table.s[entry]);
  auto* m = static_cast<moment_t*>(table.m[entry]);
  auto* v = static_cast<moment_t*>(table.v[entry]);
  auto* v_max = static_cast<moment_t*>(table.v_max[entry]);
  const bool skip = found_inf != nullptr && *found_inf != 0.0f;
  const bool store_g = loss_scale != nullptr && !skip;
  const acc unscale = grad_unscale(loss_scale);
  read_device_values(h, grad_scale, lr, gamma);
  read_device_betas(h, beta1, beta2);
  // the look-ahead of kExtrapolate uses the count after the coming update (an update phase's is counted); the
  // noise and the rounding are keyed by the stored count
  const float stored = *table.step[entry];
  const float step = stored + (P == kExtrapolate ? 1.0f : 0.0f);
  TensorArgs<acc> t{trust != nullptr ? trust[table.tensor[entry]] : acc(1),
                    false,
                    static_cast<uint32_t>(stored),
                    table.index[entry],
                    acc(0),
                    acc(1),
                    acc(1)};
  bias_corrections(h, step, t.bias1, t.bias2_sqrt);
  if (P == kUpdatePastAnchorFree) {  // x was made by the update before this one (counted already: stored - 1)
    recovery_args(h, static_cast<const acc*>(table.last_gamma[entry]), stored - 1.0f, t);
  }

  auto element = [&](acc& xv, acc gv, acc& sv, acc& mv, acc& vv, acc& v_maxv, int64_t i) {
    if (skip) {
      skipped_element<P, kMaster>(xv, sv);
    } else {
      adaptive_element<P, M, kMaster, RM>(xv, gv, sv, mv, vv, v_maxv, h, t, static_cast<uint64_t>(i));
      if (R != kNearest)
        round_stored_anchor<P, R>(xv, sv, rounding_bits(h.seed, t.step, t.index, static_cast<uint64_t>(i)));
    }
  };
  // (FusedAdam passes a full-precision x as its own anchor: read as s, stored as x; a compensated x is read and
  // stored with its remainders, and a skipped step moves neither)
  const bool store_x = kCompensated ? !skip : !skip || skip_stores_param<P>();
  const bool store_s = kCompensated ? store_x : (skip ? skip_stores_anchor<P, kMaster>() : stores_anchor<P, kMaster>());
  const bool store_state = !skip && P != kExtrapolate;
  constexpr bool kReadsX = reads_param<P, kMaster>() || kCompensated;
  constexpr bool kReadsS = !reads_param<P, kMaster>() || kCompensated;

  constexpr int kVec = kVectorWidth<scalar_t>;
  using XVec = Vec<scalar_t, kVec>;
  using SVec = Vec<anchor_t, kVec>;
  using MVec = Vec<moment_t, kVec>;
  const bool vector = aligned<scalar_t, kVec>(x) && aligned<scalar_t, kVec>(g) &&
                      (!kReadsS || aligned<anchor_t, kVec>(s)) && (!keeps_first(M) || aligned<moment_t, kVec>(m)) &&
                      (!keeps_second(M) || aligned<moment_t, kVec>(v)) &&
                      (!keeps_max(M) || aligned<moment_t, kVec>(v_max));
  auto at_vector = [&](int64_t i) {
    XVec xr{};
    SVec sr{};
    MVec vmr{};
    if (kReadsX) xr = *reinterpret_cast<const XVec*>(x + i);
    if (kReadsS) sr = *reinterpret_cast<const SVec*>(s + i);
    const XVec gr = *reinterpret_cast<const XVec*>(g + i);
    MVec mr{}, vr{};
    if (keeps_first(M)) mr = *reinterpret_cast<const MVec*>(m + i);
    if (keeps_second(M)) vr = *reinterpret_cast<const MVec*>(v + i);
    if (keeps_max(M)) vmr = *reinterpret_cast<const MVec*>(v_max + i);
#pragma unroll
    for (int k = 0; k < kVec; ++k) {
      acc xv, sv;
      load_param_and_anchor(xr.v[k], sr.v[k], xv, sv);
      acc mv = static_cast<acc>(mr.v[k]), vv = static_cast<acc>(vr.v[k]), v_maxv = static_cast<acc>(vmr.v[k]);
      element(xv, static_cast<acc>(gr.v[k]), sv, mv, vv, v_maxv, i + k);
      store_param_and_anchor(xr.v[k], sr.v[k], xv, sv);
      mr.v[k] = static_cast<moment_t>(mv);  // (16-bit moments were rounded to values of their type: exact)
      vr.v[k] = static_cast<moment_t>(vv);
      vmr.v[k] = static_cast<moment_t>(v_maxv);
    }
    if (store_x) *reinterpret_cast<XVec*>(x + i) = xr;
    if (store_s) *reinterpret_cast<SVec*>(s + i) = sr;
    if (store_state) {
      if (keeps_first(M)) *reinterpret_cast<MVec*>(m + i) = mr;
      if (keeps_second(M)) *reinterpret_cast<MVec*>(v + i) = vr;
      if (keeps_max(M)) *reinterpret_cast<MVec*>(v_max + i) = vmr;
    }
    if (store_g) store_unscaled(g + i, gr, unscale);
  };
  auto at_element = [&](int64_t j) {
    scalar_t xe = kReadsX ? x[j] : scalar_t(0);
    anchor_t se = kReadsS ? s[j] : anchor_t(0);
    acc xv, sv;
    load_param_and_anchor(xe, se, xv, sv);
    acc mv = keeps_first(M) ? static_cast<acc>(m[j]) : acc(0), vv = keeps_second(M) ? static_cast<acc>(v[j]) : acc(0);
    acc v_maxv = keeps_max(M) ? static_cast<acc>(v_max[j]) : acc(0);
    const acc gv = static_cast<acc>(g[j]);
    element(xv, gv, sv, mv, vv, v_maxv, j);
    if (store_g) g[j] = static_cast<scalar_t>(gv * unscale);
    store_param_and_anchor(xe, se, xv, sv);
    if (store_x) x[j] = xe;
    if (store_s) s[j] = se;
    if (store_state) {
      if (keeps_first(M)) m[j] = static_cast<moment_t>(mv);
      if (keeps_second(M)) v[j] = static_cast<moment_t>(vv);
      if (keeps_max(M)) v_max[j] = static_cast<moment_t>(v_maxv);
    }
  };
  walk_chunk<kVec, kAdaptiveThreads>(begin, end, vector, at_vector, at_element);
}

// LAMB's reading pass: each thread sums s^2 and u^2 over its elements of one chunk into its own slot of
// `partials` ([launch blocks, threads, 2]; block `first_block + blockIdx.x`): the threads do not
// communicate, and the host-side sums (adaptive_norms_cuda) are in a fixed order, so the result is
// deterministic. kFrom: where the anchor comes from (extrap_math.h's AnchorFrom); RM: the coming update's rounding of
// 16-bit moments (moment_t), which its direction reads (none before a look-ahead).
template <bool kAmsgrad, int kFrom, int RM, typename scalar_t, typename anchor_t, typename moment_t, typename acc,
          typename Table>
__global__ void __launch_bounds__(kThreads)
    adaptive_norms_kernel(Table table, Hyper<acc> h, const acc* grad_scale, const double* beta1, const double* beta2,
                          acc* partials, int64_t first_block) {
  const Chunk chunk = chunk_of_block(table);
  const int entry = chunk.entry;
  const int64_t begin = chunk.begin, end = chunk.end;
  const auto* x = static_cast<const scalar_t*>(table.x[entry]);
  const auto* g = static_cast<const scalar_t*>(table.g[entry]);
  const auto* s = static_cast<const anchor_t*>(table.s[entry]);
  const auto* m = static_cast<const moment_t*>(table.m[entry]);
  const auto* v = static_cast<const moment_t*>(table.v[entry]);
  const auto* v_max = static_cast<const moment_t*>(table.v_max[entry]);
  read_device_values(h, grad_scale, static_cast<const acc*>(nullptr), static_cast<const acc*>(nullptr));
  read_device_betas(h, beta1, beta2);
  const float step = *table.step[entry] + 1.0f;  // the count after the coming update
  TensorArgs<acc> t{acc(1), false, static_cast<uint32_t>(step), table.index[entry], acc(0), acc(1), acc(1)};
  bias_corrections(h, step, t.bias1, t.bias2_sqrt);
  if (kFrom == kRecoveredFromParam) {  // x was made by the update of the count stored
    recovery_args(h, static_cast<const acc*>(table.last_gamma[entry]), step - 1.0f, t);
  }
  acc s_squares = 0, u_squares = 0;
  for (int64_t j = begin + threadIdx.x; j < end; j += kThreads) {
    acc xj = kFrom != kAnchorArray ? static_cast<acc>(x[j]) : acc(0);
    if constexpr (std::is_same<anchor_t, int16_t>::value) xj = joined(x[j], s[j]);  // (a compensated x's value)
    const acc sj = kFrom == kAnchorArray ? static_cast<acc>(s[j]) : acc(0);
    const acc mj = static_cast<acc>(m[j]), vj = static_cast<acc>(v[j]);
    const acc v_maxj = kAmsgrad ? static_cast<acc>(v_max[j]) : acc(0);
    adaptive_norm_element<kAmsgrad, RM>(reading_pass_anchor<kFrom, kAmsgrad>(xj, sj, mj, vj, v_maxj, h, t),
                                        static_cast<acc>(g[j]), mj, vj, v_maxj, h, t, s_squares, u_squares,
                                        static_cast<uint64_t>(j));
  }
  acc* out = partials + ((first_block + blockIdx.x) * kThreads + threadIdx.x) * 2;
  out[0] = s_squares;
  out[1] = u_squares;
}

// The per-tensor sums of the reading pass from its per-block sums ([blocks, 2]; a tensor's blocks are
// consecutive): one thread per tensor adds its blocks in order. The blocks' bounds travel in the kernel's
// arguments, as the multi-tensor tables do, so that nothing is copied to the device (no host
// synchronization, and a captured CUDA graph replays it).
constexpr int kSegmentTensors = 448;  // tensors per launch: 3.5 KB of arguments, which every device takes
constexpr int kSegmentThreads = 128;
struct SegmentTable {
  int64_t first_block[kSegmentTensors + 1];  // tensor t's blocks: [first_block[t], first_block[t + 1])
};

template <typename acc>
__global__ void __launch_bounds__(kSegmentThreads)
    segment_sums_kernel(SegmentTable table, int tensors, const acc* block_sums, acc* out) {
  const int t = static_cast<int>(blockIdx.x) * kSegmentThreads + static_cast<int>(threadIdx.x);
  if (t >= tensors) return;
  acc s_squares = 0, u_squares = 0;
  for (int64_t b = table.first_block[t]; b < table.first_block[t + 1]; ++b) {
    s_squares += block_sums[2 * b];
    u_squares += block_sums[2 * b + 1];
  }
  out[2 * t] = s_squares;
  out[2 * t + 1] = u_squares;
}

template <Phase P, int M, typename scalar_t, typename anchor_t, typename moment_t, typename acc>
void launch_adaptive(const Launch& L) {
  const Hyper<acc> h = make_hyper<acc>(L, 1.0);
  const acc* trust = L.trust ? L.trust->data_ptr<acc>() : nullptr;
  const acc* grad_scale = L.grad_scale ? L.grad_scale->data_ptr<acc>() : nullptr;
  const float* found_inf = L.found_inf ? L.found_inf->data_ptr<float>() : nullptr;
  const acc* lr = L.lr_tensor ? L.lr_tensor->data_ptr<acc>() : nullptr;
  const acc* gamma = L.gamma_tensor ? L.gamma_tensor->data_ptr<acc>() : nullptr;
  const double* beta1 = L.beta1_tensor ? L.beta1_tensor->data_ptr<double>() : nullptr;
  const double* beta2 = L.beta2_tensor ? L.beta2_tensor->data_ptr<double>() : nullptr;
  const acc* loss_scale = L.loss_scale ? L.loss_scale->data_ptr<acc>() : nullptr;
  auto stream = reinterpret_cast<cudaStream_t>(L.stream);
  with_table([&](auto tag) {
    using Table = typename decltype(tag)::type;
    multi_tensor_apply<Table>(L.params, L.grads, L.anchors, L.momenta, L.steps, L.indices, L.last_gammas,
                              L.second_moments, L.max_second_moments, [&](Table& table, int blocks) {
                                launch_checked(adaptive_kernel<P, M, scalar_t, anchor_t, moment_t, acc, Table>, blocks,
                                               kAdaptiveThreads, stream, table, h, trust, grad_scale, found_inf, lr,
                                               gamma, beta1, beta2, loss_scale);
                              });
  });
}

template <bool kAmsgrad, int kFrom, int RM, typename scalar_t, typename anchor_t, typename moment_t, typename acc>
at::Tensor launch_adaptive_norms(const Launch& L) {
  const Hyper<acc> h = make_hyper<acc>(L, 1.0);
  const acc* grad_scale = L.grad_scale ? L.grad_scale->data_ptr<acc>() : nullptr;
  const double* beta1 = L.beta1_tensor ? L.beta1_tensor->data_ptr<double>() : nullptr;
  const double* beta2 = L.beta2_tensor ? L.beta2_tensor->data_ptr<double>() : nullptr;
  auto stream = reinterpret_cast<cudaStream_t>(L.stream);
  const int64_t n = static_cast<int64_t>(L.params.size());
  std::vector<int64_t> first_of(n + 1, 0);  // tensor t's blocks, in launch order (empty tensors have none)
  for (int64_t t = 0; t < n; ++t) first_of[t + 1] = first_of[t] + (L.params[t].numel() + kChunkSize - 1) / kChunkSize;
  const int64_t blocks_in_all = first_of[n];
  const auto options = L.momenta[0].options().dtype(c10::CppTypeToScalarType<acc>::value);
  if (blocks_in_all == 0) return at::zeros({n, 2}, options);
  at::Tensor partials = at::empty({blocks_in_all, kThreads, 2}, options);  // every slot is written
  int64_t first_block = 0;
  with_table([&](auto tag) {
    using Table = typename decltype(tag)::type;
    multi_tensor_apply<Table>(
        L.params, L.grads, L.anchors, L.momenta, L.steps, L.indices, L.last_gammas, L.second_moments,
        L.max_second_moments, [&](Table& table, int blocks) {
          launch_checked(adaptive_norms_kernel<kAmsgrad, kFrom, RM, scalar_t, anchor_t, moment_t, acc, Table>, blocks,
                         kThreads, stream, table, h, grad_scale, beta1, beta2, partials.data_ptr<acc>(), first_block);
          first_block += blocks;
        });
  });
  const at::Tensor block_sums = partials.sum(1).contiguous();  // [blocks, 2]
  at::Tensor sums = at::empty({n, 2}, options);
  for (int64_t begin = 0; begin < n; begin += kSegmentTensors) {
    const int tensors = static_cast<int>(std::min<int64_t>(kSegmentTensors, n - begin));
    SegmentTable table;
    std::copy(first_of.begin() + begin, first_of.begin() + begin + tensors + 1, table.first_block);
    launch_checked(segment_sums_kernel<acc>, (tensors + kSegmentThreads - 1) / kSegmentThreads, kSegmentThreads, stream,
                   table, tensors, block_sums.data_ptr<acc>(), sums.data_ptr<acc>() + 2 * begin);
  }
  return sums;
}

}  // namespace

void force_small_kernel_args(bool force) { force_small_tables.store(force); }

bool large_kernel_args() {
  if (force_small_tables.load(std::memory_order_relaxed)) return false;
#ifdef EXTRAP_CUDA_EMULATION
  return true;
#else
  // (asked once per process and device, as torch's MultiTensorApply asks: the runtime this was built
  // with, the driver, and the device's compute capability)
  static const bool runtime_and_driver = [] {
    int runtime = 0, driver = 0;
    return cudaRuntimeGetVersion(&runtime) == cudaSuccess && cudaDriverGetVersion(&driver) == cudaSuccess &&
           runtime >= 12010 && driver >= 12010;
  }();
  if (!runtime_and_driver) return false;
  constexpr int kDevices = 64;
  static std::array<std::atomic<int8_t>, kDevices> known{};  // 0: not asked yet, 1: large, 2: small
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess || device < 0 || device >= kDevices) return false;
  int8_t answer = known[device].load(std::memory_order_relaxed);
  if (answer == 0) {
    int major = 0;
    const bool volta =
        cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) == cudaSuccess && major >= 7;
    answer = volta ? 1 : 2;
    known[device].store(answer, std::memory_order_relaxed);
  }
  return answer == 1;
#endif
}

void apply_cuda(const Launch& L) {
  if (L.params.empty()) return;
  TORCH_CHECK(!L.found_inf || L.found_inf->scalar_type() == at::kFloat, "found_inf must be float32");
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, L.params[0].scalar_type(), "extrap_cuda", [&] {
    using acc = std::conditional_t<std::is_same<scalar_t, double>::value, double, float>;
    switch (L.family) {  // (each family's kernels, its phases fixed at compile time)
      case Family::kAdaptive:
        return with_adaptive_phase(L, [&](auto phase, auto moments) {
          constexpr int M = decltype(moments)::value;
          with_anchor_type<scalar_t, acc, compensable(decltype(phase)::value)>(L, [&](auto anchor_type) {
            with_moment_type<M, acc>(L, [&](auto moment_type) {
              using anchor_t = typename decltype(anchor_type)::type;
              using moment_t = typename decltype(moment_type)::type;
              launch_adaptive<decltype(phase)::value, M, scalar_t, anchor_t, moment_t, acc>(L);
            });
          });
        });
      case Family::kSgd:
        return with_phase(L, [&](auto phase, auto momentum) {
          constexpr Phase P = decltype(phase)::value;
          constexpr bool M = decltype(momentum)::value;
          with_anchor_type<scalar_t, acc, compensable(P)>(
              L, [&](auto state_type) { launch_phase<P, M, scalar_t, typename decltype(state_type)::type, acc>(L); });
        });
    }
  });
}

at::Tensor adaptive_norms_cuda(const Launch& L) {
  return AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, L.params[0].scalar_type(), "extrap_cuda_norms", [&] {
    using acc = std::conditional_t<std::is_same<scalar_t, double>::value, double, float>;
    return with_anchor_type<scalar_t, acc, true>(L, [&](auto anchor_type) {
      using anchor_t = typename decltype(anchor_type)::type;
      return with_reading_anchor<scalar_t, anchor_t>(L, [&](auto from, auto amsgrad) {
        constexpr bool kAmsgrad = decltype(amsgrad)::value;
        constexpr int kFrom = decltype(from)::value;
        return with_moment_type<kAmsgrad ? kWithMax : kFirstAndSecond, acc>(L, [&](auto moment_type) {
          using moment_t = typename decltype(moment_type)::type;
          constexpr int RM = kRoundingOf<moment_t, moment_t>;
          if (RM != kNearest && L.phase != kExtrapolate) {  // (a look-ahead rounds nothing)
            return launch_adaptive_norms<kAmsgrad, kFrom, RM, scalar_t, anchor_t, moment_t, acc>(L);
          }
          return launch_adaptive_norms<kAmsgrad, kFrom, kNearest, scalar_t, anchor_t, moment_t, acc>(L);
        });
      });
    });
  });
}

}  // namespace extrap
