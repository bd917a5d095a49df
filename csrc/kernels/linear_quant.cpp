// Linear layers with quantized weights (q8, q4): activations quantized per token to int8,
// integer dot products per block of 64 inputs (see linear.cpp and docs/FORMAT.md).
#include <cmath>
#include <cstring>
#include <stdexcept>

#include "kernels.h"
#include "kernels/generic.h"
#include "kernels/linear.h"
#include "kernels/simd.h"

#if defined(__AVX2__)

namespace pygpt {
namespace PYGPT_KERNEL_NS {
namespace simd {

namespace {
// ---------------------------------------------------------------------------------------
// Quantized weights (AVX-512: VNNI; AVX2: vpmaddubsw)

#if defined(__AVX512F__)
constexpr int R_Q = 4, TT_Q = 3;  // 12 int + 12 float accumulators + 4 weights

// One block of 64 weights of row w as unsigned bytes: q8 stored as int8 w -> w + 128;
// q4 stored as nibbles w + 8 (byte j: element j low, element j + 32 high).
template <bool Q4>
static inline __m512i load_wblock(const uint8_t* row, int64_t block, int64_t n_in) {
    if (Q4) {
        const __m256i v = _mm256_loadu_si256((const __m256i*)(row + block * 32));
        const __m256i lo = _mm256_and_si256(v, _mm256_set1_epi8(0x0f));
        const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), _mm256_set1_epi8(0x0f));
        return _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
    }
    const int64_t k = block * 64;
    const __m512i v = n_in - k >= 64 ? _mm512_loadu_si512(row + k)
                                     : _mm512_maskz_loadu_epi8(tail_mask64(n_in - k), row + k);
    return _mm512_xor_si512(v, _mm512_set1_epi8((char)0x80));
}

// The R x TT tile: per group, integer sums in 16 lanes, then scaled into f32 lanes.
template <bool Q4, int R, int TT>
static inline void quant_tile_groups(const uint8_t* w, int64_t w_stride, const float* sw, int64_t n_groups,
                                     int64_t blocks_per_group, int64_t n_in, const int8_t* xq, int64_t xq_stride,
                                     const int32_t* negcorr, const float* sx, const float* bias, float* y,
                                     int64_t ldy) {
    __m512 facc[TT * R];
    #pragma GCC unroll 32
    for (int i = 0; i < TT * R; i++) facc[i] = _mm512_setzero_ps();
    int64_t block = 0;
    for (int64_t g = 0; g < n_groups; g++) {
        __m512i iacc[TT * R];
        #pragma GCC unroll 32
        for (int t = 0; t < TT; t++) {
            const __m512i c = _mm512_loadu_si512(negcorr + (t * n_groups + g) * 16);
            #pragma GCC unroll 32
            for (int r = 0; r < R; r++) iacc[t * R + r] = c;
        }
        for (int64_t b = 0; b < blocks_per_group; b++, block++) {
            __m512i wv[R];
            if (TT == 1)  // decode: prefetch ahead (see float_tile)
                #pragma GCC unroll 32
                for (int r = 0; r < R; r++)
                    _mm_prefetch((const char*)w + r * w_stride + block * (Q4 ? 32 : 64) + PREFETCH_BYTES, _MM_HINT_T0);
#pragma GCC unroll 8
            for (int r = 0; r < R; r++) wv[r] = load_wblock<Q4>(w + r * w_stride, block, n_in);
#pragma GCC unroll 8
            for (int t = 0; t < TT; t++) {
                const __m512i xv = _mm512_loadu_si512(xq + t * xq_stride + block * 64);
#pragma GCC unroll 8
                for (int r = 0; r < R; r++) iacc[t * R + r] = _mm512_dpbusd_epi32(iacc[t * R + r], wv[r], xv);
            }
        }
        #pragma GCC unroll 32
        for (int r = 0; r < R; r++) {
            const __m512 s = _mm512_set1_ps(sw[r * n_groups + g]);
            #pragma GCC unroll 32
            for (int t = 0; t < TT; t++)
                facc[t * R + r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(iacc[t * R + r]), s, facc[t * R + r]);
        }
    }
    float sums[TT * R];
    #pragma GCC unroll 32
    for (int i = 0; i < TT * R; i += 16) reduce_n(facc + i, TT * R - i < 16 ? TT * R - i : 16, sums + i);
    #pragma GCC unroll 32
    for (int t = 0; t < TT; t++)
        #pragma GCC unroll 32
        for (int r = 0; r < R; r++) y[t * ldy + r] = sums[t * R + r] * sx[t] + (bias ? bias[r] : 0.0f);
}

// One row, one token: the float accumulator of quant_tile_groups<Q4, 1, 1>, step for step.
using VecQ = __m512;
template <bool Q4>
static inline void quant_tile_groups_acc(const uint8_t* w, const float* sw, int64_t n_groups, int64_t bpg,
                                         int64_t n_in, const int8_t* xq, const int32_t* negcorr, __m512* out) {
    __m512 facc = _mm512_setzero_ps();
    int64_t block = 0;
    for (int64_t g = 0; g < n_groups; g++) {
        __m512i iacc = _mm512_loadu_si512(negcorr + g * 16);
        for (int64_t b = 0; b < bpg; b++, block++) {
            _mm_prefetch((const char*)w + block * (Q4 ? 32 : 64) + PREFETCH_BYTES, _MM_HINT_T0);
            iacc = _mm512_dpbusd_epi32(iacc, load_wblock<Q4>(w, block, n_in), _mm512_loadu_si512(xq + block * 64));
        }
        facc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(iacc), _mm512_set1_ps(sw[g]), facc);
    }
    *out = facc;
}

// Quantizes one activation row (generic::quantize_row, vectorised: bitwise the same) and
// writes the per-lane correction -c * sum(x) of each group (c = 128 for q8, 8 for q4: the
// offset of the unsigned weights), so that vpdpbusd over unsigned weights gives the
// signed dot product exactly.
static float quantize_row(const float* x, int64_t n_in, int64_t n_pad, int64_t blocks_per_group, int64_t n_groups,
                          int offset, int8_t* xq, int32_t* negcorr) {
    __m512 amax = _mm512_setzero_ps();
    int64_t k = 0;
    for (; k + 16 <= n_in; k += 16) amax = _mm512_max_ps(amax, _mm512_abs_ps(_mm512_loadu_ps(x + k)));
    if (k < n_in) amax = _mm512_max_ps(amax, _mm512_abs_ps(_mm512_maskz_loadu_ps(tail_mask16(n_in - k), x + k)));
    const float m = _mm512_reduce_max_ps(amax);
    const float inv = m > 0.0f ? 127.0f / m : 0.0f;
    const __m512 vinv = _mm512_set1_ps(inv);
    for (k = 0; k < n_pad; k += 16) {
        const __m512 v = n_in - k >= 16 ? _mm512_loadu_ps(x + k)
                                        : (k < n_in ? _mm512_maskz_loadu_ps(tail_mask16(n_in - k), x + k)
                                                    : _mm512_setzero_ps());
        __m512i q = _mm512_cvtps_epi32(_mm512_mul_ps(v, vinv));
        q = _mm512_max_epi32(_mm512_min_epi32(q, _mm512_set1_epi32(127)), _mm512_set1_epi32(-127));
        _mm_storeu_si128((__m128i*)(xq + k), _mm512_cvtepi32_epi8(q));
    }
    const __m512i off = _mm512_set1_epi8((char)offset);
    for (int64_t g = 0, block = 0; g < n_groups; g++) {
        __m512i c = _mm512_setzero_si512();
        for (int64_t b = 0; b < blocks_per_group; b++, block++)
            c = _mm512_dpbusd_epi32(c, off, _mm512_loadu_si512(xq + block * 64));
        _mm512_storeu_si512(negcorr + g * 16, _mm512_sub_epi32(_mm512_setzero_si512(), c));
    }
    return m > 0.0f ? m / 127.0f : 0.0f;
}

#else  // AVX2: no VNNI; byte products with vpmaddubsw

constexpr int R_Q = 2, TT_Q = 2;

// 32 weights of a 64-input block as bytes: q8 signed; q4 unsigned q + 8 (half 0: inputs
// 0-31 of the block, half 1: 32-63).
template <bool Q4>
static inline __m256i load_whalf(const uint8_t* row, int64_t block, int half, int64_t n_in) {
    if (Q4) {
        const __m256i v = _mm256_loadu_si256((const __m256i*)(row + block * 32));
        return _mm256_and_si256(half ? _mm256_srli_epi16(v, 4) : v, _mm256_set1_epi8(0x0f));
    }
    const int64_t k = block * 64 + half * 32;
    if (n_in - k >= 32) return _mm256_loadu_si256((const __m256i*)(row + k));
    alignas(32) uint8_t buf[32] = {0};
    if (n_in > k) std::memcpy(buf, row + k, n_in - k);
    return _mm256_load_si256((const __m256i*)buf);
}

// Integer dot of 32 weight bytes with 32 activation bytes into 8 int32 lanes. q8: |x| times
// w * sign(x) (pairs at most 2 * 127 * 127: no saturation); q4: (q + 8) times x (pairs at
// most 2 * 15 * 127), the offset removed by the precomputed correction.
template <bool Q4>
static inline __m256i dot32(__m256i w, __m256i x) {
    const __m256i ones = _mm256_set1_epi16(1);
    if (Q4) return _mm256_madd_epi16(_mm256_maddubs_epi16(w, x), ones);
    return _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_abs_epi8(x), _mm256_sign_epi8(w, x)), ones);
}

// The R x TT tile: per group, integer sums in 8 lanes, then scaled into f32 lanes.
template <bool Q4, int R, int TT>
static inline void quant_tile_groups(const uint8_t* w, int64_t w_stride, const float* sw, int64_t n_groups,
                                     int64_t blocks_per_group, int64_t n_in, const int8_t* xq, int64_t xq_stride,
                                     const int32_t* negcorr, const float* sx, const float* bias, float* y,
                                     int64_t ldy) {
    __m256 facc[TT * R];
    for (int i = 0; i < TT * R; i++) facc[i] = _mm256_setzero_ps();
    int64_t block = 0;
    for (int64_t g = 0; g < n_groups; g++) {
        __m256i iacc[TT * R];
        for (int t = 0; t < TT; t++) {
            const __m256i c = Q4 ? _mm256_loadu_si256((const __m256i*)(negcorr + (t * n_groups + g) * 16))
                                 : _mm256_setzero_si256();
            for (int r = 0; r < R; r++) iacc[t * R + r] = c;
        }
        for (int64_t b = 0; b < blocks_per_group; b++, block++) {
            for (int half = 0; half < 2; half++) {
                __m256i wv[R];
                for (int r = 0; r < R; r++) wv[r] = load_whalf<Q4>(w + r * w_stride, block, half, n_in);
                for (int t = 0; t < TT; t++) {
                    const __m256i xv =
                        _mm256_loadu_si256((const __m256i*)(xq + t * xq_stride + block * 64 + half * 32));
                    for (int r = 0; r < R; r++)
                        iacc[t * R + r] = _mm256_add_epi32(iacc[t * R + r], dot32<Q4>(wv[r], xv));
                }
            }
        }
        for (int r = 0; r < R; r++) {
            const __m256 s = _mm256_set1_ps(sw[r * n_groups + g]);
            for (int t = 0; t < TT; t++)
                facc[t * R + r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(iacc[t * R + r]), s, facc[t * R + r]);
        }
    }
    float sums[TT * R];
    reduce_n(facc, TT * R, sums);
    for (int t = 0; t < TT; t++)
        for (int r = 0; r < R; r++) y[t * ldy + r] = sums[t * R + r] * sx[t] + (bias ? bias[r] : 0.0f);
}

// One row, one token: the float accumulator of quant_tile_groups<Q4, 1, 1>, step for step.
using VecQ = __m256;
template <bool Q4>
static inline void quant_tile_groups_acc(const uint8_t* w, const float* sw, int64_t n_groups, int64_t bpg,
                                         int64_t n_in, const int8_t* xq, const int32_t* negcorr, __m256* out) {
    __m256 facc = _mm256_setzero_ps();
    int64_t block = 0;
    for (int64_t g = 0; g < n_groups; g++) {
        __m256i iacc = Q4 ? _mm256_loadu_si256((const __m256i*)(negcorr + g * 16)) : _mm256_setzero_si256();
        for (int64_t b = 0; b < bpg; b++, block++)
            for (int half = 0; half < 2; half++) {
                const __m256i xv = _mm256_loadu_si256((const __m256i*)(xq + block * 64 + half * 32));
                iacc = _mm256_add_epi32(iacc, dot32<Q4>(load_whalf<Q4>(w, block, half, n_in), xv));
            }
        facc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(iacc), _mm256_set1_ps(sw[g]), facc);
    }
    *out = facc;
}

// generic::quantize_row, zero padding to n_pad, and for q4 the per-lane correction
// -8 * (sum of the activations each lane of dot32 sees) of each group.
static float quantize_row(const float* x, int64_t n_in, int64_t n_pad, int64_t blocks_per_group, int64_t n_groups,
                          int offset, int8_t* xq, int32_t* negcorr) {
    const float sx = generic::quantize_row(x, n_in, xq);
    std::memset(xq + n_in, 0, n_pad - n_in);
    if (offset == 8) {
        for (int64_t g = 0, block = 0; g < n_groups; g++) {
            int32_t lane[8] = {0};
            for (int64_t b = 0; b < blocks_per_group; b++, block++)
                for (int j = 0; j < 64; j++) lane[(j % 32) / 4] += xq[block * 64 + j];
            for (int l = 0; l < 8; l++) negcorr[g * 16 + l] = -8 * lane[l];
        }
    }
    return sx;
}
#endif  // __AVX512F__

template <bool Q4, int R>
static inline void quant_row_panel(const uint8_t* w, int64_t w_stride, const float* sw, int64_t n_groups,
                                   int64_t bpg, int64_t n_in, const int8_t* xq, int64_t xq_stride,
                                   const int32_t* negcorr, const float* sx, int64_t T, const float* bias, float* y,
                                   int64_t ldy) {
    constexpr int TT = TT_Q;
    const int64_t nc = n_groups * 16;
    int64_t t = 0;
    for (; t + TT <= T; t += TT)
        quant_tile_groups<Q4, R, TT>(w, w_stride, sw, n_groups, bpg, n_in, xq + t * xq_stride, xq_stride,
                                      negcorr + t * nc, sx + t, bias, y + t * ldy, ldy);
    const int8_t* xt = xq + t * xq_stride;
    const int32_t* ct = negcorr + t * nc;
    float* yt = y + t * ldy;
    switch (T - t) {
        case 0: break;
        case 1: quant_tile_groups<Q4, R, 1>(w, w_stride, sw, n_groups, bpg, n_in, xt, xq_stride, ct, sx + t, bias, yt, ldy); break;
        case 2: quant_tile_groups<Q4, R, 2>(w, w_stride, sw, n_groups, bpg, n_in, xt, xq_stride, ct, sx + t, bias, yt, ldy); break;
    }
}

template <bool Q4>
static void quant_rows(const uint8_t* w, int64_t w_stride, const float* scales, int64_t n_groups, int64_t bpg,
                       int64_t n_in, const int8_t* xq, int64_t xq_stride, const int32_t* negcorr, const float* sx,
                       int64_t T, const float* bias, float* y, int64_t n_out, int64_t o_begin, int64_t o_end) {
    int64_t o = o_begin;
    for (; o + R_Q <= o_end; o += R_Q)
        quant_row_panel<Q4, R_Q>(w + o * w_stride, w_stride, scales + o * n_groups, n_groups, bpg, n_in, xq,
                                         xq_stride, negcorr, sx, T, bias ? bias + o : nullptr, y + o, n_out);
    for (; o < o_end; o++)
        quant_row_panel<Q4, 1>(w + o * w_stride, w_stride, scales + o * n_groups, n_groups, bpg, n_in, xq,
                                       xq_stride, negcorr, sx, T, bias ? bias + o : nullptr, y + o, n_out);
}

// One token (decode): rows one after another (see float_rows_one_token); per output the
// same steps as quant_tile_groups with TT = 1.
template <bool Q4>
static void quant_rows_one_token(const uint8_t* w, int64_t w_stride, const float* scales, int64_t n_groups,
                                 int64_t bpg, int64_t n_in, const int8_t* xq, const int32_t* negcorr, float sx,
                                 const float* bias, float* y, int64_t o_begin, int64_t o_end) {
    constexpr int G = sizeof(VecQ) / sizeof(float);
    for (int64_t o0 = o_begin; o0 < o_end; o0 += G) {
        const int n = o_end - o0 < G ? (int)(o_end - o0) : G;
        VecQ facc[G];
        for (int r = 0; r < n; r++)
            quant_tile_groups_acc<Q4>(w + (o0 + r) * w_stride, scales + (o0 + r) * n_groups, n_groups, bpg, n_in, xq,
                                      negcorr, &facc[r]);
        float sums[G];
        reduce_n(facc, n, sums);
        for (int r = 0; r < n; r++) y[o0 + r] = sums[r] * sx + (bias ? bias[o0 + r] : 0.0f);
    }
}

template <bool Q4>
void quant_linear(const Matrix& m, const float* bias, const float* x, int64_t T, float* y, int64_t o_begin,
                  int64_t o_end) {
    const int64_t n_in = m.n_in, n_out = m.n_out, group = m.group;
    const int64_t n_groups = n_in / group;
    const int64_t bpg = (group + 63) / 64;  // blocks of 64 inputs per group
    const int64_t n_pad = round_up(n_in, 64);
    const int64_t w_stride = Q4 ? n_pad / 2 : n_in;
    // this thread's scratch: xq [T, n_pad] int8 | negcorr [T, n_groups, 16] int32 | sx [T]
    const int64_t xq_bytes = round_up(T * n_pad, 64), nc_bytes = T * n_groups * 64;
    uint8_t* scratch = (uint8_t*)thread_scratch(0, xq_bytes + nc_bytes + T * sizeof(float));
    if (!scratch) throw std::bad_alloc();
    int8_t* xq = (int8_t*)scratch;
    int32_t* negcorr = (int32_t*)(scratch + xq_bytes);
    float* sx = (float*)(scratch + xq_bytes + nc_bytes);
    const int64_t tb = token_block(n_pad + n_groups * 64, TT_Q);
    const uint8_t* w = (const uint8_t*)m.data;
    // every thread quantizes all T rows itself: a few microseconds, and no barrier
    for (int64_t t = 0; t < T; t++)
        sx[t] = quantize_row(x + t * n_in, n_in, n_pad, bpg, n_groups, Q4 ? 8 : 128, xq + t * n_pad,
                             negcorr + t * n_groups * 16);
    for (int64_t t0 = 0; t0 < T; t0 += tb) {
        const int64_t nt = T - t0 < tb ? T - t0 : tb;
        const int8_t* xq0 = xq + t0 * n_pad;
        const int32_t* nc0 = negcorr + t0 * n_groups * 16;
        if (nt == 1)
            quant_rows_one_token<Q4>(w, w_stride, m.scales, n_groups, bpg, n_in, xq0, nc0, sx[t0], bias,
                                     y + t0 * n_out, o_begin, o_end);
        else
            quant_rows<Q4>(w, w_stride, m.scales, n_groups, bpg, n_in, xq0, n_pad, nc0, sx + t0, nt, bias,
                           y + t0 * n_out, n_out, o_begin, o_end);
    }
}

}  // namespace

void linear_quant(const Matrix& m, const float* bias, const float* x, int64_t T, float* y, int64_t o_begin,
                  int64_t o_end) {
    generic::check_quant(m);
    if (m.dtype == DType::Q8) quant_linear<false>(m, bias, x, T, y, o_begin, o_end);
    else if (m.dtype == DType::Q4) quant_linear<true>(m, bias, x, T, y, o_begin, o_end);
    else throw std::invalid_argument("linear_quant: not a quantized weight dtype");
}

}  // namespace simd
}  // namespace PYGPT_KERNEL_NS
}  // namespace pygpt

#endif  // __AVX2__
