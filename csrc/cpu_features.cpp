// Picks the kernel table once per model load: the best ISA the CPU supports, or the one
// named by PYGPT_ISA / the isa argument.
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>

#include "kernels.h"

#include <unistd.h>
#if defined(__linux__)
#include <sys/syscall.h>
#endif

#if defined(PYGPT_X86)
#include <cpuid.h>
#endif
#if defined(PYGPT_AARCH64) && defined(__linux__)
#include <sys/auxv.h>
#endif
#if defined(PYGPT_AARCH64) && defined(__APPLE__)
#include <sys/sysctl.h>
#endif

namespace pygpt {

#if defined(PYGPT_X86)
// F16C is CPUID.1:ECX bit 29; read directly, since clang before 15 has no "f16c" for
// __builtin_cpu_supports (the AVX check below covers the OS's saving of the registers).
static bool cpu_has_f16c() {
    unsigned eax, ebx, ecx, edx;
    return __get_cpuid(1, &eax, &ebx, &ecx, &edx) && (ecx & bit_F16C);
}
#endif

bool cpu_has_avx2() {
#if defined(PYGPT_X86)
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && cpu_has_f16c();
#else
    return false;
#endif
}

bool cpu_has_avx2_vnni() {
#if defined(PYGPT_AVX2VNNI) && defined(PYGPT_VNNI256_EVEX)
    // development build: the path's vpdpbusd is the EVEX form (CMakeLists.txt)
    return cpu_has_avx2() && __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512vl");
#elif defined(PYGPT_AVX2VNNI)
    unsigned eax, ebx, ecx, edx;  // AVX-VNNI: CPUID.(EAX=7, ECX=1):EAX bit 4
    return cpu_has_avx2() && __get_cpuid_count(7, 1, &eax, &ebx, &ecx, &edx) && (eax & (1u << 4));
#else
    return false;
#endif
}

bool cpu_has_avx512() {
#if defined(PYGPT_X86)
    // The avx512 paths multiply int8 with VNNI's vpdpbusd: Skylake-SP/X, which lacks it, runs
    // the avx2 path.
    return cpu_has_avx2() && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
           __builtin_cpu_supports("avx512vnni");
#else
    return false;
#endif
}

bool cpu_has_avx512_bf16() {
#if defined(PYGPT_X86)
    return cpu_has_avx512() && __builtin_cpu_supports("avx512bf16");
#else
    return false;
#endif
}

bool cpu_has_amx() {
#if defined(PYGPT_AMX) && defined(__linux__)
    // AMX-BF16, AMX-TILE and AMX-INT8 are CPUID.(EAX=7, ECX=0):EDX bits 22, 24 and 25. Linux gives a
    // process the tiles' 8 KiB of register state only when asked (arch_prctl
    // ARCH_REQ_XCOMP_PERM for XFEATURE_XTILEDATA, Linux 5.16 and later), once for all its
    // threads; the answer is kept, since asking again changes nothing.
    static const bool granted = [] {
        unsigned eax, ebx, ecx, edx;
        if (!cpu_has_avx512_bf16() || !__get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx)) return false;
        if (!(edx & (1u << 22)) || !(edx & (1u << 24)) || !(edx & (1u << 25))) return false;
        constexpr long kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
        return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
    }();
    return granted;
#else
    return false;
#endif
}

bool cpu_has_neon() {
#if defined(PYGPT_AARCH64)
    return true;
#else
    return false;
#endif
}

bool cpu_has_neon_dot() {
#if defined(PYGPT_AARCH64) && defined(__linux__)
    return (getauxval(AT_HWCAP) & (1ul << 20)) != 0;  // HWCAP_ASIMDDP
#elif defined(PYGPT_AARCH64) && defined(__APPLE__)
    int has = 0;
    size_t size = sizeof(has);
    return sysctlbyname("hw.optional.arm.FEAT_DotProd", &has, &size, nullptr, 0) == 0 && has;
#else
    return false;
#endif
}

const Kernels& select_kernels(const char* isa) {
    std::string want = isa ? isa : "";
    if (want.empty()) {
        const char* env = std::getenv("PYGPT_ISA");
        if (env) want = env;
    }
    if (want.empty() || want == "auto") {
#if defined(PYGPT_X86)
#if defined(PYGPT_AMX)
        if (cpu_has_amx()) return amx::kernel_table();
#endif
        if (cpu_has_avx512_bf16()) return avx512bf16::kernel_table();
        if (cpu_has_avx512()) return avx512::kernel_table();
#if defined(PYGPT_AVX2VNNI)
        if (cpu_has_avx2_vnni()) return avx2vnni::kernel_table();
#endif
        if (cpu_has_avx2()) return avx2::kernel_table();
#endif
#if defined(PYGPT_AARCH64)
        return cpu_has_neon_dot() ? neondot::kernel_table() : neon::kernel_table();
#endif
        return scalar::kernel_table();
    }
    if (want == "scalar") return scalar::kernel_table();
#if defined(PYGPT_X86)
    if (want == "avx2") {
        if (!cpu_has_avx2()) throw std::invalid_argument("PYGPT_ISA=avx2: this CPU lacks AVX2/FMA/F16C");
        return avx2::kernel_table();
    }
    if (want == "avx2vnni") {
#if defined(PYGPT_AVX2VNNI)
        if (!cpu_has_avx2_vnni())
            throw std::invalid_argument("PYGPT_ISA=avx2vnni: this CPU lacks AVX2/FMA/F16C/AVX-VNNI");
        return avx2vnni::kernel_table();
#else
        throw std::invalid_argument(
            "PYGPT_ISA=avx2vnni: this build has no avx2vnni path (its assembler lacked AVX-VNNI)");
#endif
    }
    if (want == "avx512") {
        if (!cpu_has_avx512())
            throw std::invalid_argument("PYGPT_ISA=avx512: this CPU lacks AVX-512 (F/BW/VL/DQ/VNNI)");
        return avx512::kernel_table();
    }
    if (want == "avx512bf16") {
        if (!cpu_has_avx512_bf16())
            throw std::invalid_argument("PYGPT_ISA=avx512bf16: this CPU lacks AVX-512 (F/BW/VL/DQ/VNNI/BF16)");
        return avx512bf16::kernel_table();
    }
    if (want == "amx") {
#if defined(PYGPT_AMX)
        if (!cpu_has_amx())
            throw std::invalid_argument(
                "PYGPT_ISA=amx: this CPU lacks AMX-TILE/AMX-INT8/AMX-BF16 (or AVX-512 BF16), or the OS did not grant the tiles");
        return amx::kernel_table();
#else
        throw std::invalid_argument("PYGPT_ISA=amx: this build has no amx path (its compiler lacked AMX)");
#endif
    }
#endif
#if defined(PYGPT_AARCH64)
    if (want == "neon") return neon::kernel_table();
    if (want == "neondot") {
        if (!cpu_has_neon_dot())
            throw std::invalid_argument("PYGPT_ISA=neondot: this CPU lacks the dot-product instructions");
        return neondot::kernel_table();
    }
#endif
    if (want == "avx2" || want == "avx2vnni" || want == "avx512" || want == "avx512bf16" || want == "amx" ||
        want == "neon" || want == "neondot")
        throw std::invalid_argument("PYGPT_ISA=" + want + ": not a kernel path of this CPU architecture");
    throw std::invalid_argument("unknown ISA '" + want +
                                "' (expected scalar, avx2, avx2vnni, avx512, avx512bf16, amx, neon, neondot or auto)");
}

// Physical cores: distinct (package, core) pairs in /proc/cpuinfo; falls back to the
// logical count where that file says nothing.
int physical_cores() {
    std::ifstream f("/proc/cpuinfo");
    std::set<std::pair<int, int>> cores;
    int phys = 0, core = -1;
    std::string line;
    while (std::getline(f, line)) {
        auto value = [&]() { return std::atoi(line.c_str() + line.find(':') + 1); };
        if (line.rfind("physical id", 0) == 0) phys = value();
        else if (line.rfind("core id", 0) == 0) core = value();
        else if (line.empty() && core >= 0) { cores.insert({phys, core}); core = -1; }
    }
    if (core >= 0) cores.insert({phys, core});
    if (!cores.empty()) return static_cast<int>(cores.size());
    unsigned n = std::thread::hardware_concurrency();
    return n ? static_cast<int>(n) : 1;
}

int64_t physical_memory_bytes() {
#if defined(_SC_PHYS_PAGES) && defined(_SC_PAGESIZE)
    const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
    if (pages > 0 && page > 0) return int64_t(pages) * int64_t(page);
#endif
    return 0;
}

}  // namespace pygpt
