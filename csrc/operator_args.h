// The phase operators' arguments, each declared once: its name, schema type and default, and how a call's
// value is read into the Launch field of the same name (launch.h). One list per part of a schema: the
// tensors, the arguments every base takes, and the SGD family's and the adaptive bases' own. Each base
// family's operators take the tensors, the common arguments and their family's (schema()); the positions
// and the reading of a call (ArgumentPositions, read_launch) come from the same lists, by name. Adding an
// argument is one line here and one field of Launch.
#pragma once

#include <ATen/core/function_schema.h>
#include <ATen/core/ivalue.h>

#include <limits>
#include <string>

#include "launch.h"

// X(name, schema type, default, reader). Lists a phase writes carry an alias set (the schema marks them
// mutable): x, the gradients (unscaled in place when loss_scale is given), s, m, v, v_max, the step counts
// and the anchor-free update's last gammas.
#define EXTRAP_TENSOR_ARGUMENTS(X)             \
  X(params, "Tensor(a!)[]", "", read_tensors)  \
  X(grads, "Tensor(h!)[]", "", read_tensors)   \
  X(anchors, "Tensor(b!)[]", "", read_tensors) \
  X(momenta, "Tensor(c!)[]", "", read_tensors) \
  X(steps, "Tensor(d!)[]", "", read_tensors)   \
  X(indices, "int[]", "", read_integers)       \
  X(last_gammas, "Tensor(e!)[]", "", read_tensors)
// Keyword arguments, with defaults (a call names only those it sets). Every base's:
#define EXTRAP_STEP_ARGUMENTS(X)                           \
  X(lr, "float", "0.", read_number)                        \
  X(gamma, "float", "0.", read_number)                     \
  X(lr_tensor, "Tensor?", "None", read_optional_tensor)    \
  X(gamma_tensor, "Tensor?", "None", read_optional_tensor) \
  X(weight_decay, "float", "0.", read_number)              \
  X(maximize, "bool", "False", read_flag)                  \
  X(noise_std, "float", "0.", read_number)                 \
  X(seed, "int", "0", read_integer)                        \
  X(trust, "Tensor?", "None", read_optional_tensor)        \
  X(grad_scale, "Tensor?", "None", read_optional_tensor)   \
  X(found_inf, "Tensor?", "None", read_optional_tensor)    \
  X(loss_scale, "Tensor?", "None", read_optional_tensor)   \
  X(master_weights, "bool", "True", read_flag)             \
  X(checked, "bool", "False", read_flag)
// The SGD family's (SGD, Apex's FusedSGD, LARS):
#define EXTRAP_SGD_ARGUMENTS(X)                            \
  X(momentum, "float", "0.", read_number)                  \
  X(dampening, "float", "0.", read_number)                 \
  X(nesterov, "bool", "False", read_flag)                  \
  X(wd_after_momentum, "bool", "False", read_flag)         \
  X(extrapolate_with_momentum, "bool", "False", read_flag) \
  X(past_grad, "bool", "False", read_flag)
// The adaptive bases' (Adam, AdamW, LAMB, Adagrad, NovoGrad); their first moments are `momenta` (Adagrad has none):
#define EXTRAP_ADAPTIVE_ARGUMENTS(X)                                    \
  X(second_moments, "Tensor(f!)[]?", "None", read_optional_tensors)     \
  X(max_second_moments, "Tensor(g!)[]?", "None", read_optional_tensors) \
  X(beta1, "float", "0.", read_number)                                  \
  X(beta2, "float", "0.", read_number)                                  \
  X(beta1_tensor, "Tensor?", "None", read_optional_tensor)              \
  X(beta2_tensor, "Tensor?", "None", read_optional_tensor)              \
  X(eps, "float", "0.", read_number)                                    \
  X(grad_averaging, "bool", "True", read_flag)                          \
  X(decoupled, "bool", "False", read_flag)                              \
  X(bias_correction, "bool", "True", read_flag)                         \
  X(accumulates, "bool", "False", read_flag)                            \
  X(lr_decay, "float", "0.", read_number)                               \
  X(tensor_norms, "bool", "False", read_flag)
#define EXTRAP_ALL_ARGUMENTS(X) \
  EXTRAP_TENSOR_ARGUMENTS(X) EXTRAP_STEP_ARGUMENTS(X) EXTRAP_SGD_ARGUMENTS(X) EXTRAP_ADAPTIVE_ARGUMENTS(X)

namespace extrap {

// The operators of each base family (launch.h's Family): the SGD family's are named for their phase
// (update_), the adaptive bases' carry the prefix "adam_" (adam_update_, adam_check, adam_norms).
inline const char* family_prefix(Family family) { return family == Family::kSgd ? "" : "adam_"; }

// One declaration of a schema: "type name" or "type name=default"; read only (writes false), without its
// alias set ("Tensor(a!)[]" becomes "Tensor[]").
inline std::string declaration(const char* type, const char* name, const char* default_value, bool writes) {
  std::string out = type;
  const auto open = out.find('(');
  if (!writes && open != std::string::npos) out.erase(open, out.find(')', open) - open + 1);
  out += std::string(" ") + name;
  if (*default_value) out += std::string("=") + default_value;
  return out;
}

// The schema of operator `name` of `family`. A phase operator writes its tensors; check and norms (LAMB's
// reading pass, which returns its sums) write nothing and take the phase first.
inline std::string schema(const std::string& name, Family family, bool writes, const char* returns = "()") {
  std::string out = std::string(family_prefix(family)) + name + "(" + (writes ? "" : "int phase, ");
  const char* separator = "";
  auto add = [&](const char* type, const char* argument, const char* default_value) {
    out += separator + declaration(type, argument, default_value, writes);
    separator = ", ";
  };
#define EXTRAP_DECLARE(argument, type, default_value, reader) add(type, #argument, default_value);
  EXTRAP_TENSOR_ARGUMENTS(EXTRAP_DECLARE)
  out += ", *";
  EXTRAP_STEP_ARGUMENTS(EXTRAP_DECLARE)
  if (family == Family::kSgd) {
    EXTRAP_SGD_ARGUMENTS(EXTRAP_DECLARE)
  } else {
    EXTRAP_ADAPTIVE_ARGUMENTS(EXTRAP_DECLARE)
  }
#undef EXTRAP_DECLARE
  return out + ") -> " + returns;
}

// How a call's value is read into its Launch field.
inline std::vector<at::Tensor> read_tensors(const c10::IValue& v) { return v.toTensorVector(); }
inline std::vector<int64_t> read_integers(const c10::IValue& v) { return v.toIntVector(); }
inline double read_number(const c10::IValue& v) { return v.toDouble(); }
inline bool read_flag(const c10::IValue& v) { return v.toBool(); }
inline int64_t read_integer(const c10::IValue& v) { return v.toInt(); }
inline std::vector<at::Tensor> read_optional_tensors(const c10::IValue& v) {
  return v.isNone() ? std::vector<at::Tensor>() : v.toTensorVector();
}
inline std::optional<at::Tensor> read_optional_tensor(const c10::IValue& v) {
  return v.isNone() ? std::nullopt : std::optional<at::Tensor>(v.toTensor());
}

// Where each argument sits in an operator's schema, found by name once per operator; kAbsent where the
// operator's family has no such argument (its Launch field keeps its default).
struct ArgumentPositions {
  static constexpr size_t kAbsent = std::numeric_limits<size_t>::max();
  size_t count, phase;
#define EXTRAP_POSITION(argument, type, default_value, reader) size_t argument = kAbsent;
  EXTRAP_ALL_ARGUMENTS(EXTRAP_POSITION)
#undef EXTRAP_POSITION

  explicit ArgumentPositions(const c10::FunctionSchema& schema) : count(schema.arguments().size()) {
    auto at = [&](const char* name) {
      const auto index = schema.argumentIndexWithName(name);
      return index ? static_cast<size_t>(*index) : kAbsent;
    };
    phase = at("phase");  // kAbsent: the operator is its phase's
#define EXTRAP_FIND(argument, type, default_value, reader) argument = at(#argument);
    EXTRAP_ALL_ARGUMENTS(EXTRAP_FIND)
#undef EXTRAP_FIND
    TORCH_CHECK(params != kAbsent && grads != kAbsent && lr != kAbsent, "extrap_kernels: ", schema.name(),
                " is not a phase operator");
  }
};

// The launch of a call whose arguments are `a` (the operator's, in its schema's order, at `p`); `phase` is
// the operator's own, or -1 where the call names it.
inline Launch read_launch(const ArgumentPositions& p, const c10::IValue* a, int64_t phase) {
  Launch L;
  L.phase = phase >= 0 ? phase : a[p.phase].toInt();
#define EXTRAP_READ(argument, type, default_value, reader) \
  if (p.argument != ArgumentPositions::kAbsent) L.argument = reader(a[p.argument]);
  EXTRAP_ALL_ARGUMENTS(EXTRAP_READ)
#undef EXTRAP_READ
  return L;
}

}  // namespace extrap
