// Linear layers y[T, n_out] = x[T, n_in] W^T + b for every weight dtype, hand-written for
// AVX-512, AVX2 and AArch64 NEON (the scalar path uses generic::linear). This file
// dispatches on the weight dtype:
//   linear_float.cpp  f32, f16, bf16 weights (linear_float_neon.cpp on NEON);
//   linear_quant.cpp  q8, q4 weights (docs/FORMAT.md has the layouts; linear_quant_neon.cpp).
//
// Both serve decode (T = 1), batched decode (T = 2..12) and prefill (T large) with their own
// loop nests, and share this shape:
//   threads   the caller gives each thread ranges of output rows (each weight byte is read
//             by one thread); nothing here synchronises. The activations are prepared
//             (packed, rounded to bf16 or quantized) before the products: by linear() on the
//             calling thread, or once for all threads through prepare() + linear_prepared();
//   T = 1     the rows streamed one after another (one sequential stream per thread: the
//             hardware prefetchers follow it best);
//   T > 1     tiles of rows x tokens with the accumulators in registers, each weight vector
//             loaded once per tile and used for every token of it.
//
// Determinism: each y[t, o] is bitwise the same whatever T and the row range (the
// batch-invariance contract of kernels.h):
//   float weights: one vector accumulator per output with the lane structure of simd.h
//     (f32: FMA over 16 / 8 inputs; f16: weights converted by F16C; bf16: AVX512-BF16's
//     vdpbf16ps against activations rounded to bf16, or elsewhere weights widened to f32),
//     reduced by simd.h's fixed tree; on the amx path bf16 layers whose inputs are a
//     multiple of 32 run on AMX-BF16 tiles at every T instead (linear_bf16_amx.cpp);
//   quantized weights: activations quantized per token to int8 (scale max|x| / 127), the
//     exact int32 dot product per (output, group), then scaled and summed over the groups in
//     order, as generic::quant_linear does: every path equals the scalar reference bit for
//     bit, so the tiles are free to order the integer sums as they like.
#include <cmath>
#include <new>
#include <stdexcept>

#include "kernels.h"
#include "kernels/linear.h"
#include "kernels/simd.h"

#if defined(__AVX2__) || defined(PYGPT_NEON)

namespace pygpt {
namespace PYGPT_KERNEL_NS {
namespace simd {

static bool is_quant(const Matrix& m) {
    if (m.dtype == DType::Q8 || m.dtype == DType::Q4) return true;
    if (m.dtype == DType::F32 || m.dtype == DType::F16 || m.dtype == DType::BF16) return false;
    throw std::invalid_argument("linear: unsupported weight dtype");
}

// Weights that linear_self_prepared serves: quantized ones, and on the amx path bf16 ones on
// the tiles.
static bool self_prepared(const Matrix& m) {
#if defined(PYGPT_AMX)
    if (bf16_tiles(m)) return true;
#endif
    return is_quant(m);
}

void linear(const Matrix& m, const float* bias, const float* x, int64_t T, float* y, int64_t o_begin,
            int64_t o_end) {
    if (T <= 0 || o_begin >= o_end) return;
    if (self_prepared(m)) linear_self_prepared(m, bias, x, T, y, o_begin, o_end);
    else linear_float(m, bias, x, T, y, o_begin, o_end);
}

size_t prepared_bytes(const Matrix& m, int64_t T) {
#if defined(PYGPT_AMX)
    if (bf16_tiles(m)) return bf16_tiles_prepared_bytes(m, T);
#endif
    return is_quant(m) ? quant_prepared_bytes(m, T) : float_prepared_bytes(m, T);
}

void prepare(const Matrix& m, const float* x, int64_t T, int64_t r_begin, int64_t r_end, void* prep) {
    if (r_begin >= r_end) return;
#if defined(PYGPT_AMX)
    if (bf16_tiles(m)) return bf16_tiles_prepare(m, x, T, r_begin, r_end, prep);
#endif
    if (is_quant(m)) quant_prepare(m, x, T, r_begin, r_end, prep);
    else float_prepare(m, x, T, r_begin, r_end, prep);
}

void linear_prepared(const Matrix& m, const float* bias, const void* prep, int64_t T, float* y, int64_t o_begin,
                     int64_t o_end) {
    if (T <= 0 || o_begin >= o_end) return;
#if defined(PYGPT_AMX)
    if (bf16_tiles(m)) return bf16_tiles_linear_prepared(m, bias, prep, T, y, o_begin, o_end);
#endif
    if (is_quant(m)) quant_linear_prepared(m, bias, prep, T, y, o_begin, o_end);
    else float_linear_prepared(m, bias, prep, T, y, o_begin, o_end);
}

void linear_self_prepared(const Matrix& m, const float* bias, const float* x, int64_t T, float* y, int64_t o_begin,
                          int64_t o_end) {
    void* prep = thread_scratch(1, prepared_bytes(m, T));
    if (!prep) throw std::bad_alloc();
    prepare(m, x, T, 0, T, prep);
    linear_prepared(m, bias, prep, T, y, o_begin, o_end);
}

}  // namespace simd
}  // namespace PYGPT_KERNEL_NS
}  // namespace pygpt

#endif  // __AVX2__ || PYGPT_NEON
