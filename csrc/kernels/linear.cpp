// Linear layers y[T, n_out] = x[T, n_in] W^T + b for every weight dtype, hand-written for
// AVX-512 and AVX2 (the scalar path uses generic::linear).
//
// One loop nest serves decode (T = 1) and prefill / batched decode (T > 1):
//   threads   the caller gives each thread a contiguous range of output rows (each weight
//             byte is read by one thread); nothing here synchronises;
//   token blocks of TB tokens keep their activations in L2 while a thread's weights
//             stream through once per block;
//   tiles     of R rows x TT tokens: R weight vectors are loaded once per k step and
//             reused for TT tokens, TT * R accumulators live in registers.
// Every output has its own accumulator with the lane structure of simd.h, so the tile
// shape, T and the thread count never change a result (the batch-invariance contract).
//
// Weight steps (one vector of accumulators, AVX-512 / AVX2):
//   f32   16 / 8 weights, FMA with f32 activations;
//   f16   16 / 8 weights converted by F16C, FMA;
//   bf16  AVX-512: 32 weights per vdpbf16ps against activations rounded to bf16 (so bf16
//         models see bf16 activations in their linear layers, as on bf16 hardware);
//         AVX2: 8 weights widened to f32, FMA with f32 activations;
//   q8/q4 activations quantized per token to int8 (scale max|x| / 127), exact integer dot
//         products over blocks of 64 inputs (AVX-512: vpdpbusd; AVX2: vpmaddubsw +
//         vpmaddwd), converted to f32 and scaled once per weight group. See quant_linear
//         below and docs/FORMAT.md.
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

#ifndef PYGPT_PREFETCH
#define PYGPT_PREFETCH 1024
#endif
constexpr int64_t PREFETCH_BYTES = PYGPT_PREFETCH;

// Tokens per block: activations of a block about half of L2.
int64_t token_block(int64_t x_row_bytes, int64_t tt) {
    int64_t tb = (int64_t)(512 * 1024) / (x_row_bytes > 0 ? x_row_bytes : 1);
    tb = tb / tt * tt;
    return tb < tt ? tt : tb;
}

// ---------------------------------------------------------------------------------------
// Float weights

#if defined(__AVX512F__)
using VecF = __m512;
constexpr int LANES = 16;
#ifndef PYGPT_RF
#define PYGPT_RF 4
#define PYGPT_TTF 6
#endif
constexpr int R_F = PYGPT_RF, TT_F = PYGPT_TTF;  // 24 accumulators + 4 weights + 1 activation of 32 registers

struct WF32 {
    using X = float;  // activation element
    using V = __m512;
    static constexpr int K = 16;  // inputs per step
    static constexpr int BYTES = 4;  // bytes per stored weight
    static V load(const void* w, int64_t k) { return _mm512_loadu_ps((const float*)w + k); }
    static V load_tail(const void* w, int64_t k, int64_t n) {
        return _mm512_maskz_loadu_ps(tail_mask16(n), (const float*)w + k);
    }
    static V loadx(const X* x, int64_t k) { return _mm512_loadu_ps(x + k); }
    static V loadx_tail(const X* x, int64_t k, int64_t n) { return _mm512_maskz_loadu_ps(tail_mask16(n), x + k); }
    static VecF madd(VecF acc, V w, V x) { return _mm512_fmadd_ps(w, x, acc); }
};

struct WF16 : WF32 {
    static constexpr int BYTES = 2;
    static V load(const void* w, int64_t k) {
        return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)((const uint16_t*)w + k)));
    }
    static V load_tail(const void* w, int64_t k, int64_t n) {
        return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(tail_mask16(n), (const uint16_t*)w + k));
    }
};

struct WBF16 {
    using X = uint16_t;  // activations rounded to bf16
    using V = __m512i;
    static constexpr int K = 32;
    static constexpr int BYTES = 2;
    static V load(const void* w, int64_t k) { return _mm512_loadu_si512((const uint16_t*)w + k); }
    static V load_tail(const void* w, int64_t k, int64_t n) {
        return _mm512_maskz_loadu_epi16(tail_mask32(n), (const uint16_t*)w + k);
    }
    static V loadx(const X* x, int64_t k) { return _mm512_loadu_si512(x + k); }
    static V loadx_tail(const X* x, int64_t k, int64_t n) { return _mm512_maskz_loadu_epi16(tail_mask32(n), x + k); }
    static VecF madd(VecF acc, V w, V x) { return _mm512_dpbf16_ps(acc, (__m512bh)w, (__m512bh)x); }
};

// x[0:n] rounded to bf16 (round to nearest even), zero-padded to a multiple of 32.
void to_bf16(const float* x, int64_t n, uint16_t* out) {
    int64_t k = 0;
    for (; k + 32 <= n; k += 32) {
        __m512bh b = _mm512_cvtne2ps_pbh(_mm512_loadu_ps(x + k + 16), _mm512_loadu_ps(x + k));
        _mm512_storeu_si512(out + k, (__m512i)b);
    }
    if (k < n) {
        const int64_t r = n - k;
        __m512 lo = _mm512_maskz_loadu_ps(tail_mask16(r < 16 ? r : 16), x + k);
        __m512 hi = r > 16 ? _mm512_maskz_loadu_ps(tail_mask16(r - 16), x + k + 16) : _mm512_setzero_ps();
        _mm512_storeu_si512(out + k, (__m512i)_mm512_cvtne2ps_pbh(hi, lo));
    }
}

static inline VecF vzero() { return _mm512_setzero_ps(); }

#else  // AVX2
using VecF = __m256;
constexpr int LANES = 8;
constexpr int R_F = 4, TT_F = 3;  // 12 accumulators + 4 weights of 16 registers

// Tails are copied into a zero-padded buffer: AVX2 has no masked 16-bit loads.
template <class T, int K>
static inline const T* pad_tail(const T* p, int64_t n, T* buf) {
    std::memset(buf, 0, K * sizeof(T));
    std::memcpy(buf, p, n * sizeof(T));
    return buf;
}

struct WF32 {
    using X = float;
    using V = __m256;
    static constexpr int K = 8;
    static constexpr int BYTES = 4;
    static V load(const void* w, int64_t k) { return _mm256_loadu_ps((const float*)w + k); }
    static V load_tail(const void* w, int64_t k, int64_t n) {
        float buf[8];
        return _mm256_loadu_ps(pad_tail<float, 8>((const float*)w + k, n, buf));
    }
    static V loadx(const X* x, int64_t k) { return _mm256_loadu_ps(x + k); }
    static V loadx_tail(const X* x, int64_t k, int64_t n) {
        float buf[8];
        return _mm256_loadu_ps(pad_tail<float, 8>(x + k, n, buf));
    }
    static VecF madd(VecF acc, V w, V x) { return _mm256_fmadd_ps(w, x, acc); }
};

struct WF16 : WF32 {
    static constexpr int BYTES = 2;
    static V load(const void* w, int64_t k) {
        return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)((const uint16_t*)w + k)));
    }
    static V load_tail(const void* w, int64_t k, int64_t n) {
        uint16_t buf[8];
        return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)pad_tail<uint16_t, 8>((const uint16_t*)w + k, n, buf)));
    }
};

struct WBF16 : WF32 {
    static constexpr int BYTES = 2;
    static V widen(__m128i h) { return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16)); }
    static V load(const void* w, int64_t k) {
        return widen(_mm_loadu_si128((const __m128i*)((const uint16_t*)w + k)));
    }
    static V load_tail(const void* w, int64_t k, int64_t n) {
        uint16_t buf[8];
        return widen(_mm_loadu_si128((const __m128i*)pad_tail<uint16_t, 8>((const uint16_t*)w + k, n, buf)));
    }
};

static inline VecF vzero() { return _mm256_setzero_ps(); }
#endif

// The R x TT tile over inputs [k0, k1): y[t, o0 + r] for r < R, t < TT. The accumulators
// start from zero (k0 == 0) or from `part`, and end reduced into y (k1 == n_in) or stored
// back to `part`: splitting k this way keeps every lane's sequence of FMAs unchanged.
template <class W, int R, int TT>
static inline void float_tile(const uint8_t* w, int64_t w_stride, const typename W::X* x, int64_t x_stride,
                              int64_t n_in, int64_t k0, int64_t k1, VecF* part, const float* bias, float* y,
                              int64_t ldy) {
    VecF acc[TT * R];
    if (k0 == 0)
        for (int i = 0; i < TT * R; i++) acc[i] = vzero();
    else
        for (int i = 0; i < TT * R; i++) acc[i] = part[i];
    int64_t k = k0;
    const int64_t k_end = k1 < n_in ? k1 : n_in - (n_in - k0) % W::K;
    for (; k < k_end; k += W::K) {
        typename W::V wv[R];
        // decode (one token): the loads alone do not keep enough memory requests in flight;
        // prefetch PREFETCH_BYTES ahead in this thread's contiguous run of rows (the R rows
        // shifted by a constant cover a contiguous range of the rows that follow)
        if (TT == 1)
            for (int r = 0; r < R; r++)
                _mm_prefetch((const char*)w + r * w_stride + k * W::BYTES + PREFETCH_BYTES, _MM_HINT_T0);
#pragma GCC unroll 8
        for (int r = 0; r < R; r++) wv[r] = W::load(w + r * w_stride, k);
#pragma GCC unroll 8
        for (int t = 0; t < TT; t++) {
            const typename W::V xv = W::loadx(x + t * x_stride, k);
#pragma GCC unroll 8
            for (int r = 0; r < R; r++) acc[t * R + r] = W::madd(acc[t * R + r], wv[r], xv);
        }
    }
    if (k1 < n_in) {
        for (int i = 0; i < TT * R; i++) part[i] = acc[i];
        return;
    }
    if (k < n_in) {
        const int64_t n = n_in - k;
        typename W::V wv[R];
        for (int r = 0; r < R; r++) wv[r] = W::load_tail(w + r * w_stride, k, n);
        for (int t = 0; t < TT; t++) {
            const typename W::V xv = W::loadx_tail(x + t * x_stride, k, n);
            for (int r = 0; r < R; r++) acc[t * R + r] = W::madd(acc[t * R + r], wv[r], xv);
        }
    }
    float sums[TT * R];
    constexpr int G = LANES;  // accumulators reduced together
    for (int i = 0; i < TT * R; i += G) reduce_n(acc + i, TT * R - i < G ? TT * R - i : G, sums + i);
    for (int t = 0; t < TT; t++)
        for (int r = 0; r < R; r++) y[t * ldy + r] = sums[t * R + r] + (bias ? bias[r] : 0.0f);
}

// Tiles of TT tokens, then one tile of the T % TT remaining ones; long rows in chunks of
// K_CHUNK inputs so that a chunk of the R weight rows stays in L1 across the token tiles.
constexpr int64_t K_CHUNK = 512;

template <class W, int R>
static inline void float_row_panel(const uint8_t* w, int64_t w_stride, const typename W::X* x, int64_t x_stride,
                                   int64_t T, int64_t n_in, const float* bias, float* y, int64_t ldy, VecF* part) {
    const int64_t chunk = (T > 1 && n_in > 2 * K_CHUNK) ? K_CHUNK : n_in;
    for (int64_t k0 = 0; k0 < n_in; k0 += chunk) {
        const int64_t k1 = k0 + chunk < n_in ? k0 + chunk : n_in;
        int64_t t = 0;
        for (; t + TT_F <= T; t += TT_F)
            float_tile<W, R, TT_F>(w, w_stride, x + t * x_stride, x_stride, n_in, k0, k1, part + t * R, bias,
                                   y + t * ldy, ldy);
        const typename W::X* xt = x + t * x_stride;
        float* yt = y + t * ldy;
        VecF* pt = part + t * R;
        switch (T - t) {
            case 0: break;
            case 1: float_tile<W, R, 1>(w, w_stride, xt, x_stride, n_in, k0, k1, pt, bias, yt, ldy); break;
            case 2: float_tile<W, R, 2>(w, w_stride, xt, x_stride, n_in, k0, k1, pt, bias, yt, ldy); break;
            case 3: float_tile<W, R, 3>(w, w_stride, xt, x_stride, n_in, k0, k1, pt, bias, yt, ldy); break;
#if defined(__AVX512F__)
            case 4: float_tile<W, R, 4>(w, w_stride, xt, x_stride, n_in, k0, k1, pt, bias, yt, ldy); break;
            case 5: float_tile<W, R, 5>(w, w_stride, xt, x_stride, n_in, k0, k1, pt, bias, yt, ldy); break;
#endif
        }
    }
}

// One token (decode): the rows one after another, so each thread reads one sequential
// stream (the hardware prefetchers follow it best), the accumulators of LANES rows reduced
// together. Per output the same steps as float_tile with TT = 1, so the same result.
template <class W>
static void float_rows_one_token(const uint8_t* w, int64_t w_stride, const typename W::X* x, int64_t n_in,
                                 const float* bias, float* y, int64_t o_begin, int64_t o_end) {
    for (int64_t o0 = o_begin; o0 < o_end; o0 += LANES) {
        const int n = o_end - o0 < LANES ? (int)(o_end - o0) : LANES;
        VecF acc[LANES];
        for (int r = 0; r < n; r++) {
            const uint8_t* wr = w + (o0 + r) * w_stride;
            VecF a = vzero();
            int64_t k = 0;
            for (; k + W::K <= n_in; k += W::K) {
                _mm_prefetch((const char*)wr + k * W::BYTES + PREFETCH_BYTES, _MM_HINT_T0);
                a = W::madd(a, W::load(wr, k), W::loadx(x, k));
            }
            if (k < n_in) a = W::madd(a, W::load_tail(wr, k, n_in - k), W::loadx_tail(x, k, n_in - k));
            acc[r] = a;
        }
        float sums[LANES];
        reduce_n(acc, n, sums);
        for (int r = 0; r < n; r++) y[o0 + r] = sums[r] + (bias ? bias[o0 + r] : 0.0f);
    }
}

template <class W>
void float_linear(const Matrix& m, const float* bias, const float* x_f32, const typename W::X* x, int64_t x_stride,
                  int64_t T, float* y, int64_t o_begin, int64_t o_end, int64_t elem_bytes) {
    const int64_t n_in = m.n_in, n_out = m.n_out, w_stride = n_in * elem_bytes;
    const int64_t tb = token_block(x_stride * (int64_t)sizeof(typename W::X), TT_F);
    if (x != (const void*)x_f32) {  // activations copied to this thread's scratch
        for (int64_t t = 0; t < T; t++) {
#if defined(__AVX512F__)
            if (sizeof(typename W::X) == 2) {  // bf16
                to_bf16(x_f32 + t * n_in, n_in, (uint16_t*)x + t * x_stride);
                continue;
            }
#endif
            std::memcpy((void*)(x + t * x_stride), x_f32 + t * n_in, n_in * sizeof(float));
        }
    }
    // partial accumulators of a row panel over one token block (chunked rows only)
    VecF* part = nullptr;
    if (T > 1 && !(part = (VecF*)thread_scratch(1, (size_t)(tb + TT_F) * R_F * sizeof(VecF)))) throw std::bad_alloc();
    const uint8_t* w = (const uint8_t*)m.data;
    for (int64_t t0 = 0; t0 < T; t0 += tb) {
        const int64_t nt = T - t0 < tb ? T - t0 : tb;
        if (nt == 1) {
            float_rows_one_token<W>(w, w_stride, x + t0 * x_stride, n_in, bias, y + t0 * n_out, o_begin, o_end);
            continue;
        }
        int64_t o = o_begin;
        for (; o + R_F <= o_end; o += R_F)
            float_row_panel<W, R_F>(w + o * w_stride, w_stride, x + t0 * x_stride, x_stride, nt, n_in,
                                    bias ? bias + o : nullptr, y + t0 * n_out + o, n_out, part);
        for (; o < o_end; o++)
            float_row_panel<W, 1>(w + o * w_stride, w_stride, x + t0 * x_stride, x_stride, nt, n_in,
                                  bias ? bias + o : nullptr, y + t0 * n_out + o, n_out, part);
    }
}

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

void linear(const Matrix& m, const float* bias, const float* x, int64_t T, float* y, int64_t o_begin,
            int64_t o_end) {
    if (T <= 0 || o_begin >= o_end) return;
    switch (m.dtype) {
        case DType::F32:
        case DType::F16: {
            // rows of x a multiple of 4 KiB apart all fall in one L1 set: pad them apart
            const bool pad = T > 1 && (m.n_in * 4) % 4096 == 0;
            const int64_t stride = pad ? m.n_in + 16 : m.n_in;
            const float* xs = x;
            if (pad && !(xs = (const float*)thread_scratch(0, T * stride * sizeof(float)))) throw std::bad_alloc();
            if (m.dtype == DType::F32) float_linear<WF32>(m, bias, x, xs, stride, T, y, o_begin, o_end, 4);
            else float_linear<WF16>(m, bias, x, xs, stride, T, y, o_begin, o_end, 2);
            return;
        }
        case DType::BF16: {
#if defined(__AVX512F__)
            int64_t stride = round_up(m.n_in, 32);
            if ((stride * 2) % 4096 == 0) stride += 32;  // see F32
            uint16_t* xb = (uint16_t*)thread_scratch(0, T * stride * sizeof(uint16_t));
            if (!xb) throw std::bad_alloc();
            float_linear<WBF16>(m, bias, x, xb, stride, T, y, o_begin, o_end, 2);
#else
            float_linear<WBF16>(m, bias, x, x, m.n_in, T, y, o_begin, o_end, 2);
#endif
            return;
        }
        case DType::Q8:
        case DType::Q4:
            generic::check_quant(m);
            if (m.dtype == DType::Q8) quant_linear<false>(m, bias, x, T, y, o_begin, o_end);
            else quant_linear<true>(m, bias, x, T, y, o_begin, o_end);
            return;
    }
    throw std::invalid_argument("linear: unsupported weight dtype");
}

}  // namespace simd
}  // namespace PYGPT_KERNEL_NS
}  // namespace pygpt

#endif  // __AVX2__
