// This ISA's kernel table: which implementation serves each entry.
#include "kernels.h"
#include "kernels/generic.h"

#define PYGPT_STR2(x) #x
#define PYGPT_STR(x) PYGPT_STR2(x)

namespace pygpt {
namespace PYGPT_KERNEL_NS {

const Kernels& kernel_table() {
    static const Kernels table = {
        /* .name          = */ PYGPT_STR(PYGPT_KERNEL_NS),
        /* .linear        = */ generic::linear,
        /* .matrix_row    = */ generic::matrix_row,
        /* .layernorm     = */ generic::layernorm,
        /* .gelu_tanh     = */ generic::gelu_tanh,
        /* .gelu_erf      = */ generic::gelu_erf,
        /* .add           = */ generic::add,
        /* .attention_row = */ generic::attention_row,
    };
    return table;
}

}  // namespace PYGPT_KERNEL_NS
}  // namespace pygpt
