// Bandwidth and FMA-rate probes (see probes.h).
#include "kernels/probes.h"

#include <omp.h>

#include "kernels/simd.h"

#if defined(__AVX2__)
#include <immintrin.h>
#endif

namespace pygpt {
namespace PYGPT_KERNEL_NS {

float probe_read(const float* a, int64_t n, int reps, int n_threads) {
    float total = 0.0f;
#pragma omp parallel num_threads(n_threads) reduction(+ : total)
    {
        const int id = omp_get_thread_num(), nt = omp_get_num_threads();
        const int64_t b = n * id / nt / 64 * 64, e = id == nt - 1 ? n : n * (id + 1) / nt / 64 * 64;
        for (int rep = 0; rep < reps; rep++) {
#if defined(__AVX512F__)
            __m512 s0 = _mm512_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
            int64_t i = b;
            for (; i + 64 <= e; i += 64) {
                s0 = _mm512_add_ps(s0, _mm512_loadu_ps(a + i));
                s1 = _mm512_add_ps(s1, _mm512_loadu_ps(a + i + 16));
                s2 = _mm512_add_ps(s2, _mm512_loadu_ps(a + i + 32));
                s3 = _mm512_add_ps(s3, _mm512_loadu_ps(a + i + 48));
            }
            float t = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(s0, s1), _mm512_add_ps(s2, s3)));
#elif defined(__AVX2__)
            __m256 s0 = _mm256_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
            int64_t i = b;
            for (; i + 32 <= e; i += 32) {
                s0 = _mm256_add_ps(s0, _mm256_loadu_ps(a + i));
                s1 = _mm256_add_ps(s1, _mm256_loadu_ps(a + i + 8));
                s2 = _mm256_add_ps(s2, _mm256_loadu_ps(a + i + 16));
                s3 = _mm256_add_ps(s3, _mm256_loadu_ps(a + i + 24));
            }
            float buf[8];
            _mm256_storeu_ps(buf, _mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3)));
            float t = buf[0] + buf[1] + buf[2] + buf[3] + buf[4] + buf[5] + buf[6] + buf[7];
#else
            float acc[8] = {0};
            int64_t i = b;
            for (; i + 8 <= e; i += 8)
                for (int l = 0; l < 8; l++) acc[l] += a[i + l];
            float t = acc[0] + acc[1] + acc[2] + acc[3] + acc[4] + acc[5] + acc[6] + acc[7];
#endif
            for (; i < e; i++) t += a[i];
            total += t;
        }
    }
    return total;
}

double probe_fma(int64_t iters, int n_threads) {
    int nt_used = 1;
    float sink = 0.0f;
#pragma omp parallel num_threads(n_threads) reduction(+ : sink)
    {
#pragma omp single
        nt_used = omp_get_num_threads();
#if defined(__AVX512F__)
        constexpr int C = 12, L = 16;  // 12 chains hide the FMA latency
        __m512 acc[C];
        const __m512 m = _mm512_set1_ps(0.999999f), a = _mm512_set1_ps(1e-7f);
        for (int c = 0; c < C; c++) acc[c] = _mm512_set1_ps((float)c);
        for (int64_t it = 0; it < iters; it++)
            for (int c = 0; c < C; c++) acc[c] = _mm512_fmadd_ps(acc[c], m, a);
        __m512 s = acc[0];
        for (int c = 1; c < C; c++) s = _mm512_add_ps(s, acc[c]);
        sink += _mm512_reduce_add_ps(s);
#elif defined(__AVX2__)
        constexpr int C = 12, L = 8;
        __m256 acc[C];
        const __m256 m = _mm256_set1_ps(0.999999f), a = _mm256_set1_ps(1e-7f);
        for (int c = 0; c < C; c++) acc[c] = _mm256_set1_ps((float)c);
        for (int64_t it = 0; it < iters; it++)
            for (int c = 0; c < C; c++) acc[c] = _mm256_fmadd_ps(acc[c], m, a);
        float buf[8];
        __m256 s = acc[0];
        for (int c = 1; c < C; c++) s = _mm256_add_ps(s, acc[c]);
        _mm256_storeu_ps(buf, s);
        for (int l = 0; l < 8; l++) sink += buf[l];
#else
        constexpr int C = 12, L = 1;
        float acc[C];
        for (int c = 0; c < C; c++) acc[c] = (float)c;
        for (int64_t it = 0; it < iters; it++)
            for (int c = 0; c < C; c++) acc[c] = acc[c] * 0.999999f + 1e-7f;
        for (int c = 0; c < C; c++) sink += acc[c];
#endif
        (void)L;
    }
    constexpr int lanes =
#if defined(__AVX512F__)
        16;
#elif defined(__AVX2__)
        8;
#else
        1;
#endif
    return (sink == 12345.0f ? 1.0 : 0.0) + 2.0 * 12 * lanes * (double)iters * nt_used;
}

#if defined(PYGPT_AMX)
// `iters` rounds of four independent tile products per thread, int8 (TDPBSSD) or bf16
// (TDPBF16PS); returns the operations done (2 per multiply-add).
template <bool BF16>
static double tile_products(int64_t iters, int n_threads) {
    int nt_used = 1;
#pragma omp parallel num_threads(n_threads)
    {
#pragma omp single
        nt_used = omp_get_num_threads();
        alignas(64) uint8_t a[1024], b[1024];
        alignas(64) int32_t c[16 * 16];
        for (int i = 0; i < 512; i++) {
            if (BF16) {  // bf16 values near 1 and near 0.5
                const uint16_t ai = (uint16_t)(0x3F80 + i % 7), bi = (uint16_t)(0x3F00 + i % 5);
                std::memcpy(a + 2 * i, &ai, 2);
                std::memcpy(b + 2 * i, &bi, 2);
            } else {
                a[2 * i] = a[2 * i + 1] = (uint8_t)(i % 7 - 3);
                b[2 * i] = b[2 * i + 1] = (uint8_t)(i % 5 - 2);
            }
        }
        simd::configure_tiles();
        _tile_loadd(0, a, 64);
        _tile_loadd(1, b, 64);
        _tile_zero(4);
        _tile_zero(5);
        _tile_zero(6);
        _tile_zero(7);
        // four sums, as the kernels keep (six ran at half the rate on a Sapphire Rapids VM)
        for (int64_t it = 0; it < iters; it++) {
            if (BF16) {
                _tile_dpbf16ps(4, 0, 1);
                _tile_dpbf16ps(5, 0, 1);
                _tile_dpbf16ps(6, 0, 1);
                _tile_dpbf16ps(7, 0, 1);
            } else {
                _tile_dpbssd(4, 0, 1);
                _tile_dpbssd(5, 0, 1);
                _tile_dpbssd(6, 0, 1);
                _tile_dpbssd(7, 0, 1);
            }
        }
        _tile_stored(7, c, 64);  // the sums are kept, so the products cannot be dropped
        _tile_release();
        volatile int32_t sink = c[0];
        (void)sink;
    }
    // a product: 16 x 16 outputs of 64 int8 or 32 bf16 multiply-adds each
    return 2.0 * 4 * 16 * 16 * (BF16 ? 32 : 64) * (double)iters * nt_used;
}

double probe_tiles(int64_t iters, int n_threads) { return tile_products<false>(iters, n_threads); }
double probe_tiles_bf16(int64_t iters, int n_threads) { return tile_products<true>(iters, n_threads); }
#endif

}  // namespace PYGPT_KERNEL_NS
}  // namespace pygpt
