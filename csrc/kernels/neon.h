// Shared pieces of the NEON kernels (AArch64 neon paths only), static inline inside the
// including file's ISA namespace, as simd.h is for x86.
#pragma once

#if defined(PYGPT_NEON)
#include <arm_neon.h>

#include <cstdint>
#include <cstring>

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


// x[i] = f(x[i]) for i < n, 4 lanes at a time; the last n % 4 through a buffer whose other
// lanes hold `pad` (a value f takes without trouble).
template <class F>
static inline void map4(float* x, int64_t n, float pad, F f) {
    int64_t i = 0;
    for (; i + 4 <= n; i += 4) vst1q_f32(x + i, f(vld1q_f32(x + i)));
    if (i < n) {
        float t[4] = {pad, pad, pad, pad};
        std::memcpy(t, x + i, (n - i) * sizeof(float));
        vst1q_f32(t, f(vld1q_f32(t)));
        std::memcpy(x + i, t, (n - i) * sizeof(float));
    }
}

}  // namespace neon_ops
}  // namespace PYGPT_KERNEL_NS
}  // namespace pygpt

#endif  // PYGPT_NEON
