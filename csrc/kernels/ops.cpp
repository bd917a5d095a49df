// Small ops hand-written for AVX-512 and AVX2 (the scalar path uses generic.cpp):
// layer norm, GELU (tanh form), y += x, y += x W (add_product) and one query row of
// causal attention.
// V is this ISA's f32 vector (16 or 8 lanes); the Vec helpers below hide the width.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>

#include "kernels.h"
#include "kernels/generic.h"
#include "kernels/ops.h"
#include "kernels/simd.h"

#if defined(__AVX2__)

namespace pygpt {
namespace PYGPT_KERNEL_NS {
namespace simd {

namespace {

#if defined(__AVX512F__)
using V = __m512;
constexpr int N = 16;
static inline V vload(const float* p) { return _mm512_loadu_ps(p); }
static inline V vload_n(const float* p, int64_t n) { return _mm512_maskz_loadu_ps(tail_mask16(n), p); }
static inline void vstore(float* p, V v) { _mm512_storeu_ps(p, v); }
static inline void vstore_n(float* p, V v, int64_t n) { _mm512_mask_storeu_ps(p, tail_mask16(n), v); }
static inline V vset(float f) { return _mm512_set1_ps(f); }
static inline V vzero() { return _mm512_setzero_ps(); }
static inline V vadd(V a, V b) { return _mm512_add_ps(a, b); }
static inline V vsub(V a, V b) { return _mm512_sub_ps(a, b); }
static inline V vmul(V a, V b) { return _mm512_mul_ps(a, b); }
static inline V vdiv(V a, V b) { return _mm512_div_ps(a, b); }
static inline V vfma(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
static inline V vmax(V a, V b) { return _mm512_max_ps(a, b); }
static inline V vabs(V a) { return _mm512_abs_ps(a); }
static inline V vcopysign(V mag, V sign) {
    const __m512i m = _mm512_set1_epi32(0x80000000);
    return _mm512_castsi512_ps(_mm512_or_si512(_mm512_andnot_si512(m, _mm512_castps_si512(mag)),
                                               _mm512_and_si512(m, _mm512_castps_si512(sign))));
}
static inline float vmax_lanes(V v) { return _mm512_reduce_max_ps(v); }
static inline V vkeep_n(V v, int64_t n) { return _mm512_maskz_mov_ps(tail_mask16(n), v); }
static inline V vload(const uint16_t* p) { return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)p)); }
static inline V vload_n(const uint16_t* p, int64_t n) {
    return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(tail_mask16(n), p));
}
static inline V vload(const int8_t* p) {
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i*)p)));
}
static inline V vload_n(const int8_t* p, int64_t n) {
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(tail_mask16(n), p)));
}
#else
using V = __m256;
constexpr int N = 8;
static inline __m256i mask_n(int64_t n) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32((int)n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}
static inline V vload(const float* p) { return _mm256_loadu_ps(p); }
static inline V vload_n(const float* p, int64_t n) { return _mm256_maskload_ps(p, mask_n(n)); }
static inline V vkeep_n(V v, int64_t n) { return _mm256_and_ps(v, _mm256_castsi256_ps(mask_n(n))); }
static inline V vload(const uint16_t* p) { return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)p)); }
static inline V vload_n(const uint16_t* p, int64_t n) {
    alignas(16) uint16_t buf[8] = {0};
    std::memcpy(buf, p, n * sizeof(uint16_t));
    return _mm256_cvtph_ps(_mm_load_si128((const __m128i*)buf));
}
static inline V vload(const int8_t* p) {
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i*)p)));
}
static inline V vload_n(const int8_t* p, int64_t n) {
    alignas(16) int8_t buf[16] = {0};
    std::memcpy(buf, p, n);
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_load_si128((const __m128i*)buf)));
}
static inline void vstore(float* p, V v) { _mm256_storeu_ps(p, v); }
static inline void vstore_n(float* p, V v, int64_t n) { _mm256_maskstore_ps(p, mask_n(n), v); }
static inline V vset(float f) { return _mm256_set1_ps(f); }
static inline V vzero() { return _mm256_setzero_ps(); }
static inline V vadd(V a, V b) { return _mm256_add_ps(a, b); }
static inline V vsub(V a, V b) { return _mm256_sub_ps(a, b); }
static inline V vmul(V a, V b) { return _mm256_mul_ps(a, b); }
static inline V vdiv(V a, V b) { return _mm256_div_ps(a, b); }
static inline V vfma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
static inline V vmax(V a, V b) { return _mm256_max_ps(a, b); }
static inline V vabs(V a) { return _mm256_andnot_ps(_mm256_set1_ps(-0.0f), a); }
static inline V vcopysign(V mag, V sign) {
    const V m = _mm256_set1_ps(-0.0f);
    return _mm256_or_ps(_mm256_andnot_ps(m, mag), _mm256_and_ps(m, sign));
}
static inline float vmax_lanes(V v) {
    float t[8];
    _mm256_storeu_ps(t, v);
    float m = t[0];
    for (int i = 1; i < 8; i++) m = std::fmax(m, t[i]);
    return m;
}
#endif

// Sum of x[0:n] with the lane contract of simd.h.
float sum(const float* x, int64_t n) {
    V acc = vzero();
    int64_t i = 0;
    for (; i + N <= n; i += N) acc = vadd(acc, vload(x + i));
    if (i < n) acc = vadd(acc, vload_n(x + i, n - i));
    return hsum(acc);
}

}  // namespace

void layernorm(float* out, const float* x, const float* gamma, const float* beta, int64_t C, float eps) {
    const float mean = sum(x, C) / (float)C;
    const V m = vset(mean);
    V acc = vzero();
    int64_t i = 0;
    for (; i + N <= C; i += N) {
        const V d = vsub(vload(x + i), m);
        acc = vfma(d, d, acc);
    }
    if (i < C) {
        const V d = vkeep_n(vsub(vload_n(x + i, C - i), m), C - i);  // lanes past C stay 0
        acc = vfma(d, d, acc);
    }
    const float var = hsum(acc) / (float)C;
    const V rstd = vset(1.0f / std::sqrt(var + eps));
    for (i = 0; i + N <= C; i += N) {
        V v = vmul(vmul(vsub(vload(x + i), m), rstd), vload(gamma + i));
        if (beta) v = vadd(v, vload(beta + i));
        vstore(out + i, v);
    }
    if (i < C) {
        const int64_t n = C - i;
        V v = vmul(vmul(vsub(vload_n(x + i, n), m), rstd), vload_n(gamma + i, n));
        if (beta) v = vadd(v, vload_n(beta + i, n));
        vstore_n(out + i, v, n);
    }
}

// 0.5 v (1 + tanh(u)), u = sqrt(2/pi) (v + 0.044715 v^3); tanh(u) = sign(u) (1 - e) / (1 + e)
// with e = exp(-2|u|), which never overflows.
static inline V gelu_vec(V v) {
    const V u = vmul(vset(0.7978845608028654f), vfma(vmul(vset(0.044715f), vmul(v, v)), v, v));
    const V e = exp_neg(vmul(vset(-2.0f), vabs(u)));
    const V th = vcopysign(vdiv(vsub(vset(1.0f), e), vadd(vset(1.0f), e)), u);
    return vmul(vmul(vset(0.5f), v), vadd(vset(1.0f), th));
}

void gelu_tanh(float* x, int64_t n) {
    int64_t i = 0;
    for (; i + N <= n; i += N) vstore(x + i, gelu_vec(vload(x + i)));
    if (i < n) vstore_n(x + i, gelu_vec(vload_n(x + i, n - i)), n - i);
}

void add(float* y, const float* x, int64_t n) {
    int64_t i = 0;
    for (; i + N <= n; i += N) vstore(y + i, vadd(vload(y + i), vload(x + i)));
    if (i < n) vstore_n(y + i, vadd(vload_n(y + i, n - i), vload_n(x + i, n - i)), n - i);
}

// add_product's tile: rows [0, RT) of x and y (K and n_out floats apart), columns [0, CV * N)
// of y and w, or with tail > 0 one vector of `tail` columns (CV = 1). Per k, CV vectors of row
// k of w and RT broadcasts of x feed RT * CV FMAs into accumulators that stay in registers; y
// is read and written once, at the end.
template <int RT, int CV>
static inline void product_tile(float* y, const float* x, const float* w, int64_t K, int64_t n_out,
                                int64_t tail) {
    V acc[RT * CV];
#pragma GCC unroll 32
    for (int i = 0; i < RT * CV; i++) acc[i] = vzero();
    for (int64_t k = 0; k < K; k++) {
        const float* wk = w + k * n_out;
        V wv[CV];
#pragma GCC unroll 8
        for (int v = 0; v < CV; v++) wv[v] = tail ? vload_n(wk, tail) : vload(wk + v * N);
#pragma GCC unroll 8
        for (int r = 0; r < RT; r++) {
            const V xr = vset(x[r * K + k]);
#pragma GCC unroll 8
            for (int v = 0; v < CV; v++) acc[r * CV + v] = vfma(xr, wv[v], acc[r * CV + v]);
        }
    }
#pragma GCC unroll 8
    for (int r = 0; r < RT; r++) {
        float* yr = y + r * n_out;
#pragma GCC unroll 8
        for (int v = 0; v < CV; v++) {
            if (tail) vstore_n(yr, vadd(vload_n(yr, tail), acc[r * CV]), tail);
            else vstore(yr + v * N, vadd(vload(yr + v * N), acc[r * CV + v]));
        }
    }
}

// Blocks of CV_WIDE vectors of columns in tiles of up to 4 rows: AVX-512 16 accumulators of
// 32 registers, AVX2 12 of 16 (the others hold a row of w and a broadcast of x). A narrow rest
// (u = x A^T has only `rank` columns) a vector at a time in tiles of up to 8 rows: 8 FMA chains
// in flight, enough to hide their latency (16 rows on AVX-512 were no faster in a profile).
constexpr int CV_WIDE = N == 16 ? 4 : 3;

// Rows [0, RT) of y over columns [o_begin, o_end), the columns in the inner loop: y's rows
// are swept in order (all rows down one column block, then the next, strided through y: 1.7
// times the time in a prompt's u B^T, 124M int8, rank 16).
template <int RT>
static inline void product_rows(float* y, const float* x, const float* w, int64_t K, int64_t n_out, int64_t o_begin,
                                int64_t o_end) {
    constexpr int RW = RT < 4 ? RT : 4;  // rows of a wide tile
    int64_t c = o_begin;
    for (; c + CV_WIDE * N <= o_end; c += CV_WIDE * N)
        for (int r = 0; r < RT; r += RW) product_tile<RW, CV_WIDE>(y + r * n_out + c, x + r * K, w + c, K, n_out, 0);
    for (; c + N <= o_end; c += N) product_tile<RT, 1>(y + c, x, w + c, K, n_out, 0);
    if (c < o_end) product_tile<RT, 1>(y + c, x, w + c, K, n_out, o_end - c);
}

void add_product(float* y, const float* x, const float* w, int64_t K, int64_t n_out, int64_t T, int64_t o_begin,
                 int64_t o_end) {
    int64_t t = 0;
    for (; t + 8 <= T; t += 8) product_rows<8>(y + t * n_out, x + t * K, w, K, n_out, o_begin, o_end);
    for (; t + 4 <= T; t += 4) product_rows<4>(y + t * n_out, x + t * K, w, K, n_out, o_begin, o_end);
    for (; t < T; t++) product_rows<1>(y + t * n_out, x + t * K, w, K, n_out, o_begin, o_end);
}

// scores[j] = exp(scale * scores[j] - max) for j < n_keys; returns 1 / their sum.
static float softmax_scores(float* scores, int64_t n_keys, float scale) {
    V vm = vset(-INFINITY);
    int64_t j = 0;
    const V vs = vset(scale);
    for (; j + N <= n_keys; j += N) {
        const V s = vmul(vload(scores + j), vs);
        vstore(scores + j, s);
        vm = vmax(vm, s);
    }
    float mx = vmax_lanes(vm);
    for (; j < n_keys; j++) {
        scores[j] *= scale;
        mx = std::fmax(mx, scores[j]);
    }
    const V m = vset(mx);
    V vsum = vzero();
    for (j = 0; j + N <= n_keys; j += N) {
        const V e = exp_neg(vsub(vload(scores + j), m));
        vstore(scores + j, e);
        vsum = vadd(vsum, e);
    }
    if (j < n_keys) {
        const int64_t n = n_keys - j;
        const V e = exp_neg(vsub(vload_n(scores + j, n), m));
        vstore_n(scores + j, e, n);
        vsum = vadd(vsum, vload_n(scores + j, n));
    }
    return 1.0f / hsum(vsum);
}

// Scores of N keys at once (one accumulator per key, reduced together), a vectorised
// softmax, then out = sum_j p_j v_j in chunks of 4 vectors of head dims.
// Keys and values come from DRAM (the weights streamed since evicted them), in short runs
// (a head's keys are n_keys rows, a few KB to a few tens of KB) that the hardware prefetchers
// barely ramp up on: scoring a key waited on its load. So while key j is scored, the key
// ATT_PREFETCH_KEYS ahead is prefetched into L1 and value j into L2, ready for the second pass.
#ifndef PYGPT_ATT_PF
#define PYGPT_ATT_PF 8
#endif
constexpr int64_t ATT_PREFETCH_KEYS = PYGPT_ATT_PF;
template <class E>
static inline void prefetch_kv(const E* k, const E* v, int64_t ld, int64_t j, int64_t n_keys, int64_t head_dim) {
    if (!ATT_PREFETCH_KEYS) return;
    const int64_t bytes = head_dim * (int64_t)sizeof(E);
    if (j + ATT_PREFETCH_KEYS < n_keys)
        for (int64_t b = 0; b < bytes; b += 64) _mm_prefetch((const char*)(k + (j + ATT_PREFETCH_KEYS) * ld) + b, _MM_HINT_T0);
    for (int64_t b = 0; b < bytes; b += 64) _mm_prefetch((const char*)(v + j * ld) + b, _MM_HINT_T1);
}

// Whether keys and values of type E carry a scale per row (int8 caches).
template <class E>
constexpr bool kScaled = std::is_same<E, int8_t>::value;

// G heads' query rows, each against its own keys (heads[g].k, .v as E; heads[g].k_scale,
// .v_scale: the rows' scales of an int8 cache), in step: key j of every head is scored before
// key j + 1 of any, and value j of every head summed before value j + 1, so a core has the
// loads of G short runs in flight at once (one run alone from DRAM mostly waits on them).
// Each head gets the same operations in the same order whatever G and its companions are:
// a key's score is its reduced dot product times its scale; a value's weight p_j times its
// scale. scores: head g's at scores + (the n_keys of heads before g).
template <class E, int G>
static void attention_heads_t(const AttentionHead* heads, int64_t ld, int64_t head_dim, float scale, float* scores) {
    const int64_t full = head_dim / N * N, rem = head_dim - full;
    const float* q[G];
    const E* k[G];
    const E* v[G];
    float* s[G];
    int64_t n_keys[G], n_max = 0;
    for (int g = 0, off = 0; g < G; g++) {
        q[g] = heads[g].q;
        k[g] = (const E*)heads[g].k;
        v[g] = (const E*)heads[g].v;
        n_keys[g] = heads[g].n_keys;
        s[g] = scores + off;
        off += (int)n_keys[g];
        n_max = n_keys[g] > n_max ? n_keys[g] : n_max;
    }
    for (int64_t j0 = 0; j0 < n_max; j0 += N) {
        int nk[G];
        for (int g = 0; g < G; g++) nk[g] = n_keys[g] - j0 < N ? (int)std::max<int64_t>(n_keys[g] - j0, 0) : N;
        const int nk_max = n_max - j0 < N ? (int)(n_max - j0) : N;
        V acc[G][N];
        for (int j = 0; j < nk_max; j++)
            for (int g = 0; g < G; g++) {
                if (G > 1 && j >= nk[g]) continue;
                prefetch_kv(k[g], v[g], ld, j0 + j, n_keys[g], head_dim);
                const E* kj = k[g] + (j0 + j) * ld;
                V a = vzero();
                for (int64_t d = 0; d < full; d += N) a = vfma(vload(q[g] + d), vload(kj + d), a);
                if (rem) a = vfma(vload_n(q[g] + full, rem), vload_n(kj + full, rem), a);
                acc[g][j] = a;
            }
        for (int g = 0; g < G; g++) {
            if (nk[g] == 0) continue;
            reduce_n(acc[g], nk[g], s[g] + j0);
            if (kScaled<E>)
                for (int j = 0; j < nk[g]; j++) s[g][j0 + j] *= heads[g].k_scale[j0 + j];
        }
    }
    float inv[G];
    for (int g = 0; g < G; g++) inv[g] = softmax_scores(s[g], n_keys[g], scale);
    auto weight = [&](int g, int64_t j) {
        return vset(kScaled<E> ? s[g][j] * inv[g] * heads[g].v_scale[j] : s[g][j] * inv[g]);
    };
    for (int64_t d0 = 0; d0 < head_dim; d0 += 4 * N) {
        const int64_t nd = head_dim - d0 < 4 * N ? head_dim - d0 : 4 * N;
        V o[G][4];
        for (int g = 0; g < G; g++)
            for (int c = 0; c < 4; c++) o[g][c] = vzero();
        if (nd == 4 * N) {
            for (int64_t j = 0; j < n_max; j++)
                for (int g = 0; g < G; g++) {
                    if (G > 1 && j >= n_keys[g]) continue;
                    const V p = weight(g, j);
                    const E* vj = v[g] + j * ld + d0;
                    for (int c = 0; c < 4; c++) o[g][c] = vfma(p, vload(vj + c * N), o[g][c]);
                }
            for (int g = 0; g < G; g++)
                for (int c = 0; c < 4; c++) vstore(heads[g].out + d0 + c * N, o[g][c]);
        } else {
            for (int64_t j = 0; j < n_max; j++)
                for (int g = 0; g < G; g++) {
                    if (G > 1 && j >= n_keys[g]) continue;
                    const V p = weight(g, j);
                    const E* vj = v[g] + j * ld + d0;
                    for (int c = 0; c * N < nd; c++) {
                        const int64_t n = nd - c * N < N ? nd - c * N : N;
                        o[g][c] = vfma(p, vload_n(vj + c * N, n), o[g][c]);
                    }
                }
            for (int g = 0; g < G; g++)
                for (int c = 0; c * N < nd; c++) {
                    const int64_t n = nd - c * N < N ? nd - c * N : N;
                    vstore_n(heads[g].out + d0 + c * N, o[g][c], n);
                }
        }
    }
}

template <class E>
static void attention_heads_n(const AttentionHead* heads, int n, int64_t ld, int64_t head_dim, float scale,
                              float* scores) {
    for (int i = 0; i < n; i += kAttentionHeads) {
        const AttentionHead* h = heads + i;
        switch (n - i < kAttentionHeads ? n - i : kAttentionHeads) {
            case 1: attention_heads_t<E, 1>(h, ld, head_dim, scale, scores); break;
            case 2: attention_heads_t<E, 2>(h, ld, head_dim, scale, scores); break;
            case 3: attention_heads_t<E, 3>(h, ld, head_dim, scale, scores); break;
            default: attention_heads_t<E, 4>(h, ld, head_dim, scale, scores); break;
        }
    }
}
static_assert(kAttentionHeads == 4, "attention_heads_n dispatches up to 4 heads");

// One head alone.
template <class E>
static void attention_row_t(float* out, const float* q, const E* k, const E* v, const float* k_scale,
                            const float* v_scale, int64_t ld, int64_t n_keys, int64_t head_dim, float scale,
                            float* scores) {
    const AttentionHead head = {out, q, k, v, k_scale, v_scale, n_keys};
    attention_heads_t<E, 1>(&head, ld, head_dim, scale, scores);
}

// Query rows of one head against the same keys, ATT_ROWS at a time: row i attends to the
// first n_keys + i keys (consecutive positions of a prompt). Each key and value vector is
// loaded (and widened) once or twice for the rows of a block, not once per row, and every
// row gets attention_row_t's operations in attention_row_t's order: the same bits.
// AVX-512: 8 rows a block. Their scores go 4 rows at a time with the 4 rows' queries held
// in 16 registers when a head is 4 vectors wide (GPT-2's 64): 16 FMAs a key against 4 loads
// (8 rows reading their queries from memory were bound by the loads). The values then go
// once for the 8 rows, 2 vectors of outputs a pass, each row's weights p_j scaled in place
// beforehand (one broadcast a row and key). AVX2 (16 registers): 4 rows, queries from memory.
#if defined(__AVX512F__)
constexpr int ATT_ROWS = 8, ATT_SCORE_ROWS = 4, ATT_OUT_VECS = 2;
#else
constexpr int ATT_ROWS = 4, ATT_SCORE_ROWS = 4, ATT_OUT_VECS = 4;
#endif
static_assert(ATT_ROWS <= kAttentionRows, "the model's blocks are at most kAttentionRows rows");

// The dot products of query rows [0, RR) with keys j0 .. j0 + nk - 1, unreduced: acc[r][j].
// ND = head_dim / N with the queries in registers, or 0 (any width; queries from memory).
template <class E, int RR, int ND>
static inline void score_keys_nd(V (*acc)[N], const float* q, int64_t ld_q, const E* k, const E* v, int64_t ld,
                                 int64_t j0, int nk, int64_t n_max, int64_t head_dim, bool prefetch) {
    constexpr int NQ = ND > 0 ? ND : 1;
    V qv[RR][NQ];
    if (ND > 0)
        for (int r = 0; r < RR; r++)
            for (int d = 0; d < NQ; d++) qv[r][d] = vload(q + r * ld_q + d * N);
    for (int j = 0; j < nk; j++) {
        if (prefetch) prefetch_kv(k, v, ld, j0 + j, n_max, head_dim);
        const E* kj = k + (j0 + j) * ld;
        V a[RR];
        for (int r = 0; r < RR; r++) a[r] = vzero();
        if (ND > 0) {
            for (int d = 0; d < NQ; d++) {
                const V kv = vload(kj + d * N);
                for (int r = 0; r < RR; r++) a[r] = vfma(qv[r][d], kv, a[r]);
            }
        } else {
            for (int64_t d = 0; d < head_dim; d += N) {
                const V kv = vload(kj + d);
                for (int r = 0; r < RR; r++) a[r] = vfma(vload(q + r * ld_q + d), kv, a[r]);
            }
        }
        for (int r = 0; r < RR; r++) acc[r][j] = a[r];
    }
}

// score_keys_nd with the queries in registers when a head is 4 vectors wide (`wide`).
template <class E, int RR>
static inline void score_keys(V (*acc)[N], const float* q, int64_t ld_q, const E* k, const E* v, int64_t ld,
                              int64_t j0, int nk, int64_t n_max, int64_t head_dim, bool wide, bool prefetch) {
    if (wide) score_keys_nd<E, RR, 4>(acc, q, ld_q, k, v, ld, j0, nk, n_max, head_dim, prefetch);
    else score_keys_nd<E, RR, 0>(acc, q, ld_q, k, v, ld, j0, nk, n_max, head_dim, prefetch);
}

template <class E, int R>
static void attention_block_t(float* out, int64_t ld_out, const float* q, int64_t ld_q, const E* k, const E* v,
                              const float* k_scale, const float* v_scale, int64_t ld, int64_t n_keys,
                              int64_t head_dim, float scale, float* scores) {
    const int64_t n_max = n_keys + R - 1, ld_s = n_max;  // row r's scores at scores + r * ld_s
    constexpr int S = ATT_SCORE_ROWS < R ? ATT_SCORE_ROWS : R;
    const bool wide = head_dim == 4 * N;  // the queries fit in registers
    for (int64_t j0 = 0; j0 < n_max; j0 += N) {
        const int nk = n_max - j0 < N ? (int)(n_max - j0) : N;
        V acc[R][N];
        score_keys<E, S>(acc, q, ld_q, k, v, ld, j0, nk, n_max, head_dim, wide, true);
        if constexpr (R > S)  // the other rows (R <= 2 * S); the keys and values are prefetched once
            score_keys<E, R - S>(acc + S, q + S * ld_q, ld_q, k, v, ld, j0, nk, n_max, head_dim, wide, false);
        for (int r = 0; r < R; r++) {  // keys past row r's are computed but not kept
            const int64_t keep = n_keys + r - j0 < nk ? n_keys + r - j0 : nk;
            if (keep <= 0) continue;
            reduce_n(acc[r], (int)keep, scores + r * ld_s + j0);
            if (kScaled<E>)
                for (int j = 0; j < keep; j++) scores[r * ld_s + j0 + j] *= k_scale[j0 + j];
        }
    }
    for (int r = 0; r < R; r++) {  // p_j (times value j's scale), as attention_row_t weighs value j
        float* p = scores + r * ld_s;
        const int64_t n = n_keys + r;
        const float inv = softmax_scores(p, n, scale);
        for (int64_t j = 0; j < n; j++) p[j] = kScaled<E> ? p[j] * inv * v_scale[j] : p[j] * inv;
    }
    constexpr int C = ATT_OUT_VECS;
    for (int64_t d0 = 0; d0 < head_dim; d0 += C * N) {
        V o[R][C];
        for (int r = 0; r < R; r++)
            for (int c = 0; c < C; c++) o[r][c] = vzero();
        auto add_value = [&](int64_t j, int r0) {  // value j into rows r0.. (the rows that attend to it)
            const E* vj = v + j * ld + d0;
            V vv[C];
            for (int c = 0; c < C; c++) vv[c] = vload(vj + c * N);
            for (int r = 0; r < R; r++) {
                if (r < r0) continue;
                const V p = vset(scores[r * ld_s + j]);
                for (int c = 0; c < C; c++) o[r][c] = vfma(p, vv[c], o[r][c]);
            }
        };
        for (int64_t j = 0; j < n_keys; j++) add_value(j, 0);  // keys of every row
        for (int64_t j = n_keys; j < n_max; j++) add_value(j, (int)(j - n_keys + 1));
        for (int r = 0; r < R; r++)
            for (int c = 0; c < C; c++) vstore(out + r * ld_out + d0 + c * N, o[r][c]);
    }
}

template <class E>
static void attention_rows_t(float* out, int64_t ld_out, const float* q, int64_t ld_q, int64_t n_rows, const E* k,
                             const E* v, const float* k_scale, const float* v_scale, int64_t ld, int64_t n_keys,
                             int64_t head_dim, float scale, float* scores) {
    if (n_rows == 1 || head_dim % (ATT_OUT_VECS * N) != 0) {  // GPT-2's heads are 64 wide: the blocked case
        for (int64_t r = 0; r < n_rows; r++)
            attention_row_t(out + r * ld_out, q + r * ld_q, k, v, k_scale, v_scale, ld, n_keys + r, head_dim, scale,
                            scores);
        return;
    }
    for (int64_t r0 = 0; r0 < n_rows; r0 += ATT_ROWS) {
        const int64_t rows = n_rows - r0 < ATT_ROWS ? n_rows - r0 : ATT_ROWS;
        float* o = out + r0 * ld_out;
        const float* qr = q + r0 * ld_q;
        const int64_t nk = n_keys + r0;
        switch (rows) {
            case 1: attention_row_t(o, qr, k, v, k_scale, v_scale, ld, nk, head_dim, scale, scores); break;
#define PYGPT_BLOCK(R) \
            case R: attention_block_t<E, R>(o, ld_out, qr, ld_q, k, v, k_scale, v_scale, ld, nk, head_dim, scale, scores); break;
            PYGPT_BLOCK(2) PYGPT_BLOCK(3) PYGPT_BLOCK(4)
#if defined(__AVX512F__)
            PYGPT_BLOCK(5) PYGPT_BLOCK(6) PYGPT_BLOCK(7) PYGPT_BLOCK(8)
#endif
#undef PYGPT_BLOCK
        }
    }
}

void attention_rows(float* out, int64_t ld_out, const float* q, int64_t ld_q, int64_t n_rows, const float* k,
                    const float* v, int64_t ld, int64_t n_keys, int64_t head_dim, float scale, float* scores) {
    attention_rows_t(out, ld_out, q, ld_q, n_rows, k, v, nullptr, nullptr, ld, n_keys, head_dim, scale, scores);
}

void attention_rows_f16(float* out, int64_t ld_out, const float* q, int64_t ld_q, int64_t n_rows, const uint16_t* k,
                        const uint16_t* v, int64_t ld, int64_t n_keys, int64_t head_dim, float scale, float* scores) {
    attention_rows_t(out, ld_out, q, ld_q, n_rows, k, v, nullptr, nullptr, ld, n_keys, head_dim, scale, scores);
}

void attention_rows_int8(float* out, int64_t ld_out, const float* q, int64_t ld_q, int64_t n_rows, const int8_t* k,
                         const int8_t* v, const float* k_scale, const float* v_scale, int64_t ld, int64_t n_keys,
                         int64_t head_dim, float scale, float* scores) {
    attention_rows_t(out, ld_out, q, ld_q, n_rows, k, v, k_scale, v_scale, ld, n_keys, head_dim, scale, scores);
}

void attention_heads(const AttentionHead* heads, int n, int64_t ld, int64_t head_dim, float scale, float* scratch) {
    attention_heads_n<float>(heads, n, ld, head_dim, scale, scratch);
}

void attention_heads_f16(const AttentionHead* heads, int n, int64_t ld, int64_t head_dim, float scale,
                         float* scratch) {
    attention_heads_n<uint16_t>(heads, n, ld, head_dim, scale, scratch);
}

void attention_heads_int8(const AttentionHead* heads, int n, int64_t ld, int64_t head_dim, float scale,
                          float* scratch) {
    attention_heads_n<int8_t>(heads, n, ld, head_dim, scale, scratch);
}

// generic::quantize_kv, vectorised: the same operations (an exact max, one product per
// value, conversion rounding to nearest even as nearbyint does), so the same bits. A value
// is finite when |x| <= FLT_MAX (false for infinities and NaN).
float quantize_kv(const float* x, int8_t* q, int64_t n) {
    if (n <= 0) return 0.0f;
    const V big = vset(std::numeric_limits<float>::max());
    V vm = vzero();
    bool finite = true;
    int64_t i = 0;
    for (; i < n; i += N) {
        const V a = vabs(i + N <= n ? vload(x + i) : vload_n(x + i, n - i));
#if defined(__AVX512F__)
        finite = finite && _mm512_cmp_ps_mask(a, big, _CMP_LE_OQ) == 0xFFFF;
#else
        finite = finite && _mm256_movemask_ps(_mm256_cmp_ps(a, big, _CMP_LE_OQ)) == 0xFF;
#endif
        vm = vmax(vm, a);
    }
    const float m = vmax_lanes(vm);
    if (!finite || m == 0.0f) {
        std::memset(q, 0, n);
        return finite ? 0.0f : NAN;
    }
    const V inv = vset(127.0f / m);
    for (i = 0; i < n; i += N) {
        const int64_t k = n - i < N ? n - i : N;
        const V v = vmul(k == N ? vload(x + i) : vload_n(x + i, k), inv);  // |v| <= 127 (+ rounding)
#if defined(__AVX512F__)
        const __m512i r = _mm512_min_epi32(_mm512_max_epi32(_mm512_cvtps_epi32(v), _mm512_set1_epi32(-127)),
                                           _mm512_set1_epi32(127));
        _mm_mask_storeu_epi8(q + i, tail_mask16(k), _mm512_cvtepi32_epi8(r));
#else
        alignas(32) int32_t r[8];
        _mm256_store_si256((__m256i*)r, _mm256_cvtps_epi32(v));
        for (int64_t j = 0; j < k; j++) q[i + j] = (int8_t)(r[j] > 127 ? 127 : r[j] < -127 ? -127 : r[j]);
#endif
    }
    return m / 127.0f;
}

// generic::argmax by lanes: lane l keeps the first largest of x[l], x[l + N], ... (a strict
// compare, so never NaN or -inf) and its index; the first largest overall is the smallest
// index among the lanes holding the largest value.
int64_t argmax(const float* x, int64_t n) {
    if (n > INT32_MAX - N) return generic::argmax(x, n);
#if defined(__AVX512F__)
    __m512 best = _mm512_set1_ps(-INFINITY);
    __m512i at = _mm512_set1_epi32(-1), idx = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    const __m512i step = _mm512_set1_epi32(N);
    for (int64_t i = 0; i < n; i += N) {
        const __m512 v = i + N <= n ? _mm512_loadu_ps(x + i)
                                    : _mm512_mask_loadu_ps(_mm512_set1_ps(-INFINITY), tail_mask16(n - i), x + i);
        const __mmask16 gt = _mm512_cmp_ps_mask(v, best, _CMP_GT_OQ);
        best = _mm512_mask_mov_ps(best, gt, v);
        at = _mm512_mask_mov_epi32(at, gt, idx);
        idx = _mm512_add_epi32(idx, step);
    }
    alignas(64) float b[N];
    alignas(64) int32_t a[N];
    _mm512_store_ps(b, best);
    _mm512_store_si512(a, at);
#else
    __m256 best = _mm256_set1_ps(-INFINITY);
    __m256i at = _mm256_set1_epi32(-1), idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    const __m256i step = _mm256_set1_epi32(N);
    for (int64_t i = 0; i < n; i += N) {
        const __m256 v = i + N <= n ? _mm256_loadu_ps(x + i)
                                    : _mm256_blendv_ps(_mm256_set1_ps(-INFINITY), vload_n(x + i, n - i),
                                                       _mm256_castsi256_ps(mask_n(n - i)));
        const __m256 gt = _mm256_cmp_ps(v, best, _CMP_GT_OQ);
        best = _mm256_blendv_ps(best, v, gt);
        at = _mm256_blendv_epi8(at, idx, _mm256_castps_si256(gt));
        idx = _mm256_add_epi32(idx, step);
    }
    alignas(32) float b[N];
    alignas(32) int32_t a[N];
    _mm256_store_ps(b, best);
    _mm256_store_si256((__m256i*)a, at);
#endif
    int64_t found = -1;
    float found_x = -INFINITY;
    for (int l = 0; l < N; l++)
        if (a[l] >= 0 && (b[l] > found_x || (b[l] == found_x && a[l] < found))) {
            found_x = b[l];
            found = a[l];
        }
    return found;
}

// f32 -> f16 with F16C, rounded to nearest even (generic::f32_to_f16 gives the same bits).
void to_f16(const float* x, uint16_t* out, int64_t n) {
    int64_t i = 0;
    for (; i + N <= n; i += N) {
#if defined(__AVX512F__)
        _mm256_storeu_si256((__m256i*)(out + i), _mm512_cvtps_ph(_mm512_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT));
#else
        _mm_storeu_si128((__m128i*)(out + i), _mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT));
#endif
    }
    for (; i < n; i++) out[i] = generic::f32_to_f16(x[i]);
}

}  // namespace simd
}  // namespace PYGPT_KERNEL_NS
}  // namespace pygpt

#endif  // __AVX2__
