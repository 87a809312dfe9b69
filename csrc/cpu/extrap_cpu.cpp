// The CPU launcher: one multi-tensor pass over every tensor of a bucket, whose elements at::parallel_for
// splits evenly between the threads. The inner loops are plain loops over contiguous memory
// with the phase, the dtypes, momentum and the common values of the option flags fixed at compile
// time, so that the compiler vectorizes them; the math itself is csrc/extrap_math.h.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstring>
#include <type_traits>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define EXTRAP_X86 1
#endif

#include "../launch.h"
#include "cpu_spans.h"

namespace extrap {
namespace {

constexpr int64_t kSerialBelow = 1 << 15;  // launches with fewer elements run on the calling thread
constexpr int64_t kStreamBlock = 512;      // elements staged in L1 between the math and the streaming stores

// A store to a cache line that was not read first makes the core read it anyway (read for ownership):
// a phase that writes x without reading it would move 4 more bytes per fp32 element than SPEC's count.
// Non-temporal stores write whole lines without that read. Copies `bytes` from src (in L1) to dst with
// them where the processor has AVX-512 or AVX2 (the widest one is picked once), else plainly.
#ifdef EXTRAP_X86
__attribute__((target("avx512f"))) void stream_avx512(char* dst, const char* src, size_t bytes) {
  size_t head = std::min(bytes, static_cast<size_t>((64 - reinterpret_cast<uintptr_t>(dst) % 64) % 64));
  std::memcpy(dst, src, head);
  size_t i = head;
  for (; i + 64 <= bytes; i += 64) {
    _mm512_stream_si512(reinterpret_cast<__m512i*>(dst + i), _mm512_loadu_si512(src + i));
  }
  std::memcpy(dst + i, src + i, bytes - i);
}
__attribute__((target("avx2"))) void stream_avx2(char* dst, const char* src, size_t bytes) {
  size_t head = std::min(bytes, static_cast<size_t>((32 - reinterpret_cast<uintptr_t>(dst) % 32) % 32));
  std::memcpy(dst, src, head);
  size_t i = head;
  for (; i + 32 <= bytes; i += 32) {
    _mm256_stream_si256(reinterpret_cast<__m256i*>(dst + i),
                        _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + i)));
  }
  std::memcpy(dst + i, src + i, bytes - i);
}
#endif
void stream_plain(char* dst, const char* src, size_t bytes) { std::memcpy(dst, src, bytes); }

using StreamFn = void (*)(char*, const char*, size_t);
StreamFn pick_stream() {
#ifdef EXTRAP_X86
  if (__builtin_cpu_supports("avx512f")) return stream_avx512;
  if (__builtin_cpu_supports("avx2")) return stream_avx2;
#endif
  return stream_plain;
}
const StreamFn stream_bytes = pick_stream();

// Orders this thread's streaming stores before anything that follows (they are weakly ordered).
void stream_fence() {
#ifdef EXTRAP_X86
  _mm_sfence();
#endif
}

// A branch on a runtime flag inside the loop keeps GCC from vectorizing it (it falls back to scalar
// code: a third of the bandwidth). The flags are loop-invariant, so the launcher picks a loop compiled
// with them fixed: kPlain (every flag at its default, not the first step), kNesterov (the same with
// Nesterov momentum), or kGeneric (read at run time: first steps, rare options, noise).
enum Flags : int { kGeneric = 0, kPlain = 1, kNesterov = 2 };

template <int F, typename acc>
EXTRAP_HD void fix_flags(Hyper<acc>& h, TensorArgs<acc>& t) {
  if constexpr (F != kGeneric) {
    h.nesterov = F == kNesterov;
    h.wd_after_momentum = false;
    h.extrapolate_with_momentum = false;
    h.past_grad = false;
    t.first = false;
  }
}

template <Phase P, typename acc>
int flags_of(const Hyper<acc>& h, const TensorArgs<acc>& t) {
  if (P == kUpdateNoise || h.wd_after_momentum || h.extrapolate_with_momentum || h.past_grad) return kGeneric;
  if (P == kExtrapolate) return kPlain;  // reads neither the first-step flag nor Nesterov
  if (t.first) return kGeneric;
  return h.nesterov ? kNesterov : kPlain;
}

// One span [begin, end) of one tensor: loads, csrc/extrap_math.h's phase_element, and the stores the
// phase makes. Hyperparameters come by value and pointers are restrict-qualified so that the compiler
// keeps scalars in registers and vectorizes; the one legal alias (plain fused SGD, where x is its own
// anchor) goes through run_span_in_place. s and m are state_t: acc, or a 16-bit x's own type.
template <Phase P, bool kMomentum, int F, typename scalar_t, typename state_t, typename acc>
EXTRAP_SIMD_CLONES void run_span(scalar_t* __restrict__ x, const scalar_t* __restrict__ g, state_t* __restrict__ s,
                                 state_t* __restrict__ m, int64_t begin, int64_t end, Hyper<acc> h, TensorArgs<acc> t,
                                 bool stream) {
  constexpr bool kMaster = !std::is_same<scalar_t, state_t>::value;
  constexpr int R = kRoundingOf<scalar_t, state_t>;
  // x is read by a full-precision snapshot (which writes s without reading it) and where the anchor is
  // recomputed (s is then not touched: the launcher passes it as null)
  constexpr bool kReadsX = reads_param<P, kMaster>();
  fix_flags<F>(h, t);
  if (!stream) {
    for (int64_t i = begin; i < end; ++i) {
      acc xv = kReadsX ? static_cast<acc>(x[i]) : acc(0);
      acc sv = kReadsX ? acc(0) : static_cast<acc>(s[i]);
      acc mv = kMomentum ? static_cast<acc>(m[i]) : acc(0);
      phase_element<P, kMomentum, kMaster>(xv, static_cast<acc>(g[i]), sv, mv, h, t, static_cast<uint64_t>(i));
      if constexpr (R != kNearest) {
        round_stored<P, R>(xv, sv, mv, rounding_bits(h.seed, t.step, t.index, static_cast<uint64_t>(i)));
      }
      if constexpr (stores_anchor<P, kMaster>()) s[i] = static_cast<state_t>(sv);
      if constexpr (stores_momentum<P, kMomentum>()) m[i] = static_cast<state_t>(mv);
      x[i] = static_cast<scalar_t>(xv);
    }
    return;
  }
  if constexpr (R == kNearest) {  // (the launcher streams nothing that is rounded stochastically)
    // The same, with the array written unread (s for a snapshot, else x) staged in L1 and streamed out.
    using staged_t = std::conditional_t<kReadsX, acc, scalar_t>;
    alignas(64) staged_t staged[kStreamBlock];
    for (int64_t block = begin; block < end; block += kStreamBlock) {
      const int64_t n = std::min(kStreamBlock, end - block);
      for (int64_t k = 0; k < n; ++k) {
        const int64_t i = block + k;
        acc xv = kReadsX ? static_cast<acc>(x[i]) : acc(0);
        acc sv = kReadsX ? acc(0) : s[i];
        acc mv = kMomentum ? m[i] : acc(0);
        phase_element<P, kMomentum, kMaster>(xv, static_cast<acc>(g[i]), sv, mv, h, t, static_cast<uint64_t>(i));
        if constexpr (kReadsX) {
          staged[k] = sv;
          x[i] = static_cast<scalar_t>(xv);
        } else {
          if constexpr (stores_anchor<P, kMaster>()) s[i] = sv;
          staged[k] = static_cast<scalar_t>(xv);
        }
        if constexpr (stores_momentum<P, kMomentum>()) m[i] = mv;
      }
      void* out = kReadsX ? static_cast<void*>(s + block) : static_cast<void*>(x + block);
      stream_bytes(static_cast<char*>(out), reinterpret_cast<const char*>(staged), n * sizeof(staged_t));
    }
  }
}

// kUpdate where the parameter is its own anchor (FusedSGD without a master): x <- x - lr * d in place.
template <bool kMomentum, int F, typename scalar_t, typename acc>
EXTRAP_SIMD_CLONES void run_span_in_place(scalar_t* __restrict__ x, const scalar_t* __restrict__ g,
                                          scalar_t* __restrict__ m, int64_t begin, int64_t end, Hyper<acc> h,
                                          TensorArgs<acc> t) {
  constexpr int R = kRoundingOf<scalar_t, scalar_t>;
  fix_flags<F>(h, t);
  for (int64_t i = begin; i < end; ++i) {
    acc xv = static_cast<acc>(x[i]), sv = xv;
    acc mv = kMomentum ? static_cast<acc>(m[i]) : acc(0);
    phase_element<kUpdate, kMomentum, false>(xv, static_cast<acc>(g[i]), sv, mv, h, t, static_cast<uint64_t>(i));
    if constexpr (R != kNearest) {
      round_stored<kUpdate, R>(xv, sv, mv, rounding_bits(h.seed, t.step, t.index, static_cast<uint64_t>(i)));
    }
    if constexpr (kMomentum) m[i] = static_cast<scalar_t>(mv);
    x[i] = static_cast<scalar_t>(xv);
  }
}

// The compensated anchor (state_t int16_t: s holds a bf16 x's remainders, extrap_math.h's joined_value): x is its own
// anchor, joined with its remainder on load and split on store, m of the arithmetic's type. Only kUpdate (the
// drop-ins) and the anchor-free update run it (launch.h's compensable), neither storing a separate anchor.
template <Phase P, bool kMomentum, int F, typename acc>
EXTRAP_SIMD_CLONES void run_span_compensated(at::BFloat16* __restrict__ x, const at::BFloat16* __restrict__ g,
                                             int16_t* __restrict__ r, acc* __restrict__ m, int64_t begin, int64_t end,
                                             Hyper<acc> h, TensorArgs<acc> t) {
  fix_flags<F>(h, t);
  for (int64_t i = begin; i < end; ++i) {
    acc xv = joined(x[i], r[i]), sv = xv;
    acc mv = kMomentum ? m[i] : acc(0);
    phase_element<P, kMomentum, false>(xv, static_cast<acc>(g[i]), sv, mv, h, t, static_cast<uint64_t>(i));
    if constexpr (stores_momentum<P, kMomentum>()) m[i] = mv;
    store_split(x[i], r[i], xv);
  }
}

template <Phase P, typename scalar_t, typename state_t, typename acc>
void skip_span(scalar_t* x, state_t* s, int64_t begin, int64_t end) {
  constexpr bool kMaster = !std::is_same<scalar_t, state_t>::value;
  if constexpr (std::is_same<state_t, int16_t>::value) return;  // (a compensated x is its own anchor)
  if constexpr (!skip_stores_anchor<P, kMaster>() && !skip_stores_param<P>()) return;  // nothing moves
  for (int64_t i = begin; i < end; ++i) {
    acc xv = static_cast<acc>(x[i]), sv = static_cast<acc>(s[i]);
    skipped_element<P, kMaster>(xv, sv);
    if constexpr (skip_stores_anchor<P, kMaster>()) s[i] = static_cast<state_t>(sv);
    if constexpr (skip_stores_param<P>()) x[i] = static_cast<scalar_t>(xv);
  }
}

// AMP's gradients written back unscaled, g <- g / loss_scale (torch's fused optimizers leave them so), over
// the span a phase has just read: it is still in cache. The phases' own loops stay as they are.
template <typename scalar_t, typename acc>
void unscale_span(scalar_t* __restrict__ g, int64_t begin, int64_t end, acc unscale) {
  for (int64_t i = begin; i < end; ++i) g[i] = static_cast<scalar_t>(static_cast<acc>(g[i]) * unscale);
}

template <Phase P, bool kMomentum, int F, typename scalar_t, typename state_t, typename momentum_t, typename acc>
void run_item(scalar_t* x, const scalar_t* g, state_t* s, momentum_t* m, int64_t begin, int64_t end,
              const Hyper<acc>& h, const TensorArgs<acc>& t, bool stream) {
  if constexpr (std::is_same<state_t, int16_t>::value) {
    run_span_compensated<P, kMomentum, F, acc>(x, g, s, m, begin, end, h, t);
  } else {
    if constexpr (P == kUpdate && std::is_same<scalar_t, state_t>::value) {
      if (static_cast<void*>(x) == static_cast<void*>(s)) {
        return run_span_in_place<kMomentum, F, scalar_t, acc>(x, g, m, begin, end, h, t);
      }
    }
    run_span<P, kMomentum, F, scalar_t, state_t, acc>(x, g, s, m, begin, end, h, t, stream);
  }
}

// state_t: s's and m's type (launch.h's with_anchor_type; int16_t: the compensated anchor's remainders, m of acc).
template <Phase P, bool kMomentum, typename scalar_t, typename state_t, typename acc>
void run_launch(const Launch& L, bool skip, double inv_scale, acc unscale) {
  constexpr bool kCompensated = std::is_same<state_t, int16_t>::value;
  using momentum_t = std::conditional_t<kCompensated, acc, state_t>;
  const int64_t n = static_cast<int64_t>(L.params.size());
  const Hyper<acc> h = make_hyper<acc>(L, inv_scale);
  std::vector<TensorArgs<acc>> args(n);
  std::vector<int> flags(n);
  std::vector<int64_t> first(n + 1, 0);  // tensor t holds elements [first[t], first[t + 1]) of the launch
  const acc* trust = L.trust ? L.trust->data_ptr<acc>() : nullptr;
  for (int64_t t = 0; t < n; ++t) {
    const float step = *L.steps[t].data_ptr<float>();
    args[t] = {trust ? trust[t] : acc(1), step <= 1.0f, static_cast<uint32_t>(step),
               static_cast<uint32_t>(L.indices[t]),
               P == kUpdatePastAnchorFree ? *L.last_gammas[t].data_ptr<acc>() : acc(0)};
    flags[t] = flags_of<P>(h, args[t]);
    first[t + 1] = first[t] + L.params[t].numel();
  }
  const int64_t total = first[n];
  // (an anchor-free update writes only x and m, which it reads, a compensated one x and its remainders: nothing to
  // stream)
  const bool stream = P != kUpdatePastAnchorFree && !kCompensated && kRoundingOf<scalar_t, state_t> == kNearest &&
                      total >= kCpuStreamAbove;
  // The threads split the launch's elements evenly, whatever the tensor sizes (a model's list mixes
  // 64-element biases with million-element weights); a small launch runs on the calling thread, where
  // waking the pool would cost more than the work.
  const int64_t grain = total < kSerialBelow ? std::max<int64_t>(total, 1) : kChunk;
  at::parallel_for(0, total, grain, [&](int64_t lo, int64_t hi) {
    int64_t t = std::upper_bound(first.begin(), first.end(), lo) - first.begin() - 1;
    for (; t < n && first[t] < hi; ++t) {
      const int64_t begin = std::max(lo, first[t]) - first[t];
      const int64_t end = std::min(hi, first[t + 1]) - first[t];
      if (begin >= end) continue;  // an empty tensor
      auto* x = L.params[t].data_ptr<scalar_t>();
      auto* s = P == kUpdatePastAnchorFree && !kCompensated ? nullptr : L.anchor(t).data_ptr<state_t>();
      if (skip) {
        skip_span<P, scalar_t, state_t, acc>(x, s, begin, end);
        continue;
      }
      auto* g = L.grads[t].data_ptr<scalar_t>();
      momentum_t* m = kMomentum ? L.momenta[t].data_ptr<momentum_t>() : nullptr;
      auto run = [&](int64_t from, int64_t to) {
        switch (flags[t]) {
          case kPlain:
            return run_item<P, kMomentum, kPlain>(x, g, s, m, from, to, h, args[t], stream);
          case kNesterov:
            return run_item<P, kMomentum, kNesterov>(x, g, s, m, from, to, h, args[t], stream);
          default:
            return run_item<P, kMomentum, kGeneric>(x, g, s, m, from, to, h, args[t], stream);
        }
      };
      if (!L.loss_scale) {
        run(begin, end);
        continue;
      }
      for (int64_t from = begin; from < end; from += kChunk) {  // (a chunk's gradients are still in cache)
        const int64_t to = std::min(end, from + kChunk);
        run(from, to);
        unscale_span(g, from, to, unscale);
      }
    }
    if (stream) stream_fence();
  });
}

// The adaptive bases, one span of one tensor. Restrict-qualified as run_span (the compiler vectorizes it
// then); where x is its own anchor (FusedAdam without a separate master, kUpdate in place) the launcher
// passes x as s to run_adaptive_span_in_place, the same loop without the promise. s is anchor_t: acc, or
// (master_weights=False) a 16-bit x's own type, whose stored values are then rounded stochastically.
// kDecoupled fixes the decay's flag at compile time: with the branch on it inside, GCC leaves the 16-bit
// loops scalar (8x slower than vectorized, measured). M: the moments the launch keeps (extrap_math.h's Moments),
// held as moment_t: acc, or 16-bit (exp_avg_dtype), whose stored values an update rounds stochastically.
#define EXTRAP_ADAPTIVE_SPAN(name, restrict_xs)                                                                     \
  template <Phase P, int M, bool kDecoupled, typename scalar_t, typename anchor_t, typename moment_t, typename acc> \
  EXTRAP_SIMD_CLONES void name(scalar_t* restrict_xs x, const scalar_t* __restrict__ g, anchor_t* restrict_xs s,    \
                               moment_t* __restrict__ m, moment_t* __restrict__ v, moment_t* __restrict__ v_max,    \
                               int64_t begin, int64_t end, Hyper<acc> h, TensorArgs<acc> t) {                       \
    h.decoupled = kDecoupled;                                                                                       \
    adaptive_loop<P, M>(x, g, s, m, v, v_max, begin, end, h, t);                                                    \
  }

template <Phase P, int M, typename scalar_t, typename anchor_t, typename moment_t, typename acc>
inline __attribute__((always_inline)) void adaptive_loop(scalar_t* x, const scalar_t* g, anchor_t* s, moment_t* m,
                                                         moment_t* v, moment_t* v_max, int64_t begin, int64_t end,
                                                         const Hyper<acc>& h, const TensorArgs<acc>& t) {
  // anchor_t int16_t: s holds a compensated bf16 x's remainders (x its own anchor, joined on load, split on store)
  constexpr bool kCompensated = std::is_same<anchor_t, int16_t>::value;
  constexpr bool kMaster = !std::is_same<scalar_t, anchor_t>::value && !kCompensated;
  constexpr int R = kRoundingOf<scalar_t, anchor_t>;
  constexpr int RM = kRoundingOf<moment_t, moment_t>;
  constexpr bool kReadsX = reads_param<P, kMaster>();
  for (int64_t i = begin; i < end; ++i) {
    acc xv = kReadsX ? static_cast<acc>(x[i]) : acc(0);
    acc sv = kReadsX ? acc(0) : static_cast<acc>(s[i]);
    if constexpr (kCompensated) sv = xv = joined(x[i], s[i]);
    acc mv = keeps_first(M) ? static_cast<acc>(m[i]) : acc(0), vv = keeps_second(M) ? static_cast<acc>(v[i]) : acc(0);
    acc v_maxv = keeps_max(M) ? static_cast<acc>(v_max[i]) : acc(0);
    adaptive_element<P, M, kMaster, RM>(xv, static_cast<acc>(g[i]), sv, mv, vv, v_maxv, h, t, static_cast<uint64_t>(i));
    if constexpr (R != kNearest) {
      round_stored_anchor<P, R>(xv, sv, rounding_bits(h.seed, t.step, t.index, static_cast<uint64_t>(i)));
    }
    if constexpr (stores_anchor<P, kMaster>() && !kCompensated) s[i] = static_cast<anchor_t>(sv);
    if constexpr (P != kExtrapolate) {  // (16-bit moments were rounded to values of their type: exact here)
      if constexpr (keeps_first(M)) m[i] = static_cast<moment_t>(mv);
      if constexpr (keeps_second(M)) v[i] = static_cast<moment_t>(vv);
      if constexpr (keeps_max(M)) v_max[i] = static_cast<moment_t>(v_maxv);
    }
    if constexpr (kCompensated) {
      store_split(x[i], s[i], xv);
    } else {
      x[i] = static_cast<scalar_t>(xv);
    }
  }
}
EXTRAP_ADAPTIVE_SPAN(run_adaptive_span, __restrict__)
EXTRAP_ADAPTIVE_SPAN(run_adaptive_span_in_place, )
#undef EXTRAP_ADAPTIVE_SPAN

// The span loop for a launch's flags, fixed at compile time: the decay's kind, and x its own anchor (in place).
// An anchor of another type than x (a master) is never x, so no in-place loop is compiled for it: a fifth of the
// file's loop instances, which are most of its compile time.
template <Phase P, int M, typename scalar_t, typename anchor_t, typename moment_t, typename acc>
auto* adaptive_span_of(bool decoupled, bool in_place) {
  if constexpr (std::is_same<scalar_t, anchor_t>::value) {
    if (in_place)
      return decoupled ? run_adaptive_span_in_place<P, M, true, scalar_t, anchor_t, moment_t, acc>
                       : run_adaptive_span_in_place<P, M, false, scalar_t, anchor_t, moment_t, acc>;
  }
  return decoupled ? run_adaptive_span<P, M, true, scalar_t, anchor_t, moment_t, acc>
                   : run_adaptive_span<P, M, false, scalar_t, anchor_t, moment_t, acc>;
}

template <Phase P, int M, typename scalar_t, typename anchor_t, typename moment_t, typename acc>
void run_adaptive_launch(const Launch& L, bool skip, double inv_scale, acc unscale) {
  const Hyper<acc> h = make_hyper<acc>(L, inv_scale);
  std::vector<TensorArgs<acc>> args;
  AdaptiveArgs<acc> args_of(L, h, P == kExtrapolate);
  int64_t total = 0;
  for (size_t t = 0; t < L.params.size(); ++t) {
    args.push_back(args_of(t));
    total += L.params[t].numel();
  }
  const std::vector<Span> spans = spans_of(L.params, kChunk);
  const int64_t grain = total < kSerialBelow ? std::max<int64_t>(static_cast<int64_t>(spans.size()), 1) : 1;
  at::parallel_for(0, static_cast<int64_t>(spans.size()), grain, [&](int64_t lo, int64_t hi) {
    for (int64_t k = lo; k < hi; ++k) {
      const Span& span = spans[k];
      auto* x = L.params[span.tensor].data_ptr<scalar_t>();
      auto* s = L.anchor(span.tensor).data_ptr<anchor_t>();
      if (skip) {
        skip_span<P, scalar_t, anchor_t, acc>(x, s, span.begin, span.end);
        continue;
      }
      moment_t* v = keeps_second(M) ? L.second_moments[span.tensor].data_ptr<moment_t>() : nullptr;
      moment_t* v_max = keeps_max(M) ? L.max_second_moments[span.tensor].data_ptr<moment_t>() : nullptr;
      const bool in_place = static_cast<void*>(x) == static_cast<void*>(s);
      auto* run = adaptive_span_of<P, M, scalar_t, anchor_t, moment_t, acc>(h.decoupled, in_place);
      auto* g = L.grads[span.tensor].data_ptr<scalar_t>();
      moment_t* m = keeps_first(M) ? L.momenta[span.tensor].data_ptr<moment_t>() : nullptr;
      run(x, g, s, m, v, v_max, span.begin, span.end, h, args[span.tensor]);
      if (L.loss_scale) unscale_span(g, span.begin, span.end, unscale);
    }
  });
}

// After an anchor-free adaptive update: the weights (r0, r1) the next one recovers its anchor with (Adam: 0 and
// gamma; AdamW: wd r1 and gamma / (1 - lr wd - gamma wd); LAMB: lr and gamma scaled by the tensor's trust ratio),
// written on the host in the state dtype with the ops of extrap_kernels/recovery.py's weights() in their order, so
// that every backend records the same bits. (Tensor ops per step cost more host time than the kernel at 161 small
// tensors.)
template <typename acc>
void record_recovery_weights(const Launch& L) {
  const acc* trust = L.trust ? L.trust->data_ptr<acc>() : nullptr;
  const acc wd = static_cast<acc>(L.weight_decay);
  for (size_t t = 0; t < L.last_gammas.size(); ++t) {
    const acc lr = trust ? static_cast<acc>(L.lr) * trust[t] : static_cast<acc>(L.lr);
    const acc gamma = trust ? static_cast<acc>(L.gamma) * trust[t] : static_cast<acc>(L.gamma);
    acc r0 = 0, r1 = gamma;
    if (L.decoupled) {
      r1 = gamma / ((acc(1) - lr * wd) - gamma * wd);
      r0 = wd * r1;
    }
    acc* w = L.last_gammas[t].data_ptr<acc>();
    w[0] = r0;
    w[1] = r1;
  }
}

}  // namespace

void apply_cpu(const Launch& L) {
  if (L.params.empty()) return;
  const bool skip = L.found_inf && L.found_inf->item<double>() != 0.0;
  if (L.counts_step() && !skip) {  // the kernel reads the count of this update (a skipped one is not counted)
    for (const at::Tensor& step : L.steps) *step.data_ptr<float>() += 1.0f;
  }
  const double inv_scale = L.grad_scale ? 1.0 / L.grad_scale->item<double>() : 1.0;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, L.params[0].scalar_type(), "extrap_cpu", [&] {
    using acc = std::conditional_t<std::is_same<scalar_t, double>::value, double, float>;
    const acc unscale = L.loss_scale ? static_cast<acc>(1.0 / L.loss_scale->item<double>()) : acc(1);
    switch (L.family) {  // (each family's loops, its phases fixed at compile time)
      case Family::kAdaptive:
        return with_adaptive_phase(L, [&](auto phase, auto moments) {
          constexpr Phase P = decltype(phase)::value;
          constexpr int M = decltype(moments)::value;
          with_anchor_type<scalar_t, acc, compensable(P)>(L, [&](auto anchor_type) {
            with_moment_type<M, acc>(L, [&](auto moment_type) {
              using anchor_t = typename decltype(anchor_type)::type;
              using moment_t = typename decltype(moment_type)::type;
              run_adaptive_launch<P, M, scalar_t, anchor_t, moment_t, acc>(L, skip, inv_scale, unscale);
            });
          });
          if (P == kUpdatePastAnchorFree && !skip) record_recovery_weights<acc>(L);
        });
      case Family::kSgd:
        return with_phase(L, [&](auto phase, auto momentum) {
          constexpr Phase P = decltype(phase)::value;
          constexpr bool M = decltype(momentum)::value;
          with_anchor_type<scalar_t, acc, compensable(P)>(L, [&](auto state_type) {
            run_launch<P, M, scalar_t, typename decltype(state_type)::type, acc>(L, skip, inv_scale, unscale);
          });
          if (P == kUpdatePastAnchorFree && !skip) {  // x was extrapolated with this gamma (read next update)
            for (const at::Tensor& last : L.last_gammas) *last.data_ptr<acc>() = static_cast<acc>(L.gamma);
          }
        });
    }
  });
}

}  // namespace extrap
