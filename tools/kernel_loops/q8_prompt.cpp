// The int8 prompt products of csrc/kernels/linear_quant.cpp in a loop, one thread: a
// prompt's T tokens (default 128) against each matrix shape of the 124M model (c_attn,
// attn_proj, c_fc, mlp_proj), per-row scales as convert.py writes int8; vpdpbusd per second
// (one core retires 3.62 G a second: tools/kernel_loops/ports).
//   tools/kernel_loops/build.sh && build/kernel_loops/q8_prompt [T]
#include "kernels/linear_quant.cpp"

#include <cstdio>
#include <vector>

#include "common.h"

using namespace pygpt::avx512::simd;

int main(int argc, char** argv) {
    const int64_t T = argc > 1 ? std::atoll(argv[1]) : 128;
    const int64_t shapes[4][2] = {{2304, 768}, {768, 768}, {3072, 768}, {768, 3072}};  // n_out, n_in
    for (int round = 0; round < 3; round++)
        for (const auto& shape : shapes) {
            pygpt::Matrix m;  // int8, one scale per row (group = n_in), as convert.py writes it
            m.dtype = pygpt::DType::Q8, m.n_out = shape[0], m.n_in = shape[1], m.group = shape[1];
            const QShape s = quant_shape(m);
            size_t bytes;
            const uint8_t* w = huge_buffer(s.n_out / pygpt::kPanel * s.panel_bytes, &bytes);
            std::vector<float> scales(s.n_out, 0.01f), sx(T, 1.0f), y(T * s.n_out);
            std::vector<int8_t> xq(T * s.xs);
            for (auto& b : xq) b = static_cast<int8_t>(std::rand() % 200 - 100);
            std::vector<int32_t> corr(T, 5);
            const double products = double(T) * s.n_out * s.n_in / 64;  // vpdpbusd
            const int reps = static_cast<int>(2e8 / products) + 1;
            auto t = std::chrono::steady_clock::now();
            for (int r = 0; r < reps; r++)
                panels_many<false>(w, scales.data(), s, xq.data(), corr.data(), sx.data(), T, nullptr, y.data(), 0,
                                   s.n_out, nullptr);
            const double sec = seconds_since(t);
            std::printf("%lld x %lld, T %lld: %.2f G vpdpbusd/s\n", (long long)s.n_out, (long long)s.n_in,
                        (long long)T, reps * products / sec / 1e9);
            std::free(const_cast<uint8_t*>(w));
        }
}
