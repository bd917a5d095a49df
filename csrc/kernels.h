// The kernel interface: one table of function pointers per ISA (scalar, avx2, avx2vnni,
// avx512, avx512bf16, amx; scalar, neon, neondot on AArch64).
// Every file in csrc/kernels/ is compiled once per ISA with that ISA's flags, inside
// namespace pygpt::<isa> (the macro PYGPT_KERNEL_NS), and exposes kernel_table().
// cpu_features.cpp picks one table at model load (PYGPT_ISA=<name> forces one).
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

namespace pygpt {

// Storage type of a weight matrix. Layouts are documented in docs/FORMAT.md.
enum class DType : int32_t { F32 = 0, F16 = 1, BF16 = 2, Q8 = 3, Q4 = 4 };

// The weight of a linear layer, W [n_out, n_in]: one output feature per row, so a
// matrix-vector product streams each row once.
struct Matrix {
    DType dtype = DType::F32;
    int64_t n_out = 0, n_in = 0;
    const void* data = nullptr;     // f32/f16/bf16: [n_out, n_in] row-major; q8/q4: panels of 16
                                    // rows (see FORMAT.md and stored_shape)
    const float* scales = nullptr;  // q8/q4: panels of 16 rows, 16 per group (stored_shape)
    int64_t group = 0;              // q8/q4: inputs per scale
};

// One query row of one head against its own keys and values (attention_heads): k, v point
// at f32, f16 (uint16_t) or int8 rows as the entry's name says; k_scale, v_scale are the
// rows' scales of an int8 cache (else unused).
struct AttentionHead {
    float* out;
    const float* q;
    const void* k;
    const void* v;
    const float* k_scale;
    const float* v_scale;
    int64_t n_keys;
};
constexpr int kAttentionHeads = 4;  // at most this many heads per attention_heads call
constexpr int kAttentionRows = 8;   // at most this many rows per attention_rows call

struct Kernels {
    const char* name;  // "scalar", "avx2", "avx2vnni", "avx512", "avx512bf16", "amx", "neon", "neondot"

    // y[t, o] = x[t, :] . W[o, :] + (bias ? bias[o] : 0)   for t < T, o_begin <= o < o_end.
    // x: f32 [T, n_in]; y: f32 [T, n_out] (only columns [o_begin, o_end) are written).
    // Runs on the calling thread: the caller splits [0, n_out) among its threads (threads.h).
    // Contract: each y[t, o] is bitwise the same whatever T and the range are, so a
    // sequence gives the same tokens alone or in a batch, on 1 thread or many.
    void (*linear)(const Matrix& w, const float* bias, const float* x, int64_t T, float* y,
                   int64_t o_begin, int64_t o_end);
    // linear() in two steps, so that many threads share one preparation of the activations
    // (packed into tiles, rounded to bf16 or quantized to int8, in a layout private to this
    // table) instead of each redoing it for its columns:
    //   prepare(w, x, T, r_begin, r_end, prep) writes rows [r_begin, r_end) of x, prepared for
    //     products with w, into prep (prepared_bytes(w, T) bytes, 64-byte aligned); threads
    //     may prepare disjoint row ranges whose ends are multiples of prepare_rows (or T);
    //   linear_prepared(w, bias, prep, T, y, o_begin, o_end) then equals
    //     linear(w, bias, x, T, y, o_begin, o_end), bit for bit.
    int64_t prepare_rows;
    size_t (*prepared_bytes)(const Matrix& w, int64_t T);
    void (*prepare)(const Matrix& w, const float* x, int64_t T, int64_t r_begin, int64_t r_end, void* prep);
    void (*linear_prepared)(const Matrix& w, const float* bias, const void* prep, int64_t T, float* y,
                            int64_t o_begin, int64_t o_end);

    // out[0 : n_in] = W[row, :] as f32 (the token embedding lookup).
    void (*matrix_row)(const Matrix& w, int64_t row, float* out);

    // out = (x - mean) / sqrt(var + eps) * gamma + beta   over C channels (beta may be null;
    // out may be x).
    void (*layernorm)(float* out, const float* x, const float* gamma, const float* beta,
                      int64_t C, float eps);

    // in place: GELU, tanh approximation (GPT-2's gelu_new) and exact erf form (nn.GELU()).
    void (*gelu_tanh)(float* x, int64_t n);
    void (*gelu_erf)(float* x, int64_t n);

    // y += x
    void (*add)(float* y, const float* x, int64_t n);

    // y[t, o] += sum_k x[t, k] * w[k, o]   for t < T, o_begin <= o < o_end, k < K: x [T, K],
    // w [K, n_out] (row-major: the transpose of a linear layer's weight), y [T, n_out], all f32.
    // The two products of a low-rank term (x A^T) B^T (Model::set_lora keeps A and B
    // transposed), whose few columns (u = x A^T) or short sums (K = rank in u B^T) the tiles of
    // linear are not built for: here each x[t, k] multiplies a run of row k of w, vectorised
    // along the columns, and y is read and written once. Each sum is the chain
    // s = fma(x[t, k], w[k, o], s) over k from s = 0, then y += s: the same bits on every ISA,
    // whatever T and the range.
    void (*add_product)(float* y, const float* x, const float* w, int64_t K, int64_t n_out, int64_t T,
                        int64_t o_begin, int64_t o_end);

    // Single query rows, each its own head of causal attention against its own keys
    // (decode: one head of one sequence each), for one head h = heads[i]:
    //   s_j = scale * h.q . k_j  (j < h.n_keys),  p = softmax(s),  h.out = sum_j p_j v_j
    // k_j = h.k + j * ld, v_j = h.v + j * ld (rows of the KV cache). A row's bits do not
    // depend on the other heads of the call. kAttentionHeads rows at a time are scored and
    // summed in step: a head's keys and values are short runs that one core, reading them
    // alone from DRAM, mostly waits on; several runs at once keep more loads in flight. scratch
    // holds the sum of the n_keys floats. _f16: an f16 cache (IEEE half floats); _int8: an
    // int8 cache, key j is h.k_scale[j] * k_j and value j h.v_scale[j] * v_j (quantize_kv).
    void (*attention_heads)(const AttentionHead* heads, int n, int64_t ld, int64_t head_dim, float scale,
                            float* scratch);
    void (*attention_heads_f16)(const AttentionHead* heads, int n, int64_t ld, int64_t head_dim, float scale,
                                float* scratch);
    void (*attention_heads_int8)(const AttentionHead* heads, int n, int64_t ld, int64_t head_dim, float scale,
                                 float* scratch);
    // Rows of a prompt against one head's cache: query row r (at q + r * ld_q, output at
    // out + r * ld_out) attends to the first n_keys + r keys, for r < n_rows <= kAttentionRows.
    // Each row is bitwise attention_heads' for that row alone; the rows share the loads of
    // the keys and values. scratch holds n_rows * (n_keys + n_rows) floats.
    void (*attention_rows)(float* out, int64_t ld_out, const float* q, int64_t ld_q, int64_t n_rows,
                           const float* k, const float* v, int64_t ld, int64_t n_keys, int64_t head_dim,
                           float scale, float* scratch);
    void (*attention_rows_f16)(float* out, int64_t ld_out, const float* q, int64_t ld_q, int64_t n_rows,
                               const uint16_t* k, const uint16_t* v, int64_t ld, int64_t n_keys,
                               int64_t head_dim, float scale, float* scratch);
    // Over an int8 cache, with the keys' and values' scales k_scale, v_scale (one per key).
    void (*attention_rows_int8)(float* out, int64_t ld_out, const float* q, int64_t ld_q, int64_t n_rows,
                                const int8_t* k, const int8_t* v, const float* k_scale, const float* v_scale,
                                int64_t ld, int64_t n_keys, int64_t head_dim, float scale, float* scratch);
    // out[i] = x[i] as IEEE half, rounded to nearest even (the same bits on every ISA).
    void (*to_f16)(const float* x, uint16_t* out, int64_t n);
    // One head's key or value row for an int8 KV cache: q[i] = round(x[i] * 127 / m) (to
    // nearest even), m = max |x[i]|; returns the scale m / 127 (0 for a row of zeros, NaN
    // with q = 0 for a row holding an infinity or NaN). The same bits on every ISA.
    float (*quantize_kv)(const float* x, int8_t* q, int64_t n);
    // The index of the first largest of x[0:n] (greedy decoding's choice): NaN and -inf are
    // never chosen; -1 when nothing else is left.
    int64_t (*argmax)(const float* x, int64_t n);
};

// "f32" | "f16" | "bf16" | "int8" | "int4" -> DType; false for any other name (dtype.cpp).
bool dtype_from_name(const std::string& name, DType* out);
// The safetensors dtype a matrix of this dtype is stored as: "F32", "F16", "BF16", "I8", "U8"
// (dtype.cpp).
const char* storage_dtype(DType d);
// The shapes a Matrix's weights and scales are stored in (docs/FORMAT.md; dtype.cpp):
//   data: [data_rows, data_cols] elements of storage_dtype, elem_bytes each; scales:
//   [scale_rows, scale_cols] floats (q8/q4 only, group = inputs per scale). f32/f16/bf16: one
//   row per output; q8/q4: one row per panel of 16 outputs (kPanel), blocks of 64 inputs in
//   1024 / 512 bytes.
struct StoredShape {
    int64_t data_rows, data_cols, elem_bytes, scale_rows, scale_cols;
};
constexpr int64_t kPanel = 16;
StoredShape stored_shape(DType d, int64_t n_out, int64_t n_in, int64_t group);
// Whether q8/q4 weights of n_in inputs can have `group` inputs per scale: n_in (one scale per
// row), a multiple of 64 dividing n_in (whole blocks), or 32 where n_in is a multiple of 64
// (two groups a block: its first and second 32 inputs) (dtype.cpp).
bool quant_group_fits(int64_t group, int64_t n_in);

namespace scalar { const Kernels& kernel_table(); }
namespace avx2 { const Kernels& kernel_table(); }
namespace avx2vnni { const Kernels& kernel_table(); }  // built where the assembler knows AVX-VNNI
namespace avx512 { const Kernels& kernel_table(); }
namespace avx512bf16 { const Kernels& kernel_table(); }
namespace amx { const Kernels& kernel_table(); }  // built where the compiler knows AMX
namespace neon { const Kernels& kernel_table(); }
namespace neondot { const Kernels& kernel_table(); }

// Kernels for the ISA named by `isa` ("" = best this CPU supports, or $PYGPT_ISA when set).
// Throws std::invalid_argument for an unknown name or one this CPU cannot run.
const Kernels& select_kernels(const char* isa);

// What the CPU supports, for pygpt.system_info().
bool cpu_has_avx2();
bool cpu_has_avx2_vnni();    // that and AVX-VNNI, and a build with the avx2vnni path
bool cpu_has_avx512();       // AVX-512 F/BW/VL/DQ and VNNI (and AVX2)
bool cpu_has_avx512_bf16();  // that and AVX512-BF16
bool cpu_has_amx();          // that, AMX-TILE, AMX-INT8 and AMX-BF16 granted by the OS, and a build with the amx path
bool cpu_has_neon();      // AArch64 (where NEON is part of the base ISA)
bool cpu_has_neon_dot();  // AArch64 with the dot-product instructions (SDOT; ARMv8.2 DotProd)
int physical_cores();
int64_t physical_memory_bytes();  // 0 where unknown

}  // namespace pygpt
