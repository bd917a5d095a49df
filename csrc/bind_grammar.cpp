// Python bindings of grammars (grammar.h): pygpt/grammar.py compiles GBNF to GrammarRules.
#include <pybind11/stl.h>

#include <memory>

#include "bindings.h"
#include "grammar.h"
#include "tokenizer.h"

namespace py = pybind11;

namespace pygpt {

void bind_grammar(py::module_& m) {
    py::class_<Grammar, std::shared_ptr<Grammar>>(m, "Grammar", R"pbdoc(
A grammar compiled to bytes (see csrc/grammar.h); build it with pygpt.Grammar.

Grammar(names, rules, byte_sets): rules[r] is a list of alternatives, each a list of elements:
e >= 0 is one byte of byte_sets[e] (32 bytes, bit b = byte b), e < 0 is rule -e-1. Rule 0
starts. Raises ValueError on left recursion, elements out of range, or a start rule that can
never finish.
)pbdoc")
        .def(py::init([](const std::vector<std::string>& names, const std::vector<std::vector<std::vector<int32_t>>>& rules,
                         const std::vector<py::bytes>& byte_sets) {
                 GrammarRules g;
                 g.names = names;
                 g.rules = rules;
                 for (const py::bytes& b : byte_sets) {
                     const std::string s = b;
                     if (s.size() != 32) throw std::invalid_argument("a byte set is 32 bytes (256 bits)");
                     ByteSet set{};
                     for (size_t i = 0; i < 32; i++) set[i / 8] |= uint64_t(uint8_t(s[i])) << (8 * (i % 8));
                     g.byte_sets.push_back(set);
                 }
                 return std::make_shared<Grammar>(g);
             }),
             py::arg("names"), py::arg("rules"), py::arg("byte_sets"))
        .def(
            "matches",
            [](std::shared_ptr<Grammar> g, const py::bytes& text) {
                const std::string s = text;
                py::gil_scoped_release release;
                return GrammarMatcher(g, nullptr).matches(s);
            },
            py::arg("text"), "Whether the bytes are a whole match.")
        .def(
            "viable",
            [](std::shared_ptr<Grammar> g, const py::bytes& text) {
                const std::string s = text;
                py::gil_scoped_release release;
                return GrammarMatcher(g, nullptr).viable(s);
            },
            py::arg("text"), "Whether the bytes are the start of a match.")
        .def("__len__", &Grammar::n_rules);

    py::class_<VocabTrie, std::shared_ptr<VocabTrie>>(m, "VocabTrie",
                                                      "The bytes of a tokenizer's ordinary tokens as a trie (grammar.h).")
        .def(py::init([](const Tokenizer& tok) { return std::make_shared<VocabTrie>(tok); }), py::arg("tokenizer"))
        .def_property_readonly("n_nodes", &VocabTrie::n_nodes);

    // What a sampler with a grammar lets through after each prefix of the tokens generated
    // (tests): one matcher follows them token by token, as in a generation; max_states small
    // makes it drop and rebuild what it keeps. every=False: only after all of them (one walk
    // from a new matcher: tools/bench_grammar.py times it). share=False: neither use nor keep
    // the grammar's shared masks (every mask is walked).
    m.def(
        "grammar_masks",
        [](std::shared_ptr<Grammar> g, std::shared_ptr<VocabTrie> trie, const std::vector<int32_t>& generated,
           int64_t V, const std::vector<int32_t>& end_tokens, size_t max_states, bool every, bool share) {
            if (V <= 0) throw std::invalid_argument("V must be > 0");
            std::vector<std::vector<bool>> masks;
            {
                py::gil_scoped_release release;
                GrammarMatcher matcher(g, trie, max_states == 0 ? GrammarMatcher::kMaxStates : max_states, share);
                std::vector<float> s(static_cast<size_t>(V));
                for (size_t k = every ? 0 : generated.size(); k <= generated.size(); k++) {
                    matcher.sync(std::vector<int32_t>(generated.begin(), generated.begin() + int64_t(k)), 0);
                    std::fill(s.begin(), s.end(), 0.0f);
                    matcher.mask(s.data(), V, end_tokens);
                    masks.emplace_back(size_t(V));
                    for (size_t i = 0; i < s.size(); i++) masks.back()[i] = s[i] == 0.0f;
                }
            }
            return masks;
        },
        py::arg("grammar"), py::arg("vocab"), py::arg("generated"), py::arg("vocab_size"), py::arg("end_tokens"),
        py::arg("max_states") = 0, py::arg("every") = true, py::arg("share") = true);
}

}  // namespace pygpt
