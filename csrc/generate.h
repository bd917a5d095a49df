// The decode loop: prompts in, tokens and text out, for a batch of sequences at once.
//
//   step 1 (prefill): every distinct prompt in one ragged forward call; a prompt asked for
//          num_return_sequences = n times is run once and its KV cache forked n ways.
//   step k: one token for every live sequence, all in one forward call (batched matmuls,
//          each sequence at its own position, no padding); finished sequences drop out.
//   Requests added while it runs (Generation::add, continuous batching) have their prompts run
//   in the next step's call, beside the running sequences' tokens.
//
// A sequence stops on eos (the tokenizer's <|endoftext|>, unless ignore_eos), on one of
// stop_token_ids, when its text contains one of the stop strings (matched on the bytes, across
// token boundaries), after max_new_tokens, or when prompt + generated fills n_ctx.
// out.text never contains what stopped it (the stop string, the stop token, eos); out.tokens
// does hold the stopping token(s).
//
// Determinism: sequence j of a prompt draws from Rng(seed, j) and the forward pass gives each
// row bitwise the same logits whatever the batch and thread count, so a sequence's tokens do
// not depend on what runs beside it, nor on when it joined a running batch.
//
// Generation is not thread-safe (one caller at a time); it never touches Python. BeamSearch
// (beam_search.h) is the other Decoding the bindings drive: the same requests with num_beams > 1.
#pragma once
#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "model.h"
#include "prefix_cache.h"
#include "sampler.h"
#include "tokenizer.h"

namespace pygpt {

// When beam search stops (transformers' early_stopping): Heuristic (False) once no running beam
// can be expected to beat the worst of num_beams finished ones at its current length; WhenFull
// (True) as soon as num_beams have finished; Never ("never") once none could even at max length
// (with length_penalty > 0; otherwise as Heuristic).
enum class EarlyStopping { Heuristic, WhenFull, Never };

struct GenerateOptions {
    SamplingParams sampling;
    int64_t max_new_tokens = 16;
    int64_t min_new_tokens = 0;             // eos and stop_token_ids are banned before this many
    std::vector<std::string> stop;          // UTF-8, non-empty
    bool include_stop_str_in_output = false;  // the text ends after the stop string, not before it
    std::vector<int32_t> stop_token_ids;
    bool ignore_eos = false;
    // token healing (the bindings' callers drop each prompt's last token and pass its bytes):
    // empty, or for each prompt the bytes its first generated token must start with ("":
    // none). Those bytes are the prompt's, so they are left out of the text (and of stop
    // string matches): the text continues the prompt as the caller wrote it.
    std::vector<std::string> heal;
    // classifier-free guidance (transformers' guidance_scale; 1: off; Sanchez et al. 2023):
    // each next-token distribution is scale * (log p(x | sequence) - log p(x | negative)) +
    // log p(x | negative), before every other processor. The negative sequence is a negative
    // prompt (none given: the prompt's last token, as transformers' default; one: for every
    // prompt; else one a prompt) and then the tokens generated; it runs beside the sequence,
    // a token a step, in the same forward calls. Not with beam search or drafts.
    double guidance_scale = 1.0;
    std::vector<std::vector<int32_t>> negative_prompts;
    bool guided() const { return guidance_scale != 1.0; }
    // seconds (0: no limit): a sequence stops ("length") at its first token past this long after
    // its request was added (transformers' max_time)
    double max_time = 0.0;
    uint64_t seed = 0;
    bool logprobs = false;                  // log-prob of each generated token
    int64_t top_logprobs = 0;               // and the k most likely alternatives
    bool prompt_logprobs = false;           // the same for the prompt tokens (after the first)
    int64_t num_return_sequences = 1;
    // prompt lookup decoding (greedy only): up to this many draft tokens a step, copied from
    // where the sequence's last max_matching_ngram_size (or fewer) tokens occurred before
    int64_t prompt_lookup_num_tokens = 0;
    int64_t max_matching_ngram_size = 2;
    // assisted decoding (speculative decoding with a draft model, transformers'
    // assistant_model): up to num_assistant_tokens draft tokens a step, the assistant's greedy
    // continuation (from its own KV cache of the sequence). Same vocabulary as the model; not
    // with prompt lookup or beam search. Greedy: greedy decoding's tokens; sampling: its
    // distribution (Sampler::sample_draft).
    std::shared_ptr<Model> assistant_model;
    int64_t num_assistant_tokens = 5;
    // beam search (num_beams > 1; see beam_search.h)
    int64_t num_beams = 1;
    double length_penalty = 1.0;
    EarlyStopping early_stopping = EarlyStopping::Heuristic;
    // The caller's own code (the bindings': Python callables), given the prompt's index in the
    // request and the sequence's tokens so far (prompt first); either may throw, and runs on the
    // thread that steps the generation, one sequence at a time.
    //   logits_hook: a logits processor, run after the built-in ones and before the sampling
    //     filters (SamplingParams::custom); with beam search, on the log-probs, as the others.
    //   stop_hook: after each token (in the history), from the logits row that chose it: true
    //     stops the sequence, finish_reason "stop" (transformers' stopping_criteria). Not with
    //     beam search.
    std::function<void(size_t prompt_index, const std::vector<int32_t>& history, float* scores)> logits_hook;
    std::function<bool(size_t prompt_index, const std::vector<int32_t>& history, const float* logits)> stop_hook;
    bool has_hooks() const { return logits_hook != nullptr || stop_hook != nullptr; }
};

// What ended a sequence with "stop": a string of opt.stop, or an id of opt.stop_token_ids
// (neither: a grammar with nothing left to match, or a stopping criterion).
struct StopCause {
    std::string string;              // "": not a stop string
    int32_t token = -1;              // -1: not a stop token
};

using TopLogprobs = std::vector<std::pair<int32_t, float>>;  // (id, log-prob), most likely first

struct SequenceResult {
    size_t prompt_index = 0;         // which prompt (sequences are prompt-major)
    std::vector<int32_t> tokens;     // generated, the stopping token(s) included
    std::string text;                // valid UTF-8, cut before whatever stopped generation (after a
                                     // stop string with include_stop_str_in_output)
    std::string finish_reason;       // "length" | "stop" | "eos" ("error": contain_errors); "" while running
    StopCause stop;                  // what ended it with "stop"
    // Log-probabilities under the model's raw distribution (softmax of the logits, before any
    // processor): for each generated token, and, with prompt_logprobs, for prompt tokens 1..n-1.
    std::vector<float> logprobs;
    std::vector<TopLogprobs> top_logprobs;
    std::vector<float> prompt_logprobs;
    std::vector<TopLogprobs> prompt_top_logprobs;
    // beam search only: the sequence's score, sum of processed log-probs / length^length_penalty
    bool has_score = false;
    double score = 0.0;
    // prompt lookup: draft tokens proposed for this sequence, and those taken
    int64_t draft_tokens = 0, accepted_draft_tokens = 0;
    // prefix caching: prompt tokens whose keys and values came from another sequence's cache
    int64_t cached_tokens = 0;
    // assisted decoding: tokens the assistant model ran for this sequence (its share of the
    // prompt, the tokens taken, the drafts)
    int64_t assistant_tokens = 0;
};

struct Timings {
    int64_t prefill_tokens = 0;      // prompt tokens run through the model
    int64_t decode_tokens = 0;       // tokens generated by decode steps (after the first)
    double prefill_seconds = 0;      // prefill forward + first draws
    double decode_seconds = 0;
    double first_token_seconds = 0;  // from the start of generate to the first token
    int64_t draft_tokens = 0;        // prompt lookup: tokens proposed, and those taken
    int64_t accepted_draft_tokens = 0;
    int64_t cached_tokens = 0;       // prefix caching: prompt tokens not run (not in prefill_tokens)
    int64_t assistant_tokens = 0;    // assisted decoding: tokens the assistant models ran
};

// What the bindings drive: a Generation or a BeamSearch (make_decoding picks).
class Decoding {
public:
    virtual ~Decoding() = default;

    // One step: the prefill on the first call, then one token for every live sequence.
    // Returns false once every sequence has finished. After a step threw, every later call
    // throws: the sequences' state is unknown.
    bool step();

    // Runs step() to the end; after each step calls `between_steps` (may throw to abort: the
    // model stays usable).
    void run(const std::function<void()>& between_steps);
    bool done() const { return done_; }
    size_t n_live() const { return n_live_; }

    // Text sequence i produced since the last call (see Generation; a BeamSearch has none
    // before it is done, as its beams change).
    virtual std::string take_text(size_t i) = 0;
    virtual size_t size() const = 0;
    virtual const SequenceResult& result(size_t i) const = 0;
    const Timings& timings() const { return timings_; }

protected:
    virtual void prefill() = 0;  // the first step: every prompt, and the first tokens
    virtual void decode() = 0;   // every later step: one token for every live sequence
    Timings timings_;
    size_t n_live_ = 0;          // sequences (or beam search prompts) still running
    std::chrono::steady_clock::time_point t_start_;

private:
    bool step_unchecked();       // step() without the failure latch
    bool started_ = false;
    bool done_ = false;
    bool failed_ = false;
};

// Throws std::invalid_argument on a bad option or prompt (empty, too long, bad id).
void check_request(const Model& model, const Tokenizer* tokenizer, const std::vector<std::vector<int32_t>>& prompts,
                   const GenerateOptions& options);

// A Generation (taking prefixes from `kept` and keeping its caches there, if not null), or a
// BeamSearch when options.num_beams > 1.
std::unique_ptr<Decoding> make_decoding(Model& model, const Tokenizer* tokenizer,
                                        std::vector<std::vector<int32_t>> prompts, GenerateOptions options,
                                        std::shared_ptr<PrefixCache> kept = nullptr);

// Token healing: the tokens a prompt's first generated token may be (those whose bytes start
// with `heal`, end tokens and special tokens left out), a byte a token id; null for "".
std::shared_ptr<const std::vector<uint8_t>> healing_tokens(const Tokenizer& tokenizer, const std::string& heal,
                                                           int64_t vocab_size);
// A generated token's bytes in the text: for the first one (`first`) of prompt p's sequence,
// without the bytes token healing took from the prompt (opt.heal).
std::string_view text_bytes(const Tokenizer& tokenizer, int32_t token, bool first, const GenerateOptions& opt,
                            size_t p);

// Where the first of `stops` starts in text at or after `from` (npos: none), and which one it
// is (the earliest; of those starting there, the first listed).
size_t find_stop(const std::vector<std::string>& stops, std::string_view text, size_t from, const std::string** which);

// The tokens that end a sequence: eos (unless ignore_eos or no tokenizer), then stop_token_ids.
std::vector<int32_t> end_tokens(const Tokenizer* tokenizer, const GenerateOptions& options);

double seconds_since(std::chrono::steady_clock::time_point t);

// One forward call over `steps` into `logits`: each step's first logits row (a step with
// all_logits has n_tokens rows from there, one otherwise).
std::vector<const float*> forward_rows(Model& model, const std::vector<SeqStep>& steps, std::vector<float>& logits);
// A decode step: one token for each cache (the token at `next`), the logits rows in order.
std::vector<const float*> decode_step(Model& model, const std::vector<std::pair<KVCache*, const int32_t*>>& next,
                                      std::vector<float>& logits);

// Log-probabilities of a logits row: log(sum(exp(row))) in double, and the k most likely
// tokens (ties: lower id first) with their log-probs.
double log_sum_exp(const float* row, int64_t V);
// Classifier-free guidance of a logits row by the negative sequence's (GenerateOptions::guidance_scale).
void guide(const float* cond, const float* uncond, int64_t V, double scale, std::vector<float>& out);
TopLogprobs top_logprobs(const float* row, int64_t V, int64_t k, double lse, std::vector<int32_t>& idx);
// With prompt_logprobs: those of tokens ids[1..n-1] from the logits rows of ids[0..n-2]
// (appended to r's), so a prompt run in pieces adds each piece's.
void add_prompt_logprobs(const float* rows, const int32_t* ids, size_t n, int64_t V, int64_t top_k,
                         SequenceResult& r, std::vector<int32_t>& idx);

// Sampling and greedy decoding, for a batch of requests that may grow as it runs (continuous
// batching): add() a request at any time; each step runs the prompts added since the last step
// and one token (plus, with prompt lookup, a draft) of every running sequence in one forward
// call. Each request keeps its own options; a sequence's tokens are those it would get alone.
class Generation : public Decoding {
public:
    // An empty batch, for add(). tokenizer may be null: then there is no text, no eos and no
    // stop strings. `kept`: the prefix cache to take prompts' prefixes from and keep finished
    // sequences' caches in (shared with other generations of the model); null: its own, off
    // until set_prefix_cache.
    Generation(Model& model, const Tokenizer* tokenizer, std::shared_ptr<PrefixCache> kept = nullptr);
    // One request, as add() (sequences 0 .. prompts * num_return_sequences - 1).
    Generation(Model& model, const Tokenizer* tokenizer, std::vector<std::vector<int32_t>> prompts,
               GenerateOptions options, std::shared_ptr<PrefixCache> kept = nullptr);
    ~Generation() override;

    // Adds a request: its sequences get the ids first .. first + prompts * num_return_sequences
    // - 1, prompt-major, and start at the next step. Returns first. Throws std::invalid_argument
    // on a bad option or prompt (check_request), OutOfMemory, and adds nothing then.
    size_t add(std::vector<std::vector<int32_t>> prompts, GenerateOptions options);
    // Drops sequence i, stopping it if it runs: its cache is freed, its result is gone.
    void remove(size_t i);
    bool started(size_t i) const;   // its prompt has run
    bool finished(size_t i) const;
    // At most n prompt tokens a step (0: every new prompt whole, the default): a long prompt
    // then runs in pieces over several steps, so the running sequences' next tokens wait for
    // n tokens of prefill at most. Outputs do not change (rows never depend on the batch).
    void set_prefill_chunk(int64_t n);
    int64_t prefill_chunk() const { return prefill_chunk_; }
    // Prefix caching (0: off, the default): a prompt starts from the keys and values of the
    // longest prefix it shares with another sequence (copied) or with one of the last n
    // finished ones, whose caches are kept (taken over), and runs only the rest; a prompt that
    // shares a longer prefix with one running in this step waits a step for it. Not for a
    // request with prompt_logprobs, which needs every prompt row. Outputs do not change.
    // (The capacity of the prefix cache, which may be shared.)
    void set_prefix_cache(int64_t n) { kept_->set_capacity(n); }
    int64_t prefix_cache() const { return kept_->capacity(); }
    // What a sequence's token choice throws (its processors, the caller's hooks, every token
    // filtered out) fails the step (false, the default), or, when true, only that sequence:
    // it stops with finish_reason "error", and rethrow_error(i) throws what it threw.
    void set_contain_errors(bool on) { contain_errors_ = on; }
    bool contain_errors() const { return contain_errors_; }
    void rethrow_error(size_t i) const;  // nothing if sequence i did not fail
    bool failed(size_t i) const;

    // Text sequence i produced since the last call: valid UTF-8 that can no longer change
    // (unfinished characters and possible starts of a stop string are held back).
    std::string take_text(size_t i) override;
    // The tokens sequence i generated since the last call, with their logprobs and top
    // logprobs when its request asked for them (for streams that carry tokens).
    SequenceResult take_tokens(size_t i);

    size_t size() const override { return next_id_; }  // ids handed out (removed ones included)
    const SequenceResult& result(size_t i) const override;

private:
    struct Request;
    struct Seq;
    void prefill() override { advance(); }
    void decode() override { advance(); }
    void advance();
    struct Prefix {                     // where a prompt's first n tokens' keys and values are
        int64_t n;
        bool kept;                      // in a kept cache
        const Seq* seq;                 // else this sequence's cache, if not null
    };
    Prefix find_prefix(const Seq& first) const;
    bool start_prompt(Seq& first, const std::vector<std::vector<Seq*>>& fresh);
    void retire(Seq& s);
    void fail(Seq& s);
    void recount();
    Seq& seq(size_t i) const;
    int64_t draft_room(const Seq& s) const;
    bool no_room(const Seq& s) const;  // its prompt leaves it no token to generate
    void feed(Seq& s);
    void draft_with_assistants(const std::vector<Seq*>& running);
    int64_t next_draft(Seq& s, const float* row, const Model& assistant);
    void share_prompts(Model& assistant, const std::vector<Seq*>& seqs);
    void ran_on_assistant(Seq& s, int64_t n);  // counts n tokens the assistant ran for s
    static bool same_prompt(const Seq& a, const Seq& b);
    static bool any_hooks(const std::vector<Seq*>& seqs);
    void take(Seq& s, const float* rows, size_t n);
    void choose(Seq& s, const float* row);
    void add_logprobs(Seq& s, const float* row);
    void accept(Seq& s, int32_t token, const float* row);
    void finish(Seq& s, const char* reason);
    void release_text(Seq& s, bool final);

    Model& model_;
    const Tokenizer* tok_;
    int64_t V_, n_ctx_;
    std::map<size_t, std::unique_ptr<Seq>> seqs_;  // by id: steps batch them in this order
    size_t next_id_ = 0;
    int64_t prefill_chunk_ = 0;
    bool contain_errors_ = false;
    std::shared_ptr<PrefixCache> kept_;  // finished sequences' caches, for prefix caching
    std::vector<float> logits_;
    std::vector<float> draft_logits_;  // the assistant models'
};

}  // namespace pygpt
