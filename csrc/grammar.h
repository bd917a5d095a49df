// Grammar-constrained generation: which tokens may come next so that the text stays a prefix of
// something a grammar matches (llama.cpp's GBNF grammars, JSON schemas).
//
// The Python side (pygpt/grammar.py) parses GBNF and compiles it to bytes: every character class
// becomes alternatives of byte sequences (its UTF-8 encodings), repetitions become rules. What
// arrives here is plain data, checked again:
//
//   rules[r]     alternatives, each a sequence of elements; rule 0 is the start
//   element e    e >= 0: one byte from byte_sets[e];  e < 0: rule -e - 1
//
// Matching (as llama.cpp's grammar sampler, on bytes): the state is a set of stacks. A stack is
// the list of places in the grammar still to be matched, the next byte set on top; a byte moves
// every stack whose top set holds it and drops the others. Stacks are linked nodes shared by
// their common bottoms and interned, so equal stacks are one node and sets of them stay small.
// A stack that has matched the whole start rule is kAccept.
//
// Which tokens may come next: one walk down a trie of the vocabulary's bytes, carrying the state
// byte by byte and leaving a subtree as soon as no stack survives, so a state that allows few
// bytes (after `{` in JSON: whitespace or `"`) visits few nodes.
//
// Grammars are checked when built: no left recursion (the matcher would never stop expanding),
// and alternatives that can never finish are dropped, so a live stack can always be completed:
// a text the matcher accepts as a prefix can always be finished.
#pragma once
#include <array>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <vector>

namespace pygpt {

class Tokenizer;
class VocabTrie;

using ByteSet = std::array<uint64_t, 4>;  // bit b: byte b

struct GrammarRules {
    std::vector<std::string> names;                       // one per rule, for messages
    std::vector<std::vector<std::vector<int32_t>>> rules;  // rules[r][alternative] = elements
    std::vector<ByteSet> byte_sets;
};

class Grammar {
public:
    // Throws std::invalid_argument: no rules, an element out of range, a rule without
    // alternatives, left recursion, a start rule that can never finish.
    explicit Grammar(const GrammarRules& rules);

    static constexpr int32_t kEnd = INT32_MIN;  // ends an alternative in code()
    // The alternatives back to back, each ended by kEnd; elements as in GrammarRules.
    int32_t code(int32_t pos) const { return code_[size_t(pos)]; }
    const std::vector<int32_t>& alternatives(int32_t rule) const { return alts_[size_t(rule)]; }
    bool holds(int32_t set, uint8_t b) const { return (sets_[size_t(set)][b >> 6] >> (b & 63)) & 1; }
    const ByteSet& byte_set(int32_t set) const { return sets_[size_t(set)]; }
    size_t n_rules() const { return alts_.size(); }

    // The allowed tokens (bits by id) of a state, by its stacks' contents (GrammarMatcher's
    // canonical key), kept for every matcher of this grammar over the same vocabulary: the
    // sequences of a batch, and the later requests of a server, walk a state once. At most
    // kSharedMasks of them (about 6 KB each with GPT-2's vocabulary); thread-safe.
    using Mask = std::shared_ptr<const std::vector<uint64_t>>;
    static constexpr size_t kSharedMasks = 1024;
    Mask shared_mask(const std::shared_ptr<const VocabTrie>& trie, const std::string& key) const;
    void share_mask(const std::shared_ptr<const VocabTrie>& trie, const std::string& key, Mask mask) const;

private:
    std::vector<int32_t> code_;
    std::vector<std::vector<int32_t>> alts_;  // rule -> start of each alternative in code_
    std::vector<ByteSet> sets_;
    struct SharedMasks {
        std::weak_ptr<const VocabTrie> trie;
        std::unordered_map<std::string, Mask> masks;
    };
    mutable std::mutex shared_lock_;
    mutable std::vector<SharedMasks> shared_;  // one per vocabulary (almost always one)
};

// The bytes of every ordinary token (special tokens left out) as a trie in preorder: node i's
// children are the nodes from i + 1 to end(i), each child's subtree ending where the next
// begins.
class VocabTrie {
public:
    explicit VocabTrie(const Tokenizer& tokenizer);

    int32_t vocab_size() const { return int32_t(bytes_.size()); }
    bool is_text(int32_t id) const { return id >= 0 && id < vocab_size() && text_[size_t(id)]; }
    const std::string& bytes(int32_t id) const { return bytes_[size_t(id)]; }
    int32_t n_nodes() const { return int32_t(byte_.size()); }
    uint8_t byte(int32_t i) const { return byte_[size_t(i)]; }
    int32_t end(int32_t i) const { return end_[size_t(i)]; }
    // the tokens whose bytes end at node i (tokens are stored in the order of their nodes)
    const int32_t* tokens_begin(int32_t i) const { return tokens_.data() + first_token_[size_t(i)]; }
    const int32_t* tokens_end(int32_t i) const { return tokens_.data() + first_token_[size_t(i) + 1]; }
    size_t max_depth() const { return max_depth_; }

private:
    std::vector<std::string> bytes_;
    std::vector<uint8_t> text_;
    // the nodes, as arrays (a walk reads a node's byte and end, then its tokens): 9 bytes a node
    std::vector<uint8_t> byte_;
    std::vector<int32_t> end_;
    std::vector<int32_t> first_token_;  // n_nodes + 1
    std::vector<int32_t> tokens_;
    size_t max_depth_ = 0;
};

// A hash map from 64-bit keys to int32 values, open addressing: the matcher's hot lookups.
class FlatMap {
public:
    FlatMap() { clear(); }
    // The value at key, inserting `fresh` if absent; *inserted says which.
    int32_t& get(uint64_t key, int32_t fresh, bool* inserted);
    const int32_t* find(uint64_t key) const;
    void clear();
    size_t size() const { return size_; }

private:
    static constexpr uint64_t kEmpty = ~uint64_t(0);
    size_t slot(uint64_t key) const;
    void grow();
    std::vector<uint64_t> keys_;
    std::vector<int32_t> values_;
    size_t size_ = 0;
    int shift_ = 0;  // 64 - log2(capacity)
};

// One sequence's place in a grammar. It follows the sequence's tokens (sync), keeping the state
// after each generated token, so a sampler can be asked about any history that shares a prefix
// with the last one (drafts cut back, beams).
//
// States are interned: each distinct set of stacks gets an id, its moves by a byte are kept
// (state, byte) -> state, and the tokens it allows are kept for the last few states. Text in
// a JSON string, say, returns to the same state after each character, so the vocabulary walk
// mostly follows kept moves, and a run of tokens in one string walks once.
class GrammarMatcher {
public:
    // trie may be null for matching bytes only (matches, viable). Past max_states interned
    // states (or 16 times as many stack nodes, 32 times as many moves) what is kept is dropped
    // and rebuilt from the tokens: a few MB a sequence at most.
    // share_masks: look up and keep masks in the grammar's shared ones (Grammar::shared_mask).
    static constexpr size_t kMaxStates = size_t(1) << 15;
    GrammarMatcher(std::shared_ptr<const Grammar> grammar, std::shared_ptr<const VocabTrie> trie,
                   size_t max_states = kMaxStates, bool share_masks = true);

    // Brings the state to the tokens generated so far, history[n_prompt:].
    void sync(const std::vector<int32_t>& history, size_t n_prompt);
    // scores[0 : V] = -inf for every token the grammar does not allow next. end_tokens (eos,
    // stop tokens) are allowed where the text so far is a whole match, special tokens never.
    void mask(float* scores, int64_t V, const std::vector<int32_t>& end_tokens);
    // Whether token may come next (as mask() would leave it).
    bool allows(int32_t token, const std::vector<int32_t>& end_tokens);
    // Whether the text with token after it is a whole match nothing can extend.
    bool closes_with(int32_t token);
    // The text so far is a whole match / no byte can follow it / it broke the grammar.
    bool complete() const { return info_[size_t(states_.back())].complete; }
    bool closed() const { return info_[size_t(states_.back())].closed; }
    bool broken() const { return states_.back() == kDead; }

    // Bytes alone (no tokens): whether they are a whole match, and a prefix of one.
    bool matches(std::string_view bytes);
    bool viable(std::string_view bytes);

private:
    static constexpr int32_t kAccept = -1;  // a stack that has matched the start rule
    static constexpr int32_t kDead = 0;     // the state with no stacks
    struct Node {
        int32_t pos, parent;
    };
    struct State {
        std::vector<int32_t> stacks;  // sorted node ids (kAccept first)
        ByteSet first;                // the bytes some stack can take
        bool complete, closed;
        int32_t mask = -1;            // its slot in masks_, if kept
        int32_t moves = -1;           // its row in moves_by_byte_, if it has one
    };
    std::string canonical_key(int32_t state) const;
    int32_t intern(int32_t pos, int32_t parent);
    void expand(int32_t pos, int32_t parent, std::vector<int32_t>& out);
    int32_t state(std::vector<int32_t>& stacks);  // the id of a (sorted, unique) set of stacks
    int32_t step(int32_t state, uint8_t b);       // the state after one byte
    int32_t step_bytes(int32_t state, std::string_view bytes);
    void walk(int32_t begin, int32_t end, int32_t state, uint64_t* allowed);
    void reset();
    bool too_big() const;

    std::shared_ptr<const Grammar> g_;
    std::shared_ptr<const VocabTrie> trie_;
    size_t max_states_;
    std::vector<Node> nodes_;
    FlatMap node_ids_;                    // (pos, parent) -> node
    std::vector<State> info_;             // by state id; 0 is kDead
    std::unordered_map<std::string, int32_t> state_ids_;  // stacks' bytes -> state
    FlatMap moves_;                       // (state, byte) -> state
    // the moves of the states walks start from, as rows of 256 (kUnknown: not made yet): a walk
    // reads one for each trie node it visits
    static constexpr int32_t kUnknown = -2;
    std::vector<std::unique_ptr<std::array<int32_t, 256>>> moves_by_byte_;
    bool share_masks_;
    std::vector<Grammar::Mask> masks_;  // allowed tokens of a few states, as bits
    std::vector<int32_t> mask_owner_;
    size_t next_mask_ = 0;
    std::vector<int32_t> states_;         // states_[k]: after k generated tokens
    std::vector<int32_t> tokens_;         // those tokens
    // scratch
    std::vector<std::pair<int32_t, int32_t>> work_;
    std::unordered_set<uint64_t> expanded_;
    std::vector<int32_t> stacks_;
    std::vector<float> end_scores_;
};

}  // namespace pygpt
