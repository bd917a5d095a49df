#include "prefix_cache.h"

#include <algorithm>
#include <stdexcept>

namespace pygpt {

int64_t shared_prefix(const std::vector<int32_t>& history, size_t n_prompt, const int32_t* tokens, int64_t n) {
    const int64_t m = std::min(n, int64_t(n_prompt) - 1);
    int64_t k = 0;
    while (k < m && tokens[k] == history[k]) k++;
    return k;
}

void PrefixCache::set_capacity(int64_t n) {
    if (n < 0) throw std::invalid_argument("prefix_cache must be >= 0 (0: off)");
    std::lock_guard<std::mutex> lock(mutex_);
    capacity_ = n;
    while (int64_t(kept_.size()) > capacity_) kept_.pop_front();
}

int64_t PrefixCache::capacity() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return capacity_;
}

size_t PrefixCache::size() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return kept_.size();
}

void PrefixCache::keep(KeptCache k) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (capacity_ == 0) return;
    kept_.push_back(std::move(k));
    while (int64_t(kept_.size()) > capacity_) kept_.pop_front();
}

int64_t PrefixCache::longest(const std::vector<int32_t>& history, size_t n_prompt) const {
    std::lock_guard<std::mutex> lock(mutex_);
    int64_t best = 0;
    for (const KeptCache& k : kept_)
        best = std::max(best, shared_prefix(history, n_prompt, k.tokens.data(), int64_t(k.tokens.size())));
    return best;
}

KeptCache PrefixCache::take(const std::vector<int32_t>& history, size_t n_prompt, int64_t* n) {
    std::lock_guard<std::mutex> lock(mutex_);
    *n = 0;
    size_t best = kept_.size();
    for (size_t i = 0; i < kept_.size(); i++) {
        const int64_t m = shared_prefix(history, n_prompt, kept_[i].tokens.data(), int64_t(kept_[i].tokens.size()));
        if (m > *n) {
            *n = m;
            best = i;
        }
    }
    if (best == kept_.size()) return KeptCache{};
    KeptCache k = std::move(kept_[best]);
    kept_.erase(kept_.begin() + int64_t(best));
    return k;
}

void PrefixCache::clear() {
    std::lock_guard<std::mutex> lock(mutex_);
    kept_.clear();
}

}  // namespace pygpt
