// Python bindings of the tokenizer: _core.Tokenizer and _core.StreamDecoder.
// The public class is pygpt.Tokenizer (pygpt/tokenizer.py), which loads the vocabulary files and
// hands this one plain data. Arguments are converted while holding the GIL; encode/decode then
// run without it (the Tokenizer is immutable, so concurrent calls are safe).
#include <Python.h>

#include <memory>
#include <string>
#include <string_view>
#include <tuple>
#include <vector>

#include <pybind11/stl.h>

#include "bindings.h"
#include "tokenizer.h"
#include "unicode_tables.h"

namespace py = pybind11;

namespace pygpt {
namespace {

constexpr size_t kReleaseGilFrom = 512;  // bytes of text; shorter calls are cheaper than the release

// The UTF-8 bytes of a str, without a copy (CPython caches them in the object; the caller keeps
// the object alive). Non-str: TypeError. Lone surrogates: UnicodeEncodeError, a ValueError.
std::string_view utf8_of(py::handle text) {
    if (!PyUnicode_Check(text.ptr()))
        throw py::type_error("text must be str, not " + std::string(Py_TYPE(text.ptr())->tp_name));
    Py_ssize_t size = 0;
    const char* data = PyUnicode_AsUTF8AndSize(text.ptr(), &size);
    if (data == nullptr) throw py::error_already_set();
    return {data, static_cast<size_t>(size)};
}

int32_t id_of(PyObject* item, int32_t n_vocab) {
    if (!PyLong_Check(item) && (PyFloat_Check(item) || !PyIndex_Check(item)))
        throw py::type_error("token ids must be int, not " + std::string(Py_TYPE(item)->tp_name));
    py::object as_int = py::reinterpret_steal<py::object>(PyNumber_Index(item));
    if (!as_int) throw py::error_already_set();
    int overflow = 0;
    const long long v = PyLong_AsLongLongAndOverflow(as_int.ptr(), &overflow);
    if (v == -1 && PyErr_Occurred()) throw py::error_already_set();
    if (overflow != 0 || v < 0 || v >= n_vocab)
        throw py::value_error("token id " + py::repr(as_int).cast<std::string>() + " is out of range [0, " +
                              std::to_string(n_vocab) + ")");
    return static_cast<int32_t>(v);
}

// Any iterable of ints (list, tuple, numpy array, ...) -> validated ids.
std::vector<int32_t> ids_of(py::handle obj, int32_t n_vocab) {
    if (PyUnicode_Check(obj.ptr()) || PyBytes_Check(obj.ptr()))
        throw py::type_error("ids must be a sequence of int, not " + std::string(Py_TYPE(obj.ptr())->tp_name));
    py::object seq = py::reinterpret_steal<py::object>(PySequence_Fast(obj.ptr(), "ids must be a sequence of int"));
    if (!seq) throw py::error_already_set();
    const Py_ssize_t n = PySequence_Fast_GET_SIZE(seq.ptr());
    PyObject** items = PySequence_Fast_ITEMS(seq.ptr());
    std::vector<int32_t> ids(static_cast<size_t>(n));
    for (Py_ssize_t i = 0; i < n; ++i) ids[i] = id_of(items[i], n_vocab);
    return ids;
}

// Python int objects for ids 0..n-1, made once: a list of ids then costs a reference count per
// id instead of an allocation (half the time of encode() on English text). Ints are immutable and
// this is only touched with the GIL held; it grows to the largest vocabulary loaded.
std::vector<PyObject*>& int_cache() {
    static std::vector<PyObject*> cache;
    return cache;
}

void reserve_ints(int32_t n) {
    auto& cache = int_cache();
    while (cache.size() < static_cast<size_t>(n)) {
        PyObject* v = PyLong_FromLong(static_cast<long>(cache.size()));
        if (v == nullptr) throw py::error_already_set();
        cache.push_back(v);
    }
}

py::list to_list(const std::vector<int32_t>& ids) {
    const auto& cache = int_cache();
    py::list out(ids.size());
    for (size_t i = 0; i < ids.size(); ++i) {
        PyObject* v;
        if (static_cast<size_t>(ids[i]) < cache.size()) {
            v = cache[ids[i]];
            Py_INCREF(v);
        } else {
            v = PyLong_FromLong(ids[i]);
            if (v == nullptr) throw py::error_already_set();
        }
        PyList_SET_ITEM(out.ptr(), static_cast<Py_ssize_t>(i), v);
    }
    return out;
}

// allowed: True/False (all specials or none), or a list of special token ids
struct Allowed {
    explicit Allowed(const py::object& allowed)
        : as_flag(allowed.is_none() || PyBool_Check(allowed.ptr())),
          flag(!allowed.is_none() && allowed.ptr() == Py_True),
          subset(as_flag ? std::vector<int32_t>{} : allowed.cast<std::vector<int32_t>>()) {}
    bool as_flag, flag;
    std::vector<int32_t> subset;
};

py::list encode(const Tokenizer& tok, py::handle text, py::object allowed_special) {
    const std::string_view utf8 = utf8_of(text);
    const Allowed allowed(allowed_special);
    const bool as_flag = allowed.as_flag, flag = allowed.flag;
    const std::vector<int32_t>& subset = allowed.subset;
    std::vector<int32_t> ids;
    if (utf8.size() >= kReleaseGilFrom) {
        py::gil_scoped_release unlocked;  // safe: utf8 points into `text`, which the caller holds
        ids = as_flag ? tok.encode(utf8, flag) : tok.encode(utf8, subset);
    } else {
        ids = as_flag ? tok.encode(utf8, flag) : tok.encode(utf8, subset);
    }
    return to_list(ids);
}

py::list encode_batch(const Tokenizer& tok, py::handle texts, py::object allowed_special, int n_threads) {
    const Allowed allowed(allowed_special);
    if (PyUnicode_Check(texts.ptr())) throw py::type_error("texts must be a sequence of str, not str");
    py::object seq =
        py::reinterpret_steal<py::object>(PySequence_Fast(texts.ptr(), "texts must be a sequence of str"));
    if (!seq) throw py::error_already_set();
    const Py_ssize_t n = PySequence_Fast_GET_SIZE(seq.ptr());
    PyObject** items = PySequence_Fast_ITEMS(seq.ptr());
    std::vector<std::string_view> views(static_cast<size_t>(n));
    std::vector<py::object> keep(static_cast<size_t>(n));  // own each str: another thread may edit the list
    for (Py_ssize_t i = 0; i < n; ++i) {
        keep[i] = py::reinterpret_borrow<py::object>(items[i]);
        views[i] = utf8_of(items[i]);
    }
    std::vector<std::vector<int32_t>> results;
    {
        py::gil_scoped_release unlocked;
        results = allowed.as_flag ? tok.encode_batch(views, allowed.flag, n_threads)
                                  : tok.encode_batch(views, allowed.subset, n_threads);
    }
    py::list out(results.size());
    for (size_t i = 0; i < results.size(); ++i) PyList_SET_ITEM(out.ptr(), i, to_list(results[i]).release().ptr());
    return out;
}

// A StreamDecoder that keeps its Tokenizer alive.
struct PyStreamDecoder {
    explicit PyStreamDecoder(std::shared_ptr<const Tokenizer> t) : tok(std::move(t)), dec(*tok) {}
    std::shared_ptr<const Tokenizer> tok;
    StreamDecoder dec;
};

}  // namespace

void bind_tokenizer(py::module_& m) {
    m.attr("unicode_version") = unicode::kUnicodeVersion;

    py::class_<Tokenizer, std::shared_ptr<Tokenizer>>(m, "Tokenizer", R"pbdoc(
        GPT-2 byte-level BPE from plain data; use pygpt.Tokenizer.from_dir to load files.
        token_bytes: list of bytes, one per id. merges: list of (left id, right id), by rank.
        specials: list of (text, id).)pbdoc")
        .def(py::init([](std::vector<std::string> token_bytes, const std::vector<std::pair<int32_t, int32_t>>& merges,
                         std::vector<std::pair<std::string, int32_t>> specials,
                         const std::vector<std::tuple<bool, bool, bool>>& matching) {
                 std::vector<TokenMatch> how;
                 for (const auto& [lstrip, rstrip, single_word] : matching) how.push_back({lstrip, rstrip, single_word});
                 auto tok = std::make_shared<Tokenizer>(std::move(token_bytes), merges, std::move(specials),
                                                        std::move(how));
                 reserve_ints(tok->vocab_size());
                 return tok;
             }),
             py::arg("token_bytes"), py::arg("merges"), py::arg("specials"),
             py::arg("matching") = std::vector<std::tuple<bool, bool, bool>>(),
             "matching: (lstrip, rstrip, single_word) of each of specials, or empty (all False).")
        .def("encode", &encode, py::arg("text"), py::arg("allowed_special") = py::none(),
             "ids of text; allowed_special: True (all), False/None (none) or a list of special ids.")
        .def("encode_batch", &encode_batch, py::arg("texts"), py::arg("allowed_special") = py::none(),
             py::arg("n_threads") = 0, "encode of each text, on n_threads threads (0: all cores), GIL released.")
        .def(
            "decode_bytes",
            [](const Tokenizer& tok, py::handle ids) {
                const std::vector<int32_t> v = ids_of(ids, tok.vocab_size());
                std::string raw;
                {
                    py::gil_scoped_release unlocked;
                    raw = tok.decode(v);
                }
                return py::bytes(raw);
            },
            py::arg("ids"), "Concatenated token bytes.")
        .def(
            "decode",
            [](const Tokenizer& tok, py::handle ids) {
                const std::string raw = tok.decode(ids_of(ids, tok.vocab_size()));
                // Python's own decoder, so invalid bytes become U+FFFD exactly as errors="replace"
                PyObject* s = PyUnicode_DecodeUTF8(raw.data(), static_cast<Py_ssize_t>(raw.size()), "replace");
                if (s == nullptr) throw py::error_already_set();
                return py::reinterpret_steal<py::str>(s);
            },
            py::arg("ids"), "Text of ids; invalid UTF-8 becomes U+FFFD.")
        .def(
            "token_bytes", [](const Tokenizer& tok, py::handle id) { return py::bytes(tok.token_bytes(id_of(id.ptr(), tok.vocab_size()))); },
            py::arg("id"))
        .def_property_readonly("vocab_size", &Tokenizer::vocab_size)
        .def_property_readonly("eot_id", &Tokenizer::eot_id)
        .def_property_readonly("n_merges", &Tokenizer::n_merges)
        .def_property_readonly("specials", [](const Tokenizer& tok) {
            py::dict d;
            for (const auto& [text, id] : tok.specials()) d[py::str(text)] = id;
            return d;
        });

    py::class_<PyStreamDecoder>(m, "StreamDecoder", R"pbdoc(
        Incremental detokenizer: push(id) returns only complete, valid UTF-8 text and holds back
        the bytes of an unfinished character; flush() returns what is held (as U+FFFD).)pbdoc")
        .def(py::init([](std::shared_ptr<Tokenizer> tok) { return std::make_unique<PyStreamDecoder>(std::move(tok)); }),
             py::arg("tokenizer"))
        .def(
            "push", [](PyStreamDecoder& d, py::handle id) { return d.dec.push(id_of(id.ptr(), d.tok->vocab_size())); },
            py::arg("id"))
        .def("flush", [](PyStreamDecoder& d) { return d.dec.flush(); })
        .def("reset", [](PyStreamDecoder& d) { d.dec.reset(); })
        .def_property_readonly("pending_bytes", [](const PyStreamDecoder& d) { return d.dec.pending_bytes(); });

    m.def(
        "utf8_replace",
        [](py::bytes data, bool final) {
            std::string out;
            const size_t used = utf8_replace(std::string_view(data), out, final);
            return py::make_tuple(py::str(out), used);
        },
        py::arg("data"), py::arg("final") = true,
        "(text, bytes consumed): the C++ errors='replace' decoder used by StreamDecoder (for tests).");
    m.def(
        "unicode_char_classes",
        [] {
            std::string out(0x110000, '\0');
            for (uint32_t cp = 0; cp < 0x110000; ++cp) out[cp] = static_cast<char>(unicode::char_class(cp));
            return py::bytes(out);
        },
        "Class of every code point (0 other, 1 letter, 2 number, 3 space), from the generated tables.");
}

}  // namespace pygpt
