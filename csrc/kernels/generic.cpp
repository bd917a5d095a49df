// Portable kernels in plain C++. Compiled once per ISA (see CMakeLists.txt): the compiler
// vectorises the fixed-width lane loops with that ISA's registers. They are the reference
// the hand-written kernels are tested against, and the scalar path's implementation. The
// NEON paths also run them for what has no NEON kernel; there (PYGPT_NEON) two helpers use
// what the compiler cannot vectorise from libm: the f16 conversion and the softmax's exp.
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <type_traits>
#include <cstdlib>

#include "kernels.h"
#include "kernels/generic.h"
#include "kernels/neon.h"

namespace pygpt {
namespace PYGPT_KERNEL_NS {
namespace generic {

// Dot product with a fixed lane structure: 16 partial sums over i mod 16, reduced in a
// fixed order, so the result does not depend on how callers split their work.
float dot(const float* a, const float* b, int64_t n) {
    constexpr int L = 16;
    float acc[L] = {0};
    int64_t i = 0;
    for (; i + L <= n; i += L)
        for (int l = 0; l < L; l++) acc[l] += a[i + l] * b[i + l];
    for (int l = 0; i < n; i++, l++) acc[l] += a[i] * b[i];
    for (int s = L / 2; s > 0; s /= 2)
        for (int l = 0; l < s; l++) acc[l] += acc[l + s];
    return acc[0];
}

float f16_to_f32(uint16_t h) {
#if defined(PYGPT_NEON)
    // AArch64 converts in hardware (FCVT): the same value for every half but a signalling
    // NaN (quieted), and vectorisable in the attention and row loops of the neon path
    __fp16 f;
    std::memcpy(&f, &h, 2);
    return (float)f;
#else
    // without branches, so that the row loops over it vectorise: subnormals (exponent 0)
    // as m * 2^-24, computed exactly and a normal float (no subnormal arithmetic, so the
    // same under flush-to-zero modes); infinities and NaNs (exponent 31) keep their payload
    const uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, mant = h & 0x3ff;
    const float sub = (float)(int32_t)mant * 0x1p-24f;
    uint32_t sub_bits;
    std::memcpy(&sub_bits, &sub, 4);
    // exponent 1..30 -> 113..142; 31 -> 255 (arithmetic and masks rather than ?:, which GCC
    // leaves as branches here)
    const uint32_t bits = ((exp + 127 - 15 + (127 - 15) * (uint32_t)(exp == 31)) << 23) | (mant << 13);
    const uint32_t sub_mask = 0u - (uint32_t)(exp == 0);
    float f;
    const uint32_t out = sign | (sub_bits & sub_mask) | (bits & ~sub_mask);
    std::memcpy(&f, &out, 4);
    return f;
#endif
}

float bf16_to_f32(uint16_t h) {
    uint32_t bits = (uint32_t)h << 16;
    float f;
    std::memcpy(&f, &bits, 4);
    return f;
}

void matrix_row(const Matrix& w, int64_t row, float* out) {
    const int64_t n = w.n_in;
    switch (w.dtype) {
        case DType::F32:
            std::memcpy(out, (const float*)w.data + row * n, n * sizeof(float));
            return;
        case DType::F16: {
            const uint16_t* src = (const uint16_t*)w.data + row * n;
            for (int64_t i = 0; i < n; i++) out[i] = f16_to_f32(src[i]);
            return;
        }
        case DType::BF16: {
            const uint16_t* src = (const uint16_t*)w.data + row * n;
            for (int64_t i = 0; i < n; i++) out[i] = bf16_to_f32(src[i]);
            return;
        }
        case DType::Q8:
        case DType::Q4: {
            check_quant(w);
            int8_t* q = (int8_t*)std::malloc(quant_row_bytes(w));
            if (!q) throw std::bad_alloc();
            quant_row(w, row, q);
            for (int64_t k = 0; k < n; k++) out[k] = (float)q[k] * quant_scale(w, row, k / w.group);
            std::free(q);
            return;
        }
        default:
            throw std::invalid_argument("matrix_row: unsupported weight dtype");
    }
}

void check_quant(const Matrix& w) {
    if (w.dtype != DType::Q8 && w.dtype != DType::Q4) throw std::invalid_argument("not a quantized matrix");
    if (!w.scales || !quant_group_fits(w.group, w.n_in))
        throw std::invalid_argument(
            "quantized matrix: group size must be n_in, a multiple of 64 dividing n_in, or 32 (n_in a multiple of 64)");
}

// Panels of 16 rows (docs/FORMAT.md); per block of 64 inputs, runs of 64 bytes, run j
// holding 4 bytes per row (row r at 4r). q8: 16 runs, byte i = input 4j + i as w + 128.
// q4: 8 runs, byte i = input 4j + i (low nibble) and input 32 + 4j + i (high nibble), as w + 8.
int64_t quant_row_bytes(const Matrix& w) {
    return (w.n_in + 63) / 64 * 64;
}

// A row is read a block at a time: its 4 bytes of each run.
void quant_row(const Matrix& w, int64_t row, int8_t* out) {
    const bool q8 = w.dtype == DType::Q8;
    const int64_t nb = (w.n_in + 63) / 64, block_bytes = (q8 ? 64 : 32) * kPanel;
    const uint8_t* p = (const uint8_t*)w.data + row / kPanel * nb * block_bytes + row % kPanel * 4;
    for (int64_t b = 0; b < nb; b++, p += block_bytes, out += 64) {
        if (q8) {
            for (int j = 0; j < 16; j++)
                for (int i = 0; i < 4; i++) out[4 * j + i] = (int8_t)(p[64 * j + i] - 128);
        } else {
            for (int j = 0; j < 8; j++)
                for (int i = 0; i < 4; i++) {
                    out[4 * j + i] = (int8_t)((p[64 * j + i] & 0x0f) - 8);
                    out[32 + 4 * j + i] = (int8_t)((p[64 * j + i] >> 4) - 8);
                }
        }
    }
}

// Panels of 16 rows: [panel, group, row in panel].
float quant_scale(const Matrix& w, int64_t row, int64_t g) {
    return w.scales[(row / kPanel * (w.n_in / w.group) + g) * kPanel + row % kPanel];
}

float quantize_row(const float* x, int64_t n, int8_t* xq) {
    float m = 0.0f;
    for (int64_t k = 0; k < n; k++) m = std::fmax(m, std::fabs(x[k]));
    const float inv = m > 0.0f ? 127.0f / m : 0.0f;
    for (int64_t k = 0; k < n; k++) {
        float q = std::nearbyint(x[k] * inv);
        xq[k] = (int8_t)(q > 127.0f ? 127.0f : (q < -127.0f ? -127.0f : q));
    }
    return m > 0.0f ? m / 127.0f : 0.0f;
}

// q8/q4: y[t, o] = sx[t] * sum_g scale[o, g] * (integer dot of group g) + b[o], the
// integer dot products taken over the int8-quantized activations. The float steps are
// fixed (docs/FORMAT.md): acc = fma(scale, float(isum), acc) for g = 0, 1, ..., then
// y = fma(acc, sx, b), so that the SIMD kernels, which compute the same exact integer
// sums, give bitwise the same results.
static void quant_linear(const Matrix& w, const float* bias, const float* x, int64_t T, float* y, int64_t o_begin,
                         int64_t o_end) {
    check_quant(w);
    const int64_t n_in = w.n_in, n_out = w.n_out, n_groups = n_in / w.group;
    int8_t* xq = (int8_t*)std::malloc(T * n_in + 1);
    float* sx = (float*)std::malloc(T * sizeof(float));
    int8_t* wrow = (int8_t*)std::malloc(quant_row_bytes(w));
    if (!xq || !sx || !wrow) {
        std::free(xq);
        std::free(sx);
        std::free(wrow);
        throw std::bad_alloc();
    }
    for (int64_t t = 0; t < T; t++) sx[t] = quantize_row(x + t * n_in, n_in, xq + t * n_in);
    for (int64_t o = o_begin; o < o_end; o++) {
        quant_row(w, o, wrow);
        for (int64_t t = 0; t < T; t++) {
            float acc = 0.0f;
            for (int64_t g = 0; g < n_groups; g++) {
                int32_t isum = 0;
                for (int64_t k = g * w.group; k < (g + 1) * w.group; k++) isum += wrow[k] * xq[t * n_in + k];
                acc = std::fma(quant_scale(w, o, g), (float)isum, acc);
            }
            y[t * n_out + o] = std::fma(acc, sx[t], bias ? bias[o] : 0.0f);
        }
    }
    std::free(wrow);
    std::free(xq);
    std::free(sx);
}

void linear(const Matrix& w, const float* bias, const float* x, int64_t T, float* y, int64_t o_begin,
            int64_t o_end) {
    const int64_t n_in = w.n_in, n_out = w.n_out;
    if (w.dtype == DType::Q8 || w.dtype == DType::Q4) {
        quant_linear(w, bias, x, T, y, o_begin, o_end);
        return;
    }
    if (w.dtype != DType::F32 && w.dtype != DType::F16 && w.dtype != DType::BF16)
        throw std::invalid_argument("linear: unsupported weight dtype");
    // plain malloc, not std::vector: a template instantiated in this TU would be built with
    // this ISA's flags and could be picked by the linker for the other ISA paths too.
    float* row = nullptr;
    if (w.dtype != DType::F32 && !(row = (float*)std::malloc(n_in * sizeof(float)))) throw std::bad_alloc();
    for (int64_t o = o_begin; o < o_end; o++) {
        const float* w_o;
        if (w.dtype == DType::F32) {
            w_o = (const float*)w.data + o * n_in;
        } else {
            matrix_row(w, o, row);
            w_o = row;
        }
        const float b = bias ? bias[o] : 0.0f;
        for (int64_t t = 0; t < T; t++) y[t * n_out + o] = dot(x + t * n_in, w_o, n_in) + b;
    }
    std::free(row);
}

size_t prepared_bytes(const Matrix& w, int64_t T) {
    return ((size_t)(T * w.n_in) * sizeof(float) + 63) / 64 * 64;
}

void prepare(const Matrix& w, const float* x, int64_t T, int64_t r_begin, int64_t r_end, void* prep) {
    (void)T;
    if (r_begin < r_end)
        std::memcpy((float*)prep + r_begin * w.n_in, x + r_begin * w.n_in, (r_end - r_begin) * w.n_in * sizeof(float));
}

void linear_prepared(const Matrix& w, const float* bias, const void* prep, int64_t T, float* y, int64_t o_begin,
                     int64_t o_end) {
    linear(w, bias, (const float*)prep, T, y, o_begin, o_end);
}

void layernorm(float* out, const float* x, const float* gamma, const float* beta, int64_t C, float eps) {
    double mean = 0.0;
    for (int64_t i = 0; i < C; i++) mean += x[i];
    mean /= (double)C;
    double var = 0.0;
    for (int64_t i = 0; i < C; i++) {
        double d = x[i] - mean;
        var += d * d;
    }
    var /= (double)C;
    const float m = (float)mean, rstd = (float)(1.0 / std::sqrt(var + (double)eps));
    for (int64_t i = 0; i < C; i++) {
        float v = (x[i] - m) * rstd * gamma[i];
        out[i] = beta ? v + beta[i] : v;
    }
}

void gelu_tanh(float* x, int64_t n) {
    const float k = 0.7978845608028654f;  // sqrt(2 / pi)
    for (int64_t i = 0; i < n; i++) {
        float v = x[i];
        x[i] = 0.5f * v * (1.0f + std::tanh(k * (v + 0.044715f * v * v * v)));
    }
}

void gelu_erf(float* x, int64_t n) {
    for (int64_t i = 0; i < n; i++) x[i] = 0.5f * x[i] * (1.0f + std::erf(x[i] * 0.7071067811865476f));
}

void add(float* y, const float* x, int64_t n) {
    for (int64_t i = 0; i < n; i++) y[i] += x[i];
}

// Each sum a chain of fused multiply-adds over k (std::fma: the SIMD paths' FMA, so the same
// bits), 64 columns side by side: a row of w is read along the columns, which the compiler can
// vectorise where the ISA has a vector FMA.
void add_product(float* y, const float* x, const float* w, int64_t K, int64_t n_out, int64_t T, int64_t o_begin,
                 int64_t o_end) {
    constexpr int64_t kColumns = 64;
    float s[kColumns];
    for (int64_t t = 0; t < T; t++) {
        const float* xt = x + t * K;
        float* yt = y + t * n_out;
        for (int64_t c0 = o_begin; c0 < o_end; c0 += kColumns) {
            const int64_t n = o_end - c0 < kColumns ? o_end - c0 : kColumns;
            for (int64_t i = 0; i < n; i++) s[i] = 0.0f;
            for (int64_t k = 0; k < K; k++) {
                const float* wk = w + k * n_out + c0;
                for (int64_t i = 0; i < n; i++) s[i] = std::fma(xt[k], wk[i], s[i]);
            }
            for (int64_t i = 0; i < n; i++) yt[c0 + i] += s[i];
        }
    }
}

// Keys and values as f32 whatever they are stored as (int8: before the row's scale).
static inline float kv_value(float x) { return x; }
static inline float kv_value(uint16_t x) { return f16_to_f32(x); }
static inline float kv_value(int8_t x) { return (float)x; }

// s[j] = exp(s[j] - max) for j < n: libm's exp; on the neon paths simd.h's polynomial at 4
// lanes (neon.h), which the compiler cannot make of libm's.
static void exp_shifted(float* s, int64_t n, float max) {
#if defined(PYGPT_NEON)
    const float32x4_t m = vdupq_n_f32(max);
    neon_ops::map4(s, n, max, [m](float32x4_t v) { return neon_ops::exp_neg(vsubq_f32(v, m)); });
#else
    for (int64_t j = 0; j < n; j++) s[j] = std::exp(s[j] - max);
#endif
}

// Whether keys and values of type E carry a scale per row (int8 caches).
template <class E>
constexpr bool kScaled = std::is_same<E, int8_t>::value;

// k_scale, v_scale: the rows' scales (int8 caches) or null.
template <class E>
static void attention_row_t(float* out, const float* q, const E* k, const E* v, const float* k_scale,
                            const float* v_scale, int64_t ld, int64_t n_keys, int64_t head_dim, float scale,
                            float* scores) {
    // f16 and int8 keys are widened one at a time for dot (f32 keys are read in place)
    float* kj = nullptr;
    if (!std::is_same<E, float>::value && !(kj = (float*)std::malloc(head_dim * sizeof(float))))
        throw std::bad_alloc();
    float max = -INFINITY;
    for (int64_t j = 0; j < n_keys; j++) {
        const float* key;
        if constexpr (std::is_same<E, float>::value) {
            key = k + j * ld;
        } else {
            for (int64_t d = 0; d < head_dim; d++) kj[d] = kv_value(k[j * ld + d]);
            key = kj;
        }
        const float s = dot(q, key, head_dim);
        scores[j] = scale * (k_scale ? s * k_scale[j] : s);
        max = std::fmax(max, scores[j]);
    }
    std::free(kj);
    exp_shifted(scores, n_keys, max);
    float sum = 0.0f;
    for (int64_t j = 0; j < n_keys; j++) sum += scores[j];
    const float inv = 1.0f / sum;
    for (int64_t d = 0; d < head_dim; d++) out[d] = 0.0f;
    for (int64_t j = 0; j < n_keys; j++) {
        const float p = v_scale ? scores[j] * inv * v_scale[j] : scores[j] * inv;
        const E* v_j = v + j * ld;
        for (int64_t d = 0; d < head_dim; d++) out[d] += p * kv_value(v_j[d]);
    }
}

void attention_rows(float* out, int64_t ld_out, const float* q, int64_t ld_q, int64_t n_rows, const float* k,
                    const float* v, int64_t ld, int64_t n_keys, int64_t head_dim, float scale, float* scores) {
    for (int64_t r = 0; r < n_rows; r++)
        attention_row_t(out + r * ld_out, q + r * ld_q, k, v, nullptr, nullptr, ld, n_keys + r, head_dim, scale,
                        scores);
}

void attention_rows_f16(float* out, int64_t ld_out, const float* q, int64_t ld_q, int64_t n_rows, const uint16_t* k,
                        const uint16_t* v, int64_t ld, int64_t n_keys, int64_t head_dim, float scale, float* scores) {
    for (int64_t r = 0; r < n_rows; r++)
        attention_row_t(out + r * ld_out, q + r * ld_q, k, v, nullptr, nullptr, ld, n_keys + r, head_dim, scale,
                        scores);
}

void attention_rows_int8(float* out, int64_t ld_out, const float* q, int64_t ld_q, int64_t n_rows, const int8_t* k,
                         const int8_t* v, const float* k_scale, const float* v_scale, int64_t ld, int64_t n_keys,
                         int64_t head_dim, float scale, float* scores) {
    for (int64_t r = 0; r < n_rows; r++)
        attention_row_t(out + r * ld_out, q + r * ld_q, k, v, k_scale, v_scale, ld, n_keys + r, head_dim, scale,
                        scores);
}

// The heads one after another (the scalar path has no loads to overlap).
template <class E>
static void attention_heads_t(const AttentionHead* heads, int n, int64_t ld, int64_t head_dim, float scale,
                              float* scores) {
    for (int i = 0; i < n; i++) {
        const AttentionHead& h = heads[i];
        attention_row_t(h.out, h.q, (const E*)h.k, (const E*)h.v, kScaled<E> ? h.k_scale : nullptr,
                        kScaled<E> ? h.v_scale : nullptr, ld, h.n_keys, head_dim, scale, scores);
    }
}

void attention_heads(const AttentionHead* heads, int n, int64_t ld, int64_t head_dim, float scale, float* scratch) {
    attention_heads_t<float>(heads, n, ld, head_dim, scale, scratch);
}

void attention_heads_f16(const AttentionHead* heads, int n, int64_t ld, int64_t head_dim, float scale,
                         float* scratch) {
    attention_heads_t<uint16_t>(heads, n, ld, head_dim, scale, scratch);
}

void attention_heads_int8(const AttentionHead* heads, int n, int64_t ld, int64_t head_dim, float scale,
                          float* scratch) {
    attention_heads_t<int8_t>(heads, n, ld, head_dim, scale, scratch);
}

float quantize_kv(const float* x, int8_t* q, int64_t n) {
    if (n <= 0) return 0.0f;
    float m = 0.0f;
    bool finite = true;
    for (int64_t i = 0; i < n; i++) {
        finite = finite && std::isfinite(x[i]);
        m = std::fmax(m, std::fabs(x[i]));
    }
    if (!finite || m == 0.0f) {
        std::memset(q, 0, n);
        return finite ? 0.0f : NAN;
    }
    const float inv = 127.0f / m;
    for (int64_t i = 0; i < n; i++) {
        // |x * inv| <= 127 up to rounding: the clamp only guards the conversion
        const float r = std::nearbyint(x[i] * inv);
        q[i] = (int8_t)(r > 127.0f ? 127.0f : r < -127.0f ? -127.0f : r);
    }
    return m / 127.0f;
}

int64_t argmax(const float* x, int64_t n) {
    int64_t best = -1;
    float best_x = -INFINITY;
    for (int64_t i = 0; i < n; i++)
        if (x[i] > best_x) {  // false for NaN
            best_x = x[i];
            best = i;
        }
    return best;
}

// IEEE half, rounded to nearest even, as F16C's vcvtps2ph does (NaN stays a quiet NaN).
uint16_t f32_to_f16(float f) {
    uint32_t x;
    std::memcpy(&x, &f, 4);
    const uint16_t sign = (uint16_t)((x >> 16) & 0x8000);
    const uint32_t ax = x & 0x7fffffffu;
    if (ax > 0x7f800000u) return sign | 0x7e00 | (uint16_t)((ax >> 13) & 0x3ff);  // NaN
    if (ax >= 0x477ff000u) return sign | 0x7c00;                                 // rounds to >= 65520: inf
    if (ax < 0x38800000u) {  // below 2^-14: a subnormal half (or zero), units of 2^-24
        float a;
        std::memcpy(&a, &ax, 4);
        return sign | (uint16_t)std::nearbyint(a * 16777216.0f);  // exact product; ties to even
    }
    uint32_t m = ax - 0x38000000u;  // exponent rebiased from 127 to 15
    m += 0xfffu + ((m >> 13) & 1u);  // round the 13 dropped bits to nearest even
    return sign | (uint16_t)(m >> 13);
}

void to_f16(const float* x, uint16_t* out, int64_t n) {
    for (int64_t i = 0; i < n; i++) out[i] = f32_to_f16(x[i]);
}

}  // namespace generic
}  // namespace PYGPT_KERNEL_NS
}  // namespace pygpt
