// The validation of a launch: everything a kernel relies on, for every tensor, before anything is written.
// A refusal is a ValueError (TypeError for dtypes): the Python layer tells it from a failure while running.
#pragma once

#include <ATen/ATen.h>

#include <sstream>
#include <string>
#include <utility>

#include "launch.h"

namespace extrap {

inline at::ScalarType state_dtype(at::ScalarType param) { return param == at::kDouble ? at::kDouble : at::kFloat; }

inline std::string name_of(const Launch& L, size_t i) {
  std::ostringstream out;
  out << "extrap_kernels: param " << L.indices[i] << " (shape " << L.params[i].sizes() << ")";
  return out.str();
}

// The lists' lengths, and the options that the phase and the base allow.
inline void check_lists(const Launch& L) {
  const size_t n = L.params.size();
  TORCH_CHECK_VALUE(L.phase >= kExtrapolate && L.phase <= kUpdatePastAnchorFree, "extrap_kernels: unknown phase ",
                    L.phase);
  TORCH_CHECK_VALUE(L.grads.size() == n && L.steps.size() == n && L.indices.size() == n,
                    "extrap_kernels: params, grads, steps and indices must have the same length");
  if (L.compensated()) {  // (int16 anchors: the remainders of bf16 parameters, each its own anchor)
    TORCH_CHECK_VALUE(L.anchors.size() == n && (L.phase == kUpdate || L.anchor_free()),
                      "extrap_kernels: int16 anchors are a compensated bf16 parameter's remainders, one per "
                      "parameter, for update_ and update_past_anchor_free_ alone (x is its own anchor)");
  }
  if (L.anchor_free()) {
    TORCH_CHECK_VALUE((L.anchors.empty() || L.compensated()) && L.last_gammas.size() == n && !L.momenta.empty(),
                      "extrap_kernels: update_past_anchor_free_ takes no anchors (but a compensated parameter's "
                      "remainders), and one last_gamma (the Adam family: its recovery weights) and one momentum "
                      "buffer (exp_avg) per parameter");
    if (L.adaptive()) {
      // the anchor comes back from the stored moments where the past direction is trust * (a (+ wd * s)): Adam's,
      // AdamW's and LAMB's (its trust ratio folded into the recorded weights)
      TORCH_CHECK_VALUE(!L.accumulates && !L.tensor_norms,
                        "extrap_kernels: the adaptive update_past_anchor_free_ is Adam's, AdamW's and LAMB's: no "
                        "accumulates (Adagrad) or tensor_norms (NovoGrad)");
    } else {
      // the anchor is recomputed as x + last_gamma * m only where the past direction d is m (SPEC)
      TORCH_CHECK_VALUE(!L.nesterov && !L.wd_after_momentum && !L.past_grad && !L.trust,
                        "extrap_kernels: update_past_anchor_free_ needs heavy-ball momentum: no nesterov, "
                        "wd_after_momentum, past_grad or LARS trust");
    }
  } else {
    TORCH_CHECK_VALUE(L.anchors.size() == n || (L.anchors.empty() && L.phase == kUpdate),
                      "extrap_kernels: anchors must be one per parameter (or empty for update_ on parameters "
                      "that are their own anchors)");
    TORCH_CHECK_VALUE(L.last_gammas.empty(), "extrap_kernels: last_gammas belong to update_past_anchor_free_");
  }
}

inline void check_base_options(const Launch& L) {
  const size_t n = L.params.size();
  if (L.adaptive()) {
    // the first moments are the momenta (none for Adagrad, which accumulates v; NovoGrad's second moments are
    // per-tensor norms, passed as trust); no SGD-family option applies
    const size_t seconds = L.tensor_norms ? 0 : n;
    TORCH_CHECK_VALUE(L.second_moments.size() == seconds && L.momenta.size() == (L.accumulates ? 0 : n) &&
                          (L.max_second_moments.empty() || L.max_second_moments.size() == seconds),
                      "extrap_kernels: an adaptive launch takes one first moment (momenta; none with accumulates) and "
                      "one second moment per parameter (none with tensor_norms), and one max_second_moment per "
                      "parameter or none");
    TORCH_CHECK_VALUE(!L.tensor_norms || (L.trust && !L.accumulates),
                      "extrap_kernels: a tensor_norms (NovoGrad) launch takes each tensor's running gradient norm as "
                      "trust, and does not accumulate");
    TORCH_CHECK_VALUE(
        L.momentum == 0 && !L.nesterov && !L.wd_after_momentum && !L.extrapolate_with_momentum && !L.past_grad,
        "extrap_kernels: the adaptive bases have no momentum, nesterov, wd_after_momentum, "
        "extrapolate_with_momentum or past_grad");
    if (L.accumulates) {  // Adagrad: v <- 1 * v + g'^2, m = g'
      TORCH_CHECK_VALUE(L.beta1 == 0 && L.beta2 == 1 && !L.beta1_tensor && !L.beta2_tensor && !L.bias_correction &&
                            L.max_second_moments.empty() && L.eps >= 0 && L.lr_decay >= 0,
                        "extrap_kernels: an accumulating (Adagrad) launch takes betas (0, 1), no beta tensors, bias "
                        "correction or max_second_moments, and eps, lr_decay >= 0");
    } else {
      TORCH_CHECK_VALUE(L.beta1 >= 0 && L.beta1 < 1 && L.beta2 >= 0 && L.beta2 < 1 && L.eps >= 0 && L.lr_decay == 0,
                        "extrap_kernels: betas must lie in [0, 1) and eps be >= 0, got (", L.beta1, ", ", L.beta2,
                        ") and ", L.eps, "; lr_decay belongs to accumulating (Adagrad) launches");
    }
  } else {
    TORCH_CHECK_VALUE(!L.beta1_tensor && !L.beta2_tensor && !L.accumulates && L.lr_decay == 0 && !L.tensor_norms,
                      "extrap_kernels: beta tensors, accumulates, lr_decay and tensor_norms belong to adaptive "
                      "launches");
    TORCH_CHECK_VALUE(L.max_second_moments.empty(), "extrap_kernels: max_second_moments without second_moments");
    TORCH_CHECK_VALUE(L.momenta.empty() || L.momenta.size() == n,
                      "extrap_kernels: momenta must be empty (momentum 0) or one per parameter");
    TORCH_CHECK_VALUE((L.momentum != 0) == !L.momenta.empty(), "extrap_kernels: momenta given iff momentum != 0");
  }
}

// Parameter i and its gradient against the launch's device and dtype (those of parameter 0).
inline void check_param(const Launch& L, size_t i, const at::Device& device, at::ScalarType dtype) {
  const at::Tensor& x = L.params[i];
  const at::Tensor& g = L.grads[i];
  TORCH_CHECK_TYPE(!x.is_complex() && !g.is_complex(), name_of(L, i),
                   ": complex tensors go to the kernels as their real views (torch.view_as_real)");
  TORCH_CHECK_TYPE(x.scalar_type() == dtype, name_of(L, i), ": mixed dtypes inside one fused bucket (", x.scalar_type(),
                   " and ", dtype, ")");
  TORCH_CHECK_TYPE(dtype == at::kFloat || dtype == at::kDouble || dtype == at::kBFloat16 || dtype == at::kHalf,
                   name_of(L, i), ": dtype ", dtype, " is not supported (fp32, fp64, bf16 or fp16)");
  TORCH_CHECK_VALUE(g.layout() == at::kStrided && x.layout() == at::kStrided, name_of(L, i),
                    ": sparse gradients are not supported: give these parameters an optimizer that takes them "
                    "(torch.optim.SGD, SparseAdam)");
  TORCH_CHECK_VALUE(x.device() == device, name_of(L, i), ": mixed devices inside one fused bucket (", x.device(),
                    " and ", device, ")");
  TORCH_CHECK_VALUE(g.device() == device, name_of(L, i), ": mixed devices: gradient on ", g.device(), ", parameter on ",
                    device);
  TORCH_CHECK_TYPE(g.scalar_type() == dtype, name_of(L, i), ": mismatched dtypes: gradient ", g.scalar_type(),
                   ", parameter ", dtype);
  TORCH_CHECK_VALUE(g.sizes() == x.sizes(), name_of(L, i), ": gradient shape ", g.sizes(), " != parameter shape ",
                    x.sizes());
  TORCH_CHECK_VALUE(x.is_contiguous() && g.is_contiguous(), name_of(L, i),
                    ": fused kernels need contiguous parameters and gradients (backend='foreach' or 'auto' "
                    "handles strided ones)");
}

// Parameter i's state: on its device, shaped as it (or one element); the anchor (and the SGD family's momentum) in
// `sdtype`, the adaptive bases' moments in the arithmetic's `cdtype` whatever the master.
inline void check_state(const Launch& L, size_t i, const at::Device& device, at::ScalarType sdtype,
                        at::ScalarType cdtype) {
  auto check = [&](const at::Tensor& t, at::ScalarType want, int64_t numel, const char* key) {
    TORCH_CHECK_VALUE(t.device() == device && t.scalar_type() == want, name_of(L, i), ": state '", key, "' is ",
                      t.scalar_type(), " on ", t.device(), ", expected ", want, " on ", device);
    TORCH_CHECK_VALUE(t.layout() == at::kStrided && t.numel() == numel && t.is_contiguous(), name_of(L, i), ": state '",
                      key, "' does not match the parameter's shape/layout");
  };
  const int64_t numel = L.params[i].numel();
  // the adaptive bases' moments: cdtype, or all of the launch's in one 16-bit type (exp_avg_dtype) over fp32
  // arithmetic, Adam's, AdamW's and LAMB's alone
  const at::ScalarType mdtype = L.rounds_moments() ? L.second_moments[0].scalar_type() : cdtype;
  if (mdtype != cdtype) {
    TORCH_CHECK_VALUE(cdtype == at::kFloat && !L.accumulates && !L.tensor_norms, name_of(L, i),
                      ": 16-bit moments (exp_avg_dtype) need fp32 arithmetic and Adam, AdamW or LAMB, got ", mdtype,
                      " moments for ", L.params[i].scalar_type(), " parameters");
  }
  if (L.compensated()) {
    check(L.anchors[i], at::kShort, numel, "param_remainder");
  } else if (!L.anchors.empty()) {
    check(L.anchors[i], sdtype, numel, "anchor");
  }
  if (!L.momenta.empty()) {
    check(L.momenta[i], L.adaptive() ? mdtype : sdtype, numel, L.adaptive() ? "exp_avg" : "momentum_buffer");
  }
  if (!L.second_moments.empty()) check(L.second_moments[i], mdtype, numel, L.accumulates ? "sum" : "exp_avg_sq");
  if (!L.max_second_moments.empty()) check(L.max_second_moments[i], mdtype, numel, "max_exp_avg_sq");
  check(L.steps[i], at::kFloat, 1, "step");
  if (!L.last_gammas.empty()) {
    check(L.last_gammas[i], cdtype, L.adaptive() ? 2 : 1, L.adaptive() ? "recovery" : "last_gamma");
  }
}

// The per-step tensors: rates and trust ratios in the arithmetic's dtype `cdtype`, betas in float64.
inline void check_scalars(const Launch& L, const at::Device& device, at::ScalarType cdtype) {
  auto check_rate = [&](const std::optional<at::Tensor>& t, int64_t numel, const char* what) {
    if (!t) return;
    TORCH_CHECK_VALUE(t->device() == device && t->scalar_type() == cdtype && t->numel() == numel && t->is_contiguous(),
                      "extrap_kernels: ", what, " must be ", numel, " contiguous ", cdtype, " on ", device, ", got ",
                      t->numel(), " ", t->scalar_type(), " on ", t->device());
  };
  check_rate(L.trust, static_cast<int64_t>(L.params.size()), "trust");
  check_rate(L.lr_tensor, 1, "lr tensor");
  check_rate(L.gamma_tensor, 1, "gamma tensor");
  for (const auto* beta : {&L.beta1_tensor, &L.beta2_tensor}) {  // (float64: the bias corrections' precision)
    TORCH_CHECK_VALUE(
        !*beta || ((*beta)->device() == device && (*beta)->scalar_type() == at::kDouble && (*beta)->numel() == 1),
        "extrap_kernels: a beta tensor must be one float64 element on ", device);
  }
  for (const auto& [amp, name] : {std::pair{&L.grad_scale, "grad_scale"}, std::pair{&L.found_inf, "found_inf"},
                                  std::pair{&L.loss_scale, "loss_scale"}}) {
    TORCH_CHECK_VALUE(!*amp || ((*amp)->numel() == 1 && (*amp)->device() == device), "extrap_kernels: ", name,
                      " must be one element on ", device);
  }
}

// Everything a kernel relies on, for every tensor of the launch, before anything is written.
inline void check_launch(const Launch& L) {
  check_lists(L);
  check_base_options(L);
  if (L.params.empty()) return;
  const auto device = L.params[0].device();
  const auto dtype = L.params[0].scalar_type();
  const auto cdtype = state_dtype(dtype);                 // the arithmetic's (and the rate and trust tensors')
  const auto sdtype = L.master_weights ? cdtype : dtype;  // the stored anchor's and momentum's
  TORCH_CHECK_TYPE(!L.compensated() || (dtype == at::kBFloat16 && L.master_weights),
                   "extrap_kernels: int16 anchors "
                   "(a compensated parameter's remainders) belong to bf16 parameters with master_weights, got ",
                   dtype);
  TORCH_CHECK_VALUE(!L.anchor_free() || sdtype == dtype || L.compensated(),
                    "extrap_kernels: update_past_anchor_free_ needs fp32 or fp64 parameters, or 16-bit ones without a "
                    "master (master_weights=False): a master is the anchor itself");
  TORCH_CHECK_VALUE(!L.anchors.empty() || sdtype == dtype,
                    "extrap_kernels: 16-bit parameters need their fp32 master anchors");
  for (size_t i = 0; i < L.params.size(); ++i) {
    check_param(L, i, device, dtype);
    check_state(L, i, device, sdtype, cdtype);
  }
  check_scalars(L, device, cdtype);
}

}  // namespace extrap
