// The phase operators' arguments: their schema, written once per base family, and the reading of a call's
// arguments into a Launch by name. Adding an argument is one declaration here, one field of Launch
// (launch.h) and one line of read_launch; nothing depends on an argument's position.
#pragma once

#include <ATen/core/function_schema.h>
#include <ATen/core/ivalue.h>

#include <string>

#include "launch.h"

namespace extrap {

// The tensors of a launch, positional. Lists a phase writes carry an alias set (the schema marks them
// mutable): x, s, m, the step counts and the anchor-free update's last gammas; grads are read only.
constexpr const char* kTensorArguments =
    "Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] anchors, Tensor(c!)[] momenta, Tensor(d!)[] steps, "
    "int[] indices, Tensor(e!)[] last_gammas";
// Keyword arguments, with defaults (a call names only those of its base). Every base's:
constexpr const char* kStepArguments =
    "float lr=0., float gamma=0., Tensor? lr_tensor=None, Tensor? gamma_tensor=None, float weight_decay=0., "
    "bool maximize=False, float noise_std=0., int seed=0, Tensor? trust=None, Tensor? grad_scale=None, "
    "Tensor? found_inf=None, bool master_weights=True";
// The SGD family's (SGD, Apex's FusedSGD, LARS):
constexpr const char* kSgdArguments =
    "float momentum=0., float dampening=0., bool nesterov=False, bool wd_after_momentum=False, "
    "bool extrapolate_with_momentum=False, bool past_grad=False";
// The adaptive bases' (Adam, AdamW, LAMB); their first moments are `momenta`:
constexpr const char* kAdaptiveArguments =
    "Tensor(f!)[]? second_moments=None, Tensor(g!)[]? max_second_moments=None, float beta1=0., float beta2=0., "
    "Tensor? beta1_tensor=None, Tensor? beta2_tensor=None, float eps=0., bool grad_averaging=True, "
    "bool decoupled=False, bool bias_correction=True";

// The declarations without their alias sets ("Tensor(a!)[]" becomes "Tensor[]"): arguments read only.
inline std::string read_only(std::string declarations) {
  for (size_t open = declarations.find('('); open != std::string::npos; open = declarations.find('(', open)) {
    declarations.erase(open, declarations.find(')', open) - open + 1);
  }
  return declarations;
}

// The schema of operator `name`. A phase operator writes its tensors; `check` and `norms` (LAMB's reading
// pass, which returns its sums) write nothing and take the phase first.
inline std::string schema(const std::string& name, bool writes, const char* returns = "()") {
  const std::string tensors = writes ? kTensorArguments : read_only(kTensorArguments);
  const std::string adaptive = writes ? kAdaptiveArguments : read_only(kAdaptiveArguments);
  return name + "(" + (writes ? "" : "int phase, ") + tensors + ", *, " + kStepArguments + ", " + kSgdArguments + ", " +
         adaptive + ") -> " + returns;
}

// Where each argument sits in an operator's schema, found by name once per operator.
struct ArgumentPositions {
  size_t count, phase, params, grads, anchors, momenta, steps, indices, last_gammas;
  size_t lr, gamma, lr_tensor, gamma_tensor, weight_decay, maximize, noise_std, seed, trust, grad_scale, found_inf,
      master_weights;
  size_t momentum, dampening, nesterov, wd_after_momentum, extrapolate_with_momentum, past_grad;
  size_t second_moments, max_second_moments, beta1, beta2, beta1_tensor, beta2_tensor, eps, grad_averaging, decoupled,
      bias_correction;

  explicit ArgumentPositions(const c10::FunctionSchema& schema) : count(schema.arguments().size()) {
    auto at = [&](const char* name) {
      const auto index = schema.argumentIndexWithName(name);
      TORCH_CHECK(index.has_value(), "extrap_kernels: ", schema.name(), " has no argument ", name);
      return static_cast<size_t>(*index);
    };
    const auto phase_index = schema.argumentIndexWithName("phase");
    phase = phase_index ? static_cast<size_t>(*phase_index) : count;  // count: the operator is its phase's
    params = at("params"), grads = at("grads"), anchors = at("anchors"), momenta = at("momenta");
    steps = at("steps"), indices = at("indices"), last_gammas = at("last_gammas");
    lr = at("lr"), gamma = at("gamma"), lr_tensor = at("lr_tensor"), gamma_tensor = at("gamma_tensor");
    weight_decay = at("weight_decay"), maximize = at("maximize"), noise_std = at("noise_std"), seed = at("seed");
    trust = at("trust"), grad_scale = at("grad_scale"), found_inf = at("found_inf");
    master_weights = at("master_weights");
    momentum = at("momentum"), dampening = at("dampening"), nesterov = at("nesterov");
    wd_after_momentum = at("wd_after_momentum"), extrapolate_with_momentum = at("extrapolate_with_momentum");
    past_grad = at("past_grad");
    second_moments = at("second_moments"), max_second_moments = at("max_second_moments");
    beta1 = at("beta1"), beta2 = at("beta2"), beta1_tensor = at("beta1_tensor"), beta2_tensor = at("beta2_tensor");
    eps = at("eps"), grad_averaging = at("grad_averaging"), decoupled = at("decoupled");
    bias_correction = at("bias_correction");
  }
};

inline std::optional<at::Tensor> optional_tensor(const c10::IValue& v) {
  return v.isNone() ? std::nullopt : std::optional<at::Tensor>(v.toTensor());
}

inline std::vector<at::Tensor> optional_tensors(const c10::IValue& v) {
  return v.isNone() ? std::vector<at::Tensor>() : v.toTensorVector();
}

// The launch of a call whose arguments are `a` (the operator's, in its schema's order, at `p`); `phase` is
// the operator's own, or -1 where the call names it.
inline Launch read_launch(const ArgumentPositions& p, const c10::IValue* a, int64_t phase) {
  Launch L;
  L.phase = phase >= 0 ? phase : a[p.phase].toInt();
  L.params = a[p.params].toTensorVector();
  L.grads = a[p.grads].toTensorVector();
  L.anchors = a[p.anchors].toTensorVector();
  L.momenta = a[p.momenta].toTensorVector();
  L.steps = a[p.steps].toTensorVector();
  L.indices = a[p.indices].toIntVector();
  L.last_gammas = a[p.last_gammas].toTensorVector();
  L.lr = a[p.lr].toDouble();
  L.gamma = a[p.gamma].toDouble();
  L.lr_tensor = optional_tensor(a[p.lr_tensor]);
  L.gamma_tensor = optional_tensor(a[p.gamma_tensor]);
  L.weight_decay = a[p.weight_decay].toDouble();
  L.maximize = a[p.maximize].toBool();
  L.noise_std = a[p.noise_std].toDouble();
  L.seed = a[p.seed].toInt();
  L.trust = optional_tensor(a[p.trust]);
  L.grad_scale = optional_tensor(a[p.grad_scale]);
  L.found_inf = optional_tensor(a[p.found_inf]);
  L.master_weights = a[p.master_weights].toBool();
  L.momentum = a[p.momentum].toDouble();
  L.dampening = a[p.dampening].toDouble();
  L.nesterov = a[p.nesterov].toBool();
  L.wd_after_momentum = a[p.wd_after_momentum].toBool();
  L.extrapolate_with_momentum = a[p.extrapolate_with_momentum].toBool();
  L.past_grad = a[p.past_grad].toBool();
  L.second_moments = optional_tensors(a[p.second_moments]);
  L.max_second_moments = optional_tensors(a[p.max_second_moments]);
  L.beta1 = a[p.beta1].toDouble();
  L.beta2 = a[p.beta2].toDouble();
  L.beta1_tensor = optional_tensor(a[p.beta1_tensor]);
  L.beta2_tensor = optional_tensor(a[p.beta2_tensor]);
  L.eps = a[p.eps].toDouble();
  L.grad_averaging = a[p.grad_averaging].toBool();
  L.decoupled = a[p.decoupled].toBool();
  L.bias_correction = a[p.bias_correction].toBool();
  return L;
}

}  // namespace extrap
