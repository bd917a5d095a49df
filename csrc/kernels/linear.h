// The hand-written linear kernels of this ISA (linear.cpp; AVX2 and AVX-512 builds only).
#pragma once
#include <cstdint>

#include "kernels.h"

namespace pygpt {
namespace PYGPT_KERNEL_NS {
namespace simd {
// Same contract as Kernels::linear.
void linear(const Matrix& w, const float* bias, const float* x, int64_t T, float* y, int64_t o_begin,
            int64_t o_end);
}  // namespace simd
}  // namespace PYGPT_KERNEL_NS
}  // namespace pygpt
