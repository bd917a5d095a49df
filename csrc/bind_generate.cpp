// Python bindings of the sampler and the generation loop. Arguments are converted and checked
// while holding the GIL; the loop itself runs without it.
#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include <atomic>
#include <cmath>
#include <memory>
#include <optional>

#include "bindings.h"
#include "generate.h"
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

// A Generation or BeamSearch that keeps its model and tokenizer alive, and refuses concurrent use.
struct PyGeneration {
    std::shared_ptr<Model> model;
    std::shared_ptr<Tokenizer> tokenizer;
    std::unique_ptr<Decoding> gen;
    std::atomic<bool> busy{false};
};

// The Generation behind g, for what only sampling batches do (beam search takes one request).
Generation& sampling(PyGeneration& g) {
    auto* gen = dynamic_cast<Generation*>(g.gen.get());
    if (!gen) throw std::invalid_argument("beam search (num_beams > 1) takes no further requests");
    return *gen;
}

struct BusyGuard {
    std::atomic<bool>& flag;
    explicit BusyGuard(std::atomic<bool>& f) : flag(f) {
        if (flag.exchange(true)) throw std::runtime_error("this generation is already running in another thread");
    }
    ~BusyGuard() { flag = false; }
};

py::list top_list(const std::vector<TopLogprobs>& tops) {
    py::list out;
    for (const auto& top : tops) {
        py::list row;
        for (const auto& [id, lp] : top) row.append(py::make_tuple(id, lp));
        out.append(row);
    }
    return out;
}

// A Python callable that C++ may copy and drop without the GIL (it takes the GIL to drop the
// last reference).
std::shared_ptr<py::object> hold(py::object fn) {
    return std::shared_ptr<py::object>(new py::object(std::move(fn)), [](py::object* p) {
        py::gil_scoped_acquire gil;
        delete p;
    });
}

// Copies for the caller's code: the tokens so far as int64, a logits row as float32.
py::array_t<int64_t> history_array(const std::vector<int32_t>& h) {
    py::array_t<int64_t> a(py::ssize_t(h.size()));
    std::copy(h.begin(), h.end(), a.mutable_data());
    return a;
}

// fn(prompt_index, ids, scores) changes scores (a copy, written back) in place: the Python
// side (pygpt/generation.py) checks what the user's processors return.
std::function<void(size_t, const std::vector<int32_t>&, float*)> logits_hook(py::object fn, int64_t V) {
    return [f = hold(std::move(fn)), V](size_t p, const std::vector<int32_t>& h, float* s) {
        py::gil_scoped_acquire gil;
        py::array_t<float> scores(py::ssize_t(V), s);
        (*f)(p, history_array(h), scores);
        std::copy(scores.data(), scores.data() + V, s);
    };
}

// fn(prompt_index, ids, logits) -> whether the sequence stops.
std::function<bool(size_t, const std::vector<int32_t>&, const float*)> stop_hook(py::object fn, int64_t V) {
    return [f = hold(std::move(fn)), V](size_t p, const std::vector<int32_t>& h, const float* row) {
        py::gil_scoped_acquire gil;
        return (*f)(p, history_array(h), py::array_t<float>(py::ssize_t(V), row)).cast<bool>();
    };
}

// A setting of a sampling Generation as a property: read at any time, set between steps (not
// while one runs in another thread).
template <class T>
void setting(py::class_<PyGeneration>& c, const char* name, T (Generation::*get)() const,
             void (Generation::*set)(T), const char* doc) {
    c.def_property(
        name, [get](PyGeneration& g) { return (sampling(g).*get)(); },
        [set](PyGeneration& g, T value) {
            BusyGuard busy(g.busy);
            (sampling(g).*set)(value);
        },
        doc);
}

py::dict result_dict(const SequenceResult& r) {
    py::dict d;
    d["prompt_index"] = r.prompt_index;
    d["tokens"] = r.tokens;
    d["text"] = py::str(r.text);
    d["finish_reason"] = r.finish_reason.empty() ? py::object(py::none()) : py::object(py::str(r.finish_reason));
    d["stop_reason"] = r.stop.token >= 0          ? py::object(py::int_(r.stop.token))
                       : !r.stop.string.empty() ? py::object(py::str(r.stop.string))
                                                : py::object(py::none());
    d["logprobs"] = r.logprobs;
    d["top_logprobs"] = top_list(r.top_logprobs);
    d["prompt_logprobs"] = r.prompt_logprobs;
    d["prompt_top_logprobs"] = top_list(r.prompt_top_logprobs);
    d["score"] = r.has_score ? py::object(py::float_(r.score)) : py::object(py::none());
    d["draft_tokens"] = r.draft_tokens;
    d["accepted_draft_tokens"] = r.accepted_draft_tokens;
    d["cached_tokens"] = r.cached_tokens;
    d["assistant_tokens"] = r.assistant_tokens;
    return d;
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
        .def_readwrite("top_n_sigma", &SamplingParams::top_n_sigma)
        .def_readwrite("epsilon_cutoff", &SamplingParams::epsilon_cutoff)
        .def_readwrite("eta_cutoff", &SamplingParams::eta_cutoff)
        .def_readwrite("xtc_probability", &SamplingParams::xtc_probability)
        .def_readwrite("xtc_threshold", &SamplingParams::xtc_threshold)
        .def_readwrite("dry_multiplier", &SamplingParams::dry_multiplier)
        .def_readwrite("dry_base", &SamplingParams::dry_base)
        .def_readwrite("dry_allowed_length", &SamplingParams::dry_allowed_length)
        .def_readwrite("dry_penalty_last_n", &SamplingParams::dry_penalty_last_n)
        .def_readwrite("dry_sequence_breakers", &SamplingParams::dry_sequence_breakers)
        .def_readwrite("mirostat", &SamplingParams::mirostat)
        .def_readwrite("mirostat_tau", &SamplingParams::mirostat_tau)
        .def_readwrite("mirostat_eta", &SamplingParams::mirostat_eta)
        .def_readwrite("repetition_penalty", &SamplingParams::repetition_penalty)
        .def_readwrite("presence_penalty", &SamplingParams::presence_penalty)
        .def_readwrite("frequency_penalty", &SamplingParams::frequency_penalty)
        .def_readwrite("no_repeat_ngram_size", &SamplingParams::no_repeat_ngram_size)
        .def_readwrite("decay_start", &SamplingParams::decay_start)
        .def_readwrite("decay_factor", &SamplingParams::decay_factor)
        .def_readwrite("dynatemp_range", &SamplingParams::dynatemp_range)
        .def_readwrite("dynatemp_exponent", &SamplingParams::dynatemp_exponent)
        .def_readwrite("logit_bias", &SamplingParams::logit_bias)
        .def_readwrite("sequence_bias", &SamplingParams::sequence_bias)
        .def_readwrite("min_new_tokens", &SamplingParams::min_new_tokens)
        .def_readwrite("end_tokens", &SamplingParams::end_tokens)
        .def_property(
            "grammar", [](const SamplingParams& p) { return std::const_pointer_cast<Grammar>(p.grammar); },
            [](SamplingParams& p, std::shared_ptr<Grammar> g) { p.grammar = std::move(g); })
        .def_property(
            "grammar_vocab", [](const SamplingParams& p) { return std::const_pointer_cast<VocabTrie>(p.grammar_vocab); },
            [](SamplingParams& p, std::shared_ptr<VocabTrie> v) { p.grammar_vocab = std::move(v); })
        .def("validate", &SamplingParams::validate, py::arg("vocab_size"));

    m.def(
        "process_logits",
        [](const FloatArray& logits, const std::vector<int32_t>& history, size_t n_prompt,
           const SamplingParams& params) {
            std::vector<float> s = to_logits(logits);
            Sampler sampler(params, int64_t(s.size()), 0, 0, select_kernels(""));
            sampler.process(s.data(), history, n_prompt);
            return py::array_t<float>(py::ssize_t(s.size()), s.data());
        },
        py::arg("logits"), py::arg("history"), py::arg("n_prompt"), py::arg("params"),
        "The processed scores (-inf = filtered) the sampler would draw from, for tests.");

    // A sequence of draws, row i's token appended to the history before row i + 1 (tests of
    // stateful sampling): (tokens, mirostat's mu before each).
    m.def(
        "sample_rows",
        [](const py::array_t<float, py::array::c_style | py::array::forcecast>& rows, std::vector<int32_t> history,
           size_t n_prompt, const SamplingParams& params, uint64_t seed) {
            if (rows.ndim() != 2 || rows.shape(1) == 0) throw std::invalid_argument("rows must be a 2-D array");
            const int64_t n = rows.shape(0), V = rows.shape(1);
            std::vector<int32_t> tokens;
            std::vector<double> mu;
            {
                py::gil_scoped_release release;
                Sampler sampler(params, V, seed, 0, select_kernels(""));
                std::vector<float> work;
                for (int64_t i = 0; i < n; i++) {
                    tokens.push_back(sampler.sample(rows.data() + i * V, work, history, n_prompt));
                    history.push_back(tokens.back());
                }
                mu = sampler.mirostat_mu();
            }
            return py::make_tuple(tokens, mu);
        },
        py::arg("rows"), py::arg("history"), py::arg("n_prompt"), py::arg("params"), py::arg("seed"));

    m.def(
        "sample_tokens",
        [](const FloatArray& logits, const std::vector<int32_t>& history, size_t n_prompt,
           const SamplingParams& params, uint64_t seed, uint64_t stream, int64_t n, const std::string& isa) {
            if (n < 0) throw std::invalid_argument("n must be >= 0");
            const Kernels& kernels = select_kernels(isa.c_str());
            const std::vector<float> s0 = to_logits(logits);
            py::array_t<int32_t> out(n);
            int32_t* dst = out.mutable_data();
            {
                py::gil_scoped_release release;
                Sampler sampler(params, int64_t(s0.size()), seed, stream, kernels);
                std::vector<float> work;
                for (int64_t i = 0; i < n; i++) dst[i] = sampler.sample(s0.data(), work, history, n_prompt);
            }
            return out;
        },
        py::arg("logits"), py::arg("history"), py::arg("n_prompt"), py::arg("params"), py::arg("seed"),
        py::arg("stream"), py::arg("n"), py::arg("isa") = "",
        "n successive choices of one sampler on the same logits (its random stream advancing), for tests.");

    py::enum_<EarlyStopping>(m, "EarlyStopping", "When beam search stops (transformers' early_stopping).")
        .value("heuristic", EarlyStopping::Heuristic)
        .value("when_full", EarlyStopping::WhenFull)
        .value("never", EarlyStopping::Never);

    m.def(
        "sample_draft_tokens",
        [](const FloatArray& logits, const std::vector<int32_t>& history, size_t n_prompt,
           const SamplingParams& params, uint64_t seed, int32_t draft, int64_t n, std::optional<FloatArray> q) {
            if (n < 0) throw std::invalid_argument("n must be >= 0");
            const std::vector<float> s0 = to_logits(logits);
            std::vector<float> probs;
            if (q) {
                if (q->ndim() != 1 || size_t(q->size()) != s0.size()) throw std::invalid_argument("q must be like logits");
                probs.assign(q->data(), q->data() + q->size());
            }
            py::array_t<int32_t> tokens(n);
            py::array_t<bool> taken(n);
            int32_t* t = tokens.mutable_data();
            bool* k = taken.mutable_data();
            {
                py::gil_scoped_release release;
                Sampler sampler(params, int64_t(s0.size()), seed, 0, select_kernels(""));
                std::vector<float> work;
                for (int64_t i = 0; i < n; i++)
                    t[i] = q ? sampler.sample_against(s0.data(), work, history, n_prompt, draft, probs.data(), &k[i])
                             : sampler.sample_draft(s0.data(), work, history, n_prompt, draft, &k[i]);
            }
            return py::make_tuple(tokens, taken);
        },
        py::arg("logits"), py::arg("history"), py::arg("n_prompt"), py::arg("params"), py::arg("seed"),
        py::arg("draft"), py::arg("n"), py::arg("q") = py::none(),
        "n successive (token, whether it is the draft) of one sampler against a one-token draft, or (q) a draft "
        "drawn from the distribution q, for tests.");

    py::class_<GenerateOptions>(m, "GenerateOptions", "Options of one generate call (see csrc/generate.h).")
        .def(py::init<>())
        .def_readwrite("sampling", &GenerateOptions::sampling)
        .def_readwrite("max_new_tokens", &GenerateOptions::max_new_tokens)
        .def_readwrite("min_new_tokens", &GenerateOptions::min_new_tokens)
        .def_readwrite("stop", &GenerateOptions::stop)
        .def_readwrite("include_stop_str_in_output", &GenerateOptions::include_stop_str_in_output)
        .def_readwrite("stop_token_ids", &GenerateOptions::stop_token_ids)
        .def_readwrite("ignore_eos", &GenerateOptions::ignore_eos)
        .def_readwrite("guidance_scale", &GenerateOptions::guidance_scale)
        .def_readwrite("negative_prompts", &GenerateOptions::negative_prompts)
        .def_property("heal", [](const GenerateOptions& o) {
            py::list out;
            for (const auto& h : o.heal) out.append(py::bytes(h));
            return out;
        }, [](GenerateOptions& o, std::vector<std::string> heal) { o.heal = std::move(heal); },
           "Token healing: for each prompt, the bytes (its dropped last token's) its first generated token "
           "starts with; empty: none.")
        .def_readwrite("max_time", &GenerateOptions::max_time)
        .def_readwrite("seed", &GenerateOptions::seed)
        .def_readwrite("logprobs", &GenerateOptions::logprobs)
        .def_readwrite("top_logprobs", &GenerateOptions::top_logprobs)
        .def_readwrite("prompt_logprobs", &GenerateOptions::prompt_logprobs)
        .def_readwrite("num_return_sequences", &GenerateOptions::num_return_sequences)
        .def_readwrite("prompt_lookup_num_tokens", &GenerateOptions::prompt_lookup_num_tokens)
        .def_readwrite("max_matching_ngram_size", &GenerateOptions::max_matching_ngram_size)
        .def_readwrite("assistant_model", &GenerateOptions::assistant_model)
        .def_readwrite("num_assistant_tokens", &GenerateOptions::num_assistant_tokens)
        .def_readwrite("num_beams", &GenerateOptions::num_beams)
        .def_readwrite("length_penalty", &GenerateOptions::length_penalty)
        .def_readwrite("early_stopping", &GenerateOptions::early_stopping)
        .def(
            "set_hooks",
            [](GenerateOptions& o, py::object logits, py::object stop, int64_t vocab_size) {
                if (vocab_size < 1) throw std::invalid_argument("vocab_size must be >= 1");
                o.logits_hook = logits.is_none() ? nullptr : logits_hook(logits, vocab_size);
                o.stop_hook = stop.is_none() ? nullptr : stop_hook(stop, vocab_size);
            },
            py::arg("logits"), py::arg("stop"), py::arg("vocab_size"),
            "The caller's code, or None: logits(prompt_index, ids, scores) changes scores (float32, "
            "vocab_size) in place; stop(prompt_index, ids, logits) -> bool after each token. ids: int64, "
            "prompt first. They run on the thread that steps the generation, taking the GIL.");

    py::class_<PrefixCache, std::shared_ptr<PrefixCache>>(m, "PrefixCache", R"pbdoc(
        The KV caches of the last `capacity` finished sequences of one model's generations, from
        which a later prompt that starts with the same tokens takes its prefix (csrc/prefix_cache.h).
        Thread-safe.)pbdoc")
        .def(py::init<int64_t>(), py::arg("capacity"))
        .def_property("capacity", &PrefixCache::capacity, &PrefixCache::set_capacity,
                      "How many finished sequences' caches it keeps (0: none); fewer drops the oldest.")
        .def("__len__", &PrefixCache::size)
        .def("clear", &PrefixCache::clear, py::call_guard<py::gil_scoped_release>(), "Frees every kept cache.");

    py::class_<PyGeneration> generation(m, "Generation", R"pbdoc(
        One batched generation: prompts (lists of token ids) in, sequences out, prompt-major
        (prompt p, sample j is sequence p * num_return_sequences + j); beam search when
        options.num_beams > 1 (its results are filled once it is done). step() and run() release
        the GIL; run() checks for Ctrl-C between tokens and raises KeyboardInterrupt.)pbdoc");
    generation
        .def(py::init([](std::shared_ptr<Model> model, std::shared_ptr<Tokenizer> tokenizer,
                         std::vector<std::vector<int32_t>> prompts, const GenerateOptions& options,
                         std::shared_ptr<PrefixCache> prefix_cache) {
                 if (!model) throw std::invalid_argument("model must not be None");
                 auto g = std::make_unique<PyGeneration>();
                 g->model = std::move(model);
                 g->tokenizer = std::move(tokenizer);
                 g->gen = make_decoding(*g->model, g->tokenizer.get(), std::move(prompts), options,
                                        std::move(prefix_cache));
                 return g;
             }),
             py::arg("model"), py::arg("tokenizer"), py::arg("prompts"), py::arg("options"),
             py::arg("prefix_cache") = nullptr,
             "One request; sampling takes prompts' prefixes from prefix_cache (a PrefixCache of this model) "
             "and keeps its finished sequences' caches there.")
        .def(py::init([](std::shared_ptr<Model> model, std::shared_ptr<Tokenizer> tokenizer) {
                 if (!model) throw std::invalid_argument("model must not be None");
                 auto g = std::make_unique<PyGeneration>();
                 g->model = std::move(model);
                 g->tokenizer = std::move(tokenizer);
                 g->gen = std::make_unique<Generation>(*g->model, g->tokenizer.get());
                 return g;
             }),
             py::arg("model"), py::arg("tokenizer"),
             "An empty batch that takes requests with add() while it runs (continuous batching).")
        .def(
            "add",
            [](PyGeneration& g, std::vector<std::vector<int32_t>> prompts, const GenerateOptions& options) {
                BusyGuard busy(g.busy);
                return sampling(g).add(std::move(prompts), options);
            },
            py::arg("prompts"), py::arg("options"),
            "Adds a request (not beam search); its sequences start at the next step. Returns the id of the "
            "first: they are first .. first + len(prompts) * num_return_sequences - 1, prompt-major.")
        .def(
            "remove",
            [](PyGeneration& g, size_t i) {
                BusyGuard busy(g.busy);
                sampling(g).remove(i);
            },
            py::arg("i"), "Drops sequence i, stopping it if it runs (its result is gone).")
        .def(
            "started", [](PyGeneration& g, size_t i) { return sampling(g).started(i); }, py::arg("i"),
            "Whether sequence i's prompt has run (it has its first token, or stopped at once).")
        .def(
            "finished", [](PyGeneration& g, size_t i) { return sampling(g).finished(i); }, py::arg("i"),
            "Whether sequence i has stopped.")
        .def(
            "failed", [](PyGeneration& g, size_t i) { return sampling(g).failed(i); }, py::arg("i"),
            "Whether sequence i's token choice raised (with contain_errors; it has stopped).")
        .def(
            "raise_error", [](PyGeneration& g, size_t i) { sampling(g).rethrow_error(i); }, py::arg("i"),
            "Raises what sequence i's token choice raised, with contain_errors; nothing if it did not fail.")
        .def_property_readonly("n_live", [](const PyGeneration& g) { return g.gen->n_live(); },
                               "Sequences still running (or waiting for their first step).")
        .def(
            "step",
            [](PyGeneration& g) {
                BusyGuard busy(g.busy);
                py::gil_scoped_release unlocked;
                return g.gen->step();
            },
            "Prefill on the first call, then one token for every live sequence; False once all are done.")
        .def(
            "run",
            [](PyGeneration& g) {
                BusyGuard busy(g.busy);
                py::gil_scoped_release unlocked;
                g.gen->run([] {
                    // a Ctrl-C is seen here within one token: raise what its handler raised
                    py::gil_scoped_acquire locked;
                    if (PyErr_CheckSignals() != 0) throw py::error_already_set();
                });
            },
            "Steps to the end. A pending signal (Ctrl-C) stops it between two tokens and is raised.")
        .def(
            "take_text",
            [](PyGeneration& g, size_t i) {
                BusyGuard busy(g.busy);
                return py::str(g.gen->take_text(i));
            },
            py::arg("i"),
             "Text sequence i produced since the last call (never a partial character or stop string).")
        .def(
            "take_tokens",
            [](PyGeneration& g, size_t i) {
                BusyGuard busy(g.busy);
                const SequenceResult r = sampling(g).take_tokens(i);
                py::dict d;
                d["tokens"] = r.tokens;
                d["logprobs"] = r.logprobs;
                d["top_logprobs"] = top_list(r.top_logprobs);
                return d;
            },
            py::arg("i"),
            "The tokens sequence i generated since the last call: {'tokens', 'logprobs', 'top_logprobs'} "
            "(the last two empty unless the request asked for them).")
        .def_property_readonly("done", [](const PyGeneration& g) { return g.gen->done(); })
        .def("__len__", [](const PyGeneration& g) { return g.gen->size(); })
        .def("result", [](const PyGeneration& g, size_t i) { return result_dict(g.gen->result(i)); }, py::arg("i"))
        .def_property_readonly("timings", [](const PyGeneration& g) {
            const Timings& t = g.gen->timings();
            py::dict d;
            d["prefill_tokens"] = t.prefill_tokens;
            d["decode_tokens"] = t.decode_tokens;
            d["prefill_seconds"] = t.prefill_seconds;
            d["decode_seconds"] = t.decode_seconds;
            d["first_token_seconds"] = t.first_token_seconds;
            d["draft_tokens"] = t.draft_tokens;
            d["accepted_draft_tokens"] = t.accepted_draft_tokens;
            d["cached_tokens"] = t.cached_tokens;
            d["assistant_tokens"] = t.assistant_tokens;
            return d;
        });
    setting(generation, "prefill_chunk", &Generation::prefill_chunk, &Generation::set_prefill_chunk,
            "At most this many prompt tokens a step (0: whole prompts); outputs do not change.");
    setting(generation, "prefix_cache", &Generation::prefix_cache, &Generation::set_prefix_cache,
            "Finished sequences' caches kept for prompts that share their prefix (0: off; see generate.h).");
    setting(generation, "contain_errors", &Generation::contain_errors, &Generation::set_contain_errors,
            "Whether what a sequence's token choice raises fails only that sequence (finish_reason 'error'; "
            "raise_error(i) raises it) instead of the step (the default).");
}

}  // namespace pygpt
