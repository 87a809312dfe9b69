// Python entry points of the extension: check a launch once, whatever the device, then hand it to
// the launcher of that device. The Python layer validates first and with friendlier messages; these
// checks are the last line, so that no kernel ever runs on a malformed bucket.
#include <torch/extension.h>

#include <utility>

#include "launch.h"

namespace extrap {
namespace {

at::ScalarType state_dtype(at::ScalarType param) {
  return param == at::kDouble ? at::kDouble : at::kFloat;
}

void check_launch(const Launch& L) {
  const size_t n = L.params.size();
  TORCH_CHECK(L.phase >= kExtrapolate && L.phase <= kUpdateNoise, "extrap_kernels: unknown phase ", L.phase);
  TORCH_CHECK(L.grads.size() == n && L.anchors.size() == n && L.steps.size() == n && L.indices.size() == n,
              "extrap_kernels: params, grads, anchors, steps and indices must have the same length");
  TORCH_CHECK(L.momenta.empty() || L.momenta.size() == n,
              "extrap_kernels: momenta must be empty (momentum 0) or one per parameter");
  TORCH_CHECK((L.momentum != 0) == !L.momenta.empty(), "extrap_kernels: momenta given iff momentum != 0");
  if (n == 0) return;
  const auto device = L.params[0].device();
  const auto dtype = L.params[0].scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble || dtype == at::kBFloat16 || dtype == at::kHalf,
              "extrap_kernels: parameters must be fp32, fp64, bf16 or fp16, got ", dtype);
  const auto sdtype = state_dtype(dtype);
  auto check = [&](const at::Tensor& t, at::ScalarType want, int64_t numel, const char* what, size_t i) {
    TORCH_CHECK(t.layout() == at::kStrided, "extrap_kernels: ", what, " ", i, " is sparse");
    TORCH_CHECK(t.device() == device, "extrap_kernels: ", what, " ", i, " is on ", t.device(),
                ", the bucket on ", device);
    TORCH_CHECK(t.scalar_type() == want, "extrap_kernels: ", what, " ", i, " is ", t.scalar_type(),
                ", expected ", want);
    TORCH_CHECK(t.numel() == numel, "extrap_kernels: ", what, " ", i, " has ", t.numel(),
                " elements, expected ", numel);
    TORCH_CHECK(t.is_contiguous(), "extrap_kernels: ", what, " ", i, " is not contiguous");
  };
  for (size_t i = 0; i < n; ++i) {
    const int64_t numel = L.params[i].numel();
    check(L.params[i], dtype, numel, "param", i);
    check(L.grads[i], dtype, numel, "grad", i);
    check(L.anchors[i], sdtype, numel, "anchor", i);
    if (!L.momenta.empty()) check(L.momenta[i], sdtype, numel, "momentum buffer", i);
    check(L.steps[i], at::kFloat, 1, "step", i);
  }
  if (L.trust) check(*L.trust, sdtype, static_cast<int64_t>(n), "trust", 0);
  if (L.lr_tensor) check(*L.lr_tensor, sdtype, 1, "lr tensor", 0);
  if (L.gamma_tensor) check(*L.gamma_tensor, sdtype, 1, "gamma tensor", 0);
  if (L.grad_scale) TORCH_CHECK(L.grad_scale->numel() == 1, "extrap_kernels: grad_scale must have one element");
  if (L.found_inf) TORCH_CHECK(L.found_inf->numel() == 1, "extrap_kernels: found_inf must have one element");
}

// Takes the launch by value: a CPU launch resolves its rate tensors into numbers on this copy.
void apply(Launch L) {
  check_launch(L);
  if (L.params.empty()) return;
  if (L.params[0].is_cpu()) {  // host memory: the rates are read here, the kernel takes numbers
    if (L.lr_tensor) L.lr = std::exchange(L.lr_tensor, std::nullopt)->item<double>();
    if (L.gamma_tensor) L.gamma = std::exchange(L.gamma_tensor, std::nullopt)->item<double>();
    return apply_cpu(L);
  }
#ifdef EXTRAP_WITH_CUDA
  if (L.params[0].is_cuda()) return apply_cuda(L);
#endif
  TORCH_CHECK(false, "extrap_kernels: this build has no kernel for device ", L.params[0].device());
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
    const Philox4 r = noise_bits(static_cast<uint64_t>(seed), static_cast<uint32_t>(step),
                                 static_cast<uint32_t>(index), u);
    b[4 * i + 0] = r.c0;
    b[4 * i + 1] = r.c1;
    b[4 * i + 2] = r.c2;
    b[4 * i + 3] = r.c3;
    z[i] = noise_normal(static_cast<uint64_t>(seed), static_cast<uint32_t>(step), static_cast<uint32_t>(index), u);
  }
  return {bits, normal};
}

}  // namespace
}  // namespace extrap

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  namespace py = pybind11;
  m.doc() = "extrap-kernels fused multi-tensor optimizer kernels";
  // The launch is built field by field from Python (extrap_kernels/backends/cpu.py): names, not positions.
  py::class_<extrap::Launch>(m, "Launch", "One multi-tensor launch: a bucket's tensors and hyperparameters")
      .def(py::init<>())
      .def_readwrite("phase", &extrap::Launch::phase)
      .def_readwrite("params", &extrap::Launch::params)
      .def_readwrite("grads", &extrap::Launch::grads)
      .def_readwrite("anchors", &extrap::Launch::anchors)
      .def_readwrite("momenta", &extrap::Launch::momenta)
      .def_readwrite("steps", &extrap::Launch::steps)
      .def_readwrite("indices", &extrap::Launch::indices)
      .def_readwrite("trust", &extrap::Launch::trust)
      .def_readwrite("lr", &extrap::Launch::lr)
      .def_readwrite("gamma", &extrap::Launch::gamma)
      .def_readwrite("momentum", &extrap::Launch::momentum)
      .def_readwrite("dampening", &extrap::Launch::dampening)
      .def_readwrite("weight_decay", &extrap::Launch::weight_decay)
      .def_readwrite("noise_std", &extrap::Launch::noise_std)
      .def_readwrite("lr_tensor", &extrap::Launch::lr_tensor)
      .def_readwrite("gamma_tensor", &extrap::Launch::gamma_tensor)
      .def_readwrite("nesterov", &extrap::Launch::nesterov)
      .def_readwrite("maximize", &extrap::Launch::maximize)
      .def_readwrite("wd_after_momentum", &extrap::Launch::wd_after_momentum)
      .def_readwrite("extrapolate_with_momentum", &extrap::Launch::extrapolate_with_momentum)
      .def_readwrite("past_grad", &extrap::Launch::past_grad)
      .def_readwrite("seed", &extrap::Launch::seed)
      .def_readwrite("grad_scale", &extrap::Launch::grad_scale)
      .def_readwrite("found_inf", &extrap::Launch::found_inf)
      .def_readwrite("stream", &extrap::Launch::stream);
  m.def("apply", &extrap::apply, "One multi-tensor pass of one phase over a (device, dtype) bucket",
        py::arg("launch"));
  m.def("noise", &extrap::noise, "Philox bits and normals of one parameter (test hook)", py::arg("seed"),
        py::arg("step"), py::arg("index"), py::arg("numel"));
#ifdef EXTRAP_WITH_CUDA
  m.attr("has_cuda") = true;
#else
  m.attr("has_cuda") = false;
#endif
}
