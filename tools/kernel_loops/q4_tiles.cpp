// The int4 products of csrc/kernels/linear_quant.cpp in a loop, one thread: the one-token
// panel kernel (GB/s of weights) and the 8-token tile (vpdpbusd per second), over a matrix
// of n_out x 768 in L2 (n_out 768) or streamed from DRAM (n_out 131072).
//   tools/kernel_loops/build.sh && build/kernel_loops/q4_tiles 768 && build/kernel_loops/q4_tiles 131072
#include "kernels/linear_quant.cpp"

#include <cstdio>
#include <vector>

#include "common.h"

using namespace pygpt::avx512::simd;

int main(int argc, char** argv) {
    const int64_t n_in = 768, n_out = argc > 1 ? std::atoll(argv[1]) : 768;
    pygpt::Matrix m;  // int4 in groups of 64, as convert.py writes it
    m.dtype = pygpt::DType::Q4, m.n_out = n_out, m.n_in = n_in, m.group = 64;
    const QShape s = quant_shape(m);
    const int64_t panels = n_out / pygpt::kPanel;
    size_t bytes;
    const uint8_t* w = huge_buffer(panels * s.panel_bytes, &bytes);
    std::vector<float> scales(panels * pygpt::kPanel * s.n_groups, 0.01f), sx(8, 1.0f), y(8 * n_out);
    std::vector<int8_t> xq(8 * n_in);
    for (auto& b : xq) b = static_cast<int8_t>(std::rand() % 200 - 100);
    std::vector<int32_t> corr(8 * s.n_groups, 5);
    const double weight_bytes = double(panels) * s.panel_bytes;
    const int reps = static_cast<int>(4e8 / weight_bytes) + 1;
    for (int round = 0; round < 4; round++) {
        auto t = std::chrono::steady_clock::now();
        for (int r = 0; r < reps; r++)
            for (int64_t p = 0; p < panels; p++)
                q4_decode_panel<false>(panel_at(w, scales.data(), s, p, 0, n_out), s, xq.data(), corr.data(), 1.0f, nullptr,
                                       y.data());
        const double one = seconds_since(t);
        t = std::chrono::steady_clock::now();
        for (int r = 0; r < reps; r++)
            for (int64_t p = 0; p < panels; p++)
                panel_tile<true, false, 8>(panel_at(w, scales.data(), s, p, 0, n_out), s, xq.data(), corr.data(), sx.data(),
                                           nullptr, y.data());
        const double eight = seconds_since(t);
        std::printf("n_out %lld: one token %.1f GB/s, 8 tokens %.2f G vpdpbusd/s\n", (long long)n_out,
                    reps * weight_bytes / one / 1e9, reps * weight_bytes / 64 * 16 / eight / 1e9);
    }
}
