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
        case DType::Q8: return "U8";
        case DType::Q4: return "U8";
    }
    return "?";
}

StoredShape stored_shape(DType d, int64_t n_out, int64_t n_in, int64_t group) {
    if (d == DType::Q8 || d == DType::Q4) {
        const int64_t panels = (n_out + kPanel - 1) / kPanel, block_bytes = d == DType::Q8 ? 64 : 32;
        return {panels, (n_in + 63) / 64 * block_bytes * kPanel, 1, panels, n_in / group * kPanel};
    }
    return {n_out, n_in, d == DType::F32 ? 4 : 2, 0, 0};
}

bool quant_group_fits(int64_t group, int64_t n_in) {
    if (group <= 0 || n_in <= 0 || n_in % group != 0) return false;
    return group == n_in || group % 64 == 0 || (group == 32 && n_in % 64 == 0);
}

}  // namespace pygpt
