// The hand-written small ops of this ISA (ops.cpp; AVX2 and AVX-512 builds only; NEON builds
// have gelu_tanh alone, ops_neon.cpp). Same contracts as the Kernels entries of the same names.
#pragma once
#include <cstdint>

#include "kernels.h"

namespace pygpt {
namespace PYGPT_KERNEL_NS {
namespace simd {
void layernorm(float* out, const float* x, const float* gamma, const float* beta, int64_t C, float eps);
void gelu_tanh(float* x, int64_t n);
void add(float* y, const float* x, int64_t n);
void add_product(float* y, const float* x, const float* w, int64_t K, int64_t n_out, int64_t T, int64_t o_begin,
                 int64_t o_end);
void to_f16(const float* x, uint16_t* out, int64_t n);
float quantize_kv(const float* x, int8_t* q, int64_t n);
int64_t argmax(const float* x, int64_t n);
void attention_rows(float* out, int64_t ld_out, const float* q, int64_t ld_q, int64_t n_rows, const float* k,
                    const float* v, int64_t ld, int64_t n_keys, int64_t head_dim, float scale, float* scores);
void attention_rows_f16(float* out, int64_t ld_out, const float* q, int64_t ld_q, int64_t n_rows, const uint16_t* k,
                        const uint16_t* v, int64_t ld, int64_t n_keys, int64_t head_dim, float scale, float* scores);
void attention_rows_int8(float* out, int64_t ld_out, const float* q, int64_t ld_q, int64_t n_rows, const int8_t* k,
                         const int8_t* v, const float* k_scale, const float* v_scale, int64_t ld, int64_t n_keys,
                         int64_t head_dim, float scale, float* scores);
void attention_heads(const AttentionHead* heads, int n, int64_t ld, int64_t head_dim, float scale, float* scratch);
void attention_heads_f16(const AttentionHead* heads, int n, int64_t ld, int64_t head_dim, float scale, float* scratch);
void attention_heads_int8(const AttentionHead* heads, int n, int64_t ld, int64_t head_dim, float scale, float* scratch);
}  // namespace simd
}  // namespace PYGPT_KERNEL_NS
}  // namespace pygpt
