// Identity comparisons for the optimizers' cached plans (extrap_kernels/identity.py): whether a step's parameters,
// gradients and state tensors are the very objects its plan was made from. In Python each check walks every
// parameter with an interpreter call per element, about 25 us for the 644 state values of 161 parameters, which is
// a fifth of such a model's step; here each element is a pointer comparison. The functions only read what they are
// given, and hold the GIL (pybind11 calls them with it).
#pragma once

#include <Python.h>
#include <pybind11/pybind11.h>

namespace extrap::identity {

namespace py = pybind11;

// `now` (a list) holds exactly the objects of `then` (a tuple), in order.
inline bool same_objects(py::handle now, py::handle then) {
  if (!PyList_Check(now.ptr()) || !PyTuple_Check(then.ptr())) return false;
  const Py_ssize_t size = PyList_GET_SIZE(now.ptr());
  if (size != PyTuple_GET_SIZE(then.ptr())) return false;
  for (Py_ssize_t i = 0; i < size; ++i) {
    if (PyList_GET_ITEM(now.ptr(), i) != PyTuple_GET_ITEM(then.ptr(), i)) return false;
  }
  return true;
}

// `grads` (a list, None where a parameter has no gradient) has a gradient exactly where `present` (a tuple of
// bools) says.
inline bool same_presence(py::handle grads, py::handle present) {
  if (!PyList_Check(grads.ptr()) || !PyTuple_Check(present.ptr())) return false;
  const Py_ssize_t size = PyList_GET_SIZE(grads.ptr());
  if (size != PyTuple_GET_SIZE(present.ptr())) return false;
  for (Py_ssize_t i = 0; i < size; ++i) {
    const bool has = PyList_GET_ITEM(grads.ptr(), i) != Py_None;
    if (has != (PyTuple_GET_ITEM(present.ptr(), i) == Py_True)) return false;
  }
  return true;
}

// The values of the dicts in `dicts` (a list), dict after dict in their own order, are exactly the objects of
// `values` (a tuple). A value replaced, added or deleted (or a key moved) makes them differ.
inline bool same_values(py::handle dicts, py::handle values) {
  if (!PyList_Check(dicts.ptr()) || !PyTuple_Check(values.ptr())) return false;
  const Py_ssize_t count = PyTuple_GET_SIZE(values.ptr());
  Py_ssize_t at = 0;
  for (Py_ssize_t d = 0; d < PyList_GET_SIZE(dicts.ptr()); ++d) {
    PyObject* dict = PyList_GET_ITEM(dicts.ptr(), d);
    if (!PyDict_Check(dict)) return false;
    Py_ssize_t position = 0;
    PyObject* key = nullptr;
    PyObject* value = nullptr;
    while (PyDict_Next(dict, &position, &key, &value)) {  // (borrowed references)
      if (at == count || value != PyTuple_GET_ITEM(values.ptr(), at)) return false;
      ++at;
    }
  }
  return at == count;
}

inline void bind(py::module_& m) {
  m.def("same_objects", &same_objects, "Whether a list holds exactly a tuple's objects, in order (plan reuse)",
        py::arg("now"), py::arg("then"));
  m.def("same_presence", &same_presence, "Whether a list is None exactly where a tuple of bools is False",
        py::arg("grads"), py::arg("present"));
  m.def("same_values", &same_values, "Whether a list of dicts' values are exactly a tuple's objects, in order",
        py::arg("dicts"), py::arg("values"));
}

}  // namespace extrap::identity
