// Prefix caching: the KV caches of finished sequences, kept so that a later prompt that starts
// with the same tokens runs only the rest. A Batcher's Generation has its own; a model's generate
// calls share the model's (pygpt.load(..., prefix_cache=n)). Outputs never change: a cache that
// ran the same tokens holds the same bits (rows never depend on the batch).
#pragma once
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <vector>

#include "model.h"

namespace pygpt {

// A finished sequence's caches.
struct KeptCache {
    std::vector<int32_t> tokens;        // the tokens whose keys and values `cache` holds
    std::unique_ptr<KVCache> cache;
    // and its assistant's (the first draft_cache->pos of those tokens), if it had one
    std::unique_ptr<KVCache> draft_cache;
    std::shared_ptr<Model> assistant;   // held: a cache is only ever reused by its own model
};

// How many leading tokens of a prompt (history[0 : n_prompt]), all but its last (whose logits
// row is needed), the first n of `tokens` share.
int64_t shared_prefix(const std::vector<int32_t>& history, size_t n_prompt, const int32_t* tokens, int64_t n);

// The last `capacity` finished sequences' caches, oldest first. Thread-safe: the generate calls
// of one model run on many threads.
class PrefixCache {
public:
    explicit PrefixCache(int64_t capacity = 0) { set_capacity(capacity); }
    // Throws std::invalid_argument if n < 0; drops the oldest beyond n.
    void set_capacity(int64_t n);
    int64_t capacity() const;
    size_t size() const;
    void keep(KeptCache k);  // nothing with capacity 0
    // The longest prefix of the prompt history[0 : n_prompt] a kept cache holds.
    int64_t longest(const std::vector<int32_t>& history, size_t n_prompt) const;
    // Takes out the kept cache holding the longest prefix of the prompt (at least one token),
    // and that prefix's length in *n; an empty KeptCache (no cache) if none holds one.
    KeptCache take(const std::vector<int32_t>& history, size_t n_prompt, int64_t* n);
    void clear();

private:
    mutable std::mutex mutex_;
    int64_t capacity_ = 0;
    std::deque<KeptCache> kept_;
};

}  // namespace pygpt
