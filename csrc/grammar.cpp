// Grammar matching on bytes and the vocabulary walk. See grammar.h.
#include "grammar.h"

#include <algorithm>
#include <limits>
#include <numeric>
#include <stdexcept>
#include <unordered_set>

#include "tokenizer.h"

namespace pygpt {

namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();
// A state with more stacks than this comes from a grammar so ambiguous that matching it would
// take unbounded time: an error rather than a hang.
constexpr size_t kMaxStacks = 1u << 16;

uint64_t key(int32_t pos, int32_t parent) { return (uint64_t(uint32_t(pos)) << 32) | uint32_t(parent); }

std::string quoted(const std::vector<std::string>& names, size_t r) { return "'" + names[r] + "'"; }

}  // namespace

// ---------------------------------------------------------------------------------------------
// Grammar

Grammar::Grammar(const GrammarRules& g) : sets_(g.byte_sets) {
    auto bad = [](const std::string& what) { throw std::invalid_argument(what); };
    const size_t n = g.rules.size();
    if (n == 0) bad("a grammar needs at least one rule");
    if (g.names.size() != n) bad("a grammar needs one name per rule");
    for (size_t r = 0; r < n; r++) {
        if (g.rules[r].empty()) bad("rule " + quoted(g.names, r) + " has no alternatives");
        for (const auto& alt : g.rules[r])
            for (int32_t e : alt)
                if (e >= 0 ? size_t(e) >= sets_.size() : size_t(-(int64_t(e) + 1)) >= n)
                    bad("rule " + quoted(g.names, r) + " has an element out of range: " + std::to_string(e));
    }
    auto rule_of = [](int32_t e) { return size_t(-(int64_t(e) + 1)); };

    // Rules that can finish (match some text): a fixpoint. Alternatives using one that cannot
    // are dropped below, so every stack the matcher keeps can still be completed.
    std::vector<uint8_t> finishes(n, 0);
    auto alt_finishes = [&](const std::vector<int32_t>& alt) {
        return std::all_of(alt.begin(), alt.end(), [&](int32_t e) { return e >= 0 || finishes[rule_of(e)]; });
    };
    for (bool changed = true; changed;) {
        changed = false;
        for (size_t r = 0; r < n; r++)
            if (!finishes[r] && std::any_of(g.rules[r].begin(), g.rules[r].end(), alt_finishes)) {
                finishes[r] = 1;
                changed = true;
            }
    }
    if (!finishes[0]) bad("the grammar matches no text: rule " + quoted(g.names, 0) + " can never finish");
    std::vector<std::vector<const std::vector<int32_t>*>> kept(n);
    for (size_t r = 0; r < n; r++)
        for (const auto& alt : g.rules[r])
            if (alt_finishes(alt)) kept[r].push_back(&alt);

    // Left recursion: rule r reaches rule s before matching a byte when s is in an alternative
    // of r after elements that can all match nothing.
    std::vector<uint8_t> empty_ok(n, 0);
    for (bool changed = true; changed;) {
        changed = false;
        for (size_t r = 0; r < n; r++) {
            if (empty_ok[r]) continue;
            for (const auto* alt : kept[r])
                if (std::all_of(alt->begin(), alt->end(), [&](int32_t e) { return e < 0 && empty_ok[rule_of(e)]; })) {
                    empty_ok[r] = 1;
                    changed = true;
                    break;
                }
        }
    }
    std::vector<std::vector<size_t>> first(n);
    for (size_t r = 0; r < n; r++)
        for (const auto* alt : kept[r])
            for (int32_t e : *alt) {
                if (e >= 0) break;
                first[r].push_back(rule_of(e));
                if (!empty_ok[rule_of(e)]) break;
            }
    std::vector<uint8_t> color(n, 0);  // 0 new, 1 on the path, 2 done
    std::vector<std::pair<size_t, size_t>> path;  // (rule, next edge)
    for (size_t start = 0; start < n; start++) {
        if (color[start]) continue;
        path.push_back({start, 0});
        color[start] = 1;
        while (!path.empty()) {
            auto& [r, i] = path.back();
            if (i == first[r].size()) {
                color[r] = 2;
                path.pop_back();
                continue;
            }
            const size_t s = first[r][i++];
            if (color[s] == 1) {
                std::string cycle;
                bool on = false;
                for (const auto& [p, unused] : path) {
                    on = on || p == s;
                    if (on) cycle += g.names[p] + " -> ";
                }
                bad("rule " + quoted(g.names, s) + " is left-recursive (" + cycle + g.names[s] +
                    " before any text): write the repetition on the right, or with * or +");
            }
            if (color[s] == 0) {
                color[s] = 1;
                path.push_back({s, 0});
            }
        }
    }

    alts_.resize(n);
    for (size_t r = 0; r < n; r++)
        for (const auto* alt : kept[r]) {
            alts_[r].push_back(int32_t(code_.size()));
            code_.insert(code_.end(), alt->begin(), alt->end());
            code_.push_back(kEnd);
        }
}

Grammar::Mask Grammar::shared_mask(const std::shared_ptr<const VocabTrie>& trie, const std::string& key) const {
    std::lock_guard<std::mutex> lock(shared_lock_);
    for (const SharedMasks& sm : shared_)
        if (sm.trie.lock() == trie) {
            auto it = sm.masks.find(key);
            return it == sm.masks.end() ? nullptr : it->second;
        }
    return nullptr;
}

void Grammar::share_mask(const std::shared_ptr<const VocabTrie>& trie, const std::string& key, Mask mask) const {
    std::lock_guard<std::mutex> lock(shared_lock_);
    // a vocabulary gone frees its masks
    shared_.erase(std::remove_if(shared_.begin(), shared_.end(), [](const SharedMasks& sm) { return sm.trie.expired(); }),
                  shared_.end());
    SharedMasks* sm = nullptr;
    for (SharedMasks& x : shared_)
        if (x.trie.lock() == trie) sm = &x;
    if (!sm) {
        shared_.push_back({trie, {}});
        sm = &shared_.back();
    }
    if (sm->masks.size() >= kSharedMasks) sm->masks.clear();  // a grammar with that many states: start again
    sm->masks.emplace(key, std::move(mask));
}

// ---------------------------------------------------------------------------------------------
// VocabTrie

VocabTrie::VocabTrie(const Tokenizer& tok) {
    const int32_t V = tok.vocab_size();
    bytes_.resize(size_t(V));
    text_.assign(size_t(V), 1);
    for (int32_t id = 0; id < V; id++) bytes_[size_t(id)] = tok.token_bytes(id);
    for (const auto& [text, id] : tok.specials())
        if (id >= 0 && id < V) text_[size_t(id)] = 0;
    std::vector<int32_t> order;
    for (int32_t id = 0; id < V; id++)
        if (text_[size_t(id)] && !bytes_[size_t(id)].empty()) order.push_back(id);
        else text_[size_t(id)] = 0;
    std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return bytes_[size_t(a)] < bytes_[size_t(b)]; });

    std::vector<int32_t> path;  // the nodes of the previous token's bytes
    const std::string* prev = nullptr;
    for (int32_t id : order) {
        const std::string& s = bytes_[size_t(id)];
        size_t common = 0;
        if (prev)
            while (common < prev->size() && common < s.size() && (*prev)[common] == s[common]) common++;
        while (path.size() > common) {
            end_[size_t(path.back())] = int32_t(byte_.size());
            path.pop_back();
        }
        for (size_t k = common; k < s.size(); k++) {
            path.push_back(int32_t(byte_.size()));
            byte_.push_back(uint8_t(s[k]));
            end_.push_back(0);
            first_token_.push_back(int32_t(tokens_.size()));
        }
        // a token is stored right after its last node is made (equal bytes sort together), so
        // node i's tokens run from first_token_[i] to first_token_[i + 1]
        tokens_.push_back(id);
        max_depth_ = std::max(max_depth_, s.size());
        prev = &s;
    }
    while (!path.empty()) {
        end_[size_t(path.back())] = int32_t(byte_.size());
        path.pop_back();
    }
    first_token_.push_back(int32_t(tokens_.size()));
}

// ---------------------------------------------------------------------------------------------
// FlatMap

void FlatMap::clear() {
    keys_.assign(16, kEmpty);
    values_.assign(16, 0);
    size_ = 0;
    shift_ = 60;
}

size_t FlatMap::slot(uint64_t key) const {
    const size_t mask = keys_.size() - 1;
    size_t i = size_t((key * 0x9E3779B97F4A7C15ull) >> shift_);  // Fibonacci hashing
    while (keys_[i] != kEmpty && keys_[i] != key) i = (i + 1) & mask;
    return i;
}

void FlatMap::grow() {
    std::vector<uint64_t> keys(keys_.size() * 2, kEmpty);
    std::vector<int32_t> values(keys.size(), 0);
    keys.swap(keys_);
    values.swap(values_);
    shift_--;
    for (size_t i = 0; i < keys.size(); i++)
        if (keys[i] != kEmpty) {
            const size_t j = slot(keys[i]);
            keys_[j] = keys[i];
            values_[j] = values[i];
        }
}

int32_t& FlatMap::get(uint64_t key, int32_t fresh, bool* inserted) {
    if ((size_ + 1) * 2 > keys_.size()) grow();
    const size_t i = slot(key);
    *inserted = keys_[i] == kEmpty;
    if (*inserted) {
        keys_[i] = key;
        values_[i] = fresh;
        size_++;
    }
    return values_[i];
}

const int32_t* FlatMap::find(uint64_t key) const {
    const size_t i = slot(key);
    return keys_[i] == kEmpty ? nullptr : &values_[i];
}

// ---------------------------------------------------------------------------------------------
// GrammarMatcher

namespace {
constexpr size_t kKeptMasks = 16;  // the allowed tokens of the last states masked
constexpr size_t kMoveRows = 1024;  // states with a row of moves (1 KB each)
}  // namespace

GrammarMatcher::GrammarMatcher(std::shared_ptr<const Grammar> grammar, std::shared_ptr<const VocabTrie> trie,
                               size_t max_states, bool share_masks)
    : g_(std::move(grammar)), trie_(std::move(trie)), max_states_(std::max<size_t>(max_states, 2)),
      share_masks_(share_masks) {
    if (!g_) throw std::invalid_argument("GrammarMatcher needs a grammar");
    reset();
}

bool GrammarMatcher::too_big() const {
    return info_.size() > max_states_ || nodes_.size() > 16 * max_states_ || moves_.size() > 32 * max_states_;
}

// Drops every node, state and move, and follows the tokens again from the start rule.
void GrammarMatcher::reset() {
    nodes_.clear();
    node_ids_.clear();
    info_.clear();
    state_ids_.clear();
    moves_.clear();
    moves_by_byte_.clear();
    masks_.assign(kKeptMasks, nullptr);
    mask_owner_.assign(kKeptMasks, -1);
    next_mask_ = 0;
    std::vector<int32_t> none;
    state(none);  // kDead
    stacks_.clear();
    for (int32_t a : g_->alternatives(0)) expand(a, kAccept, stacks_);
    std::sort(stacks_.begin(), stacks_.end());
    stacks_.erase(std::unique(stacks_.begin(), stacks_.end()), stacks_.end());
    states_.assign(1, state(stacks_));
    const std::vector<int32_t> tokens = std::move(tokens_);
    tokens_.clear();
    sync(tokens, 0);
}

int32_t GrammarMatcher::intern(int32_t pos, int32_t parent) {
    bool inserted = false;
    const int32_t id = node_ids_.get(key(pos, parent), int32_t(nodes_.size()), &inserted);
    if (inserted) nodes_.push_back({pos, parent});
    return id;
}

// Every stack that (pos, parent) becomes before its next byte: through the ends of
// alternatives (back to the parent) and into the alternatives of rules, onto `out`.
void GrammarMatcher::expand(int32_t pos, int32_t parent, std::vector<int32_t>& out) {
    work_.clear();
    work_.push_back({pos, parent});
    // In an ambiguous grammar (options of options) one place can be reached many ways: past a
    // few places, each is expanded once (small expansions, nearly all, skip the bookkeeping).
    size_t expanded = 0;
    while (!work_.empty()) {
        auto [p, up] = work_.back();
        work_.pop_back();
        if (++expanded > 32) {
            if (expanded == 33) expanded_.clear();
            if (!expanded_.insert(key(p, up)).second) continue;
        }
        bool accepted = false;
        while (g_->code(p) == Grammar::kEnd) {
            if (up == kAccept) {
                accepted = true;
                break;
            }
            p = nodes_[size_t(up)].pos;
            up = nodes_[size_t(up)].parent;
        }
        if (accepted) {
            out.push_back(kAccept);
            continue;
        }
        const int32_t e = g_->code(p);
        if (e >= 0) {
            out.push_back(intern(p, up));
            if (out.size() > kMaxStacks)
                throw std::invalid_argument("the grammar is too ambiguous: over " + std::to_string(kMaxStacks) +
                                            " ways to match the text so far");
            continue;
        }
        // a rule: its alternatives, then what follows it (straight to the parent when it ends
        // its alternative, so repetition written as right recursion keeps stacks short)
        const int32_t next = g_->code(p + 1) == Grammar::kEnd ? up : intern(p + 1, up);
        for (int32_t a : g_->alternatives(-(e + 1))) work_.push_back({a, next});
    }
}

int32_t GrammarMatcher::state(std::vector<int32_t>& stacks) {
    std::string k(reinterpret_cast<const char*>(stacks.data()), stacks.size() * sizeof(int32_t));
    auto [it, fresh] = state_ids_.try_emplace(std::move(k), int32_t(info_.size()));
    if (!fresh) return it->second;
    State st;
    st.first = ByteSet{};
    st.complete = false;
    st.closed = true;
    for (int32_t s : stacks) {
        if (s == kAccept) {
            st.complete = true;
            continue;
        }
        st.closed = false;
        const ByteSet& set = g_->byte_set(g_->code(nodes_[size_t(s)].pos));
        for (size_t w = 0; w < 4; w++) st.first[w] |= set[w];
    }
    st.stacks = stacks;
    info_.push_back(std::move(st));
    return it->second;
}

int32_t GrammarMatcher::step(int32_t from, uint8_t b) {
    if (!((info_[size_t(from)].first[b >> 6] >> (b & 63)) & 1)) return kDead;
    bool inserted = false;
    const uint64_t k = (uint64_t(uint32_t(from)) << 8) | b;
    if (const int32_t* to = moves_.find(k)) return *to;
    stacks_.clear();
    for (size_t i = 0; i < info_[size_t(from)].stacks.size(); i++) {
        const int32_t s = info_[size_t(from)].stacks[i];
        if (s == kAccept) continue;
        const Node n = nodes_[size_t(s)];
        if (g_->holds(g_->code(n.pos), b)) expand(n.pos + 1, n.parent, stacks_);
    }
    std::sort(stacks_.begin(), stacks_.end());
    stacks_.erase(std::unique(stacks_.begin(), stacks_.end()), stacks_.end());
    const int32_t to = state(stacks_);
    moves_.get(k, to, &inserted);
    return to;
}

int32_t GrammarMatcher::step_bytes(int32_t s, std::string_view bytes) {
    for (char c : bytes) {
        s = step(s, uint8_t(c));
        if (s == kDead) break;
    }
    return s;
}

void GrammarMatcher::sync(const std::vector<int32_t>& history, size_t n_prompt) {
    const size_t from = std::min(n_prompt, history.size());
    const size_t n = history.size() - from;
    size_t same = 0;
    while (same < n && same < tokens_.size() && tokens_[same] == history[from + same]) same++;
    tokens_.resize(same);
    states_.resize(same + 1);
    for (size_t k = same; k < n; k++) {
        const int32_t t = history[from + k];
        // a special token (or one past the tokenizer) is no text
        const int32_t next = trie_ && trie_->is_text(t) ? step_bytes(states_.back(), trie_->bytes(t)) : kDead;
        tokens_.push_back(t);
        states_.push_back(next);
    }
}

void GrammarMatcher::walk(int32_t begin, int32_t end, int32_t s, uint64_t* allowed) {
    const ByteSet first = info_[size_t(s)].first;
    if (info_[size_t(s)].moves < 0 && moves_by_byte_.size() < kMoveRows) {
        info_[size_t(s)].moves = int32_t(moves_by_byte_.size());
        moves_by_byte_.push_back(std::make_unique<std::array<int32_t, 256>>());
        moves_by_byte_.back()->fill(kUnknown);
    }
    // (rows never move: a walk below may add rows, and info_ may grow)
    int32_t* row = info_[size_t(s)].moves >= 0 ? moves_by_byte_[size_t(info_[size_t(s)].moves)]->data() : nullptr;
    for (int32_t i = begin; i < end; i = trie_->end(i)) {
        const uint8_t b = trie_->byte(i);
        if (!((first[b >> 6] >> (b & 63)) & 1)) continue;
        int32_t next = row ? row[b] : kUnknown;
        if (next == kUnknown) {
            next = step(s, b);
            if (row) row[b] = next;
        }
        if (next == kDead) continue;
        for (const int32_t* t = trie_->tokens_begin(i); t != trie_->tokens_end(i); t++)
            allowed[*t >> 6] |= uint64_t(1) << (*t & 63);
        if (i + 1 < trie_->end(i)) walk(i + 1, trie_->end(i), next, allowed);
    }
}

void GrammarMatcher::mask(float* scores, int64_t V, const std::vector<int32_t>& end_tokens) {
    if (!trie_) throw std::invalid_argument("GrammarMatcher::mask needs the vocabulary");
    if (too_big()) reset();
    const int32_t s = states_.back();
    if (info_[size_t(s)].mask < 0) {
        const size_t slot = next_mask_;
        next_mask_ = (next_mask_ + 1) % kKeptMasks;
        if (mask_owner_[slot] >= 0) info_[size_t(mask_owner_[slot])].mask = -1;
        const std::string key = share_masks_ ? canonical_key(s) : std::string();
        Grammar::Mask m = share_masks_ ? g_->shared_mask(trie_, key) : nullptr;
        if (!m) {
            auto bits = std::make_shared<std::vector<uint64_t>>((size_t(trie_->vocab_size()) + 63) / 64, 0);
            walk(0, trie_->n_nodes(), s, bits->data());
            m = std::move(bits);
            if (share_masks_) g_->share_mask(trie_, key, m);
        }
        masks_[slot] = std::move(m);
        mask_owner_[slot] = s;
        info_[size_t(s)].mask = int32_t(slot);
    }
    // the end tokens end the text: allowed where it is a whole match, whatever their bytes
    end_scores_.clear();
    for (int32_t t : end_tokens)
        if (t >= 0 && t < V) end_scores_.push_back(complete() ? scores[t] : kNegInf);
    const uint64_t* allowed = masks_[size_t(info_[size_t(s)].mask)]->data();
    const int64_t n = std::min<int64_t>(V, trie_->vocab_size());
    for (int64_t i = 0; i < n; i++)
        if (!((allowed[i >> 6] >> (i & 63)) & 1)) scores[i] = kNegInf;
    for (int64_t i = n; i < V; i++) scores[i] = kNegInf;
    size_t k = 0;
    for (int32_t t : end_tokens)
        if (t >= 0 && t < V) scores[t] = end_scores_[k++];
}

// A state by what its stacks hold (the places from top to bottom), the same in every matcher of
// the grammar: the key of the masks they share. Node and state ids are each matcher's own.
std::string GrammarMatcher::canonical_key(int32_t state) const {
    std::vector<std::vector<int32_t>> stacks;
    for (int32_t top : info_[size_t(state)].stacks) {
        std::vector<int32_t> places;
        for (int32_t n = top; n != kAccept; n = nodes_[size_t(n)].parent) places.push_back(nodes_[size_t(n)].pos);
        places.push_back(-1);  // an accepting stack is the empty list
        stacks.push_back(std::move(places));
    }
    std::sort(stacks.begin(), stacks.end());
    std::string key;
    for (const auto& places : stacks) key.append(reinterpret_cast<const char*>(places.data()), places.size() * 4);
    return key;
}

bool GrammarMatcher::allows(int32_t token, const std::vector<int32_t>& end_tokens) {
    if (std::find(end_tokens.begin(), end_tokens.end(), token) != end_tokens.end()) return complete();
    if (!trie_ || !trie_->is_text(token)) return false;
    if (too_big()) reset();
    return step_bytes(states_.back(), trie_->bytes(token)) != kDead;
}

bool GrammarMatcher::closes_with(int32_t token) {
    if (!trie_ || !trie_->is_text(token)) return false;
    if (too_big()) reset();
    const int32_t s = step_bytes(states_.back(), trie_->bytes(token));
    return s != kDead && info_[size_t(s)].closed;
}

bool GrammarMatcher::matches(std::string_view bytes) {
    const int32_t s = step_bytes(states_[0], bytes);
    return info_[size_t(s)].complete;
}

bool GrammarMatcher::viable(std::string_view bytes) { return step_bytes(states_[0], bytes) != kDead; }

}  // namespace pygpt
