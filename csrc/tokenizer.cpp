// GPT-2 byte-level BPE (see tokenizer.h for the pipeline).
//
// Speed comes from three things: the pre-tokenizer is a hand-written matcher instead of a regex
// engine; a piece that is itself a token (most English words) is one hash lookup; and BPE works
// on integer pairs, (left id, right id) -> (rank, merged id), with a per-session cache of words
// already merged.
#include "tokenizer.h"

#include <algorithm>
#include <atomic>
#include <climits>
#include <cstring>
#include <exception>
#include <functional>
#include <stdexcept>
#include <system_error>
#include <thread>

#include "unicode_tables.h"

namespace pygpt {

namespace {

using unicode::CharClass;

// ---------------------------------------------------------------------------------------------
// hashing

inline uint64_t mix64(uint64_t x) {
    x ^= x >> 31;
    x *= 0xbf58476d1ce4e5b9ull;
    x ^= x >> 29;
    return x;
}

// k (1..8) bytes at p as a little-endian word, zero-padded. Reads 8 bytes at once when the
// buffer (which ends at `end`) has them, which is all but the last few bytes of a text.
inline uint64_t load_word(const uint8_t* p, size_t k, const uint8_t* end) {
    uint64_t v = 0;
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    if (end - p >= 8) {
        std::memcpy(&v, p, 8);
        return k >= 8 ? v : v & ((uint64_t(1) << (8 * k)) - 1);
    }
#endif
    std::memcpy(&v, p, k < 8 ? k : 8);
    return v;
}

// Hash of a byte string and its first (up to) 8 bytes, which the tables compare directly.
struct Key {
    uint64_t word, hash;
};

inline Key make_key(const uint8_t* p, size_t n, const uint8_t* end) {
    const uint64_t word = load_word(p, n, end);
    uint64_t h = mix64(word ^ (n * 0x9e3779b97f4a7c15ull)) * 0x94d049bb133111ebull;
    for (size_t k = 8; k < n; k += 8) h = mix64(h ^ load_word(p + k, n - k, end)) * 0x94d049bb133111ebull;
    return Key{word, h ^ (h >> 32)};
}

inline Key make_key(const std::string& s) {
    const auto* p = reinterpret_cast<const uint8_t*>(s.data());
    return make_key(p, s.size(), p + s.size());
}

inline size_t table_size_for(size_t n) {
    size_t cap = 16;
    while (cap < 2 * n) cap <<= 1;
    return cap;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Immutable lookup tables, built once by the constructor.

struct Tokenizer::Tables {
    // bytes -> id of every token, open addressing. A slot holds the first 8 bytes of the token, so
    // the common short piece is matched without touching the token's string.
    // kWhole marks a token that BPE of its own bytes yields unchanged, so a pre-tokenizer piece
    // with those bytes can skip BPE. (Not true of every token in every vocabulary.)
    static constexpr uint32_t kWhole = 0x80000000u;
    struct Slot {
        uint64_t word;   // first 8 bytes, zero-padded
        uint32_t len;
        uint32_t id1;    // (id + 1) | kWhole; 0 = empty
        int32_t id() const { return static_cast<int32_t>((id1 & ~kWhole) - 1); }
        bool whole() const { return (id1 & kWhole) != 0; }
    };
    std::vector<Slot> vocab;
    uint64_t vocab_mask = 0;

    // (left id, right id) -> rank and merged id. Empty slot: key == kNoKey.
    static constexpr uint64_t kNoKey = ~0ull;
    struct Pair {
        uint64_t key;
        int32_t rank;
        int32_t merged;
    };
    std::vector<Pair> pairs;
    uint64_t pairs_mask = 0;

    // the slot of the token with bytes p[0..n), or null
    const Slot* find_vocab(const uint8_t* p, size_t n, Key key, const std::vector<std::string>& tokens) const {
        for (uint64_t i = key.hash & vocab_mask;; i = (i + 1) & vocab_mask) {
            const Slot& e = vocab[i];
            if (e.id1 == 0) return nullptr;
            if (e.word == key.word && e.len == n &&
                (n <= 8 || std::memcmp(tokens[e.id()].data() + 8, p + 8, n - 8) == 0))
                return &e;
        }
    }
    static uint64_t pair_key(int32_t a, int32_t b) {
        return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
    }
    const Pair* find_pair(int32_t a, int32_t b) const {
        const uint64_t key = pair_key(a, b);
        for (uint64_t i = mix64(key * 0x9e3779b97f4a7c15ull) & pairs_mask;; i = (i + 1) & pairs_mask) {
            const Pair& e = pairs[i];
            if (e.key == key) return &e;
            if (e.key == kNoKey) return nullptr;
        }
    }
};

// ---------------------------------------------------------------------------------------------
// Per-call scratch: BPE work arrays and a cache of merged words (piece bytes -> ids).

class Tokenizer::Session {
public:
    static constexpr size_t kMaxCachedPiece = 64;       // longer pieces are rare and not cached
    static constexpr size_t kMinSlots = 256;            // the table starts small (short texts) ...
    static constexpr size_t kMaxSlots = size_t(1) << 14;  // ... and is cleared when this is half full

    bool find(const uint8_t* p, size_t n, uint64_t h, std::vector<int32_t>& out) const {
        if (slots_.empty()) return false;
        const uint64_t mask = slots_.size() - 1;
        for (uint64_t i = h & mask;; i = (i + 1) & mask) {
            const Entry& e = slots_[i];
            if (e.hash == 0) return false;
            if (e.hash == (h | 1) && e.key_len == n && std::memcmp(keys_.data() + e.key_off, p, n) == 0) {
                for (uint32_t k = 0; k < e.val_len; ++k) out.push_back(vals_[e.val_off + k]);  // few ids
                return true;
            }
        }
    }

    void insert(const uint8_t* p, size_t n, uint64_t h, const int32_t* ids, size_t m) {
        if (2 * (used_ + 1) > slots_.size()) {
            if (slots_.size() < kMaxSlots)
                grow();
            else
                clear();  // bounded memory: start over
        }
        slots_[free_slot(h | 1)] = Entry{h | 1, static_cast<uint32_t>(keys_.size()), static_cast<uint32_t>(n),
                                         static_cast<uint32_t>(vals_.size()), static_cast<uint32_t>(m)};
        keys_.append(reinterpret_cast<const char*>(p), n);
        vals_.insert(vals_.end(), ids, ids + m);
        ++used_;
    }

    // BPE scratch, reused across pieces
    struct Node {
        int32_t id, prev, next;
    };
    struct Cand {  // a possible merge of nodes left and right (ids as they were when pushed)
        int32_t rank, left, right, left_id, right_id, merged;
        bool operator>(const Cand& o) const { return rank != o.rank ? rank > o.rank : left > o.left; }
    };
    std::vector<Node> nodes;
    std::vector<Cand> heap;

private:
    struct Entry {
        uint64_t hash;  // 0 = empty (stored hashes have the low bit set)
        uint32_t key_off, key_len, val_off, val_len;
    };
    size_t free_slot(uint64_t hash) const {
        const uint64_t mask = slots_.size() - 1;
        uint64_t i = hash & mask;
        while (slots_[i].hash != 0) i = (i + 1) & mask;
        return i;
    }
    void grow() {
        std::vector<Entry> old = std::move(slots_);
        slots_.assign(old.empty() ? kMinSlots : 2 * old.size(), Entry{0, 0, 0, 0, 0});
        for (const Entry& e : old)
            if (e.hash != 0) slots_[free_slot(e.hash)] = e;
    }
    void clear() {
        std::fill(slots_.begin(), slots_.end(), Entry{0, 0, 0, 0, 0});
        keys_.clear();
        vals_.clear();
        used_ = 0;
    }
    std::vector<Entry> slots_;
    std::string keys_;
    std::vector<int32_t> vals_;
    size_t used_ = 0;
};

// ---------------------------------------------------------------------------------------------
// construction

Tokenizer::~Tokenizer() = default;

Tokenizer::Tokenizer(std::vector<std::string> token_bytes, const std::vector<std::pair<int32_t, int32_t>>& merges,
                     std::vector<std::pair<std::string, int32_t>> specials, std::vector<TokenMatch> matching)
    : tokens_(std::move(token_bytes)),
      specials_(std::move(specials)),
      matching_(std::move(matching)),
      tables_(std::make_unique<Tables>()) {
    if (matching_.empty()) matching_.resize(specials_.size());
    if (matching_.size() != specials_.size())
        throw std::invalid_argument("matching has " + std::to_string(matching_.size()) + " entries for " +
                                    std::to_string(specials_.size()) + " special tokens");
    const size_t n_vocab = tokens_.size();
    if (n_vocab < 256 || n_vocab > size_t(INT32_MAX / 2))
        throw std::invalid_argument("vocabulary must have between 256 and 2^30 tokens, got " +
                                    std::to_string(n_vocab));
    for (size_t id = 0; id < n_vocab; ++id)
        if (tokens_[id].empty()) throw std::invalid_argument("token " + std::to_string(id) + " is empty");

    for (const auto& [text, id] : specials_) {
        if (id < 0 || size_t(id) >= n_vocab)
            throw std::invalid_argument("special token '" + text + "' has id " + std::to_string(id) +
                                        " outside the vocabulary");
        if (tokens_[id] != text)
            throw std::invalid_argument("special token '" + text + "' does not match the bytes of token " +
                                        std::to_string(id));
        std::string valid;  // a special is matched in (valid UTF-8) text: it must be text itself
        utf8_replace(text, valid, true);
        if (valid != text)
            throw std::invalid_argument("special token " + std::to_string(id) + " is not valid UTF-8");
        if (text == "<|endoftext|>") eot_id_ = id;
    }

    // bytes -> id of every token. Special tokens are in it too (a vocabulary may mark a token that
    // merges make as special); "<|endoftext|>" is not whole (BPE splits it), so it never comes
    // out of ordinary text.
    Tables& t = *tables_;
    t.vocab.assign(table_size_for(n_vocab), Tables::Slot{0, 0, 0});
    t.vocab_mask = t.vocab.size() - 1;
    for (size_t id = 0; id < n_vocab; ++id) {
        const std::string& tb = tokens_[id];
        const Key key = make_key(tb);
        if (t.find_vocab(reinterpret_cast<const uint8_t*>(tb.data()), tb.size(), key, tokens_))
            throw std::invalid_argument("token " + std::to_string(id) + " has the same bytes as another token");
        uint64_t i = key.hash & t.vocab_mask;
        while (t.vocab[i].id1 != 0) i = (i + 1) & t.vocab_mask;
        t.vocab[i] = Tables::Slot{key.word, static_cast<uint32_t>(tb.size()), static_cast<uint32_t>(id + 1)};
    }
    for (int b = 0; b < 256; ++b) {
        const uint8_t byte = static_cast<uint8_t>(b);
        const Tables::Slot* slot = t.find_vocab(&byte, 1, make_key(&byte, 1, &byte + 1), tokens_);
        if (!slot)
            throw std::invalid_argument("vocabulary has no token for byte " + std::to_string(b) +
                                        " (not a byte-level BPE vocabulary)");
        byte_id_[b] = slot->id();
    }

    // (left, right) -> (rank, merged). A repeated pair keeps its first (lowest) rank.
    t.pairs.assign(table_size_for(merges.size()), Tables::Pair{Tables::kNoKey, 0, 0});
    t.pairs_mask = t.pairs.size() - 1;
    for (size_t rank = 0; rank < merges.size(); ++rank) {
        const auto [a, b] = merges[rank];
        for (int32_t x : {a, b}) {
            if (x < 0 || size_t(x) >= n_vocab)
                throw std::invalid_argument("merge " + std::to_string(rank) + " uses id " + std::to_string(x) +
                                            ", outside the vocabulary");
        }
        const std::string joined = tokens_[a] + tokens_[b];
        const Tables::Slot* slot =
            t.find_vocab(reinterpret_cast<const uint8_t*>(joined.data()), joined.size(), make_key(joined), tokens_);
        if (!slot)
            throw std::invalid_argument("merge " + std::to_string(rank) + " (" + std::to_string(a) + ", " +
                                        std::to_string(b) + ") makes a token that is not in the vocabulary");
        const uint64_t key = Tables::pair_key(a, b);
        uint64_t i = mix64(key * 0x9e3779b97f4a7c15ull) & t.pairs_mask;
        while (t.pairs[i].key != Tables::kNoKey && t.pairs[i].key != key) i = (i + 1) & t.pairs_mask;
        if (t.pairs[i].key == key) continue;
        t.pairs[i] = Tables::Pair{key, static_cast<int32_t>(rank), slot->id()};
    }
    n_merges_ = static_cast<int32_t>(merges.size());

    // Which tokens come back unchanged from BPE of their own bytes (the whole-piece shortcut).
    Session s;
    std::vector<int32_t> out;
    for (Tables::Slot& e : t.vocab) {
        if (e.id1 == 0) continue;
        const int32_t id = e.id();
        out.clear();
        if (tokens_[id].size() == 1)
            out.push_back(id);
        else
            bpe(reinterpret_cast<const uint8_t*>(tokens_[id].data()), tokens_[id].size(), s, out);
        if (out.size() == 1 && out[0] == id) e.id1 |= Tables::kWhole;
    }
}

// ---------------------------------------------------------------------------------------------
// BPE: repeatedly merge the adjacent pair with the lowest rank (leftmost first among equals).

void Tokenizer::bpe(const uint8_t* p, size_t n, Session& s, std::vector<int32_t>& out) const {
    const Tables& t = *tables_;
    constexpr size_t kSmall = 48;  // short pieces: O(n^2) scan over arrays; long ones: a heap
    if (n <= kSmall) {
        int32_t ids[kSmall], ranks[kSmall], merged[kSmall];  // ranks[i]: pair (i, i+1)
        size_t m = n;
        for (size_t i = 0; i < n; ++i) ids[i] = byte_id_[p[i]];
        auto set_pair = [&](size_t i) {
            const Tables::Pair* e = t.find_pair(ids[i], ids[i + 1]);
            ranks[i] = e ? e->rank : INT32_MAX;
            merged[i] = e ? e->merged : -1;
        };
        for (size_t i = 0; i + 1 < m; ++i) set_pair(i);
        while (m > 1) {
            size_t best = 0;
            for (size_t i = 1; i + 1 < m; ++i)
                if (ranks[i] < ranks[best]) best = i;
            if (ranks[best] == INT32_MAX) break;
            ids[best] = merged[best];
            for (size_t i = best + 1; i + 1 < m; ++i) {  // drop element best + 1 (short: no memmove call)
                ids[i] = ids[i + 1];
                ranks[i] = ranks[i + 1];
                merged[i] = merged[i + 1];
            }
            --m;
            if (best + 1 < m) set_pair(best);
            if (best > 0) set_pair(best - 1);
        }
        out.insert(out.end(), ids, ids + m);
        return;
    }

    // Long pieces (e.g. 100 KB without a space): doubly linked list + min-heap of candidate
    // merges ordered by (rank, position). Stale candidates are skipped when popped.
    using Cand = Session::Cand;
    auto& nodes = s.nodes;
    nodes.resize(n);
    for (size_t i = 0; i < n; ++i)
        nodes[i] = Session::Node{byte_id_[p[i]], static_cast<int32_t>(i) - 1,
                                 i + 1 < n ? static_cast<int32_t>(i + 1) : -1};
    auto& heap = s.heap;  // min-heap by (rank, left)
    heap.clear();
    auto push = [&](int32_t l, int32_t r) {
        if (l < 0 || r < 0) return;
        if (const Tables::Pair* e = t.find_pair(nodes[l].id, nodes[r].id)) {
            heap.push_back(Cand{e->rank, l, r, nodes[l].id, nodes[r].id, e->merged});
            std::push_heap(heap.begin(), heap.end(), std::greater<Cand>());
        }
    };
    for (size_t i = 0; i + 1 < n; ++i) {
        const Tables::Pair* e = t.find_pair(nodes[i].id, nodes[i + 1].id);
        if (e) heap.push_back(Cand{e->rank, int32_t(i), int32_t(i + 1), nodes[i].id, nodes[i + 1].id, e->merged});
    }
    std::make_heap(heap.begin(), heap.end(), std::greater<Cand>());
    while (!heap.empty()) {
        std::pop_heap(heap.begin(), heap.end(), std::greater<Cand>());
        const Cand c = heap.back();
        heap.pop_back();
        Session::Node& l = nodes[c.left];
        if (l.id != c.left_id || l.next != c.right || nodes[c.right].id != c.right_id) continue;  // stale
        l.id = c.merged;
        nodes[c.right].id = -1;
        l.next = nodes[c.right].next;
        if (l.next >= 0) nodes[l.next].prev = c.left;
        push(l.prev, c.left);
        push(c.left, l.next);
    }
    for (int32_t i = 0; i >= 0; i = nodes[i].next) out.push_back(nodes[i].id);
}

// ---------------------------------------------------------------------------------------------
// Pre-tokenizer. GPT-2 regex (tried left to right at each position, first alternative wins):
//   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+

namespace {

constexpr uint8_t ascii_class(uint8_t c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ? unicode::kLetter
           : (c >= '0' && c <= '9')                          ? unicode::kNumber
           : (c >= 9 && c <= 13) || c == ' '                 ? unicode::kSpace
                                                             : unicode::kOther;
}

struct AsciiClasses {
    uint8_t cls[128];
    constexpr AsciiClasses() : cls() {
        for (int c = 0; c < 128; ++c) cls[c] = ascii_class(static_cast<uint8_t>(c));
    }
};
constexpr AsciiClasses kAscii;

[[noreturn]] void bad_utf8(size_t i) {
    throw std::invalid_argument("text is not valid UTF-8 (byte offset " + std::to_string(i) + ")");
}

// Decodes (and validates) the code point at b[i]; len = its byte length.
inline uint32_t code_point_at(const uint8_t* b, size_t n, size_t i, uint32_t& len) {
    const uint32_t c = b[i];
    if (c < 0x80) {
        len = 1;
        return c;
    }
    uint32_t cp = 0;
    auto cont = [&](size_t k) {
        if (i + k >= n || (b[i + k] & 0xC0) != 0x80) bad_utf8(i);
        return static_cast<uint32_t>(b[i + k] & 0x3F);
    };
    if (c < 0xC2) {
        bad_utf8(i);
    } else if (c < 0xE0) {
        cp = ((c & 0x1F) << 6) | cont(1);
        len = 2;
    } else if (c < 0xF0) {
        cp = ((c & 0x0F) << 12) | (cont(1) << 6) | cont(2);
        if (cp < 0x800 || (cp >= 0xD800 && cp <= 0xDFFF)) bad_utf8(i);  // overlong, surrogate
        len = 3;
    } else if (c < 0xF5) {
        cp = ((c & 0x07) << 18) | (cont(1) << 12) | (cont(2) << 6) | cont(3);
        if (cp < 0x10000 || cp > 0x10FFFF) bad_utf8(i);
        len = 4;
    } else {
        bad_utf8(i);
    }
    return cp;
}

// The code point that ends at b[end] (0 < end <= n); len = its byte length.
inline uint32_t code_point_before(const uint8_t* b, size_t n, size_t end, uint32_t& len) {
    size_t i = end - 1;
    while (i > 0 && end - i < 4 && (b[i] & 0xC0) == 0x80) --i;
    const uint32_t cp = code_point_at(b, n, i, len);
    if (i + len != end) bad_utf8(i);
    return cp;
}

// The class of the code point at b[i]; len = its byte length.
inline CharClass class_at(const uint8_t* b, size_t n, size_t i, uint32_t& len) {
    if (b[i] < 0x80) {
        len = 1;
        return static_cast<CharClass>(kAscii.cls[b[i]]);
    }
    return unicode::char_class(code_point_at(b, n, i, len));
}

// End (byte offset) of the piece that starts at b[i].
inline size_t next_piece(const uint8_t* b, size_t n, size_t i) {
    uint32_t len0;
    const CharClass c0 = class_at(b, n, i, len0);

    // 's|'t|'re|'ve|'m|'ll|'d
    if (b[i] == '\'' && i + 1 < n) {
        const uint8_t x = b[i + 1];
        if (x == 's' || x == 't' || x == 'm' || x == 'd') return i + 2;
        if (i + 2 < n) {
            const uint8_t y = b[i + 2];
            if ((x == 'r' && y == 'e') || (x == 'v' && y == 'e') || (x == 'l' && y == 'l')) return i + 3;
        }
    }

    // ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+ : an optional space, then a run of one class
    size_t j;
    CharClass run;
    if (c0 != unicode::kSpace) {
        run = c0;
        j = i + len0;
    } else if (b[i] == ' ' && i + 1 < n) {
        uint32_t len1;
        run = class_at(b, n, i + 1, len1);
        j = i + 1 + len1;
    } else {
        run = unicode::kSpace;
        j = i;
    }
    if (run != unicode::kSpace) {
        while (j < n) {
            if (b[j] < 0x80) {  // ASCII: no decoding
                if (kAscii.cls[b[j]] != run) break;
                ++j;
            } else {
                uint32_t len;
                if (class_at(b, n, j, len) != run) break;
                j += len;
            }
        }
        return j;
    }

    // \s+(?!\S)|\s+ : a whitespace run; if a non-space follows a run of two or more, the last
    // whitespace character is left for the next piece (so " word" stays together).
    size_t last = i;
    j = i + len0;
    uint32_t len;
    while (j < n && class_at(b, n, j, len) == unicode::kSpace) {
        last = j;
        j += len;
    }
    if (j == n || last == i) return j;
    return last;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// encode

void Tokenizer::encode_ordinary(std::string_view text, Session& s, std::vector<int32_t>& out) const {
    const auto* b = reinterpret_cast<const uint8_t*>(text.data());
    const size_t n = text.size();
    const Tables& t = *tables_;
    for (size_t i = 0; i < n;) {
        const size_t end = next_piece(b, n, i);
        const uint8_t* p = b + i;
        const size_t m = end - i;
        i = end;
        if (m == 1) {
            out.push_back(byte_id_[p[0]]);
            continue;
        }
        const Key key = make_key(p, m, b + n);
        const Tables::Slot* slot = t.find_vocab(p, m, key, tokens_);
        if (slot && slot->whole()) {
            out.push_back(slot->id());
            continue;
        }
        if (m > Session::kMaxCachedPiece) {
            bpe(p, m, s, out);
            continue;
        }
        if (s.find(p, m, key.hash, out)) continue;
        const size_t before = out.size();
        bpe(p, m, s, out);
        s.insert(p, m, key.hash, out.data() + before, out.size() - before);
    }
}

// The allowed specials split the text, the pieces between them encoded as ordinary text. Of
// the matches, the leftmost wins, the longest of those that start there, and the search goes
// on after it (Hugging Face's added tokens: leftmost-longest matches that do not overlap). A
// single_word token with a word character on either side is no match: the search goes on
// after it, its text left to the ordinary piece around it. lstrip / rstrip widen a match over
// the white space before / after it; the left one stops where the match before it ended.
void Tokenizer::encode_with_specials(std::string_view text, const std::vector<bool>& allowed, Session& s,
                                     std::vector<int32_t>& out) const {
    constexpr size_t kUnknown = std::string_view::npos - 1;
    std::vector<size_t> next(specials_.size(), kUnknown);  // next occurrence of each special at or after pos
    const auto* b = reinterpret_cast<const uint8_t*>(text.data());
    const size_t n = text.size();
    size_t piece = 0, pos = 0;  // the text not yet encoded starts at piece; the search goes on at pos
    uint32_t len = 0;
    while (pos < n) {
        size_t best = std::string_view::npos, best_k = 0;
        for (size_t k = 0; k < specials_.size(); ++k) {
            if (!allowed[k]) continue;
            if (next[k] == kUnknown || (next[k] != std::string_view::npos && next[k] < pos))
                next[k] = text.find(specials_[k].first, pos);
            const size_t f = next[k];
            if (f == std::string_view::npos) continue;
            if (f < best || (f == best && specials_[k].first.size() > specials_[best_k].first.size())) {
                best = f;
                best_k = k;
            }
        }
        if (best == std::string_view::npos) break;
        const TokenMatch& m = matching_[best_k];
        size_t start = best, stop = best + specials_[best_k].first.size();
        pos = stop;
        if (m.single_word && ((start > 0 && unicode::is_word_char(code_point_before(b, n, start, len))) ||
                              (stop < n && unicode::is_word_char(code_point_at(b, n, stop, len)))))
            continue;
        if (m.lstrip)
            while (start > piece && unicode::char_class(code_point_before(b, n, start, len)) == unicode::kSpace)
                start -= len;
        if (m.rstrip)
            while (stop < n && class_at(b, n, stop, len) == unicode::kSpace) stop += len;
        encode_ordinary(text.substr(piece, start - piece), s, out);
        out.push_back(specials_[best_k].second);
        piece = pos = stop;
    }
    if (piece < n) encode_ordinary(text.substr(piece), s, out);
}

std::vector<int32_t> Tokenizer::encode(std::string_view utf8, bool allow_special) const {
    std::vector<int32_t> out;
    out.reserve(utf8.size() / 4 + 8);
    Session s;
    if (allow_special && !specials_.empty())
        encode_with_specials(utf8, std::vector<bool>(specials_.size(), true), s, out);
    else
        encode_ordinary(utf8, s, out);
    return out;
}

std::vector<bool> Tokenizer::special_mask(const std::vector<int32_t>& ids) const {
    std::vector<bool> allowed(specials_.size(), false);
    for (int32_t id : ids) {
        bool found = false;
        for (size_t k = 0; k < specials_.size(); ++k)
            if (specials_[k].second == id) allowed[k] = found = true;
        if (!found) throw std::invalid_argument("id " + std::to_string(id) + " is not a special token");
    }
    return allowed;
}

std::vector<int32_t> Tokenizer::encode(std::string_view utf8, const std::vector<int32_t>& allowed_special_ids) const {
    const std::vector<bool> allowed = special_mask(allowed_special_ids);
    std::vector<int32_t> out;
    out.reserve(utf8.size() / 4 + 8);
    Session s;
    if (std::find(allowed.begin(), allowed.end(), true) != allowed.end())
        encode_with_specials(utf8, allowed, s, out);
    else
        encode_ordinary(utf8, s, out);
    return out;
}

std::vector<std::vector<int32_t>> Tokenizer::encode_batch(const std::vector<std::string_view>& texts,
                                                          bool allow_special, int n_threads) const {
    return encode_batch(texts, std::vector<bool>(specials_.size(), allow_special), n_threads);
}

std::vector<std::vector<int32_t>> Tokenizer::encode_batch(const std::vector<std::string_view>& texts,
                                                          const std::vector<int32_t>& allowed_special_ids,
                                                          int n_threads) const {
    return encode_batch(texts, special_mask(allowed_special_ids), n_threads);
}

std::vector<std::vector<int32_t>> Tokenizer::encode_batch(const std::vector<std::string_view>& texts,
                                                          const std::vector<bool>& allowed, int n_threads) const {
    std::vector<std::vector<int32_t>> results(texts.size());
    if (n_threads <= 0) n_threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
    n_threads = static_cast<int>(std::min<size_t>(static_cast<size_t>(n_threads), std::max<size_t>(texts.size(), 1)));
    const bool with_specials = std::find(allowed.begin(), allowed.end(), true) != allowed.end();
    std::atomic<size_t> next{0};
    std::vector<std::exception_ptr> errors(texts.size());
    auto work = [&] {
        Session s;  // one per thread: the word cache is shared by that thread's texts
        for (size_t i; (i = next.fetch_add(1)) < texts.size();) {
            try {
                results[i].reserve(texts[i].size() / 4 + 8);
                if (with_specials)
                    encode_with_specials(texts[i], allowed, s, results[i]);
                else
                    encode_ordinary(texts[i], s, results[i]);
            } catch (...) {
                errors[i] = std::current_exception();
            }
        }
    };
    if (n_threads == 1) {
        work();
    } else {
        std::vector<std::thread> pool;
        pool.reserve(n_threads);
        try {
            for (int k = 0; k < n_threads; ++k) pool.emplace_back(work);
        } catch (const std::system_error&) {
            // the system gave fewer threads than asked: the ones running share out all the texts
        }
        if (pool.empty()) work();
        for (auto& th : pool) th.join();
    }
    for (size_t i = 0; i < texts.size(); ++i) {
        if (!errors[i]) continue;
        try {
            std::rethrow_exception(errors[i]);
        } catch (const std::invalid_argument& e) {
            throw std::invalid_argument("text " + std::to_string(i) + ": " + e.what());
        }
    }
    return results;
}

// ---------------------------------------------------------------------------------------------
// decode

const std::string& Tokenizer::token_bytes(int32_t id) const {
    if (id < 0 || static_cast<size_t>(id) >= tokens_.size())
        throw std::invalid_argument("token id " + std::to_string(id) + " is out of range [0, " +
                                    std::to_string(tokens_.size()) + ")");
    return tokens_[id];
}

std::string Tokenizer::decode(const std::vector<int32_t>& ids) const {
    size_t total = 0;
    for (int32_t id : ids) total += token_bytes(id).size();  // validates every id first
    std::string out;
    out.reserve(total);
    for (int32_t id : ids) out += tokens_[id];
    return out;
}

std::string Tokenizer::decode_utf8(const std::vector<int32_t>& ids) const {
    const std::string raw = decode(ids);
    std::string out;
    out.reserve(raw.size());
    utf8_replace(raw, out, true);
    return out;
}

size_t utf8_replace(std::string_view in, std::string& out, bool final) {
    static constexpr char kReplacement[] = "\xEF\xBF\xBD";  // U+FFFD
    const auto* b = reinterpret_cast<const uint8_t*>(in.data());
    const size_t n = in.size();
    size_t i = 0;
    while (i < n) {
        const uint8_t c = b[i];
        if (c < 0x80) {
            size_t j = i + 1;
            while (j < n && b[j] < 0x80) ++j;
            out.append(in.data() + i, j - i);
            i = j;
            continue;
        }
        // continuation bytes needed, and the allowed range of the first one (Unicode Table 3-7)
        size_t need;
        uint8_t lo = 0x80, hi = 0xBF;
        if (c >= 0xC2 && c <= 0xDF) {
            need = 1;
        } else if (c == 0xE0) {
            need = 2;
            lo = 0xA0;
        } else if ((c >= 0xE1 && c <= 0xEC) || c == 0xEE || c == 0xEF) {
            need = 2;
        } else if (c == 0xED) {
            need = 2;
            hi = 0x9F;
        } else if (c == 0xF0) {
            need = 3;
            lo = 0x90;
        } else if (c >= 0xF1 && c <= 0xF3) {
            need = 3;
        } else if (c == 0xF4) {
            need = 3;
            hi = 0x8F;
        } else {
            out += kReplacement;  // 80..C1, F5..FF never start a sequence
            ++i;
            continue;
        }
        size_t k = 1;  // bytes of the sequence that fit so far
        while (k <= need && i + k < n) {
            const uint8_t d = b[i + k];
            if (d < (k == 1 ? lo : 0x80) || d > (k == 1 ? hi : 0xBF)) break;
            ++k;
        }
        if (k == need + 1) {
            out.append(in.data() + i, k);
        } else if (i + k == n && !final) {
            return i;  // unfinished: the next bytes may complete it
        } else {
            out += kReplacement;  // one U+FFFD for the maximal subpart
        }
        i += k;
    }
    return n;
}

std::string StreamDecoder::push(int32_t id) {
    pending_ += tok_->token_bytes(id);
    std::string out;
    pending_.erase(0, utf8_replace(pending_, out, false));
    return out;
}

std::string StreamDecoder::flush() {
    std::string out;
    utf8_replace(pending_, out, true);
    pending_.clear();
    return out;
}

}  // namespace pygpt
