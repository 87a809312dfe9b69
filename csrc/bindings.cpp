// The extension's entry points: the phases registered as PyTorch operators, one set per base family
// (csrc/operator_args.h), the SGD family's
//   torch.ops.extrap_kernels.{extrapolate_, update_, update_past_, update_noise_, update_past_anchor_free_}
// and the adaptive bases' adam_extrapolate_, adam_update_, adam_update_past_, adam_update_noise_,
// adam_update_past_anchor_free_ (Adam's and AdamW's; the recovery weights recorded after it: record_recovery) (and
// check / adam_check, which validate a launch without running it, and adam_norms, LAMB's reading pass). Each call
// checks its whole launch once, whatever the device, then hands it to the launcher of that device: the CPU launcher
// (csrc/cpu), the CUDA launcher (csrc/cuda), or nothing for meta tensors (FakeTensor and torch.compile tracing run the
// checks only). These checks are the only per-step validation of the fused backends: nothing is written before all of
// them pass.
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

#include <iterator>
#include <sstream>
#include <utility>

#include "check_launch.h"
#include "identity.h"
#include "launch.h"
#include "operator_args.h"

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

constexpr const char* kPhaseOps[] = {"extrapolate_", "update_", "update_past_", "update_noise_",
                                     "update_past_anchor_free_"};  // Phase order

#if defined(EXTRAP_WITH_CUDA) || defined(EXTRAP_CUDA_EMULATION)
// After the Adam family's anchor-free launch on the device: this update's recovery weights (r0, r1), which the next one
// reads to recover the anchor (extrap_kernels/recovery.py, the same ops in the same dtype), unless found_inf skipped
// the update. Device ops on the launch's rates: no host synchronization.
void record_recovery(const Launch& L) {
  const auto options = L.last_gammas[0].options().dtype(L.last_gammas[0].scalar_type());
  at::Tensor lr = L.lr_tensor ? L.lr_tensor->reshape({}).to(options) : at::scalar_tensor(L.lr, options);
  at::Tensor gamma = L.gamma_tensor ? L.gamma_tensor->reshape({}).to(options) : at::scalar_tensor(L.gamma, options);
  if (L.trust) {  // LAMB: each tensor's rates scaled by its trust ratio, one row of weights per tensor
    lr = lr * *L.trust;
    gamma = gamma * *L.trust;
  }
  at::Tensor weights;
  if (L.decoupled) {  // AdamW: r1 = gamma / (1 - lr wd - gamma wd), r0 = wd r1
    const at::Tensor r1 = gamma / (1 - lr * L.weight_decay - gamma * L.weight_decay);
    weights = at::stack({L.weight_decay * r1, r1}, -1);
  } else {  // Adam: the decay is inside g', so x = s - gamma * a
    weights = at::stack({at::zeros_like(gamma), gamma}, -1);
  }
  if (weights.dim() == 1) weights = weights.expand({static_cast<int64_t>(L.last_gammas.size()), 2});
  if (L.found_inf) {
    const at::Tensor skipped = L.found_inf->reshape({}).ne(0).to(weights.device());
    weights = at::where(skipped, at::stack(L.last_gammas), weights);
  }
  at::_foreach_copy_(L.last_gammas, weights.unbind());
}

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
  if (L.loss_scale) L.loss_scale = L.loss_scale->to(state_dtype(L.params[0].scalar_type()));
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
  if (L.anchor_free()) L.adaptive() ? record_recovery(L) : record_gamma_cuda(L);
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
    return apply_cpu(L);  // (which records the anchor-free updates' gamma or recovery weights)
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

// The launch of the call on top of `stack` (its arguments popped), read by name at `positions`, which
// each operator finds once (one static per operator: its CPU, CUDA and Meta kernels share the schema).
// `phase` is the operator's own, or -1 where the call names it (check, norms).
Launch pop_launch(const ArgumentPositions& positions, torch::jit::Stack* stack, int64_t phase) {
  Launch L = read_launch(positions, &*(stack->end() - positions.count), phase);
  torch::jit::drop(*stack, positions.count);
  return L;
}

// The launch of a call to an operator of `family`, which the launchers dispatch on: an adaptive
// operator's launch holds every parameter's second moment (NovoGrad's, tensor_norms: none).
template <Family F>
Launch pop_family_launch(const ArgumentPositions& positions, torch::jit::Stack* stack, int64_t phase) {
  Launch L = pop_launch(positions, stack, phase);
  L.family = F;
  if (F == Family::kAdaptive) {
    const size_t seconds = L.tensor_norms ? 0 : L.params.size();
    TORCH_CHECK_VALUE(L.second_moments.size() == seconds, "extrap_kernels: an adaptive operator takes ",
                      "one second moment per parameter (", seconds, " with tensor_norms=", L.tensor_norms, "), not ",
                      L.second_moments.size());
  }
  return L;
}

template <Family F, Phase P>
void phase_op(const c10::OperatorHandle& op, torch::jit::Stack* stack) {
  static const ArgumentPositions positions(op.schema());  // (one per operator: F and P name it)
  Launch L = pop_family_launch<F>(positions, stack, P);
  if (!L.checked) check_launch(L);
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
void norms_op(const c10::OperatorHandle& op, torch::jit::Stack* stack) {
  static const ArgumentPositions positions(op.schema());
  Launch L = pop_family_launch<Family::kAdaptive>(positions, stack, -1);
  if (!L.checked) check_launch(L);  // (before the anchor-free update it reads s as that update recovers it)
  TORCH_CHECK_VALUE(!L.accumulates && !L.tensor_norms,
                    "extrap_kernels: adam_norms is LAMB's reading pass; Adagrad and NovoGrad have no trust ratio");
  torch::jit::push(*stack, norms(std::move(L)));
}

template <Family F>
void check_op(const c10::OperatorHandle& op, torch::jit::Stack* stack) {
  static const ArgumentPositions positions(op.schema());
  check_launch(pop_family_launch<F>(positions, stack, -1));
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

// The kernels of one family's operators: a phase operator per phase it has, check, and the adaptive
// bases' norms (LAMB's reading pass).
template <Family F>
void register_family(torch::Library& m) {
  const std::string prefix = family_prefix(F);
  auto phase = [&](auto p) {
    constexpr Phase P = decltype(p)::value;
    m.impl((prefix + kPhaseOps[P]).c_str(), torch::CppFunction::makeFromBoxedFunction<&phase_op<F, P>>());
  };
  phase(std::integral_constant<Phase, kExtrapolate>{});
  phase(std::integral_constant<Phase, kUpdate>{});
  phase(std::integral_constant<Phase, kUpdatePast>{});
  phase(std::integral_constant<Phase, kUpdateNoise>{});
  phase(std::integral_constant<Phase, kUpdatePastAnchorFree>{});
  m.impl((prefix + "check").c_str(), torch::CppFunction::makeFromBoxedFunction<&check_op<F>>());
  if (F == Family::kAdaptive) m.impl("adam_norms", torch::CppFunction::makeFromBoxedFunction<&norms_op>());
}

void register_kernels(torch::Library& m) {
  register_family<Family::kSgd>(m);
  register_family<Family::kAdaptive>(m);
}

// The names of one family's operators, as register_family registers them.
std::vector<std::string> operator_names(Family family) {
  std::vector<std::string> names;
  const std::string prefix = family_prefix(family);
  for (const char* name : kPhaseOps) names.push_back(prefix + name);
  names.push_back(prefix + "check");
  if (family == Family::kAdaptive) names.push_back("adam_norms");
  return names;
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
      if (arg == "loss_scale") loss_scale_ = i;
      if (arg == "checked") checked_ = i;
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
                                 std::optional<at::Tensor> grad_scale, std::optional<at::Tensor> found_inf,
                                 bool checked, std::optional<at::Tensor> loss_scale) const {
    torch::jit::Stack stack = stack_;
    stack[grads_] = c10::IValue(c10::List<at::Tensor>(std::move(grads)));
    stack[trust_] = c10::IValue(std::move(trust));
    stack[grad_scale_] = c10::IValue(std::move(grad_scale));
    stack[found_inf_] = c10::IValue(std::move(found_inf));
    stack[loss_scale_] = c10::IValue(std::move(loss_scale));
    if (checked_ != kNone) stack[checked_] = c10::IValue(checked);  // (the check operator checks regardless)
    op_.callBoxed(stack);  // with the GIL held: releasing it here hung the 2-process DDP tests (gloo)
    if (!stack.empty() && stack.back().isTensor()) return stack.back().toTensor();
    return std::nullopt;
  }

 private:
  c10::OperatorHandle op_;
  torch::jit::Stack stack_;
  static constexpr size_t kNone = static_cast<size_t>(-1);
  size_t grads_ = 0, trust_ = 0, grad_scale_ = 0, found_inf_ = 0, loss_scale_ = 0, checked_ = kNone;
};

}  // namespace
}  // namespace extrap

EXTRAP_LIBRARY(EXTRAP_OPS, m) {
  for (const auto family : {extrap::Family::kSgd, extrap::Family::kAdaptive}) {
    for (size_t phase = 0; phase < std::size(extrap::kPhaseOps); ++phase) {
      m.def(extrap::schema(extrap::kPhaseOps[phase], family, true).c_str());
    }
    m.def(extrap::schema("check", family, false).c_str());
  }
  m.def(extrap::schema("norms", extrap::Family::kAdaptive, false, "Tensor").c_str());
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
  for (const auto family : {extrap::Family::kSgd, extrap::Family::kAdaptive}) {
    for (const std::string& name : extrap::operator_names(family)) {
      m.impl(name.c_str(), torch::CppFunction::makeFallthrough());
    }
  }
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
           py::arg("found_inf"), py::arg("checked") = false, py::arg("loss_scale") = py::none());
  extrap::identity::bind(m);
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
