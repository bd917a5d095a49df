// Logits processors and the token draw. See sampler.h for the order and the transformers
// processor each step mirrors.
#include "sampler.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <string>
#include <set>
#include <unordered_set>

namespace pygpt {

namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// splitmix64 (Vigna): a 64-bit mixer, used to expand a seed into a full generator state.
uint64_t splitmix64(uint64_t& x) {
    uint64_t z = (x += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

std::string str(double v) { return std::to_string(v); }

}  // namespace

// ---------------------------------------------------------------------------------------------
// Rng

Rng::Rng(uint64_t seed, uint64_t stream) {
    // key = mix(seed) ^ stream, then four splitmix64 outputs: distinct (seed, stream) pairs get
    // unrelated states, and the state is never all zero in practice.
    uint64_t x = seed;
    uint64_t key = splitmix64(x) ^ stream;
    for (auto& w : s_) w = splitmix64(key);
}

uint64_t Rng::next_u64() {
    // xoshiro256** 1.0
    const uint64_t result = rotl(s_[1] * 5, 7) * 9;
    const uint64_t t = s_[1] << 17;
    s_[2] ^= s_[0];
    s_[3] ^= s_[1];
    s_[1] ^= s_[2];
    s_[0] ^= s_[3];
    s_[2] ^= t;
    s_[3] = rotl(s_[3], 45);
    return result;
}

double Rng::uniform() { return double(next_u64() >> 11) * 0x1.0p-53; }

// ---------------------------------------------------------------------------------------------
// SamplingParams

void SamplingParams::validate(int64_t vocab_size) const {
    auto bad = [](const std::string& what) { throw std::invalid_argument(what); };
    if (!(temperature >= 0.0f) || !std::isfinite(temperature))
        bad("temperature must be a finite number >= 0 (0 = greedy), got " + str(temperature));
    if (top_k < 0) bad("top_k must be >= 0 (0 = off), got " + std::to_string(top_k));
    if (!(top_p >= 0.0 && top_p <= 1.0)) bad("top_p must be in [0, 1], got " + str(top_p));
    if (!(min_p >= 0.0 && min_p <= 1.0)) bad("min_p must be in [0, 1], got " + str(min_p));
    if (!(typical_p > 0.0 && typical_p <= 1.0)) bad("typical_p must be in (0, 1], got " + str(typical_p));
    if (std::isnan(top_n_sigma) || std::isinf(top_n_sigma))
        bad("top_n_sigma must be a finite number (< 0 = off), got " + str(top_n_sigma));
    if (!(epsilon_cutoff >= 0.0 && epsilon_cutoff < 1.0))
        bad("epsilon_cutoff must be in [0, 1) (0 = off), got " + str(epsilon_cutoff));
    if (!(eta_cutoff >= 0.0 && eta_cutoff < 1.0)) bad("eta_cutoff must be in [0, 1) (0 = off), got " + str(eta_cutoff));
    if (!(xtc_probability >= 0.0 && xtc_probability <= 1.0))
        bad("xtc_probability must be in [0, 1] (0 = off), got " + str(xtc_probability));
    if (!(xtc_threshold >= 0.0 && xtc_threshold <= 1.0)) bad("xtc_threshold must be in [0, 1], got " + str(xtc_threshold));
    if (!(dry_multiplier >= 0.0) || std::isinf(dry_multiplier)) bad("dry_multiplier must be a finite number >= 0 (0 = off)");
    if (!(dry_base > 1.0) || std::isinf(dry_base)) bad("dry_base must be a finite number > 1, got " + str(dry_base));
    if (dry_allowed_length < 1) bad("dry_allowed_length must be >= 1, got " + std::to_string(dry_allowed_length));
    if (dry_penalty_last_n < -1 || dry_penalty_last_n == 0)
        bad("dry_penalty_last_n must be >= 1, or -1 for the whole sequence, got " + std::to_string(dry_penalty_last_n));
    for (int32_t id : dry_sequence_breakers)
        if (id < 0 || id >= vocab_size) bad("dry sequence breaker id " + std::to_string(id) + " is outside the vocabulary");
    if (mirostat < 0 || mirostat > 2) bad("mirostat must be 0 (off), 1 or 2, got " + std::to_string(mirostat));
    if (!(mirostat_tau >= 0.0) || std::isinf(mirostat_tau)) bad("mirostat_tau must be a finite number >= 0");
    if (!(mirostat_eta >= 0.0) || std::isinf(mirostat_eta)) bad("mirostat_eta must be a finite number >= 0");
    if (mirostat != 0 && truncates())
        bad("mirostat chooses the tokens to keep itself: it does not go with top_k, top_p, min_p, typical_p, "
            "top_n_sigma, epsilon_cutoff, eta_cutoff or xtc");
    if (mirostat != 0 && temperature == 0.0f) bad("mirostat samples: temperature must be > 0");
    if (decay_start < 0) bad("exponential_decay_length_penalty: the start must be >= 0");
    if (!(decay_factor > 0.0) || std::isinf(decay_factor))
        bad("exponential_decay_length_penalty: the factor must be a finite number > 0 (1 = off), got " + str(decay_factor));
    if (!(dynatemp_range >= 0.0) || std::isinf(dynatemp_range))
        bad("dynatemp_range must be a finite number >= 0 (0 = off), got " + str(dynatemp_range));
    if (!(dynatemp_exponent >= 0.0) || std::isinf(dynatemp_exponent))
        bad("dynatemp_exponent must be a finite number >= 0, got " + str(dynatemp_exponent));
    if (mirostat != 0 && dynatemp()) bad("mirostat does not go with dynatemp_range: it follows its own target");
    if (!(repetition_penalty > 0.0f) || !std::isfinite(repetition_penalty))
        bad("repetition_penalty must be a finite number > 0 (1 = off), got " + str(repetition_penalty));
    if (!std::isfinite(presence_penalty)) bad("presence_penalty must be finite");
    if (!std::isfinite(frequency_penalty)) bad("frequency_penalty must be finite");
    if (no_repeat_ngram_size < 0)
        bad("no_repeat_ngram_size must be >= 0 (0 = off), got " + std::to_string(no_repeat_ngram_size));
    std::set<std::vector<int32_t>> seen_sequences;
    for (const auto& [tokens, bias] : sequence_bias) {
        if (tokens.empty()) bad("sequence_bias: a sequence must have at least one token");
        for (int32_t id : tokens)
            if (id < 0 || id >= vocab_size)
                bad("sequence_bias token id " + std::to_string(id) + " is outside the vocabulary [0, " +
                    std::to_string(vocab_size) + ")");
        if (std::isnan(bias) || bias == std::numeric_limits<float>::infinity())
            bad("sequence_bias: a bias must be a number or -inf");
        if (!seen_sequences.insert(tokens).second) bad("sequence_bias lists a sequence twice");
    }
    if (grammar && !grammar_vocab) bad("a grammar needs the tokenizer's vocabulary (grammar_vocab)");
    if (min_new_tokens < 0) bad("min_new_tokens must be >= 0, got " + std::to_string(min_new_tokens));
    for (int32_t id : end_tokens)
        if (id < 0 || id >= vocab_size) bad("end token id " + std::to_string(id) + " is outside the vocabulary");
    std::unordered_set<int32_t> seen;
    for (const auto& [id, bias] : logit_bias) {
        if (id < 0 || id >= vocab_size)
            bad("logit_bias token id " + std::to_string(id) + " is outside the vocabulary [0, " +
                std::to_string(vocab_size) + ")");
        if (std::isnan(bias) || bias == std::numeric_limits<float>::infinity())
            bad("logit_bias for token " + std::to_string(id) + " must be a number or -inf");
        if (!seen.insert(id).second) bad("logit_bias lists token " + std::to_string(id) + " twice");
    }
}

// ---------------------------------------------------------------------------------------------
// Sampler

Sampler::Sampler(const SamplingParams& params, int64_t vocab_size, uint64_t seed, uint64_t stream,
                 const Kernels& kernels)
    : params_(params), V_(vocab_size), argmax_(kernels.argmax), rng_(seed, stream) {
    params_.validate(vocab_size);
    if (params_.penalises_repeats() || params_.penalises_counts()) counts_.assign(size_t(V_), 0);
    if (params_.grammar) grammar_.emplace(params_.grammar, params_.grammar_vocab);
    if (params_.dry()) {
        breaker_.assign(size_t(V_), 0);
        for (int32_t t : params_.dry_sequence_breakers) breaker_[size_t(t)] = 1;
        dry_len_.assign(size_t(V_), 0);
    }
}

void Sampler::check_history(const std::vector<int32_t>& history) const {
    for (int32_t t : history)
        if (t < 0 || t >= V_) throw std::invalid_argument("token id " + std::to_string(t) + " is outside the vocabulary");
}

// A tiny temperature (or a huge bias) can overflow a score to +inf, and inf - inf is NaN in every
// softmax: cap at the largest float, which keeps the order.
static void cap_infinities(float* s, int64_t n) {
    for (int64_t i = 0; i < n; i++)
        if (s[i] == std::numeric_limits<float>::infinity()) s[i] = std::numeric_limits<float>::max();
}

void keep_allowed(float* s, const std::vector<uint8_t>& allowed) {
    for (size_t i = 0; i < allowed.size(); i++)
        if (!allowed[i]) s[i] = kNegInf;
}

void Sampler::process(float* s, const std::vector<int32_t>& history, size_t n_prompt, bool with_grammar) {
    have_weights_ = false;
    check_history(history);
    apply_penalties(s, history, std::min(n_prompt, history.size()));
    if (params_.dry()) penalise_repeats_dry(s, history);
    if (params_.bans_ngrams()) ban_repeated_ngrams(s, history);
    if (params_.delays_the_end() && history.size() < n_prompt + size_t(params_.min_new_tokens))
        for (int32_t id : params_.end_tokens) s[id] = kNegInf;
    if (params_.decays_length()) {
        const size_t n = n_generated(history, n_prompt);
        if (n > size_t(params_.decay_start)) {
            // in float, as transformers computes it on float32 scores
            const float k = float(std::pow(params_.decay_factor, double(n - size_t(params_.decay_start))) - 1);
            for (int32_t id : params_.end_tokens) s[id] += std::abs(s[id]) * k;
        }
    }
    if (grammar_ && with_grammar) {
        grammar_->sync(history, n_prompt);
        grammar_->mask(s, V_, params_.end_tokens);
    }
    if (params_.custom) params_.custom(history, s);
    if (heals(history, n_prompt)) keep_allowed(s, *params_.first_allowed);
    if (params_.greedy()) return;  // the filters below only shape a random draw

    if (params_.temperature != 1.0f && !params_.dynatemp())
        for (int64_t i = 0; i < V_; i++) s[i] /= params_.temperature;
    cap_infinities(s, V_);
    if (params_.mirostat != 0) {
        keep_mirostat(s, n_generated(history, n_prompt));
        return;
    }
    if (params_.top_n_sigma >= 0.0) keep_top_n_sigma(s);
    if (params_.top_k > 0) keep_top_k(s);
    if (params_.top_p < 1.0 || params_.min_p > 0.0 || params_.typical_p < 1.0 || params_.epsilon_cutoff > 0.0 ||
        params_.eta_cutoff > 0.0 || params_.xtc_probability > 0.0)
        compute_weights(s);
    if (params_.top_p < 1.0) keep_top_p(s);
    if (params_.min_p > 0.0) keep_min_p(s);
    if (params_.typical_p < 1.0) keep_typical(s);
    if (params_.epsilon_cutoff > 0.0) keep_epsilon(s);
    if (params_.eta_cutoff > 0.0) keep_eta(s);
    if (params_.xtc_probability > 0.0) exclude_top_choices(s);
    if (params_.dynatemp()) scale_by_entropy(s);
}

// llama.cpp's dynamic temperature over the tokens kept: T = lo + (hi - lo) * (H / log n)^e,
// lo = max(0, temperature - range), hi = temperature + range, H the entropy of the kept
// tokens' distribution and n their number; then s /= T (shifted by the largest score, which
// the distribution does not see). Nothing changes with one token kept.
void Sampler::scale_by_entropy(float* s) {
    if (!have_weights_) compute_weights(s);
    double Z = 0.0;
    int64_t n = 0;
    for (int64_t i = 0; i < V_; i++)
        if (w_[i] > 0.0) Z += w_[i], n++;
    if (n <= 1) return;
    double H = 0.0;
    for (int64_t i = 0; i < V_; i++)
        if (w_[i] > 0.0) H -= w_[i] / Z * std::log(w_[i] / Z);
    const double lo = std::max(0.0, double(params_.temperature) - params_.dynatemp_range);
    const double hi = double(params_.temperature) + params_.dynatemp_range;
    const double T = lo + (hi - lo) * std::pow(H / std::log(double(n)), params_.dynatemp_exponent);
    // softmax(s / T) = softmax((s - max) / T): the largest stays 0, a tiny T sends the rest to
    // -inf (their probability underflows) rather than every score to +-inf
    for (int64_t i = 0; i < V_; i++)
        if (s[i] != kNegInf) s[i] = float((double(s[i]) - double(w_max_)) / T);
    have_weights_ = false;
}

int32_t Sampler::sample(const float* logits, std::vector<float>& work, const std::vector<int32_t>& history,
                        size_t n_prompt) {
    if (params_.greedy() && !params_.changes_logits() && !heals(history, n_prompt)) {
        check_history(history);
        return argmax(logits);
    }
    if (params_.draws_before_mask()) {
        work.assign(logits, logits + V_);
        process(work.data(), history, n_prompt, false);
        const int32_t t = params_.greedy() ? argmax(work.data()) : draw(work.data());
        grammar_->sync(history, n_prompt);
        if (grammar_->allows(t, params_.end_tokens)) return t;
    }
    work.assign(logits, logits + V_);
    process(work.data(), history, n_prompt);
    if (params_.greedy()) return argmax(work.data());
    const int32_t t = draw(work.data());
    if (params_.mirostat != 0) follow_mirostat(t, n_generated(history, n_prompt));
    return t;
}

bool Sampler::grammar_closed(const std::vector<int32_t>& history, size_t n_prompt) {
    if (!grammar_) return false;
    grammar_->sync(history, n_prompt);
    if (grammar_->broken())
        throw std::invalid_argument("token " + std::to_string(history.back()) +
                                    " does not fit the grammar (a logits_processor let through a token it had banned?)");
    return grammar_->closed();
}

bool Sampler::grammar_closes_with(const std::vector<int32_t>& history, size_t n_prompt, int32_t token) {
    if (!grammar_) return false;
    grammar_->sync(history, n_prompt);
    return grammar_->closes_with(token);
}

// A sequence's bias goes to its last token where the history ends with the tokens before it.
void Sampler::apply_sequence_bias(float* s, const std::vector<int32_t>& history) const {
    for (const auto& [tokens, bias] : params_.sequence_bias) {
        const size_t n = tokens.size() - 1;  // the prefix
        if (n <= history.size() && std::equal(tokens.begin(), tokens.begin() + int64_t(n), history.end() - int64_t(n)))
            s[tokens.back()] += bias;
    }
}

int32_t Sampler::sample_draft(const float* logits, std::vector<float>& work, const std::vector<int32_t>& history,
                              size_t n_prompt, int32_t draft, bool* taken) {
    if (draft < 0 || draft >= V_)
        throw std::invalid_argument("draft token " + std::to_string(draft) + " is outside the vocabulary");
    if (params_.greedy()) {
        const int32_t t = sample(logits, work, history, n_prompt);
        *taken = t == draft;
        return t;
    }
    work.assign(logits, logits + V_);
    process(work.data(), history, n_prompt);
    if (!have_weights_) compute_weights(work.data());
    const double total = weight_sum();
    if (!(total > 0.0)) throw std::invalid_argument("every token was filtered out: nothing left to generate");
    *taken = rng_.uniform() * total < w_[draft];
    if (*taken) return draft;
    remove(work.data(), draft);  // the rest of p: p(draft) < 1 here, so something is left
    return draw(work.data());
}

int32_t Sampler::sample_against(const float* logits, std::vector<float>& work, const std::vector<int32_t>& history,
                                size_t n_prompt, int32_t draft, const float* q, bool* taken) {
    if (draft < 0 || draft >= V_)
        throw std::invalid_argument("draft token " + std::to_string(draft) + " is outside the vocabulary");
    work.assign(logits, logits + V_);
    process(work.data(), history, n_prompt);
    if (!have_weights_) compute_weights(work.data());
    const double total = weight_sum();
    if (!(total > 0.0)) throw std::invalid_argument("every token was filtered out: nothing left to generate");
    const double p_draft = w_[draft] / total;
    *taken = rng_.uniform() * double(q[draft]) < p_draft;  // u < p / q
    if (*taken) return draft;
    double left = 0.0;  // the residual max(0, p - q), in w_ for draw()
    for (int64_t i = 0; i < V_; i++) {
        w_[i] = std::max(0.0, w_[i] / total - double(q[i]));
        left += w_[i];
    }
    if (!(left > 0.0)) compute_weights(work.data());  // p = q up to rounding: draw from p
    return draw(work.data());
}

int32_t Sampler::sample_with_probs(const float* logits, std::vector<float>& work, const std::vector<int32_t>& history,
                                   size_t n_prompt, float* probs) {
    work.assign(logits, logits + V_);
    process(work.data(), history, n_prompt);
    if (!have_weights_) compute_weights(work.data());
    const double total = weight_sum();
    if (!(total > 0.0)) throw std::invalid_argument("every token was filtered out: nothing left to generate");
    for (int64_t i = 0; i < V_; i++) probs[i] = float(w_[i] / total);
    return draw(work.data());
}

void Sampler::apply_penalties(float* s, const std::vector<int32_t>& history, size_t n_prompt) {
    for (const auto& [id, bias] : params_.logit_bias) s[id] += bias;
    apply_sequence_bias(s, history);

    // repetition penalty: once per distinct token of the whole sequence
    if (params_.penalises_repeats()) {
        const float p = params_.repetition_penalty;
        for (int32_t t : history)
            if (counts_[t]++ == 0) s[t] = s[t] < 0 ? s[t] * p : s[t] / p;
        for (int32_t t : history) counts_[t] = 0;
    }

    // presence / frequency penalties: generated tokens only (OpenAI's definition)
    if (params_.penalises_counts()) {
        for (size_t i = n_prompt; i < history.size(); i++) counts_[history[i]]++;
        for (size_t i = n_prompt; i < history.size(); i++) {
            const int32_t t = history[i];
            if (counts_[t] == 0) continue;  // already applied
            s[t] -= float(counts_[t]) * params_.frequency_penalty + params_.presence_penalty;
            counts_[t] = 0;
        }
    }
}

// An n-gram can only be completed by the next token if its first n-1 tokens equal the last
// n-1 tokens of the sequence: every earlier window that starts that way bans its last token.
void Sampler::ban_repeated_ngrams(float* s, const std::vector<int32_t>& h) {
    const size_t n = size_t(params_.no_repeat_ngram_size), L = h.size();
    if (L < n) return;
    const size_t prefix = L + 1 - n;  // start of the last n-1 tokens
    for (size_t w = 0; w + n <= L; w++) {
        if (std::equal(h.begin() + w, h.begin() + w + n - 1, h.begin() + prefix)) s[h[w + n - 1]] = kNegInf;
    }
}

// DRY (p-e-w's "Don't Repeat Yourself", as llama.cpp's sampler): for each earlier place the
// window's last tokens occurred, the length L of that repeat (back to a sequence breaker,
// which no repeat contains) and the token that followed it; that token would make the repeat
// longer and loses dry_multiplier * dry_base^(L - dry_allowed_length) for its longest L >=
// dry_allowed_length. The lengths are a Z-function of the window reversed (Z[j]: how far the
// window read backwards from its end and from its end - j agree), so a step is linear in the
// window. The exponent is capped where the penalty would overflow a float (as llama.cpp).
void Sampler::penalise_repeats_dry(float* s, const std::vector<int32_t>& history) {
    const size_t L = history.size();
    const size_t n = params_.dry_penalty_last_n < 0 ? L : std::min(L, size_t(params_.dry_penalty_last_n));
    if (n < 2) return;
    const int32_t* w = history.data() + (L - n);
    auto r = [&](size_t j) { return w[n - 1 - j]; };  // the window reversed
    size_t limit = 0;  // a repeat ends before the last breaker
    while (limit < n && !breaker_[size_t(r(limit))]) limit++;
    if (limit < size_t(params_.dry_allowed_length)) return;
    z_.assign(n, 0);
    for (size_t j = 1, left = 0, right = 0; j < n; j++) {  // [left, right): the rightmost match so far
        size_t k = j < right ? std::min(right - j, size_t(z_[j - left])) : 0;
        while (j + k < n && k < limit && r(k) == r(j + k)) k++;
        z_[j] = int32_t(k);
        if (j + k > right) {
            left = j;
            right = j + k;
        }
    }
    const int64_t allowed = params_.dry_allowed_length;
    std::vector<int32_t>& touched = dry_touched_;
    touched.clear();
    for (size_t j = 1; j < n; j++) {
        const int32_t len = std::min<int32_t>(z_[j], int32_t(limit));
        if (len < allowed) continue;
        const int32_t next = r(j - 1);  // what followed that earlier occurrence
        if (dry_len_[size_t(next)] == 0) touched.push_back(next);
        dry_len_[size_t(next)] = std::max(dry_len_[size_t(next)], len);
    }
    const double max_exp = std::log(double(std::numeric_limits<float>::max())) / std::log(params_.dry_base);
    for (int32_t t : touched) {
        const double e = std::min(double(dry_len_[size_t(t)] - allowed), max_exp);
        s[t] -= float(params_.dry_multiplier * std::pow(params_.dry_base, e));
        dry_len_[size_t(t)] = 0;
    }
}

void Sampler::keep_top_k(float* s) {
    const int64_t k = std::min<int64_t>(params_.top_k, V_);
    p_.assign(s, s + V_);
    std::nth_element(p_.begin(), p_.begin() + (k - 1), p_.end(), std::greater<double>());
    const double kth = p_[size_t(k - 1)];
    for (int64_t i = 0; i < V_; i++)
        if (double(s[i]) < kth) s[i] = kNegInf;  // ties with the k-th are kept, as in torch
}

// Stable LSD radix sort of idx_ by keys_ (ascending), 11 bits per pass over the low `bits`
// bits: a full vocabulary sorts in well under a millisecond, and equal keys keep id order.
void Sampler::radix_sort(int bits) {
    const size_t n = idx_.size();
    tmp_keys_.resize(n);
    tmp_idx_.resize(n);
    std::vector<size_t>& count = count_;
    for (int shift = 0; shift < bits; shift += 11) {
        count.assign(2049, 0);
        for (size_t k = 0; k < n; k++) count[((keys_[k] >> shift) & 2047u) + 1]++;
        for (size_t d = 1; d < 2049; d++) count[d] += count[d - 1];
        for (size_t k = 0; k < n; k++) {
            const size_t at = count[(keys_[k] >> shift) & 2047u]++;
            tmp_keys_[at] = keys_[k];
            tmp_idx_[at] = idx_[k];
        }
        keys_.swap(tmp_keys_);
        idx_.swap(tmp_idx_);
    }
}

// w_[i] = exp(s[i] - max s): the unnormalised probabilities every filter below and the draw
// share, computed once per token. Filters keep them in step with the scores they remove.
void Sampler::compute_weights(const float* s) {
    float m = kNegInf;
    for (int64_t i = 0; i < V_; i++)
        if (!std::isnan(s[i])) m = std::max(m, s[i]);
    w_max_ = m;
    w_.resize(size_t(V_));
    for (int64_t i = 0; i < V_; i++)
        w_[i] = (m == kNegInf || std::isnan(s[i])) ? 0.0 : std::exp(double(s[i]) - double(m));
    have_weights_ = true;
}

double Sampler::weight_sum() const {
    double Z = 0.0;
    for (double w : w_) Z += w;
    return Z;
}

void Sampler::remove(float* s, int32_t i) {
    s[i] = kNegInf;
    w_[i] = 0.0;
}

// Keeps the most likely tokens while the mass before them is below top_p (at least one):
// the same set as transformers' "remove where the ascending cumulative mass <= 1 - top_p".
void Sampler::keep_top_p(float* s) {
    if (w_max_ == kNegInf) return;
    const double Z = weight_sum();
    idx_.clear();
    keys_.clear();
    for (int64_t i = 0; i < V_; i++) {
        if (s[i] == kNegInf || std::isnan(s[i])) continue;
        uint32_t u;
        std::memcpy(&u, &s[i], 4);
        const uint32_t ascending = (u & 0x80000000u) ? ~u : (u | 0x80000000u);  // float order as uint order
        idx_.push_back(int32_t(i));
        keys_.push_back(~ascending);  // highest score first
    }
    radix_sort(32);
    const size_t n = idx_.size();
    double before = 0.0;  // mass of the tokens ranked above k
    size_t keep = 0;
    for (; keep < n; keep++) {
        if (keep > 0 && before / Z >= params_.top_p) break;
        before += w_[idx_[keep]];
    }
    for (size_t k = keep; k < n; k++) remove(s, idx_[k]);
}

void Sampler::keep_min_p(float* s) {
    if (w_max_ == kNegInf) return;
    const double Z = weight_sum();
    const double threshold = params_.min_p * (1.0 / Z);  // min_p * largest probability
    for (int64_t i = 0; i < V_; i++)
        if (s[i] != kNegInf && w_[i] / Z < threshold) remove(s, int32_t(i));
}

// Top-nsigma: the scores within n standard deviations of the largest, over the tokens not
// filtered yet (population deviation, as llama.cpp). Dividing every score by the temperature
// divides max and deviation alike, so the set does not depend on it.
void Sampler::keep_top_n_sigma(float* s) {
    double m = -std::numeric_limits<double>::infinity(), sum = 0.0;
    int64_t n = 0;
    for (int64_t i = 0; i < V_; i++)
        if (s[i] != kNegInf && !std::isnan(s[i])) {
            m = std::max(m, double(s[i]));
            sum += double(s[i]);
            n++;
        }
    if (n == 0) return;
    const double mean = sum / double(n);
    double var = 0.0;
    for (int64_t i = 0; i < V_; i++)
        if (s[i] != kNegInf && !std::isnan(s[i])) var += (double(s[i]) - mean) * (double(s[i]) - mean);
    const double floor = m - params_.top_n_sigma * std::sqrt(var / double(n));
    for (int64_t i = 0; i < V_; i++)
        if (double(s[i]) < floor) s[i] = kNegInf;
}

// Removes the tokens with probability below threshold but the most likely (every token with
// the largest score): transformers' min_tokens_to_keep = 1.
void Sampler::keep_above(float* s, double threshold) {
    float top = kNegInf;
    for (int64_t i = 0; i < V_; i++)
        if (s[i] != kNegInf) top = std::max(top, s[i]);
    const double Z = weight_sum();
    for (int64_t i = 0; i < V_; i++)
        if (s[i] != kNegInf && s[i] < top && w_[i] / Z < threshold) remove(s, int32_t(i));
}

void Sampler::keep_epsilon(float* s) {
    if (w_max_ != kNegInf) keep_above(s, params_.epsilon_cutoff);
}

// Eta sampling (Hewitt et al. 2022), as EtaLogitsWarper: the threshold falls with the entropy.
void Sampler::keep_eta(float* s) {
    if (w_max_ == kNegInf) return;
    const double Z = weight_sum(), logZ = std::log(Z), m = double(w_max_);
    double entropy = 0.0;
    for (int64_t i = 0; i < V_; i++)
        if (s[i] != kNegInf && w_[i] > 0.0) entropy -= (double(s[i]) - m - logZ) * (w_[i] / Z);
    const double eta = params_.eta_cutoff;
    keep_above(s, std::min(eta, std::sqrt(eta) * std::exp(-entropy)));
}

// XTC, "exclude top choices" (llama.cpp's xtc sampler): with probability xtc_probability, the
// tokens at or above xtc_threshold are dropped but the least likely of them, when there are
// at least two. Ties at that least likelihood are kept together (llama.cpp keeps the one its
// sort puts last; with distinct probabilities the sets are the same).
void Sampler::exclude_top_choices(float* s) {
    if (rng_.uniform() >= params_.xtc_probability || w_max_ == kNegInf) return;
    const double Z = weight_sum();
    double least = std::numeric_limits<double>::infinity();
    int64_t above = 0;
    for (int64_t i = 0; i < V_; i++)
        if (s[i] != kNegInf && w_[i] / Z >= params_.xtc_threshold) {
            above++;
            least = std::min(least, w_[i]);
        }
    if (above < 2) return;
    for (int64_t i = 0; i < V_; i++)
        if (s[i] != kNegInf && w_[i] / Z >= params_.xtc_threshold && w_[i] > least) remove(s, int32_t(i));
}

// Mirostat (Basu et al. 2021), as llama.cpp's samplers: keep the tokens a target surprise
// allows, given mu (2 tau before the first token), and after the draw move mu by eta times
// the gap between the drawn token's surprise (log2, under the kept tokens renormalised) and
// tau (follow_mirostat).
//   2: keep the tokens whose surprise -log2 p is at most mu (at least the most likely).
//   1: estimate the Zipf exponent s of the 100 most likely tokens, and keep the top
//      k = (e 2^mu / (1 - V^-e))^(1/s) tokens, e = s - 1.
void Sampler::keep_mirostat(float* s, size_t k) {
    if (mu_.empty()) mu_.push_back(2.0 * params_.mirostat_tau);
    const double mu = mu_[std::min(k, mu_.size() - 1)];
    compute_weights(s);
    if (w_max_ == kNegInf) return;
    const double Z = weight_sum();
    if (params_.mirostat == 2) {
        for (int64_t i = 0; i < V_; i++)
            if (s[i] != kNegInf && s[i] < w_max_ && -std::log2(w_[i] / Z) > mu) remove(s, int32_t(i));
        return;
    }
    // the 100 most likely, in order (ties: lower id first)
    idx_.clear();
    for (int64_t i = 0; i < V_; i++)
        if (s[i] != kNegInf) idx_.push_back(int32_t(i));
    const size_t m = std::min<size_t>(100, idx_.size());
    auto more_likely = [&](int32_t a, int32_t b) { return w_[a] > w_[b] || (w_[a] == w_[b] && a < b); };
    std::partial_sort(idx_.begin(), idx_.begin() + int64_t(m), idx_.end(), more_likely);
    double sum_tb = 0.0, sum_tt = 0.0;
    for (size_t i = 0; i + 1 < m; i++) {
        const double t = std::log(double(i + 2) / double(i + 1));
        const double b = std::log(w_[idx_[i]] / w_[idx_[i + 1]]);
        sum_tb += t * b;
        sum_tt += t * t;
    }
    const double s_hat = sum_tt > 0.0 ? sum_tb / sum_tt : 0.0;
    const double e = s_hat - 1.0;
    double top = double(V_);
    if (s_hat > 0.0 && e != 0.0) top = std::pow(e * std::pow(2.0, mu) / (1.0 - std::pow(double(V_), -e)), 1.0 / s_hat);
    if (!(top >= 1.0)) top = 1.0;  // NaN included
    const size_t keep = size_t(std::min(top, double(idx_.size())));
    if (keep < m) {
        for (size_t i = keep; i < idx_.size(); i++) remove(s, idx_[i]);
        return;
    }
    std::sort(idx_.begin() + int64_t(m), idx_.end(), more_likely);
    for (size_t i = keep; i < idx_.size(); i++) remove(s, idx_[i]);
}

void Sampler::follow_mirostat(int32_t token, size_t k) {
    const double surprise = -std::log2(w_[token] / weight_sum());
    const double mu = mu_[std::min(k, mu_.size() - 1)];
    while (mu_.size() < k + 1) mu_.push_back(mu_.back());
    mu_.resize(k + 1);
    mu_.push_back(mu - params_.mirostat_eta * (surprise - params_.mirostat_tau));
}

// Typical decoding (Meister et al. 2022), step for step as TypicalLogitsWarper: rank tokens by
// |surprise - entropy|, keep them in that order until the mass reaches typical_p, plus every
// token as close to the entropy as the last one kept.
void Sampler::keep_typical(float* s) {
    if (w_max_ == kNegInf) return;
    const double Z = weight_sum(), logZ = std::log(Z), m = double(w_max_);
    double entropy = 0.0;
    for (int64_t i = 0; i < V_; i++)
        if (s[i] != kNegInf) entropy -= (double(s[i]) - m - logZ) * (w_[i] / Z);
    // |surprise - entropy| (+inf for filtered tokens) as sortable bits: for doubles >= 0 the
    // bit patterns are in the same order as the values
    idx_.resize(size_t(V_));
    keys_.resize(size_t(V_));
    for (int64_t i = 0; i < V_; i++) {
        const double d = s[i] == kNegInf ? std::numeric_limits<double>::infinity()
                                         : std::fabs(-(double(s[i]) - m - logZ) - entropy);
        idx_[i] = int32_t(i);
        std::memcpy(&keys_[i], &d, 8);
    }
    radix_sort(64);
    size_t last = 0;  // number of tokens whose cumulative mass is below typical_p
    double cum = 0.0;
    for (; last < size_t(V_); last++) {
        cum += w_[idx_[last]] / Z;
        if (!(cum < params_.typical_p)) break;
    }
    last = std::min(last, size_t(V_ - 1));
    const uint64_t limit = keys_[last];
    for (size_t k = 1; k < size_t(V_); k++)
        if (keys_[k] > limit) remove(s, idx_[k]);
}

int32_t Sampler::argmax(const float* s) const {
    // the first largest score; NaN and -inf (filtered out) are never chosen
    const int64_t best = argmax_(s, V_);
    if (best < 0) throw std::invalid_argument("every token was filtered out: nothing left to generate");
    return int32_t(best);
}

// Inverse-CDF draw over softmax(s), walking token ids in order: the result depends only on the
// scores and this sequence's random stream.
int32_t Sampler::draw(const float* s) {
    if (!have_weights_) compute_weights(s);
    const double total = weight_sum();
    if (!(total > 0.0)) throw std::invalid_argument("every token was filtered out: nothing left to generate");
    const double u = rng_.uniform() * total;
    double acc = 0.0;
    int64_t last = -1;
    for (int64_t i = 0; i < V_; i++) {
        if (w_[i] <= 0.0) continue;
        acc += w_[i];
        last = i;
        if (acc > u) return int32_t(i);
    }
    return int32_t(last);  // u within rounding of the total
}

}  // namespace pygpt
