// Beam search (see beam_search.h): prefill, then one batched forward call per step for every
// running beam of every prompt still searching.
#include "beam_search.h"

#include <algorithm>
#include <cmath>
#include <exception>
#include <limits>
#include <stdexcept>
#include <string_view>

#include <omp.h>

namespace pygpt {

struct BeamSearch::Beam {
    std::unique_ptr<KVCache> cache;
    std::vector<int32_t> history;     // prompt, then generated tokens
    float score = 0.0f;               // sum of its processed log-probs (float, as transformers)
    size_t n_prompt = 0;
    size_t prompt_index = 0;          // its group's
    std::vector<float> logprobs;      // raw log-prob of each generated token (with logprobs)
    std::vector<TopLogprobs> top;     // and the most likely tokens at each (with top_logprobs)
    std::string bytes;                // its generated text so far (with a tokenizer)
    int32_t next_input = -1;          // the token the next decode step feeds
    TopLogprobs row_top;              // this step's most likely tokens (score_row)
};

struct BeamSearch::Candidate {
    float score;    // the parent's score + this token's processed log-prob
    int32_t beam;   // the parent: its index among the group's running beams
    int32_t token;
    float logprob;  // raw log-prob of the token
    bool closes = false;  // with a grammar: no byte could follow it
};

namespace {

// A dropped beam's cache, kept for a later copy: the tokens it ran (the copy skips their
// common prefix with the beam copied).
struct Spare {
    std::unique_ptr<KVCache> cache;
    std::vector<int32_t> tokens;
};

}  // namespace

struct BeamSearch::Group {
    size_t prompt_index = 0;
    size_t n_prompt = 0;
    int64_t max_len = 0;                             // prompt + generated stops here
    std::vector<std::unique_ptr<Beam>> beams;        // running, best first
    std::vector<SequenceResult> finished;            // best first, at most num_beams
    std::vector<Spare> spare;                        // caches of dropped beams, reused
    bool improvable = true;  // a running beam may still beat the worst finished one
    bool live = true;
    SequenceResult prompt_part;                      // prompt log-probs (echo + logprobs)
};

namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// The indices of the k largest finite values of s[0 : n], largest first (ties: lower index
// first), in one pass: a value enters only when it beats the k-th best so far.
void top_k_finite(const float* s, int64_t n, int64_t k, std::vector<int32_t>& top) {
    top.clear();
    for (int64_t i = 0; i < n; i++) {
        const float x = s[i];
        if (!(x > kNegInf) || (int64_t(top.size()) == k && !(x > s[top.back()]))) continue;
        const auto at = std::upper_bound(top.begin(), top.end(), x, [s](float v, int32_t j) { return v > s[j]; });
        top.insert(at, int32_t(i));
        if (int64_t(top.size()) > k) top.pop_back();
    }
}

int64_t common_prefix(const std::vector<int32_t>& a, const std::vector<int32_t>& b) {
    const size_t n = std::min(a.size(), b.size());
    return int64_t(std::mismatch(a.begin(), a.begin() + int64_t(n), b.begin()).first - a.begin());
}

bool better(float a_score, int32_t a_beam, int32_t a_token, float b_score, int32_t b_beam, int32_t b_token) {
    if (a_score != b_score) return a_score > b_score;
    if (a_beam != b_beam) return a_beam < b_beam;
    return a_token < b_token;
}

}  // namespace

BeamSearch::BeamSearch(Model& model, const Tokenizer* tokenizer, std::vector<std::vector<int32_t>> prompts,
                       GenerateOptions options)
    : model_(model), tok_(tokenizer), opt_(std::move(options)) {
    V_ = model_.config().vocab_size;
    n_ctx_ = model_.config().n_ctx;
    check_request(model_, tok_, prompts, opt_);
    ends_ = end_tokens(tok_, opt_);
    for (const auto& s : opt_.stop) max_stop_ = std::max(max_stop_, s.size());
    opt_.sampling.min_new_tokens = opt_.min_new_tokens;
    opt_.sampling.end_tokens = ends_;
    K_ = std::max<int64_t>(2, 1 + int64_t(ends_.size())) * opt_.num_beams;

    healing_.resize(prompts.size());
    for (size_t p = 0; p < opt_.heal.size(); p++) healing_[p] = healing_tokens(*tok_, opt_.heal[p], V_);
    for (size_t p = 0; p < prompts.size(); p++) {
        auto g = std::make_unique<Group>();
        g->prompt_index = p;
        g->n_prompt = prompts[p].size();
        g->max_len = std::min(int64_t(g->n_prompt) + std::min(opt_.max_new_tokens, n_ctx_), n_ctx_);
        auto b = std::make_unique<Beam>();
        b->history = std::move(prompts[p]);
        b->n_prompt = g->n_prompt;
        b->prompt_index = p;
        g->beams.push_back(std::move(b));
        groups_.push_back(std::move(g));
        for (int64_t k = 0; k < opt_.num_return_sequences; k++) {
            results_.emplace_back();
            results_.back().prompt_index = p;
        }
    }
    untaken_.resize(results_.size());
    n_live_ = groups_.size();
    const int n_threads = std::max(1, model_.n_threads());
    for (int t = 0; t < n_threads; t++) samplers_.emplace_back(opt_.sampling, V_, 0, uint64_t(t), model_.kernels());
    work_.resize(size_t(n_threads));
    idx_.resize(size_t(n_threads));
}

BeamSearch::~BeamSearch() = default;

const SequenceResult& BeamSearch::result(size_t i) const {
    if (i >= results_.size()) throw std::out_of_range("sequence index out of range");
    return results_[i];
}

std::string BeamSearch::take_text(size_t i) {
    if (i >= results_.size()) throw std::out_of_range("sequence index out of range");
    std::string out;
    out.swap(untaken_[i]);
    return out;
}

void BeamSearch::prefill() {
    const auto t0 = std::chrono::steady_clock::now();
    std::vector<SeqStep> steps;
    for (auto& g : groups_) {
        Beam& b = *g->beams[0];
        b.cache = model_.new_cache();
        steps.push_back({b.cache.get(), b.history.data(), int64_t(b.history.size()), opt_.prompt_logprobs});
        timings_.prefill_tokens += int64_t(b.history.size());
    }
    const std::vector<const float*> first_rows = forward_rows(model_, steps, logits_);

    std::vector<Beam*> beams;
    std::vector<const float*> rows;
    for (size_t p = 0; p < groups_.size(); p++) {
        Group* g = groups_[p].get();
        Beam& b = *g->beams[0];
        const int64_t len = int64_t(g->n_prompt);
        if (opt_.prompt_logprobs)
            add_prompt_logprobs(first_rows[p], b.history.data(), b.history.size(), V_, opt_.top_logprobs,
                                g->prompt_part, idx_[0]);
        const float* last = first_rows[p] + (opt_.prompt_logprobs ? len - 1 : 0) * V_;
        if (g->max_len <= len) {  // no room for a token: empty sequences
            for (int64_t k = 0; k < opt_.num_return_sequences; k++) {
                SequenceResult r;
                r.prompt_index = g->prompt_index;
                r.finish_reason = "length";
                r.has_score = true;
                g->finished.push_back(r);
            }
            finish(*g);
            continue;
        }
        beams.push_back(&b);
        rows.push_back(last);
    }
    advance(beams, rows);
    timings_.prefill_seconds = seconds_since(t0);
    timings_.first_token_seconds = seconds_since(t_start_);
}

void BeamSearch::decode() {
    const auto t0 = std::chrono::steady_clock::now();
    std::vector<Beam*> beams;
    std::vector<std::pair<KVCache*, const int32_t*>> next;
    for (auto& g : groups_) {
        if (!g->live) continue;
        for (auto& b : g->beams) {
            beams.push_back(b.get());
            next.emplace_back(b->cache.get(), &b->next_input);
        }
    }
    advance(beams, decode_step(model_, next, logits_));
    timings_.decode_tokens += int64_t(beams.size());
    timings_.decode_seconds += seconds_since(t0);
}

// One step of every live group: beams (the live groups' running beams, group by group) and
// their logits rows. Rows are scored in parallel (each on its thread's processors: the result
// does not depend on the thread count; the caller's processor, Python, runs on this thread),
// then each group selects its next beams in order.
void BeamSearch::advance(const std::vector<Beam*>& beams, const std::vector<const float*>& rows) {
    const int64_t B = int64_t(beams.size());
    std::vector<std::vector<Candidate>> per_row(static_cast<size_t>(B));
    std::exception_ptr error;
    const bool hooks = opt_.has_hooks();
#pragma omp parallel for if (!hooks) \
    num_threads(std::max<int64_t>(1, std::min<int64_t>(B, int64_t(samplers_.size())))) schedule(static, 1)
    for (int64_t b = 0; b < B; b++) {
        try {
            score_row(*beams[b], rows[b], per_row[b], omp_get_thread_num());
        } catch (...) {
#pragma omp critical
            if (!error) error = std::current_exception();
        }
    }
    if (error) std::rethrow_exception(error);

    size_t r = 0;
    for (auto& g : groups_) {
        if (!g->live) continue;
        if (r >= beams.size() || beams[r] != g->beams[0].get())  // never: rows come group by group
            throw std::logic_error("beam search: logits rows out of step with the beams");
        std::vector<Candidate> candidates;
        for (size_t j = 0; j < g->beams.size(); j++, r++) {
            for (Candidate c : per_row[r]) {
                c.beam = int32_t(j);
                candidates.push_back(c);
            }
        }
        select(*g, candidates);
    }
}

// The K best candidates of one beam (finite scores only): processed log-probs plus its score.
void BeamSearch::score_row(Beam& beam, const float* row, std::vector<Candidate>& out, int thread) {
    const double lse = log_sum_exp(row, V_);
    std::vector<float>& s = work_[size_t(thread)];
    s.resize(size_t(V_));
    for (int64_t i = 0; i < V_; i++) s[i] = float(double(row[i]) - lse);
    samplers_[size_t(thread)].process(s.data(), beam.history, beam.n_prompt);
    if (opt_.logits_hook) opt_.logits_hook(beam.prompt_index, beam.history, s.data());
    if (healing_[beam.prompt_index] && beam.history.size() == beam.n_prompt)
        keep_allowed(s.data(), *healing_[beam.prompt_index]);

    std::vector<int32_t>& idx = idx_[size_t(thread)];
    top_k_finite(s.data(), V_, K_, idx);  // NaN is never taken
    out.clear();
    for (int32_t t : idx) {
        out.push_back({beam.score + s[t], 0, t, float(double(row[t]) - lse)});
        out.back().closes = samplers_[size_t(thread)].grammar_closes_with(beam.history, beam.n_prompt, t);
    }
    if (opt_.top_logprobs > 0) beam.row_top = top_logprobs(row, V_, opt_.top_logprobs, lse, idx);
}

// The bytes `token` adds to beam's text (before it joins the beam's history).
std::string_view BeamSearch::piece(const Beam& beam, int32_t token) const {
    return text_bytes(*tok_, token, beam.history.size() == beam.n_prompt, opt_, beam.prompt_index);
}

// One step of group g from its candidates: new finished hypotheses, the next running beams
// (KV caches forked or handed down), and whether the search of g is over.
void BeamSearch::select(Group& g, std::vector<Candidate>& candidates) {
    std::sort(candidates.begin(), candidates.end(), [](const Candidate& a, const Candidate& b) {
        return better(a.score, a.beam, a.token, b.score, b.beam, b.token);
    });
    if (candidates.size() > size_t(K_)) candidates.resize(size_t(K_));
    if (candidates.empty()) throw std::invalid_argument("every token was filtered out: nothing left to generate");

    const size_t N = size_t(opt_.num_beams);
    const int64_t cur_len = int64_t(g.beams[0]->history.size());
    const int64_t gen_len = cur_len + 1 - int64_t(g.n_prompt);  // of a candidate
    const bool at_limit = cur_len + 1 >= g.max_len || (opt_.max_time > 0.0 && seconds_since(t_start_) >= opt_.max_time);
    const bool may_finish = g.improvable && !(opt_.early_stopping == EarlyStopping::WhenFull && g.finished.size() == N);
    std::vector<const Candidate*> next;
    for (size_t i = 0; i < candidates.size(); i++) {
        const Candidate& c = candidates[i];
        std::string text;  // the candidate's text when it ends (cut before a stop string)
        StopCause stop;    // and the stop token or string that ended it
        const char* reason = ending(*g.beams[size_t(c.beam)], c, at_limit, text, stop);
        if (!reason) {
            if (next.size() < N) next.push_back(&c);
        } else if (i < N && may_finish) {
            add_finished(g, c, gen_len, reason, std::move(text), std::move(stop));
        }
    }

    // the next beams: a parent's first child takes its beam (cache included), the others copy it
    std::vector<std::unique_ptr<Beam>> parents = std::move(g.beams);
    std::vector<int> first_child(parents.size(), -1);
    g.beams.clear();
    for (const Candidate* c : next) {
        std::unique_ptr<Beam> child;
        if (first_child[c->beam] < 0) {
            first_child[c->beam] = int(g.beams.size());
            child = std::move(parents[c->beam]);
        } else {
            const Beam& twin = *g.beams[first_child[c->beam]];
            child = std::make_unique<Beam>();
            child->history = twin.history;
            child->bytes = twin.bytes;
            child->n_prompt = twin.n_prompt;
            child->prompt_index = twin.prompt_index;
            child->logprobs = twin.logprobs;
            child->top = twin.top;
            child->row_top = twin.row_top;
            int64_t same = 0;  // positions the cache already holds as the twin's
            if (!g.spare.empty()) {
                size_t best = 0;
                for (size_t i = 0; i < g.spare.size(); i++) {
                    const int64_t n = common_prefix(g.spare[i].tokens, twin.history);
                    if (n > same) same = n, best = i;
                }
                child->cache = std::move(g.spare[best].cache);
                g.spare.erase(g.spare.begin() + int64_t(best));
            } else {
                child->cache = model_.new_cache();
            }
            child->cache->copy_from(*twin.cache, same);
        }
        g.beams.push_back(std::move(child));
    }
    for (auto& p : parents)
        if (p) g.spare.push_back({std::move(p->cache), std::move(p->history)});
    for (size_t i = 0; i < next.size(); i++) {
        Beam& b = *g.beams[i];
        if (tok_ && next[i]->token < tok_->vocab_size()) b.bytes += piece(b, next[i]->token);
        b.history.push_back(next[i]->token);
        b.score = next[i]->score;
        if (opt_.logprobs) {
            b.logprobs.push_back(next[i]->logprob);
            if (opt_.top_logprobs > 0) b.top.push_back(b.row_top);
        }
        b.next_input = next[i]->token;
    }

    // can a running beam still beat the worst finished hypothesis? (transformers' heuristic)
    if (g.improvable && g.finished.size() == N && !g.beams.empty()) {
        const bool longest = opt_.early_stopping == EarlyStopping::Never && opt_.length_penalty > 0.0;
        const int64_t best_len = longest ? g.max_len - int64_t(g.n_prompt) : gen_len;
        const float best = float(double(g.beams[0]->score) / std::pow(double(best_len), opt_.length_penalty));
        if (!(best > g.finished.back().score)) g.improvable = false;
    }
    const bool full = g.finished.size() == N;
    if (!g.improvable || (opt_.early_stopping == EarlyStopping::WhenFull && full) || g.beams.empty()) finish(g);
}

// Why `token` after `beam` ends the sequence, as Generation decides it (a stop token, eos, a
// stop string in the generated text, the length limit), or null if it does not; `text` then
// gets the sequence's text bytes (without the end token, cut before the stop string, or after
// it with include_stop_str_in_output), and `stop` the stop token or string that ended it.
const char* BeamSearch::ending(const Beam& beam, const Candidate& c, bool at_limit, std::string& text,
                               StopCause& stop) const {
    const int32_t token = c.token;
    if (std::find(opt_.stop_token_ids.begin(), opt_.stop_token_ids.end(), token) != opt_.stop_token_ids.end()) {
        text = beam.bytes;
        stop.token = token;
        return "stop";
    }
    if (tok_ && !opt_.ignore_eos && token == tok_->eot_id()) {
        text = beam.bytes;
        return "eos";
    }
    const std::string_view piece = tok_ && token < tok_->vocab_size() ? this->piece(beam, token) : std::string_view();
    if (!opt_.stop.empty()) {
        // a stop string the new bytes complete starts at most max_stop_ - 1 bytes before them
        const size_t old = beam.bytes.size();
        const size_t from = old + 1 > max_stop_ ? old + 1 - max_stop_ : 0;
        const std::string tail = beam.bytes.substr(from).append(piece);
        const std::string* which = nullptr;
        const size_t hit = find_stop(opt_.stop, tail, 0, &which);
        if (hit != std::string::npos) {
            const size_t end = hit + (opt_.include_stop_str_in_output ? which->size() : 0);
            text = beam.bytes.substr(0, from) + tail.substr(0, end);
            stop.string = *which;
            return "stop";
        }
    }
    if (c.closes) {  // the grammar is matched whole and nothing can extend it
        text = beam.bytes;
        text += piece;
        return "stop";
    }
    if (at_limit) {
        text = beam.bytes;
        text += piece;
        return "length";
    }
    return nullptr;
}

// Candidate c of group g ends here (`reason`, with its text bytes): kept among the num_beams
// best finished hypotheses if its normalised score makes it.
void BeamSearch::add_finished(Group& g, const Candidate& c, int64_t gen_len, const char* reason, std::string text,
                              StopCause stop) {
    const float score = float(double(c.score) / std::pow(double(gen_len), opt_.length_penalty));
    const size_t N = size_t(opt_.num_beams);
    if (g.finished.size() == N && !(score > g.finished.back().score)) return;
    const Beam& parent = *g.beams[size_t(c.beam)];
    SequenceResult h;
    h.prompt_index = g.prompt_index;
    h.tokens.assign(parent.history.begin() + int64_t(g.n_prompt), parent.history.end());
    h.tokens.push_back(c.token);
    if (opt_.logprobs) {
        h.logprobs = parent.logprobs;
        h.logprobs.push_back(c.logprob);
        if (opt_.top_logprobs > 0) {
            h.top_logprobs = parent.top;
            h.top_logprobs.push_back(parent.row_top);
        }
    }
    h.finish_reason = reason;
    h.stop = std::move(stop);
    h.text = std::move(text);  // bytes, made valid UTF-8 by finish()
    h.has_score = true;
    h.score = score;
    auto at = std::upper_bound(g.finished.begin(), g.finished.end(), score,
                               [](float s, const SequenceResult& r) { return s > r.score; });
    g.finished.insert(at, std::move(h));
    if (g.finished.size() > N) g.finished.pop_back();
}

// Group g is done: its best hypotheses become its results (with their text), its caches go.
void BeamSearch::finish(Group& g) {
    g.live = false;
    n_live_--;
    g.beams.clear();
    g.spare.clear();
    const size_t n = size_t(opt_.num_return_sequences);
    if (g.finished.size() < n)
        throw std::invalid_argument("beam search found " + std::to_string(g.finished.size()) +
                                    " sequences for prompt " + std::to_string(g.prompt_index) + ", fewer than " +
                                    "num_return_sequences: too many tokens are filtered out");
    for (size_t k = 0; k < n; k++) {
        SequenceResult& r = results_[g.prompt_index * n + k];
        r = std::move(g.finished[k]);
        r.prompt_logprobs = g.prompt_part.prompt_logprobs;
        r.prompt_top_logprobs = g.prompt_part.prompt_top_logprobs;
        if (!tok_) continue;
        const std::string bytes = std::move(r.text);
        r.text.clear();
        utf8_replace(bytes, r.text, true);
        untaken_[g.prompt_index * n + k] = r.text;
    }
    g.finished.clear();
}

}  // namespace pygpt
