// One head of int8 attention (attention_row_t of csrc/kernels/ops.cpp) in a loop, one
// thread: eight 124M-shaped int8 caches (12 layers x 12 heads x 1024 positions x 64) at
// 192 keys, read from DRAM (the caches together far exceed L3, and a 64 MB buffer is swept
// between rounds), or one layer of one cache again and again ("cache"). "read" instead
// only loads the same bytes in the same order (each head's 12 KB of keys, then its 12 KB
// of values): the rate of the access pattern itself, whatever the kernel computes. "heads"
// runs the heads 4 at a time through attention_heads_int8 (as a decode step does), which
// reads 4 runs in step. CTX=n sets the positions each head's cache holds (192 to 1024: heads
// from back to back to as far apart as now).
//   tools/kernel_loops/build.sh && [CTX=n] build/kernel_loops/attention_int8 [cache | read | heads]
#include "kernels/ops.cpp"

#include <algorithm>
#include <cstdio>
#include <string>
#include <vector>

#include "common.h"

using namespace pygpt::avx512::simd;

// Loads n bytes at k, then n at v (the attention kernel's order), into a sink.
static __m512i g_sink;
static void read_only(const int8_t* k, const int8_t* v, int64_t n) {
    __m512i a = _mm512_setzero_si512();
    for (int64_t b = 0; b < n; b += 64) a = _mm512_xor_si512(a, _mm512_loadu_si512(k + b));
    for (int64_t b = 0; b < n; b += 64) a = _mm512_xor_si512(a, _mm512_loadu_si512(v + b));
    g_sink = _mm512_xor_si512(g_sink, a);
}

int main(int argc, char** argv) {
    const std::string mode = argc > 1 ? argv[1] : "";
    const bool in_cache = mode == "cache", read = mode == "read", heads = mode == "heads";
    const int64_t L = 12, NH = 12, HS = 64, S = 8, NK = 192;
    const int64_t CTX = std::getenv("CTX") ? std::max<int64_t>(NK, std::atol(std::getenv("CTX"))) : 1024;
    const int64_t layers = in_cache ? 1 : L, seqs = in_cache ? 1 : S, reps = in_cache ? 200 : 1;
    const size_t per_seq = L * NH * CTX * HS;
    size_t bytes;
    const auto* k = reinterpret_cast<const int8_t*>(huge_buffer(S * per_seq, &bytes));
    const auto* v = reinterpret_cast<const int8_t*>(huge_buffer(S * per_seq, &bytes));
    std::vector<float> scales(S * L * NH * CTX, 0.01f), q(HS, 0.1f), out(4 * HS), scratch(4 * CTX);
    std::vector<char> sweep(64 << 20, 1);
    for (int round = 0; round < 5; round++) {
        if (!in_cache)
            for (size_t i = 0; i < sweep.size(); i += 64) sweep[i]++;
        const auto t = std::chrono::steady_clock::now();
        for (int64_t rep = 0; rep < reps; rep++)
            for (int64_t l = 0; l < layers; l++)
                for (int64_t sq = 0; sq < seqs; sq++)
                    for (int64_t h = 0; h < NH; h += heads ? 4 : 1) {
                        const size_t off = sq * per_seq + (l * NH + h) * CTX * HS;
                        const float* sc = scales.data() + ((sq * L + l) * NH + h) * CTX;
                        if (heads) {
                            pygpt::AttentionHead hs[4];
                            for (int g = 0; g < 4; g++)
                                hs[g] = {out.data() + g * HS, q.data(), k + off + g * CTX * HS, v + off + g * CTX * HS,
                                         sc + g * CTX, sc + g * CTX, NK};
                            attention_heads_int8(hs, 4, HS, HS, 0.125f, scratch.data());
                        } else if (read)
                            read_only(k + off, v + off, NK * HS);
                        else
                            attention_row_t(out.data(), q.data(), k + off, v + off, sc, sc, HS, NK, HS, 0.125f,
                                            scratch.data());
                    }
        const double bytes_read = 2.0 * reps * layers * seqs * NH * NK * HS;
        std::printf("int8 attention%s %s: %.1f GB/s\n", read ? " (loads only)" : heads ? " (4 heads a call)" : "",
                    in_cache ? "in cache" : "from DRAM",
                    bytes_read / seconds_since(t) / 1e9);
    }
}
