// Choosing the next token: logits processors, then greedy argmax or a seeded random draw.
//
// The processors run in the order transformers' generate() uses for the options they share
// (its _get_logits_processor), so a processed distribution can be checked against the
// matching transformers LogitsProcessor:
//
//   logit_bias          scores[id] += bias                      (SequenceBiasLogitsProcessor, 1-token keys)
//   sequence_bias       scores[last] += bias when the sequence ends with the tokens before
//                       last (always for one token); bad_words_ids are such biases of -inf
//                                                               (SequenceBiasLogitsProcessor,
//                                                                NoBadWordsLogitsProcessor)
//   repetition_penalty  every token seen so far (prompt included): s < 0 ? s * p : s / p
//                                                               (RepetitionPenaltyLogitsProcessor)
//   presence/frequency  OpenAI's penalties, over generated tokens only:
//                       s -= count * frequency_penalty + (count > 0) * presence_penalty
//   dry                 "Don't Repeat Yourself" (llama.cpp's DRY sampler): a token that would
//                       extend a repeat of the sequence's last L >= dry_allowed_length tokens
//                       (matched back to a sequence breaker) loses
//                       dry_multiplier * dry_base^(L - dry_allowed_length)
//   no_repeat_ngram     bans a token that would repeat an n-gram already in the sequence
//                                                               (NoRepeatNGramLogitsProcessor)
//   min_new_tokens      bans the end tokens (eos, stop tokens) until that many are generated
//                                                               (MinNewTokensLengthLogitsProcessor)
//   length decay        exponential_decay_length_penalty (start, factor): past `start`
//                       generated tokens, each end token's s += |s| (factor^(n - start) - 1)
//                                                               (ExponentialDecayLengthPenalty)
//   grammar             bans every token after which the text could no longer match the
//                       grammar (grammar.h); the end tokens only where it is a whole match
//   custom              the caller's own processor (the bindings': Python callables), where
//                       transformers runs a logits_processor list, after its own
//   first_allowed       token healing: the first generated token is one of these (after
//                       custom, so that no processor lets a banned one through)
//   --- sampling only (temperature > 0): the former "warpers" ---
//   temperature         s /= T                                  (TemperatureLogitsWarper)
//   top_n_sigma         keep s >= max - n * std of the scores kept so far (Tang et al. 2024,
//                       "Top-nsigma"; llama.cpp's top_n_sigma, also its first filter; the same
//                       set at any temperature)
//   top_k               keep s >= k-th largest                  (TopKLogitsWarper)
//   top_p               keep the smallest top set whose mass reaches top_p  (TopPLogitsWarper)
//   min_p               keep p >= min_p * p_max                 (MinPLogitsWarper)
//   typical_p           keep the tokens whose surprise is closest to the entropy, up to
//                       mass typical_p                          (TypicalLogitsWarper)
//   epsilon_cutoff      keep p >= epsilon (and the most likely) (EpsilonLogitsWarper)
//   eta_cutoff          keep p >= min(eta, sqrt(eta) exp(-entropy)) (and the most likely)
//                                                               (EtaLogitsWarper)
//   mirostat            (instead of the filters above) keep the tokens whose surprise fits the
//                       target, a state mu that follows the surprise of the tokens drawn
//                       (Basu et al. 2021; llama.cpp's mirostat 1 and 2)
//   dynatemp            (with dynatemp_range > 0, instead of the temperature above, after
//                       the filters, as in llama.cpp's chain) s /= T, T from temperature -
//                       range to temperature + range as (entropy / max entropy)^exponent of
//                       the tokens kept (llama.cpp's dynamic temperature, Zhu et al. 2024)
//   xtc                 with probability xtc_probability, drop every token with p >=
//                       xtc_threshold but the least likely of them, when there are two or more
//                       (llama.cpp's "exclude top choices"; one uniform draw a token)
//
// A filtered token gets -inf. With temperature 0 the next token is the argmax of the processed
// scores (ties: lowest id, as torch.argmax); the sampling filters do not apply, as in
// transformers' greedy search. Otherwise it is drawn from softmax(processed scores).
// Probabilities, sums and thresholds are computed in double precision.
#pragma once
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <utility>
#include <vector>

#include "grammar.h"
#include "kernels.h"

namespace pygpt {

// s[i] = -inf for every token i with allowed[i] == 0.
void keep_allowed(float* s, const std::vector<uint8_t>& allowed);

// Random numbers: xoshiro256** 1.0 (Blackman & Vigna, https://prng.di.unimi.it/), its 256-bit
// state filled by splitmix64. Each sequence owns one, keyed by (seed, stream), so a sequence's
// draws never depend on which other sequences run beside it or on the thread count.
class Rng {
public:
    Rng(uint64_t seed, uint64_t stream);
    uint64_t next_u64();
    double uniform();  // in [0, 1), 53 random bits

private:
    uint64_t s_[4];
};

// A caller's own logits processor: changes scores[0 : vocab_size] in place, given the tokens so
// far (prompt first). It may throw; it runs on the thread that steps the generation.
using ScoresHook = std::function<void(const std::vector<int32_t>& history, float* scores)>;

struct SamplingParams {
    float temperature = 0.0f;        // 0: greedy
    int64_t top_k = 0;               // 0: off
    // thresholds on probabilities are kept in double, as Python passes them
    double top_p = 1.0;              // 1: off
    double min_p = 0.0;              // 0: off
    double typical_p = 1.0;          // 1: off
    double top_n_sigma = -1.0;       // < 0: off
    double epsilon_cutoff = 0.0;     // 0: off
    double eta_cutoff = 0.0;         // 0: off
    double xtc_probability = 0.0;    // 0: off
    double xtc_threshold = 0.1;
    int mirostat = 0;                // 0: off; 1, 2: Mirostat and Mirostat 2.0
    double mirostat_tau = 5.0;       // the target surprise (bits)
    double mirostat_eta = 0.1;       // the learning rate of mu
    float repetition_penalty = 1.0f; // 1: off
    float presence_penalty = 0.0f;
    float frequency_penalty = 0.0f;
    int64_t no_repeat_ngram_size = 0;  // 0: off
    double dynatemp_range = 0.0;       // 0: off
    double dynatemp_exponent = 1.0;
    double dry_multiplier = 0.0;       // 0: off
    double dry_base = 1.75;
    int64_t dry_allowed_length = 2;
    int64_t dry_penalty_last_n = -1;   // the last n tokens of the sequence; -1: all
    std::vector<int32_t> dry_sequence_breakers;  // token ids a repeat does not cross
    std::vector<std::pair<int32_t, float>> logit_bias;
    std::vector<std::pair<std::vector<int32_t>, float>> sequence_bias;  // (tokens, bias on the last)
    int64_t min_new_tokens = 0;        // end_tokens are banned while fewer tokens were generated
    int64_t decay_start = 0;           // exponential_decay_length_penalty (factor 1: off)
    double decay_factor = 1.0;
    std::vector<int32_t> end_tokens;   // (set by the decode loop: eos, stop_token_ids)
    ScoresHook custom;                 // null: none (set by the decode loop from GenerateOptions)
    // the text generated must stay a prefix of what the grammar matches (null: none); the
    // vocabulary's trie comes with it
    std::shared_ptr<const Grammar> grammar;
    std::shared_ptr<const VocabTrie> grammar_vocab;
    // token healing (GenerateOptions::heal): the tokens the first generated token may be, a
    // byte a token id (null: any; set by the decode loop, per prompt)
    std::shared_ptr<const std::vector<uint8_t>> first_allowed;

    // Throws std::invalid_argument naming the first bad value.
    void validate(int64_t vocab_size) const;
    bool greedy() const { return temperature == 0.0f; }
    // Which processors before the draw are on; changes_logits(): whether any of them is (a
    // processor added to Sampler::process belongs in it too).
    bool penalises_repeats() const { return repetition_penalty != 1.0f; }
    bool penalises_counts() const { return presence_penalty != 0.0f || frequency_penalty != 0.0f; }
    bool bans_ngrams() const { return no_repeat_ngram_size > 0; }
    bool dry() const { return dry_multiplier > 0.0; }
    bool delays_the_end() const { return min_new_tokens > 0 && !end_tokens.empty(); }
    bool decays_length() const { return decay_factor != 1.0 && !end_tokens.empty(); }
    bool changes_logits() const {
        return !logit_bias.empty() || !sequence_bias.empty() || penalises_repeats() || penalises_counts() || bans_ngrams() || dry() ||
               delays_the_end() || decays_length() || custom != nullptr || grammar != nullptr;
    }
    // Whether a draw from the processed scores can be made before the grammar's mask and
    // kept when the grammar allows it (Sampler::sample): nothing after the mask but the
    // temperature, so the kept draw is distributed as a draw after the mask.
    bool draws_before_mask() const {
        return grammar != nullptr && custom == nullptr && !filters();
    }
    // Whether a sampling filter after the temperature is on.
    bool filters() const { return truncates() || mirostat != 0 || dynatemp(); }
    bool dynatemp() const { return dynatemp_range > 0.0; }
    // Whether one of the filters mirostat replaces is on.
    bool truncates() const {
        return top_n_sigma >= 0.0 || top_k > 0 || top_p < 1.0 || min_p > 0.0 || typical_p < 1.0 || epsilon_cutoff > 0.0 ||
               eta_cutoff > 0.0 || xtc_probability > 0.0;
    }
};

class Sampler {
public:
    // `stream` selects this sequence's random stream for `seed` (see Rng); greedy choices use
    // the kernels' argmax.
    Sampler(const SamplingParams& params, int64_t vocab_size, uint64_t seed, uint64_t stream, const Kernels& kernels);

    // Processes scores[0 : vocab_size] in place (logits in, processed scores out, -inf =
    // filtered). history: the tokens so far, prompt first; its first n_prompt are the prompt.
    void process(float* scores, const std::vector<int32_t>& history, size_t n_prompt) {
        process(scores, history, n_prompt, true);
    }

    // The next token from logits[0 : vocab_size]: process() on a copy in `work`, then the
    // greedy choice or a draw (plain greedy decoding takes the logits' argmax, no copy). With
    // a grammar and nothing after its mask but the temperature, the choice is made first
    // without the mask and kept if the grammar allows it (checking one token is much cheaper
    // than masking all): the greedy choice is then the masked argmax, and a kept draw t has
    // probability p(t) + (1 - p(allowed)) p(t) / p(allowed) = p(t) / p(allowed), as a masked
    // draw.
    // Throws std::invalid_argument when every token was filtered out (for instance by
    // logit_bias of -inf on all of them).
    int32_t sample(const float* logits, std::vector<float>& work, const std::vector<int32_t>& history,
                   size_t n_prompt);

    // The next token where a draft proposed `draft` (prompt lookup decoding); *taken: whether
    // it is the draft. Greedy: sample(), taken if it equals the draft. Sampling: speculative
    // sampling against a draft that puts all its mass on one token (Leviathan et al., 2023):
    // the draft is taken with its probability p(draft) under the processed distribution,
    // otherwise a token is drawn from p without it. Either way the token is distributed as
    // p, as sample() draws it, though from other random numbers.
    int32_t sample_draft(const float* logits, std::vector<float>& work, const std::vector<int32_t>& history,
                         size_t n_prompt, int32_t draft, bool* taken);

    // Speculative sampling against a draft token drawn from q (probabilities over the
    // vocabulary: the draft model's processed distribution, where it drew the draft): the
    // draft is taken with probability min(1, p(draft) / q(draft)), p the processed
    // distribution of logits; otherwise a token is drawn from max(0, p - q), renormalised. The
    // token is distributed as p whatever q is (Leviathan et al., 2023; Chen et al., 2023), and
    // the closer q is to p, the more often the draft is taken.
    int32_t sample_against(const float* logits, std::vector<float>& work, const std::vector<int32_t>& history,
                           size_t n_prompt, int32_t draft, const float* q, bool* taken);

    // A draw from the processed distribution of logits, as sample() makes it, and that
    // distribution into probs[0 : vocab_size] (the draft side of sample_against).
    int32_t sample_with_probs(const float* logits, std::vector<float>& work, const std::vector<int32_t>& history,
                              size_t n_prompt, float* probs);

    const SamplingParams& params() const { return params_; }
    // mirostat: mu before each generated token so far (tests)
    const std::vector<double>& mirostat_mu() const { return mu_; }
    // With a grammar: the text of history[n_prompt:] is a whole match that nothing can extend.
    // Throws std::invalid_argument when it broke the grammar (a token the mask had banned).
    bool grammar_closed(const std::vector<int32_t>& history, size_t n_prompt);
    // With a grammar: history[n_prompt:] + token is a whole match that nothing can extend.
    bool grammar_closes_with(const std::vector<int32_t>& history, size_t n_prompt, int32_t token);

private:
    void process(float* scores, const std::vector<int32_t>& history, size_t n_prompt, bool with_grammar);
    bool heals(const std::vector<int32_t>& history, size_t n_prompt) const {
        return params_.first_allowed != nullptr && history.size() == n_prompt;
    }
    void check_history(const std::vector<int32_t>& history) const;
    void apply_penalties(float* s, const std::vector<int32_t>& history, size_t n_prompt);
    void apply_sequence_bias(float* s, const std::vector<int32_t>& history) const;
    void ban_repeated_ngrams(float* s, const std::vector<int32_t>& history);
    void penalise_repeats_dry(float* s, const std::vector<int32_t>& history);
    void keep_top_k(float* s);
    void radix_sort(int bits);
    void compute_weights(const float* s);
    double weight_sum() const;
    void remove(float* s, int32_t i);
    void keep_top_p(float* s);
    void keep_min_p(float* s);
    void keep_typical(float* s);
    void keep_top_n_sigma(float* s);
    void keep_above(float* s, double threshold);
    void keep_epsilon(float* s);
    void keep_eta(float* s);
    void exclude_top_choices(float* s);
    void scale_by_entropy(float* s);
    static size_t n_generated(const std::vector<int32_t>& history, size_t n_prompt) {
        return history.size() - std::min(n_prompt, history.size());
    }
    void keep_mirostat(float* s, size_t k);
    void follow_mirostat(int32_t token, size_t k);
    int32_t argmax(const float* s) const;
    int32_t draw(const float* s);

    SamplingParams params_;
    int64_t V_;
    int64_t (*argmax_)(const float* x, int64_t n);
    Rng rng_;
    // exp(score - max score) of the current scores, shared by the filters and the draw
    std::vector<double> w_;
    float w_max_ = 0.0f;
    bool have_weights_ = false;
    // scratch, reused across calls
    std::vector<int32_t> idx_, tmp_idx_;
    std::vector<uint64_t> keys_, tmp_keys_;
    std::vector<size_t> count_;
    std::vector<double> p_;
    std::vector<int32_t> counts_;
    std::vector<uint8_t> breaker_;   // dry: by token id
    std::vector<int32_t> z_, dry_len_, dry_touched_;
    std::optional<GrammarMatcher> grammar_;
    // mirostat: mu_[k] is mu before the (k+1)-th generated token (so a shorter history, a
    // draft cut back, finds its own)
    std::vector<double> mu_;
};

}  // namespace pygpt
