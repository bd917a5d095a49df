// The pybind11 module pygpt._core. Compute-heavy calls release the GIL.
#include "bindings.h"

#include "errors.h"
#include "kernels.h"

namespace py = pybind11;

PYBIND11_MODULE(_core, m) {
    m.doc() = "pygpt C++ core";

    static py::exception<pygpt::FormatError> format_error(m, "ModelFormatError", PyExc_ValueError);
    py::register_exception_translator([](std::exception_ptr p) {
        try {
            if (p) std::rethrow_exception(p);
        } catch (const pygpt::FormatError& e) {
            py::set_error(format_error, e.what());
        } catch (const pygpt::FileNotFound& e) {
            py::set_error(PyExc_FileNotFoundError, e.what());
        } catch (const pygpt::OutOfMemory& e) {
            py::set_error(PyExc_MemoryError, e.what());
        } catch (const pygpt::Interrupted&) {
            // raise what the signal handler raised (KeyboardInterrupt for Ctrl-C)
            if (PyErr_CheckSignals() == 0) py::set_error(PyExc_KeyboardInterrupt, "");
        }
    });

    m.def("cpu_has_avx2", &pygpt::cpu_has_avx2);
    m.def("cpu_has_avx2_vnni", &pygpt::cpu_has_avx2_vnni);
    m.def("cpu_has_avx512", &pygpt::cpu_has_avx512);
    m.def("cpu_has_avx512_bf16", &pygpt::cpu_has_avx512_bf16);
    m.def("cpu_has_amx", &pygpt::cpu_has_amx);
    m.def("cpu_has_neon", &pygpt::cpu_has_neon);
    m.def("cpu_has_neon_dot", &pygpt::cpu_has_neon_dot);
    m.def("physical_cores", &pygpt::physical_cores);
    m.def("select_isa", [](const std::string& isa) { return std::string(pygpt::select_kernels(isa.c_str()).name); },
          py::arg("isa") = "", "Name of the ISA path a model loaded now would use.");

    pygpt::bind_model(m);
    pygpt::bind_generate(m);
    pygpt::bind_tokenizer(m);
    pygpt::bind_grammar(m);
    pygpt::bind_kernels(m);
}
