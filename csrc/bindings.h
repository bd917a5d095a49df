// Each concern registers its own Python bindings; bindings.cpp calls them in order.
#pragma once
#include <pybind11/pybind11.h>

namespace pygpt {
void bind_model(pybind11::module_& m);      // bind_model.cpp
void bind_generate(pybind11::module_& m);   // bind_generate.cpp
void bind_tokenizer(pybind11::module_& m);  // bind_tokenizer.cpp
void bind_kernels(pybind11::module_& m);    // bind_kernels.cpp (test-only kernel access)
void bind_grammar(pybind11::module_& m);    // bind_grammar.cpp
}  // namespace pygpt
