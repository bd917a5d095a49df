// Linear layers with float weights (f32, f16, bf16) on AArch64 NEON (the neon path; x86
// has linear_float.cpp). The same shapes as there, at 4 lanes:
//   T = 1     two rows at a time, one after the other (8 FMA chains, one stream a row);
//   T > 1     tiles of 2 rows x 3 tokens (24 accumulators of 32 registers), each weight
//             vector loaded (and widened) once per tile and used for its 3 tokens; a row
//             pair's weights stay in L1 while the token tiles pass.
// f16 and bf16 weights are widened to f32 as they are loaded (FCVTL; bf16 by a shift): the
// activations stay f32 on this path.
//
// Lane contract (simd.h), with 16 lanes held in 4 vectors: an output accumulates in
// a[0..3], a[c] lane l summing inputs k = 4c + l (mod 16) in increasing k by FMA, the tail
// zero-filled; then the tree (l, l+8), (l, l+4), (l, l+2), (0, 1). Every tile shape runs
// the same steps for an output, so y[t, o] does not depend on T, the tile or the rows a
// thread was given.
#include <cstring>
#include <stdexcept>

#include "kernels.h"
#include "kernels/linear.h"
#include "kernels/simd.h"

#if defined(PYGPT_NEON)
#include <arm_neon.h>

namespace pygpt {
namespace PYGPT_KERNEL_NS {
namespace simd {

namespace {

constexpr int64_t K = 16;  // inputs per step: 4 vectors of 4 lanes

// Weight types: 4 weights at w + k widened to f32, and the bytes of one weight.
struct WF32 {
    static constexpr int BYTES = 4;
    static float32x4_t load4(const void* w, int64_t k) { return vld1q_f32((const float*)w + k); }
};
struct WF16 {
    static constexpr int BYTES = 2;
    static float32x4_t load4(const void* w, int64_t k) {
        return vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16((const uint16_t*)w + k)));
    }
};
struct WBF16 {
    static constexpr int BYTES = 2;
    static float32x4_t load4(const void* w, int64_t k) {
        return vreinterpretq_f32_u32(vshll_n_u16(vld1_u16((const uint16_t*)w + k), 16));
    }
};

// The tail of a row (n < 16 weights from k), zero-padded to 16, in a buffer of the row's
// own type: the same load4 then widens it.
template <class W>
static const void* pad_tail(const uint8_t* row, int64_t k, int64_t n, uint8_t* buf) {
    std::memset(buf, 0, K * W::BYTES);
    std::memcpy(buf, row + k * W::BYTES, n * W::BYTES);
    return buf;
}

// The lane tree of simd.h over the 16 lanes of a[0..3].
static inline float reduce16(const float32x4_t* a) {
    const float32x4_t h = vaddq_f32(vaddq_f32(a[0], a[2]), vaddq_f32(a[1], a[3]));  // (l, l+8), (l, l+4)
    const float32x4_t q = vaddq_f32(h, vextq_f32(h, h, 2));                           // (l, l+2)
    return vgetq_lane_f32(q, 0) + vgetq_lane_f32(q, 1);                              // (0, 1)
}

// R rows (w, w_stride bytes apart) x TT tokens (x, rows kp apart, zero-padded to kp):
// y[t * ldy + r] = row r . token t + bias[r].
template <class W, int R, int TT>
static void float_tile(const uint8_t* w, int64_t w_stride, const float* x, int64_t kp, int64_t n_in,
                       const float* bias, float* y, int64_t ldy) {
    float32x4_t acc[TT][R][4];
    for (int t = 0; t < TT; t++)
        for (int r = 0; r < R; r++)
            for (int c = 0; c < 4; c++) acc[t][r][c] = vdupq_n_f32(0.0f);
    const int64_t full = n_in / K * K;
    auto step = [&](const void* const* rows, int64_t kw, int64_t kx) {
        for (int c = 0; c < 4; c++) {
            float32x4_t wv[R];
            for (int r = 0; r < R; r++) wv[r] = W::load4(rows[r], kw + 4 * c);
            for (int t = 0; t < TT; t++) {
                const float32x4_t xv = vld1q_f32(x + t * kp + kx + 4 * c);
                for (int r = 0; r < R; r++) acc[t][r][c] = vfmaq_f32(acc[t][r][c], wv[r], xv);
            }
        }
    };
    const void* rows[R];
    for (int r = 0; r < R; r++) rows[r] = w + r * w_stride;
    for (int64_t k = 0; k < full; k += K) step(rows, k, k);
    if (full < n_in) {
        uint8_t buf[R][K * 4];
        const void* tails[R];
        for (int r = 0; r < R; r++) tails[r] = pad_tail<W>(w + r * w_stride, full, n_in - full, buf[r]);
        step(tails, 0, full);
    }
    for (int t = 0; t < TT; t++)
        for (int r = 0; r < R; r++) y[t * ldy + r] = reduce16(acc[t][r]) + (bias ? bias[r] : 0.0f);
}

constexpr int R_T = 2, TT_T = 3;  // the prompt tile

// Rows [o_begin, o_end) for T tokens of prepared activations xp.
template <class W>
static void float_rows(const uint8_t* w, int64_t n_in, const float* xp, int64_t kp, int64_t T, const float* bias,
                       float* y, int64_t n_out, int64_t o_begin, int64_t o_end) {
    const int64_t w_stride = n_in * W::BYTES;
    for (int64_t o = o_begin; o < o_end; o += R_T) {
        const uint8_t* wo = w + o * w_stride;
        const float* bo = bias ? bias + o : nullptr;
        const bool pair = o + R_T <= o_end;
        int64_t t = 0;
        for (; t + TT_T <= T; t += TT_T) {
            if (pair) float_tile<W, R_T, TT_T>(wo, w_stride, xp + t * kp, kp, n_in, bo, y + t * n_out + o, n_out);
            else float_tile<W, 1, TT_T>(wo, w_stride, xp + t * kp, kp, n_in, bo, y + t * n_out + o, n_out);
        }
        for (; t < T; t++) {
            if (pair) float_tile<W, R_T, 1>(wo, w_stride, xp + t * kp, kp, n_in, bo, y + t * n_out + o, n_out);
            else float_tile<W, 1, 1>(wo, w_stride, xp + t * kp, kp, n_in, bo, y + t * n_out + o, n_out);
        }
    }
}


}  // namespace

// Prepared activations: the f32 rows, each zero-padded to a multiple of 16.
size_t float_prepared_bytes(const Matrix& m, int64_t T) {
    return (size_t)round_up(T * round_up(m.n_in, K) * (int64_t)sizeof(float), 64);
}

void float_prepare(const Matrix& m, const float* x, int64_t T, int64_t r_begin, int64_t r_end, void* prep) {
    (void)T;
    const int64_t n_in = m.n_in, kp = round_up(n_in, K);
    for (int64_t t = r_begin; t < r_end; t++) {
        float* out = (float*)prep + t * kp;
        std::memcpy(out, x + t * n_in, n_in * sizeof(float));
        std::memset(out + n_in, 0, (kp - n_in) * sizeof(float));
    }
}

void float_linear_prepared(const Matrix& m, const float* bias, const void* prep, int64_t T, float* y,
                           int64_t o_begin, int64_t o_end) {
    on_float_weight<WF32, WF16, WBF16>(m, [&](auto w) {
        float_rows<decltype(w)>((const uint8_t*)m.data, m.n_in, (const float*)prep, round_up(m.n_in, K), T, bias, y,
                                m.n_out, o_begin, o_end);
    });
}

void linear_float(const Matrix& m, const float* bias, const float* x, int64_t T, float* y, int64_t o_begin,
                  int64_t o_end) {
    linear_self_prepared(m, bias, x, T, y, o_begin, o_end);
}

// Any split of the rows: each is prepared on its own.
int64_t prepare_rows() { return 1; }

}  // namespace simd
}  // namespace PYGPT_KERNEL_NS
}  // namespace pygpt

#endif  // PYGPT_NEON
