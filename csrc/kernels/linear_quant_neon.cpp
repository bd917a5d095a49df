// Linear layers with quantized weights (q8, q4) on AArch64 NEON (the neon path; x86 has
// linear_quant.cpp). The accumulation contract is linear_quant.cpp's, so every output is
// bitwise the scalar reference's:
//   isum[t, o, g] = the EXACT int32 dot product of group g,
//   acc = 0; for g = 0, 1, ...: acc = fma(scale[o, g], float(isum), acc);
//   y[t, o] = fma(acc, sx[t], bias[o] or 0).
//
// The stored panels (docs/FORMAT.md) suit 16-byte vectors too: bytes 16m .. 16m + 15 of a
// stored 64-byte vector j are 4 inputs (4j .. 4j + 3) of each of the rows 4m .. 4m + 3 of
// the panel. With the token's 4 activation bytes replicated, SMULL / SMULL2 give the 16
// products as int16 (|w| <= 128, |x| <= 127: exact) and SADALP adds them in pairs into
// int32 lanes, two lanes a row; one ADDP at the group's end leaves the 4 rows' sums in 4
// lanes, scaled with one FMA. q8 bytes are w + 128 (w = byte ^ 0x80 as int8); q4 nibbles
// w + 8 (w = nibble - 8). That is baseline ARMv8 (the neon path); the neondot path (built
// with the ARMv8.2 dot-product extension, chosen where the CPU has it) does a row's 4
// products and their sum with one SDOT lane.
// Each stored vector is loaded (q4: unpacked) once per block of up to 8 tokens and used
// for all of them; the panel stays in L1/L2 while the token blocks pass. One token reads
// a panel as one sequential stream, every 64-byte vector whole.
#include <cmath>
#include <cstring>
#include <stdexcept>

#include "kernels.h"
#include "kernels/generic.h"
#include "kernels/linear.h"
#include "kernels/simd.h"

#if defined(PYGPT_NEON)
#include <arm_neon.h>

namespace pygpt {
namespace PYGPT_KERNEL_NS {
namespace simd {

namespace {

constexpr int TT_Q = 8;  // tokens per block: 16 int32 + 8 f32 accumulators

// Prepared activations, row by row: xq [T, xs] int8 | sx [T] f32.
static size_t prepared_bytes(const QShape& s, int64_t T) { return round_up(T * s.xs, 64) + round_up(T * 4, 64); }
static float* prepared_scales(const QShape& s, int64_t T, void* prep) {
    return (float*)((uint8_t*)prep + round_up(T * s.xs, 64));
}

// Stored bytes as signed weights: q8 bytes are w + 128, q4 nibbles w + 8.
static inline int8x16_t q8_weights(uint8x16_t v) { return vreinterpretq_s8_u8(veorq_u8(v, vdupq_n_u8(0x80))); }
static inline int8x16_t q4_low_weights(uint8x16_t v) {
    return vsubq_s8(vreinterpretq_s8_u8(vandq_u8(v, vdupq_n_u8(0x0f))), vdupq_n_s8(8));
}
static inline int8x16_t q4_high_weights(uint8x16_t v) {
    return vsubq_s8(vreinterpretq_s8_u8(vshrq_n_u8(v, 4)), vdupq_n_s8(8));
}

// The 4 activation bytes at x, in every 32-bit lane.
static inline int8x16_t bcast4(const int8_t* x) {
    uint32_t v;
    std::memcpy(&v, x, 4);
    return vreinterpretq_s8_u32(vdupq_n_u32(v));
}

// acc_lo, acc_hi += the products of the 16 signed weights w (4 rows x 4 inputs) and the 4
// activation bytes x replicated. With SDOT (neondot): row i's 4 products summed into lane i
// of acc_lo; without: rows 0, 1 in acc_lo's lane pairs, rows 2, 3 in acc_hi's.
static inline void madd16(int32x4_t& acc_lo, int32x4_t& acc_hi, int8x16_t w, int8x16_t x) {
#if defined(__ARM_FEATURE_DOTPROD)
    (void)acc_hi;
    acc_lo = vdotq_s32(acc_lo, w, x);
#else
    acc_lo = vpadalq_s16(acc_lo, vmull_s8(vget_low_s8(w), vget_low_s8(x)));
    acc_hi = vpadalq_s16(acc_hi, vmull_high_s8(w, x));
#endif
}

// The 4 rows' sums in 4 lanes, from madd16's accumulators.
static inline int32x4_t row_sums(int32x4_t acc_lo, int32x4_t acc_hi) {
#if defined(__ARM_FEATURE_DOTPROD)
    (void)acc_hi;
    return acc_lo;
#else
    return vpaddq_s32(acc_lo, acc_hi);
#endif
}

// TT tokens x NQ quads of rows (rows 4m .. 4m + 4NQ - 1 of panel pw, scales ps: 16 per
// group): the sums over the groups (the contract's acc) of row 4(m + q) + i for token t
// into out[(q * TT + t) * 4 + i]. One token takes the whole panel (4 quads: each stored
// vector used whole, 8 independent accumulator chains), two tokens 2 quads, more 1.
// H (groups of 32): group g is half of block g / 2, its first 32 inputs (q4: the low
// nibbles of its 8 vectors; q8: its vectors 0..7) or its second (the high nibbles; 8..15).
template <bool Q4, bool H, int TT, int NQ>
static void quads_tile(const uint8_t* pw, const float* ps, const QShape& s, int m, const int8_t* xq, float* out) {
    float32x4_t facc[NQ][TT];
    for (int q = 0; q < NQ; q++)
        for (int t = 0; t < TT; t++) facc[q][t] = vdupq_n_f32(0.0f);
    const uint8_t* wq = pw + 16 * m;
    for (int64_t g = 0, b = 0; g < s.n_groups; g++) {
        int32x4_t lo[NQ][TT], hi[NQ][TT];
        for (int q = 0; q < NQ; q++)
            for (int t = 0; t < TT; t++) lo[q][t] = hi[q][t] = vdupq_n_s32(0);
        if (H) {
            const uint8_t* wb = wq + (g >> 1) * s.block_bytes + (Q4 ? 0 : (g & 1) * 512);
            const int8_t* xg = xq + g * 32;
            for (int j = 0; j < 8; j++)
                for (int q = 0; q < NQ; q++) {
                    const uint8x16_t v = vld1q_u8(wb + j * 64 + 16 * q);
                    const int8x16_t w = !Q4 ? q8_weights(v) : g & 1 ? q4_high_weights(v) : q4_low_weights(v);
                    for (int t = 0; t < TT; t++) madd16(lo[q][t], hi[q][t], w, bcast4(xg + t * s.xs + 4 * j));
                }
        }
        for (const int64_t b_end = H ? b : b + s.bpg; b < b_end; b++) {
            const uint8_t* wb = wq + b * s.block_bytes;
            const int8_t* xb = xq + b * 64;
            if (Q4) {
                for (int j = 0; j < 8; j++)
                    for (int q = 0; q < NQ; q++) {
                        const uint8x16_t v = vld1q_u8(wb + j * 64 + 16 * q);
                        const int8x16_t wl = q4_low_weights(v), wh = q4_high_weights(v);
                        for (int t = 0; t < TT; t++) {
                            madd16(lo[q][t], hi[q][t], wl, bcast4(xb + t * s.xs + 4 * j));
                            madd16(lo[q][t], hi[q][t], wh, bcast4(xb + t * s.xs + 32 + 4 * j));
                        }
                    }
            } else {
                for (int j = 0; j < 16; j++)
                    for (int q = 0; q < NQ; q++) {
                        const int8x16_t w = q8_weights(vld1q_u8(wb + j * 64 + 16 * q));
                        for (int t = 0; t < TT; t++) madd16(lo[q][t], hi[q][t], w, bcast4(xb + t * s.xs + 4 * j));
                    }
            }
        }
        for (int q = 0; q < NQ; q++) {
            const float32x4_t sc = vld1q_f32(ps + g * kPanel + 4 * (m + q));
            for (int t = 0; t < TT; t++)
                facc[q][t] = vfmaq_f32(facc[q][t], sc, vcvtq_f32_s32(row_sums(lo[q][t], hi[q][t])));
        }
    }
    for (int q = 0; q < NQ; q++)
        for (int t = 0; t < TT; t++) vst1q_f32(out + (q * TT + t) * 4, facc[q][t]);
}

// The rows [o_begin, o_end) of panel pw for tt tokens: y = fma(acc, sx, bias).
template <bool Q4, bool H, int TT>
static void panel_tokens(const uint8_t* pw, const float* ps, const QShape& s, int64_t o0, const int8_t* xq,
                         const float* sx, const float* bias, float* y, int64_t o_begin, int64_t o_end) {
    constexpr int NQ = TT == 1 ? 4 : TT == 2 ? 2 : 1;
    float out[NQ * TT * 4];
    for (int m = 0; m < 4; m += NQ) {
        const int64_t o = o0 + 4 * m;
        if (o + 4 * NQ <= o_begin || o >= o_end) continue;
        quads_tile<Q4, H, TT, NQ>(pw, ps, s, m, xq, out);
        for (int q = 0; q < NQ; q++)
            for (int t = 0; t < TT; t++)
                for (int i = 0; i < 4; i++) {
                    const int64_t oi = o + 4 * q + i;
                    if (oi < o_begin || oi >= o_end) continue;
                    y[t * s.n_out + oi] = std::fma(out[(q * TT + t) * 4 + i], sx[t], bias ? bias[oi] : 0.0f);
                }
    }
}

// Rows [o_begin, o_end) for T prepared tokens: panel by panel, TT_Q tokens at a time.
template <bool Q4, bool H>
static void quant_rows(const Matrix& mat, const QShape& s, const int8_t* xq, const float* sx, int64_t T,
                       const float* bias, float* y, int64_t o_begin, int64_t o_end) {
    const uint8_t* w = (const uint8_t*)mat.data;
    for (int64_t p = o_begin / kPanel; p * kPanel < o_end; p++) {
        const uint8_t* pw = w + p * s.panel_bytes;
        const float* ps = mat.scales + p * s.n_groups * kPanel;
        for (int64_t t0 = 0; t0 < T; t0 += TT_Q) {
            const int8_t* xt = xq + t0 * s.xs;
            const float* st = sx + t0;
            float* yt = y + t0 * s.n_out;
            const int64_t o = p * kPanel;
            switch (T - t0 < TT_Q ? T - t0 : TT_Q) {
                case 1: panel_tokens<Q4, H, 1>(pw, ps, s, o, xt, st, bias, yt, o_begin, o_end); break;
                case 2: panel_tokens<Q4, H, 2>(pw, ps, s, o, xt, st, bias, yt, o_begin, o_end); break;
                case 3: panel_tokens<Q4, H, 3>(pw, ps, s, o, xt, st, bias, yt, o_begin, o_end); break;
                case 4: panel_tokens<Q4, H, 4>(pw, ps, s, o, xt, st, bias, yt, o_begin, o_end); break;
                case 5: panel_tokens<Q4, H, 5>(pw, ps, s, o, xt, st, bias, yt, o_begin, o_end); break;
                case 6: panel_tokens<Q4, H, 6>(pw, ps, s, o, xt, st, bias, yt, o_begin, o_end); break;
                case 7: panel_tokens<Q4, H, 7>(pw, ps, s, o, xt, st, bias, yt, o_begin, o_end); break;
                default: panel_tokens<Q4, H, 8>(pw, ps, s, o, xt, st, bias, yt, o_begin, o_end); break;
            }
        }
    }
}

}  // namespace

size_t quant_prepared_bytes(const Matrix& m, int64_t T) {
    generic::check_quant(m);
    return prepared_bytes(quant_shape(m), T);
}

// generic::quantize_row (the reference's bits), zero-padded to xs.
void quant_prepare(const Matrix& m, const float* x, int64_t T, int64_t r_begin, int64_t r_end, void* prep) {
    generic::check_quant(m);
    const QShape s = quant_shape(m);
    int8_t* xq = (int8_t*)prep;
    float* sx = prepared_scales(s, T, prep);
    for (int64_t t = r_begin; t < r_end; t++) {
        sx[t] = generic::quantize_row(x + t * s.n_in, s.n_in, xq + t * s.xs);
        std::memset(xq + t * s.xs + s.n_in, 0, s.xs - s.n_in);
    }
}

void quant_linear_prepared(const Matrix& m, const float* bias, const void* prep, int64_t T, float* y,
                           int64_t o_begin, int64_t o_end) {
    generic::check_quant(m);
    const QShape s = quant_shape(m);
    const int8_t* xq = (const int8_t*)prep;
    const float* sx = prepared_scales(s, T, const_cast<void*>(prep));
    if (s.q4) {
        if (s.half) quant_rows<true, true>(m, s, xq, sx, T, bias, y, o_begin, o_end);
        else quant_rows<true, false>(m, s, xq, sx, T, bias, y, o_begin, o_end);
    } else {
        if (s.half) quant_rows<false, true>(m, s, xq, sx, T, bias, y, o_begin, o_end);
        else quant_rows<false, false>(m, s, xq, sx, T, bias, y, o_begin, o_end);
    }
}

}  // namespace simd
}  // namespace PYGPT_KERNEL_NS
}  // namespace pygpt

#endif  // PYGPT_NEON
