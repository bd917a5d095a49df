// The hand-written linear kernels of this ISA (linear.cpp; AVX2, AVX-512 and NEON builds only).
#pragma once
#include <cstddef>
#include <cstdint>
#include <stdexcept>

#include "kernels.h"
#include "kernels/simd.h"

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
#if defined(PYGPT_AMX)
// bf16 weights on AMX tiles, at every T, where bf16_tiles(w) (linear_bf16_amx.cpp).
bool bf16_tiles(const Matrix& w);
size_t bf16_tiles_prepared_bytes(const Matrix& w, int64_t T);
void bf16_tiles_prepare(const Matrix& w, const float* x, int64_t T, int64_t r_begin, int64_t r_end, void* prep);
void bf16_tiles_linear_prepared(const Matrix& w, const float* bias, const void* prep, int64_t T, float* y,
                                int64_t o_begin, int64_t o_end);
#endif
// q8 / q4 weights (linear_quant.cpp).
size_t quant_prepared_bytes(const Matrix& w, int64_t T);
void quant_prepare(const Matrix& w, const float* x, int64_t T, int64_t r_begin, int64_t r_end, void* prep);
void quant_linear_prepared(const Matrix& w, const float* bias, const void* prep, int64_t T, float* y,
                           int64_t o_begin, int64_t o_end);
// The prepared-activation steps of linear (kernels.h), dispatched on the weight dtype.
size_t prepared_bytes(const Matrix& w, int64_t T);
void prepare(const Matrix& w, const float* x, int64_t T, int64_t r_begin, int64_t r_end, void* prep);
void linear_prepared(const Matrix& w, const float* bias, const void* prep, int64_t T, float* y, int64_t o_begin,
                     int64_t o_end);
// The shape of one call's quantized product (q8 / q4 panels, docs/FORMAT.md).
struct QShape {
    bool q4;
    int64_t n_in, n_out, n_groups;
    bool half;            // groups of 32 inputs, two a block: its first and second 32 inputs
                          // (q4: its low and high nibbles); the kernels' H paths
    int64_t bpg;          // blocks of 64 inputs per group (1 where half)
    int64_t gk;           // inputs of a group as the kernels step them: bpg * 64, or 32
    int64_t nb;           // blocks of 64 inputs per row (n_in padded)
    int64_t xs;           // stride of the quantized activations: n_in padded to 128 with zeros
    int64_t block_bytes;  // bytes of a panel's block: 16 rows x 64 inputs (q8 1024, q4 512)
    int64_t panel_bytes;  // bytes of a panel: nb blocks
};

static inline QShape quant_shape(const Matrix& m) {
    QShape s;
    s.q4 = m.dtype == DType::Q4;
    s.n_in = m.n_in;
    s.n_out = m.n_out;
    s.n_groups = m.n_in / m.group;
    s.half = m.group == 32 && m.n_in % 64 == 0;  // (a row of 32 inputs alone is one group)
    s.bpg = (m.group + 63) / 64;
    s.gk = s.half ? 32 : s.bpg * 64;
    s.nb = (m.n_in + 63) / 64;
    s.xs = round_up(m.n_in, 128);
    s.block_bytes = (s.q4 ? 32 : 64) * kPanel;
    s.panel_bytes = s.nb * s.block_bytes;
    return s;
}

// Rows of a float tile: prepare() splits at multiples of it.
int64_t prepare_rows();
// linear() on the calling thread alone: prepare() of all T rows into this thread's scratch
// slot 1, then linear_prepared(). For kernels that use no scratch or only slot 0 (x86's
// quantized ones, NEON's); x86's float linear_prepared uses slot 1 itself (linear_float).
void linear_self_prepared(const Matrix& w, const float* bias, const float* x, int64_t T, float* y, int64_t o_begin,
                          int64_t o_end);

// f(W{}) with W the weight type (of this ISA's float kernels) of m's dtype.
template <class F32, class F16, class BF16, class F>
static auto on_float_weight(const Matrix& m, F&& f) {
    switch (m.dtype) {
        case DType::F32: return f(F32{});
        case DType::F16: return f(F16{});
        case DType::BF16: return f(BF16{});
        default: throw std::invalid_argument("linear_float: not a float weight dtype");
    }
}
}  // namespace simd
}  // namespace PYGPT_KERNEL_NS
}  // namespace pygpt
