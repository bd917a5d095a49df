// Shared by the kernel loops: a buffer in 2 MiB pages (the model's weights are mapped that
// way; loops over 4 KiB pages measure page walks, not the kernel) and a timer.
#pragma once
#include <sys/mman.h>

#include <chrono>
#include <cstdint>
#include <cstdlib>

static inline uint8_t* huge_buffer(size_t bytes, size_t* rounded) {
    const size_t huge = size_t(2) << 20;
    *rounded = (bytes + huge - 1) / huge * huge;
    auto* p = static_cast<uint8_t*>(std::aligned_alloc(huge, *rounded));
    if (!p) std::abort();
    madvise(p, *rounded, MADV_HUGEPAGE);
    for (size_t i = 0; i < *rounded; i++) p[i] = static_cast<uint8_t>(std::rand());
    return p;
}

static inline double seconds_since(std::chrono::steady_clock::time_point t) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}
