// Hardware probes for the benchmark (tools/bench.py): this machine's memory read bandwidth
// and peak f32 FMA rate, measured with this ISA's vectors. Not used by the model.
#pragma once
#include <cstdint>

namespace pygpt {
namespace PYGPT_KERNEL_NS {
// Reads a[0:n] `reps` times with n_threads threads (each a contiguous slice); returns a sum
// of the data so the reads cannot be optimised away.
float probe_read(const float* a, int64_t n, int reps, int n_threads);
// Runs `iters` rounds of independent FMA chains per thread; returns the f32 FLOPs done.
double probe_fma(int64_t iters, int n_threads);
#if defined(PYGPT_AMX)
// Runs `iters` rounds of four independent AMX int8 tile products (TDPBSSD) per thread; returns
// the int8 operations done (2 per multiply-add).
double probe_tiles(int64_t iters, int n_threads);
// The same with AMX-BF16 tile products (TDPBF16PS); returns the FLOPs done (2 per multiply-add).
double probe_tiles_bf16(int64_t iters, int n_threads);
#endif
}  // namespace PYGPT_KERNEL_NS
}  // namespace pygpt
