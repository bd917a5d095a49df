// Portable kernels (generic.cpp), declared inside the ISA namespace of the including file.
#pragma once
#include <cstddef>
#include <cstdint>

#include "kernels.h"

namespace pygpt {
namespace PYGPT_KERNEL_NS {
namespace generic {
float dot(const float* a, const float* b, int64_t n);
float f16_to_f32(uint16_t h);
float bf16_to_f32(uint16_t h);
void matrix_row(const Matrix& w, int64_t row, float* out);
// Throws std::invalid_argument unless w's quantized layout is one the kernels read:
// group == n_in (one scale per row) or a multiple of 64 dividing n_in.
void check_quant(const Matrix& w);
// Row `row` of a q8/q4 matrix as the stored signed integers (scales not applied),
// quant_row_bytes(w) of them (n_in, then the zero padding of its last block of 64).
int64_t quant_row_bytes(const Matrix& w);
void quant_row(const Matrix& w, int64_t row, int8_t* out);
// The scale of group g of row `row` of a q8/q4 matrix.
float quant_scale(const Matrix& w, int64_t row, int64_t g);
// Activation row quantized to int8: xq[k] = round(x[k] * 127 / max|x|) (ties to even);
// returns the scale max|x| / 127 (0 for an all-zero row).
float quantize_row(const float* x, int64_t n, int8_t* xq);
void linear(const Matrix& w, const float* bias, const float* x, int64_t T, float* y, int64_t o_begin,
            int64_t o_end);
// The prepared activations of the scalar path are the f32 rows themselves.
size_t prepared_bytes(const Matrix& w, int64_t T);
void prepare(const Matrix& w, const float* x, int64_t T, int64_t r_begin, int64_t r_end, void* prep);
void linear_prepared(const Matrix& w, const float* bias, const void* prep, int64_t T, float* y, int64_t o_begin,
                     int64_t o_end);
void layernorm(float* out, const float* x, const float* gamma, const float* beta, int64_t C, float eps);
void gelu_tanh(float* x, int64_t n);
void gelu_erf(float* x, int64_t n);
void add(float* y, const float* x, int64_t n);
void add_product(float* y, const float* x, const float* w, int64_t K, int64_t n_out, int64_t T, int64_t o_begin,
                 int64_t o_end);
uint16_t f32_to_f16(float f);
void attention_rows(float* out, int64_t ld_out, const float* q, int64_t ld_q, int64_t n_rows, const float* k,
                    const float* v, int64_t ld, int64_t n_keys, int64_t head_dim, float scale, float* scores);
void attention_rows_f16(float* out, int64_t ld_out, const float* q, int64_t ld_q, int64_t n_rows, const uint16_t* k,
                        const uint16_t* v, int64_t ld, int64_t n_keys, int64_t head_dim, float scale, float* scores);
void attention_rows_int8(float* out, int64_t ld_out, const float* q, int64_t ld_q, int64_t n_rows, const int8_t* k,
                         const int8_t* v, const float* k_scale, const float* v_scale, int64_t ld, int64_t n_keys,
                         int64_t head_dim, float scale, float* scores);
float quantize_kv(const float* x, int8_t* q, int64_t n);
int64_t argmax(const float* x, int64_t n);
void to_f16(const float* x, uint16_t* out, int64_t n);
void attention_heads(const AttentionHead* heads, int n, int64_t ld, int64_t head_dim, float scale, float* scratch);
void attention_heads_f16(const AttentionHead* heads, int n, int64_t ld, int64_t head_dim, float scale, float* scratch);
void attention_heads_int8(const AttentionHead* heads, int n, int64_t ld, int64_t head_dim, float scale, float* scratch);
}  // namespace generic
}  // namespace PYGPT_KERNEL_NS
}  // namespace pygpt
