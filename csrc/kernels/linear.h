// The hand-written linear kernels of this ISA (linear.cpp; AVX2, AVX-512 and NEON builds only).
#pragma once
#include <cstddef>
#include <cstdint>

#include "kernels.h"

namespace pygpt {
namespace PYGPT_KERNEL_NS {
namespace simd {
// Same contract as Kernels::linear (linear.cpp: dispatch on the weight dtype).
void linear(const Matrix& w, const float* bias, const float* x, int64_t T, float* y, int64_t o_begin,
            int64_t o_end);
// f32 / f16 / bf16 weights (linear_float.cpp).
void linear_float(const Matrix& w, const float* bias, const float* x, int64_t T, float* y, int64_t o_begin,
                  int64_t o_end);
size_t float_prepared_bytes(const Matrix& w, int64_t T);
void float_prepare(const Matrix& w, const float* x, int64_t T, int64_t r_begin, int64_t r_end, void* prep);
void float_linear_prepared(const Matrix& w, const float* bias, const void* prep, int64_t T, float* y,
                           int64_t o_begin, int64_t o_end);
// q8 / q4 weights (linear_quant.cpp).
void linear_quant(const Matrix& w, const float* bias, const float* x, int64_t T, float* y, int64_t o_begin,
                  int64_t o_end);
size_t quant_prepared_bytes(const Matrix& w, int64_t T);
void quant_prepare(const Matrix& w, const float* x, int64_t T, int64_t r_begin, int64_t r_end, void* prep);
void quant_linear_prepared(const Matrix& w, const float* bias, const void* prep, int64_t T, float* y,
                           int64_t o_begin, int64_t o_end);
// The prepared-activation steps of linear (kernels.h), dispatched on the weight dtype.
size_t prepared_bytes(const Matrix& w, int64_t T);
void prepare(const Matrix& w, const float* x, int64_t T, int64_t r_begin, int64_t r_end, void* prep);
void linear_prepared(const Matrix& w, const float* bias, const void* prep, int64_t T, float* y, int64_t o_begin,
                     int64_t o_end);
// Rows of a float tile: prepare() splits at multiples of it.
int64_t prepare_rows();
}  // namespace simd
}  // namespace PYGPT_KERNEL_NS
}  // namespace pygpt
