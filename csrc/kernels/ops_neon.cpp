// Small ops hand-written for AArch64 NEON (the neon paths; x86 has ops.cpp): GELU (tanh
// form), ops.cpp's algorithm at 4 lanes. The other small ops stay generic.cpp's there, whose
// plain loops the compiler vectorises; GELU's libm tanh it cannot.
#include "kernels.h"
#include "kernels/neon.h"
#include "kernels/ops.h"

#if defined(PYGPT_NEON)

namespace pygpt {
namespace PYGPT_KERNEL_NS {
namespace simd {

namespace {

// 0.5 v (1 + tanh(u)), u = sqrt(2/pi) (v + 0.044715 v^3); tanh(u) = sign(u) (1 - e) / (1 + e)
// with e = exp(-2|u|), which never overflows.
static inline float32x4_t gelu_vec(float32x4_t v) {
    const float32x4_t cube = vmulq_f32(vdupq_n_f32(0.044715f), vmulq_f32(v, v));  // v + cube v as ops.cpp
    const float32x4_t u = vmulq_f32(vdupq_n_f32(0.7978845608028654f), vfmaq_f32(v, cube, v));
    const float32x4_t e = neon_ops::exp_neg(vmulq_f32(vdupq_n_f32(-2.0f), vabsq_f32(u)));
    const float32x4_t one = vdupq_n_f32(1.0f);
    const float32x4_t mag = vdivq_f32(vsubq_f32(one, e), vaddq_f32(one, e));
    const float32x4_t th = vbslq_f32(vdupq_n_u32(0x80000000u), u, mag);  // mag with u's sign
    return vmulq_f32(vmulq_f32(vdupq_n_f32(0.5f), v), vaddq_f32(one, th));
}

}  // namespace

void gelu_tanh(float* x, int64_t n) { neon_ops::map4(x, n, 0.0f, gelu_vec); }

}  // namespace simd
}  // namespace PYGPT_KERNEL_NS
}  // namespace pygpt

#endif  // PYGPT_NEON
