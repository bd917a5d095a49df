// attention_row_int8 of csrc/kernels/ops.cpp in a loop, one thread: eight 124M-shaped int8
// caches (12 layers x 12 heads x 1024 positions x 64) at 192 keys, read from DRAM (the
// caches together far exceed L3, and a 64 MB buffer is swept between rounds), or one
// layer of one cache again and again (in cache: any argument).
//   tools/kernel_loops/build.sh && build/kernel_loops/attention_int8 && build/kernel_loops/attention_int8 cache
#include "kernels/ops.cpp"

#include <cstdio>
#include <vector>

#include "common.h"

using namespace pygpt::avx512::simd;

int main(int argc, char** argv) {
    const bool in_cache = argc > 1;
    const int64_t L = 12, NH = 12, HS = 64, CTX = 1024, S = 8, NK = 192;
    const int64_t layers = in_cache ? 1 : L, seqs = in_cache ? 1 : S, reps = in_cache ? 200 : 1;
    const size_t per_seq = L * NH * CTX * HS;
    size_t bytes;
    const auto* k = reinterpret_cast<const int8_t*>(huge_buffer(S * per_seq, &bytes));
    const auto* v = reinterpret_cast<const int8_t*>(huge_buffer(S * per_seq, &bytes));
    std::vector<float> scales(S * L * NH * CTX, 0.01f), q(HS, 0.1f), out(HS), scratch(CTX);
    std::vector<char> sweep(64 << 20, 1);
    for (int round = 0; round < 5; round++) {
        if (!in_cache)
            for (size_t i = 0; i < sweep.size(); i += 64) sweep[i]++;
        const auto t = std::chrono::steady_clock::now();
        for (int64_t rep = 0; rep < reps; rep++)
            for (int64_t l = 0; l < layers; l++)
                for (int64_t sq = 0; sq < seqs; sq++)
                    for (int64_t h = 0; h < NH; h++) {
                        const size_t off = sq * per_seq + (l * NH + h) * CTX * HS;
                        const float* sc = scales.data() + ((sq * L + l) * NH + h) * CTX;
                        attention_row_int8(out.data(), q.data(), k + off, v + off, sc, sc, HS, NK, HS, 0.125f,
                                           scratch.data());
                    }
        const double read = 2.0 * reps * layers * seqs * NH * NK * HS;
        std::printf("int8 attention %s: %.1f GB/s\n", in_cache ? "in cache" : "from DRAM",
                    read / seconds_since(t) / 1e9);
    }
}
