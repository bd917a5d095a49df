// Linear layers y[T, n_out] = x[T, n_in] W^T + b for every weight dtype, hand-written for
// AVX-512 and AVX2 (the scalar path uses generic::linear).
//
// One loop nest serves decode (T = 1) and prefill / batched decode (T > 1):
//   threads   the caller gives each thread a contiguous range of output rows (each weight
//             byte is read by one thread); nothing here synchronises;
//   token blocks of TB tokens keep their activations in L2 while a thread's weights
//             stream through once per block;
//   tiles     of R rows x TT tokens: R weight vectors are loaded once per k step and
//             reused for TT tokens, TT * R accumulators live in registers.
// Every output has its own accumulator with the lane structure of simd.h, so the tile
// shape, T and the thread count never change a result (the batch-invariance contract).
//
// Weight steps (one vector of accumulators, AVX-512 / AVX2):
//   f32   16 / 8 weights, FMA with f32 activations;
//   f16   16 / 8 weights converted by F16C, FMA;
//   bf16  AVX-512: 32 weights per vdpbf16ps against activations rounded to bf16 (so bf16
//         models see bf16 activations in their linear layers, as on bf16 hardware);
//         AVX2: 8 weights widened to f32, FMA with f32 activations;
//   q8/q4 activations quantized per token to int8 (scale max|x| / 127), exact integer dot
//         products over blocks of 64 inputs (AVX-512: vpdpbusd; AVX2: vpmaddubsw +
//         vpmaddwd), converted to f32 and scaled once per weight group. See quant_linear
//         below and docs/FORMAT.md.
#include <cmath>
#include <stdexcept>

#include "kernels.h"
#include "kernels/linear.h"

#if defined(__AVX2__)

namespace pygpt {
namespace PYGPT_KERNEL_NS {
namespace simd {

void linear(const Matrix& m, const float* bias, const float* x, int64_t T, float* y, int64_t o_begin,
            int64_t o_end) {
    if (T <= 0 || o_begin >= o_end) return;
    switch (m.dtype) {
        case DType::F32:
        case DType::F16:
        case DType::BF16: linear_float(m, bias, x, T, y, o_begin, o_end); return;
        case DType::Q8:
        case DType::Q4: linear_quant(m, bias, x, T, y, o_begin, o_end); return;
    }
    throw std::invalid_argument("linear: unsupported weight dtype");
}

}  // namespace simd
}  // namespace PYGPT_KERNEL_NS
}  // namespace pygpt

#endif  // __AVX2__
