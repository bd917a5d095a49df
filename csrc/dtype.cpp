// Names and storage sizes of the weight dtypes (layouts in docs/FORMAT.md).
#include "kernels.h"

namespace pygpt {

bool dtype_from_name(const std::string& name, DType* out) {
    static const struct { const char* name; DType dtype; } names[] = {
        {"f32", DType::F32}, {"f16", DType::F16}, {"bf16", DType::BF16}, {"int8", DType::Q8}, {"int4", DType::Q4}};
    for (const auto& n : names)
        if (name == n.name) {
            *out = n.dtype;
            return true;
        }
    return false;
}

const char* storage_dtype(DType d) {
    switch (d) {
        case DType::F32: return "F32";
        case DType::F16: return "F16";
        case DType::BF16: return "BF16";
        case DType::Q8: return "I8";
        case DType::Q4: return "U8";
    }
    return "?";
}

int64_t matrix_row_bytes(DType d, int64_t n_in) {
    switch (d) {
        case DType::F32: return 4 * n_in;
        case DType::F16:
        case DType::BF16: return 2 * n_in;
        case DType::Q8: return n_in;
        case DType::Q4: return (n_in + 63) / 64 * 32;  // blocks of 64 inputs in 32 bytes
    }
    return 0;
}

}  // namespace pygpt
