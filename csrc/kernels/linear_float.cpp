// Linear layers with float weights (f32, f16, bf16): the tiles and loop nest described in
// linear.cpp.
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

}  // namespace

void linear_float(const Matrix& m, const float* bias, const float* x, int64_t T, float* y, int64_t o_begin,
                  int64_t o_end) {
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
        default:
            throw std::invalid_argument("linear_float: not a float weight dtype");
    }
}

}  // namespace simd
}  // namespace PYGPT_KERNEL_NS
}  // namespace pygpt

#endif  // __AVX2__
