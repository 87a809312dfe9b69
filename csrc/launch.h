// What one multi-tensor launch is given: the tensors of one (device, dtype) bucket and the group's
// hyperparameters. Filled by the operator entry points (csrc/bindings.cpp) from the arguments of a
// `torch.ops.extrap_kernels.<phase>_` call, checked once there, and read by the CPU launcher
// (csrc/cpu) and the CUDA launcher (csrc/cuda).
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <type_traits>
#include <vector>

#include "extrap_math.h"

namespace extrap {

// The base families, each with operators of its own schema (csrc/operator_args.h) and its own launcher
// loops: the SGD family (SGD, Apex's FusedSGD, LARS) and the adaptive bases (Adam, AdamW, LAMB).
enum class Family { kSgd, kAdaptive };

struct Launch {
  Family family = Family::kSgd;  // the operator's, which says which arguments the launch holds
  int64_t phase = kUpdate;
  std::vector<at::Tensor> params;       // x, fp32/fp64/bf16/fp16
  std::vector<at::Tensor> grads;        // g, the dtype of x
  std::vector<at::Tensor> anchors;      // s: fp32 master for 16-bit x, else the dtype of x; EMPTY: x is its
                                        // own anchor (plain fused SGD on full-precision parameters, kUpdate);
                                        // int16: a bf16 x's remainders, x its own anchor (compensated())
  std::vector<at::Tensor> momenta;      // m, the dtype of s; empty when momentum == 0
  std::vector<at::Tensor> steps;        // 0-dim float32 step counts; update phases count this update themselves
  std::vector<int64_t> indices;         // parameter index in the optimizer, keys the noise
  std::vector<at::Tensor> last_gammas;  // kUpdatePastAnchorFree: 0-dim, the dtype of s; the gamma x was
                                        // last extrapolated with (the launch records this one's)
  std::optional<at::Tensor> trust;      // per-tensor LARS (or LAMB) ratio, the dtype of s; NovoGrad's running
                                        // gradient norms (tensor_norms), the dtype of its moments
  // The adaptive bases (Adam, AdamW, LAMB): `momenta` hold the first moments m, these the second moments v
  // and, with amsgrad, their running maxima; both empty for the SGD family. LAMB's clipping comes folded
  // into grad_scale, its ratios as `trust`.
  std::vector<at::Tensor> second_moments, max_second_moments;
  double beta1 = 0, beta2 = 0, eps = 0;
  bool decoupled = false, bias_correction = true, grad_averaging = true;
  // Adagrad (extrap_math.h's adaptive_direction): `momenta` empty, v the running sum of g'^2, beta1 = 0 and
  // beta2 = 1; lr_decay divides its direction by 1 + (t - 1) * lr_decay
  bool accumulates = false;
  double lr_decay = 0;
  // NovoGrad (extrap_math.h's novograd_direction): `momenta` the first moments, no second_moments: the second
  // moment is each tensor's running gradient norm, blended by the caller and passed as `trust`
  bool tensor_norms = false;
  // Capturable betas: one-element float64 device tensors read by the kernel itself, replacing beta1/beta2
  // (a CPU launch reads them on the host: see bindings.cpp).
  std::optional<at::Tensor> beta1_tensor, beta2_tensor;
  double lr = 0, gamma = 0, momentum = 0, dampening = 0, weight_decay = 0, noise_std = 0;
  // Capturable rates: lr and gamma held as one-element device tensors of the state dtype, read by the
  // kernel itself, so that a captured CUDA graph replays with their current values. When set they
  // replace `lr` / `gamma` (a CPU launch reads them on the host: see bindings.cpp).
  std::optional<at::Tensor> lr_tensor, gamma_tensor;
  bool nesterov = false, maximize = false, wd_after_momentum = false;
  bool extrapolate_with_momentum = false, past_grad = false;
  int64_t seed = 0;
  // false: 16-bit parameters keep s and m in their own dtype, every stored value rounded stochastically
  // (keyed by `seed`); their arithmetic is still fp32
  bool master_weights = true;
  // The caller ran the `check` operator on this launch's tensors already (a step of several buckets checks
  // them all before any runs): the run skips its own checks, so that each launch is validated once.
  bool checked = false;
  std::optional<at::Tensor> grad_scale;  // AMP: grads are divided by it
  std::optional<at::Tensor> found_inf;   // AMP: nonzero skips the update
  // AMP's loss scale alone (grad_scale may fold in LAMB's clipping): given, the phase writes g / loss_scale
  // back into the gradients, as torch's fused optimizers leave them; a skipped step leaves them as they were
  std::optional<at::Tensor> loss_scale;
  int64_t stream = 0;  // CUDA: the cudaStream_t to launch on (the caller's current one)

  // The tensor holding s for parameter i (x itself where the parameters are their own anchors).
  const at::Tensor& anchor(size_t i) const { return anchors.empty() ? params[i] : anchors[i]; }
  bool anchor_free() const { return phase == kUpdatePastAnchorFree; }
  // The compensated anchor (master_weights="compensated"; extrap_math.h's joined_value): `anchors` hold the int16
  // remainders of bf16 parameters, each x its own anchor, for kUpdate and the anchor-free update (compensable)
  bool compensated() const { return !anchors.empty() && anchors[0].scalar_type() == at::kShort; }
  bool rounds_stochastically() const { return !master_weights && !params.empty() && params[0].element_size() == 2; }
  bool counts_step() const { return phase != kExtrapolate; }
  bool adaptive() const { return family == Family::kAdaptive; }
  bool amsgrad() const { return !max_second_moments.empty(); }
  // 16-bit moments (exp_avg_dtype / exp_avg_sq_dtype, the Adam family's m, v and v_max alike): each stored value
  // rounded stochastically (extrap_math.h's moment_bits, keyed by `seed`); else they are the arithmetic's dtype
  bool rounds_moments() const {
    if (!adaptive() || second_moments.empty()) return false;
    const at::ScalarType type = second_moments[0].scalar_type();
    return type == at::kBFloat16 || type == at::kHalf;
  }
  // the moments an adaptive launch keeps (extrap_math.h's Moments)
  int moments() const {
    return accumulates ? kSumOnly : tensor_norms ? kFirstAndNorm : amsgrad() ? kWithMax : kFirstAndSecond;
  }
};

// Builds the per-launch hyperparameters once the grad scale is known.
template <typename acc>
Hyper<acc> make_hyper(const Launch& L, double inv_scale) {
  Hyper<acc> h;
  h.lr = static_cast<acc>(L.lr);
  h.gamma = static_cast<acc>(L.gamma);
  h.momentum = static_cast<acc>(L.momentum);
  h.dampening = static_cast<acc>(L.dampening);
  h.weight_decay = static_cast<acc>(L.weight_decay);
  h.grad_factor = static_cast<acc>(L.maximize ? -inv_scale : inv_scale);
  h.noise_std = static_cast<acc>(L.noise_std);
  h.nesterov = L.nesterov;
  h.wd_after_momentum = L.wd_after_momentum;
  h.extrapolate_with_momentum = L.extrapolate_with_momentum;
  h.past_grad = L.past_grad;
  h.seed = static_cast<uint64_t>(L.seed);
  h.beta1 = L.beta1;
  h.beta2 = L.beta2;
  h.eps = static_cast<acc>(L.eps);
  h.grad_averaging = L.grad_averaging;
  h.grad_gain = h.grad_averaging ? static_cast<acc>(1.0 - L.beta1) : acc(1);
  h.second_gain = L.accumulates ? acc(1) : static_cast<acc>(1.0 - L.beta2);
  h.lr_decay = static_cast<acc>(L.lr_decay);
  h.decoupled = L.decoupled;
  h.bias_correction = L.bias_correction;
  return h;
}

// How a launcher stores a value of type state_t (s, m) for parameters of type scalar_t: stochastically
// where 16-bit parameters keep 16-bit state (master_weights=False), else to nearest.
template <typename scalar_t, typename state_t>
constexpr int kRoundingOf = !std::is_same<scalar_t, state_t>::value || sizeof(scalar_t) != 2
                                ? kNearest
                                : (std::is_same<scalar_t, at::BFloat16>::value ? kStochasticBF16 : kStochasticFP16);

// The phases a compensated bf16 x steps in: those where x is its own anchor (kUpdate: the drop-ins) or gives it back
// (the anchor-free update); no loop is compiled for the others.
constexpr bool compensable(Phase P) { return P == kUpdate || P == kUpdatePastAnchorFree; }

// A compensated x's fp32 value, and its store (extrap_math.h's joined_value and split_value).
EXTRAP_HD float joined(at::BFloat16 x, int16_t remainder) { return joined_value(x.x, remainder); }
EXTRAP_HD void store_split(at::BFloat16& x, int16_t& remainder, float value) {
  x = at::BFloat16(split_value(value, remainder), at::BFloat16::from_bits());
}

// A type handed to a generic lambda: f(Tag<T>{}) reads it as typename decltype(tag)::type.
template <typename T>
struct Tag {
  using type = T;
};

// Calls f(Tag<anchor_t>) with the type a launch's anchors are held in: the arithmetic's `acc` (the fp32 master of a
// 16-bit x, or x's own full precision), or without a master (master_weights=False) the 16-bit x's own type, whose
// stored values the launchers round stochastically; or int16_t, a compensated bf16 x's remainders, where kCompensable
// (the launch's phase is compensable, or a reading pass). The adaptive bases' moments are apart (with_moment_type);
// the SGD family's momentum is of the anchor's type, but acc beside a compensated anchor.
template <typename scalar_t, typename acc, bool kCompensable, typename F>
decltype(auto) with_anchor_type(const Launch& L, F&& f) {
  if constexpr (kCompensable && std::is_same<scalar_t, at::BFloat16>::value) {
    if (L.compensated()) return f(Tag<int16_t>{});
  }
  if constexpr (!std::is_same<scalar_t, acc>::value) {
    if (L.rounds_stochastically()) return f(Tag<scalar_t>{});
  }
  return f(Tag<acc>{});
}

// Calls f(Tag<moment_t>) with the type an adaptive launch's moments are held in: the arithmetic's `acc`, or the
// 16-bit type of exp_avg_dtype (Adam, AdamW and LAMB alone: the moments M of kFirstAndSecond and kWithMax; fp32
// arithmetic), whose stored values the launchers round stochastically. Other launches get acc only, so that no
// loop is compiled for moments they cannot have.
template <int M, typename acc, typename F>
decltype(auto) with_moment_type(const Launch& L, F&& f) {
  if constexpr (std::is_same<acc, float>::value && (M == kFirstAndSecond || M == kWithMax)) {
    if (L.rounds_moments()) {
      if (L.second_moments[0].scalar_type() == at::kBFloat16) return f(Tag<at::BFloat16>{});
      return f(Tag<at::Half>{});
    }
  }
  return f(Tag<acc>{});
}

// Calls f(phase, momentum) with both as compile-time constants (std::integral_constant), so that each
// launcher instantiates its loops once per phase and momentum on/off.
template <typename F>
void with_phase(const Launch& L, F&& f) {
  auto run = [&](auto phase) {
    if (L.momenta.empty()) return f(phase, std::false_type{});
    return f(phase, std::true_type{});
  };
  switch (L.phase) {
    case kExtrapolate:
      return run(std::integral_constant<Phase, kExtrapolate>{});
    case kUpdate:
      return run(std::integral_constant<Phase, kUpdate>{});
    case kUpdatePast:
      return run(std::integral_constant<Phase, kUpdatePast>{});
    case kUpdateNoise:
      return run(std::integral_constant<Phase, kUpdateNoise>{});
    case kUpdatePastAnchorFree:
      return run(std::integral_constant<Phase, kUpdatePastAnchorFree>{});
    default:
      TORCH_CHECK(false, "extrap_kernels: unknown phase ", L.phase);
  }
}

// The same for the adaptive bases: f(phase, moments), both std::integral_constant, for the phases they have (the
// anchor-free update: Adam's and AdamW's alone) and the moments they keep (extrap_math.h's Moments).
template <typename F>
void with_adaptive_phase(const Launch& L, F&& f) {
  auto run = [&](auto phase) {
    switch (L.moments()) {
      case kSumOnly:
        return f(phase, std::integral_constant<int, kSumOnly>{});
      case kWithMax:
        return f(phase, std::integral_constant<int, kWithMax>{});
      case kFirstAndNorm:
        return f(phase, std::integral_constant<int, kFirstAndNorm>{});
      default:
        return f(phase, std::integral_constant<int, kFirstAndSecond>{});
    }
  };
  switch (L.phase) {
    case kExtrapolate:
      return run(std::integral_constant<Phase, kExtrapolate>{});
    case kUpdate:
      return run(std::integral_constant<Phase, kUpdate>{});
    case kUpdatePast:
      return run(std::integral_constant<Phase, kUpdatePast>{});
    case kUpdateNoise:
      return run(std::integral_constant<Phase, kUpdateNoise>{});
    case kUpdatePastAnchorFree: {  // (Adam's and AdamW's alone: m and v, with amsgrad v_max; check_launch.h)
      constexpr auto P = std::integral_constant<Phase, kUpdatePastAnchorFree>{};
      if (L.amsgrad()) return f(P, std::integral_constant<int, kWithMax>{});
      return f(P, std::integral_constant<int, kFirstAndSecond>{});
    }
    default:
      TORCH_CHECK(false, "extrap_kernels: phase ", L.phase, " has no adaptive form");
  }
}

// Calls f(from, amsgrad) for LAMB's reading pass, both std::integral_constant: where it takes the anchor from
// (extrap_math.h's AnchorFrom: x itself before a snapshot of x's own precision, full or 16 bits without a master;
// recovered from x and the moments before the anchor-free update, x of full precision or 16 bits without a master)
// and whether v_max is kept. A compensated x (anchor_t int16_t) is its own anchor as its joined value, recovered
// from before the anchor-free update.
template <typename scalar_t, typename anchor_t, typename F>
decltype(auto) with_reading_anchor(const Launch& L, F&& f) {
  auto run = [&](auto from) {
    if (L.amsgrad()) return f(from, std::true_type{});
    return f(from, std::false_type{});
  };
  if constexpr (std::is_same<anchor_t, int16_t>::value) {
    if (L.anchor_free()) return run(std::integral_constant<int, kRecoveredFromParam>{});
    return run(std::integral_constant<int, kParamItself>{});
  } else {
    if constexpr (std::is_same<scalar_t, anchor_t>::value) {  // (x of full precision, or 16 bits without a master)
      if (L.anchor_free()) return run(std::integral_constant<int, kRecoveredFromParam>{});
      if (L.phase == kExtrapolate) return run(std::integral_constant<int, kParamItself>{});
    }
    return run(std::integral_constant<int, kAnchorArray>{});
  }
}

// CPU launches of at least this many elements (64 MB or more over a phase's arrays: past the last-level
// cache) write the array a phase does not read with non-temporal stores; smaller ones keep their
// results in cache, where the next forward pass reads the parameters. (Exported for the tests.)
constexpr int64_t kCpuStreamAbove = 1 << 22;

// The launchers count the step of an update phase themselves (after every check, before any kernel
// reads it): the CPU one on the host, where found_inf is already known, the CUDA one on the device.
// LAMB's reading pass (adaptive launches): a [tensors, 2] tensor of the state dtype holding, per tensor,
// the sum of s^2 and of u^2 (u the direction of the phase's coming update, or of its look-ahead), for the
// trust ratios. Reads the step counts as the phase will see them; writes nothing else. Deterministic.
void apply_cpu(const Launch& L);
at::Tensor adaptive_norms_cpu(const Launch& L);
// Each tensor's sum of squares, float64, in a fixed order (the same for any number of threads): the norms
// LAMB's gradient clipping and LARS take on CPU, where torch's norm of a 16-bit tensor is not vectorized.
at::Tensor squares_cpu(const std::vector<at::Tensor>& tensors);
#if defined(EXTRAP_WITH_CUDA) || defined(EXTRAP_CUDA_EMULATION)
void apply_cuda(const Launch& L);  // (emulated: CPU tensors, csrc/cuda/runtime.h)
at::Tensor adaptive_norms_cuda(const Launch& L);
// Whether the current device's launches pass the 26 KB table (CUDA 12.1 runtime and driver, compute
// capability 7.0 or newer), else the 4 KB one; force_small_kernel_args(true) makes every launch take the
// 4 KB table (a test hook, which the emulation's tests use to run the fallback).
bool large_kernel_args();
void force_small_kernel_args(bool force);
#endif

}  // namespace extrap
