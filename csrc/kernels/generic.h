// Portable kernels (generic.cpp), declared inside the ISA namespace of the including file.
#pragma once
#include <cstdint>

#include "kernels.h"

namespace pygpt {
namespace PYGPT_KERNEL_NS {
namespace generic {
float dot(const float* a, const float* b, int64_t n);
float f16_to_f32(uint16_t h);
float bf16_to_f32(uint16_t h);
void matrix_row(const Matrix& w, int64_t row, float* out);
void linear(const Matrix& w, const float* bias, const float* x, int64_t T, float* y, int n_threads);
void layernorm(float* out, const float* x, const float* gamma, const float* beta, int64_t C, float eps);
void gelu_tanh(float* x, int64_t n);
void gelu_erf(float* x, int64_t n);
void add(float* y, const float* x, int64_t n);
void attention_row(float* out, const float* q, const float* k, const float* v, int64_t ld, int64_t n_keys,
                   int64_t head_dim, float scale, float* scores);
}  // namespace generic
}  // namespace PYGPT_KERNEL_NS
}  // namespace pygpt
