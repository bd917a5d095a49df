// libFuzzer target for the C++ tokenizer (csrc/tokenizer.cpp), built with ASan + UBSan by
// fuzz/build_cpp.sh. The first input byte picks what to do with the rest:
//   0: encode arbitrary bytes with the real GPT-2 vocabulary; valid UTF-8 must round-trip
//      (decode(encode(x)) == x), invalid UTF-8 must throw std::invalid_argument
//   1: decode arbitrary ids (int32 little-endian), streamed and whole; they must agree
//   2: utf8_replace on arbitrary bytes, final and not
//   3: build a Tokenizer from arbitrary data (tokens, merges, specials), then encode/decode
// Any other exception, a crash, a sanitizer report or a broken invariant (__builtin_trap) is a bug.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include <fuzzer/FuzzedDataProvider.h>

#include "tokenizer.h"

using pygpt::Tokenizer;

namespace {

std::unique_ptr<Tokenizer> g_gpt2;

#define CHECK(cond)                                                            \
    do {                                                                       \
        if (!(cond)) {                                                         \
            std::fprintf(stderr, "invariant failed: %s (line %d)\n", #cond, __LINE__); \
            __builtin_trap();                                                  \
        }                                                                      \
    } while (0)

uint32_t u32(std::ifstream& f) {
    uint32_t v = 0;
    f.read(reinterpret_cast<char*>(&v), 4);
    if (!f) throw std::runtime_error("truncated vocabulary dump");
    return v;
}

std::string str(std::ifstream& f) {
    std::string s(u32(f), '\0');
    f.read(s.data(), s.size());
    return s;
}

// fuzz/dump_vocab.py's format.
std::unique_ptr<Tokenizer> load_dump(const char* path) {
    std::ifstream f(path, std::ios::binary);
    if (!f) {
        std::fprintf(stderr, "cannot open %s: run fuzz/build_cpp.sh (it writes the dump)\n", path);
        std::exit(1);
    }
    std::vector<std::string> tokens(u32(f));
    for (auto& t : tokens) t = str(f);
    std::vector<std::pair<int32_t, int32_t>> merges(u32(f));
    for (auto& m : merges) {
        m.first = static_cast<int32_t>(u32(f));
        m.second = static_cast<int32_t>(u32(f));
    }
    std::vector<std::pair<std::string, int32_t>> specials(u32(f));
    for (auto& s : specials) {
        s.first = str(f);
        s.second = static_cast<int32_t>(u32(f));
    }
    return std::make_unique<Tokenizer>(std::move(tokens), merges, std::move(specials));
}

bool valid_utf8(const std::string& s) {
    std::string out;
    return pygpt::utf8_replace(s, out, true) == s.size() && out == s;
}

void roundtrip(const Tokenizer& tok, const std::string& text, bool allow_special) {
    std::vector<int32_t> ids;
    try {
        ids = tok.encode(text, allow_special);
    } catch (const std::invalid_argument& e) {
        if (valid_utf8(text)) std::fprintf(stderr, "encode threw: %s\n", e.what());
        CHECK(!valid_utf8(text));  // only invalid UTF-8 may be refused
        return;
    }
    CHECK(valid_utf8(text));
    for (int32_t id : ids) CHECK(id >= 0 && id < tok.vocab_size());
    CHECK(tok.decode(ids) == text);
}

void decode_ids(const Tokenizer& tok, FuzzedDataProvider& fdp) {
    std::vector<int32_t> ids;
    bool in_range = true;
    while (fdp.remaining_bytes() >= 4) {
        int32_t id = fdp.ConsumeIntegral<int32_t>();
        if (fdp.ConsumeBool()) id = static_cast<int32_t>(static_cast<uint32_t>(id) % tok.vocab_size());
        in_range = in_range && id >= 0 && id < tok.vocab_size();
        ids.push_back(id);
    }
    std::string whole;
    try {
        whole = tok.decode_utf8(ids);
    } catch (const std::invalid_argument&) {
        CHECK(!in_range);
        return;
    }
    CHECK(in_range);
    CHECK(valid_utf8(whole));
    pygpt::StreamDecoder dec(tok);
    std::string streamed;
    for (int32_t id : ids) {
        streamed += dec.push(id);
        CHECK(dec.pending_bytes() <= 3);
    }
    streamed += dec.flush();
    CHECK(streamed == whole);
}

// A tokenizer from arbitrary parts: the 256 single bytes (so it is byte-level), then tokens,
// merges and specials taken from the input. The constructor must accept or throw invalid_argument.
void build_and_use(FuzzedDataProvider& fdp) {
    std::vector<std::string> tokens;
    const bool all_bytes = fdp.ConsumeBool();
    for (int b = 0; b < 256; b++)
        if (all_bytes || fdp.ConsumeBool()) tokens.push_back(std::string(1, static_cast<char>(b)));
    const size_t n_extra = fdp.ConsumeIntegralInRange<size_t>(0, 64);
    for (size_t i = 0; i < n_extra; i++) tokens.push_back(fdp.ConsumeRandomLengthString(12));
    std::vector<std::pair<int32_t, int32_t>> merges(fdp.ConsumeIntegralInRange<size_t>(0, 64));
    const int32_t n = static_cast<int32_t>(tokens.size());
    for (auto& m : merges) {
        const bool wild = fdp.ConsumeIntegralInRange<int>(0, 15) == 0;
        m.first = wild ? fdp.ConsumeIntegral<int32_t>() : fdp.ConsumeIntegralInRange<int32_t>(0, n - 1);
        m.second = wild ? fdp.ConsumeIntegral<int32_t>() : fdp.ConsumeIntegralInRange<int32_t>(0, n - 1);
    }
    std::vector<std::pair<std::string, int32_t>> specials(fdp.ConsumeIntegralInRange<size_t>(0, 3));
    for (auto& s : specials) {
        s.second = fdp.ConsumeIntegralInRange<int32_t>(-1, n);
        s.first = (s.second >= 0 && s.second < n && fdp.ConsumeBool()) ? tokens[s.second]
                                                                        : fdp.ConsumeRandomLengthString(16);
    }
    std::unique_ptr<Tokenizer> tok;
    try {
        tok = std::make_unique<Tokenizer>(tokens, merges, specials);
    } catch (const std::invalid_argument&) {
        return;
    }
    CHECK(tok->vocab_size() == n);
    // Specials that are not valid UTF-8 (possible in C++ only: Python hands str) may split a
    // character of the text, which then fails to encode; the invariants assume valid ones.
    bool specials_utf8 = true;
    for (const auto& s : specials) specials_utf8 = specials_utf8 && valid_utf8(s.first);
    const std::string text = fdp.ConsumeRemainingBytesAsString();
    for (bool allow : {false, true}) {
        if (allow && !specials_utf8) {
            try {
                tok->encode(text, true);
            } catch (const std::invalid_argument&) {
            }
            continue;
        }
        std::vector<int32_t> ids;
        try {
            ids = tok->encode(text, allow);
        } catch (const std::invalid_argument& e) {
            if (valid_utf8(text)) {
                std::fprintf(stderr, "encode threw: %s; text (%zu bytes):", e.what(), text.size());
                for (unsigned char c : text) std::fprintf(stderr, " %02x", c);
                std::fprintf(stderr, "\n");
            }
            CHECK(!valid_utf8(text));
            continue;
        }
        for (int32_t id : ids) CHECK(id >= 0 && id < n);
        // a custom vocabulary may hold a token twice (two ids, same bytes): the bytes still round-trip
        CHECK(tok->decode(ids) == text);
    }
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
    const char* path = std::getenv("PYGPT_FUZZ_VOCAB");
    g_gpt2 = load_dump(path ? path : "fuzz/build/gpt2-vocab.bin");
    return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    if (size == 0) return 0;
    const uint8_t mode = data[0] % 4;
    FuzzedDataProvider fdp(data + 1, size - 1);
    switch (mode) {
        case 0: {
            const bool allow = fdp.ConsumeBool();
            roundtrip(*g_gpt2, fdp.ConsumeRemainingBytesAsString(), allow);
            break;
        }
        case 1:
            decode_ids(*g_gpt2, fdp);
            break;
        case 2: {
            const std::string in = fdp.ConsumeRemainingBytesAsString();
            for (bool final : {false, true}) {
                std::string out;
                const size_t used = pygpt::utf8_replace(in, out, final);
                CHECK(used <= in.size());
                CHECK(final ? used == in.size() : in.size() - used <= 3);
                CHECK(valid_utf8(out));
            }
            break;
        }
        default:
            build_and_use(fdp);
    }
    return 0;
}
