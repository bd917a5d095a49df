// Shared pieces of the hand-written SIMD kernels, included by the kernel files of each
// ISA (so everything here is static inline inside the ISA's own namespace: no symbol of
// one ISA can be picked by the linker for another).
//
// Lane contract of every dot product in the SIMD paths: an output is accumulated in one
// vector register, lane l summing the inputs k = l (mod lanes) in increasing k (tail lanes
// zero-filled), then the lanes are added by the fixed tree (l, l+8), (l, l+4), (l, l+2),
// (0, 1) -- the same tree as generic::dot. The tree does not depend on how many outputs
// are reduced together, so a result does not depend on the tile it was computed in, on T
// or on the thread count.
#pragma once
#include <cstdint>
#include <cstdlib>
#include <cstring>

#if defined(__AVX2__)
#include <immintrin.h>
#endif

namespace pygpt {
namespace PYGPT_KERNEL_NS {
namespace simd {

// Per-thread scratch that grows and is reused (no allocation per call once warm): `slot` 0
// is used by the calling thread for a call's shared buffers, slot 1 by each OpenMP thread
// for its own. Each thread has its own, so concurrent calls never share one. The memory
// is reclaimed at process exit (a few KB to MB per thread).
static inline void* thread_scratch(int slot, size_t bytes) {
    static thread_local void* ptr[2] = {nullptr, nullptr};
    static thread_local size_t size[2] = {0, 0};
    if (bytes > size[slot]) {
        std::free(ptr[slot]);
        size[slot] = (bytes + 4095) & ~(size_t)4095;
        ptr[slot] = std::aligned_alloc(64, size[slot]);
        if (!ptr[slot]) {
            size[slot] = 0;
            return nullptr;
        }
    }
    return ptr[slot];
}

static inline int64_t round_up(int64_t n, int64_t m) { return (n + m - 1) / m * m; }

#if defined(PYGPT_AMX)
// AMX: the calling thread's 8 tiles as 16 rows of 64 bytes each (palette 1). Release them
// (_tile_release) when done, so that the thread's context switches stop saving 8 KiB.
struct alignas(64) TileConfig {
    uint8_t palette = 1, start_row = 0, reserved[14] = {};
    uint16_t colsb[16] = {};
    uint8_t rows[16] = {};
};

static inline void configure_tiles() {
    TileConfig c;
    for (int i = 0; i < 8; i++) {
        c.colsb[i] = 64;
        c.rows[i] = 16;
    }
    _tile_loadconfig(&c);
}
#endif

// Tokens per block of a linear layer: activations of a block about half of L2 (a multiple
// of the tile's tt tokens).
static inline int64_t token_block(int64_t x_row_bytes, int64_t tt) {
    int64_t tb = (int64_t)(512 * 1024) / (x_row_bytes > 0 ? x_row_bytes : 1);
    tb = tb / tt * tt;
    return tb < tt ? tt : tb;
}

#if defined(__AVX512F__)

// Sums of 16 accumulators: out[a] = tree-sum of the lanes of v[a] (unused v may be zero).
static inline void reduce16(const __m512* v, float* out) {
    __m512 s1[8], s2[4], s3[2];
    for (int i = 0; i < 8; i++)  // lanes (l, l+8)
        s1[i] = _mm512_add_ps(_mm512_shuffle_f32x4(v[2 * i], v[2 * i + 1], 0x44),
                              _mm512_shuffle_f32x4(v[2 * i], v[2 * i + 1], 0xEE));
    for (int i = 0; i < 4; i++)  // (l, l+4)
        s2[i] = _mm512_add_ps(_mm512_shuffle_f32x4(s1[2 * i], s1[2 * i + 1], 0x88),
                              _mm512_shuffle_f32x4(s1[2 * i], s1[2 * i + 1], 0xDD));
    for (int i = 0; i < 2; i++)  // (l, l+2)
        s3[i] = _mm512_add_ps(_mm512_shuffle_ps(s2[2 * i], s2[2 * i + 1], 0x44),
                              _mm512_shuffle_ps(s2[2 * i], s2[2 * i + 1], 0xEE));
    // (0, 1): lane 4c + e of s4 is the sum of v[4e + c]
    __m512 s4 = _mm512_add_ps(_mm512_shuffle_ps(s3[0], s3[1], 0x88), _mm512_shuffle_ps(s3[0], s3[1], 0xDD));
    const __m512i order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
    _mm512_storeu_ps(out, _mm512_permutexvar_ps(order, s4));
}

// n <= 16 accumulators
static inline void reduce_n(const __m512* v, int n, float* out) {
    if (n == 16) {
        reduce16(v, out);
        return;
    }
    __m512 pad[16];
    for (int i = 0; i < 16; i++) pad[i] = i < n ? v[i] : _mm512_setzero_ps();
    float tmp[16];
    reduce16(pad, tmp);
    for (int i = 0; i < n; i++) out[i] = tmp[i];
}

static inline float hsum(__m512 v) {
    float out;
    reduce_n(&v, 1, &out);
    return out;
}

static inline __mmask16 tail_mask16(int64_t n) { return (__mmask16)((1u << n) - 1u); }
static inline __mmask32 tail_mask32(int64_t n) { return n >= 32 ? 0xffffffffu : (__mmask32)((1u << n) - 1u); }

// exp(x) for x <= 0 (softmax): Cody-Waite range reduction and a degree-6 polynomial,
// ~1 ulp; x below -87 gives 0.
static inline __m512 exp_neg(__m512 x) {
    x = _mm512_max_ps(_mm512_set1_ps(-87.0f), x);  // this operand order lets a NaN x through
    const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.9875691500e-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
    p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
    const __m512i e = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23);
    return _mm512_mul_ps(p, _mm512_castsi512_ps(e));
}

#elif defined(__AVX2__)

// Sums of 8 accumulators: out[a] = tree-sum of the lanes of v[a]: (l, l+4), (l, l+2), (0, 1).
static inline void reduce8(const __m256* v, float* out) {
    __m256 s1[4], s2[2];
    for (int i = 0; i < 4; i++)
        s1[i] = _mm256_add_ps(_mm256_permute2f128_ps(v[2 * i], v[2 * i + 1], 0x20),
                              _mm256_permute2f128_ps(v[2 * i], v[2 * i + 1], 0x31));
    for (int i = 0; i < 2; i++)
        s2[i] = _mm256_add_ps(_mm256_shuffle_ps(s1[2 * i], s1[2 * i + 1], 0x44),
                              _mm256_shuffle_ps(s1[2 * i], s1[2 * i + 1], 0xEE));
    // lane 4c + e of s3 is the sum of v[2e + c]
    __m256 s3 = _mm256_add_ps(_mm256_shuffle_ps(s2[0], s2[1], 0x88), _mm256_shuffle_ps(s2[0], s2[1], 0xDD));
    const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    _mm256_storeu_ps(out, _mm256_permutevar8x32_ps(s3, order));
}

static inline void reduce_n(const __m256* v, int n, float* out) {
    __m256 pad[8];
    for (int i = 0; i < 8; i++) pad[i] = i < n ? v[i] : _mm256_setzero_ps();
    float tmp[8];
    reduce8(pad, tmp);
    for (int i = 0; i < n; i++) out[i] = tmp[i];
}

static inline float hsum(__m256 v) {
    float out;
    reduce_n(&v, 1, &out);
    return out;
}

static inline __m256 exp_neg(__m256 x) {
    x = _mm256_max_ps(_mm256_set1_ps(-87.0f), x);  // this operand order lets a NaN x through
    const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

#endif

}  // namespace simd
}  // namespace PYGPT_KERNEL_NS
}  // namespace pygpt
