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
//     (a 16 x 16 dword transpose per 64-input block; q4 nibbles unpacked there, once);
//     vpdpbusd against 4 activation bytes broadcast then gives 16 outputs' partial sums in
//     the 16 lanes: no horizontal reduction at all, and the per-group scaling is one FMA
//     per 16 outputs (q8_rows / q4_rows below cover smaller batches, where repacking
//     cost more than it saved).
//   AVX-512 q8, T <= 12: rows read as stored, one row after another (one memory stream:
//     reading 2, 4 or 16 rows interleaved was 1.3-4x slower from DRAM), lanes over the
//     inputs, each weight vector used for up to 6 tokens; the 16 rows' integer lanes are
//     reduced together by a transpose-add tree into one vector of 16 outputs.
//   AVX-512 q4, T = 1: 16 rows per step of two blocks (one 64-byte load per row), reduced
//     by a tree into per-block sums; T = 2..8: the panel transposed block by block and used
//     from registers.
//   AVX2: per (token, row, group) integer lanes; four groups' sums reduced together by
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
    int64_t w_stride;  // bytes per stored weight row
};

#if defined(__AVX512F__)
// ---------------------------------------------------------------------------------------
// AVX-512 (VNNI): weights as unsigned bytes (q8 w + 128, q4 w + 8), activations signed;
// the offset times the group's activation sum is subtracted exactly (corr).

// One block of 64 weights of row w as unsigned bytes, in input order.
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

// One q4 block (32 bytes per row at w + r * stride) of 16 rows repacked like pack_panel:
// the stored bytes are transposed first (16 x 8 dwords: half the work of transposing the
// unpacked 16 x 16), then dword s of the transposed block gives the steps of inputs
// 4s..4s+3 (low nibbles) and 32+4s..32+4s+3 (high nibbles).
// The 32 stored bytes of one q4 block of 16 rows (w + i * stride, rows past `rows` zero),
// transposed as dwords: r[4i + j], 128-bit chunk 2h + c, holds rows 8h + 4i .. 8h + 4i + 3,
// dword 4c + j.
// v[i] = the 32 bytes of row (or slot) i | those of i + 8, transposed as dwords into r (the
// layout transpose_q4_block describes).
static inline void transpose_q4_dwords(const __m512i* v, __m512i* r) {
    __m512i t[8];
    for (int i = 0; i < 4; i++) {
        t[2 * i] = _mm512_unpacklo_epi32(v[2 * i], v[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_epi32(v[2 * i], v[2 * i + 1]);
    }
    for (int i = 0; i < 2; i++) {
        r[4 * i] = _mm512_unpacklo_epi64(t[4 * i], t[4 * i + 2]);
        r[4 * i + 1] = _mm512_unpackhi_epi64(t[4 * i], t[4 * i + 2]);
        r[4 * i + 2] = _mm512_unpacklo_epi64(t[4 * i + 1], t[4 * i + 3]);
        r[4 * i + 3] = _mm512_unpackhi_epi64(t[4 * i + 1], t[4 * i + 3]);
    }
}

static inline void transpose_q4_block(const uint8_t* w, int64_t stride, int rows, __m512i* r) {
    __m512i v[8];  // v[i] = row i | row i + 8
    for (int i = 0; i < 8; i++) {
        const __m256i a = i < rows ? _mm256_loadu_si256((const __m256i*)(w + i * stride)) : _mm256_setzero_si256();
        const __m256i b = i + 8 < rows ? _mm256_loadu_si256((const __m256i*)(w + (i + 8) * stride)) : _mm256_setzero_si256();
        v[i] = _mm512_inserti64x4(_mm512_castsi256_si512(a), b, 1);
    }
    transpose_q4_dwords(v, r);
}

static inline void pack_block_q4(const uint8_t* w, int64_t stride, int rows, __m512i* out) {
    __m512i r[8];
    transpose_q4_block(w, stride, rows, r);
    const __m512i c0 = _mm512_setr_epi64(0, 1, 8, 9, 4, 5, 12, 13), c1 = _mm512_setr_epi64(2, 3, 10, 11, 6, 7, 14, 15);
    const __m512i m4 = _mm512_set1_epi8(0x0f);
    for (int j = 0; j < 4; j++)
        for (int c = 0; c < 2; c++) {
            const int sd = 4 * c + j;  // lane r of u = dword sd of row r
            const __m512i u = _mm512_permutex2var_epi64(r[j], c ? c1 : c0, r[4 + j]);
            _mm512_store_si512(out + sd, _mm512_and_si512(u, m4));
            _mm512_store_si512(out + 8 + sd, _mm512_and_si512(_mm512_srli_epi16(u, 4), m4));
        }
}

// Rows [o, o + rows) (rows <= 16) repacked: out[b * 16 + s] lane r = weights 64b + 4s ..
// 64b + 4s + 3 of row o + r (unsigned bytes); missing rows are zero. ps[g * stride + r] =
// scale of row o + r, group g.
template <bool Q4>
static void pack_panel(const uint8_t* w, const float* scales, int rows, const QShape& s, __m512i* out, float* ps,
                       int64_t ps_stride) {
    // the 16 rows' blocks are 16 short streams the hardware prefetcher does not follow from
    // DRAM: prefetch the panel NP_Q panels ahead (the next call's) into L2, spread over the blocks
    const char* ahead = (const char*)w + NP_Q * 16 * s.w_stride;
    const int64_t step = 16 * s.w_stride / s.nb;  // bytes of that panel per block
    for (int64_t b = 0; b < s.nb; b++) {
        for (int64_t i = 0; i < step; i += 64) _mm_prefetch(ahead + b * step + i, _MM_HINT_T1);
        if (Q4) {
            pack_block_q4(w + b * 32, s.w_stride, rows, out + b * 16);
            continue;
        }
        __m512i v[16];
        for (int r = 0; r < 16; r++)
            v[r] = r < rows ? load_wblock<Q4>(w + r * s.w_stride, b, s.n_in) : _mm512_setzero_si512();
        transpose16(v);
        for (int j = 0; j < 16; j++) _mm512_store_si512(out + b * 16 + j, v[j]);
    }
    transpose_scales(scales, rows, s.n_groups, ps, ps_stride);
}

// NP panels x TT tokens: acc[t][p] over all groups (the contract's float sequence, 16
// outputs per vector), then y = fma(acc, sx, bias).
template <int NP, int TT>
static inline void packed_tile(const __m512i* pw, int64_t pstride, const float* ps, int64_t ps_stride,
                               const QShape& s, const int8_t* xq, const int32_t* corr, const float* sx,
                               const __m512* bias, float* y, int64_t ldy, __mmask16 last_mask) {
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
            if (p == NP - 1) _mm512_mask_storeu_ps(y + t * ldy + p * 16, last_mask, v);
            else _mm512_storeu_ps(y + t * ldy + p * 16, v);
        }
}

template <int NP>
static void packed_tokens(const __m512i* pw, int64_t pstride, const float* ps, int64_t ps_stride, const QShape& s,
                          const int8_t* xq, const int32_t* corr, const float* sx, int64_t T, const __m512* bias,
                          float* y, __mmask16 last_mask) {
    const int64_t ldy = s.n_out, ng = s.n_groups;
    int64_t t = 0;
    for (; t + TT_Q <= T; t += TT_Q)
        packed_tile<NP, TT_Q>(pw, pstride, ps, ps_stride, s, xq + t * s.xs, corr + t * ng, sx + t, bias, y + t * ldy,
                              ldy, last_mask);
    const int8_t* xt = xq + t * s.xs;
    const int32_t* ct = corr + t * ng;
    float* yt = y + t * ldy;
    switch (T - t) {
        case 0: break;
        case 1: packed_tile<NP, 1>(pw, pstride, ps, ps_stride, s, xt, ct, sx + t, bias, yt, ldy, last_mask); break;
        case 2: packed_tile<NP, 2>(pw, pstride, ps, ps_stride, s, xt, ct, sx + t, bias, yt, ldy, last_mask); break;
        case 3: packed_tile<NP, 3>(pw, pstride, ps, ps_stride, s, xt, ct, sx + t, bias, yt, ldy, last_mask); break;
        case 4: packed_tile<NP, 4>(pw, pstride, ps, ps_stride, s, xt, ct, sx + t, bias, yt, ldy, last_mask); break;
        case 5: packed_tile<NP, 5>(pw, pstride, ps, ps_stride, s, xt, ct, sx + t, bias, yt, ldy, last_mask); break;
    }
}

// Rows [o_begin, o_end) for T tokens: NP_Q panels at a time, each repacked once.
template <bool Q4>
static void packed_rows(const uint8_t* w, const float* scales, const QShape& s, const int8_t* xq, const int32_t* corr,
                        const float* sx, int64_t T, const float* bias, float* y, int64_t o_begin, int64_t o_end,
                        __m512i* pw, float* ps) {
    const int64_t pstride = s.nb * 16, ps_stride = NP_Q * 16;
    for (int64_t o = o_begin; o < o_end; o += NP_Q * 16) {
        const int64_t rows = o_end - o < NP_Q * 16 ? o_end - o : NP_Q * 16;
        const int np = (int)((rows + 15) / 16);
        __m512 bv[NP_Q];
        for (int p = 0; p < np; p++) {
            const int64_t r = rows - p * 16 < 16 ? rows - p * 16 : 16;
            pack_panel<Q4>(w + (o + p * 16) * s.w_stride, scales + (o + p * 16) * s.n_groups, (int)r, s,
                           pw + p * pstride, ps + p * 16, ps_stride);
            bv[p] = bias ? _mm512_maskz_loadu_ps(tail_mask16(r), bias + o + p * 16) : _mm512_setzero_ps();
        }
        const int64_t last_rows = rows - (np - 1) * 16;
        const __mmask16 last_mask = last_rows >= 16 ? (__mmask16)0xffff : tail_mask16(last_rows);
        if (np == 2) packed_tokens<2>(pw, pstride, ps, ps_stride, s, xq, corr, sx, T, bv, y + o, last_mask);
        else packed_tokens<1>(pw, pstride, ps, ps_stride, s, xq, corr, sx, T, bv, y + o, last_mask);
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

// z[r]: lanes 0-7 partial sums of block A, lanes 8-15 of block B, of row r. Out: a lane r =
// block A sum of row r, b lane r = block B sum (exact).
static inline void reduce16_pairs_epi32(const __m512i* z, __m512i* a_out, __m512i* b_out) {
    __m512i s1[8], s2[4], s3[2];
    for (int i = 0; i < 8; i++)  // (l, l+4) within each half
        s1[i] = _mm512_add_epi32(_mm512_shuffle_i32x4(z[2 * i], z[2 * i + 1], 0x88),
                                 _mm512_shuffle_i32x4(z[2 * i], z[2 * i + 1], 0xDD));
    for (int i = 0; i < 4; i++)  // (l, l+2)
        s2[i] = _mm512_add_epi32(_mm512_unpacklo_epi64(s1[2 * i], s1[2 * i + 1]),
                                 _mm512_unpackhi_epi64(s1[2 * i], s1[2 * i + 1]));
    for (int i = 0; i < 2; i++) {  // (l, l+1)
        const __m512 a = _mm512_castsi512_ps(s2[2 * i]), b = _mm512_castsi512_ps(s2[2 * i + 1]);
        s3[i] = add_ps_as_epi32(_mm512_shuffle_ps(a, b, 0x88), _mm512_shuffle_ps(a, b, 0xDD));
    }
    // where each (row, block) ended up (worked out by following the lanes through the tree)
    const __m512i ia = _mm512_setr_epi32(0, 8, 1, 9, 2, 10, 3, 11, 16, 24, 17, 25, 18, 26, 19, 27);
    const __m512i ib = _mm512_setr_epi32(4, 12, 5, 13, 6, 14, 7, 15, 20, 28, 21, 29, 22, 30, 23, 31);
    *a_out = _mm512_permutex2var_epi32(s3[0], ia, s3[1]);
    *b_out = _mm512_permutex2var_epi32(s3[0], ib, s3[1]);
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
                        const __m512i wv = load_wblock<false>(row, b + c, s.n_in);
#pragma GCC unroll 8
                        for (int t = 0; t < TT; t++)
                            z[t][c] = _mm512_dpbusd_epi32(z[t][c], wv, _mm512_loadu_si512(xq + t * s.xs + (b + c) * 64));
                    }
                for (; b < b0 + s.bpg; b++) {
                    const __m512i wv = load_wblock<false>(row, b, s.n_in);
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

// q4, small batches: 16 rows transposed block by block as in pack_block_q4, but used at
// once from registers for the TT tokens instead of being stored (for a few tokens, storing
// and reloading the panel cost more than the products: a two-block buffer in L1 was 1.0-1.25x
// slower too). Per token, C chains of integer accumulators (C = 2 for few tokens: the
// vpdpbusd latency), summed at the group's end.
//
// The stored bytes of one q4 block of 16 rows (rp[i] + off, 32 bytes each; no per-row tests:
// rows past the panel's end repeat a real one) transposed as dwords like transpose_q4_block:
// r[4i + j], 128-bit chunk 2h + c, holds the rows of slots 8h + 4i .. 8h + 4i + 3, dword 4c + j.
static inline void transpose_q4_rows(const uint8_t* const* rp, int64_t off, __m512i* r) {
    __m512i v[8];  // v[i] = slot i | slot i + 8
    for (int i = 0; i < 8; i++)
        v[i] = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256((const __m256i*)(rp[i] + off))),
                                  _mm256_loadu_si256((const __m256i*)(rp[i + 8] + off)), 1);
    transpose_q4_dwords(v, r);
}

// Slot i of transpose_q4_rows holding row q4_slot_row(i): with the chunks of r[j] and r[4 + j]
// picked by vshufi32x4 (chunks 0, 2 of each, or 1, 3), lane L of the result then comes from
// slot L for L in 0..3 and 12..15 but from slot L + 4 / L - 4 for L in 4..7 / 8..11; loading
// rows 4..7 and 8..11 swapped puts row L in lane L. (vpermt2q, which keeps the slot order,
// cost 6-9% more time per block: it competes with vpdpbusd for the vector pipes.)
static inline int q4_slot_row(int i) { return i >= 4 && i < 12 ? i ^ 12 : i; }

// The products of one block of 16 rows (transposed by transpose_q4_rows) with TT tokens'
// activations (xb + t * xs), added to iacc: per dword sd, one vector of the 16 rows' low
// nibbles (inputs 4sd..4sd+3) and one of their high nibbles (32+4sd..), each used at once
// for the TT tokens against their 4 activation bytes broadcast.
template <int TT, int C>
static inline void q4_block_products(const __m512i* r, const int8_t* xb, int64_t xs, __m512i (&iacc)[TT][C]) {
    const __m512i m4 = _mm512_set1_epi8(0x0f);
#pragma GCC unroll 4
    for (int j = 0; j < 4; j++)
#pragma GCC unroll 2
        for (int c = 0; c < 2; c++) {
            const int sd = 4 * c + j;  // lane r of u = dword sd of row r's block (q4_slot_row)
            const __m512i u = c ? _mm512_shuffle_i32x4(r[j], r[4 + j], 0xDD) : _mm512_shuffle_i32x4(r[j], r[4 + j], 0x88);
            const __m512i lo = _mm512_and_si512(u, m4), hi = _mm512_and_si512(_mm512_srli_epi16(u, 4), m4);
            for (int t = 0; t < TT; t++) iacc[t][0] = dpbusd_bcst(iacc[t][0], lo, xb + t * xs + 4 * sd);
            for (int t = 0; t < TT; t++) iacc[t][C - 1] = dpbusd_bcst(iacc[t][C - 1], hi, xb + t * xs + 32 + 4 * sd);
        }
}

template <int TT>
static void q4_rows_tile(const uint8_t* w, const float* ps, int rows, const QShape& s, const int8_t* xq,
                         const int32_t* corr, const float* sx, const float* bias, float* y) {
    constexpr int C = TT <= 4 ? 2 : 1;
    const __mmask16 mask = tail_mask16(rows);
    __m512 facc[TT];
    for (int t = 0; t < TT; t++) facc[t] = _mm512_setzero_ps();
    const char* ahead = (const char*)w + 32 * s.w_stride;  // as in pack_panel: two panels ahead, into L2
    const uint8_t* rp[16];  // rows past `rows` repeat row 0: their lanes are not stored
    for (int i = 0; i < 16; i++) {
        const int r = q4_slot_row(i);
        rp[i] = w + (r < rows ? r : 0) * s.w_stride;
    }
    // PIPE: block b + 1 transposed before block b's products (its loads and shuffles then
    // overlap them instead of waiting behind them): TT = 2..6 5-10% faster; for more tokens
    // the 8 extra live vectors cost more than that saves (TT = 8: 2-6% slower)
    constexpr bool PIPE = TT <= 6;
    __m512i rc[8];
    if (PIPE) transpose_q4_rows(rp, 0, rc);
    for (int64_t g = 0, b = 0; g < s.n_groups; g++) {
        __m512i iacc[TT][C];
        for (int t = 0; t < TT; t++) {
            iacc[t][0] = _mm512_set1_epi32(corr[t * s.n_groups + g]);
            if (C == 2) iacc[t][C - 1] = _mm512_setzero_si512();
        }
        for (const int64_t b_end = b + s.bpg; b < b_end; b++) {
            for (int i = 0; i < 512; i += 64) _mm_prefetch(ahead + b * 512 + i, _MM_HINT_T1);  // 16 * w_stride / nb
            if (PIPE) {
                __m512i rn[8];
                transpose_q4_rows(rp, (b + 1 < s.nb ? b + 1 : b) * 32, rn);
                q4_block_products<TT, C>(rc, xq + b * 64, s.xs, iacc);
                for (int k = 0; k < 8; k++) rc[k] = rn[k];
            } else {
                transpose_q4_rows(rp, b * 32, rc);
                q4_block_products<TT, C>(rc, xq + b * 64, s.xs, iacc);
            }
        }
        const __m512 sc = _mm512_loadu_ps(ps + g * 16);
        for (int t = 0; t < TT; t++) {
            const __m512i isum = C == 2 ? _mm512_add_epi32(iacc[t][0], iacc[t][C - 1]) : iacc[t][0];
            facc[t] = _mm512_fmadd_ps(sc, _mm512_cvtepi32_ps(isum), facc[t]);
        }
    }
    const __m512 bv = bias ? _mm512_maskz_loadu_ps(mask, bias) : _mm512_setzero_ps();
    for (int t = 0; t < TT; t++)
        _mm512_mask_storeu_ps(y + t * s.n_out, mask, _mm512_fmadd_ps(facc[t], _mm512_set1_ps(sx[t]), bv));
}

// Up to this many tokens q4 uses q4_rows_tile (one tile) rather than stored panels.
constexpr int64_t Q4_UNPACKED_MAX_T = 8;  // T = 5..8: 1.2-1.6x the stored panels, in and out of cache
static void q4_rows(const uint8_t* w, const float* scales, const QShape& s, const int8_t* xq, const int32_t* corr,
                    const float* sx, int64_t T, const float* bias, float* y, int64_t o_begin, int64_t o_end, float* ps) {
    for (int64_t o = o_begin; o < o_end; o += 16) {
        const int rows = o_end - o < 16 ? (int)(o_end - o) : 16;
        const uint8_t* wo = w + o * s.w_stride;
        const float* bo = bias ? bias + o : nullptr;
        float* yo = y + o;
        stream_panel_scales(scales + o * s.n_groups, rows, s.n_groups, ps);
        switch (T) {
            case 2: q4_rows_tile<2>(wo, ps, rows, s, xq, corr, sx, bo, yo); break;
            case 3: q4_rows_tile<3>(wo, ps, rows, s, xq, corr, sx, bo, yo); break;
            case 4: q4_rows_tile<4>(wo, ps, rows, s, xq, corr, sx, bo, yo); break;
            case 5: q4_rows_tile<5>(wo, ps, rows, s, xq, corr, sx, bo, yo); break;
            case 6: q4_rows_tile<6>(wo, ps, rows, s, xq, corr, sx, bo, yo); break;
            case 7: q4_rows_tile<7>(wo, ps, rows, s, xq, corr, sx, bo, yo); break;
            case 8: q4_rows_tile<8>(wo, ps, rows, s, xq, corr, sx, bo, yo); break;
            default: throw std::logic_error("q4_rows: 2 to Q4_UNPACKED_MAX_T tokens");
        }
    }
}

// q4, one token, rows [o, o + rows) (rows <= 16): per pair of blocks, one 64-byte load per
// row (the two blocks' low nibbles, then their high nibbles, against activations arranged
// to match), the 16 rows' lane vectors reduced together into block sums, summed per group,
// scaled. (Reading row after row instead, parking the lane vectors, was 1.5x slower in
// cache and no faster from DRAM.)
static void decode_panel_q4(const uint8_t* w, const float* scales, int rows, const QShape& s, const int8_t* xq,
                            const int32_t* corr, float sx, const float* bias, float* y, float* ps) {
    const uint8_t* rp[16];
    for (int r = 0; r < 16; r++) rp[r] = w + (r < rows ? r : 0) * s.w_stride;  // missing rows: lanes not stored
    const __mmask16 mask = tail_mask16(rows);
    stream_panel_scales(scales, rows, s.n_groups, ps);
    // prefetch the panel after next (16 * w_stride contiguous bytes) into L2, spread over this
    // panel's steps: 1.1-1.7x the DRAM throughput of prefetching the next panel into L1
    const char* next = (const char*)w + 32 * s.w_stride;
    const __m512i m4 = _mm512_set1_epi8(0x0f);
    __m512 acc = _mm512_setzero_ps();
    __m512i gs = _mm512_setzero_si512();  // integer sum of group g so far (in_group blocks)
    int64_t g = 0, in_group = 0;
    for (int64_t p = 0; 2 * p < s.nb; p++) {
        const bool two = 2 * p + 1 < s.nb;
        const __m512i x0 = _mm512_loadu_si512(xq + p * 128), x1 = _mm512_loadu_si512(xq + p * 128 + 64);
        const __m512i xlo = _mm512_shuffle_i32x4(x0, x1, 0x44), xhi = _mm512_shuffle_i32x4(x0, x1, 0xEE);
        for (int r = 0; r < 16; r++) _mm_prefetch(next + p * 1024 + r * 64, _MM_HINT_T1);
        __m512i z[16];
        for (int r = 0; r < 16; r++) {
            const __m512i v = two ? _mm512_loadu_si512(rp[r] + p * 64)
                                  : _mm512_zextsi256_si512(_mm256_loadu_si256((const __m256i*)(rp[r] + p * 64)));
            const __m512i lo = _mm512_and_si512(v, m4), hi = _mm512_and_si512(_mm512_srli_epi16(v, 4), m4);
            z[r] = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), lo, xlo), hi, xhi);
        }
        __m512i bs[2];
        reduce16_pairs_epi32(z, &bs[0], &bs[1]);
        for (int h = 0; h < (two ? 2 : 1); h++) {
            gs = _mm512_add_epi32(gs, bs[h]);
            if (++in_group == s.bpg) {
                acc = scale_group(acc, gs, corr[g], ps + g * 16);
                gs = _mm512_setzero_si512();
                in_group = 0;
                g++;
            }
        }
    }
    const __m512 bv = bias ? _mm512_maskz_loadu_ps(mask, bias) : _mm512_setzero_ps();
    _mm512_mask_storeu_ps(y, mask, _mm512_fmadd_ps(acc, _mm512_set1_ps(sx), bv));
}

static void decode_rows_q4(const uint8_t* w, const float* scales, const QShape& s, const int8_t* xq,
                           const int32_t* corr, float sx, const float* bias, float* y, int64_t o_begin, int64_t o_end,
                           float* ps) {
    for (int64_t o = o_begin; o < o_end; o += 16) {
        const int rows = o_end - o < 16 ? (int)(o_end - o) : 16;
        decode_panel_q4(w + o * s.w_stride, scales + o * s.n_groups, rows, s, xq, corr, sx, bias ? bias + o : nullptr,
                        y + o, ps);
    }
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
// most 2 * 15 * 127), the offset removed by the group's correction.
template <bool Q4>
static inline __m256i dot32(__m256i w, __m256i x) {
    const __m256i ones = _mm256_set1_epi16(1);
    if (Q4) return _mm256_madd_epi16(_mm256_maddubs_epi16(w, x), ones);
    return _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_abs_epi8(x), _mm256_sign_epi8(w, x)), ones);
}

// The sums of the lanes of v[0..3] (exact): three vphaddd and one 128-bit add.
static inline __m128i hsum4_epi32(const __m256i* v) {
    const __m256i h = _mm256_hadd_epi32(_mm256_hadd_epi32(v[0], v[1]), _mm256_hadd_epi32(v[2], v[3]));
    return _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1));
}

// The R x TT tile (R * TT <= 4): per group, exact integer sums, then the contract's FMA for
// the tile's 4 (token, row) pairs in one vector.
template <bool Q4, int R, int TT>
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
                for (int r = 0; r < R; r++) wv[r] = load_whalf<Q4>(w + r * s.w_stride, block, half, s.n_in);
                for (int t = 0; t < TT; t++) {
                    const __m256i xv = _mm256_loadu_si256((const __m256i*)(xq + t * s.xs + block * 64 + half * 32));
                    for (int r = 0; r < R; r++)
                        iacc[t * R + r] = _mm256_add_epi32(iacc[t * R + r], dot32<Q4>(wv[r], xv));
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

template <bool Q4, int R>
static inline void quant_row_panel(const uint8_t* w, const float* sw, const QShape& s, const int8_t* xq,
                                   const int32_t* corr, const float* sx, int64_t T, const float* bias, float* y) {
    const int64_t ldy = s.n_out;
    int64_t t = 0;
    for (; t + TT_Q <= T; t += TT_Q)
        quant_tile<Q4, R, TT_Q>(w, sw, s, xq + t * s.xs, corr + t * s.n_groups, sx + t, bias, y + t * ldy, ldy);
    if (T - t == 1) quant_tile<Q4, R, 1>(w, sw, s, xq + t * s.xs, corr + t * s.n_groups, sx + t, bias, y + t * ldy, ldy);
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
    s.w_stride = q4 ? s.nb * 32 : m.n_in;
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
        else if (Q4 && nt >= 2 && nt <= Q4_UNPACKED_MAX_T)
            q4_rows(w, m.scales, s, xq0, c0, sx0, nt, bias, y0, o_begin, o_end, ps);
        else if (nt == 1)
            decode_rows_q4(w, m.scales, s, xq0, c0, sx0[0], bias, y0, o_begin, o_end, ps);
        else
            packed_rows<Q4>(w, m.scales, s, xq0, c0, sx0, nt, bias, y0, o_begin, o_end, pw, ps);
#else
        int64_t o = o_begin;
        for (; o + R_Q <= o_end; o += R_Q)
            quant_row_panel<Q4, R_Q>(w + o * s.w_stride, m.scales + o * s.n_groups, s, xq0, c0, sx0, nt,
                                     bias ? bias + o : nullptr, y0 + o);
        for (; o < o_end; o++)
            quant_row_panel<Q4, 1>(w + o * s.w_stride, m.scales + o * s.n_groups, s, xq0, c0, sx0, nt,
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
