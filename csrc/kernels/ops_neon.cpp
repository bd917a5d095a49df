// Small ops hand-written for AArch64 NEON (the neon paths; x86 has ops.cpp): GELU (tanh
// form), ops.cpp's algorithm at 4 lanes. The other small ops stay generic.cpp's there, whose
// plain loops the compiler vectorises; GELU's libm tanh it cannot.
#include <cstring>

#include "kernels.h"
#include "kernels/ops.h"

#if defined(PYGPT_NEON)
#include <arm_neon.h>

namespace pygpt {
namespace PYGPT_KERNEL_NS {
namespace simd {

namespace {

// exp(x) for x <= 0 (simd.h's exp_neg: Cephes' polynomial after a reduction by ln 2; the
// clamp at -87 keeps 2^n normal, and lets a NaN through).
static inline float32x4_t exp_neg(float32x4_t x) {
    x = vmaxq_f32(vdupq_n_f32(-87.0f), x);
    const float32x4_t n = vrndnq_f32(vmulq_f32(x, vdupq_n_f32(1.44269504088896341f)));
    float32x4_t r = vfmsq_f32(x, n, vdupq_n_f32(0.693359375f));
    r = vfmsq_f32(r, n, vdupq_n_f32(-2.12194440e-4f));
    float32x4_t p = vdupq_n_f32(1.9875691500e-4f);
    p = vfmaq_f32(vdupq_n_f32(1.3981999507e-3f), p, r);
    p = vfmaq_f32(vdupq_n_f32(8.3334519073e-3f), p, r);
    p = vfmaq_f32(vdupq_n_f32(4.1665795894e-2f), p, r);
    p = vfmaq_f32(vdupq_n_f32(1.6666665459e-1f), p, r);
    p = vfmaq_f32(vdupq_n_f32(5.0000001201e-1f), p, r);
    p = vfmaq_f32(vaddq_f32(r, vdupq_n_f32(1.0f)), p, vmulq_f32(r, r));
    const int32x4_t e = vshlq_n_s32(vaddq_s32(vcvtnq_s32_f32(n), vdupq_n_s32(127)), 23);
    return vmulq_f32(p, vreinterpretq_f32_s32(e));
}

// 0.5 v (1 + tanh(u)), u = sqrt(2/pi) (v + 0.044715 v^3); tanh(u) = sign(u) (1 - e) / (1 + e)
// with e = exp(-2|u|), which never overflows.
static inline float32x4_t gelu_vec(float32x4_t v) {
    const float32x4_t cube = vmulq_f32(vdupq_n_f32(0.044715f), vmulq_f32(v, v));  // v + cube v as ops.cpp
    const float32x4_t u = vmulq_f32(vdupq_n_f32(0.7978845608028654f), vfmaq_f32(v, cube, v));
    const float32x4_t e = exp_neg(vmulq_f32(vdupq_n_f32(-2.0f), vabsq_f32(u)));
    const float32x4_t one = vdupq_n_f32(1.0f);
    const float32x4_t mag = vdivq_f32(vsubq_f32(one, e), vaddq_f32(one, e));
    const float32x4_t th = vbslq_f32(vdupq_n_u32(0x80000000u), u, mag);  // mag with u's sign
    return vmulq_f32(vmulq_f32(vdupq_n_f32(0.5f), v), vaddq_f32(one, th));
}

}  // namespace

void gelu_tanh(float* x, int64_t n) {
    int64_t i = 0;
    for (; i + 4 <= n; i += 4) vst1q_f32(x + i, gelu_vec(vld1q_f32(x + i)));
    if (i < n) {
        float t[4] = {0.0f, 0.0f, 0.0f, 0.0f};
        std::memcpy(t, x + i, (n - i) * sizeof(float));
        vst1q_f32(t, gelu_vec(vld1q_f32(t)));
        std::memcpy(x + i, t, (n - i) * sizeof(float));
    }
}

}  // namespace simd
}  // namespace PYGPT_KERNEL_NS
}  // namespace pygpt

#endif  // PYGPT_NEON
