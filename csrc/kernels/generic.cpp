// Portable kernels in plain C++. Compiled once per ISA (see CMakeLists.txt): the compiler
// vectorises the fixed-width lane loops with that ISA's registers. They are the reference
// the hand-written kernels are tested against, and the scalar path's implementation.
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <cstdlib>

#include "kernels.h"
#include "kernels/generic.h"

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
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1f, mant = h & 0x3ff, bits;
    if (exp == 0) {
        if (mant == 0) {
            bits = sign;
        } else {  // subnormal: normalise
            exp = 127 - 15 + 1;
            while ((mant & 0x400) == 0) { mant <<= 1; exp--; }
            bits = sign | (exp << 23) | ((mant & 0x3ff) << 13);
        }
    } else if (exp == 31) {
        bits = sign | 0x7f800000u | (mant << 13);
    } else {
        bits = sign | ((exp + 127 - 15) << 23) | (mant << 13);
    }
    float f;
    std::memcpy(&f, &bits, 4);
    return f;
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
        default:
            throw std::invalid_argument("matrix_row: unsupported weight dtype");
    }
}

void linear(const Matrix& w, const float* bias, const float* x, int64_t T, float* y, int n_threads) {
    const int64_t n_in = w.n_in, n_out = w.n_out;
    if (w.dtype != DType::F32 && w.dtype != DType::F16 && w.dtype != DType::BF16)
        throw std::invalid_argument("linear: unsupported weight dtype");
#pragma omp parallel num_threads(n_threads)
    {
        // plain malloc, not std::vector: a template instantiated in this TU would be built with
        // this ISA's flags and could be picked by the linker for the other ISA paths too.
        float* row = w.dtype == DType::F32 ? nullptr : (float*)std::malloc(n_in * sizeof(float));
#pragma omp for schedule(static)
        for (int64_t o = 0; o < n_out; o++) {
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

void attention_row(float* out, const float* q, const float* k, const float* v, int64_t ld, int64_t n_keys,
                   int64_t head_dim, float scale, float* scores) {
    float max = -INFINITY;
    for (int64_t j = 0; j < n_keys; j++) {
        scores[j] = scale * dot(q, k + j * ld, head_dim);
        max = std::fmax(max, scores[j]);
    }
    float sum = 0.0f;
    for (int64_t j = 0; j < n_keys; j++) {
        scores[j] = std::exp(scores[j] - max);
        sum += scores[j];
    }
    const float inv = 1.0f / sum;
    for (int64_t d = 0; d < head_dim; d++) out[d] = 0.0f;
    for (int64_t j = 0; j < n_keys; j++) {
        const float p = scores[j] * inv;
        const float* v_j = v + j * ld;
        for (int64_t d = 0; d < head_dim; d++) out[d] += p * v_j[d];
    }
}

}  // namespace generic
}  // namespace PYGPT_KERNEL_NS
}  // namespace pygpt
