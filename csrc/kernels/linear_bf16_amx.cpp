// bf16 weights on AMX tiles (the amx path: AMX-BF16's TDPBF16PS, Sapphire Rapids and later).
//
// A tile product C += A B multiplies A, 16 rows of 32 bf16 (64 bytes each), by B, 16 rows of
// 16 pairs of bf16, into C, 16 x 16 f32: C[m][n] += sum over pairs p of A[m][2p] B[p][2n] +
// A[m][2p + 1] B[p][2n + 1]. Here A is 16 weight rows (a panel) over 32 inputs, loaded as
// stored (row-major bf16, rows n_in * 2 bytes apart: no repacking of the weights), and B is
// 16 tokens' activations over the same 32 inputs, rounded to bf16 and laid out by prepare as
// B wants them (pairs of inputs of one token side by side); C is then the panel's outputs by
// token, transposed into y.
//
// Determinism: every token count of a layer runs on the tiles (decode, batched decode and
// prompts alike: streaming a panel's 16 rows through the tiles read the weights from DRAM
// about as fast as vdpbf16ps's one row at a time, BENCHMARKS.md), one C accumulator per output
// chained over the inputs 32 at a time in increasing order, from zero. An output's bits depend
// on its own weight row and token only (not on its place in the tile, the other tokens or
// how many there are: tested), so the batch-invariance contract of kernels.h holds. They are
// not vdpbf16ps's bits (the tile sums its 32 products in its own order), so a layer runs on
// the tiles at every T or at none: those whose inputs are a multiple of 32 (bf16_tiles).
#include <cstring>
#include <new>

#include "kernels.h"
#include "kernels/linear.h"
#include "kernels/simd.h"

#if defined(PYGPT_AMX)

namespace pygpt {
namespace PYGPT_KERNEL_NS {
namespace simd {

namespace {
constexpr int64_t BLOCK = 16;  // tokens per B tile (a block), and rows per A tile (a panel)
constexpr int64_t STEP = 32;   // inputs per tile product

// The activations of T tokens, prepared: blocks of `width` tokens, width = T below 16
// tokens, else 16 with the last block zero-padded; block b at b * width * n_in / 2 pairs, its
// pair p of token j at p * width + j (a pair: two bf16 in a uint32). A block's `width` pairs
// from p = 16 c on are then the B tile of inputs [32 c, 32 c + 32), in one piece.
inline int64_t block_width(int64_t T) { return T < BLOCK ? T : BLOCK; }
inline int64_t padded_tokens(int64_t T) { return T > 0 ? round_up(T, block_width(T)) : 0; }

// Tiles 0, 1: B (16 pairs of `width` tokens); 2, 3: A (16 weight rows of 32 inputs); 4-7: C
// (16 outputs by `width` tokens).
inline void configure_bf16_tiles(int64_t width) {
    TileConfig c;
    for (int i = 0; i < 8; i++) {
        c.colsb[i] = (uint16_t)(i == 2 || i == 3 ? 64 : 4 * width);
        c.rows[i] = 16;
    }
    _tile_loadconfig(&c);
}

// out[i][j] = in[j][i] for a 16 x 16 block of floats (in: 16 rows of 16, 64 bytes apart).
inline void transpose16(const float* in, __m512 (&out)[16]) {
    __m512 a[16], b[16];
    for (int k = 0; k < 8; k++) {  // pairs of rows interleaved within each 128-bit lane
        const __m512 r0 = _mm512_load_ps(in + 32 * k), r1 = _mm512_load_ps(in + 32 * k + 16);
        a[2 * k] = _mm512_unpacklo_ps(r0, r1);
        a[2 * k + 1] = _mm512_unpackhi_ps(r0, r1);
    }
    // b[4k + e], lane L: rows 4k .. 4k + 3 of column 4L + e
    for (int k = 0; k < 4; k++) {
        const __m512d a0 = _mm512_castps_pd(a[4 * k]), a1 = _mm512_castps_pd(a[4 * k + 1]);
        const __m512d a2 = _mm512_castps_pd(a[4 * k + 2]), a3 = _mm512_castps_pd(a[4 * k + 3]);
        b[4 * k] = _mm512_castpd_ps(_mm512_unpacklo_pd(a0, a2));
        b[4 * k + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a0, a2));
        b[4 * k + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(a1, a3));
        b[4 * k + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(a1, a3));
    }
    for (int e = 0; e < 4; e++) {  // the 4 x 4 transpose of 128-bit lanes
        const __m512 s0 = _mm512_shuffle_f32x4(b[e], b[4 + e], 0x44), s1 = _mm512_shuffle_f32x4(b[e], b[4 + e], 0xEE);
        const __m512 s2 = _mm512_shuffle_f32x4(b[8 + e], b[12 + e], 0x44);
        const __m512 s3 = _mm512_shuffle_f32x4(b[8 + e], b[12 + e], 0xEE);
        out[e] = _mm512_shuffle_f32x4(s0, s2, 0x88);
        out[4 + e] = _mm512_shuffle_f32x4(s0, s2, 0xDD);
        out[8 + e] = _mm512_shuffle_f32x4(s1, s3, 0x88);
        out[12 + e] = _mm512_shuffle_f32x4(s1, s3, 0xDD);
    }
}

// y[t, o + m] = c[m][t] + bias[o + m] for m < rows, t < tokens (c: a C tile stored with rows
// 64 bytes apart, or where `column`, a tile of one token stored 4 bytes apart: its column).
inline void write_outputs(const float* c, bool column, int rows, int tokens, const float* bias, float* y,
                          int64_t ldy) {
    const __mmask16 mask = rows >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << rows) - 1);
    const __m512 b = bias ? _mm512_maskz_loadu_ps(mask, bias) : _mm512_setzero_ps();
    if (column) {
        _mm512_mask_storeu_ps(y, mask, _mm512_add_ps(_mm512_load_ps(c), b));
        return;
    }
    __m512 col[16];
    transpose16(c, col);
    for (int t = 0; t < tokens; t++) _mm512_mask_storeu_ps(y + t * ldy, mask, _mm512_add_ps(col[t], b));
}

// Lines [l0, l0 + n) of `ahead` (none past `lines`, none if null) prefetched into L2.
inline void prefetch_lines(const char* ahead, int64_t l0, int64_t n, int64_t lines) {
    if (!ahead) return;
    for (int64_t l = l0, e = l0 + n < lines ? l0 + n : lines; l < e; l++) _mm_prefetch(ahead + l * 64, _MM_HINT_T1);
}

// C tile 4 + 2i + j = panel j (A: tile 2 + j) x block i (B: tile i) over the steps [s0, s1)
// of 32 inputs: NP panels (16 rows w_stride bytes apart from p0, p1) by NB blocks of tokens
// (b0, b1; the 16 pairs of a step b_stride bytes apart). The tiles start from zero (s0 == 0)
// or from c (the sums so far: a float stored and loaded back is the same float, so the
// chain of each output is the same however the steps are cut) and end in c[2i + j] (rows
// c_stride bytes apart). With each step it prefetches into L2 the lines
// [line0 + (s - s0) * per_step, + per_step) of `ahead` (at most ahead_lines; none if null).
// Templates: the tile intrinsics take their registers as constants.
template <int NB, int NP>
void panel_products(const uint16_t* p0, const uint16_t* p1, int64_t w_stride, const uint32_t* b0,
                    const uint32_t* b1, int64_t b_stride, int64_t s0, int64_t s1, float (*c)[256],
                    int64_t c_stride, const char* ahead, int64_t ahead_lines, int64_t line0, int64_t per_step) {
    if (s0 == 0) {
        _tile_zero(4);
        if (NP == 2) _tile_zero(5);
        if (NB == 2) _tile_zero(6);
        if (NB == 2 && NP == 2) _tile_zero(7);
    } else {
        _tile_loadd(4, c[0], c_stride);
        if (NP == 2) _tile_loadd(5, c[1], c_stride);
        if (NB == 2) _tile_loadd(6, c[2], c_stride);
        if (NB == 2 && NP == 2) _tile_loadd(7, c[3], c_stride);
    }
    const int64_t b_step = b_stride / 4 * 16;  // uint32 pairs of a step
    if (NB == 2 && NP == 2) {
        // Each tile loaded for the next step right after its last product of this step:
        // the tiles are not renamed, so a load waits for the products reading the tile
        // before it, and loads issued early overlap the products still to come.
        _tile_loadd(2, p0 + s0 * STEP, w_stride);
        _tile_loadd(0, b0 + s0 * b_step, b_stride);
        _tile_loadd(3, p1 + s0 * STEP, w_stride);
        _tile_loadd(1, b1 + s0 * b_step, b_stride);
        for (int64_t s = s0; s < s1; s++) {
            prefetch_lines(ahead, line0 + (s - s0) * per_step, per_step, ahead_lines);
            const bool more = s + 1 < s1;
            _tile_dpbf16ps(4, 2, 0);
            _tile_dpbf16ps(5, 3, 0);
            if (more) _tile_loadd(0, b0 + (s + 1) * b_step, b_stride);
            _tile_dpbf16ps(6, 2, 1);
            if (more) _tile_loadd(2, p0 + (s + 1) * STEP, w_stride);
            _tile_dpbf16ps(7, 3, 1);
            if (more) {
                _tile_loadd(3, p1 + (s + 1) * STEP, w_stride);
                _tile_loadd(1, b1 + (s + 1) * b_step, b_stride);
            }
        }
    } else {
        for (int64_t s = s0; s < s1; s++) {
            prefetch_lines(ahead, line0 + (s - s0) * per_step, per_step, ahead_lines);
            _tile_loadd(2, p0 + s * STEP, w_stride);
            _tile_loadd(0, b0 + s * b_step, b_stride);
            _tile_dpbf16ps(4, 2, 0);
            if (NP == 2) {
                _tile_loadd(3, p1 + s * STEP, w_stride);
                _tile_dpbf16ps(5, 3, 0);
            }
            if (NB == 2) {
                _tile_loadd(1, b1 + s * b_step, b_stride);
                _tile_dpbf16ps(6, 2, 1);
                if (NP == 2) _tile_dpbf16ps(7, 3, 1);
            }
        }
    }
    _tile_stored(4, c[0], c_stride);
    if (NP == 2) _tile_stored(5, c[1], c_stride);
    if (NB == 2) _tile_stored(6, c[2], c_stride);
    if (NB == 2 && NP == 2) _tile_stored(7, c[3], c_stride);
}
}  // namespace

bool bf16_tiles(const Matrix& m) { return m.dtype == DType::BF16 && m.n_in > 0 && m.n_in % STEP == 0; }

size_t bf16_tiles_prepared_bytes(const Matrix& m, int64_t T) {
    return (size_t)(padded_tokens(T) * m.n_in * 2);
}

void bf16_tiles_prepare(const Matrix& m, const float* x, int64_t T, int64_t r_begin, int64_t r_end, void* prep) {
    const int64_t n_in = m.n_in, width = block_width(T);
    uint32_t* out = (uint32_t*)prep;
    const __m512i column = _mm512_mullo_epi32(_mm512_set1_epi32((int)width),
                                              _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15));
    alignas(64) float pairs[16][16];
    for (int64_t t = r_begin; t < r_end;) {
        if (width == BLOCK && t % BLOCK == 0 && t + BLOCK <= r_end) {
            // a whole block: a step's 16 pairs of each of its tokens, transposed (a 64 x 768
            // layer at 128 tokens took half the time it took with every token scattered)
            uint32_t* o = out + t * (n_in / 2);
            for (int64_t k = 0; k < n_in; k += STEP) {
                for (int j = 0; j < 16; j++) {
                    const float* xt = x + (t + j) * n_in + k;
                    _mm512_store_ps(pairs[j],
                                    (__m512)_mm512_cvtne2ps_pbh(_mm512_loadu_ps(xt + 16), _mm512_loadu_ps(xt)));
                }
                __m512 rows[16];
                transpose16(pairs[0], rows);
                for (int p = 0; p < 16; p++) _mm512_storeu_ps((float*)(o + (k / 2 + p) * BLOCK), rows[p]);
            }
            t += BLOCK;
            continue;
        }
        // token t's pairs, 16 a step (rounded to nearest even, as pack_tile rounds them for
        // vdpbf16ps), down its column of the block
        uint32_t* o = out + t / width * width * (n_in / 2) + t % width;
        const float* xt = x + t * n_in;
        for (int64_t k = 0; k < n_in; k += STEP) {
            const __m512i step_pairs =
                (__m512i)_mm512_cvtne2ps_pbh(_mm512_loadu_ps(xt + k + 16), _mm512_loadu_ps(xt + k));
            if (width == 1) _mm512_storeu_si512(o + k / 2, step_pairs);
            else _mm512_i32scatter_epi32(o + k / 2 * width, column, step_pairs, 4);
        }
        t++;
    }
    if (r_end == T && padded_tokens(T) > T) {  // the last block's missing tokens: zeros
        const int64_t t = T % width;
        const __mmask16 pad = (__mmask16)(0xFFFF << t);
        uint32_t* o = out + T / width * width * (n_in / 2);
        for (int64_t p = 0; p < n_in / 2; p++) _mm512_mask_storeu_epi32(o + p * width, pad, _mm512_setzero_si512());
    }
}

void bf16_tiles_linear_prepared(const Matrix& m, const float* bias, const void* prep, int64_t T, float* y,
                                int64_t o_begin, int64_t o_end) {
    const int64_t n_in = m.n_in, n_out = m.n_out, w_stride = n_in * 2, n_steps = n_in / STEP;
    const int64_t width = block_width(T), block_pairs = width * (n_in / 2), b_stride = width * 4;
    const uint16_t* w = (const uint16_t*)m.data;
    const uint32_t* xp = (const uint32_t*)prep;
    // Below 16 tokens (decode, batched decode): one panel at a time over all the inputs (16
    // rows streamed from DRAM side by side ran faster than 32). Prompts: two panels by two
    // blocks, the inputs in chunks of K_STEPS steps, each chunk of the two panels (16 KiB)
    // kept in L1 while every pass of 32 tokens runs over it, its sums stored between chunks
    // (all of a pass's operands from L2 would take 64 bytes a cycle to keep up with the
    // products; one layer ran 1.2x with chunks of 8 steps, BENCHMARKS.md).
    const bool prompt = T > BLOCK;
    const int panels = prompt ? 2 : 1;
    constexpr int64_t K_STEPS = 8;
    const int64_t k_steps = prompt ? K_STEPS : n_steps;
    const int64_t tb = token_block(n_in * 2, 2 * BLOCK);  // tokens whose activations stay in L2
    const int64_t max_passes = ((T < tb ? T : tb) + 2 * width - 1) / (2 * width);
    const int64_t c_stride = width == 1 ? 4 : 64;
    // This thread's scratch: the sums of every pass of a token block (4 tiles each), then the
    // range's last panel where it reaches past the matrix's last row, its rows copied once and
    // zero-padded to 16.
    const size_t c_bytes = (size_t)2 * max_passes * 4 * 256 * sizeof(float);
    const int64_t o_last = o_begin + (o_end - 1 - o_begin) / BLOCK * BLOCK;
    const bool needs_last = o_last + BLOCK > n_out;
    char* scratch = (char*)thread_scratch(0, c_bytes + (needs_last ? (size_t)(BLOCK * w_stride) : 0));
    if (!scratch) throw std::bad_alloc();
    float(*sums)[4][256] = (float(*)[4][256])scratch;  // two sets of max_passes passes' sums
    uint16_t* last = needs_last ? (uint16_t*)(scratch + c_bytes) : nullptr;
    if (needs_last) {
        std::memset(last, 0, (size_t)(BLOCK * w_stride));
        std::memcpy(last, w + o_last * n_in, (size_t)((n_out - o_last) * w_stride));
    }
    // The sums of the panels done last, written to y a share at a time while the tiles run
    // the next ones (the transposes and stores overlap the tile products, which took turns
    // with them before: 9% of a prompt layer's time): tile q = 4 i + 2 b + j of set `set`
    // is pass i's block b by panel j.
    struct Pending {
        int64_t o, t0, t_end, next, count;
        int np, set;
    } pending{0, 0, 0, 0, 0, 1, 0};
    auto write_pending = [&](int64_t upto) {
        for (; pending.next < upto; pending.next++) {
            const int64_t q = pending.next, i = q / 4, b = q / 2 % 2, j = q % 2;
            const int64_t t = pending.t0 + i * 2 * width + b * width, oj = pending.o + j * BLOCK;
            if (t >= pending.t_end || j >= pending.np) continue;
            const int rows = (int)(o_end - oj < BLOCK ? o_end - oj : BLOCK);
            const int tokens = (int)(pending.t_end - t < width ? pending.t_end - t : width);
            write_outputs(sums[pending.set * max_passes + i][2 * b + j], width == 1, rows, tokens,
                          bias ? bias + oj : nullptr, y + t * n_out + oj, n_out);
        }
    };
    configure_bf16_tiles(width);
    for (int64_t t0 = 0; t0 < T; t0 += tb) {
        const int64_t t_end = t0 + tb < T ? t0 + tb : T;
        const int64_t passes = (t_end - t0 + 2 * width - 1) / (2 * width);
        const int64_t n_calls = (n_steps + k_steps - 1) / k_steps * passes;
        for (int64_t o = o_begin; o < o_end; o += panels * BLOCK) {
            const int np = panels == 2 && o_end - o > BLOCK ? 2 : 1;
            const int set = 1 - pending.set;
            const uint16_t* panel[2] = {w + o * n_in, np == 2 ? w + (o + BLOCK) * n_in : nullptr};
            for (int j = 0; j < np; j++)
                if (o + j * BLOCK == o_last && needs_last) panel[j] = last;
            // The next panels' rows (one piece of memory; two panels for prompts, one below
            // 16 tokens) prefetched into L2 while these run, spread evenly over their passes
            // and chunks (124M bf16 decode, alternating processes: 1.05-1.09x at 2 threads,
            // 1.02x at 1, batch-8 1.14x, against the hardware prefetchers alone; two panels
            // ahead 1.03x)
            const int64_t o_next = o + panels * BLOCK;
            const int64_t next_end = o_next + panels * BLOCK < o_end ? o_next + panels * BLOCK : o_end;
            const char* ahead = o_next < o_end ? (const char*)(w + o_next * n_in) : nullptr;
            const int64_t ahead_lines = ahead ? (next_end - o_next) * w_stride / 64 : 0;
            const int64_t per_step = (ahead_lines + passes * n_steps - 1) / (passes * n_steps);
            int64_t call = 0;
            for (int64_t s0 = 0; s0 < n_steps; s0 += k_steps) {
                const int64_t s1 = s0 + k_steps < n_steps ? s0 + k_steps : n_steps;
                for (int64_t i = 0; i < passes; i++) {
                    const int64_t t = t0 + i * 2 * width;
                    const int nb = t_end - t > width ? 2 : 1;
                    const uint32_t* b0 = xp + t / width * block_pairs;
                    const uint32_t* b1 = b0 + block_pairs;
                    const int64_t line0 = (s0 * passes + i * (s1 - s0)) * per_step;
                    float(*c)[256] = sums[set * max_passes + i];
                    if (nb == 2 && np == 2)
                        panel_products<2, 2>(panel[0], panel[1], w_stride, b0, b1, b_stride, s0, s1, c, c_stride,
                                             ahead, ahead_lines, line0, per_step);
                    else if (nb == 2)
                        panel_products<2, 1>(panel[0], panel[1], w_stride, b0, b1, b_stride, s0, s1, c, c_stride,
                                             ahead, ahead_lines, line0, per_step);
                    else if (np == 2)
                        panel_products<1, 2>(panel[0], panel[1], w_stride, b0, b1, b_stride, s0, s1, c, c_stride,
                                             ahead, ahead_lines, line0, per_step);
                    else
                        panel_products<1, 1>(panel[0], panel[1], w_stride, b0, b1, b_stride, s0, s1, c, c_stride,
                                             ahead, ahead_lines, line0, per_step);
                    call++;
                    write_pending((pending.count * call + n_calls - 1) / n_calls);
                }
            }
            write_pending(pending.count);
            pending = {o, t0, t_end, 0, passes * 4, np, set};
        }
        write_pending(pending.count);
        pending.count = 0;
    }
    _tile_release();
}

}  // namespace simd
}  // namespace PYGPT_KERNEL_NS
}  // namespace pygpt

#endif  // PYGPT_AMX
