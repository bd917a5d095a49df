// Beam search: the num_beams most likely continuations of each prompt, found as transformers'
// generate(num_beams=N, do_sample=False) finds them (its _beam_search):
//
//   A prompt keeps up to N running beams and up to N finished hypotheses. Each step, every
//   running beam's next-token scores are log_softmax(logits), then the logits processors
//   (sampler.h; the penalties, n-gram bans, bias, min_new_tokens), plus the beam's score (the
//   sum of its processed log-probs so far). Of all beams' candidates the K best are kept,
//   K = max(2, 1 + number of end tokens) * N:
//     - a candidate that ends (an end token: eos, stop_token_ids; a stop string its token
//       completes in the generated text; a grammar it closes, matched whole with nothing that
//       could follow; or the length limit, max_time included) and is among the first N
//       becomes a finished hypothesis, scored
//       score / generated_length^length_penalty, if it beats the worst of the N kept so far;
//     - the N best that do not end are the next running beams (each takes a copy of its
//       parent's KV cache; the first child of a parent takes the cache itself).
//   A prompt is done when N hypotheses have finished and early stopping allows it
//   (EarlyStopping in generate.h), or when no candidate can go on (the length limit: prompt +
//   max_new_tokens, or the context). Its num_return_sequences best hypotheses are its results,
//   best first.
//
// Ties between equal scores go to the lower beam, then the lower token id. Every prompt of a
// batch is searched on its own (all its beams run in the same forward calls as the others'),
// so its results do not depend on the batch or the thread count.
#pragma once
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "generate.h"

namespace pygpt {

class BeamSearch : public Decoding {
public:
    // Throws std::invalid_argument on a bad option or prompt (check_request).
    BeamSearch(Model& model, const Tokenizer* tokenizer, std::vector<std::vector<int32_t>> prompts,
               GenerateOptions options);
    ~BeamSearch() override;

    std::string take_text(size_t i) override;  // all of it once done, "" before
    // prompt-major: prompt p's k-th best is p * num_return_sequences + k; filled once done
    size_t size() const override { return results_.size(); }
    const SequenceResult& result(size_t i) const override;

private:
    struct Beam;
    struct Candidate;
    struct Group;
    void prefill() override;
    void decode() override;
    void advance(const std::vector<Beam*>& beams, const std::vector<const float*>& rows);
    void score_row(Beam& beam, const float* row, std::vector<Candidate>& out, int thread);
    void select(Group& g, std::vector<Candidate>& candidates);
    const char* ending(const Beam& beam, const Candidate& c, bool at_limit, std::string& text,
                       StopCause& stop) const;
    std::string_view piece(const Beam& beam, int32_t token) const;
    void add_finished(Group& g, const Candidate& c, int64_t gen_len, const char* reason, std::string text,
                      StopCause stop);
    void finish(Group& g);

    Model& model_;
    const Tokenizer* tok_;
    GenerateOptions opt_;
    int64_t V_, n_ctx_, K_;
    std::vector<int32_t> ends_;  // end tokens (end_tokens)
    size_t max_stop_ = 0;        // longest stop string, bytes
    std::vector<std::shared_ptr<const std::vector<uint8_t>>> healing_;  // by prompt (healing_tokens)
    std::vector<std::unique_ptr<Group>> groups_;
    std::vector<SequenceResult> results_;
    std::vector<std::string> untaken_;  // take_text: what has not been taken yet
    std::vector<float> logits_;
    // per thread: the processors (sampler.h, greedy) and scratch
    std::vector<Sampler> samplers_;
    std::vector<std::vector<float>> work_;
    std::vector<std::vector<int32_t>> idx_;
};

}  // namespace pygpt
