// Linear layers with quantized weights (q8, q4): activations quantized per token to int8,
// integer dot products per block of 64 inputs (see linear.cpp and docs/FORMAT.md).
//
// Accumulation contract (the same as generic::quant_linear, so every path here is bitwise
// equal to the scalar reference, whatever the tile, T or column range):
//   isum[t, o, g] = the EXACT int32 dot product of group g (integer sums: any order),
//   acc = 0; for g = 0, 1, ...: acc = fma(scale[o, g], float(isum), acc);
//   y[t, o] = fma(acc, sx[t], bias[o] or 0).
// Since the integer sums are exact, a kernel is free to lay them out as it likes:
//   AVX-512 prefill (q8 T > 12, q4 T > 8): a panel of 16 rows is repacked once per token
//     block so that one 64-byte vector holds 4 consecutive weights of each of the 16 rows
//     (q8: a 16 x 16 dword transpose per 64-input block; q4, stored so already: its
//     nibbles unpacked, once);
//     vpdpbusd against 4 activation bytes broadcast then gives 16 outputs' partial sums in
//     the 16 lanes: no horizontal reduction at all, and the per-group scaling is one FMA
//     per 16 outputs (q8_rows / q4_panels_few below cover smaller batches, where repacking
//     cost more than it saved).
//   AVX-512 q8, T <= 12: rows read as stored, one row after another (one memory stream:
//     reading 2, 4 or 16 rows interleaved was 1.3-4x slower from DRAM), lanes over the
//     inputs, each weight vector used for up to 6 tokens; the 16 rows' integer lanes are
//     reduced together by a transpose-add tree into one vector of 16 outputs.
//   q4 is stored in panels of 16 rows (docs/FORMAT.md): one 64-byte vector holds 4 bytes
//     (8 inputs) of each of the 16 rows, so every q4 path has the rows in the lanes and no
//     horizontal reduction: AVX-512 T = 1 multiplies the high nibbles in place (v & 0xf0,
//     16 times the value; the block's exact sum shifted back), T = 2..8 unpacks each vector
//     once for all tokens, T > 8 unpacks the panel into the prefill layout; AVX2 does the
//     same 8 rows at a time with vpmaddubsw.
//   AVX2 q8: per (token, row, group) integer lanes; four groups' sums reduced together by
//     vphaddd and scaled in one vector FMA.
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

// The shape of one call's quantized product.
struct QShape {
    int64_t n_in, n_out, n_groups;
    int64_t bpg;       // blocks of 64 inputs per group
    int64_t nb;        // blocks of 64 inputs per row (n_in padded)
    int64_t xs;        // stride of the quantized activations: n_in padded to 128 with zeros
    int64_t w_stride;  // bytes per stored weight row (q4: per panel of 16 rows)
};

// The panel of 16 q4 rows starting at output o = 16p, and the lanes of it that [o_begin,
// o_end) covers (docs/FORMAT.md: rows past n_out are padding and never stored).
struct Q4Panel {
    const uint8_t* w;  // the panel's bytes
    const float* ps;   // its scales: 16 per group, one per row
    int64_t o;         // its first output
    uint32_t mask;     // bit r: row o + r is in [o_begin, o_end)
};

static inline Q4Panel q4_panel(const uint8_t* w, const float* scales, const QShape& s, int64_t p, int64_t o_begin,
                               int64_t o_end) {
    const int64_t o = p * kQ4Panel;
    const int64_t lo = o_begin > o ? o_begin - o : 0, hi = o_end < o + kQ4Panel ? o_end - o : kQ4Panel;
    return {w + p * s.w_stride, scales + p * s.n_groups * kQ4Panel, o, ((1u << hi) - 1) & ~((1u << lo) - 1)};
}

#if defined(__AVX512F__)
// ---------------------------------------------------------------------------------------
// AVX-512 (VNNI): weights as unsigned bytes (q8 w + 128, q4 w + 8), activations signed;
// the offset times the group's activation sum is subtracted exactly (corr).

// One block of 64 q8 weights of row w as unsigned bytes, in input order.
static inline __m512i load_wblock(const uint8_t* row, int64_t block, int64_t n_in) {
    const int64_t k = block * 64;
    const __m512i v = n_in - k >= 64 ? _mm512_loadu_si512(row + k)
                                     : _mm512_maskz_loadu_epi8(tail_mask64(n_in - k), row + k);
    return _mm512_xor_si512(v, _mm512_set1_epi8((char)0x80));
}

// generic::quantize_row, vectorised (bitwise the same), zero padding to xs, and per group
// corr[g] = -offset * (sum of the group's quantized activations).
static float quantize_row(const float* x, const QShape& s, int offset, int8_t* xq, int32_t* corr) {
    const int64_t n_in = s.n_in;
    __m512 amax = _mm512_setzero_ps();
    int64_t k = 0;
    for (; k + 16 <= n_in; k += 16) amax = _mm512_max_ps(amax, _mm512_abs_ps(_mm512_loadu_ps(x + k)));
    if (k < n_in) amax = _mm512_max_ps(amax, _mm512_abs_ps(_mm512_maskz_loadu_ps(tail_mask16(n_in - k), x + k)));
    const float m = _mm512_reduce_max_ps(amax);
    const float inv = m > 0.0f ? 127.0f / m : 0.0f;
    const __m512 vinv = _mm512_set1_ps(inv);
    // 64 at a time: int32 -> int8 by two saturating packs (clamp to [-128, 127]) and a max
    // with -127, the same as clamping the int32 to [-127, 127]; the packs interleave 128-bit
    // lanes, one permute puts them back in order
    const __m512i order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
    for (k = 0; k < s.xs; k += 64) {
        __m512i q[4];
        for (int i = 0; i < 4; i++) {
            const int64_t ki = k + 16 * i;
            const __m512 v = n_in - ki >= 16 ? _mm512_loadu_ps(x + ki)
                                             : (ki < n_in ? _mm512_maskz_loadu_ps(tail_mask16(n_in - ki), x + ki)
                                                          : _mm512_setzero_ps());
            q[i] = _mm512_cvtps_epi32(_mm512_mul_ps(v, vinv));
        }
        const __m512i b = _mm512_packs_epi16(_mm512_packs_epi32(q[0], q[1]), _mm512_packs_epi32(q[2], q[3]));
        _mm512_storeu_si512(xq + k, _mm512_permutexvar_epi32(order, _mm512_max_epi8(b, _mm512_set1_epi8(-127))));
    }
    const __m512i off = _mm512_set1_epi8((char)offset);
    for (int64_t g = 0, block = 0; g < s.n_groups; g++) {
        __m512i c = _mm512_setzero_si512();
        for (int64_t b = 0; b < s.bpg; b++, block++) c = _mm512_dpbusd_epi32(c, off, _mm512_loadu_si512(xq + block * 64));
        corr[g] = -_mm512_reduce_add_epi32(c);
    }
    return m > 0.0f ? m / 127.0f : 0.0f;
}

// ---- T >= 2: repacked panels ------------------------------------------------------------

constexpr int NP_Q = 2;         // panels per tile
constexpr int TT_Q = 6;         // tokens per tile: 12 int + 12 float accumulators

// 16 x 16 transpose of 32-bit elements: v[r] lane s -> v[s] lane r.
static inline void transpose16(__m512i* v) {
    __m512i t[16];
    for (int i = 0; i < 8; i++) {
        t[2 * i] = _mm512_unpacklo_epi32(v[2 * i], v[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_epi32(v[2 * i], v[2 * i + 1]);
    }
    // r[4i + j], 128-bit chunk c: rows 4i..4i+3, element 4c + j
    __m512i r[16];
    for (int i = 0; i < 4; i++) {
        r[4 * i] = _mm512_unpacklo_epi64(t[4 * i], t[4 * i + 2]);
        r[4 * i + 1] = _mm512_unpackhi_epi64(t[4 * i], t[4 * i + 2]);
        r[4 * i + 2] = _mm512_unpacklo_epi64(t[4 * i + 1], t[4 * i + 3]);
        r[4 * i + 3] = _mm512_unpackhi_epi64(t[4 * i + 1], t[4 * i + 3]);
    }
    for (int j = 0; j < 4; j++) {  // 4 x 4 transpose of 128-bit chunks of r[j], r[4+j], r[8+j], r[12+j]
        const __m512i e0 = _mm512_shuffle_i32x4(r[j], r[4 + j], 0x44), e1 = _mm512_shuffle_i32x4(r[j], r[4 + j], 0xEE);
        const __m512i f0 = _mm512_shuffle_i32x4(r[8 + j], r[12 + j], 0x44);
        const __m512i f1 = _mm512_shuffle_i32x4(r[8 + j], r[12 + j], 0xEE);
        v[j] = _mm512_shuffle_i32x4(e0, f0, 0x88);
        v[4 + j] = _mm512_shuffle_i32x4(e0, f0, 0xDD);
        v[8 + j] = _mm512_shuffle_i32x4(e1, f1, 0x88);
        v[12 + j] = _mm512_shuffle_i32x4(e1, f1, 0xDD);
    }
}

// ps[g * ps_stride + r] = scales[r * n_groups + g] for r < rows (rows <= 16), else 0: the
// scales of 16 rows, one vector per group (a transpose per 16 groups, not a gather per group).
static void transpose_scales(const float* scales, int rows, int64_t n_groups, float* ps, int64_t ps_stride) {
    if (n_groups == 1) {  // one scale per row (q8's default): already one vector
        _mm512_storeu_ps(ps, _mm512_maskz_loadu_ps(tail_mask16(rows), scales));
        return;
    }
    for (int64_t g0 = 0; g0 < n_groups; g0 += 16) {
        const int64_t ng = n_groups - g0 < 16 ? n_groups - g0 : 16;
        __m512i v[16];
        for (int r = 0; r < 16; r++)
            v[r] = r < rows ? _mm512_castps_si512(_mm512_maskz_loadu_ps(tail_mask16(ng), scales + r * n_groups + g0))
                            : _mm512_setzero_si512();
        transpose16(v);
        for (int64_t j = 0; j < ng; j++) _mm512_storeu_si512(ps + (g0 + j) * ps_stride, v[j]);
    }
}

// A decode or small-batch panel's scales (rows of n_groups floats at `scales`), transposed
// into ps (stride 16). The scales of the panel two ahead are prefetched into L2, as the
// weights are: a separate stream the hardware prefetchers did not cover (int4 decode spent
// 15% of its time in transpose_scales, waiting on them).
static inline void stream_panel_scales(const float* scales, int rows, int64_t n_groups, float* ps) {
    const char* ahead = (const char*)(scales + 32 * n_groups);
    for (int64_t i = 0; i < 16 * n_groups * 4; i += 64) _mm_prefetch(ahead + i, _MM_HINT_T1);
    transpose_scales(scales, rows, n_groups, ps, 16);
}

// Rows [o, o + rows) (rows <= 16) of q8 repacked: out[b * 16 + s] lane r = weights 64b + 4s
// .. 64b + 4s + 3 of row o + r (unsigned bytes); missing rows are zero. ps[g * stride + r] =
// scale of row o + r, group g.
static void pack_panel_q8(const uint8_t* w, const float* scales, int rows, const QShape& s, __m512i* out, float* ps,
                          int64_t ps_stride) {
    // the 16 rows' blocks are 16 short streams the hardware prefetcher does not follow from
    // DRAM: prefetch the panel NP_Q panels ahead (the next call's) into L2, spread over the blocks
    const char* ahead = (const char*)w + NP_Q * 16 * s.w_stride;
    const int64_t step = 16 * s.w_stride / s.nb;  // bytes of that panel per block
    for (int64_t b = 0; b < s.nb; b++) {
        for (int64_t i = 0; i < step; i += 64) _mm_prefetch(ahead + b * step + i, _MM_HINT_T1);
        __m512i v[16];
        for (int r = 0; r < 16; r++)
            v[r] = r < rows ? load_wblock(w + r * s.w_stride, b, s.n_in) : _mm512_setzero_si512();
        transpose16(v);
        for (int j = 0; j < 16; j++) _mm512_store_si512(out + b * 16 + j, v[j]);
    }
    transpose_scales(scales, rows, s.n_groups, ps, ps_stride);
}

// A q4 panel in the same layout: its stored vector j of block b is already lane r = bytes
// 4j..4j+3 of row r, whose low nibbles are inputs 4j.. (out[b * 16 + j]) and high nibbles
// inputs 32 + 4j.. (out[b * 16 + 8 + j]); its scales are already one vector per group.
static void pack_panel_q4(const Q4Panel& P, const QShape& s, __m512i* out, float* ps, int64_t ps_stride) {
    const char* ahead = (const char*)P.w + NP_Q * s.w_stride;  // as pack_panel_q8
    const __m512i m4 = _mm512_set1_epi8(0x0f);
    for (int64_t b = 0; b < s.nb; b++) {
        for (int i = 0; i < 512; i += 64) _mm_prefetch(ahead + b * 512 + i, _MM_HINT_T1);
        for (int j = 0; j < 8; j++) {
            const __m512i v = _mm512_loadu_si512(P.w + b * 512 + j * 64);
            _mm512_store_si512(out + b * 16 + j, _mm512_and_si512(v, m4));
            _mm512_store_si512(out + b * 16 + 8 + j, _mm512_and_si512(_mm512_srli_epi16(v, 4), m4));
        }
    }
    for (int64_t g = 0; g < s.n_groups; g++) _mm512_storeu_ps(ps + g * ps_stride, _mm512_loadu_ps(P.ps + g * 16));
}

// NP panels x TT tokens: acc[t][p] over all groups (the contract's float sequence, 16
// outputs per vector), then y = fma(acc, sx, bias).
template <int NP, int TT>
static inline void packed_tile(const __m512i* pw, int64_t pstride, const float* ps, int64_t ps_stride,
                               const QShape& s, const int8_t* xq, const int32_t* corr, const float* sx,
                               const __m512* bias, float* y, int64_t ldy, const __mmask16* masks) {
    __m512 facc[TT][NP];
    for (int t = 0; t < TT; t++)
        for (int p = 0; p < NP; p++) facc[t][p] = _mm512_setzero_ps();
    const int64_t steps = s.bpg * 16;  // 4-input steps per group
    const int8_t* xg = xq;
    const __m512i* wg = pw;
    for (int64_t g = 0; g < s.n_groups; g++, xg += steps * 4, wg += steps) {
        __m512i iacc[TT][NP];
        for (int t = 0; t < TT; t++) {
            const __m512i c = _mm512_set1_epi32(corr[t * s.n_groups + g]);
            for (int p = 0; p < NP; p++) iacc[t][p] = c;
        }
        for (int64_t k = 0; k < steps; k++) {
            __m512i wv[NP];
            for (int p = 0; p < NP; p++) wv[p] = _mm512_load_si512(wg + p * pstride + k);
            for (int t = 0; t < TT; t++) {
                int32_t x4;
                std::memcpy(&x4, xg + t * s.xs + 4 * k, 4);
                const __m512i xb = _mm512_set1_epi32(x4);
                for (int p = 0; p < NP; p++) iacc[t][p] = _mm512_dpbusd_epi32(iacc[t][p], wv[p], xb);
            }
        }
        for (int p = 0; p < NP; p++) {
            const __m512 sc = _mm512_loadu_ps(ps + g * ps_stride + p * 16);
            for (int t = 0; t < TT; t++) facc[t][p] = _mm512_fmadd_ps(sc, _mm512_cvtepi32_ps(iacc[t][p]), facc[t][p]);
        }
    }
    for (int t = 0; t < TT; t++)
        for (int p = 0; p < NP; p++) {
            const __m512 v = _mm512_fmadd_ps(facc[t][p], _mm512_set1_ps(sx[t]), bias[p]);
            _mm512_mask_storeu_ps(y + t * ldy + p * 16, masks[p], v);
        }
}

template <int NP>
static void packed_tokens(const __m512i* pw, int64_t pstride, const float* ps, int64_t ps_stride, const QShape& s,
                          const int8_t* xq, const int32_t* corr, const float* sx, int64_t T, const __m512* bias,
                          float* y, const __mmask16* masks) {
    const int64_t ldy = s.n_out, ng = s.n_groups;
    int64_t t = 0;
    for (; t + TT_Q <= T; t += TT_Q)
        packed_tile<NP, TT_Q>(pw, pstride, ps, ps_stride, s, xq + t * s.xs, corr + t * ng, sx + t, bias, y + t * ldy,
                              ldy, masks);
    const int8_t* xt = xq + t * s.xs;
    const int32_t* ct = corr + t * ng;
    float* yt = y + t * ldy;
    switch (T - t) {
        case 0: break;
        case 1: packed_tile<NP, 1>(pw, pstride, ps, ps_stride, s, xt, ct, sx + t, bias, yt, ldy, masks); break;
        case 2: packed_tile<NP, 2>(pw, pstride, ps, ps_stride, s, xt, ct, sx + t, bias, yt, ldy, masks); break;
        case 3: packed_tile<NP, 3>(pw, pstride, ps, ps_stride, s, xt, ct, sx + t, bias, yt, ldy, masks); break;
        case 4: packed_tile<NP, 4>(pw, pstride, ps, ps_stride, s, xt, ct, sx + t, bias, yt, ldy, masks); break;
        case 5: packed_tile<NP, 5>(pw, pstride, ps, ps_stride, s, xt, ct, sx + t, bias, yt, ldy, masks); break;
    }
}

// q8 rows [o_begin, o_end) for T tokens: NP_Q panels of 16 rows at a time, each repacked once.
static void packed_rows_q8(const uint8_t* w, const float* scales, const QShape& s, const int8_t* xq,
                           const int32_t* corr, const float* sx, int64_t T, const float* bias, float* y,
                           int64_t o_begin, int64_t o_end, __m512i* pw, float* ps) {
    const int64_t pstride = s.nb * 16, ps_stride = NP_Q * 16;
    for (int64_t o = o_begin; o < o_end; o += NP_Q * 16) {
        const int64_t rows = o_end - o < NP_Q * 16 ? o_end - o : NP_Q * 16;
        const int np = (int)((rows + 15) / 16);
        __m512 bv[NP_Q];
        __mmask16 masks[NP_Q];
        for (int p = 0; p < np; p++) {
            const int64_t r = rows - p * 16 < 16 ? rows - p * 16 : 16;
            pack_panel_q8(w + (o + p * 16) * s.w_stride, scales + (o + p * 16) * s.n_groups, (int)r, s,
                          pw + p * pstride, ps + p * 16, ps_stride);
            masks[p] = tail_mask16(r);
            bv[p] = bias ? _mm512_maskz_loadu_ps(masks[p], bias + o + p * 16) : _mm512_setzero_ps();
        }
        if (np == 2) packed_tokens<2>(pw, pstride, ps, ps_stride, s, xq, corr, sx, T, bv, y + o, masks);
        else packed_tokens<1>(pw, pstride, ps, ps_stride, s, xq, corr, sx, T, bv, y + o, masks);
    }
}

// q4 rows [o_begin, o_end) for T tokens: the panels covering them, NP_Q at a time, unpacked
// once (pack_panel_q4).
static void packed_panels_q4(const uint8_t* w, const float* scales, const QShape& s, const int8_t* xq,
                             const int32_t* corr, const float* sx, int64_t T, const float* bias, float* y,
                             int64_t o_begin, int64_t o_end, __m512i* pw, float* ps) {
    const int64_t pstride = s.nb * 16, ps_stride = NP_Q * 16, p_end = (o_end + 15) / 16;
    for (int64_t p0 = o_begin / 16; p0 < p_end; p0 += NP_Q) {
        const int np = p_end - p0 < NP_Q ? (int)(p_end - p0) : NP_Q;
        __m512 bv[NP_Q];
        __mmask16 masks[NP_Q];
        for (int p = 0; p < np; p++) {
            const Q4Panel P = q4_panel(w, scales, s, p0 + p, o_begin, o_end);
            pack_panel_q4(P, s, pw + p * pstride, ps + p * 16, ps_stride);
            masks[p] = (__mmask16)P.mask;
            bv[p] = bias ? _mm512_maskz_loadu_ps(masks[p], bias + P.o) : _mm512_setzero_ps();
        }
        if (np == 2) packed_tokens<2>(pw, pstride, ps, ps_stride, s, xq, corr, sx, T, bv, y + p0 * 16, masks);
        else packed_tokens<1>(pw, pstride, ps, ps_stride, s, xq, corr, sx, T, bv, y + p0 * 16, masks);
    }
}

// ---- T = 1: rows as stored, integer lanes reduced across 16 rows ------------------------

static inline __m512i add_ps_as_epi32(__m512 a, __m512 b) {
    return _mm512_add_epi32(_mm512_castps_si512(a), _mm512_castps_si512(b));
}

// out lane r = sum of the 16 lanes of z[r] (exact).
static inline __m512i reduce16_epi32(const __m512i* z) {
    __m512i s1[8], s2[4], s3[2];
    for (int i = 0; i < 8; i++)
        s1[i] = _mm512_add_epi32(_mm512_shuffle_i32x4(z[2 * i], z[2 * i + 1], 0x44),
                                 _mm512_shuffle_i32x4(z[2 * i], z[2 * i + 1], 0xEE));
    for (int i = 0; i < 4; i++)
        s2[i] = _mm512_add_epi32(_mm512_shuffle_i32x4(s1[2 * i], s1[2 * i + 1], 0x88),
                                 _mm512_shuffle_i32x4(s1[2 * i], s1[2 * i + 1], 0xDD));
    for (int i = 0; i < 2; i++)
        s3[i] = _mm512_add_epi32(_mm512_unpacklo_epi64(s2[2 * i], s2[2 * i + 1]),
                                 _mm512_unpackhi_epi64(s2[2 * i], s2[2 * i + 1]));
    const __m512 a = _mm512_castsi512_ps(s3[0]), b = _mm512_castsi512_ps(s3[1]);
    // lane 4c + e is the sum of z[4e + c]
    const __m512i s4 = add_ps_as_epi32(_mm512_shuffle_ps(a, b, 0x88), _mm512_shuffle_ps(a, b, 0xDD));
    return _mm512_permutexvar_epi32(_mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15), s4);
}

// The contract's per-group step for 16 rows: acc = fma(scale, float(isum + corr), acc).
static inline __m512 scale_group(__m512 acc, __m512i isum, int32_t corr, const float* scale16) {
    return _mm512_fmadd_ps(_mm512_loadu_ps(scale16), _mm512_cvtepi32_ps(_mm512_add_epi32(isum, _mm512_set1_epi32(corr))),
                           acc);
}


// q8, rows [o, o + rows) (rows <= 16) for TT tokens (k in lanes, no repacking): per group,
// row after row (the panel's bytes read in memory order: one stream the hardware
// prefetcher follows; interleaving 16 rows halved the DRAM throughput), each weight vector
// used for the TT tokens; the 16 rows' integer lanes then reduced together by a tree.
// Software prefetch distance of q8_rows_tile for TT >= 2 tokens: a block then takes TT
// vpdpbusd, and the 1 KB of one token's decode is reached before DRAM answers. At 2 threads,
// 12 matrices of each 124M shape from DRAM: T = 8 took 430-456 us with 8 KB (16 KB: 432-625),
// 580-590 us with 1 KB; T = 4: 328-339 us vs 403-551 us.
constexpr int64_t Q8_BATCH_PREFETCH_BYTES = 8192;
template <int TT>
static inline void q8_rows_tile(const uint8_t* w, const float* ps, int rows, const QShape& s, const int8_t* xq,
                                const int32_t* corr, const float* sx, const float* bias, float* y) {
    constexpr int C = TT == 1 ? 2 : 1;  // chains per token (one token: two, for the dpbusd latency)
    __m512 acc[TT];                      // lane r: row r, one vector per token
    for (int t = 0; t < TT; t++) acc[t] = _mm512_setzero_ps();
    const __mmask16 mask = tail_mask16(rows);
    for (int64_t g = 0, b0 = 0; g < s.n_groups; g++, b0 += s.bpg) {
        __m512i zb[TT][16];
        for (int r = 0; r < 16; r++) {
            __m512i z[TT][C];
            for (int t = 0; t < TT; t++)
                for (int c = 0; c < C; c++) z[t][c] = _mm512_setzero_si512();
            if (r < rows) {
                const uint8_t* row = w + r * s.w_stride;
                int64_t b = b0;
                // (unrolled: z must stay in registers, not round-trip through the stack)
                for (; b + C <= b0 + s.bpg; b += C)
#pragma GCC unroll 2
                    for (int c = 0; c < C; c++) {
                        _mm_prefetch((const char*)row + (b + c) * 64 + (TT == 1 ? PREFETCH_BYTES : Q8_BATCH_PREFETCH_BYTES),
                                     _MM_HINT_T1);
                        const __m512i wv = load_wblock(row, b + c, s.n_in);
#pragma GCC unroll 8
                        for (int t = 0; t < TT; t++)
                            z[t][c] = _mm512_dpbusd_epi32(z[t][c], wv, _mm512_loadu_si512(xq + t * s.xs + (b + c) * 64));
                    }
                for (; b < b0 + s.bpg; b++) {
                    const __m512i wv = load_wblock(row, b, s.n_in);
#pragma GCC unroll 8
                    for (int t = 0; t < TT; t++)
                        z[t][0] = _mm512_dpbusd_epi32(z[t][0], wv, _mm512_loadu_si512(xq + t * s.xs + b * 64));
                }
            }
            for (int t = 0; t < TT; t++) zb[t][r] = C == 2 ? _mm512_add_epi32(z[t][0], z[t][C - 1]) : z[t][0];
        }
        const __m512 sc = _mm512_loadu_ps(ps + g * 16);
        for (int t = 0; t < TT; t++) {
            const __m512i v = _mm512_add_epi32(reduce16_epi32(zb[t]), _mm512_set1_epi32(corr[t * s.n_groups + g]));
            acc[t] = _mm512_fmadd_ps(sc, _mm512_cvtepi32_ps(v), acc[t]);
        }
    }
    const __m512 bv = bias ? _mm512_maskz_loadu_ps(mask, bias) : _mm512_setzero_ps();
    for (int t = 0; t < TT; t++)
        _mm512_mask_storeu_ps(y + t * s.n_out, mask, _mm512_fmadd_ps(acc[t], _mm512_set1_ps(sx[t]), bv));
}

// q8 for T tokens without repacking: 16-row panels, tokens TT_Q8 at a time (8: a batch of
// 8 reads each weight once; 6 + 2 was 1.2-1.3x slower).
constexpr int TT_Q8 = 8;
// Up to this many tokens q8 reads its rows as stored: repacking a panel (a 16 x 16 transpose
// per block) costs about as much as 12 tokens' products (measured on [3072, 768]).
constexpr int64_t Q8_UNPACKED_MAX_T = 12;
static void q8_rows(const uint8_t* w, const float* scales, const QShape& s, const int8_t* xq, const int32_t* corr,
                    const float* sx, int64_t T, const float* bias, float* y, int64_t o_begin, int64_t o_end, float* ps) {
    for (int64_t o = o_begin; o < o_end; o += 16) {
        const int rows = o_end - o < 16 ? (int)(o_end - o) : 16;
        const uint8_t* wo = w + o * s.w_stride;
        const float* bo = bias ? bias + o : nullptr;
        stream_panel_scales(scales + o * s.n_groups, rows, s.n_groups, ps);
        int64_t t = 0;
        for (; t + TT_Q8 <= T; t += TT_Q8)
            q8_rows_tile<TT_Q8>(wo, ps, rows, s, xq + t * s.xs, corr + t * s.n_groups, sx + t, bo,
                                   y + t * s.n_out + o);
        const int8_t* xt = xq + t * s.xs;
        const int32_t* ct = corr + t * s.n_groups;
        float* yt = y + t * s.n_out + o;
        switch (T - t) {
            case 0: break;
            case 1: q8_rows_tile<1>(wo, ps, rows, s, xt, ct, sx + t, bo, yt); break;
            case 2: q8_rows_tile<2>(wo, ps, rows, s, xt, ct, sx + t, bo, yt); break;
            case 3: q8_rows_tile<3>(wo, ps, rows, s, xt, ct, sx + t, bo, yt); break;
            case 4: q8_rows_tile<4>(wo, ps, rows, s, xt, ct, sx + t, bo, yt); break;
            case 5: q8_rows_tile<5>(wo, ps, rows, s, xt, ct, sx + t, bo, yt); break;
            case 6: q8_rows_tile<6>(wo, ps, rows, s, xt, ct, sx + t, bo, yt); break;
            case 7: q8_rows_tile<7>(wo, ps, rows, s, xt, ct, sx + t, bo, yt); break;
        }
    }
}

// acc + the dword products of w (unsigned bytes) and the 4 bytes at x (signed) broadcast,
// the broadcast folded into vpdpbusd as a memory operand (GCC emits a separate vpbroadcastd).
static inline __m512i dpbusd_bcst(__m512i acc, __m512i w, const int8_t* x) {
    __asm__("vpdpbusd %2%{1to16%}, %1, %0" : "+v"(acc) : "v"(w), "m"(*(const int32_t*)x));
    return acc;
}

// q4, T = 2..8 tokens, one panel: each stored vector (4 bytes of each of the 16 rows)
// unpacked once into its low and high nibbles and used at once for the TT tokens, against
// their 4 activation bytes broadcast. Per token C chains of integer accumulators (C = 2 for
// few tokens: the vpdpbusd latency), summed at the group's end.
template <int TT>
static void q4_panel_tile(const Q4Panel& P, const QShape& s, const int8_t* xq, const int32_t* corr, const float* sx,
                          const float* bias, float* y) {
    constexpr int C = TT <= 4 ? 2 : 1;
    const __m512i m4 = _mm512_set1_epi8(0x0f);
    const char* ahead = (const char*)P.w + 2 * s.w_stride;  // the panel two ahead, into L2
    __m512 facc[TT];
    for (int t = 0; t < TT; t++) facc[t] = _mm512_setzero_ps();
    for (int64_t g = 0, b = 0; g < s.n_groups; g++) {
        __m512i iacc[TT][C];
        for (int t = 0; t < TT; t++) {
            iacc[t][0] = _mm512_set1_epi32(corr[t * s.n_groups + g]);
            if (C == 2) iacc[t][C - 1] = _mm512_setzero_si512();
        }
        for (const int64_t b_end = b + s.bpg; b < b_end; b++) {
            for (int i = 0; i < 512; i += 64) _mm_prefetch(ahead + b * 512 + i, _MM_HINT_T1);
            const uint8_t* wb = P.w + b * 512;
            const int8_t* xb = xq + b * 64;
#pragma GCC unroll 8
            for (int j = 0; j < 8; j++) {
                const __m512i v = _mm512_loadu_si512(wb + j * 64);
                const __m512i lo = _mm512_and_si512(v, m4), hi = _mm512_and_si512(_mm512_srli_epi16(v, 4), m4);
                for (int t = 0; t < TT; t++) iacc[t][0] = dpbusd_bcst(iacc[t][0], lo, xb + t * s.xs + 4 * j);
                for (int t = 0; t < TT; t++)
                    iacc[t][C - 1] = dpbusd_bcst(iacc[t][C - 1], hi, xb + t * s.xs + 32 + 4 * j);
            }
        }
        const __m512 sc = _mm512_loadu_ps(P.ps + g * 16);
        for (int t = 0; t < TT; t++) {
            const __m512i isum = C == 2 ? _mm512_add_epi32(iacc[t][0], iacc[t][C - 1]) : iacc[t][0];
            facc[t] = _mm512_fmadd_ps(sc, _mm512_cvtepi32_ps(isum), facc[t]);
        }
    }
    const __mmask16 mask = (__mmask16)P.mask;
    const __m512 bv = bias ? _mm512_maskz_loadu_ps(mask, bias + P.o) : _mm512_setzero_ps();
    for (int t = 0; t < TT; t++)
        _mm512_mask_storeu_ps(y + t * s.n_out + P.o, mask, _mm512_fmadd_ps(facc[t], _mm512_set1_ps(sx[t]), bv));
}

// Up to this many tokens q4 uses q4_panel_tile (one tile) rather than unpacked panels.
constexpr int64_t Q4_UNPACKED_MAX_T = 8;
static void q4_panels_few(const uint8_t* w, const float* scales, const QShape& s, const int8_t* xq,
                          const int32_t* corr, const float* sx, int64_t T, const float* bias, float* y,
                          int64_t o_begin, int64_t o_end) {
    for (int64_t p = o_begin / 16; p * 16 < o_end; p++) {
        const Q4Panel P = q4_panel(w, scales, s, p, o_begin, o_end);
        switch (T) {
            case 2: q4_panel_tile<2>(P, s, xq, corr, sx, bias, y); break;
            case 3: q4_panel_tile<3>(P, s, xq, corr, sx, bias, y); break;
            case 4: q4_panel_tile<4>(P, s, xq, corr, sx, bias, y); break;
            case 5: q4_panel_tile<5>(P, s, xq, corr, sx, bias, y); break;
            case 6: q4_panel_tile<6>(P, s, xq, corr, sx, bias, y); break;
            case 7: q4_panel_tile<7>(P, s, xq, corr, sx, bias, y); break;
            case 8: q4_panel_tile<8>(P, s, xq, corr, sx, bias, y); break;
            default: throw std::logic_error("q4_panels_few: 2 to Q4_UNPACKED_MAX_T tokens");
        }
    }
}

// q4, one token, one panel: per block 8 stored vectors, each against 4 activation bytes
// broadcast twice: its low nibbles (v & 0x0f) and its high nibbles left in place (v & 0xf0,
// 16 times their value: one instruction fewer than shifting them down); the block's exact
// high sum is then shifted back (exact: a multiple of 16, at most 240 * 127 * 32 per lane
// and block, far from overflow). Four accumulator chains for the vpdpbusd latency.
static void q4_decode_panel(const Q4Panel& P, const QShape& s, const int8_t* xq, const int32_t* corr, float sx,
                            const float* bias, float* y) {
    const __m512i m4 = _mm512_set1_epi8(0x0f), m4h = _mm512_set1_epi8((char)0xf0);
    const char* ahead = (const char*)P.w + 2 * s.w_stride;  // the panel two ahead, into L2
    __m512 acc = _mm512_setzero_ps();
    for (int64_t g = 0, b = 0; g < s.n_groups; g++) {
        __m512i lo0 = _mm512_set1_epi32(corr[g]), lo1 = _mm512_setzero_si512();
        for (const int64_t b_end = b + s.bpg; b < b_end; b++) {
            for (int i = 0; i < 512; i += 64) _mm_prefetch(ahead + b * 512 + i, _MM_HINT_T1);
            const uint8_t* wb = P.w + b * 512;
            const int8_t* xb = xq + b * 64;
            __m512i hi0 = _mm512_setzero_si512(), hi1 = hi0;
#pragma GCC unroll 4
            for (int j = 0; j < 8; j += 2) {
                const __m512i v0 = _mm512_loadu_si512(wb + j * 64), v1 = _mm512_loadu_si512(wb + j * 64 + 64);
                lo0 = dpbusd_bcst(lo0, _mm512_and_si512(v0, m4), xb + 4 * j);
                hi0 = dpbusd_bcst(hi0, _mm512_and_si512(v0, m4h), xb + 32 + 4 * j);
                lo1 = dpbusd_bcst(lo1, _mm512_and_si512(v1, m4), xb + 4 * j + 4);
                hi1 = dpbusd_bcst(hi1, _mm512_and_si512(v1, m4h), xb + 36 + 4 * j);
            }
            lo0 = _mm512_add_epi32(lo0, _mm512_srai_epi32(_mm512_add_epi32(hi0, hi1), 4));
        }
        acc = _mm512_fmadd_ps(_mm512_loadu_ps(P.ps + g * 16), _mm512_cvtepi32_ps(_mm512_add_epi32(lo0, lo1)), acc);
    }
    const __mmask16 mask = (__mmask16)P.mask;
    const __m512 bv = bias ? _mm512_maskz_loadu_ps(mask, bias + P.o) : _mm512_setzero_ps();
    _mm512_mask_storeu_ps(y + P.o, mask, _mm512_fmadd_ps(acc, _mm512_set1_ps(sx), bv));
}

static void q4_decode_panels(const uint8_t* w, const float* scales, const QShape& s, const int8_t* xq,
                             const int32_t* corr, float sx, const float* bias, float* y, int64_t o_begin,
                             int64_t o_end) {
    for (int64_t p = o_begin / 16; p * 16 < o_end; p++)
        q4_decode_panel(q4_panel(w, scales, s, p, o_begin, o_end), s, xq, corr, sx, bias, y);
}

#else  // AVX2: no VNNI; byte products with vpmaddubsw

constexpr int R_Q = 2, TT_Q = 2;

// 32 q8 weights of a 64-input block as signed bytes (half 0: inputs 0-31, half 1: 32-63).
static inline __m256i load_whalf(const uint8_t* row, int64_t block, int half, int64_t n_in) {
    const int64_t k = block * 64 + half * 32;
    if (n_in - k >= 32) return _mm256_loadu_si256((const __m256i*)(row + k));
    alignas(32) uint8_t buf[32] = {0};
    if (n_in > k) std::memcpy(buf, row + k, n_in - k);
    return _mm256_load_si256((const __m256i*)buf);
}

// Integer dot of 32 q8 weight bytes with 32 activation bytes into 8 int32 lanes: |x| times
// w * sign(x) (pairs at most 2 * 127 * 127: no saturation).
static inline __m256i dot32(__m256i w, __m256i x) {
    return _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_abs_epi8(x), _mm256_sign_epi8(w, x)), _mm256_set1_epi16(1));
}

// The sums of the lanes of v[0..3] (exact): three vphaddd and one 128-bit add.
static inline __m128i hsum4_epi32(const __m256i* v) {
    const __m256i h = _mm256_hadd_epi32(_mm256_hadd_epi32(v[0], v[1]), _mm256_hadd_epi32(v[2], v[3]));
    return _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1));
}

// q8, the R x TT tile (R * TT <= 4): per group, exact integer sums, then the contract's FMA
// for the tile's 4 (token, row) pairs in one vector.
template <int R, int TT>
static inline void quant_tile(const uint8_t* w, const float* sw, const QShape& s, const int8_t* xq,
                              const int32_t* corr, const float* sx, const float* bias, float* y, int64_t ldy) {
    static_assert(R * TT <= 4, "one vector of (token, row) pairs");
    __m128 acc = _mm_setzero_ps();  // lane t * R + r
    int64_t block = 0;
    for (int64_t g = 0; g < s.n_groups; g++) {
        __m256i iacc[4];
        for (int i = 0; i < 4; i++) iacc[i] = _mm256_setzero_si256();
        for (int64_t b = 0; b < s.bpg; b++, block++) {
            for (int half = 0; half < 2; half++) {
                __m256i wv[R];
                for (int r = 0; r < R; r++) wv[r] = load_whalf(w + r * s.w_stride, block, half, s.n_in);
                for (int t = 0; t < TT; t++) {
                    const __m256i xv = _mm256_loadu_si256((const __m256i*)(xq + t * s.xs + block * 64 + half * 32));
                    for (int r = 0; r < R; r++) iacc[t * R + r] = _mm256_add_epi32(iacc[t * R + r], dot32(wv[r], xv));
                }
            }
        }
        // lane i = t * R + r (built in registers: scalar stores then a vector load would
        // stall on store forwarding once per group)
        auto c = [&](int i) { return i < TT * R ? corr[(i / R) * s.n_groups + g] : 0; };
        auto sc = [&](int i) { return i < TT * R ? sw[(i % R) * s.n_groups + g] : 0.0f; };
        const __m128i isum = _mm_add_epi32(hsum4_epi32(iacc), _mm_setr_epi32(c(0), c(1), c(2), c(3)));
        acc = _mm_fmadd_ps(_mm_setr_ps(sc(0), sc(1), sc(2), sc(3)), _mm_cvtepi32_ps(isum), acc);
    }
    alignas(16) float a4[4];
    _mm_store_ps(a4, acc);
    for (int t = 0; t < TT; t++)
        for (int r = 0; r < R; r++) y[t * ldy + r] = std::fma(a4[t * R + r], sx[t], bias ? bias[r] : 0.0f);
}

template <int R>
static inline void quant_row_panel(const uint8_t* w, const float* sw, const QShape& s, const int8_t* xq,
                                   const int32_t* corr, const float* sx, int64_t T, const float* bias, float* y) {
    const int64_t ldy = s.n_out;
    int64_t t = 0;
    for (; t + TT_Q <= T; t += TT_Q)
        quant_tile<R, TT_Q>(w, sw, s, xq + t * s.xs, corr + t * s.n_groups, sx + t, bias, y + t * ldy, ldy);
    if (T - t == 1) quant_tile<R, 1>(w, sw, s, xq + t * s.xs, corr + t * s.n_groups, sx + t, bias, y + t * ldy, ldy);
}

// q4, one panel, TT tokens: 8 rows at a time (half h of each stored vector), one row per
// lane, so no horizontal sums. Each half vector (4 bytes of each of 8 rows) is unpacked
// once for the TT tokens; vpmaddubsw of nibbles and activation bytes gives pairs of at most
// 2 * 15 * 127 = 3810, so 8 of them (4 vectors' low and high nibbles) add up exactly in
// 16 bits before one vpmaddwd widens them.
template <int TT>
static void q4_panel_tile(const Q4Panel& P, const QShape& s, const int8_t* xq, const int32_t* corr, const float* sx,
                          const float* bias, float* y) {
    const __m256i m4 = _mm256_set1_epi8(0x0f), ones = _mm256_set1_epi16(1);
    const __m256i lane_bits = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
    for (int h = 0; h < 2; h++) {
        const __m256i hbits = _mm256_set1_epi32((int)((P.mask >> (8 * h)) & 0xff));
        const __m256i lanes = _mm256_cmpeq_epi32(_mm256_and_si256(hbits, lane_bits), lane_bits);
        if (_mm256_testz_si256(lanes, lanes)) continue;
        __m256 acc[TT];
        for (int t = 0; t < TT; t++) acc[t] = _mm256_setzero_ps();
        for (int64_t g = 0, b = 0; g < s.n_groups; g++) {
            __m256i iacc[TT];
            for (int t = 0; t < TT; t++) iacc[t] = _mm256_set1_epi32(corr[t * s.n_groups + g]);
            for (const int64_t b_end = b + s.bpg; b < b_end; b++) {
                const uint8_t* wb = P.w + b * 512 + h * 32;
                const int8_t* xb = xq + b * 64;
                for (int j0 = 0; j0 < 8; j0 += 4) {
                    __m256i s16[TT];
                    for (int t = 0; t < TT; t++) s16[t] = _mm256_setzero_si256();
                    for (int j = j0; j < j0 + 4; j++) {
                        const __m256i v = _mm256_loadu_si256((const __m256i*)(wb + j * 64));
                        const __m256i lo = _mm256_and_si256(v, m4), hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), m4);
                        for (int t = 0; t < TT; t++) {
                            int32_t xl, xh;
                            std::memcpy(&xl, xb + t * s.xs + 4 * j, 4);
                            std::memcpy(&xh, xb + t * s.xs + 32 + 4 * j, 4);
                            s16[t] = _mm256_add_epi16(s16[t], _mm256_maddubs_epi16(lo, _mm256_set1_epi32(xl)));
                            s16[t] = _mm256_add_epi16(s16[t], _mm256_maddubs_epi16(hi, _mm256_set1_epi32(xh)));
                        }
                    }
                    for (int t = 0; t < TT; t++) iacc[t] = _mm256_add_epi32(iacc[t], _mm256_madd_epi16(s16[t], ones));
                }
            }
            const __m256 sc = _mm256_loadu_ps(P.ps + g * 16 + 8 * h);
            for (int t = 0; t < TT; t++) acc[t] = _mm256_fmadd_ps(sc, _mm256_cvtepi32_ps(iacc[t]), acc[t]);
        }
        const int64_t o = P.o + 8 * h;
        const __m256 bv = bias ? _mm256_maskload_ps(bias + o, lanes) : _mm256_setzero_ps();
        for (int t = 0; t < TT; t++)
            _mm256_maskstore_ps(y + t * s.n_out + o, lanes, _mm256_fmadd_ps(acc[t], _mm256_set1_ps(sx[t]), bv));
    }
}

static void q4_panels(const uint8_t* w, const float* scales, const QShape& s, const int8_t* xq, const int32_t* corr,
                      const float* sx, int64_t T, const float* bias, float* y, int64_t o_begin, int64_t o_end) {
    for (int64_t p = o_begin / 16; p * 16 < o_end; p++) {
        const Q4Panel P = q4_panel(w, scales, s, p, o_begin, o_end);
        int64_t t = 0;
        for (; t + TT_Q <= T; t += TT_Q)
            q4_panel_tile<TT_Q>(P, s, xq + t * s.xs, corr + t * s.n_groups, sx + t, bias, y + t * s.n_out);
        if (T - t == 1) q4_panel_tile<1>(P, s, xq + t * s.xs, corr + t * s.n_groups, sx + t, bias, y + t * s.n_out);
    }
}

// generic::quantize_row, zero padding to xs, and per group the correction of q4's offset:
// -8 * (sum of the group's activations); q8 multiplies signed bytes, no correction.
static float quantize_row(const float* x, const QShape& s, int offset, int8_t* xq, int32_t* corr) {
    const float sx = generic::quantize_row(x, s.n_in, xq);
    std::memset(xq + s.n_in, 0, s.xs - s.n_in);
    for (int64_t g = 0; g < s.n_groups; g++) {
        int32_t sum = 0;
        if (offset == 8)
            for (int64_t k = g * s.bpg * 64; k < (g + 1) * s.bpg * 64; k++) sum += xq[k];
        corr[g] = -8 * sum;
    }
    return sx;
}
#endif  // __AVX512F__

static QShape quant_shape(const Matrix& m, bool q4) {
    QShape s;
    s.n_in = m.n_in;
    s.n_out = m.n_out;
    s.n_groups = m.n_in / m.group;
    s.bpg = (m.group + 63) / 64;
    s.nb = (m.n_in + 63) / 64;
    s.xs = round_up(m.n_in, 128);
    s.w_stride = q4 ? s.nb * 32 * kQ4Panel : m.n_in;
    return s;
}

// Prepared activations, row by row: xq [T, xs] int8 | corr [T, n_groups] int32 | sx [T] f32.
struct QPrepared {
    int8_t* xq;
    int32_t* corr;
    float* sx;
};

static size_t quant_prepared_bytes(const QShape& s, int64_t T) {
    return round_up(T * s.xs, 64) + round_up(T * s.n_groups * 4, 64) + round_up(T * 4, 64);
}

static QPrepared quant_prepared(const QShape& s, int64_t T, void* prep) {
    uint8_t* p = (uint8_t*)prep;
    const int64_t xq_bytes = round_up(T * s.xs, 64), corr_bytes = round_up(T * s.n_groups * 4, 64);
    return {(int8_t*)p, (int32_t*)(p + xq_bytes), (float*)(p + xq_bytes + corr_bytes)};
}

static void quantize_rows(const Matrix& m, const float* x, int64_t T, int64_t r_begin, int64_t r_end, void* prep) {
    const bool q4 = m.dtype == DType::Q4;
    const QShape s = quant_shape(m, q4);
    const QPrepared a = quant_prepared(s, T, prep);
    for (int64_t t = r_begin; t < r_end; t++)
        a.sx[t] = quantize_row(x + t * s.n_in, s, q4 ? 8 : 128, a.xq + t * s.xs, a.corr + t * s.n_groups);
}

template <bool Q4>
void quant_linear_prepared(const Matrix& m, const float* bias, const void* prep, int64_t T, float* y,
                           int64_t o_begin, int64_t o_end) {
    const QShape s = quant_shape(m, Q4);
    const QPrepared a = quant_prepared(s, T, const_cast<void*>(prep));
    const uint8_t* w = (const uint8_t*)m.data;
    const int64_t tb = token_block(s.xs + s.n_groups * 4, TT_Q);
#if defined(__AVX512F__)
    // this thread's scratch: packed panels | panel scales
    const size_t pack_bytes = T > 1 ? (size_t)NP_Q * s.nb * 16 * 64 : 0;
    const size_t ps_bytes = (size_t)round_up(s.n_groups * NP_Q * 16 * 4, 64);
    uint8_t* scratch = (uint8_t*)thread_scratch(0, pack_bytes + ps_bytes);
    if (!scratch) throw std::bad_alloc();
    __m512i* pw = (__m512i*)scratch;
    float* ps = (float*)(scratch + pack_bytes);
#endif
    for (int64_t t0 = 0; t0 < T; t0 += tb) {
        const int64_t nt = T - t0 < tb ? T - t0 : tb;
        const int8_t* xq0 = a.xq + t0 * s.xs;
        const int32_t* c0 = a.corr + t0 * s.n_groups;
        const float* sx0 = a.sx + t0;
        float* y0 = y + t0 * s.n_out;
#if defined(__AVX512F__)
        if (!Q4 && nt <= Q8_UNPACKED_MAX_T)
            q8_rows(w, m.scales, s, xq0, c0, sx0, nt, bias, y0, o_begin, o_end, ps);
        else if (!Q4)
            packed_rows_q8(w, m.scales, s, xq0, c0, sx0, nt, bias, y0, o_begin, o_end, pw, ps);
        else if (nt == 1)
            q4_decode_panels(w, m.scales, s, xq0, c0, sx0[0], bias, y0, o_begin, o_end);
        else if (nt <= Q4_UNPACKED_MAX_T)
            q4_panels_few(w, m.scales, s, xq0, c0, sx0, nt, bias, y0, o_begin, o_end);
        else
            packed_panels_q4(w, m.scales, s, xq0, c0, sx0, nt, bias, y0, o_begin, o_end, pw, ps);
#else
        if (Q4) {
            q4_panels(w, m.scales, s, xq0, c0, sx0, nt, bias, y0, o_begin, o_end);
            continue;
        }
        int64_t o = o_begin;
        for (; o + R_Q <= o_end; o += R_Q)
            quant_row_panel<R_Q>(w + o * s.w_stride, m.scales + o * s.n_groups, s, xq0, c0, sx0, nt,
                                     bias ? bias + o : nullptr, y0 + o);
        for (; o < o_end; o++)
            quant_row_panel<1>(w + o * s.w_stride, m.scales + o * s.n_groups, s, xq0, c0, sx0, nt,
                                   bias ? bias + o : nullptr, y0 + o);
#endif
    }
}

}  // namespace

size_t quant_prepared_bytes(const Matrix& m, int64_t T) {
    generic::check_quant(m);
    return quant_prepared_bytes(quant_shape(m, m.dtype == DType::Q4), T);
}

void quant_prepare(const Matrix& m, const float* x, int64_t T, int64_t r_begin, int64_t r_end, void* prep) {
    generic::check_quant(m);
    quantize_rows(m, x, T, r_begin, r_end, prep);
}

void quant_linear_prepared(const Matrix& m, const float* bias, const void* prep, int64_t T, float* y,
                           int64_t o_begin, int64_t o_end) {
    generic::check_quant(m);
    if (m.dtype == DType::Q8) quant_linear_prepared<false>(m, bias, prep, T, y, o_begin, o_end);
    else if (m.dtype == DType::Q4) quant_linear_prepared<true>(m, bias, prep, T, y, o_begin, o_end);
    else throw std::invalid_argument("linear_quant: not a quantized weight dtype");
}

void linear_quant(const Matrix& m, const float* bias, const float* x, int64_t T, float* y, int64_t o_begin,
                  int64_t o_end) {
    // this thread prepares all the activations itself, in its own scratch
    void* prep = thread_scratch(1, quant_prepared_bytes(m, T));
    if (!prep) throw std::bad_alloc();
    quant_prepare(m, x, T, 0, T, prep);
    quant_linear_prepared(m, bias, prep, T, y, o_begin, o_end);
}

}  // namespace simd
}  // namespace PYGPT_KERNEL_NS
}  // namespace pygpt

#endif  // __AVX2__
