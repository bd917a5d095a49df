// Shared pieces of the NEON kernels (AArch64 neon paths only), static inline inside the
// including file's ISA namespace, as simd.h is for x86.
#pragma once

#if defined(PYGPT_NEON)
#include <arm_neon.h>

namespace pygpt {
namespace PYGPT_KERNEL_NS {
namespace neon_ops {

// exp(x) for x <= 0 (simd.h's exp_neg at 4 lanes: Cephes' polynomial after a reduction by
// ln 2; the clamp at -87 keeps 2^n normal, and lets a NaN through).
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

}  // namespace neon_ops
}  // namespace PYGPT_KERNEL_NS
}  // namespace pygpt

#endif  // PYGPT_NEON
