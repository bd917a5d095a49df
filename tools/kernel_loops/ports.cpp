// How many of the kernels' vector instructions one core retires per second, alone and in
// pairs: whether two kinds share execution ports (a pair runs at the rate of one kind alone
// when they do, at up to twice that when they don't). Registers only, no memory traffic
// beyond a 64-byte broadcast operand, 8 or 16 independent chains (enough for any latency).
// The int4 tile of a batch-8 decode issues one vpdpbusd per 64 weights and token, so its
// floor is (weights x tokens / 64) / (cores x the vpdpbusd rate); attention widens int8 to
// float (vpmovsxbd, vcvtdq2ps) and multiplies with vfmadd231ps.
//   tools/kernel_loops/build.sh && build/kernel_loops/ports [iterations]
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>

// One loop body per kind, on 8 chains (zmm0-7, or zmm8-15 for a pair's second kind);
// zmm30 (zero) and zmm31 (a normal float, small bytes) are the sources, (%1) a broadcast
// operand; the chains start at zero, so no denormal or NaN slows a float kind.
#define CH8(I, a, b, c, d, e, f, g, h) I(a) I(b) I(c) I(d) I(e) I(f) I(g) I(h)
#define LO(I) CH8(I, 0, 1, 2, 3, 4, 5, 6, 7)
#define HI(I) CH8(I, 8, 9, 10, 11, 12, 13, 14, 15)
#define DPZ(i) "vpdpbusd %%zmm30, %%zmm31, %%zmm" #i "\n"
#define DPY(i) "vpdpbusd %%ymm30, %%ymm31, %%ymm" #i "\n"
#define DPB(i) "vpdpbusd (%1)%{1to16%}, %%zmm31, %%zmm" #i "\n"
#define FMA(i) "vfmadd231ps %%zmm30, %%zmm31, %%zmm" #i "\n"
#define BF16(i) "vdpbf16ps %%zmm30, %%zmm31, %%zmm" #i "\n"
#define AND(i) "vpandd %%zmm30, %%zmm31, %%zmm" #i "\n"
#define SRL(i) "vpsrlw $4, %%zmm30, %%zmm" #i "\n"
#define SXB(i) "vpmovsxbd %%xmm30, %%zmm" #i "\n"
#define CVT(i) "vcvtdq2ps %%zmm30, %%zmm" #i "\n"
#define ZERO(i) "vpxord %%zmm" #i ", %%zmm" #i ", %%zmm" #i "\n"

// Seconds for n passes of body (instructions per pass: per_pass).
#define KERNEL(name, body)                                                                          \
    static double name(long n) {                                                                    \
        alignas(64) static const int32_t operand[16] = {0x01020304};                                \
        const auto t0 = std::chrono::steady_clock::now();                                           \
        __asm__ volatile(                                                                           \
            "vpxord %%zmm30, %%zmm30, %%zmm30\n vpbroadcastd (%1), %%zmm31\n" LO(ZERO) HI(ZERO)      \
            "1:\n" body "dec %0\n jnz 1b\n"                                                         \
            : "+r"(n)                                                                               \
            : "r"(operand)                                                                          \
            : "memory", "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8",     \
              "xmm9", "xmm10", "xmm11", "xmm12", "xmm13", "xmm14", "xmm15", "xmm30", "xmm31");      \
        return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();        \
    }

KERNEL(dpbusd_zmm, LO(DPZ) HI(DPZ))
KERNEL(dpbusd_ymm, LO(DPY) HI(DPY))
KERNEL(dpbusd_bcst, LO(DPB) HI(DPB))
KERNEL(fma_zmm, LO(FMA) HI(FMA))
KERNEL(bf16_zmm, LO(BF16) HI(BF16))
KERNEL(dpbusd_fma, LO(DPZ) HI(FMA))
KERNEL(dpbusd_bf16, LO(DPZ) HI(BF16))
KERNEL(dpbusd_and_srl, LO(DPZ) LO(DPZ) CH8(AND, 8, 9, 10, 11, 12, 13, 14, 15) CH8(SRL, 8, 9, 10, 11, 12, 13, 14, 15))
KERNEL(dpbusd_sxb, LO(DPZ) HI(SXB))
KERNEL(dpbusd_cvt, LO(DPZ) HI(CVT))
KERNEL(fma_sxb, LO(FMA) HI(SXB))
KERNEL(fma_cvt, LO(FMA) HI(CVT))

int main(int argc, char** argv) {
    const long n = argc > 1 ? std::atol(argv[1]) : 20000000;
    if (n < 1) {
        std::fprintf(stderr, "usage: ports [iterations >= 1]\n");
        return 2;
    }
    struct Case {
        const char* name;
        double (*run)(long);
        int per_pass;      // instructions per pass
        const char* what;  // how to read a pair
    };
    const Case cases[] = {
        {"vpdpbusd zmm", dpbusd_zmm, 16, "64 int8 MACs each"},
        {"vpdpbusd ymm", dpbusd_ymm, 16, "32 int8 MACs each"},
        {"vpdpbusd zmm, broadcast operand", dpbusd_bcst, 16, "the tiles' form"},
        {"vfmadd231ps zmm", fma_zmm, 16, "16 f32 FMAs each"},
        {"vdpbf16ps zmm", bf16_zmm, 16, "32 bf16 MACs each"},
        {"vpdpbusd + vfmadd231ps", dpbusd_fma, 16, "pair"},
        {"vpdpbusd + vdpbf16ps", dpbusd_bf16, 16, "pair"},
        {"2 vpdpbusd + vpandd + vpsrlw", dpbusd_and_srl, 32, "pair (the q4 unpack)"},
        {"vpdpbusd + vpmovsxbd", dpbusd_sxb, 16, "pair"},
        {"vpdpbusd + vcvtdq2ps", dpbusd_cvt, 16, "pair"},
        {"vfmadd231ps + vpmovsxbd", fma_sxb, 16, "pair (int8 attention)"},
        {"vfmadd231ps + vcvtdq2ps", fma_cvt, 16, "pair (int8 attention)"},
    };
    for (const Case& c : cases) {
        c.run(n / 10 + 1);  // warm up (clock, caches)
        const double s = c.run(n);
        std::printf("%-34s %6.2f G instructions/s  (%s)\n", c.name, double(n) * c.per_pass / s / 1e9, c.what);
    }
    return 0;
}
