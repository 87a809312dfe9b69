// The CPU launcher: one multi-tensor pass over every tensor of a bucket, split into fixed-size chunks
// that at::parallel_for hands to the threads. The inner loops are plain loops over contiguous memory
// with the phase, the dtypes and momentum fixed at compile time, so the compiler can vectorize them;
// the math itself is csrc/extrap_math.h.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <type_traits>

#include "../launch.h"

namespace extrap {
namespace {

constexpr int64_t kChunk = 1 << 16;

// The loops are compute-bound whenever the data sits in cache, so they are compiled for AVX-512 and
// AVX2+FMA as well as the baseline, and the loader picks the widest one the processor has.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define EXTRAP_SIMD_CLONES __attribute__((target_clones("default", "arch=x86-64-v3", "arch=x86-64-v4")))
#else
#define EXTRAP_SIMD_CLONES
#endif  // elements per work item: large enough to amortize, small enough to balance

template <typename acc>
struct TensorArgs {
  acc trust;
  bool first;  // the momentum buffer has never been written
  uint32_t step;
  uint32_t index;
};

// One span [begin, end) of one tensor. s and x are the same dtype unless x is 16-bit, in which case s
// is its fp32 master and must be written back by updates. Hyperparameters come by value and pointers
// are restrict-qualified so that the compiler keeps scalars in registers and vectorizes the loop; the
// one legal alias (plain fused SGD, where a full-precision x is its own anchor) has its own loop.
template <Phase P, bool kMomentum, typename scalar_t, typename acc>
EXTRAP_SIMD_CLONES void run_span(scalar_t* __restrict__ x, const scalar_t* __restrict__ g, acc* __restrict__ s,
              acc* __restrict__ m, int64_t begin, int64_t end, const Hyper<acc> h, const TensorArgs<acc> t) {
  constexpr bool kMaster = !std::is_same<scalar_t, acc>::value;
  if constexpr (P == kExtrapolate) {
    for (int64_t i = begin; i < end; ++i) {
      const acc anchor = kMaster ? s[i] : static_cast<acc>(x[i]);
      if constexpr (!kMaster) s[i] = anchor;  // the snapshot
      const acc mom = kMomentum ? m[i] : acc(0);
      x[i] = static_cast<scalar_t>(extrapolated_point(anchor, static_cast<acc>(g[i]), mom, h, t.trust));
    }
  } else {
    for (int64_t i = begin; i < end; ++i) {
      acc anchor = s[i];
      acc mom = kMomentum ? m[i] : acc(0);
      acc gp;
      const acc d = base_update(anchor, mom, static_cast<acc>(g[i]), h, t.trust, t.first, gp);
      if constexpr (kMomentum) m[i] = mom;
      if constexpr (P == kUpdate) {
        // Two-phase: the new anchor lives in x (and in the master when x is 16-bit); a full-precision
        // s is only the snapshot, rewritten by the next extrapolate, so it is not stored (SPEC floor).
        if constexpr (kMaster) s[i] = anchor;
        x[i] = static_cast<scalar_t>(anchor);
      } else if constexpr (P == kUpdatePast) {
        s[i] = anchor;
        x[i] = static_cast<scalar_t>(past_point(anchor, gp, d, h));
      } else {
        s[i] = anchor;
        const acc xi = static_cast<acc>(noise_normal(h.seed, t.step, t.index, static_cast<uint64_t>(i)));
        x[i] = static_cast<scalar_t>(anchor + h.noise_std * xi);
      }
    }
  }
}

// kUpdate where the full-precision parameter is its own anchor (FusedSGD): x <- x - lr * d in place.
template <bool kMomentum, typename acc>
EXTRAP_SIMD_CLONES void run_span_in_place(acc* __restrict__ x, const acc* __restrict__ g, acc* __restrict__ m, int64_t begin,
                       int64_t end, const Hyper<acc> h, const TensorArgs<acc> t) {
  for (int64_t i = begin; i < end; ++i) {
    acc anchor = x[i];
    acc mom = kMomentum ? m[i] : acc(0);
    acc gp;
    base_update(anchor, mom, g[i], h, t.trust, t.first, gp);
    if constexpr (kMomentum) m[i] = mom;
    x[i] = anchor;
  }
}

// found_inf is set: leave anchor, momentum and step as they are; only keep x consistent with the
// iteration being abandoned (the snapshot is still taken, an extrapolated x goes back to its anchor).
template <Phase P, typename scalar_t, typename acc>
void skip_span(scalar_t* x, acc* s, int64_t begin, int64_t end) {
  constexpr bool kMaster = !std::is_same<scalar_t, acc>::value;
  if constexpr (P == kExtrapolate) {
    if constexpr (!kMaster)
      for (int64_t i = begin; i < end; ++i) s[i] = static_cast<acc>(x[i]);
  } else if constexpr (P == kUpdate) {
    for (int64_t i = begin; i < end; ++i) x[i] = static_cast<scalar_t>(s[i]);
  }
}

struct WorkItem {
  int64_t tensor, begin, end;
};

template <Phase P, bool kMomentum, typename scalar_t, typename acc>
void run_launch(const Launch& L, bool skip, double inv_scale) {
  const int64_t n = static_cast<int64_t>(L.params.size());
  const Hyper<acc> h = make_hyper<acc>(L, inv_scale);
  std::vector<TensorArgs<acc>> args(n);
  std::vector<WorkItem> items;
  const acc* trust = L.trust ? L.trust->data_ptr<acc>() : nullptr;
  for (int64_t t = 0; t < n; ++t) {
    const float step = L.steps[t].item<float>();
    args[t] = {trust ? trust[t] : acc(1), step <= 1.0f, static_cast<uint32_t>(step),
               static_cast<uint32_t>(L.indices[t])};
    const int64_t numel = L.params[t].numel();
    for (int64_t b = 0; b < numel; b += kChunk) items.push_back({t, b, std::min(numel, b + kChunk)});
  }
  at::parallel_for(0, static_cast<int64_t>(items.size()), 1, [&](int64_t lo, int64_t hi) {
    for (int64_t k = lo; k < hi; ++k) {
      const WorkItem& w = items[k];
      auto* x = L.params[w.tensor].data_ptr<scalar_t>();
      auto* s = L.anchors[w.tensor].data_ptr<acc>();
      if (skip) {
        skip_span<P, scalar_t, acc>(x, s, w.begin, w.end);
        continue;
      }
      const auto* g = L.grads[w.tensor].data_ptr<scalar_t>();
      acc* m = kMomentum ? L.momenta[w.tensor].data_ptr<acc>() : nullptr;
      if constexpr (P == kUpdate && std::is_same<scalar_t, acc>::value) {
        if (static_cast<void*>(x) == static_cast<void*>(s)) {
          run_span_in_place<kMomentum, acc>(s, g, m, w.begin, w.end, h, args[w.tensor]);
          continue;
        }
      }
      run_span<P, kMomentum, scalar_t, acc>(x, g, s, m, w.begin, w.end, h, args[w.tensor]);
    }
  });
}

template <typename scalar_t, typename acc>
void dispatch_phase(const Launch& L, bool skip, double inv_scale) {
  const bool mom = !L.momenta.empty();
#define EXTRAP_CASE(P)                                                                   \
  case P:                                                                                \
    return mom ? run_launch<P, true, scalar_t, acc>(L, skip, inv_scale)                  \
               : run_launch<P, false, scalar_t, acc>(L, skip, inv_scale);
  switch (L.phase) {
    EXTRAP_CASE(kExtrapolate)
    EXTRAP_CASE(kUpdate)
    EXTRAP_CASE(kUpdatePast)
    EXTRAP_CASE(kUpdateNoise)
    default:
      TORCH_CHECK(false, "extrap_kernels: unknown phase ", L.phase);
  }
#undef EXTRAP_CASE
}

}  // namespace

void apply_cpu(const Launch& L) {
  if (L.params.empty()) return;
  const bool skip = L.found_inf && L.found_inf->item<double>() != 0.0;
  const double inv_scale = L.grad_scale ? 1.0 / L.grad_scale->item<double>() : 1.0;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, L.params[0].scalar_type(), "extrap_cpu", [&] {
    using acc = std::conditional_t<std::is_same<scalar_t, double>::value, double, float>;
    dispatch_phase<scalar_t, acc>(L, skip, inv_scale);
  });
}

}  // namespace extrap
