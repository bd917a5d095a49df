// GPT-2 byte-level BPE: text <-> token ids, exactly as OpenAI's encoder (and tiktoken, and
// Hugging Face's GPT2TokenizerFast) do it.
//
//   encode: UTF-8 text -> pre-tokenizer (the GPT-2 regex, matched by hand in tokenizer.cpp)
//           -> each piece's bytes -> BPE merges by rank -> ids
//   decode: ids -> concatenated token bytes (may be invalid UTF-8; see utf8_replace)
//
// A Tokenizer is immutable once built, so encode/decode may run on many threads at once; all
// scratch space (and the cache of already-merged words) lives in a per-call EncodeSession.
// Vocabulary files are parsed and validated in Python (pygpt/tokenizer.py); the constructor
// receives plain data and checks it again, throwing std::invalid_argument on anything wrong.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace pygpt {

// How a special or added token is matched in a text, as Hugging Face's AddedToken has it:
//   lstrip:      the white space (Unicode White_Space) before it is part of the match (dropped);
//   rstrip:      likewise the white space after it;
//   single_word: it is matched only where no word character (\w) touches it on either side.
struct TokenMatch {
    bool lstrip = false, rstrip = false, single_word = false;
};

class Tokenizer {
public:
    // token_bytes: [n_vocab] raw bytes of each id (byte-level unicode already mapped back to bytes).
    // merges:      [n_merges] (left id, right id), index = rank (0 merges first).
    // specials:    (text, id) of special tokens such as "<|endoftext|>"; token_bytes[id] must equal text.
    // matching:    how each of specials is matched (empty: none strips, none is single_word).
    Tokenizer(std::vector<std::string> token_bytes,
              const std::vector<std::pair<int32_t, int32_t>>& merges,
              std::vector<std::pair<std::string, int32_t>> specials,
              std::vector<TokenMatch> matching = {});
    ~Tokenizer();
    Tokenizer(const Tokenizer&) = delete;
    Tokenizer& operator=(const Tokenizer&) = delete;

    // utf8 must be valid UTF-8 (else std::invalid_argument). allow_special: literal special
    // token texts become their ids; otherwise they are encoded as plain text. Thread-safe.
    std::vector<int32_t> encode(std::string_view utf8, bool allow_special) const;
    // As encode, with only the specials whose ids are listed recognised.
    std::vector<int32_t> encode(std::string_view utf8, const std::vector<int32_t>& allowed_special_ids) const;
    // Many texts on n_threads threads (<= 0: hardware concurrency). Same results as encode.
    std::vector<std::vector<int32_t>> encode_batch(const std::vector<std::string_view>& texts,
                                                   bool allow_special, int n_threads) const;
    std::vector<std::vector<int32_t>> encode_batch(const std::vector<std::string_view>& texts,
                                                   const std::vector<int32_t>& allowed_special_ids,
                                                   int n_threads) const;

    // Concatenated raw token bytes (not necessarily valid UTF-8). Ids out of range: std::invalid_argument.
    std::string decode(const std::vector<int32_t>& ids) const;
    // decode() made valid UTF-8: invalid bytes become U+FFFD as Python's errors="replace" does.
    std::string decode_utf8(const std::vector<int32_t>& ids) const;

    const std::string& token_bytes(int32_t id) const;  // std::invalid_argument if out of range
    int32_t vocab_size() const { return static_cast<int32_t>(tokens_.size()); }
    int32_t eot_id() const { return eot_id_; }         // "<|endoftext|>" or -1
    int32_t n_merges() const { return n_merges_; }
    const std::vector<std::pair<std::string, int32_t>>& specials() const { return specials_; }

    struct Tables;   // hash tables (tokenizer.cpp)
    class Session;   // per-call scratch + word cache (tokenizer.cpp)

private:
    void encode_ordinary(std::string_view text, Session& s, std::vector<int32_t>& out) const;
    // allowed[k]: whether specials_[k] is recognised; ids that are not special: std::invalid_argument.
    std::vector<bool> special_mask(const std::vector<int32_t>& ids) const;
    std::vector<std::vector<int32_t>> encode_batch(const std::vector<std::string_view>& texts,
                                                   const std::vector<bool>& allowed, int n_threads) const;
    void encode_with_specials(std::string_view text, const std::vector<bool>& allowed, Session& s,
                              std::vector<int32_t>& out) const;
    void bpe(const uint8_t* p, size_t n, Session& s, std::vector<int32_t>& out) const;

    std::vector<std::string> tokens_;                          // [n_vocab] id -> bytes
    std::vector<std::pair<std::string, int32_t>> specials_;    // text -> id
    std::vector<TokenMatch> matching_;                         // [specials_.size()]
    std::unique_ptr<Tables> tables_;
    int32_t byte_id_[256];                                     // id of each single-byte token
    int32_t eot_id_ = -1;
    int32_t n_merges_ = 0;
};

// Incremental detokenizer for streaming. Fed one id at a time, it returns only complete, valid
// UTF-8 and holds back the bytes of a character that may still be completed by the next token.
// Joining every push() and the final flush() gives exactly decode_utf8(all ids).
// The Tokenizer must outlive the StreamDecoder.
class StreamDecoder {
public:
    explicit StreamDecoder(const Tokenizer& tok) : tok_(&tok) {}
    std::string push(int32_t id);        // std::invalid_argument if id is out of range
    std::string flush();                 // held-back bytes (as U+FFFD), then reset
    void reset() { pending_.clear(); }
    size_t pending_bytes() const { return pending_.size(); }

private:
    const Tokenizer* tok_;
    std::string pending_;  // at most 3 bytes: a valid but unfinished UTF-8 sequence
};

// Appends `in` to `out` as valid UTF-8, each maximal ill-formed subpart replaced by U+FFFD
// (Unicode's "substitution of maximal subparts", what Python's errors="replace" does).
// If !final, a valid but unfinished sequence at the end is not consumed. Returns bytes consumed.
size_t utf8_replace(std::string_view in, std::string& out, bool final);

}  // namespace pygpt
