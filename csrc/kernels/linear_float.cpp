// Linear layers with float weights (f32, f16, bf16): the tiles and loop nest described in
// linear.cpp.
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <utility>

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

#define PYGPT_ALWAYS_INLINE inline __attribute__((always_inline))

// The sums of 8 vectors of 8 lanes by the last three levels of the lane tree of simd.h,
// (l, l+4), (l, l+2), (0, 1) (on AVX2 the whole tree: reduce8 of simd.h): lane a of the
// result is the sum of h[a]; each sum involves its own vector only.
static PYGPT_ALWAYS_INLINE __m256 tree8(__m256 h0, __m256 h1, __m256 h2, __m256 h3, __m256 h4, __m256 h5,
                                        __m256 h6, __m256 h7) {
    const __m256 a0 = _mm256_add_ps(_mm256_permute2f128_ps(h0, h1, 0x20), _mm256_permute2f128_ps(h0, h1, 0x31));
    const __m256 a1 = _mm256_add_ps(_mm256_permute2f128_ps(h2, h3, 0x20), _mm256_permute2f128_ps(h2, h3, 0x31));
    const __m256 a2 = _mm256_add_ps(_mm256_permute2f128_ps(h4, h5, 0x20), _mm256_permute2f128_ps(h4, h5, 0x31));
    const __m256 a3 = _mm256_add_ps(_mm256_permute2f128_ps(h6, h7, 0x20), _mm256_permute2f128_ps(h6, h7, 0x31));
    const __m256 b0 = _mm256_add_ps(_mm256_shuffle_ps(a0, a1, 0x44), _mm256_shuffle_ps(a0, a1, 0xEE));
    const __m256 b1 = _mm256_add_ps(_mm256_shuffle_ps(a2, a3, 0x44), _mm256_shuffle_ps(a2, a3, 0xEE));
    // lane 4c + e is the sum of h[2e + c]
    const __m256 c = _mm256_add_ps(_mm256_shuffle_ps(b0, b1, 0x88), _mm256_shuffle_ps(b0, b1, 0xDD));
    return _mm256_permutevar8x32_ps(c, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
}

#if defined(__AVX512F__)
using VecF = __m512;
constexpr int LANES = 16;
#ifndef PYGPT_RF  // tile shape, rows x tokens (a build option for experiments: R 4 up to 8 tokens)
#define PYGPT_RF 4
#define PYGPT_TTF 4
#endif
// 16 accumulators + 4 weights + 1 activation of 32 registers: 4 x 6 (24 accumulators) has
// fewer loads per FMA but its 24 outputs need two 16-wide reductions (one half empty), and on
// a Zen 4 the reductions, not the loads, are what a tile over 768 inputs waits on (4 x 4:
// ~92 GFLOP/s on 3072 x 768 at T = 128 vs ~88 for 4 x 6, one thread). On a Sapphire Rapids
// VM (two 512-bit FMA ports; f32 2304 x 768 at T = 128, one thread) 4 x 6 read ~141 GFLOP/s
// against 116-132 for 4 x 4, then 140 for 4 x 4 a few minutes later (6 x 4 and 5 x 5
// ~125-135, 3 x 8 ~95-100); a 124M prompt 1.03-1.09x and batched decode of 8 tokens
// 0.96-0.98x (BENCHMARKS.md, "Kernel paths"): 4 x 4 everywhere
constexpr int R_F = PYGPT_RF, TT_F = PYGPT_TTF;

struct WF32 {
    using X = float;  // activation element
    using V = __m512;
    static constexpr int K = 16;  // inputs per step
    static constexpr int BYTES = 4;  // bytes per stored weight
    static constexpr bool WIDEN = false;  // see float_row_panel
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

#if defined(__AVX512BF16__)
// bf16 weights against activations rounded to bf16, 32 products per vdpbf16ps
struct WBF16 {
    using X = uint16_t;  // activations rounded to bf16
    using V = __m512i;
    static constexpr int K = 32;
    static constexpr int BYTES = 2;
    static constexpr bool WIDEN = false;
    static V load(const void* w, int64_t k) { return _mm512_loadu_si512((const uint16_t*)w + k); }
    static V load_tail(const void* w, int64_t k, int64_t n) {
        return _mm512_maskz_loadu_epi16(tail_mask32(n), (const uint16_t*)w + k);
    }
    static V loadx(const X* x, int64_t k) { return _mm512_loadu_si512(x + k); }
    static V loadx_tail(const X* x, int64_t k, int64_t n) { return _mm512_maskz_loadu_epi16(tail_mask32(n), x + k); }
    static VecF madd(VecF acc, V w, V x) { return _mm512_dpbf16_ps(acc, (__m512bh)w, (__m512bh)x); }
};
#else
// AVX-512 without the bf16 instructions (Skylake-SP's successors up to Ice Lake and
// Tiger Lake): bf16 weights widened to f32 in the tile (exact: a shift), against f32
// activations, as f16 weights are; the same bits as f32 weights of the same values.
struct WBF16 : WF32 {
    static constexpr int BYTES = 2;
    static V widen(__m256i h) { return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16)); }
    static V load(const void* w, int64_t k) {
        return widen(_mm256_loadu_si256((const __m256i*)((const uint16_t*)w + k)));
    }
    static V load_tail(const void* w, int64_t k, int64_t n) {
        return widen(_mm256_maskz_loadu_epi16(tail_mask16(n), (const uint16_t*)w + k));
    }
};
#endif

static inline VecF vzero() { return _mm512_setzero_ps(); }

// Lanes (l, l+8) of v: the first level of the tree, the low half first as in reduce16
static PYGPT_ALWAYS_INLINE __m256 fold_halves(__m512 v) {
    return _mm256_add_ps(_mm512_castps512_ps256(v), _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
}

// The 16 sums of a 4 x 4 tile's accumulators (reduce16's tree and operand order, so the
// same bits), in registers: after the first level the tree runs on 256-bit vectors, which
// this core shuffles at twice the rate of 512-bit ones, and the accumulators are never
// stored to memory (reduce16 reads them from it). Returns sums 0-7 and 8-15.
static PYGPT_ALWAYS_INLINE void reduce16_regs(const __m512 (&v)[16], __m256& lo, __m256& hi) {
    lo = tree8(fold_halves(v[0]), fold_halves(v[1]), fold_halves(v[2]), fold_halves(v[3]), fold_halves(v[4]),
               fold_halves(v[5]), fold_halves(v[6]), fold_halves(v[7]));
    hi = tree8(fold_halves(v[8]), fold_halves(v[9]), fold_halves(v[10]), fold_halves(v[11]), fold_halves(v[12]),
               fold_halves(v[13]), fold_halves(v[14]), fold_halves(v[15]));
}

#else  // AVX2
using VecF = __m256;
constexpr int LANES = 8;
constexpr int R_F = 4, TT_F = 3;  // 12 accumulators + 3 activations + 1 weight of 16 registers (float_tile)

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
    static constexpr bool WIDEN = false;
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

// f16 and bf16 weights of a prefill row panel are widened to f32 once (float_row_panel):
// converting them in the tile costs a register and 1-2 instructions per weight vector, and
// a 4 x 3 tile has no register to spare (16 ymm)
struct WF16 : WF32 {
    static constexpr int BYTES = 2;
    static constexpr bool WIDEN = true;
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
    static constexpr bool WIDEN = true;
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

// The sums of the first N <= 16 accumulators of a tile (lane tree of simd.h, so the bits of
// reduce_n), in registers: sums 0-7 in lo, 8-15 in hi. Missing accumulators are zero (each
// sum involves its own accumulator only).
template <int N>
static PYGPT_ALWAYS_INLINE void reduce_tile_regs(const VecF* acc, __m256& lo, __m256& hi) {
    VecF v[16];
#pragma GCC unroll 16
    for (int i = 0; i < 16; i++) v[i] = i < N ? acc[i] : vzero();
#if defined(__AVX512F__)
    reduce16_regs(v, lo, hi);
#else
    lo = tree8(v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7]);
    hi = N > 8 ? tree8(v[8], v[9], v[10], v[11], v[12], v[13], v[14], v[15]) : _mm256_setzero_ps();
#endif
}

// Activations of a token block packed tile by tile: the TT tokens of a tile interleaved
// by vector steps, element (t, k) of a tile of tt tokens at ((k / K) * tt + t) * K + k % K,
// zero-padded to a whole step. A tile then reads one sequential stream (the L1 prefetcher
// follows it; TT separate rows from L2 were the bottleneck of the tile) and one base
// pointer. A tile of one token is the plain zero-padded row.
template <class W>
static inline int64_t packed_row(int64_t n_in) {
    return round_up(n_in, W::K);
}

template <class W>
static void pack_tile(const float* x, int64_t n_in, int64_t tt, typename W::X* out) {
    const int64_t kp = packed_row<W>(n_in);
#if defined(__AVX512BF16__)
    if (sizeof(typename W::X) == 2) {  // bf16: round to nearest even, 32 per step
        // in the order of `out` (one sequential stream of stores): token by token, the stores
        // tt * 64 bytes apart stalled, 5% of a bf16 prompt's time against 1% this way
        for (int64_t k = 0; k < kp; k += W::K)
            for (int64_t t = 0; t < tt; t++) {
                const float* xt = x + t * n_in;
                const int64_t n = n_in - k < W::K ? n_in - k : W::K;
                __m512 lo = _mm512_maskz_loadu_ps(tail_mask16(n < 16 ? n : 16), xt + k);
                __m512 hi = n > 16 ? _mm512_maskz_loadu_ps(tail_mask16(n - 16), xt + k + 16) : _mm512_setzero_ps();
                _mm512_storeu_si512(out + (k / W::K * tt + t) * W::K, (__m512i)_mm512_cvtne2ps_pbh(hi, lo));
            }
        return;
    }
#endif
    // f32 activations (f32 and f16 weights; bf16 too without AVX512-BF16): token by token (in
    // out's order instead, f32 prompts spent 3.4% of their time here against 0.9%)
    for (int64_t t = 0; t < tt; t++) {
        const float* xt = x + t * n_in;
        for (int64_t k = 0; k < kp; k += W::K) {
            typename W::X* o = out + (k / W::K * tt + t) * W::K;
            const int64_t n = n_in - k < W::K ? n_in - k : W::K;
            if (n == W::K) std::memcpy(o, xt + k, W::K * sizeof(float));
            else {
                std::memset(o, 0, W::K * sizeof(float));
                std::memcpy(o, xt + k, n * sizeof(float));
            }
        }
    }
}

// Weight rows prefetched ahead by the tiles (float_row_panel): the row panel PF_PANELS
// ahead, into L2 (prefetcht1). Into L1 (prefetcht0) they hold L1 miss buffers, too few
// to cover DRAM latency: batched decode T = 4 (LM head, f16) ran ~1.9x the time of T = 1
// with prefetcht0 one panel ahead, ~1.1-1.5x with this.
constexpr int PF_PANELS = 2;

// The R x TT tile over inputs [k0, k1): y[t, o0 + r] for r < R, t < TT, activations packed
// (pack_tile). The accumulators start from zero (k0 == 0) or from `part`, and end reduced
// into y (k1 == n_in) or stored back to `part`: splitting k this way keeps every lane's
// sequence of FMAs unchanged.
template <class W, int R, int TT>
static inline void float_tile(const uint8_t* w, int64_t w_stride, const typename W::X* xp, int64_t n_in, int64_t k0,
                              int64_t k1, VecF* part, const float* bias, float* y, int64_t ldy,
                              const uint8_t* pf_w, int pf_rows) {
    VecF acc[TT * R];  // constant indices only (loops unrolled): kept in registers
#pragma GCC unroll 32
    for (int i = 0; i < TT * R; i++) acc[i] = k0 == 0 ? vzero() : part[i];
    int64_t k = k0;
    const int64_t k_end = k1 < n_in ? k1 : n_in - (n_in - k0) % W::K;
    const typename W::X* xk = xp + k0 * TT;
    for (; k < k_end; k += W::K, xk += TT * W::K) {
        typename W::V wv[R];
        // pf_rows rows from pf_w (see float_row_panel); the packed activations are one
        // sequential stream that the hardware prefetchers follow (prefetching them too made
        // no difference)
        for (int j = 0; j < pf_rows; j++) _mm_prefetch((const char*)pf_w + j * w_stride + k * W::BYTES, _MM_HINT_T1);
        if (LANES == 8) {
            // AVX2: the TT activations in registers, then the rows one at a time (12
            // accumulators + 3 activations + 1 weight of 16 registers: 7 loads per 12 FMAs;
            // the R weights in registers left none for an activation, which was then
            // loaded again by each FMA)
            typename W::V xv[TT];
#pragma GCC unroll 8
            for (int t = 0; t < TT; t++) xv[t] = W::loadx(xk + t * W::K, 0);
#pragma GCC unroll 8
            for (int r = 0; r < R; r++) {
                const typename W::V wr = W::load(w + r * w_stride, k);
#pragma GCC unroll 8
                for (int t = 0; t < TT; t++) acc[t * R + r] = W::madd(acc[t * R + r], wr, xv[t]);
            }
            continue;
        }
#pragma GCC unroll 8
        for (int r = 0; r < R; r++) wv[r] = W::load(w + r * w_stride, k);
#pragma GCC unroll 8
        for (int t = 0; t < TT; t++) {
            const typename W::V xv = W::loadx(xk + t * W::K, 0);
#pragma GCC unroll 8
            for (int r = 0; r < R; r++) acc[t * R + r] = W::madd(acc[t * R + r], wv[r], xv);
        }
    }
    if (k1 < n_in) {
#pragma GCC unroll 32
        for (int i = 0; i < TT * R; i++) part[i] = acc[i];
        return;
    }
    if (k < n_in) {  // the packed activations are zero-padded: only the weights need a mask
        const int64_t n = n_in - k;
        typename W::V wv[R];
#pragma GCC unroll 8
        for (int r = 0; r < R; r++) wv[r] = W::load_tail(w + r * w_stride, k, n);
#pragma GCC unroll 8
        for (int t = 0; t < TT; t++) {
            const typename W::V xv = W::loadx(xk + t * W::K, 0);
#pragma GCC unroll 8
            for (int r = 0; r < R; r++) acc[t * R + r] = W::madd(acc[t * R + r], wv[r], xv);
        }
    }
    if constexpr (R == 4 && TT <= 8) {
        // tiles of 4 rows (every tile of a prefill panel): reduced in registers, 4 tokens at
        // a time, the 4 sums of token t one 128-bit store
        const __m128 b = bias ? _mm_loadu_ps(bias) : _mm_setzero_ps();
        constexpr int T0 = TT < 4 ? TT : 4;
        __m256 lo, hi;
        reduce_tile_regs<T0 * R>(acc, lo, hi);
        _mm_storeu_ps(y, _mm_add_ps(_mm256_castps256_ps128(lo), b));
        if (T0 > 1) _mm_storeu_ps(y + ldy, _mm_add_ps(_mm256_extractf128_ps(lo, 1), b));
        if (T0 > 2) _mm_storeu_ps(y + 2 * ldy, _mm_add_ps(_mm256_castps256_ps128(hi), b));
        if (T0 > 3) _mm_storeu_ps(y + 3 * ldy, _mm_add_ps(_mm256_extractf128_ps(hi, 1), b));
        if constexpr (TT > 4) {
            reduce_tile_regs<(TT - 4) * R>(acc + 16, lo, hi);
            _mm_storeu_ps(y + 4 * ldy, _mm_add_ps(_mm256_castps256_ps128(lo), b));
            if (TT > 5) _mm_storeu_ps(y + 5 * ldy, _mm_add_ps(_mm256_extractf128_ps(lo, 1), b));
            if (TT > 6) _mm_storeu_ps(y + 6 * ldy, _mm_add_ps(_mm256_castps256_ps128(hi), b));
            if (TT > 7) _mm_storeu_ps(y + 7 * ldy, _mm_add_ps(_mm256_extractf128_ps(hi, 1), b));
        }
        return;
    }
    float sums[TT * R];
    constexpr int G = LANES;  // accumulators reduced together
    for (int i = 0; i < TT * R; i += G) reduce_n(acc + i, TT * R - i < G ? TT * R - i : G, sums + i);
    for (int t = 0; t < TT; t++)
        for (int r = 0; r < R; r++) y[t * ldy + r] = sums[t * R + r] + (bias ? bias[r] : 0.0f);
}

// Prefill row panels in chunks of inputs whose R weight rows (as the tiles read them) fit in
// PANEL_L1_BYTES, so that they stay in L1 across the token tiles while the packed
// activations stream through from L2; chunks of equal length, a multiple of every step.
#ifndef PYGPT_PANEL_L1
#define PYGPT_PANEL_L1 16384
#endif
constexpr int64_t PANEL_L1_BYTES = PYGPT_PANEL_L1;

template <class W, int R>
static inline int64_t panel_chunk(int64_t n_in) {
    const int64_t most = PANEL_L1_BYTES / (R * (W::WIDEN ? (int64_t)sizeof(float) : W::BYTES));
    const int64_t n = (n_in + most - 1) / most;
    return round_up((n_in + n - 1) / n, 32);
}

// The tiles of a row panel over inputs [k0, k1): tiles of TT_F tokens, then one tile of
// the T % TT_F remaining ones. The rows of the panel PF_PANELS ahead (pf, pf_stride apart;
// pf_rows of them, or none) are prefetched, spread over the tiles (one tile of up to R rows
// at T <= 4: batched decode, weights from DRAM; a row per tile in a few of the tiles of
// prefill, weights from L3). The R rows read side by side are R short streams that the
// hardware prefetchers follow badly.
template <class W, int R>
static inline void float_panel_tiles(const uint8_t* w, int64_t w_stride, const typename W::X* xp, int64_t T,
                                     int64_t n_in, int64_t k0, int64_t k1, const float* bias, float* y, int64_t ldy,
                                     VecF* part, const uint8_t* pf, int64_t pf_stride, int pf_rows) {
    const int64_t kp = packed_row<W>(n_in);
    const int64_t n_tiles = (T + TT_F - 1) / TT_F;
    int64_t t = 0;
    for (; t + TT_F <= T; t += TT_F) {
        const int64_t i = t / TT_F, r0 = i * pf_rows / n_tiles, r1 = (i + 1) * pf_rows / n_tiles;
        float_tile<W, R, TT_F>(w, w_stride, xp + t * kp, n_in, k0, k1, part + t * R, bias, y + t * ldy, ldy,
                               pf + r0 * pf_stride, (int)(r1 - r0));
    }
    const typename W::X* xt = xp + t * kp;
    float* yt = y + t * ldy;
    VecF* pt = part + t * R;
    const int64_t r0 = (n_tiles - 1) * pf_rows / n_tiles;
    const uint8_t* pft = pf + r0 * pf_stride;
    const int pr = (int)(pf_rows - r0);
    switch (T - t) {
        case 0: break;
        case 1: float_tile<W, R, 1>(w, w_stride, xt, n_in, k0, k1, pt, bias, yt, ldy, pft, pr); break;
        case 2: float_tile<W, R, 2>(w, w_stride, xt, n_in, k0, k1, pt, bias, yt, ldy, pft, pr); break;
        case 3: float_tile<W, R, 3>(w, w_stride, xt, n_in, k0, k1, pt, bias, yt, ldy, pft, pr); break;
#if defined(__AVX512F__)
        case 4: float_tile<W, R, 4>(w, w_stride, xt, n_in, k0, k1, pt, bias, yt, ldy, pft, pr); break;
        case 5: float_tile<W, R, 5>(w, w_stride, xt, n_in, k0, k1, pt, bias, yt, ldy, pft, pr); break;
#endif
    }
}

// Inputs [k0, k1) of R rows widened to f32 (W::load: exact) into `out`, rows kp floats
// apart, zero-filled past n_in; the rows PF_PANELS panels ahead prefetched into L2 as they
// go (the tiles over the widened rows then prefetch nothing).
template <class W, int R>
static inline void widen_rows(const uint8_t* w, int64_t w_stride, int64_t n_in, int64_t k0, int64_t k1, float* out,
                              int64_t kp) {
    const uint8_t* pf = w + PF_PANELS * R * w_stride;
    for (int r = 0; r < R; r++) {
        const uint8_t* wr = w + r * w_stride;
        float* o = out + r * kp;
        int64_t k = k0;
        for (; k + W::K <= k1; k += W::K) {
            if (k % 32 == 0) _mm_prefetch((const char*)pf + r * w_stride + k * W::BYTES, _MM_HINT_T1);
            _mm256_storeu_ps(o + k, W::load(wr, k));
        }
        if (k < k1) _mm256_storeu_ps(o + k, W::load_tail(wr, k, k1 - k));
    }
}

// A row panel: R rows (one tile high) over every token, in chunks (panel_chunk) when more
// than one tile reads them. Weights that need widening (W::WIDEN) are widened once
// per chunk into `wide` (R rows of kp floats) when more than one tile reads them; the
// tiles then run on f32 weights with the same values, so the same bits.
template <class W, int R>
static inline void float_row_panel(const uint8_t* w, int64_t w_stride, const typename W::X* xp, int64_t T,
                                   int64_t n_in, const float* bias, float* y, int64_t ldy, VecF* part, float* wide) {
    const int64_t chunk = T > TT_F ? panel_chunk<W, R>(n_in) : n_in;
    const int64_t kp = packed_row<W>(n_in);
    const uint8_t* pf = w + PF_PANELS * R * w_stride;
    for (int64_t k0 = 0; k0 < n_in; k0 += chunk) {
        const int64_t k1 = k0 + chunk < n_in ? k0 + chunk : n_in;
        if constexpr (W::WIDEN) {
            if (T > TT_F) {
                widen_rows<W, R>(w, w_stride, n_in, k0, k1, wide, kp);
                float_panel_tiles<WF32, R>((const uint8_t*)wide, kp * (int64_t)sizeof(float), xp, T, n_in, k0, k1,
                                           bias, y, ldy, part, pf, w_stride, 0);
                continue;
            }
        }
        float_panel_tiles<W, R>(w, w_stride, xp, T, n_in, k0, k1, bias, y, ldy, part, pf, w_stride, R);
    }
}

// One token (decode): the rows one after another, so each thread reads one sequential
// stream, the accumulators of LANES rows reduced together. Per output the same steps as
// float_tile with TT = 1, so the same result. Reading two or four rows side by side (to
// overlap their FMA chains) halved the bandwidth.
// Each row is one chain of FMAs (48 at 768 inputs), and the rows hardly overlap: f16 rows
// from L2 ran at about one chain's latency each (1.5 KB in ~180 cycles, one thread, on a
// Xeon with AMX), so the core runs little ahead of its loads. On the amx path (Sapphire
// Rapids and later) the stream is prefetched ROW_PREFETCH_BYTES ahead into L2, within the
// thread's rows (124M decode in alternating processes on that Xeon: f16 1.59x at 2 threads,
// 1.34x at 1; f32 1.08x, 1.06x; 4 KB ahead less, 16 KB the same as 8). Elsewhere none: on
// the AMD machine a prefetch 1 KB ahead lost (f16 -19%, bf16 -13%, f32 -7% at 1
// thread, about even at 2); 8 KB into L2 is not measured there.
#if defined(PYGPT_AMX)
constexpr int64_t ROW_PREFETCH_BYTES = 8192;
#else
constexpr int64_t ROW_PREFETCH_BYTES = 0;
#endif
template <class W>
static void float_rows_one_token(const uint8_t* w, int64_t w_stride, const typename W::X* x, int64_t n_in,
                                 const float* bias, float* y, int64_t o_begin, int64_t o_end) {
    const int64_t pf_end = o_end * w_stride - ROW_PREFETCH_BYTES;  // offsets prefetched from: up to the last row
    for (int64_t o0 = o_begin; o0 < o_end; o0 += LANES) {
        const int n = o_end - o0 < LANES ? (int)(o_end - o0) : LANES;
        VecF acc[LANES];
        for (int r = 0; r < n; r++) {
            const uint8_t* wr = w + (o0 + r) * w_stride;
            VecF a = vzero();
            int64_t k = 0;
            for (; k + W::K <= n_in; k += W::K) {
                const int64_t at = (o0 + r) * w_stride + k * W::BYTES;
                if (ROW_PREFETCH_BYTES && (k * W::BYTES) % 64 == 0 && at < pf_end)  // once per 64 bytes
                    _mm_prefetch((const char*)w + at + ROW_PREFETCH_BYTES, _MM_HINT_T1);
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

// Token blocks of equal size (a multiple of the tile), each small enough that its packed
// activations stay in L2 while the rows stream past: a short last block would stream every
// weight once more for a few tokens.
template <class W>
static int64_t float_token_block(int64_t n_in, int64_t T) {
    const int64_t kp = packed_row<W>(n_in);
    int64_t tb = token_block(kp * (int64_t)sizeof(typename W::X), TT_F);
    if (T > tb) {
        const int64_t n_blocks = (T + tb - 1) / tb;
        tb = round_up((T + n_blocks - 1) / n_blocks, TT_F);
    }
    return tb;
}

// Prepared activations: all T tokens packed tile by tile (pack_tile), the tile starting at
// token t at xp + t * packed_row; tiles start at multiples of TT_F and end at a block end.
template <class W>
size_t float_prepared_bytes(const Matrix& m, int64_t T) {
    return (size_t)round_up(T * packed_row<W>(m.n_in) * (int64_t)sizeof(typename W::X), 64);
}

template <class W>
void float_prepare(const Matrix& m, const float* x, int64_t T, int64_t r_begin, int64_t r_end, void* prep) {
    const int64_t n_in = m.n_in, kp = packed_row<W>(n_in), tb = float_token_block<W>(n_in, T);
    typename W::X* xp = (typename W::X*)prep;
    for (int64_t t = r_begin; t < r_end;) {
        const int64_t block_end = t / tb * tb + tb < T ? t / tb * tb + tb : T;
        const int64_t tt = block_end - t < TT_F ? block_end - t : TT_F;
        pack_tile<W>(x + t * n_in, n_in, tt, xp + t * kp);
        t += tt;
    }
}

template <class W>
void float_linear_prepared(const Matrix& m, const float* bias, const void* prep, int64_t T, float* y,
                           int64_t o_begin, int64_t o_end) {
    using X = typename W::X;
    const int64_t n_in = m.n_in, n_out = m.n_out, w_stride = n_in * W::BYTES, kp = packed_row<W>(n_in);
    const int64_t tb = float_token_block<W>(n_in, T);
    const uint8_t* w = (const uint8_t*)m.data;
    const X* xp = (const X*)prep;
    // this thread's partial accumulators of a row panel over one block (chunked rows only)
    // and its widened weights (W::WIDEN)
    VecF* part = nullptr;
    float* wide = nullptr;
    if (T > 1) {
        const size_t part_bytes = (size_t)(tb + TT_F) * R_F * sizeof(VecF);
        const size_t wide_bytes = W::WIDEN && T > TT_F ? (size_t)R_F * kp * sizeof(float) : 0;
        if (!(part = (VecF*)thread_scratch(1, part_bytes + wide_bytes))) throw std::bad_alloc();
        if (wide_bytes) wide = (float*)((char*)part + part_bytes);
    }
    for (int64_t t0 = 0; t0 < T; t0 += tb) {
        const int64_t nt = T - t0 < tb ? T - t0 : tb;
        const X* xb = xp + t0 * kp;
        if (nt == 1) {
            float_rows_one_token<W>(w, w_stride, xb, n_in, bias, y + t0 * n_out, o_begin, o_end);
            continue;
        }
        int64_t o = o_begin;
        for (; o + R_F <= o_end; o += R_F)
            float_row_panel<W, R_F>(w + o * w_stride, w_stride, xb, nt, n_in, bias ? bias + o : nullptr,
                                    y + t0 * n_out + o, n_out, part, wide);
        for (; o < o_end; o++)
            float_row_panel<W, 1>(w + o * w_stride, w_stride, xb, nt, n_in, bias ? bias + o : nullptr,
                                  y + t0 * n_out + o, n_out, part, wide);
    }
}

template <class W>
void float_linear(const Matrix& m, const float* bias, const float* x, int64_t T, float* y, int64_t o_begin,
                  int64_t o_end) {
    if (T == 1 && sizeof(typename W::X) == sizeof(float)) {  // f32 activations used in place
        float_rows_one_token<W>((const uint8_t*)m.data, m.n_in * W::BYTES, (const typename W::X*)x, m.n_in, bias,
                                y, o_begin, o_end);
        return;
    }
    // this thread prepares all the activations itself, in its own scratch
    void* prep = thread_scratch(0, float_prepared_bytes<W>(m, T));
    if (!prep) throw std::bad_alloc();
    float_prepare<W>(m, x, T, 0, T, prep);
    float_linear_prepared<W>(m, bias, prep, T, y, o_begin, o_end);
}

// f(W{}) with W the weight type of m's dtype.
template <class F>
static auto on_weight_type(const Matrix& m, F&& f) {
    return on_float_weight<WF32, WF16, WBF16>(m, std::forward<F>(f));
}

}  // namespace

void linear_float(const Matrix& m, const float* bias, const float* x, int64_t T, float* y, int64_t o_begin,
                  int64_t o_end) {
    on_weight_type(m, [&](auto w) { float_linear<decltype(w)>(m, bias, x, T, y, o_begin, o_end); });
}

int64_t prepare_rows() { return TT_F; }

size_t float_prepared_bytes(const Matrix& m, int64_t T) {
    return on_weight_type(m, [&](auto w) { return float_prepared_bytes<decltype(w)>(m, T); });
}

void float_prepare(const Matrix& m, const float* x, int64_t T, int64_t r_begin, int64_t r_end, void* prep) {
    on_weight_type(m, [&](auto w) { float_prepare<decltype(w)>(m, x, T, r_begin, r_end, prep); });
}

void float_linear_prepared(const Matrix& m, const float* bias, const void* prep, int64_t T, float* y,
                           int64_t o_begin, int64_t o_end) {
    on_weight_type(m, [&](auto w) { float_linear_prepared<decltype(w)>(m, bias, prep, T, y, o_begin, o_end); });
}

}  // namespace simd
}  // namespace PYGPT_KERNEL_NS
}  // namespace pygpt

#endif  // __AVX2__
