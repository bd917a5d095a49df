// Python bindings of Model and KVCache. Every call that computes releases the GIL.
#include <algorithm>
#include <memory>
#include <optional>

#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include "bindings.h"
#include "errors.h"
#include "model.h"

namespace py = pybind11;

namespace pygpt {

namespace {

using IdArray = py::array_t<int32_t, py::array::c_style | py::array::forcecast>;
using FloatArray = py::array_t<float, py::array::c_style | py::array::forcecast>;

DType parse_dtype(const std::string& s) {
    DType d;
    if (!dtype_from_name(s, &d)) throw FormatError("unknown dtype '" + s + "'");
    return d;
}

std::vector<int32_t> to_ids(const IdArray& ids) {
    if (ids.ndim() != 1) throw std::invalid_argument("token ids must be a 1-D sequence");
    return std::vector<int32_t>(ids.data(), ids.data() + ids.size());
}

// Runs one sequence's tokens through the model, returning its logits ([n, V] or [1, V]).
py::array_t<float> run(Model& model, KVCache& cache, const std::vector<int32_t>& ids, bool all_logits) {
    if (ids.empty()) throw std::invalid_argument("empty input: at least one token id is needed");
    const int64_t V = model.config().vocab_size;
    const int64_t rows = all_logits ? (int64_t)ids.size() : 1;
    py::array_t<float> out({rows, V});
    float* dst = out.mutable_data();
    {
        py::gil_scoped_release release;
        SeqStep step;
        step.cache = &cache;
        step.tokens = ids.data();
        step.n_tokens = (int64_t)ids.size();
        step.all_logits = all_logits;
        model.forward({step}, dst);
    }
    return out;
}

// Final hidden states of token sequences run together in one forward call, each appended to
// its cache in `caches` (a sequence continued over several calls) or from a fresh one: every
// row of each ([sum n_i, C]) or the last row of each ([n, C]).
py::array_t<float> hidden_states(Model& model, const std::vector<IdArray>& seqs, bool all_rows,
                                 const std::optional<std::vector<std::shared_ptr<KVCache>>>& given) {
    if (seqs.empty()) throw std::invalid_argument("no sequences");
    if (given && given->size() != seqs.size()) throw std::invalid_argument("caches: one a sequence");
    std::vector<std::vector<int32_t>> ids;
    for (const auto& a : seqs) {
        ids.push_back(to_ids(a));
        if (ids.back().empty()) throw std::invalid_argument("empty input: at least one token id is needed");
    }
    std::vector<std::unique_ptr<KVCache>> fresh;
    std::vector<SeqStep> steps;
    for (size_t i = 0; i < ids.size(); i++) {
        const auto& v = ids[i];
        KVCache* cache = given ? (*given)[i].get() : nullptr;
        if (given && !cache) throw std::invalid_argument("caches: None is not a KV cache");
        if (!cache) {
            // the positions it needs (fewer pages touched than n_ctx's; a longer one fails in forward)
            fresh.push_back(model.new_cache(std::min<int64_t>((int64_t)v.size(), model.config().n_ctx)));
            cache = fresh.back().get();
        }
        SeqStep step;
        step.cache = cache;
        step.tokens = v.data();
        step.n_tokens = (int64_t)v.size();
        step.all_logits = all_rows;
        steps.push_back(step);
    }
    py::array_t<float> out({Model::logit_rows(steps), model.config().n_embd});
    float* dst = out.mutable_data();
    {
        py::gil_scoped_release release;
        model.forward(steps, nullptr, dst);
    }
    return out;
}

}  // namespace

void bind_model(py::module_& m) {
    py::class_<KVCache, std::shared_ptr<KVCache>>(m, "KVCache", "Keys and values of one sequence.")
        .def_readonly("pos", &KVCache::pos, "Positions filled so far.")
        .def_readonly("n_ctx", &KVCache::n_ctx)
        .def_property_readonly("dtype", [](const KVCache& c) { return std::string(kv_type_name(c.type)); },
                               "How keys and values are stored: 'f32', 'f16' or 'int8'.")
        .def("fork", [](const KVCache& c) {
            auto copy = std::make_shared<KVCache>(c.n_layer, c.n_head, c.n_ctx, c.head_dim, c.type);
            copy->copy_from(c);
            return copy;
        }, "A new cache holding the same prefix.");

    py::class_<Model, std::shared_ptr<Model>>(m, "Model")
        .def(py::init([](const std::string& path, py::dict cfg, const std::vector<py::tuple>& tensors, int n_threads,
                         const std::string& isa, const std::string& kv_cache) {
                 KVType kv_type;
                 if (!kv_type_from_name(kv_cache, &kv_type))
                     throw std::invalid_argument("kv_cache must be 'f32', 'f16' or 'int8', not '" + kv_cache + "'");
                 ModelConfig c;
                 c.n_layer = cfg["n_layer"].cast<int64_t>();
                 c.n_head = cfg["n_head"].cast<int64_t>();
                 c.n_embd = cfg["n_embd"].cast<int64_t>();
                 c.n_ctx = cfg["n_ctx"].cast<int64_t>();
                 c.vocab_size = cfg["vocab_size"].cast<int64_t>();
                 c.layer_norm_epsilon = cfg["layer_norm_epsilon"].cast<float>();
                 const auto act = cfg["activation"].cast<std::string>();
                 if (act == "gelu_tanh") c.activation = Activation::GeluTanh;
                 else if (act == "gelu_erf") c.activation = Activation::GeluErf;
                 else throw FormatError("unknown activation '" + act + "'");
                 c.bias = cfg["bias"].cast<bool>();
                 c.dtype = parse_dtype(cfg["dtype"].cast<std::string>());
                 c.group = cfg.contains("quant_group_size") ? cfg["quant_group_size"].cast<int64_t>() : 0;
                 if (cfg.contains("scale_attn_weights")) c.scale_attn_weights = cfg["scale_attn_weights"].cast<bool>();
                 if (cfg.contains("scale_attn_by_inverse_layer_idx"))
                     c.scale_attn_by_inverse_layer_idx = cfg["scale_attn_by_inverse_layer_idx"].cast<bool>();
                 if (cfg.contains("tie_word_embeddings"))
                     c.tie_word_embeddings = cfg["tie_word_embeddings"].cast<bool>();
                 std::vector<TensorInfo> infos;
                 for (const auto& t : tensors) {
                     TensorInfo info;
                     info.name = t[0].cast<std::string>();
                     info.dtype = t[1].cast<std::string>();
                     info.shape = t[2].cast<std::vector<int64_t>>();
                     info.begin = t[3].cast<int64_t>();
                     info.end = t[4].cast<int64_t>();
                     infos.push_back(std::move(info));
                 }
                 py::gil_scoped_release release;
                 return std::make_shared<Model>(path, c, infos, n_threads, isa, kv_type);
             }),
             py::arg("path"), py::arg("config"), py::arg("tensors"), py::arg("n_threads"), py::arg("isa") = "",
             py::arg("kv_cache") = "f32",
             "Maps model.safetensors at `path`. `tensors`: (name, dtype, shape, begin, end) as validated by "
             "pygpt._format, offsets from the start of the file.")
        .def_property_readonly("isa", [](const Model& m) { return std::string(m.kernels().name); })
        .def_property_readonly("n_threads", &Model::n_threads)
        .def_property_readonly("kv_cache", [](const Model& m) { return std::string(kv_type_name(m.kv_type())); })
        .def_property_readonly("file_bytes", &Model::file_bytes)
        .def_property_readonly("copied_bytes", &Model::copied_bytes,
                               "Bytes of weights copied out of the mapping to realign them (0 for our files).")
        .def("set_lora", [](Model& m, const std::string& name, const FloatArray& a, const FloatArray& b) {
            if (a.ndim() != 2 || b.ndim() != 2) throw std::invalid_argument("set_lora: A and B must be 2-D arrays");
            m.set_lora(name, a.data(), a.shape(0), a.shape(1), b.data(), b.shape(0), b.shape(1));
        }, py::arg("name"), py::arg("a"), py::arg("b"),
           "Adds (x A^T) B^T to the linear layer `name` (e.g. 'h.0.attn.c_attn'): A [rank, n_in], B [n_out, rank], "
           "float32, copied. Once per layer, before the first forward pass (pygpt.lora builds them).")
        .def_property_readonly("lora_bytes", &Model::lora_bytes, "Bytes of the layers' low-rank terms (A and B).")
        .def("new_cache", [](const Model& m, int64_t positions) { return std::shared_ptr<KVCache>(m.new_cache(positions)); },
             py::arg("positions") = 0, "A cache for up to `positions` positions (0: n_ctx).")
        .def("logits", [](Model& m, const IdArray& ids) {
            auto cache = m.new_cache();
            return run(m, *cache, to_ids(ids), true);
        }, py::arg("ids"), "Logits [n, V] for every position of a fresh sequence.")
        .def("forward", [](Model& m, KVCache& cache, const IdArray& ids, bool all_logits) {
            return run(m, cache, to_ids(ids), all_logits);
        }, py::arg("cache"), py::arg("ids"), py::arg("all_logits") = false,
           "Appends ids to the cache's sequence; logits of every new token or of the last one.")
        .def("hidden_states", &hidden_states, py::arg("seqs"), py::arg("all_rows") = true,
             py::arg("caches") = py::none(),
             "Final hidden states (ln_f output) of token sequences run together, each appended to its cache "
             "of `caches` or from a fresh one: [sum of lengths, n_embd] with all_rows, else [len(seqs), "
             "n_embd] (each one's last token).");
}

}  // namespace pygpt
