// The CPU launcher's reading passes, which write no state: LAMB's per-tensor sums of s^2 and u^2 (the
// operator extrap_kernels::norms) and each tensor's sum of squares (extrap_kernels::squares). Both add
// their spans' sums in span order: the same result for any number of threads.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <type_traits>

#include "../launch.h"
#include "cpu_spans.h"

namespace extrap {
namespace {

// LAMB's reading pass over one span: its sums of s^2 and u^2. kLanes running sums, element i into lane
// i % kLanes: independent sums the compiler keeps in vector registers (one running sum is a dependency
// chain it may not reorder), added in a fixed order. (kDecoupled: as in extrap_cpu.cpp's adaptive spans; kFrom:
// extrap_math.h's AnchorFrom; RM: the coming update's rounding of 16-bit moments, moment_t, which its direction
// reads, t.step that update's count.)
template <bool kAmsgrad, int kFrom, bool kDecoupled, int RM, typename scalar_t, typename anchor_t, typename moment_t,
          typename acc>
EXTRAP_SIMD_CLONES void norm_span(const scalar_t* __restrict__ x, const anchor_t* __restrict__ anchor,
                                  const scalar_t* __restrict__ g, const moment_t* __restrict__ m,
                                  const moment_t* __restrict__ v, const moment_t* __restrict__ v_max, int64_t begin,
                                  int64_t end, Hyper<acc> h, TensorArgs<acc> t, acc* sums) {
  constexpr int kLanes = 16;
  h.decoupled = kDecoupled;
  acc s_lanes[kLanes] = {}, u_lanes[kLanes] = {};
  auto element = [&](int64_t j, int lane) {
    acc xj = kFrom != kAnchorArray ? static_cast<acc>(x[j]) : acc(0);
    if constexpr (std::is_same<anchor_t, int16_t>::value) xj = joined(x[j], anchor[j]);  // (compensated)
    const acc sj = kFrom == kAnchorArray ? static_cast<acc>(anchor[j]) : acc(0);
    const acc mj = static_cast<acc>(m[j]), vj = static_cast<acc>(v[j]);
    const acc v_maxj = kAmsgrad ? static_cast<acc>(v_max[j]) : acc(0);
    adaptive_norm_element<kAmsgrad, RM>(reading_pass_anchor<kFrom, kAmsgrad>(xj, sj, mj, vj, v_maxj, h, t),
                                        static_cast<acc>(g[j]), mj, vj, v_maxj, h, t, s_lanes[lane], u_lanes[lane],
                                        static_cast<uint64_t>(j));
  };
  int64_t i = begin;
  for (; i + kLanes <= end; i += kLanes) {
    for (int lane = 0; lane < kLanes; ++lane) element(i + lane, lane);
  }
  for (int lane = 0; i < end; ++i, ++lane) element(i, lane);
  acc s_squares = 0, u_squares = 0;
  for (int lane = 0; lane < kLanes; ++lane) {
    s_squares += s_lanes[lane];
    u_squares += u_lanes[lane];
  }
  sums[0] = s_squares;
  sums[1] = u_squares;
}

// LAMB's reading pass: each span's sums, then each tensor's, added in span order (the same result for
// any number of threads). The anchor is anchor_t: acc, or a 16-bit x's own type without a master (or int16_t: a
// compensated x's remainders, x its own anchor: launch.h's with_reading_anchor); the moments
// moment_t (acc, or 16-bit: rounded as the coming update rounds them, none before a look-ahead).
template <bool kAmsgrad, int kFrom, typename scalar_t, typename anchor_t, typename moment_t, typename acc>
at::Tensor run_adaptive_norms(const Launch& L, double inv_scale) {
  const Hyper<acc> h = make_hyper<acc>(L, inv_scale);
  std::vector<TensorArgs<acc>> args;
  AdaptiveArgs<acc> args_of(L, h, true);
  for (size_t t = 0; t < L.params.size(); ++t) {
    args.push_back(args_of(t));
    args.back().step += 1;  // (the coming update's count keys its rounding)
  }
  const std::vector<Span> spans = spans_of(L.params, kChunk);
  std::vector<acc> sums(2 * spans.size(), acc(0));
  constexpr int RM = kRoundingOf<moment_t, moment_t>;
  auto* run = L.phase == kExtrapolate
                  ? (h.decoupled ? norm_span<kAmsgrad, kFrom, true, kNearest, scalar_t, anchor_t, moment_t, acc>
                                 : norm_span<kAmsgrad, kFrom, false, kNearest, scalar_t, anchor_t, moment_t, acc>)
                  : (h.decoupled ? norm_span<kAmsgrad, kFrom, true, RM, scalar_t, anchor_t, moment_t, acc>
                                 : norm_span<kAmsgrad, kFrom, false, RM, scalar_t, anchor_t, moment_t, acc>);
  at::parallel_for(0, static_cast<int64_t>(spans.size()), 1, [&](int64_t lo, int64_t hi) {
    for (int64_t k = lo; k < hi; ++k) {
      const Span& span = spans[k];
      constexpr bool kReadsAnchors = kFrom == kAnchorArray || std::is_same<anchor_t, int16_t>::value;
      const anchor_t* s = kReadsAnchors ? L.anchor(span.tensor).data_ptr<anchor_t>() : nullptr;
      run(L.params[span.tensor].data_ptr<scalar_t>(), s, L.grads[span.tensor].data_ptr<scalar_t>(),
          L.momenta[span.tensor].data_ptr<moment_t>(), L.second_moments[span.tensor].data_ptr<moment_t>(),
          kAmsgrad ? L.max_second_moments[span.tensor].data_ptr<moment_t>() : nullptr, span.begin, span.end, h,
          args[span.tensor], &sums[2 * k]);
    }
  });
  at::Tensor out = at::zeros({static_cast<int64_t>(L.params.size()), 2},
                             L.momenta[0].options().dtype(c10::CppTypeToScalarType<acc>::value));
  acc* o = out.data_ptr<acc>();
  for (size_t k = 0; k < spans.size(); ++k) {
    o[2 * spans[k].tensor] += sums[2 * k];
    o[2 * spans[k].tensor + 1] += sums[2 * k + 1];
  }
  return out;
}

// One span's sum of squares in `lanes` independent sums (vectorized as norm_span's), added in lane order.
template <typename scalar_t, typename acc>
EXTRAP_SIMD_CLONES acc squares_span(const scalar_t* __restrict__ v, int64_t begin, int64_t end) {
  constexpr int kLanes = 16;
  acc lanes[kLanes] = {};
  int64_t i = begin;
  for (; i + kLanes <= end; i += kLanes) {
    for (int lane = 0; lane < kLanes; ++lane) {
      const acc e = static_cast<acc>(v[i + lane]);
      lanes[lane] += e * e;
    }
  }
  for (int lane = 0; i < end; ++i, ++lane) {
    const acc e = static_cast<acc>(v[i]);
    lanes[lane] += e * e;
  }
  acc total = 0;
  for (int lane = 0; lane < kLanes; ++lane) total += lanes[lane];
  return total;
}

}  // namespace

at::Tensor squares_cpu(const std::vector<at::Tensor>& tensors) {
  std::vector<at::Tensor> dense;
  for (const at::Tensor& t : tensors) dense.push_back(t.contiguous());
  const std::vector<Span> spans = spans_of(dense, kChunk);
  std::vector<double> sums(spans.size(), 0.0);
  at::parallel_for(0, static_cast<int64_t>(spans.size()), 1, [&](int64_t lo, int64_t hi) {
    for (int64_t k = lo; k < hi; ++k) {
      const Span& span = spans[k];
      AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, dense[span.tensor].scalar_type(), "squares", [&] {
        using acc = std::conditional_t<std::is_same<scalar_t, double>::value, double, float>;
        sums[k] = squares_span<scalar_t, acc>(dense[span.tensor].data_ptr<scalar_t>(), span.begin, span.end);
      });
    }
  });
  at::Tensor out = at::zeros({static_cast<int64_t>(tensors.size())}, at::kDouble);
  double* o = out.data_ptr<double>();
  for (size_t k = 0; k < spans.size(); ++k) o[spans[k].tensor] += sums[k];
  return out;
}

at::Tensor adaptive_norms_cpu(const Launch& L) {
  const double inv_scale = L.grad_scale ? 1.0 / L.grad_scale->item<double>() : 1.0;
  return AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, L.params[0].scalar_type(), "extrap_cpu_norms", [&] {
    using acc = std::conditional_t<std::is_same<scalar_t, double>::value, double, float>;
    return with_anchor_type<scalar_t, acc, true>(L, [&](auto anchor_type) {
      using anchor_t = typename decltype(anchor_type)::type;
      return with_reading_anchor<scalar_t, anchor_t>(L, [&](auto from, auto amsgrad) {
        constexpr bool kAmsgrad = decltype(amsgrad)::value;
        return with_moment_type<kAmsgrad ? kWithMax : kFirstAndSecond, acc>(L, [&](auto moment_type) {
          using moment_t = typename decltype(moment_type)::type;
          return run_adaptive_norms<kAmsgrad, decltype(from)::value, scalar_t, anchor_t, moment_t, acc>(L, inv_scale);
        });
      });
    });
  });
}

}  // namespace extrap
