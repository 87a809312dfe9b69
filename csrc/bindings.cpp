// The extension's entry points: the phases registered as PyTorch operators,
//   torch.ops.extrap_kernels.{extrapolate_, update_, update_past_, update_noise_, update_past_anchor_free_}
// (and extrap_kernels::check, which validates a launch without running it). Each call checks its
// whole launch once, whatever the device, then hands it to the launcher of that device: the CPU
// launcher (csrc/cpu), the CUDA launcher (csrc/cuda), or nothing for meta tensors (FakeTensor and
// torch.compile tracing run the checks only). These checks are the only per-step validation of the
// fused backends: nothing is written before all of them pass.
//
// Built with EXTRAP_CUDA_EMULATION (csrc/emulation), the same operators are registered under the namespace
// extrap_kernels_cuda_emulation, for CPU tensors, and run the CUDA launcher's code on the host.
#include <torch/csrc/jit/python/pybind_utils.h>
#include <torch/extension.h>
#include <torch/library.h>

#ifdef EXTRAP_WITH_CUDA
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

#include <sstream>
#include <utility>

#include "launch.h"

#ifdef EXTRAP_CUDA_EMULATION
#define EXTRAP_OPS extrap_kernels_cuda_emulation
#else
#define EXTRAP_OPS extrap_kernels
#endif
#define EXTRAP_STRING(x) EXTRAP_STRING_(x)
#define EXTRAP_STRING_(x) #x
// (TORCH_LIBRARY pastes its namespace argument: expanded one level up)
#define EXTRAP_LIBRARY(ns, m) TORCH_LIBRARY(ns, m)
#define EXTRAP_LIBRARY_IMPL(ns, key, m) TORCH_LIBRARY_IMPL(ns, key, m)

namespace extrap {
namespace {

constexpr const char* kNamespace = EXTRAP_STRING(EXTRAP_OPS);
#ifdef EXTRAP_CUDA_EMULATION
constexpr bool kEmulatesCuda = true;
#else
constexpr bool kEmulatesCuda = false;
#endif

// The schema of every phase operator, and of `check` (phase first, nothing written). Tensor lists that a
// phase writes are marked mutable (x, s, m, the step counts and the anchor-free update's last gammas);
// grads are read only.
// The adaptive bases' (Adam, AdamW, LAMB) arguments come last, keyword-only with defaults: an SGD-family
// call does not name them. `norms` is LAMB's reading pass: check's arguments, a tensor of sums returned.
std::string schema(const std::string& name, bool writes, const char* returns = "()") {
  auto list = [&](const char* alias) {
    return writes ? std::string("Tensor(") + alias + "!)[]" : std::string("Tensor[]");
  };
  return name + "(" + (writes ? "" : "int phase, ") + list("a") + " params, Tensor[] grads, " + list("b") +
         " anchors, " + list("c") + " momenta, " + list("d") + " steps, int[] indices, " + list("e") +
         " last_gammas, *, "
         "float lr=0., float gamma=0., Tensor? lr_tensor=None, Tensor? gamma_tensor=None, float momentum=0., "
         "float dampening=0., float weight_decay=0., bool nesterov=False, bool maximize=False, "
         "bool wd_after_momentum=False, bool extrapolate_with_momentum=False, bool past_grad=False, "
         "float noise_std=0., int seed=0, Tensor? trust=None, Tensor? grad_scale=None, Tensor? found_inf=None, "
         "bool master_weights=True, " +
         list("f") + "? second_moments=None, " + list("g") +
         "? max_second_moments=None, "
         "float beta1=0., float beta2=0., Tensor? beta1_tensor=None, Tensor? beta2_tensor=None, float eps=0., "
         "bool grad_averaging=True, bool decoupled=False, bool bias_correction=True) -> " +
         returns;
}
constexpr int kNumArgs = 35;  // the arguments of a phase operator (check takes the phase before them)
constexpr const char* kPhaseOps[] = {"extrapolate_", "update_", "update_past_", "update_noise_",
                                     "update_past_anchor_free_"};  // Phase order

std::optional<at::Tensor> optional_tensor(const c10::IValue& v) {
  return v.isNone() ? std::nullopt : std::optional<at::Tensor>(v.toTensor());
}

// The launch from the last kNumArgs values on the stack, in schema order.
Launch read_launch(int64_t phase, const c10::IValue* a) {
  Launch L;
  L.phase = phase;
  L.params = a[0].toTensorVector();
  L.grads = a[1].toTensorVector();
  L.anchors = a[2].toTensorVector();
  L.momenta = a[3].toTensorVector();
  L.steps = a[4].toTensorVector();
  L.indices = a[5].toIntVector();
  L.last_gammas = a[6].toTensorVector();
  L.lr = a[7].toDouble();
  L.gamma = a[8].toDouble();
  L.lr_tensor = optional_tensor(a[9]);
  L.gamma_tensor = optional_tensor(a[10]);
  L.momentum = a[11].toDouble();
  L.dampening = a[12].toDouble();
  L.weight_decay = a[13].toDouble();
  L.nesterov = a[14].toBool();
  L.maximize = a[15].toBool();
  L.wd_after_momentum = a[16].toBool();
  L.extrapolate_with_momentum = a[17].toBool();
  L.past_grad = a[18].toBool();
  L.noise_std = a[19].toDouble();
  L.seed = a[20].toInt();
  L.trust = optional_tensor(a[21]);
  L.grad_scale = optional_tensor(a[22]);
  L.found_inf = optional_tensor(a[23]);
  L.master_weights = a[24].toBool();
  if (!a[25].isNone()) L.second_moments = a[25].toTensorVector();
  if (!a[26].isNone()) L.max_second_moments = a[26].toTensorVector();
  L.beta1 = a[27].toDouble();
  L.beta2 = a[28].toDouble();
  L.beta1_tensor = optional_tensor(a[29]);
  L.beta2_tensor = optional_tensor(a[30]);
  L.eps = a[31].toDouble();
  L.grad_averaging = a[32].toBool();
  L.decoupled = a[33].toBool();
  L.bias_correction = a[34].toBool();
  return L;
}

at::ScalarType state_dtype(at::ScalarType param) { return param == at::kDouble ? at::kDouble : at::kFloat; }

std::string name_of(const Launch& L, size_t i) {
  std::ostringstream out;
  out << "extrap_kernels: param " << L.indices[i] << " (shape " << L.params[i].sizes() << ")";
  return out.str();
}

// Everything a kernel relies on, for every tensor of the launch, before anything is written. A refusal
// is a ValueError (TypeError for dtypes): the Python layer tells it from a failure while running.
void check_launch(const Launch& L) {
  const size_t n = L.params.size();
  TORCH_CHECK_VALUE(L.phase >= kExtrapolate && L.phase <= kUpdatePastAnchorFree, "extrap_kernels: unknown phase ",
                    L.phase);
  TORCH_CHECK_VALUE(L.grads.size() == n && L.steps.size() == n && L.indices.size() == n,
                    "extrap_kernels: params, grads, steps and indices must have the same length");
  if (L.anchor_free()) {
    TORCH_CHECK_VALUE(L.anchors.empty() && L.last_gammas.size() == n && !L.momenta.empty(),
                      "extrap_kernels: update_past_anchor_free_ takes no anchors, and one last_gamma and one "
                      "momentum buffer per parameter");
    // the anchor is recomputed as x + last_gamma * m only where the past direction d is m (SPEC)
    TORCH_CHECK_VALUE(!L.nesterov && !L.wd_after_momentum && !L.past_grad && !L.trust,
                      "extrap_kernels: update_past_anchor_free_ needs heavy-ball momentum: no nesterov, "
                      "wd_after_momentum, past_grad or LARS trust");
  } else {
    TORCH_CHECK_VALUE(L.anchors.size() == n || (L.anchors.empty() && L.phase == kUpdate),
                      "extrap_kernels: anchors must be one per parameter (or empty for update_ on parameters "
                      "that are their own anchors)");
    TORCH_CHECK_VALUE(L.last_gammas.empty(), "extrap_kernels: last_gammas belong to update_past_anchor_free_");
  }
  if (L.adaptive()) {
    // the first moments are the momenta; no SGD-family option applies
    TORCH_CHECK_VALUE(L.second_moments.size() == n && L.momenta.size() == n &&
                          (L.max_second_moments.empty() || L.max_second_moments.size() == n),
                      "extrap_kernels: an adaptive launch takes one first moment (momenta) and one second moment per "
                      "parameter, and one max_second_moment per parameter or none");
    TORCH_CHECK_VALUE(!L.anchor_free() && L.momentum == 0 && !L.nesterov && !L.wd_after_momentum &&
                          !L.extrapolate_with_momentum && !L.past_grad && L.master_weights,
                      "extrap_kernels: the adaptive bases have no anchor-free update, momentum, nesterov, "
                      "wd_after_momentum, extrapolate_with_momentum, past_grad or master_weights=False");
    TORCH_CHECK_VALUE(L.beta1 >= 0 && L.beta1 < 1 && L.beta2 >= 0 && L.beta2 < 1 && L.eps >= 0,
                      "extrap_kernels: betas must lie in [0, 1) and eps be >= 0, got (", L.beta1, ", ", L.beta2,
                      ") and ", L.eps);
  } else {
    TORCH_CHECK_VALUE(!L.beta1_tensor && !L.beta2_tensor, "extrap_kernels: beta tensors belong to adaptive launches");
    TORCH_CHECK_VALUE(L.max_second_moments.empty(), "extrap_kernels: max_second_moments without second_moments");
    TORCH_CHECK_VALUE(L.momenta.empty() || L.momenta.size() == n,
                      "extrap_kernels: momenta must be empty (momentum 0) or one per parameter");
    TORCH_CHECK_VALUE((L.momentum != 0) == !L.momenta.empty(), "extrap_kernels: momenta given iff momentum != 0");
  }
  if (n == 0) return;
  const auto device = L.params[0].device();
  const auto dtype = L.params[0].scalar_type();
  const auto cdtype = state_dtype(dtype);                 // the arithmetic's (and the rate and trust tensors')
  const auto sdtype = L.master_weights ? cdtype : dtype;  // the stored anchor's and momentum's
  TORCH_CHECK_VALUE(!L.anchor_free() || cdtype == dtype,
                    "extrap_kernels: update_past_anchor_free_ needs fp32 or fp64 parameters (a 16-bit one rounds x)");
  TORCH_CHECK_VALUE(!L.anchors.empty() || sdtype == dtype,
                    "extrap_kernels: 16-bit parameters need their fp32 master anchors");
  auto check_state = [&](const at::Tensor& t, at::ScalarType want, int64_t numel, const char* key, size_t i) {
    TORCH_CHECK_VALUE(t.device() == device && t.scalar_type() == want, name_of(L, i), ": state '", key, "' is ",
                      t.scalar_type(), " on ", t.device(), ", expected ", want, " on ", device);
    TORCH_CHECK_VALUE(t.layout() == at::kStrided && t.numel() == numel && t.is_contiguous(), name_of(L, i), ": state '",
                      key, "' does not match the parameter's shape/layout");
  };
  for (size_t i = 0; i < n; ++i) {
    const at::Tensor& x = L.params[i];
    const at::Tensor& g = L.grads[i];
    TORCH_CHECK_TYPE(!x.is_complex() && !g.is_complex(), name_of(L, i),
                     ": complex tensors go to the kernels as their real views (torch.view_as_real)");
    TORCH_CHECK_TYPE(x.scalar_type() == dtype, name_of(L, i), ": mixed dtypes inside one fused bucket (",
                     x.scalar_type(), " and ", dtype, ")");
    TORCH_CHECK_TYPE(dtype == at::kFloat || dtype == at::kDouble || dtype == at::kBFloat16 || dtype == at::kHalf,
                     name_of(L, i), ": dtype ", dtype, " is not supported (fp32, fp64, bf16 or fp16)");
    TORCH_CHECK_VALUE(g.layout() == at::kStrided && x.layout() == at::kStrided, name_of(L, i),
                      ": sparse gradients are not supported: give these parameters an optimizer that takes them "
                      "(torch.optim.SGD, SparseAdam)");
    TORCH_CHECK_VALUE(x.device() == device, name_of(L, i), ": mixed devices inside one fused bucket (", x.device(),
                      " and ", device, ")");
    TORCH_CHECK_VALUE(g.device() == device, name_of(L, i), ": mixed devices: gradient on ", g.device(),
                      ", parameter on ", device);
    TORCH_CHECK_TYPE(g.scalar_type() == dtype, name_of(L, i), ": mismatched dtypes: gradient ", g.scalar_type(),
                     ", parameter ", dtype);
    TORCH_CHECK_VALUE(g.sizes() == x.sizes(), name_of(L, i), ": gradient shape ", g.sizes(), " != parameter shape ",
                      x.sizes());
    TORCH_CHECK_VALUE(x.is_contiguous() && g.is_contiguous(), name_of(L, i),
                      ": fused kernels need contiguous parameters and gradients (backend='foreach' or 'auto' "
                      "handles strided ones)");
    const int64_t numel = x.numel();
    if (!L.anchors.empty()) check_state(L.anchors[i], sdtype, numel, "anchor", i);
    if (!L.momenta.empty()) check_state(L.momenta[i], sdtype, numel, L.adaptive() ? "exp_avg" : "momentum_buffer", i);
    if (!L.second_moments.empty()) check_state(L.second_moments[i], sdtype, numel, "exp_avg_sq", i);
    if (!L.max_second_moments.empty()) check_state(L.max_second_moments[i], sdtype, numel, "max_exp_avg_sq", i);
    check_state(L.steps[i], at::kFloat, 1, "step", i);
    if (!L.last_gammas.empty()) check_state(L.last_gammas[i], sdtype, 1, "last_gamma", i);
  }
  auto check_rate = [&](const std::optional<at::Tensor>& t, int64_t numel, const char* what) {
    if (!t) return;
    TORCH_CHECK_VALUE(t->device() == device && t->scalar_type() == cdtype && t->numel() == numel && t->is_contiguous(),
                      "extrap_kernels: ", what, " must be ", numel, " contiguous ", cdtype, " on ", device, ", got ",
                      t->numel(), " ", t->scalar_type(), " on ", t->device());
  };
  check_rate(L.trust, static_cast<int64_t>(n), "trust");
  check_rate(L.lr_tensor, 1, "lr tensor");
  check_rate(L.gamma_tensor, 1, "gamma tensor");
  for (const auto* beta : {&L.beta1_tensor, &L.beta2_tensor}) {  // (float64: the bias corrections' precision)
    TORCH_CHECK_VALUE(
        !*beta || ((*beta)->device() == device && (*beta)->scalar_type() == at::kDouble && (*beta)->numel() == 1),
        "extrap_kernels: a beta tensor must be one float64 element on ", device);
  }
  TORCH_CHECK_VALUE(!L.grad_scale || L.grad_scale->numel() == 1, "extrap_kernels: grad_scale must have one element");
  TORCH_CHECK_VALUE(!L.found_inf || L.found_inf->numel() == 1, "extrap_kernels: found_inf must have one element");
}

#if defined(EXTRAP_WITH_CUDA) || defined(EXTRAP_CUDA_EMULATION)
// After an anchor-free launch on the device (same stream, so after its kernels read them): x was
// extrapolated with this gamma, unless found_inf skipped the update. No host synchronization.
void record_gamma_cuda(const Launch& L) {
  const auto options = L.last_gammas[0].options();
  const at::Tensor gamma = L.gamma_tensor ? L.gamma_tensor->reshape({}) : at::scalar_tensor(L.gamma, options);
  if (L.found_inf) {
    const at::Tensor kept = at::where(L.found_inf->reshape({}).ne(0), at::stack(L.last_gammas), gamma);
    at::_foreach_copy_(L.last_gammas, kept.unbind());
  } else {
    at::_foreach_copy_(L.last_gammas, std::vector<at::Tensor>(L.last_gammas.size(), gamma));
  }
}
#endif

#if defined(EXTRAP_WITH_CUDA) || defined(EXTRAP_CUDA_EMULATION)
// The CUDA launcher's launch, on the device's current stream (L.stream): the step counted and the
// anchor-free gamma recorded by device ops, so that nothing synchronizes with the host.
// The CUDA kernels read grad_scale in the state dtype (LAMB folds its clipping into it: fp64 keeps its
// precision) and found_inf as float32.
void device_dtypes(Launch& L) {
  if (L.grad_scale) L.grad_scale = L.grad_scale->to(state_dtype(L.params[0].scalar_type()));
  if (L.found_inf) L.found_inf = L.found_inf->to(at::kFloat);
}

void run_cuda(Launch L) {
  device_dtypes(L);
  if (L.counts_step()) {  // a skipped step (found_inf) is not counted
    if (L.found_inf) {
      // (_foreach_add_ takes a 0-dim tensor; GradScaler's found_inf has shape [1])
      at::_foreach_add_(L.steps, L.found_inf->reshape({}).eq(0).to(at::kFloat));
    } else {
      at::_foreach_add_(L.steps, 1.0);
    }
  }
  apply_cuda(L);
  if (L.anchor_free()) record_gamma_cuda(L);
}
#endif

// A CPU launch's beta tensors, read here: its kernel takes numbers.
void read_betas_on_host(Launch& L) {
  if (L.beta1_tensor) L.beta1 = std::exchange(L.beta1_tensor, std::nullopt)->item<double>();
  if (L.beta2_tensor) L.beta2 = std::exchange(L.beta2_tensor, std::nullopt)->item<double>();
}

// Runs a checked launch on its device. A CPU launch reads its rate tensors here: the kernel takes numbers.
void run(Launch L) {
  if (L.params.empty()) return;
  const auto& device = L.params[0].device();
  if (device.is_meta()) return;  // shapes and dtypes only (FakeTensor, torch.compile)
#ifdef EXTRAP_CUDA_EMULATION
  if (device.is_cpu()) return run_cuda(std::move(L));  // the CUDA launcher, emulated on the host
#else
  if (device.is_cpu()) {
    if (L.lr_tensor) L.lr = std::exchange(L.lr_tensor, std::nullopt)->item<double>();
    if (L.gamma_tensor) L.gamma = std::exchange(L.gamma_tensor, std::nullopt)->item<double>();
    read_betas_on_host(L);
    return apply_cpu(L);
  }
#endif
#ifdef EXTRAP_WITH_CUDA
  if (device.is_cuda()) {
    const c10::cuda::CUDAGuard guard(device);
    L.stream = reinterpret_cast<int64_t>(c10::cuda::getCurrentCUDAStream(device.index()).stream());
    return run_cuda(std::move(L));
  }
#endif
  TORCH_CHECK(false, "extrap_kernels: this build has no kernel for device ", device);
}

template <Phase P>
void phase_op(const c10::OperatorHandle&, torch::jit::Stack* stack) {
  Launch L = read_launch(P, &*(stack->end() - kNumArgs));
  torch::jit::drop(*stack, kNumArgs);
  check_launch(L);
  run(std::move(L));
}

// The sums of LAMB's reading pass, computed on the launch's device as run() runs a launch.
at::Tensor norms(Launch L) {
  const auto n = static_cast<int64_t>(L.params.size());
  if (n == 0) return at::zeros({0, 2}, at::kFloat);
  const auto& device = L.params[0].device();
  if (device.is_meta()) return at::empty({n, 2}, L.momenta[0].options());
#ifdef EXTRAP_CUDA_EMULATION
  if (device.is_cpu()) {  // the CUDA launcher, emulated on the host
    device_dtypes(L);
    return adaptive_norms_cuda(L);
  }
#else
  if (device.is_cpu()) {
    read_betas_on_host(L);
    return adaptive_norms_cpu(L);
  }
#endif
#ifdef EXTRAP_WITH_CUDA
  if (device.is_cuda()) {
    const c10::cuda::CUDAGuard guard(device);
    L.stream = reinterpret_cast<int64_t>(c10::cuda::getCurrentCUDAStream(device.index()).stream());
    device_dtypes(L);
    return adaptive_norms_cuda(L);
  }
#endif
  TORCH_CHECK(false, "extrap_kernels: this build has no kernel for device ", device);
}

// LAMB's reading pass (csrc/launch.h, adaptive_norms_cpu): the [tensors, 2] sums of s^2 and u^2.
void norms_op(const c10::OperatorHandle&, torch::jit::Stack* stack) {
  const c10::IValue* args = &*(stack->end() - kNumArgs);
  Launch L = read_launch((args - 1)->toInt(), args);
  torch::jit::drop(*stack, kNumArgs + 1);
  check_launch(L);
  TORCH_CHECK_VALUE(L.adaptive(), "extrap_kernels: norms is the reading pass of an adaptive launch (LAMB)");
  TORCH_CHECK_VALUE(L.phase != kUpdatePastAnchorFree, "extrap_kernels: norms: phase ", L.phase,
                    " has no adaptive form");
  torch::jit::push(*stack, norms(std::move(L)));
}

void check_op(const c10::OperatorHandle&, torch::jit::Stack* stack) {
  const c10::IValue* args = &*(stack->end() - kNumArgs);
  Launch L = read_launch((args - 1)->toInt(), args);
  torch::jit::drop(*stack, kNumArgs + 1);
  check_launch(L);
}

// The header's noise generator on the host, for tests: bits[i] = Philox outputs (c0, c1, c2, c3) and
// normal[i] = the Box-Muller normal of element i of parameter `index` at `step`.
std::vector<at::Tensor> noise(int64_t seed, int64_t step, int64_t index, int64_t numel) {
  auto bits = at::empty({numel, 4}, at::kLong);
  auto normal = at::empty({numel}, at::kFloat);
  auto* b = bits.data_ptr<int64_t>();
  auto* z = normal.data_ptr<float>();
  for (int64_t i = 0; i < numel; ++i) {
    const auto u = static_cast<uint64_t>(i);
    const Philox4 r =
        noise_bits(static_cast<uint64_t>(seed), static_cast<uint32_t>(step), static_cast<uint32_t>(index), u);
    b[4 * i + 0] = r.c0;
    b[4 * i + 1] = r.c1;
    b[4 * i + 2] = r.c2;
    b[4 * i + 3] = r.c3;
    z[i] = noise_normal(static_cast<uint64_t>(seed), static_cast<uint32_t>(step), static_cast<uint32_t>(index), u);
  }
  return {bits, normal};
}

#ifndef EXTRAP_CUDA_EMULATION
// torch.ops.extrap_kernels.squares (CPU): each tensor's sum of squares, float64 (csrc/cpu, squares_cpu).
at::Tensor squares_op(at::TensorList tensors) {
  for (const at::Tensor& t : tensors) {
    TORCH_CHECK_VALUE(t.layout() == at::kStrided && t.device().is_cpu(),
                      "extrap_kernels: squares takes dense CPU "
                      "tensors, not ",
                      t.layout(), " on ", t.device());
    TORCH_CHECK_VALUE(at::isFloatingType(t.scalar_type()), "extrap_kernels: squares takes floating-point tensors, not ",
                      t.scalar_type());
  }
  return squares_cpu(tensors.vec());
}

at::Tensor squares_meta(at::TensorList tensors) {
  return at::empty({static_cast<int64_t>(tensors.size())}, at::TensorOptions().dtype(at::kDouble).device(at::kMeta));
}
#endif

void register_kernels(torch::Library& m) {
  m.impl(kPhaseOps[kExtrapolate], torch::CppFunction::makeFromBoxedFunction<&phase_op<kExtrapolate>>());
  m.impl(kPhaseOps[kUpdate], torch::CppFunction::makeFromBoxedFunction<&phase_op<kUpdate>>());
  m.impl(kPhaseOps[kUpdatePast], torch::CppFunction::makeFromBoxedFunction<&phase_op<kUpdatePast>>());
  m.impl(kPhaseOps[kUpdateNoise], torch::CppFunction::makeFromBoxedFunction<&phase_op<kUpdateNoise>>());
  m.impl(kPhaseOps[kUpdatePastAnchorFree],
         torch::CppFunction::makeFromBoxedFunction<&phase_op<kUpdatePastAnchorFree>>());
  m.impl("check", torch::CppFunction::makeFromBoxedFunction<&check_op>());
  m.impl("norms", torch::CppFunction::makeFromBoxedFunction<&norms_op>());
}

// An operator call with every argument but the per-step ones converted once: the optimizers' per-step
// path (extrap_kernels/plan.py). A call converts only the gradients (and the optional per-step tensors)
// and calls the operator through the dispatcher, as torch.ops would: the same kernels and checks run,
// without converting the unchanged parameter and state lists every step.
class PreparedCall {
 public:
  // `arguments`: the operator's arguments by schema name (defaults fill the rest); the per-step ones
  // are given at each call.
  PreparedCall(const std::string& name, const py::dict& arguments)
      : op_(c10::Dispatcher::singleton().findSchemaOrThrow((std::string(kNamespace) + "::" + name).c_str(), "")) {
    const auto& schema = op_.schema().arguments();
    for (size_t i = 0; i < schema.size(); ++i) {
      const auto& argument = schema[i];
      const std::string& arg = argument.name();
      if (arg == "grads") grads_ = i;
      if (arg == "trust") trust_ = i;
      if (arg == "grad_scale") grad_scale_ = i;
      if (arg == "found_inf") found_inf_ = i;
      if (arguments.contains(arg)) {
        stack_.push_back(torch::jit::toIValue(arguments[arg.c_str()], argument.real_type()));
      } else if (arg == "grads") {
        stack_.emplace_back(c10::List<at::Tensor>());
      } else {
        TORCH_CHECK(argument.default_value().has_value(), "extrap_kernels: ", name, " needs argument ", arg);
        stack_.push_back(*argument.default_value());
      }
    }
    TORCH_CHECK(arguments.size() <= schema.size(), "extrap_kernels: ", name, ": unknown arguments");
  }

  // Returns what the operator returns (norms: its sums), else None.
  std::optional<at::Tensor> call(std::vector<at::Tensor> grads, std::optional<at::Tensor> trust,
                                 std::optional<at::Tensor> grad_scale, std::optional<at::Tensor> found_inf) const {
    torch::jit::Stack stack = stack_;
    stack[grads_] = c10::IValue(c10::List<at::Tensor>(std::move(grads)));
    stack[trust_] = c10::IValue(std::move(trust));
    stack[grad_scale_] = c10::IValue(std::move(grad_scale));
    stack[found_inf_] = c10::IValue(std::move(found_inf));
    op_.callBoxed(stack);  // with the GIL held: releasing it here hung the 2-process DDP tests (gloo)
    if (!stack.empty() && stack.back().isTensor()) return stack.back().toTensor();
    return std::nullopt;
  }

 private:
  c10::OperatorHandle op_;
  torch::jit::Stack stack_;
  size_t grads_ = 0, trust_ = 0, grad_scale_ = 0, found_inf_ = 0;
};

}  // namespace
}  // namespace extrap

EXTRAP_LIBRARY(EXTRAP_OPS, m) {
  for (const char* name : extrap::kPhaseOps) m.def(extrap::schema(name, true).c_str());
  m.def(extrap::schema("check", false).c_str());
  m.def(extrap::schema("norms", false, "Tensor").c_str());
#ifndef EXTRAP_CUDA_EMULATION
  m.def("squares(Tensor[] tensors) -> Tensor");
#endif
}

EXTRAP_LIBRARY_IMPL(EXTRAP_OPS, CPU, m) {
  extrap::register_kernels(m);
#ifndef EXTRAP_CUDA_EMULATION
  m.impl("squares", &extrap::squares_op);
#endif
}
// An optimizer step has no gradient: autograd passes the operators straight through (no graph, no
// per-tensor requires_grad walk), as it does for torch's own fused optimizers under no_grad.
EXTRAP_LIBRARY_IMPL(EXTRAP_OPS, Autograd, m) {
  for (const char* name : extrap::kPhaseOps) m.impl(name, torch::CppFunction::makeFallthrough());
  m.impl("check", torch::CppFunction::makeFallthrough());
  m.impl("norms", torch::CppFunction::makeFallthrough());
#ifndef EXTRAP_CUDA_EMULATION
  m.impl("squares", torch::CppFunction::makeFallthrough());
#endif
}
EXTRAP_LIBRARY_IMPL(EXTRAP_OPS, Meta, m) {
  extrap::register_kernels(m);
#ifndef EXTRAP_CUDA_EMULATION
  m.impl("squares", &extrap::squares_meta);
#endif
}
#ifdef EXTRAP_WITH_CUDA
EXTRAP_LIBRARY_IMPL(EXTRAP_OPS, CUDA, m) { extrap::register_kernels(m); }
#endif

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  namespace py = pybind11;
  m.doc() = "extrap-kernels fused multi-tensor optimizer kernels: see torch.ops.extrap_kernels";
  m.def("noise", &extrap::noise, "Philox bits and normals of one parameter (test hook)", py::arg("seed"),
        py::arg("step"), py::arg("index"), py::arg("numel"));
  m.attr("cpu_stream_above") = extrap::kCpuStreamAbove;
  m.attr("ops_namespace") = extrap::kNamespace;  // torch.ops.<this>
  py::class_<extrap::PreparedCall>(m, "PreparedCall", "An operator call with its unchanging arguments converted once")
      .def(py::init<const std::string&, const py::dict&>(), py::arg("name"), py::arg("arguments"))
      .def("__call__", &extrap::PreparedCall::call, py::arg("grads"), py::arg("trust"), py::arg("grad_scale"),
           py::arg("found_inf"));
  m.attr("emulates_cuda") = extrap::kEmulatesCuda;
#if defined(EXTRAP_WITH_CUDA) || defined(EXTRAP_CUDA_EMULATION)
  m.def("large_kernel_args", &extrap::large_kernel_args,
        "Whether the CUDA launches on the current device pass the 26 KB table (else the 4 KB one)");
  m.def("force_small_kernel_args", &extrap::force_small_kernel_args, py::arg("force"),
        "Make every CUDA launch take the 4 KB table, as on a driver before CUDA 12.1 (a test hook)");
#endif
#ifdef EXTRAP_WITH_CUDA
  m.attr("has_cuda") = true;
#else
  m.attr("has_cuda") = false;
#endif
}
