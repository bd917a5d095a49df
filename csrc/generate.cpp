// The decode loop (see generate.h): prefill, then one batched forward call per token.
#include "generate.h"

#include "beam_search.h"
#include "errors.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <exception>
#include <limits>
#include <stdexcept>
#include <string_view>

#include <omp.h>

namespace pygpt {

size_t find_stop(const std::vector<std::string>& stops, std::string_view text, size_t from, const std::string** which) {
    size_t hit = std::string::npos;
    for (const auto& stop : stops) {
        const size_t at = text.find(stop, from);
        if (at < hit) {
            hit = at;
            *which = &stop;
        }
    }
    return hit;
}

double seconds_since(std::chrono::steady_clock::time_point t) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}

double log_sum_exp(const float* row, int64_t V) {
    float m = row[0];
    for (int64_t i = 1; i < V; i++) m = std::max(m, row[i]);
    double z = 0.0;
    for (int64_t i = 0; i < V; i++) z += std::exp(double(row[i]) - double(m));
    return double(m) + std::log(z);
}

TopLogprobs top_logprobs(const float* row, int64_t V, int64_t k, double lse, std::vector<int32_t>& idx) {
    idx.resize(size_t(V));
    for (int64_t i = 0; i < V; i++) idx[i] = int32_t(i);
    k = std::min(k, V);
    std::partial_sort(idx.begin(), idx.begin() + k, idx.end(),
                      [row](int32_t a, int32_t b) { return row[a] > row[b] || (row[a] == row[b] && a < b); });
    TopLogprobs out;
    out.reserve(size_t(k));
    for (int64_t i = 0; i < k; i++) out.emplace_back(idx[i], float(double(row[idx[i]]) - lse));
    return out;
}

void add_prompt_logprobs(const float* rows, const int32_t* ids, size_t n, int64_t V, int64_t top_k,
                         SequenceResult& r, std::vector<int32_t>& idx) {
    for (size_t i = 0; i + 1 < n; i++) {  // row i predicts token i + 1
        const float* row = rows + int64_t(i) * V;
        const double lse = log_sum_exp(row, V);
        r.prompt_logprobs.push_back(float(double(row[ids[i + 1]]) - lse));
        if (top_k > 0) r.prompt_top_logprobs.push_back(top_logprobs(row, V, top_k, lse, idx));
    }
}

std::shared_ptr<const std::vector<uint8_t>> healing_tokens(const Tokenizer& tokenizer, const std::string& heal,
                                                           int64_t vocab_size) {
    if (heal.empty()) return nullptr;
    auto allowed = std::make_shared<std::vector<uint8_t>>(size_t(vocab_size), uint8_t(0));
    bool any = false;
    for (int32_t t = 0; t < tokenizer.vocab_size() && t < vocab_size; t++) {
        const std::string& b = tokenizer.token_bytes(t);
        (*allowed)[size_t(t)] = b.size() >= heal.size() && b.compare(0, heal.size(), heal) == 0;
        any = any || (*allowed)[size_t(t)];
    }
    for (const auto& [text, id] : tokenizer.specials())
        if (id < vocab_size) (*allowed)[size_t(id)] = 0;
    if (!any) throw std::invalid_argument("token healing: no token starts with the prompt's last token");
    return allowed;
}

std::string_view text_bytes(const Tokenizer& tokenizer, int32_t token, bool first, const GenerateOptions& opt,
                            size_t p) {
    std::string_view b = tokenizer.token_bytes(token);
    if (!first || opt.heal.empty() || opt.heal[p].empty()) return b;
    const std::string& heal = opt.heal[p];
    if (b.substr(0, heal.size()) != heal)  // the sampler's mask comes after every processor
        throw std::logic_error("token healing: the first token does not start with the prompt's last token");
    return b.substr(heal.size());
}

std::vector<int32_t> end_tokens(const Tokenizer* tokenizer, const GenerateOptions& options) {
    std::vector<int32_t> ends;
    if (tokenizer && !options.ignore_eos && tokenizer->eot_id() >= 0) ends.push_back(tokenizer->eot_id());
    for (int32_t t : options.stop_token_ids)
        if (std::find(ends.begin(), ends.end(), t) == ends.end()) ends.push_back(t);
    return ends;
}

std::vector<const float*> forward_rows(Model& model, const std::vector<SeqStep>& steps, std::vector<float>& logits) {
    const int64_t V = model.config().vocab_size;
    logits.resize(size_t(Model::logit_rows(steps) * V));
    model.forward(steps, logits.data());
    std::vector<const float*> rows;
    int64_t row = 0;
    for (const SeqStep& st : steps) {
        rows.push_back(logits.data() + row * V);
        row += st.all_logits ? st.n_tokens : 1;
    }
    return rows;
}

std::vector<const float*> decode_step(Model& model, const std::vector<std::pair<KVCache*, const int32_t*>>& next,
                                      std::vector<float>& logits) {
    std::vector<SeqStep> steps;
    for (const auto& [cache, token] : next) steps.push_back({cache, token, 1, false});
    return forward_rows(model, steps, logits);
}

// ---------------------------------------------------------------------------------------------
// Decoding

bool Decoding::step() {
    if (failed_) throw std::runtime_error("this generation failed earlier and cannot continue");
    try {
        const bool more = step_unchecked();
        done_ = !more;
        return more;
    } catch (...) {
        failed_ = true;
        throw;
    }
}

bool Decoding::step_unchecked() {
    if (!started_) {
        started_ = true;
        t_start_ = std::chrono::steady_clock::now();
        prefill();
    } else if (n_live_ > 0) {
        decode();
    }
    return n_live_ > 0;
}

void Decoding::run(const std::function<void()>& between_steps) {
    while (step())
        if (between_steps) between_steps();
}

// A request whose KV caches and logits could not fit in this machine's memory fails here, with
// a MemoryError, rather than being killed by the system part way (a batch of a million, say).
static void check_memory(const Model& model, const std::vector<std::vector<int32_t>>& prompts,
                         const GenerateOptions& opt) {
    const ModelConfig& c = model.config();
    // guided: a negative sequence's cache beside each (at most as long, the default's 1 token + new)
    const int64_t per_prompt = (opt.num_beams > 1 ? opt.num_beams : opt.num_return_sequences) * (opt.guided() ? 2 : 1);
    const int64_t new_tokens = std::min(opt.max_new_tokens, c.n_ctx);
    double bytes = 0.0;  // in double: no overflow, whatever the request
    for (const auto& ids : prompts) {
        const int64_t positions = std::min(c.n_ctx, int64_t(ids.size()) + new_tokens);
        bytes += double(per_prompt) * double(positions) * double(KVCache::bytes_per_position(c, model.kv_type()));
        if (const Model* a = opt.assistant_model.get())  // its caches of the same sequences
            bytes += double(per_prompt) * double(std::min(positions, a->config().n_ctx)) *
                     double(KVCache::bytes_per_position(a->config(), a->kv_type()));
    }
    // a logits row per sequence, and the processors' copy of it
    bytes += double(prompts.size()) * double(per_prompt) * double(c.vocab_size) * 8.0;
    const double have = double(physical_memory_bytes());
    if (have > 0.0 && bytes > have) {
        char msg[256];
        std::snprintf(msg, sizeof msg,
                      "this call would need about %.1f GB for the KV caches and logits of %.0f sequences, more "
                      "than this machine's %.1f GB of memory: ask for fewer sequences or tokens",
                      bytes / 1e9, double(prompts.size()) * double(per_prompt), have / 1e9);
        throw OutOfMemory(msg);
    }
}

void check_request(const Model& model, const Tokenizer* tokenizer, const std::vector<std::vector<int32_t>>& prompts,
                   const GenerateOptions& opt) {
    const int64_t V = model.config().vocab_size, n_ctx = model.config().n_ctx;
    auto bad = [](const std::string& what) { throw std::invalid_argument(what); };

    opt.sampling.validate(V);
    if (opt.max_new_tokens < 0) bad("max_new_tokens must be >= 0");
    if (!(opt.max_time >= 0.0) || std::isinf(opt.max_time)) bad("max_time must be a finite number of seconds >= 0");
    if (opt.min_new_tokens < 0) bad("min_new_tokens must be >= 0");
    if (opt.num_return_sequences < 1) bad("num_return_sequences must be >= 1");
    if (opt.top_logprobs < 0 || opt.top_logprobs > V) bad("top_logprobs must be in [0, vocab_size]");
    for (const auto& s : opt.stop)
        if (s.empty()) bad("stop strings must not be empty");
    if (!opt.stop.empty() && !tokenizer) bad("stop strings need a model with a tokenizer");
    for (int32_t t : opt.stop_token_ids)
        if (t < 0 || t >= V) bad("stop_token_ids: token id " + std::to_string(t) + " is outside the vocabulary");
    if (opt.num_beams < 1) bad("num_beams must be >= 1");
    if (opt.num_beams > 1) {
        if (!opt.sampling.greedy()) bad("beam search (num_beams > 1) is deterministic: temperature must be 0");
        if (opt.num_return_sequences > opt.num_beams)
            bad("num_return_sequences (" + std::to_string(opt.num_return_sequences) +
                ") must be at most num_beams (" + std::to_string(opt.num_beams) + ")");
    }
    if (!std::isfinite(opt.length_penalty)) bad("length_penalty must be a finite number");
    if (opt.prompt_lookup_num_tokens < 0) bad("prompt_lookup_num_tokens must be >= 0 (0 = off)");
    if (opt.max_matching_ngram_size < 1) bad("max_matching_ngram_size must be >= 1");
    if (opt.stop_hook && opt.num_beams > 1) bad("stopping criteria do not go with beam search (num_beams > 1)");
    if (opt.assistant_model) {
        const int64_t Va = opt.assistant_model->config().vocab_size;
        if (Va != V)
            bad("the assistant model's vocabulary (" + std::to_string(Va) + " tokens) is not the model's (" +
                std::to_string(V) + ")");
        if (opt.num_assistant_tokens < 1) bad("num_assistant_tokens must be >= 1");
        if (opt.num_beams > 1) bad("assisted decoding (assistant_model) does not go with beam search (num_beams > 1)");
        if (opt.prompt_lookup_num_tokens > 0)
            bad("assistant_model and prompt_lookup_num_tokens both make drafts: choose one");
    }
    if (!std::isfinite(opt.guidance_scale)) bad("guidance_scale must be a finite number (1 = off)");
    if (opt.guided()) {
        if (opt.num_beams > 1) bad("guidance_scale does not go with beam search (num_beams > 1)");
        if (opt.prompt_lookup_num_tokens > 0 || opt.assistant_model)
            bad("guidance_scale does not go with drafts (prompt_lookup_num_tokens, assistant_model)");
    }
    if (opt.negative_prompts.size() > 1 && opt.negative_prompts.size() != prompts.size())
        bad("negative prompts: one for every prompt, or one a prompt (" + std::to_string(prompts.size()) + ")");
    for (const auto& negative : opt.negative_prompts) {
        if (negative.empty()) bad("a negative prompt is empty");
        if (int64_t(negative.size()) > n_ctx)
            bad("a negative prompt has " + std::to_string(negative.size()) +
                " tokens, more than the model's context of " + std::to_string(n_ctx));
        for (int32_t t : negative)
            if (t < 0 || t >= V) bad("a negative prompt's token id " + std::to_string(t) + " is outside the vocabulary");
    }
    if (opt.prompt_lookup_num_tokens > 0 && opt.num_beams > 1)
        bad("prompt lookup decoding (prompt_lookup_num_tokens > 0) does not go with beam search (num_beams > 1)");
    if (prompts.empty()) bad("no prompt to generate from");
    if (!opt.heal.empty()) {
        if (opt.heal.size() != prompts.size()) bad("heal: one string a prompt");
        if (!tokenizer) bad("token healing needs a model with a tokenizer");
        if (opt.sampling.grammar) bad("token healing does not go with a grammar");
    }
    for (size_t p = 0; p < prompts.size(); p++) {
        const auto& ids = prompts[p];
        if (ids.empty()) bad("prompt " + std::to_string(p) + " is empty: at least one token is needed");
        if (int64_t(ids.size()) > n_ctx)
            bad("prompt " + std::to_string(p) + " has " + std::to_string(ids.size()) +
                " tokens, more than the model's context of " + std::to_string(n_ctx));
        for (int32_t t : ids)
            if (t < 0 || t >= V)
                bad("prompt " + std::to_string(p) + ": token id " + std::to_string(t) + " is outside the vocabulary");
    }
    check_memory(model, prompts, opt);
}

std::unique_ptr<Decoding> make_decoding(Model& model, const Tokenizer* tokenizer,
                                        std::vector<std::vector<int32_t>> prompts, GenerateOptions options,
                                        std::shared_ptr<PrefixCache> kept) {
    if (options.num_beams > 1)
        return std::make_unique<BeamSearch>(model, tokenizer, std::move(prompts), std::move(options));
    return std::make_unique<Generation>(model, tokenizer, std::move(prompts), std::move(options), std::move(kept));
}

// ---------------------------------------------------------------------------------------------
// Generation

// The longest draft a sequence takes a step: prompt lookup's or the assistant's (0: none).
static int64_t max_draft(const GenerateOptions& opt) {
    return opt.assistant_model ? opt.num_assistant_tokens : opt.prompt_lookup_num_tokens;
}

struct Generation::Request {       // one add(): the options its sequences share
    GenerateOptions opt;           // with sampling.min_new_tokens and end_tokens filled in
    size_t max_stop = 0;           // longest stop string, bytes
    std::chrono::steady_clock::time_point added;  // for max_time
    bool out_of_time() const {
        return opt.max_time > 0.0 && seconds_since(added) >= opt.max_time;
    }
};

struct Generation::Seq {
    std::shared_ptr<const Request> req;
    SequenceResult r;
    std::unique_ptr<KVCache> cache;  // made when its prompt runs
    // assisted decoding: the assistant's cache; when sampling or with processors, its sampler
    // (the request's processors, its own random stream) and the tokens so far with the draft;
    // when sampling, the distribution each draft token was drawn from (want rows of V)
    std::unique_ptr<KVCache> draft_cache;
    std::unique_ptr<Sampler> draft_sampler;
    std::vector<int32_t> draft_history;
    std::vector<float> draft_probs, draft_work;
    uint64_t stream = 0;           // its random stream (sample j of its prompt: j)
    Sampler sampler;
    std::vector<int32_t> history;  // prompt, then generated tokens
    size_t n_prompt = 0;
    bool started = false;          // its prompt has run
    bool live = true;
    int32_t next_input = -1;       // the token the next step feeds
    std::string bytes;             // raw bytes of the generated text so far
    size_t released = 0;           // bytes[0 : released] are already in r.text
    std::string pending;           // released text not yet taken by take_text
    size_t tokens_taken = 0;       // r.tokens[0 : tokens_taken] were taken by take_tokens
    // the sampler's work and what it chose (steps run sequences in parallel)
    std::vector<float> scores;
    int32_t chosen = -1;
    float logprob = 0.0f;
    TopLogprobs top;
    std::vector<int32_t> idx;
    std::vector<int32_t> fed;      // the step's input token and, with prompt lookup, its draft
    int64_t draft_len = 0;         // prompt lookup, assistant: the longest draft it takes now
    int64_t want = 0;              // assistant: the draft tokens it asks for in this step
    int64_t taken = 0, accepted = 0;  // this step: tokens taken, and those as drafted
    std::exception_ptr error;      // what taking its rows threw (contain_errors)
    // guidance: the negative sequence (its prompt, then the tokens generated), its cache, this
    // step's logits row of it, and the guided scores
    std::vector<int32_t> negative;
    std::unique_ptr<KVCache> neg_cache;
    const float* neg_row = nullptr;
    std::vector<float> guided;

    Seq(std::shared_ptr<const Request> request, const SamplingParams& sampling, int64_t V, uint64_t stream,
        const Kernels& kernels)
        : req(std::move(request)), sampler(sampling, V, req->opt.seed, stream, kernels) {}
    const GenerateOptions& opt() const { return req->opt; }
};

Generation::Generation(Model& model, const Tokenizer* tokenizer, std::shared_ptr<PrefixCache> kept)
    : model_(model), tok_(tokenizer), V_(model.config().vocab_size), n_ctx_(model.config().n_ctx),
      kept_(kept ? std::move(kept) : std::make_shared<PrefixCache>()) {}

Generation::Generation(Model& model, const Tokenizer* tokenizer, std::vector<std::vector<int32_t>> prompts,
                       GenerateOptions options, std::shared_ptr<PrefixCache> kept)
    : Generation(model, tokenizer, std::move(kept)) {
    add(std::move(prompts), std::move(options));
}

Generation::~Generation() = default;

size_t Generation::add(std::vector<std::vector<int32_t>> prompts, GenerateOptions options) {
    check_request(model_, tok_, prompts, options);
    if (options.num_beams != 1) throw std::invalid_argument("Generation samples: num_beams must be 1 (see BeamSearch)");
    auto req = std::make_shared<Request>();
    req->added = std::chrono::steady_clock::now();
    req->opt = std::move(options);
    GenerateOptions& opt = req->opt;
    for (const auto& s : opt.stop) req->max_stop = std::max(req->max_stop, s.size());
    opt.sampling.min_new_tokens = opt.min_new_tokens;
    opt.sampling.end_tokens = end_tokens(tok_, opt);

    std::vector<std::shared_ptr<const std::vector<uint8_t>>> healing(prompts.size());  // may throw: before any add
    for (size_t p = 0; p < opt.heal.size(); p++) healing[p] = healing_tokens(*tok_, opt.heal[p], V_);
    const size_t first = next_id_;
    for (size_t p = 0; p < prompts.size(); p++) {
        SamplingParams sampling = opt.sampling;  // with the caller's processor, told its prompt
        if (opt.logits_hook)
            sampling.custom = [hook = opt.logits_hook, p](const std::vector<int32_t>& h, float* s) { hook(p, h, s); };
        sampling.first_allowed = healing[p];
        for (int64_t j = 0; j < opt.num_return_sequences; j++) {  // sample j draws from Rng(seed, j)
            auto s = std::make_unique<Seq>(req, sampling, V_, uint64_t(j), model_.kernels());
            s->stream = uint64_t(j);
            s->draft_len = max_draft(opt);
            s->r.prompt_index = p;
            s->history = prompts[p];
            s->n_prompt = prompts[p].size();
            if (opt.guided())
                s->negative = opt.negative_prompts.empty()      ? std::vector<int32_t>{prompts[p].back()}
                              : opt.negative_prompts.size() == 1 ? opt.negative_prompts[0]
                                                                 : opt.negative_prompts[p];
            seqs_.emplace(next_id_++, std::move(s));
            n_live_++;
        }
    }
    return first;
}

// Whether a and b are samples of one prompt of one request (they share its run).
bool Generation::same_prompt(const Seq& a, const Seq& b) {
    return a.req == b.req && a.r.prompt_index == b.r.prompt_index;
}

// Whether any of these sequences' requests has the caller's (Python) code: their token choices
// then run on the stepping thread.
bool Generation::any_hooks(const std::vector<Seq*>& seqs) {
    for (const Seq* s : seqs)
        if (s->opt().has_hooks()) return true;
    return false;
}

Generation::Seq& Generation::seq(size_t i) const {
    const auto it = seqs_.find(i);
    if (it == seqs_.end())
        throw std::out_of_range("sequence " + std::to_string(i) + " is not in this generation");
    return *it->second;
}

void Generation::remove(size_t i) {
    Seq& s = seq(i);
    if (s.live) n_live_--;
    if (s.cache) retire(s);  // between steps a cache holds exactly history[0 : pos]
    seqs_.erase(i);
}

// A finished (or removed) sequence's cache: kept for prefix caching, or freed (n_ctx positions
// of keys and values).
void Generation::retire(Seq& s) {
    if (prefix_cache() > 0) {
        KeptCache k;
        k.tokens.assign(s.history.begin(), s.history.begin() + s.cache->pos);  // what the cache ran
        k.cache = std::move(s.cache);
        k.draft_cache = std::move(s.draft_cache);  // it ran a prefix of the history, maybe longer
        k.assistant = s.opt().assistant_model;
        kept_->keep(std::move(k));
    }
    s.cache.reset();
    s.draft_cache.reset();
    s.neg_cache.reset();
}

// Prefix caching: the longest prefix of first's prompt that a kept cache (kept) or another
// sequence's cache (seq) holds.
Generation::Prefix Generation::find_prefix(const Seq& first) const {
    Prefix best{kept_->longest(first.history, first.n_prompt), true, nullptr};
    for (const auto& [id, s] : seqs_) {  // running, or part way through its prompt
        if (s.get() == &first || !s->live || !s->cache) continue;
        const int64_t n = shared_prefix(first.history, first.n_prompt, s->history.data(), s->cache->pos);
        if (n > best.n) best = {n, false, s.get()};
    }
    if (best.n == 0) best.kept = false;
    return best;
}

// The cache a prompt starts from: with prefix caching, the one that shares its longest prefix
// (a kept cache is taken over, another sequence's copied). Returns false, making no cache, when
// the prompt had better wait a step: one that runs in this step (`fresh`) shares at least
// kDeferFor more of its tokens than any cache holds now (prompts that arrive together with a
// shared preamble then run it once).
bool Generation::start_prompt(Seq& first, const std::vector<std::vector<Seq*>>& fresh) {
    constexpr int64_t kDeferFor = 32;  // about what one decode step costs in prefill
    Prefix best{0, false, nullptr};
    if (prefix_cache() > 0 && !first.opt().prompt_logprobs) {
        best = find_prefix(first);
        for (const auto& group : fresh) {
            const Seq& o = *group[0];
            const int64_t n = shared_prefix(first.history, first.n_prompt, o.history.data(), int64_t(o.n_prompt));
            if (n >= best.n + kDeferFor) return false;
        }
    }
    const Model* assistant = first.opt().assistant_model.get();
    KeptCache k;  // none if another thread's call took it since find_prefix (best.n is then 0)
    if (best.kept) k = kept_->take(first.history, first.n_prompt, &best.n);
    if (k.cache) {
        first.cache = std::move(k.cache);
        first.cache->pos = best.n;
        if (k.draft_cache && k.assistant.get() == assistant) {  // the assistant's keys and values too
            first.draft_cache = std::move(k.draft_cache);
            first.draft_cache->pos = std::min(first.draft_cache->pos, best.n);
        }
    } else {
        first.cache = model_.new_cache();  // allocated here, without the GIL
        if (best.seq) {
            first.cache->copy_from(*best.seq->cache, 0, best.n);
            if (best.seq->draft_cache && best.seq->opt().assistant_model.get() == assistant) {
                first.draft_cache = assistant->new_cache();
                first.draft_cache->copy_from(*best.seq->draft_cache, 0, std::min(best.seq->draft_cache->pos, best.n));
            }
        }
    }
    first.r.cached_tokens = best.n;
    timings_.cached_tokens += best.n;
    return true;
}

bool Generation::started(size_t i) const { return seq(i).started; }
bool Generation::finished(size_t i) const { return !seq(i).live; }

void Generation::set_prefill_chunk(int64_t n) {
    if (n < 0) throw std::invalid_argument("prefill_chunk must be >= 0 (0: whole prompts)");
    prefill_chunk_ = n;
}

const SequenceResult& Generation::result(size_t i) const { return seq(i).r; }

bool Generation::failed(size_t i) const { return seq(i).error != nullptr; }

// A sequence whose token choice (or draft) threw, with contain_errors: it stops, and its caches,
// part way through a step, are not kept for prefix caching.
void Generation::fail(Seq& s) {
    s.live = false;
    s.r.finish_reason = "error";
    s.cache.reset();
    s.draft_cache.reset();
    s.neg_cache.reset();
}

// After a step: the live sequences counted, finished ones' caches retired.
void Generation::recount() {
    n_live_ = 0;
    for (const auto& [id, s] : seqs_) {
        n_live_ += s->live;
        if (!s->live && s->cache) retire(*s);
    }
}

void Generation::rethrow_error(size_t i) const {
    if (const Seq& s = seq(i); s.error) std::rethrow_exception(s.error);
}

std::string Generation::take_text(size_t i) {
    std::string out;
    out.swap(seq(i).pending);
    return out;
}

SequenceResult Generation::take_tokens(size_t i) {
    Seq& s = seq(i);
    const size_t from = s.tokens_taken;
    SequenceResult out;
    out.prompt_index = s.r.prompt_index;
    out.tokens.assign(s.r.tokens.begin() + int64_t(from), s.r.tokens.end());
    if (s.r.logprobs.size() >= from) out.logprobs.assign(s.r.logprobs.begin() + int64_t(from), s.r.logprobs.end());
    if (s.r.top_logprobs.size() >= from)
        out.top_logprobs.assign(s.r.top_logprobs.begin() + int64_t(from), s.r.top_logprobs.end());
    s.tokens_taken = s.r.tokens.size();
    return out;
}

// One step, one forward call: the prompt of each sequence that has not started (once for the
// samples of a prompt, which then fork its cache; with prefill_chunk, the next piece of it),
// and the next token of every running one (with prompt lookup, followed by a draft). Then each
// sequence takes its rows.
void Generation::advance() {
    const auto t0 = std::chrono::steady_clock::now();
    std::vector<std::vector<Seq*>> waiting;  // sequences of one prompt of one request
    std::vector<Seq*> running;
    for (auto& [id, sp] : seqs_) {
        Seq& s = *sp;
        if (!s.live) continue;
        if (s.started) {
            running.push_back(&s);
        } else if (!waiting.empty() && same_prompt(*waiting.back()[0], s)) {
            waiting.back().push_back(&s);
        } else {
            waiting.push_back({&s});
        }
    }

    // the prompts' pieces: the first's cache holds what already ran of its prompt
    std::vector<SeqStep> steps;
    std::vector<std::vector<Seq*>> fresh;
    int64_t budget = prefill_chunk_ > 0 ? prefill_chunk_ : std::numeric_limits<int64_t>::max();
    for (auto& group : waiting) {
        if (budget == 0) break;
        Seq& first = *group[0];
        if (!first.cache && !start_prompt(first, fresh)) continue;  // it waits a step (start_prompt)
        const int64_t at = first.cache->pos;
        const int64_t n = std::min(int64_t(first.n_prompt) - at, budget);
        budget -= n;
        steps.push_back({first.cache.get(), first.history.data() + at, n, first.opt().prompt_logprobs});
        fresh.push_back(std::move(group));
        timings_.prefill_tokens += n;
    }
    if (steps.empty() && running.empty()) return;
    for (Seq* s : running) feed(*s);
    draft_with_assistants(running);
    // a sequence whose draft failed (the caller's processor raised) fails the step, or with
    // contain_errors stops here
    running.erase(std::remove_if(running.begin(), running.end(),
                                 [this](Seq* s) {
                                     if (!s->error) return false;
                                     if (!contain_errors_) std::rethrow_exception(s->error);
                                     fail(*s);
                                     return true;
                                 }),
                  running.end());
    if (steps.empty() && running.empty()) return recount();
    for (Seq* s : running)
        steps.push_back({s->cache.get(), s->fed.data(), int64_t(s->fed.size()), s->fed.size() > 1});
    // guidance: the negative sequences, after the others: a prompt's (once for its samples) in
    // the call that ends the prompt, then a running sequence's next token
    std::vector<std::pair<std::vector<Seq*>, size_t>> negatives;  // (who takes the row, its step)
    for (size_t g = 0; g < fresh.size(); g++) {
        Seq& first = *fresh[g][0];
        const bool ends = first.cache->pos + steps[g].n_tokens == int64_t(first.n_prompt);
        if (!first.opt().guided() || !ends || no_room(first)) continue;
        first.neg_cache = model_.new_cache();
        steps.push_back({first.neg_cache.get(), first.negative.data(), int64_t(first.negative.size()), false});
        negatives.emplace_back(fresh[g], steps.size() - 1);
    }
    for (Seq* s : running)
        if (s->opt().guided()) {
            steps.push_back({s->neg_cache.get(), s->fed.data(), 1, false});
            negatives.emplace_back(std::vector<Seq*>{s}, steps.size() - 1);
        }
    const std::vector<const float*> rows = forward_rows(model_, steps, logits_);
    for (const auto& [seqs, step] : negatives)
        for (Seq* s : seqs) s->neg_row = rows[step];

    std::vector<Seq*> todo;
    std::vector<const float*> todo_rows;
    bool first_tokens = false;
    for (size_t g = 0; g < fresh.size(); g++) {
        Seq& first = *fresh[g][0];
        const GenerateOptions& opt = first.opt();
        const int64_t len = int64_t(first.n_prompt), n = steps[g].n_tokens, end = first.cache->pos, at = end - n;
        if (opt.prompt_logprobs)
            add_prompt_logprobs(rows[g], first.history.data() + at, size_t(std::min(end + 1, len) - at), V_,
                                opt.top_logprobs, first.r, first.idx);
        if (end < len) continue;  // more of the prompt next step
        first_tokens = true;
        const bool no_room = this->no_room(first);
        for (Seq* s : fresh[g]) {
            s->started = true;
            s->fed.assign(1, -1);  // one row: the prompt's last
            if (s != &first) {
                s->r.prompt_logprobs = first.r.prompt_logprobs;
                s->r.prompt_top_logprobs = first.r.prompt_top_logprobs;
                s->r.cached_tokens = first.r.cached_tokens;
                if (!no_room) {
                    s->cache = model_.new_cache();
                    s->cache->copy_from(*first.cache);
                    if (first.draft_cache) {  // what prefix caching gave the first of the assistant's
                        s->draft_cache = opt.assistant_model->new_cache();
                        s->draft_cache->copy_from(*first.draft_cache);
                    }
                    if (first.neg_cache) {  // the negative prompt, run once
                        s->neg_cache = model_.new_cache();
                        s->neg_cache->copy_from(*first.neg_cache);
                    }
                }
            }
            if (no_room) {
                finish(*s, "length");
            } else {
                todo.push_back(s);
                todo_rows.push_back(rows[g] + (opt.prompt_logprobs ? n - 1 : 0) * V_);
            }
        }
    }
    for (size_t i = 0; i < running.size(); i++) {
        todo.push_back(running[i]);
        todo_rows.push_back(rows[fresh.size() + i]);
    }

    // every sequence takes its rows, in parallel: each has its own sampler and random stream,
    // so nothing depends on the thread count. The caller's hooks (Python) run on this thread.
    const int64_t B = int64_t(todo.size());
    const bool hooks = any_hooks(todo);
#pragma omp parallel for if (!hooks) num_threads(std::max<int64_t>(1, std::min<int64_t>(B, model_.n_threads()))) \
    schedule(static, 1)
    for (int64_t b = 0; b < B; b++) {
        try {
            take(*todo[b], todo_rows[b], todo[b]->fed.size());
        } catch (...) {
            todo[b]->error = std::current_exception();
        }
    }
    for (Seq* s : todo) {  // a sequence that failed: the step, or with contain_errors itself
        if (!s->error) continue;
        if (!contain_errors_) std::rethrow_exception(s->error);
        fail(*s);
    }

    for (size_t i = 0; i < running.size(); i++) {
        const Seq& s = *running[i];
        timings_.decode_tokens += s.taken;  // the first token of a sequence counts as prefill's
        timings_.draft_tokens += int64_t(s.fed.size()) - 1;
        timings_.accepted_draft_tokens += s.accepted;
    }
    recount();
    // a step that ran prompts counts as prefill (the first step of one request: exactly that)
    if (fresh.empty()) {
        timings_.decode_seconds += seconds_since(t0);
    } else {
        timings_.prefill_seconds += seconds_since(t0);
        if (first_tokens && timings_.first_token_seconds == 0.0)
            timings_.first_token_seconds = seconds_since(t_start_);
    }
}

// Prompt lookup (transformers' PromptLookupCandidateGenerator): the tokens, at most k, that
// followed the earliest earlier occurrence of the sequence's last n tokens, n = max_n down to 1.
static std::vector<int32_t> lookup_draft(const std::vector<int32_t>& h, int64_t k, int64_t max_n) {
    const int64_t L = int64_t(h.size());
    for (int64_t n = std::min(max_n, L - 1); n >= 1 && k > 0; n--) {
        const auto tail = h.end() - n;
        for (int64_t i = 0; i + n < L; i++)  // an occurrence at i with a continuation
            if (std::equal(tail, h.end(), h.begin() + i))
                return std::vector<int32_t>(h.begin() + i + n, h.begin() + std::min(L, i + n + k));
    }
    return {};
}

// No token to generate after s's prompt: max_new_tokens 0, or the prompt fills the context.
bool Generation::no_room(const Seq& s) const {
    return s.opt().max_new_tokens == 0 || int64_t(s.n_prompt) >= n_ctx_;
}

// The longest draft a running sequence can still take after its next token: the budget of new
// tokens and the context.
int64_t Generation::draft_room(const Seq& s) const {
    return std::min(s.opt().max_new_tokens - int64_t(s.r.tokens.size()), n_ctx_ - s.cache->pos) - 1;
}

// What a running sequence feeds: its next token, and with prompt lookup a draft of what may
// follow (lookup_draft), only as long as it can still be taken (draft_room).
void Generation::feed(Seq& s) {
    const GenerateOptions& opt = s.opt();
    s.fed.assign(1, s.next_input);
    if (opt.prompt_lookup_num_tokens == 0) return;
    const int64_t room = draft_room(s);
    if (room <= 0) return;
    const auto draft = lookup_draft(s.history, std::min(s.draft_len, room), opt.max_matching_ngram_size);
    s.fed.insert(s.fed.end(), draft.begin(), draft.end());
}

// Assisted decoding: each running sequence with an assistant model gets, after its next token,
// a draft of up to draft_len tokens from the assistant, under the request's processors (the
// caller's own included): greedy, its processed argmax; sampling, a draw from its processed
// distribution, kept for speculative sampling (Sampler::sample_against). Each
// assistant runs once per draft token for all its sequences together; its first call also
// feeds what its caches lack of their sequences (the prompt at first, then the tokens taken
// since the last step). take() cuts its caches back to the tokens taken.
void Generation::draft_with_assistants(const std::vector<Seq*>& running) {
    std::map<Model*, std::vector<Seq*>> by_assistant;
    for (Seq* s : running) {
        Model* a = s->opt().assistant_model.get();
        if (!a) continue;
        // drafts that can still be taken, and that the assistant's context holds (it runs all
        // but the last)
        const int64_t room = std::min(draft_room(*s), a->config().n_ctx - int64_t(s->history.size()));
        s->want = std::min(s->draft_len, room);
        if (s->want <= 0) continue;
        if (!s->draft_cache) s->draft_cache = a->new_cache();
        s->fed.reserve(size_t(s->want) + 1);  // the next calls point into it
        const SamplingParams& params = s->sampler.params();
        if (!params.greedy() || params.changes_logits()) {  // drafts under the request's processors
            if (!s->draft_sampler)
                s->draft_sampler = std::make_unique<Sampler>(params, V_, s->opt().seed, s->stream | (1ull << 63),
                                                             model_.kernels());
            s->draft_history = s->history;
            if (!params.greedy()) s->draft_probs.resize(size_t(s->want * V_));
        }
        by_assistant[a].push_back(s);
    }
    for (auto& [a, seqs] : by_assistant) {
        share_prompts(*a, seqs);
        std::vector<SeqStep> steps;
        for (Seq* s : seqs) {  // what its cache lacks, up to the next token (history's last)
            const int64_t at = s->draft_cache->pos;
            steps.push_back({s->draft_cache.get(), s->history.data() + at, int64_t(s->history.size()) - at, false});
            ran_on_assistant(*s, steps.back().n_tokens);
        }
        while (!seqs.empty()) {
            const std::vector<const float*> rows = forward_rows(*a, steps, draft_logits_);
            // each sequence's next draft token, in parallel as take() (the caller's processors,
            // Python, on this thread)
            const int64_t S = int64_t(seqs.size());
            std::vector<int64_t> drawn(static_cast<size_t>(S));
            const bool hooks = any_hooks(seqs);
#pragma omp parallel for if (!hooks && S > 1) \
    num_threads(std::max<int64_t>(1, std::min<int64_t>(S, model_.n_threads()))) schedule(static, 1)
            for (int64_t i = 0; i < S; i++) drawn[size_t(i)] = next_draft(*seqs[size_t(i)], rows[size_t(i)], *a);
            std::vector<Seq*> more;
            std::vector<SeqStep> next;
            for (size_t i = 0; i < seqs.size(); i++) {
                Seq* s = seqs[i];
                if (drawn[i] < 0) continue;  // its draft ends here
                s->fed.push_back(int32_t(drawn[i]));
                if (int64_t(s->fed.size()) - 1 < s->want) {
                    more.push_back(s);
                    next.push_back({s->draft_cache.get(), &s->fed.back(), 1, false});
                    ran_on_assistant(*s, 1);
                }
            }
            seqs = std::move(more);
            steps = std::move(next);
        }
    }
}

void Generation::ran_on_assistant(Seq& s, int64_t n) {
    s.r.assistant_tokens += n;
    timings_.assistant_tokens += n;
}

// Samples of one prompt (num_return_sequences) that start drafting together: the first runs
// the prompt through the assistant once (a call of its own), the others copy its cache, instead
// of each running it.
void Generation::share_prompts(Model& assistant, const std::vector<Seq*>& seqs) {
    std::vector<std::pair<Seq*, std::vector<Seq*>>> groups;  // (first, the others)
    for (Seq* s : seqs) {
        if (s->draft_cache->pos != 0) continue;
        if (!groups.empty() && same_prompt(*groups.back().first, *s))
            groups.back().second.push_back(s);
        else
            groups.push_back({s, {}});
    }
    std::vector<SeqStep> steps;
    for (const auto& [first, others] : groups)
        if (!others.empty()) steps.push_back({first->draft_cache.get(), first->history.data(), int64_t(first->n_prompt),
                                              false});
    if (steps.empty()) return;
    forward_rows(assistant, steps, draft_logits_);  // the rows are not needed
    for (const auto& [first, others] : groups) {
        if (others.empty()) continue;
        ran_on_assistant(*first, int64_t(first->n_prompt));
        for (Seq* o : others) o->draft_cache->copy_from(*first->draft_cache);
    }
}

// The next draft token of s from the assistant's logits row, or -1 when its draft ends here
// (every token filtered out, a row of NaN); what the caller's processor throws goes to s.error.
int64_t Generation::next_draft(Seq& s, const float* row, const Model& assistant) {
    if (!s.draft_sampler) return assistant.kernels().argmax(row, V_);  // -1 for NaN or -inf rows
    try {
        const int64_t j = int64_t(s.fed.size()) - 1;  // the draft token's index
        const int32_t d = s.opt().sampling.greedy()
                              ? s.draft_sampler->sample(row, s.draft_work, s.draft_history, s.n_prompt)
                              : s.draft_sampler->sample_with_probs(row, s.draft_work, s.draft_history, s.n_prompt,
                                                                   s.draft_probs.data() + j * V_);
        s.draft_history.push_back(d);
        return d;
    } catch (const std::invalid_argument&) {
        return -1;  // every token filtered out: no more draft (the model's row will say)
    } catch (...) {
        s.error = std::current_exception();  // the caller's processor: the sequence fails
        return -1;
    }
}

// Prompt lookup decoding: a sequence's step feeds its next token and a draft in one call,
// whose logits rows are bitwise those of feeding the tokens one at a time (the model's rows
// never depend on the batch). Row j's token is chosen against draft token j
// (Sampler::sample_draft: greedy, the argmax; sampling, speculative sampling); while it is the
// draft token, the next row is valid too. The cache is then cut back to the tokens taken.
// Greedy: greedy decoding's output, token for token, in fewer calls; sampling: the same
// distribution as without drafts. Without a draft (n = 1) this is one plain draw.
void Generation::take(Seq& s, const float* rows, size_t n) {
    s.taken = s.accepted = 0;
    for (size_t j = 0; j < n; j++) {
        const float* r = rows + int64_t(j) * V_;
        bool as_drafted = false;
        if (j + 1 < n && s.opt().assistant_model && !s.opt().sampling.greedy()) {  // an assistant's draw
            s.chosen = s.sampler.sample_against(r, s.scores, s.history, s.n_prompt, s.fed[j + 1],
                                                s.draft_probs.data() + int64_t(j) * V_, &as_drafted);
            add_logprobs(s, r);
        } else if (j + 1 < n) {
            s.chosen = s.sampler.sample_draft(r, s.scores, s.history, s.n_prompt, s.fed[j + 1], &as_drafted);
            add_logprobs(s, r);
        } else {
            choose(s, r);
        }
        accept(s, s.chosen, r);
        s.taken++;
        s.accepted += as_drafted;
        if (!s.live || !as_drafted) break;
    }
    if (n == 1) return;
    s.r.draft_tokens += int64_t(n) - 1;
    s.r.accepted_draft_tokens += s.accepted;
    s.cache->pos -= int64_t(n) - s.taken;  // the call appended all n
    // the assistant's cache ran the drafts but the last: keep those that were taken
    if (s.draft_cache)
        s.draft_cache->pos = std::min(s.draft_cache->pos, int64_t(s.history.size()) - s.taken + s.accepted);
    // the next draft: 2 longer after a draft taken whole, as long as what was right after a miss
    const int64_t right = s.taken - 1, drafted = int64_t(n) - 1;
    s.draft_len = right == drafted ? std::min(max_draft(s.opt()), s.draft_len + 2) : std::max<int64_t>(1, right);
}

// Classifier-free guidance: out = scale * (log_softmax(cond) - log_softmax(uncond)) +
// log_softmax(uncond) (transformers' UnbatchedClassifierFreeGuidanceLogitsProcessor), in double.
void guide(const float* cond, const float* uncond, int64_t V, double scale, std::vector<float>& out) {
    const double lc = log_sum_exp(cond, V), lu = log_sum_exp(uncond, V);
    out.resize(size_t(V));
    for (int64_t i = 0; i < V; i++) {
        const double c = double(cond[i]) - lc, u = double(uncond[i]) - lu;
        out[size_t(i)] = float(scale * (c - u) + u);
    }
}

// The next token of s from a logits row, and its log-probs when asked for.
void Generation::choose(Seq& s, const float* row) {
    const float* scores = row;
    if (s.neg_row) {  // guidance, before every processor (logprobs stay the model's own)
        guide(row, s.neg_row, V_, s.opt().guidance_scale, s.guided);
        scores = s.guided.data();
        s.neg_row = nullptr;
    }
    s.chosen = s.sampler.sample(scores, s.scores, s.history, s.n_prompt);
    add_logprobs(s, row);
}

// The log-probs of s.chosen (and the most likely tokens) under a row, when asked for.
void Generation::add_logprobs(Seq& s, const float* row) {
    const GenerateOptions& opt = s.opt();
    if (opt.logprobs) {
        const double lse = log_sum_exp(row, V_);
        s.logprob = float(double(row[s.chosen]) - lse);
        if (opt.top_logprobs > 0) s.top = top_logprobs(row, V_, opt.top_logprobs, lse, s.idx);
    }
}

void Generation::accept(Seq& s, int32_t token, const float* row) {
    const GenerateOptions& opt = s.opt();
    s.r.tokens.push_back(token);
    s.history.push_back(token);
    if (opt.logprobs) {
        s.r.logprobs.push_back(s.logprob);
        if (opt.top_logprobs > 0) s.r.top_logprobs.push_back(std::move(s.top));
    }
    if (std::find(opt.stop_token_ids.begin(), opt.stop_token_ids.end(), token) != opt.stop_token_ids.end()) {
        s.r.stop.token = token;
        return finish(s, "stop");
    }
    if (tok_ && !opt.ignore_eos && token == tok_->eot_id()) return finish(s, "eos");
    if (tok_ && token < tok_->vocab_size()) {
        const size_t old = s.bytes.size();
        s.bytes += text_bytes(*tok_, token, s.r.tokens.size() == 1, opt, s.r.prompt_index);
        // a stop string ending in the new bytes starts at most max_stop_ - 1 bytes before them
        const size_t from = old + 1 > s.req->max_stop ? old + 1 - s.req->max_stop : 0;
        const std::string* which = nullptr;
        size_t hit = find_stop(opt.stop, s.bytes, from, &which);
        if (hit != std::string::npos) {
            s.r.stop.string = *which;
            if (opt.include_stop_str_in_output) hit += which->size();
            // text before a stop string is never released early (release_text holds back any
            // suffix that may begin one), so the cut never takes back text already handed out
            hit = std::max(hit, s.released);
            s.bytes.resize(hit);
            return finish(s, "stop");
        }
    }
    if (opt.stop_hook && opt.stop_hook(s.r.prompt_index, s.history, row)) return finish(s, "stop");
    if (s.sampler.grammar_closed(s.history, s.n_prompt)) return finish(s, "stop");  // nothing can follow
    if (int64_t(s.r.tokens.size()) >= opt.max_new_tokens || int64_t(s.history.size()) >= n_ctx_ ||
        (s.neg_cache && s.neg_cache->pos >= n_ctx_) || s.req->out_of_time())
        return finish(s, "length");
    s.next_input = token;
    release_text(s, false);
}

void Generation::finish(Seq& s, const char* reason) {
    s.live = false;
    s.r.finish_reason = reason;  // its cache is retired after the step (it may be kept)
    release_text(s, true);
}

// Moves the bytes that can no longer change into r.text and pending: all of them when
// final; otherwise not a suffix that may still grow into a stop string, nor an unfinished
// UTF-8 character.
void Generation::release_text(Seq& s, bool final) {
    if (!tok_) return;
    const std::vector<std::string>& stops = s.opt().stop;
    const size_t max_stop = s.req->max_stop;
    size_t limit = s.bytes.size();
    if (!final) {
        const size_t most = std::min(max_stop == 0 ? 0 : max_stop - 1, limit - s.released);
        for (size_t k = most; k >= 1; k--) {
            const std::string_view tail(s.bytes.data() + limit - k, k);
            bool prefix = false;
            for (const auto& stop : stops) prefix = prefix || std::string_view(stop).substr(0, k) == tail;
            if (prefix) {
                limit -= k;
                break;
            }
        }
    }
    std::string text;
    s.released += utf8_replace(std::string_view(s.bytes).substr(s.released, limit - s.released), text, final);
    s.r.text += text;
    s.pending += text;
}

}  // namespace pygpt
