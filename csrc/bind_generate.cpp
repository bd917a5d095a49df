// Python bindings of the sampler and the generation loop. Arguments are converted and checked
// while holding the GIL; the loop itself runs without it.
#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include <cmath>

#include "bindings.h"
#include "sampler.h"

namespace py = pybind11;

namespace pygpt {

namespace {

using FloatArray = py::array_t<float, py::array::c_style | py::array::forcecast>;

std::vector<float> to_logits(const FloatArray& logits) {
    if (logits.ndim() != 1 || logits.size() == 0) throw std::invalid_argument("logits must be a non-empty 1-D array");
    std::vector<float> v(logits.data(), logits.data() + logits.size());
    for (float x : v)
        if (std::isnan(x)) throw std::invalid_argument("logits contain NaN");
    return v;
}

}  // namespace

void bind_generate(py::module_& m) {
    py::class_<SamplingParams>(m, "SamplingParams",
                               "Logits processor settings (see csrc/sampler.h). Defaults: greedy, every filter off.")
        .def(py::init<>())
        .def_readwrite("temperature", &SamplingParams::temperature)
        .def_readwrite("top_k", &SamplingParams::top_k)
        .def_readwrite("top_p", &SamplingParams::top_p)
        .def_readwrite("min_p", &SamplingParams::min_p)
        .def_readwrite("typical_p", &SamplingParams::typical_p)
        .def_readwrite("repetition_penalty", &SamplingParams::repetition_penalty)
        .def_readwrite("presence_penalty", &SamplingParams::presence_penalty)
        .def_readwrite("frequency_penalty", &SamplingParams::frequency_penalty)
        .def_readwrite("no_repeat_ngram_size", &SamplingParams::no_repeat_ngram_size)
        .def_readwrite("logit_bias", &SamplingParams::logit_bias)
        .def("validate", &SamplingParams::validate, py::arg("vocab_size"));

    m.def(
        "process_logits",
        [](const FloatArray& logits, const std::vector<int32_t>& history, size_t n_prompt,
           const SamplingParams& params) {
            std::vector<float> s = to_logits(logits);
            Sampler sampler(params, int64_t(s.size()), 0, 0);
            sampler.process(s.data(), history, n_prompt);
            return py::array_t<float>(py::ssize_t(s.size()), s.data());
        },
        py::arg("logits"), py::arg("history"), py::arg("n_prompt"), py::arg("params"),
        "The processed scores (-inf = filtered) the sampler would draw from, for tests.");

    m.def(
        "sample_tokens",
        [](const FloatArray& logits, const std::vector<int32_t>& history, size_t n_prompt,
           const SamplingParams& params, uint64_t seed, uint64_t stream, int64_t n) {
            if (n < 0) throw std::invalid_argument("n must be >= 0");
            const std::vector<float> s0 = to_logits(logits);
            py::array_t<int32_t> out(n);
            int32_t* dst = out.mutable_data();
            {
                py::gil_scoped_release release;
                Sampler sampler(params, int64_t(s0.size()), seed, stream);
                std::vector<float> s;
                for (int64_t i = 0; i < n; i++) {
                    s = s0;
                    dst[i] = sampler.sample(s.data(), history, n_prompt);
                }
            }
            return out;
        },
        py::arg("logits"), py::arg("history"), py::arg("n_prompt"), py::arg("params"), py::arg("seed"),
        py::arg("stream"), py::arg("n"),
        "n successive choices of one sampler on the same logits (its random stream advancing), for tests.");
}

}  // namespace pygpt
