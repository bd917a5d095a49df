// The hand-written linear kernels of this ISA (linear.cpp; AVX2 and AVX-512 builds only).
#pragma once
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
// q8 / q4 weights (linear_quant.cpp).
void linear_quant(const Matrix& w, const float* bias, const float* x, int64_t T, float* y, int64_t o_begin,
                  int64_t o_end);
}  // namespace simd
}  // namespace PYGPT_KERNEL_NS
}  // namespace pygpt
