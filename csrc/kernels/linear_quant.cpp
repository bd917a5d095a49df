// Linear layers with quantized weights (q8, q4): activations quantized per token to int8,
// integer dot products per block of 64 inputs (see linear.cpp and docs/FORMAT.md).
//
// Accumulation contract (the same as generic::quant_linear, so every path here is bitwise
// equal to the scalar reference, whatever the tile, T or column range):
//   isum[t, o, g] = the EXACT int32 dot product of group g (integer sums: any order),
//   acc = 0; for g = 0, 1, ...: acc = fma(scale[o, g], float(isum), acc);
//   y[t, o] = fma(acc, sx[t], bias[o] or 0).
// Since the integer sums are exact, a kernel is free to lay them out as it likes.
//
// Weights are stored in panels of 16 rows (docs/FORMAT.md): one 64-byte vector holds 4
// bytes of each of the 16 rows (q8: 4 inputs, unsigned w + 128; q4: 8 inputs as nibbles,
// w + 8), so vpdpbusd against 4 activation bytes broadcast gives the 16 rows' partial sums
// in the 16 lanes: no transpose, no horizontal reduction, and a group's scaling is one FMA
// per 16 outputs (the panel's 16 scales of a group are one vector). The offset times the
// group's activation sum is subtracted exactly (corr). On AVX-512:
//   one token: each stored vector against the token's activations, 4 accumulator chains
//     (q4 multiplies the high nibbles in place: v & 0xf0 is 16 times their value, the
//     block's exact sum shifted back);
//   2..8 tokens: each stored vector loaded (q4: unpacked) once and used for all of them;
//   more (prompts): 2 panels x 6 tokens per tile (12 int + 12 float accumulators); q8 uses
//     the stored panels in place, q4 unpacks each panel once per token block.
// Each thread reads its panels as one sequential stream (16 rows read side by side would
// be 16 streams; a panel is one). For two or more tokens the panel two ahead is prefetched
// into L2 as a panel is read; one token leaves it to the hardware prefetchers, which
// follow one stream better alone on the AMD machine (124M decode without the prefetch: int8
// +29% at 1 thread and +10% at 2, int4 +4% at 2 threads; with it batch-8 decode was 7-13%
// faster), but not on the amx path's Xeon, where one token prefetches too (DECODE_PREFETCH).
// AVX2 does the same 8 rows at a time, with vpmaddubsw + vpmaddwd, or with AVX-VNNI's
// 256-bit vpdpbusd where the CPU has it (the avx2vnni path: PYGPT_VNNI256).
// The amx path (PYGPT_AMX) runs prompts on AMX tiles, whose rows are the panels' blocks as
// stored (q4: unpacked), where the groups span two blocks or more (use_tiles).
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

// The panel of 16 rows starting at output o = 16p, and the lanes of it that [o_begin,
// o_end) covers (rows past n_out are padding and never stored).
struct Panel {
    const uint8_t* w;  // the panel's bytes
    const float* ps;   // its scales: 16 per group, one per row
    int64_t o;         // its first output
    uint32_t mask;     // bit r: row o + r is in [o_begin, o_end)
};

static inline Panel panel_at(const uint8_t* w, const float* scales, const QShape& s, int64_t p, int64_t o_begin,
                             int64_t o_end) {
    const int64_t o = p * kPanel;
    const int64_t lo = o_begin > o ? o_begin - o : 0, hi = o_end < o + kPanel ? o_end - o : kPanel;
    return {w + p * s.panel_bytes, scales + p * s.n_groups * kPanel, o, ((1u << hi) - 1) & ~((1u << lo) - 1)};
}

// The panel two ahead of P, into L2: the bytes of its block b (call once per block).
static inline void prefetch_block_ahead(const Panel& P, const QShape& s, int64_t b) {
    const char* ahead = (const char*)P.w + 2 * s.panel_bytes + b * s.block_bytes;
    for (int64_t i = 0; i < s.block_bytes; i += 64) _mm_prefetch(ahead + i, _MM_HINT_T1);
}

// Whether one token's panels prefetch the panel two ahead too: on the amx path (a Xeon with
// AMX: 124M decode in alternating processes, int8 1.08x at 2 threads and 1.15x at 1, int4
// 1.12x and 1.05x; batch-8 decode unchanged), not elsewhere (above).
#if defined(PYGPT_AMX)
constexpr bool DECODE_PREFETCH = true;
#else
constexpr bool DECODE_PREFETCH = false;
#endif

#if defined(__AVX512F__)
// ---------------------------------------------------------------------------------------
// AVX-512 (VNNI)

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
    if (s.half) {  // a block's first 32 bytes are dwords 0..7 of its sums, its second 32 8..15
        for (int64_t b = 0; b < s.nb; b++) {
            const __m512i c = _mm512_dpbusd_epi32(_mm512_setzero_si512(), off, _mm512_loadu_si512(xq + b * 64));
            corr[2 * b] = -_mm512_mask_reduce_add_epi32(0x00ff, c);
            corr[2 * b + 1] = -_mm512_mask_reduce_add_epi32(0xff00, c);
        }
        return m > 0.0f ? m / 127.0f : 0.0f;
    }
    for (int64_t g = 0, block = 0; g < s.n_groups; g++) {
        __m512i c = _mm512_setzero_si512();
        for (int64_t b = 0; b < s.bpg; b++, block++) c = _mm512_dpbusd_epi32(c, off, _mm512_loadu_si512(xq + block * 64));
        corr[g] = -_mm512_reduce_add_epi32(c);
    }
    return m > 0.0f ? m / 127.0f : 0.0f;
}


// acc + the dword products of w (unsigned bytes) and the 4 bytes at x (signed) broadcast,
// the broadcast folded into vpdpbusd as a memory operand (GCC emits a separate vpbroadcastd).
static inline __m512i dpbusd_bcst(__m512i acc, __m512i w, const int8_t* x) {
    __asm__("vpdpbusd %2%{1to16%}, %1, %0" : "+v"(acc) : "v"(w), "m"(*(const int32_t*)x));
    return acc;
}

static inline void store_outputs(const Panel& P, __m512 acc, float sx, const float* bias, float* y) {
    const __mmask16 mask = (__mmask16)P.mask;
    const __m512 bv = bias ? _mm512_maskz_loadu_ps(mask, bias + P.o) : _mm512_setzero_ps();
    _mm512_mask_storeu_ps(y + P.o, mask, _mm512_fmadd_ps(acc, _mm512_set1_ps(sx), bv));
}

// ---- one token ------------------------------------------------------------------------

// q8: N stored vectors at wb (inputs 4j..4j+3 of the 16 rows, against xb + 4j) into the 4
// chains a[j & 3].
template <int N>
static inline void q8_run(const uint8_t* wb, const int8_t* xb, __m512i* a) {
#pragma GCC unroll 16
    for (int j = 0; j < N; j++) a[j & 3] = dpbusd_bcst(a[j & 3], _mm512_loadu_si512(wb + j * 64), xb + 4 * j);
}

// q8, one token: per group its blocks' 16 stored vectors each, or (H: groups of 32) half a
// block's 8, in 4 chains.
template <bool H>
static void q8_decode_panel(const Panel& P, const QShape& s, const int8_t* xq, const int32_t* corr, float sx,
                            const float* bias, float* y) {
    __m512 acc = _mm512_setzero_ps();
    for (int64_t g = 0, b = 0; g < s.n_groups; g++) {
        __m512i a[4] = {_mm512_set1_epi32(corr[g]), _mm512_setzero_si512(), _mm512_setzero_si512(),
                        _mm512_setzero_si512()};
        if (H) {
            if (DECODE_PREFETCH && !(g & 1)) prefetch_block_ahead(P, s, g >> 1);
            q8_run<8>(P.w + g * 512, xq + g * 32, a);
        } else
            for (const int64_t b_end = b + s.bpg; b < b_end; b++) {
                if (DECODE_PREFETCH) prefetch_block_ahead(P, s, b);
                q8_run<16>(P.w + b * 1024, xq + b * 64, a);
            }
        const __m512i isum = _mm512_add_epi32(_mm512_add_epi32(a[0], a[1]), _mm512_add_epi32(a[2], a[3]));
        acc = _mm512_fmadd_ps(_mm512_loadu_ps(P.ps + g * 16), _mm512_cvtepi32_ps(isum), acc);
    }
    store_outputs(P, acc, sx, bias, y);
}

// A vector loaded into a register, once: the compiler otherwise folds the load into each
// instruction that uses it (two ANDs in q4_block), loading it twice.
static inline __m512i load_once(const uint8_t* p) {
    __m512i v = _mm512_loadu_si512(p);
    __asm__("" : "+v"(v));
    return v;
}

// q4, one block of 8 stored vectors against one token: the products of its low nibbles
// (inputs 0..31) added to the two chains *lo0, *lo1, and the sum of those of its high
// nibbles (inputs 32..63) returned. Each vector
// against 4 activation bytes broadcast twice: its low nibbles (v & 0x0f) and its high
// nibbles left in place (v & 0xf0, 16 times their value: one instruction fewer than shifting
// them down), whose exact sum is shifted back (a multiple of 16, at most 240 * 127 * 32 per
// lane). 4 chains. Each vector is loaded once (load_once): loaded twice, with the 16
// broadcasts, the loads and not vpdpbusd bounded the kernel (a 768 x 768 matrix in L2, one
// thread, in a throwaway loop over 4 KiB pages: 37 -> 59 GB/s; tools/kernel_loops/q4_tiles
// 768 measures the kept kernel).
static inline __m512i q4_block(const uint8_t* wb, const int8_t* xb, __m512i* lo0_, __m512i* lo1_) {
    const __m512i m4 = _mm512_set1_epi8(0x0f), m4h = _mm512_set1_epi8((char)0xf0);
    __m512i lo0 = *lo0_, lo1 = *lo1_, hi0 = _mm512_setzero_si512(), hi1 = hi0;
#pragma GCC unroll 4
    for (int j = 0; j < 8; j += 2) {
        const __m512i v0 = load_once(wb + j * 64), v1 = load_once(wb + j * 64 + 64);
        lo0 = dpbusd_bcst(lo0, _mm512_and_si512(v0, m4), xb + 4 * j);
        hi0 = dpbusd_bcst(hi0, _mm512_and_si512(v0, m4h), xb + 32 + 4 * j);
        lo1 = dpbusd_bcst(lo1, _mm512_and_si512(v1, m4), xb + 4 * j + 4);
        hi1 = dpbusd_bcst(hi1, _mm512_and_si512(v1, m4h), xb + 36 + 4 * j);
    }
    *lo0_ = lo0;
    *lo1_ = lo1;
    return _mm512_srai_epi32(_mm512_add_epi32(hi0, hi1), 4);
}

// q4, one token: per group its blocks (q4_block), or (H: groups of 32) per block two groups,
// its low nibbles' and its high nibbles'.
template <bool H>
static void q4_decode_panel(const Panel& P, const QShape& s, const int8_t* xq, const int32_t* corr, float sx,
                            const float* bias, float* y) {
    __m512 acc = _mm512_setzero_ps();
    for (int64_t g = 0, b = 0; g < s.n_groups; g += H ? 2 : 1) {
        __m512i lo0 = _mm512_set1_epi32(corr[g]), lo1 = _mm512_setzero_si512(), hi = _mm512_setzero_si512();
        for (const int64_t b_end = b + s.bpg; b < b_end; b++) {
            if (DECODE_PREFETCH) prefetch_block_ahead(P, s, b);
            const __m512i h = q4_block(P.w + b * 512, xq + b * 64, &lo0, &lo1);
            if (H) hi = _mm512_add_epi32(_mm512_set1_epi32(corr[g + 1]), h);
            else lo0 = _mm512_add_epi32(lo0, h);
        }
        acc = _mm512_fmadd_ps(_mm512_loadu_ps(P.ps + g * 16), _mm512_cvtepi32_ps(_mm512_add_epi32(lo0, lo1)), acc);
        if (H) acc = _mm512_fmadd_ps(_mm512_loadu_ps(P.ps + g * 16 + 16), _mm512_cvtepi32_ps(hi), acc);
    }
    store_outputs(P, acc, sx, bias, y);
}

// ---- a few tokens -----------------------------------------------------------------------

// TT tokens, one panel: each stored vector loaded once (q4: unpacked once into its low and
// high nibbles) and used at once for the TT tokens against their 4 activation bytes
// broadcast. Per token C chains of integer accumulators (C = 2 for few tokens: the
// vpdpbusd latency), summed at the group's end. H (groups of 32): per token one chain per
// group of the block (q4: its low and high nibbles; q8: its vectors 0..7 and 8..15).
template <bool Q4, bool H, int TT>
static void panel_tile(const Panel& P, const QShape& s, const int8_t* xq, const int32_t* corr, const float* sx,
                       const float* bias, float* y) {
    constexpr int C = H || TT <= 4 ? 2 : 1;
    const __m512i m4 = _mm512_set1_epi8(0x0f);
    __m512 facc[TT];
    for (int t = 0; t < TT; t++) facc[t] = _mm512_setzero_ps();
    for (int64_t g = 0, b = 0; g < s.n_groups; g += H ? 2 : 1) {
        __m512i iacc[TT][C];
        for (int t = 0; t < TT; t++) {
            iacc[t][0] = _mm512_set1_epi32(corr[t * s.n_groups + g]);
            if (C == 2) iacc[t][C - 1] = H ? _mm512_set1_epi32(corr[t * s.n_groups + g + 1]) : _mm512_setzero_si512();
        }
        for (const int64_t b_end = b + s.bpg; b < b_end; b++) {
            prefetch_block_ahead(P, s, b);
            const uint8_t* wb = P.w + b * s.block_bytes;
            const int8_t* xb = xq + b * 64;
            if (Q4) {
#pragma GCC unroll 8
                for (int j = 0; j < 8; j++) {
                    const __m512i v = _mm512_loadu_si512(wb + j * 64);
                    const __m512i lo = _mm512_and_si512(v, m4), hi = _mm512_and_si512(_mm512_srli_epi16(v, 4), m4);
                    for (int t = 0; t < TT; t++) iacc[t][0] = dpbusd_bcst(iacc[t][0], lo, xb + t * s.xs + 4 * j);
                    for (int t = 0; t < TT; t++)
                        iacc[t][C - 1] = dpbusd_bcst(iacc[t][C - 1], hi, xb + t * s.xs + 32 + 4 * j);
                }
            } else {
#pragma GCC unroll 16
                for (int j = 0; j < 16; j++) {
                    const __m512i v = _mm512_loadu_si512(wb + j * 64);
                    const int c = H ? j / 8 : (j & 1) * (C - 1);
                    for (int t = 0; t < TT; t++) iacc[t][c] = dpbusd_bcst(iacc[t][c], v, xb + t * s.xs + 4 * j);
                }
            }
        }
        const __m512 sc = _mm512_loadu_ps(P.ps + g * 16);
        if (H) {
            const __m512 sc1 = _mm512_loadu_ps(P.ps + g * 16 + 16);
            for (int t = 0; t < TT; t++) {
                facc[t] = _mm512_fmadd_ps(sc, _mm512_cvtepi32_ps(iacc[t][0]), facc[t]);
                facc[t] = _mm512_fmadd_ps(sc1, _mm512_cvtepi32_ps(iacc[t][C - 1]), facc[t]);
            }
        } else {
            for (int t = 0; t < TT; t++) {
                const __m512i isum = C == 2 ? _mm512_add_epi32(iacc[t][0], iacc[t][C - 1]) : iacc[t][0];
                facc[t] = _mm512_fmadd_ps(sc, _mm512_cvtepi32_ps(isum), facc[t]);
            }
        }
    }
    for (int t = 0; t < TT; t++) store_outputs(P, facc[t], sx[t], bias, y + t * s.n_out);
}

// Up to this many tokens a panel is used through panel_tile (one tile) rather than the
// prompt tiles.
constexpr int64_t FEW_TOKENS = 8;

template <bool Q4, bool H>
static void panels_few(const uint8_t* w, const float* scales, const QShape& s, const int8_t* xq, const int32_t* corr,
                       const float* sx, int64_t T, const float* bias, float* y, int64_t o_begin, int64_t o_end) {
    for (int64_t p = o_begin / kPanel; p * kPanel < o_end; p++) {
        const Panel P = panel_at(w, scales, s, p, o_begin, o_end);
        switch (T) {
            case 1:
                if (Q4) q4_decode_panel<H>(P, s, xq, corr, sx[0], bias, y);
                else q8_decode_panel<H>(P, s, xq, corr, sx[0], bias, y);
                break;
            case 2: panel_tile<Q4, H, 2>(P, s, xq, corr, sx, bias, y); break;
            case 3: panel_tile<Q4, H, 3>(P, s, xq, corr, sx, bias, y); break;
            case 4: panel_tile<Q4, H, 4>(P, s, xq, corr, sx, bias, y); break;
            case 5: panel_tile<Q4, H, 5>(P, s, xq, corr, sx, bias, y); break;
            case 6: panel_tile<Q4, H, 6>(P, s, xq, corr, sx, bias, y); break;
            case 7: panel_tile<Q4, H, 7>(P, s, xq, corr, sx, bias, y); break;
            case 8: panel_tile<Q4, H, 8>(P, s, xq, corr, sx, bias, y); break;
            default: throw std::logic_error("panels_few: 1 to FEW_TOKENS tokens");
        }
    }
}

// ---- prompts ----------------------------------------------------------------------------

constexpr int NP_Q = 2;  // panels per tile
constexpr int TT_Q = 6;  // tokens per tile: 12 int + 12 float accumulators

// A q4 panel unpacked into the q8 layout (16 vectors per block, vector j = inputs 4j..4j+3
// of the 16 rows): its stored vector j holds inputs 4j.. in its low nibbles (out j) and
// 32 + 4j.. in its high nibbles (out 8 + j). Signed: the weights themselves (nibble - 8)
// rather than the stored unsigned nibbles.
template <bool Signed = false>
static void unpack_panel_q4(const Panel& P, const QShape& s, __m512i* out) {
    const __m512i m4 = _mm512_set1_epi8(0x0f), eight = _mm512_set1_epi8(8);
    for (int64_t b = 0; b < s.nb; b++) {
        prefetch_block_ahead(P, s, b);
        for (int j = 0; j < 8; j++) {
            const __m512i v = _mm512_loadu_si512(P.w + b * 512 + j * 64);
            __m512i lo = _mm512_and_si512(v, m4), hi = _mm512_and_si512(_mm512_srli_epi16(v, 4), m4);
            if (Signed) {
                lo = _mm512_sub_epi8(lo, eight);
                hi = _mm512_sub_epi8(hi, eight);
            }
            _mm512_store_si512(out + b * 16 + j, lo);
            _mm512_store_si512(out + b * 16 + 8 + j, hi);
        }
    }
}

// NP panels x TT tokens over panels in the q8 layout (pw: panel p at pw + p * pstride
// vectors; ps: its scales at ps + p * n_groups * 16): acc[t][p] over all groups (the
// contract's float sequence, 16 outputs per vector), then y = fma(acc, sx, bias).
template <int NP, int TT>
static inline void packed_tile(const __m512i* pw, int64_t pstride, const float* ps, const QShape& s,
                               const int8_t* xq, const int32_t* corr, const float* sx, const __m512* bias, float* y,
                               const __mmask16* masks) {
    __m512 facc[TT][NP];
    for (int t = 0; t < TT; t++)
        for (int p = 0; p < NP; p++) facc[t][p] = _mm512_setzero_ps();
    const int64_t steps = s.gk / 4;  // 4-input steps per group
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
            for (int p = 0; p < NP; p++) wv[p] = _mm512_loadu_si512(wg + p * pstride + k);
            for (int t = 0; t < TT; t++)
                for (int p = 0; p < NP; p++) iacc[t][p] = dpbusd_bcst(iacc[t][p], wv[p], xg + t * s.xs + 4 * k);
        }
        for (int p = 0; p < NP; p++) {
            const __m512 sc = _mm512_loadu_ps(ps + (p * s.n_groups + g) * 16);
            for (int t = 0; t < TT; t++) facc[t][p] = _mm512_fmadd_ps(sc, _mm512_cvtepi32_ps(iacc[t][p]), facc[t][p]);
        }
    }
    for (int t = 0; t < TT; t++)
        for (int p = 0; p < NP; p++)
            _mm512_mask_storeu_ps(y + t * s.n_out + p * 16, masks[p],
                                  _mm512_fmadd_ps(facc[t][p], _mm512_set1_ps(sx[t]), bias[p]));
}

template <int NP>
static void packed_tokens(const __m512i* pw, int64_t pstride, const float* ps, const QShape& s, const int8_t* xq,
                          const int32_t* corr, const float* sx, int64_t T, const __m512* bias, float* y,
                          const __mmask16* masks) {
    const int64_t ng = s.n_groups;
    int64_t t = 0;
    for (; t + TT_Q <= T; t += TT_Q)
        packed_tile<NP, TT_Q>(pw, pstride, ps, s, xq + t * s.xs, corr + t * ng, sx + t, bias, y + t * s.n_out, masks);
    const int8_t* xt = xq + t * s.xs;
    const int32_t* ct = corr + t * ng;
    float* yt = y + t * s.n_out;
    switch (T - t) {
        case 0: break;
        case 1: packed_tile<NP, 1>(pw, pstride, ps, s, xt, ct, sx + t, bias, yt, masks); break;
        case 2: packed_tile<NP, 2>(pw, pstride, ps, s, xt, ct, sx + t, bias, yt, masks); break;
        case 3: packed_tile<NP, 3>(pw, pstride, ps, s, xt, ct, sx + t, bias, yt, masks); break;
        case 4: packed_tile<NP, 4>(pw, pstride, ps, s, xt, ct, sx + t, bias, yt, masks); break;
        case 5: packed_tile<NP, 5>(pw, pstride, ps, s, xt, ct, sx + t, bias, yt, masks); break;
    }
}

// Rows [o_begin, o_end) for T tokens: the panels covering them, NP_Q at a time; q8 panels
// used as stored, q4 panels unpacked into `unpacked` (NP_Q panels) once per call.
template <bool Q4>
static void panels_many(const uint8_t* w, const float* scales, const QShape& s, const int8_t* xq,
                        const int32_t* corr, const float* sx, int64_t T, const float* bias, float* y,
                        int64_t o_begin, int64_t o_end, __m512i* unpacked) {
    const int64_t pstride = s.nb * 16, p_end = (o_end + kPanel - 1) / kPanel;
    for (int64_t p0 = o_begin / kPanel; p0 < p_end; p0 += NP_Q) {
        const int np = p_end - p0 < NP_Q ? (int)(p_end - p0) : NP_Q;
        __m512 bv[NP_Q];
        __mmask16 masks[NP_Q];
        for (int p = 0; p < np; p++) {
            const Panel P = panel_at(w, scales, s, p0 + p, o_begin, o_end);
            if (Q4) unpack_panel_q4(P, s, unpacked + p * pstride);
            else
                for (int64_t b = 0; b < s.nb; b++) prefetch_block_ahead(P, s, b);
            masks[p] = (__mmask16)P.mask;
            bv[p] = bias ? _mm512_maskz_loadu_ps(masks[p], bias + P.o) : _mm512_setzero_ps();
        }
        const __m512i* pw = Q4 ? unpacked : (const __m512i*)(w + p0 * s.panel_bytes);
        const float* ps = scales + p0 * s.n_groups * kPanel;
        if (np == 2) packed_tokens<2>(pw, pstride, ps, s, xq, corr, sx, T, bv, y + p0 * kPanel, masks);
        else packed_tokens<1>(pw, pstride, ps, s, xq, corr, sx, T, bv, y + p0 * kPanel, masks);
    }
}

#if defined(PYGPT_AMX)
// ---- AMX tiles (the amx path: Sapphire Rapids and later) -------------------------------

// TDPBSUD multiplies a tile of 16 tokens x 64 activation bytes (signed) by a tile of 16
// rows of 64 bytes (unsigned) holding 4 inputs of each of 16 outputs per row: the layout of
// a stored q8 panel block (and of a q4 one unpacked), run j = tile row j. Each sum it gives
// is the exact int32 product of a block, so the tiles keep the accumulation contract: per
// group, the tiles' sums plus corr are scaled and added in every other path's float order.
// Tiles 0, 1: activations of tokens [t, t + 16), [t + 16, t + 32); 2, 3: a block of two
// panels; 4 + 2i + j: the sums of activations i and panel j. Every tile is 16 rows of 64
// bytes (configure_tiles); rows past the last token are read from a zero-padded copy and
// their sums dropped.

// Which layers run on the tiles: prompts (more than FEW_TOKENS tokens) of weights whose
// groups span two blocks or more (int8's default of a scale per row, int4 at groups of 128
// or more). Each tile of sums costs a product, a store to memory and the vector work of its
// scaling, once per group: with groups of one block (int4's default of 64) the tiles ran no
// faster than AVX-512 VNNI, and with 8 tokens or fewer (batched decode) slower, on a
// Sapphire Rapids VM (BENCHMARKS.md, "Kernel paths").
static inline bool use_tiles(const QShape& s, int64_t T) {
    return T > FEW_TOKENS && s.bpg >= 2 && !s.half;
}
constexpr int AMX_TT = 32;     // tokens per pass (two activation tiles)
constexpr int AMX_GROUPS = 4;  // groups per step

// tmm C += tmm A x tmm B: q8 multiplies the stored unsigned bytes (corr subtracts their
// offset later), q4 its panels unpacked to signed weights (no correction). A macro: GCC's
// tile intrinsics paste the register numbers into their assembly as written.
#define PYGPT_TILE_PRODUCT(Q4, C, A, B) \
    do {                                \
        if (Q4) _tile_dpbssd(C, A, B);  \
        else _tile_dpbsud(C, A, B);     \
    } while (0)

// One step: the int32 sums of groups [g0, g0 + ng) for NT x 16 tokens (rows x + r * xs) and
// NP panels (blocks of 1024 bytes at pw, the second panel pstride bytes on), those of group
// g0 + k stored to sums[k][2i + j]. With each block b it prefetches into L2 block b of the
// two panels at `ahead` (unless null): the next panels, while these are in use.
template <bool Q4, int NT, int NP>
static void amx_sums(const uint8_t* pw, int64_t pstride, const QShape& s, const int8_t* x, int64_t g0, int ng,
                     const uint8_t* ahead, int32_t (*sums)[4][256]) {
    for (int k = 0; k < ng; k++) {
        _tile_zero(4);
        if (NP == 2) _tile_zero(5);
        if (NT == 2) _tile_zero(6);
        if (NT == 2 && NP == 2) _tile_zero(7);
        for (int64_t b = (g0 + k) * s.bpg, b_end = b + s.bpg; b < b_end; b++) {
            if (ahead)
                for (int i = 0; i < 1024; i += 64) {
                    _mm_prefetch((const char*)ahead + b * 1024 + i, _MM_HINT_T1);
                    _mm_prefetch((const char*)ahead + pstride + b * 1024 + i, _MM_HINT_T1);
                }
            _tile_loadd(2, pw + b * 1024, 64);
            _tile_loadd(0, x + b * 64, s.xs);
            PYGPT_TILE_PRODUCT(Q4, 4, 0, 2);
            if (NP == 2) {
                _tile_loadd(3, pw + pstride + b * 1024, 64);
                PYGPT_TILE_PRODUCT(Q4, 5, 0, 3);
            }
            if (NT == 2) {
                _tile_loadd(1, x + 16 * s.xs + b * 64, s.xs);
                PYGPT_TILE_PRODUCT(Q4, 6, 1, 2);
                if (NP == 2) PYGPT_TILE_PRODUCT(Q4, 7, 1, 3);
            }
        }
        _tile_stored(4, sums[k][0], 64);
        if (NP == 2) _tile_stored(5, sums[k][1], 64);
        if (NT == 2) _tile_stored(6, sums[k][2], 64);
        if (NT == 2 && NP == 2) _tile_stored(7, sums[k][3], 64);
    }
}

// A step: tokens [t, t + n) of the call (a pass), panels p0 and p0 + 1 (np of them), groups
// [g0, g0 + ng); its sums in sums[buf].
struct AmxStep {
    int64_t t, p0, g0;
    int n, np, ng, buf;
};

// The float side of a step, 16 tokens x 16 outputs at a time with the sums in registers (the
// contract's sequence): acc = fma(scale[o, g], float(sum + corr), acc) from acc = 0 over the
// groups, kept in `acc` between the steps of a pass's panels, and after the last group
// y = fma(acc, sx, bias).
template <bool Q4>
static void amx_finish(const AmxStep& st, const int32_t (*sums)[4][256], const uint8_t* w, const float* scales,
                       const QShape& s, const int32_t* corr, const float* sx, const float* bias, float* y,
                       int64_t o_begin, int64_t o_end, __m512 (*acc)[2]) {
    const bool first = st.g0 == 0, last = st.g0 + st.ng == s.n_groups;
    for (int j = 0; j < st.np; j++) {
        const Panel P = panel_at(w, scales, s, st.p0 + j, o_begin, o_end);
        const __mmask16 mask = (__mmask16)P.mask;
        const __m512 bv = bias && last ? _mm512_maskz_loadu_ps(mask, bias + P.o) : _mm512_setzero_ps();
        for (int i = 0; i * 16 < st.n; i++) {
            const int rows = st.n - 16 * i < 16 ? st.n - 16 * i : 16;
            const int64_t t0 = st.t + 16 * i;
            __m512 a[16];
#pragma GCC unroll 16
            for (int r = 0; r < 16; r++) a[r] = first || r >= rows ? _mm512_setzero_ps() : acc[16 * i + r][j];
            for (int k = 0; k < st.ng; k++) {
                const int64_t g = st.g0 + k;
                const __m512 sc = _mm512_loadu_ps(P.ps + g * 16);
                const int32_t* sm = sums[k][2 * i + j];
#pragma GCC unroll 16
                for (int r = 0; r < 16; r++) {
                    if (r >= rows) break;
                    __m512i v = _mm512_load_si512(sm + 16 * r);
                    if (!Q4) v = _mm512_add_epi32(v, _mm512_set1_epi32(corr[(t0 + r) * s.n_groups + g]));
                    a[r] = _mm512_fmadd_ps(sc, _mm512_cvtepi32_ps(v), a[r]);
                }
            }
            for (int r = 0; r < rows; r++) {
                if (last)
                    _mm512_mask_storeu_ps(y + (t0 + r) * s.n_out + P.o, mask,
                                          _mm512_fmadd_ps(a[r], _mm512_set1_ps(sx[t0 + r]), bv));
                else acc[16 * i + r][j] = a[r];
            }
        }
    }
}

// Rows [o_begin, o_end) for T tokens on the tiles, 32 tokens a pass (tokens outer: a pass
// writes its 32 rows of y as it goes along them, where 128 rows at once, each n_out floats
// apart, fell into few cache sets), two panels at a time, AMX_GROUPS groups a step. q4 panels
// are unpacked once for all T tokens into `unpacked` (all the range's panels); q8 panels are
// used as stored, the next two prefetched during the first pass. The tokens of a last pass
// of fewer than 32 are copied into `tail` (AMX_TT rows of xs bytes) and zero-padded. Each
// step is finished one step late, so that the vector work of one overlaps the tiles'
// products of the next, and reads sums stored long before.
template <bool Q4>
static void panels_amx(const uint8_t* w, const float* scales, const QShape& s, const int8_t* xq,
                       const int32_t* corr, const float* sx, int64_t T, const float* bias, float* y,
                       int64_t o_begin, int64_t o_end, __m512i* unpacked, int8_t* tail) {
    const int64_t t_tail = T / AMX_TT * AMX_TT;
    if (t_tail < T) {
        std::memcpy(tail, xq + t_tail * s.xs, (size_t)((T - t_tail) * s.xs));
        std::memset(tail + (T - t_tail) * s.xs, 0, (size_t)((AMX_TT - (T - t_tail)) * s.xs));
    }
    const int64_t p_begin = o_begin / kPanel, p_end = (o_end + kPanel - 1) / kPanel, pstride = s.nb * 16;
    if (Q4)
        for (int64_t p = p_begin; p < p_end; p++)
            unpack_panel_q4<true>(panel_at(w, scales, s, p, o_begin, o_end), s, unpacked + (p - p_begin) * pstride);
    // panel p's blocks: q8 as stored, q4 unpacked (1024 bytes a block either way)
    const uint8_t* pw = Q4 ? (const uint8_t*)unpacked - p_begin * pstride * 64 : w;
    const int64_t pbytes = Q4 ? pstride * 64 : s.panel_bytes;
    alignas(64) int32_t sums[2][AMX_GROUPS][4][256];  // two steps' sums
    __m512 acc[AMX_TT][2];                             // the float sums of the pass and panels being finished
    AmxStep prev{0, 0, 0, 0, 0, 0, -1};
    for (int64_t t = 0; t < T; t += AMX_TT) {
        const int n = (int)(T - t < AMX_TT ? T - t : AMX_TT);
        const int8_t* x = t < t_tail ? xq + t * s.xs : tail;
        for (int64_t p0 = p_begin; p0 < p_end; p0 += 2) {
            const int np = p_end - p0 < 2 ? 1 : 2;
            const uint8_t* pp = pw + p0 * pbytes;
            const uint8_t* ahead = !Q4 && t == 0 && p0 + 3 < p_end ? pp + 2 * pbytes : nullptr;
            for (int64_t g0 = 0; g0 < s.n_groups; g0 += AMX_GROUPS) {
                const int ng = (int)(s.n_groups - g0 < AMX_GROUPS ? s.n_groups - g0 : AMX_GROUPS);
                const int buf = prev.buf == 0 ? 1 : 0;
                if (n > 16) {
                    if (np == 2) amx_sums<Q4, 2, 2>(pp, pbytes, s, x, g0, ng, ahead, sums[buf]);
                    else amx_sums<Q4, 2, 1>(pp, pbytes, s, x, g0, ng, ahead, sums[buf]);
                } else {
                    if (np == 2) amx_sums<Q4, 1, 2>(pp, pbytes, s, x, g0, ng, ahead, sums[buf]);
                    else amx_sums<Q4, 1, 1>(pp, pbytes, s, x, g0, ng, ahead, sums[buf]);
                }
                if (prev.buf >= 0)
                    amx_finish<Q4>(prev, sums[prev.buf], w, scales, s, corr, sx, bias, y, o_begin, o_end, acc);
                prev = {t, p0, g0, n, np, ng, buf};
            }
        }
    }
    amx_finish<Q4>(prev, sums[prev.buf], w, scales, s, corr, sx, bias, y, o_begin, o_end, acc);
}
#endif  // PYGPT_AMX

#else  // AVX2: byte products with vpmaddubsw, or AVX-VNNI's vpdpbusd (avx2vnni)

#if defined(PYGPT_VNNI256)
// acc + the dword products of w (unsigned bytes) and x (signed bytes), AVX-VNNI's
// vpdpbusd on ymm registers. Inline assembly rather than the intrinsic, so that a
// development build (PYGPT_VNNI256_EVEX, CMakeLists.txt) can emit the same instruction in
// its EVEX form (AVX512-VNNI + VL: the same operation) and test this path on an AVX-512 CPU
// that lacks AVX-VNNI, with every other instruction of the path unchanged.
#if defined(PYGPT_VNNI256_EVEX)
#define PYGPT_VPDPBUSD "%{evex%} vpdpbusd"
#else
#define PYGPT_VPDPBUSD "%{vex%} vpdpbusd"
#endif
static inline __m256i dpbusd256(__m256i acc, __m256i w, __m256i x) {
    __asm__(PYGPT_VPDPBUSD " %2, %1, %0" : "+x"(acc) : "x"(w), "x"(x));
    return acc;
}
constexpr int TT_Q = 4;  // tokens per tile: one load (q4: and unpack) serves 4 tokens
#else
constexpr int TT_Q = 2;  // tokens per tile
#endif

// The 4 activation bytes at p, broadcast to every dword.
static inline __m256i bcast4(const int8_t* p) {
    int32_t x;
    std::memcpy(&x, p, 4);
    return _mm256_set1_epi32(x);
}

// Half a stored q4 vector (4 bytes of each of 8 rows) unpacked: its low nibbles (inputs
// 4j..4j+3 of its block) and its high nibbles (inputs 32 + 4j..), one byte each.
static inline void unpack_q4_half(const uint8_t* p, __m256i m4, __m256i* lo, __m256i* hi) {
    const __m256i v = _mm256_loadu_si256((const __m256i*)p);
    *lo = _mm256_and_si256(v, m4);
    *hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), m4);
}

// The lanes of half h of a panel (its rows 8h..8h+7) that the panel's mask covers, as an
// all-ones dword each (the mask of vmaskmovps).
static inline __m256i half_lanes(const Panel& P, int h) {
    const __m256i lane_bits = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
    const __m256i hbits = _mm256_set1_epi32((int)((P.mask >> (8 * h)) & 0xff));
    return _mm256_cmpeq_epi32(_mm256_and_si256(hbits, lane_bits), lane_bits);
}

// H (groups of 32), rows 8h..8h+7 of a panel: vector j (0..7) of group g's weights, as
// stored (unsigned): q4 the low (g even) or high (g odd) nibbles of stored vector j of block
// g / 2, q8 stored vector 8 (g & 1) + j of it.
template <bool Q4>
static inline __m256i group_vector(const Panel& P, const QShape& s, int64_t g, int j, int h) {
    const uint8_t* wb = P.w + (g >> 1) * s.block_bytes + h * 32;
    if (!Q4) return _mm256_loadu_si256((const __m256i*)(wb + (8 * (g & 1) + j) * 64));
    const __m256i v = _mm256_loadu_si256((const __m256i*)(wb + j * 64)), m4 = _mm256_set1_epi8(0x0f);
    return _mm256_and_si256(g & 1 ? _mm256_srli_epi16(v, 4) : v, m4);
}

// H: the int32 sums of group g for TT tokens and NH halves of the panel's rows (h0, then
// h0 + 1: rows 8h..8h+7, one per lane), corr included: iacc[t * NH + k] for half h0 + k.
template <bool Q4, int TT, int NH>
static inline void group_sums(const Panel& P, const QShape& s, int64_t g, int h0, const int8_t* xq,
                              const int32_t* corr, __m256i* iacc) {
    const int8_t* xg = xq + g * 32;
    for (int t = 0; t < TT; t++)
        for (int k = 0; k < NH; k++) iacc[t * NH + k] = _mm256_set1_epi32(corr[t * s.n_groups + g]);
#if defined(PYGPT_VNNI256)
    __m256i iacc2[TT * NH];  // odd vectors: two chains
    for (int i = 0; i < TT * NH; i++) iacc2[i] = _mm256_setzero_si256();
    for (int j = 0; j < 8; j += 2)
        for (int k = 0; k < NH; k++) {
            const __m256i v0 = group_vector<Q4>(P, s, g, j, h0 + k), v1 = group_vector<Q4>(P, s, g, j + 1, h0 + k);
            for (int t = 0; t < TT; t++) {
                iacc[t * NH + k] = dpbusd256(iacc[t * NH + k], v0, bcast4(xg + t * s.xs + 4 * j));
                iacc2[t * NH + k] = dpbusd256(iacc2[t * NH + k], v1, bcast4(xg + t * s.xs + 4 * j + 4));
            }
        }
    for (int i = 0; i < TT * NH; i++) iacc[i] = _mm256_add_epi32(iacc[i], iacc2[i]);
#else
    const __m256i ones = _mm256_set1_epi16(1), flip = _mm256_set1_epi8((char)0x80);
    __m256i s16[TT * NH];  // q4: 8 products of at most 2 * 15 * 127 add up exactly in 16 bits
    for (int i = 0; i < TT * NH; i++) s16[i] = _mm256_setzero_si256();
    for (int j = 0; j < 8; j++)
        for (int k = 0; k < NH; k++) {
            const __m256i v = group_vector<Q4>(P, s, g, j, h0 + k);
            for (int t = 0; t < TT; t++) {
                const __m256i xv = bcast4(xg + t * s.xs + 4 * j);
                __m256i& a = iacc[t * NH + k];
                if (Q4) s16[t * NH + k] = _mm256_add_epi16(s16[t * NH + k], _mm256_maddubs_epi16(v, xv));
                else
                    a = _mm256_add_epi32(a, _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_abs_epi8(xv),
                                                                                   _mm256_sign_epi8(_mm256_xor_si256(v, flip), xv)),
                                                              ones));
            }
        }
    if (Q4)
        for (int i = 0; i < TT * NH; i++) iacc[i] = _mm256_add_epi32(iacc[i], _mm256_madd_epi16(s16[i], ones));
#endif
}

// TT >= 2 tokens (one token: panel_one_token), one panel, 8 rows at a time (half h of each
// stored vector), one row per lane. H (groups of 32, any TT): group by group (group_sums).
// Each half vector (4 bytes of each of 8 rows) is loaded (q4: unpacked) once for the TT
// tokens, against 4 activation bytes broadcast, each row's 4-input product in its lane:
// - AVX-VNNI: vpdpbusd on the stored unsigned bytes (q + 128, or nibbles q + 8), the
//   offset times the activations' sum subtracted through corr, as on AVX-512;
// - AVX2: vpmaddubsw then vpmaddwd by ones. q4: nibbles times activations, pairs of at most
//   2 * 15 * 127 = 3810, so the 8 products of 4 vectors add up exactly in 16 bits first.
//   q8: |x| times w * sign(x) (w = stored ^ 0x80, pairs at most 2 * 127 * 127), widened at
//   once; its sums are the plain signed products, so q8 gets no offset correction (corr = 0).
template <bool Q4, bool H, int TT>
static void panel_tile(const Panel& P, const QShape& s, const int8_t* xq, const int32_t* corr, const float* sx,
                       const float* bias, float* y) {
    const __m256i m4 = _mm256_set1_epi8(0x0f), flip = _mm256_set1_epi8((char)0x80), ones = _mm256_set1_epi16(1);
    for (int h = 0; h < 2; h++) {
        const __m256i lanes = half_lanes(P, h);
        if (_mm256_testz_si256(lanes, lanes)) continue;
        __m256 acc[TT];
        for (int t = 0; t < TT; t++) acc[t] = _mm256_setzero_ps();
        for (int64_t g = 0; H && g < s.n_groups; g++) {
            if (h == 0 && !(g & 1)) prefetch_block_ahead(P, s, g >> 1);
            __m256i iacc[TT];
            group_sums<Q4, TT, 1>(P, s, g, h, xq, corr, iacc);
            const __m256 sc = _mm256_loadu_ps(P.ps + g * 16 + 8 * h);
            for (int t = 0; t < TT; t++) acc[t] = _mm256_fmadd_ps(sc, _mm256_cvtepi32_ps(iacc[t]), acc[t]);
        }
        for (int64_t g = 0, b = 0; !H && g < s.n_groups; g++) {
            __m256i iacc[TT];
            for (int t = 0; t < TT; t++) iacc[t] = _mm256_set1_epi32(corr[t * s.n_groups + g]);
#if defined(PYGPT_VNNI256)
            // a second chain per token (q4: the high nibbles; q8: odd vectors): vpdpbusd's
            // latency over one chain per token bounded a tile of 4 tokens
            __m256i iacc2[TT];
            for (int t = 0; t < TT; t++) iacc2[t] = _mm256_setzero_si256();
#endif
            for (const int64_t b_end = b + s.bpg; b < b_end; b++) {
                if (h == 0) prefetch_block_ahead(P, s, b);
                const uint8_t* wb = P.w + b * s.block_bytes + h * 32;
                const int8_t* xb = xq + b * 64;
#if defined(PYGPT_VNNI256)
                if (Q4) {
                    for (int j = 0; j < 8; j++) {
                        __m256i lo, hi;
                        unpack_q4_half(wb + j * 64, m4, &lo, &hi);
                        for (int t = 0; t < TT; t++) {
                            iacc[t] = dpbusd256(iacc[t], lo, bcast4(xb + t * s.xs + 4 * j));
                            iacc2[t] = dpbusd256(iacc2[t], hi, bcast4(xb + t * s.xs + 32 + 4 * j));
                        }
                    }
                } else {
                    for (int j = 0; j < 16; j += 2) {
                        const __m256i v0 = _mm256_loadu_si256((const __m256i*)(wb + j * 64));
                        const __m256i v1 = _mm256_loadu_si256((const __m256i*)(wb + j * 64 + 64));
                        for (int t = 0; t < TT; t++) {
                            iacc[t] = dpbusd256(iacc[t], v0, bcast4(xb + t * s.xs + 4 * j));
                            iacc2[t] = dpbusd256(iacc2[t], v1, bcast4(xb + t * s.xs + 4 * j + 4));
                        }
                    }
                }
#else
                if (Q4) {
                    for (int j0 = 0; j0 < 8; j0 += 4) {
                        __m256i s16[TT];
                        for (int t = 0; t < TT; t++) s16[t] = _mm256_setzero_si256();
                        for (int j = j0; j < j0 + 4; j++) {
                            __m256i lo, hi;
                            unpack_q4_half(wb + j * 64, m4, &lo, &hi);
                            for (int t = 0; t < TT; t++) {
                                const __m256i pl = _mm256_maddubs_epi16(lo, bcast4(xb + t * s.xs + 4 * j));
                                const __m256i ph = _mm256_maddubs_epi16(hi, bcast4(xb + t * s.xs + 32 + 4 * j));
                                s16[t] = _mm256_add_epi16(_mm256_add_epi16(s16[t], pl), ph);
                            }
                        }
                        for (int t = 0; t < TT; t++) iacc[t] = _mm256_add_epi32(iacc[t], _mm256_madd_epi16(s16[t], ones));
                    }
                } else {
                    for (int j = 0; j < 16; j++) {
                        const __m256i v = _mm256_xor_si256(_mm256_loadu_si256((const __m256i*)(wb + j * 64)), flip);
                        for (int t = 0; t < TT; t++) {
                            const __m256i xv = bcast4(xb + t * s.xs + 4 * j);
                            const __m256i p16 = _mm256_maddubs_epi16(_mm256_abs_epi8(xv), _mm256_sign_epi8(v, xv));
                            iacc[t] = _mm256_add_epi32(iacc[t], _mm256_madd_epi16(p16, ones));
                        }
                    }
                }
#endif
            }
#if defined(PYGPT_VNNI256)
            for (int t = 0; t < TT; t++) iacc[t] = _mm256_add_epi32(iacc[t], iacc2[t]);
#endif
            const __m256 sc = _mm256_loadu_ps(P.ps + g * 16 + 8 * h);
            for (int t = 0; t < TT; t++) acc[t] = _mm256_fmadd_ps(sc, _mm256_cvtepi32_ps(iacc[t]), acc[t]);
        }
        const int64_t o = P.o + 8 * h;
        const __m256 bv = bias ? _mm256_maskload_ps(bias + o, lanes) : _mm256_setzero_ps();
        for (int t = 0; t < TT; t++)
            _mm256_maskstore_ps(y + t * s.n_out + o, lanes, _mm256_fmadd_ps(acc[t], _mm256_set1_ps(sx[t]), bv));
    }
}

// One token (decode), both halves of each stored vector in one pass: the panel is read as
// one stream, once, and each activation broadcast serves its 16 rows. panel_tile's two
// passes, one a half, decoded at 0.74-0.89x this speed (124M, 1-2 threads, int8 and int4;
// avx2vnni 0.73-0.90x). H (groups of 32): group by group, both halves (group_sums).
template <bool Q4, bool H>
static void panel_one_token(const Panel& P, const QShape& s, const int8_t* xq, const int32_t* corr, float sx,
                            const float* bias, float* y) {
    const __m256i m4 = _mm256_set1_epi8(0x0f), flip = _mm256_set1_epi8((char)0x80), ones = _mm256_set1_epi16(1);
    __m256 acc[2] = {_mm256_setzero_ps(), _mm256_setzero_ps()};
    for (int64_t g = 0; H && g < s.n_groups; g++) {
        __m256i iacc[2];
        group_sums<Q4, 1, 2>(P, s, g, 0, xq, corr, iacc);
        for (int h = 0; h < 2; h++)
            acc[h] = _mm256_fmadd_ps(_mm256_loadu_ps(P.ps + g * 16 + 8 * h), _mm256_cvtepi32_ps(iacc[h]), acc[h]);
    }
    for (int64_t g = 0, b = 0; !H && g < s.n_groups; g++) {
        __m256i iacc[2] = {_mm256_set1_epi32(corr[g]), _mm256_set1_epi32(corr[g])};
#if defined(PYGPT_VNNI256)
        __m256i iacc2[2] = {_mm256_setzero_si256(), _mm256_setzero_si256()};  // q4: high nibbles; q8: odd j
#endif
        for (const int64_t b_end = b + s.bpg; b < b_end; b++) {
            const uint8_t* wb = P.w + b * s.block_bytes;
            const int8_t* xb = xq + b * 64;
#if defined(PYGPT_VNNI256)
            if (Q4) {
                for (int j = 0; j < 8; j++) {
                    const __m256i xl = bcast4(xb + 4 * j), xh = bcast4(xb + 32 + 4 * j);
                    for (int h = 0; h < 2; h++) {
                        __m256i lo, hi;
                        unpack_q4_half(wb + j * 64 + 32 * h, m4, &lo, &hi);
                        iacc[h] = dpbusd256(iacc[h], lo, xl);
                        iacc2[h] = dpbusd256(iacc2[h], hi, xh);
                    }
                }
            } else {
                for (int j = 0; j < 16; j += 2) {
                    const __m256i x0 = bcast4(xb + 4 * j), x1 = bcast4(xb + 4 * j + 4);
                    for (int h = 0; h < 2; h++) {
                        iacc[h] = dpbusd256(iacc[h], _mm256_loadu_si256((const __m256i*)(wb + j * 64 + 32 * h)), x0);
                        iacc2[h] =
                            dpbusd256(iacc2[h], _mm256_loadu_si256((const __m256i*)(wb + j * 64 + 64 + 32 * h)), x1);
                    }
                }
            }
#else
            if (Q4) {
                for (int j0 = 0; j0 < 8; j0 += 4) {
                    __m256i s16[2] = {_mm256_setzero_si256(), _mm256_setzero_si256()};
                    for (int j = j0; j < j0 + 4; j++) {
                        const __m256i xl = bcast4(xb + 4 * j), xh = bcast4(xb + 32 + 4 * j);
                        for (int h = 0; h < 2; h++) {
                            __m256i lo, hi;
                            unpack_q4_half(wb + j * 64 + 32 * h, m4, &lo, &hi);
                            s16[h] = _mm256_add_epi16(_mm256_add_epi16(s16[h], _mm256_maddubs_epi16(lo, xl)),
                                                      _mm256_maddubs_epi16(hi, xh));
                        }
                    }
                    for (int h = 0; h < 2; h++) iacc[h] = _mm256_add_epi32(iacc[h], _mm256_madd_epi16(s16[h], ones));
                }
            } else {
                for (int j = 0; j < 16; j++) {
                    const __m256i xv = bcast4(xb + 4 * j), ax = _mm256_abs_epi8(xv);
                    for (int h = 0; h < 2; h++) {
                        const __m256i v = _mm256_loadu_si256((const __m256i*)(wb + j * 64 + 32 * h));
                        const __m256i p16 = _mm256_maddubs_epi16(ax, _mm256_sign_epi8(_mm256_xor_si256(v, flip), xv));
                        iacc[h] = _mm256_add_epi32(iacc[h], _mm256_madd_epi16(p16, ones));
                    }
                }
            }
#endif
        }
#if defined(PYGPT_VNNI256)
        for (int h = 0; h < 2; h++) iacc[h] = _mm256_add_epi32(iacc[h], iacc2[h]);
#endif
        for (int h = 0; h < 2; h++)
            acc[h] = _mm256_fmadd_ps(_mm256_loadu_ps(P.ps + g * 16 + 8 * h), _mm256_cvtepi32_ps(iacc[h]), acc[h]);
    }
    for (int h = 0; h < 2; h++) {
        const __m256i lanes = half_lanes(P, h);
        const int64_t o = P.o + 8 * h;
        const __m256 bv = bias ? _mm256_maskload_ps(bias + o, lanes) : _mm256_setzero_ps();
        _mm256_maskstore_ps(y + o, lanes, _mm256_fmadd_ps(acc[h], _mm256_set1_ps(sx), bv));
    }
}

template <bool Q4, bool H>
static void panels_avx2(const uint8_t* w, const float* scales, const QShape& s, const int8_t* xq,
                        const int32_t* corr, const float* sx, int64_t T, const float* bias, float* y,
                        int64_t o_begin, int64_t o_end) {
    for (int64_t p = o_begin / kPanel; p * kPanel < o_end; p++) {
        const Panel P = panel_at(w, scales, s, p, o_begin, o_end);
        int64_t t = 0;
        for (; t + TT_Q <= T; t += TT_Q)
            panel_tile<Q4, H, TT_Q>(P, s, xq + t * s.xs, corr + t * s.n_groups, sx + t, bias, y + t * s.n_out);
        const int8_t* xt = xq + t * s.xs;
        const int32_t* ct = corr + t * s.n_groups;
        switch (T - t) {
            case 0: break;
            case 1: panel_one_token<Q4, H>(P, s, xt, ct, sx[t], bias, y + t * s.n_out); break;
            case 2: panel_tile<Q4, H, 2>(P, s, xt, ct, sx + t, bias, y + t * s.n_out); break;
            case 3: panel_tile<Q4, H, 3>(P, s, xt, ct, sx + t, bias, y + t * s.n_out); break;
            default: throw std::logic_error("panels_avx2: a tile of at most TT_Q tokens");
        }
    }
}

// generic::quantize_row, zero padding to xs, and per group the correction of the stored
// offset, -offset * (sum of the group's activations): q4's 8, and with VNNI q8's 128 (without
// it q8 multiplies signed bytes and needs none).
static float quantize_row(const float* x, const QShape& s, int offset, int8_t* xq, int32_t* corr) {
#if !defined(PYGPT_VNNI256)
    if (offset == 128) offset = 0;
#endif
    const float sx = generic::quantize_row(x, s.n_in, xq);
    std::memset(xq + s.n_in, 0, s.xs - s.n_in);
    for (int64_t g = 0; g < s.n_groups; g++) {
        int32_t sum = 0;
        if (offset)
            for (int64_t k = g * s.gk; k < (g + 1) * s.gk; k++) sum += xq[k];
        corr[g] = -offset * sum;
    }
    return sx;
}
#endif  // __AVX512F__

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
    const QShape s = quant_shape(m);
    const QPrepared a = quant_prepared(s, T, prep);
    for (int64_t t = r_begin; t < r_end; t++)
        a.sx[t] = quantize_row(x + t * s.n_in, s, s.q4 ? 8 : 128, a.xq + t * s.xs, a.corr + t * s.n_groups);
}

template <bool Q4>
void quant_linear_prepared(const Matrix& m, const float* bias, const void* prep, int64_t T, float* y,
                           int64_t o_begin, int64_t o_end) {
    const QShape s = quant_shape(m);
    const QPrepared a = quant_prepared(s, T, const_cast<void*>(prep));
    const uint8_t* w = (const uint8_t*)m.data;
#if defined(PYGPT_AMX)
    if (use_tiles(s, T)) {
        // this thread's scratch: its q4 panels unpacked, then the last pass's tokens
        const int64_t n_panels = Q4 ? (o_end + kPanel - 1) / kPanel - o_begin / kPanel : 0;
        const size_t unpacked_bytes = (size_t)n_panels * s.nb * 16 * 64;
        uint8_t* scratch = (uint8_t*)thread_scratch(0, unpacked_bytes + (size_t)AMX_TT * s.xs);
        if (!scratch) throw std::bad_alloc();
        configure_tiles();
        const int64_t tb = token_block(s.xs + s.n_groups * 4, AMX_TT);
        for (int64_t t0 = 0; t0 < T; t0 += tb)
            panels_amx<Q4>(w, m.scales, s, a.xq + t0 * s.xs, a.corr + t0 * s.n_groups, a.sx + t0,
                           T - t0 < tb ? T - t0 : tb, bias, y + t0 * s.n_out, o_begin, o_end, (__m512i*)scratch,
                           (int8_t*)(scratch + unpacked_bytes));
        _tile_release();
        return;
    }
#endif
    const int64_t tb = token_block(s.xs + s.n_groups * 4, TT_Q);
#if defined(__AVX512F__)
    __m512i* unpacked = nullptr;  // this thread's scratch for NP_Q unpacked q4 panels
    if (Q4 && T > FEW_TOKENS && !(unpacked = (__m512i*)thread_scratch(0, (size_t)NP_Q * s.nb * 16 * 64)))
        throw std::bad_alloc();
#endif
    for (int64_t t0 = 0; t0 < T; t0 += tb) {
        const int64_t nt = T - t0 < tb ? T - t0 : tb;
        const int8_t* xq0 = a.xq + t0 * s.xs;
        const int32_t* c0 = a.corr + t0 * s.n_groups;
        const float* sx0 = a.sx + t0;
        float* y0 = y + t0 * s.n_out;
#if defined(__AVX512F__)
        if (nt <= FEW_TOKENS) {
            if (s.half) panels_few<Q4, true>(w, m.scales, s, xq0, c0, sx0, nt, bias, y0, o_begin, o_end);
            else panels_few<Q4, false>(w, m.scales, s, xq0, c0, sx0, nt, bias, y0, o_begin, o_end);
        }
        else panels_many<Q4>(w, m.scales, s, xq0, c0, sx0, nt, bias, y0, o_begin, o_end, unpacked);
#else
        if (s.half) panels_avx2<Q4, true>(w, m.scales, s, xq0, c0, sx0, nt, bias, y0, o_begin, o_end);
        else panels_avx2<Q4, false>(w, m.scales, s, xq0, c0, sx0, nt, bias, y0, o_begin, o_end);
#endif
    }
}

}  // namespace

size_t quant_prepared_bytes(const Matrix& m, int64_t T) {
    generic::check_quant(m);
    return quant_prepared_bytes(quant_shape(m), T);
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

}  // namespace simd
}  // namespace PYGPT_KERNEL_NS
}  // namespace pygpt

#endif  // __AVX2__
