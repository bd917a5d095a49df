// This ISA's kernel table: which implementation serves each entry. The AVX2 and AVX-512
// builds use the hand-written kernels (linear.cpp, ops.cpp); the NEON builds their linear
// layers and GELU (linear_*_neon.cpp, ops_neon.cpp), and generic.cpp's attention with
// neon.h's exponential; the scalar build, and the entries nobody hand-wrote, use the
// portable reference (generic.cpp).
#include "kernels.h"
#include "kernels/generic.h"
#include "kernels/linear.h"
#include "kernels/ops.h"

#define PYGPT_STR2(x) #x
#define PYGPT_STR(x) PYGPT_STR2(x)

namespace pygpt {
namespace PYGPT_KERNEL_NS {

const Kernels& kernel_table() {
#if defined(__AVX2__)
    static const Kernels table = {
        /* .name          = */ PYGPT_STR(PYGPT_KERNEL_NS),
        /* .linear        = */ simd::linear,
        /* .prepare_rows  = */ simd::prepare_rows(),
        /* .prepared_bytes= */ simd::prepared_bytes,
        /* .prepare       = */ simd::prepare,
        /* .linear_prepared = */ simd::linear_prepared,
        /* .matrix_row    = */ generic::matrix_row,
        /* .layernorm     = */ simd::layernorm,
        /* .gelu_tanh     = */ simd::gelu_tanh,
        /* .gelu_erf      = */ generic::gelu_erf,
        /* .add           = */ simd::add,
        /* .add_product   = */ simd::add_product,
        /* .attention_heads = */ simd::attention_heads,
        /* .attention_heads_f16 = */ simd::attention_heads_f16,
        /* .attention_heads_int8 = */ simd::attention_heads_int8,
        /* .attention_rows = */ simd::attention_rows,
        /* .attention_rows_f16 = */ simd::attention_rows_f16,
        /* .attention_rows_int8 = */ simd::attention_rows_int8,
        /* .to_f16        = */ simd::to_f16,
        /* .quantize_kv   = */ simd::quantize_kv,
        /* .argmax        = */ simd::argmax,
    };
#elif defined(PYGPT_NEON)
    static const Kernels table = {
        /* .name          = */ PYGPT_STR(PYGPT_KERNEL_NS),
        /* .linear        = */ simd::linear,
        /* .prepare_rows  = */ simd::prepare_rows(),
        /* .prepared_bytes= */ simd::prepared_bytes,
        /* .prepare       = */ simd::prepare,
        /* .linear_prepared = */ simd::linear_prepared,
        /* .matrix_row    = */ generic::matrix_row,
        /* .layernorm     = */ generic::layernorm,
        /* .gelu_tanh     = */ simd::gelu_tanh,
        /* .gelu_erf      = */ generic::gelu_erf,
        /* .add           = */ generic::add,
        /* .add_product   = */ generic::add_product,
        /* .attention_heads = */ generic::attention_heads,
        /* .attention_heads_f16 = */ generic::attention_heads_f16,
        /* .attention_heads_int8 = */ generic::attention_heads_int8,
        /* .attention_rows = */ generic::attention_rows,
        /* .attention_rows_f16 = */ generic::attention_rows_f16,
        /* .attention_rows_int8 = */ generic::attention_rows_int8,
        /* .to_f16        = */ generic::to_f16,
        /* .quantize_kv   = */ generic::quantize_kv,
        /* .argmax        = */ generic::argmax,
    };
#else
    static const Kernels table = {
        /* .name          = */ PYGPT_STR(PYGPT_KERNEL_NS),
        /* .linear        = */ generic::linear,
        /* .prepare_rows  = */ 1,
        /* .prepared_bytes= */ generic::prepared_bytes,
        /* .prepare       = */ generic::prepare,
        /* .linear_prepared = */ generic::linear_prepared,
        /* .matrix_row    = */ generic::matrix_row,
        /* .layernorm     = */ generic::layernorm,
        /* .gelu_tanh     = */ generic::gelu_tanh,
        /* .gelu_erf      = */ generic::gelu_erf,
        /* .add           = */ generic::add,
        /* .add_product   = */ generic::add_product,
        /* .attention_heads = */ generic::attention_heads,
        /* .attention_heads_f16 = */ generic::attention_heads_f16,
        /* .attention_heads_int8 = */ generic::attention_heads_int8,
        /* .attention_rows = */ generic::attention_rows,
        /* .attention_rows_f16 = */ generic::attention_rows_f16,
        /* .attention_rows_int8 = */ generic::attention_rows_int8,
        /* .to_f16        = */ generic::to_f16,
        /* .quantize_kv   = */ generic::quantize_kv,
        /* .argmax        = */ generic::argmax,
    };
#endif
    return table;
}

}  // namespace PYGPT_KERNEL_NS
}  // namespace pygpt
