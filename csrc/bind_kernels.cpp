// Test-only bindings of the kernel tables: tests call one ISA's kernel directly, on any
// shape, and compare it with the scalar reference and with NumPy. Not part of the public
// API (names start with an underscore).
#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "bindings.h"
#include "kernels.h"
#include "threads.h"

namespace py = pybind11;

namespace pygpt {
#define PYGPT_DECLARE_PROBES(ns)                                                \
    namespace ns {                                                              \
    float probe_read(const float* a, int64_t n, int reps, int n_threads);      \
    double probe_fma(int64_t iters, int n_threads);                            \
    }
PYGPT_DECLARE_PROBES(scalar)
#if defined(PYGPT_X86)
PYGPT_DECLARE_PROBES(avx2)
PYGPT_DECLARE_PROBES(avx512)
PYGPT_DECLARE_PROBES(avx512bf16)
#endif
#undef PYGPT_DECLARE_PROBES
#if defined(PYGPT_AMX)
namespace amx {
double probe_tiles(int64_t iters, int n_threads);
double probe_tiles_bf16(int64_t iters, int n_threads);
}
#endif

namespace {

// Runs probe(iters, n_threads) with the GIL released: (seconds, the operations it reports).
py::tuple timed_probe(double (*probe)(int64_t, int), int64_t iters, int n_threads) {
    double ops, seconds;
    {
        py::gil_scoped_release release;
        const auto t0 = std::chrono::steady_clock::now();
        ops = probe(iters, n_threads);
        seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    }
    return py::make_tuple(seconds, ops);
}

using F32 = py::array_t<float, py::array::c_style | py::array::forcecast>;
using U8 = py::array_t<uint8_t, py::array::c_style>;
using U16 = py::array_t<uint16_t, py::array::c_style>;
using I8 = py::array_t<int8_t, py::array::c_style>;

// A Matrix over the numpy buffers, validated so no kernel reads outside them.
Matrix make_matrix(const std::string& dtype, const U8& w, const F32* scales, int64_t n_out, int64_t n_in,
                   int64_t group) {
    Matrix m;
    if (!dtype_from_name(dtype, &m.dtype)) throw std::invalid_argument("unknown dtype '" + dtype + "'");
    m.n_out = n_out;
    m.n_in = n_in;
    if (n_out < 1 || n_in < 1) throw std::invalid_argument("n_out and n_in must be >= 1");
    const bool quant = m.dtype == DType::Q8 || m.dtype == DType::Q4;
    if (quant && (group <= 0 || n_in % group != 0)) throw std::invalid_argument("group must divide n_in");
    const StoredShape s = stored_shape(m.dtype, n_out, n_in, group);
    const int64_t bytes = s.data_rows * s.data_cols * s.elem_bytes;
    if (w.size() != bytes)
        throw std::invalid_argument("weight buffer has " + std::to_string(w.size()) + " bytes, expected " +
                                    std::to_string(bytes));
    m.data = w.data();
    if (quant) {
        if (!scales || scales->size() != s.scale_rows * s.scale_cols)
            throw std::invalid_argument("scales must have " + std::to_string(s.scale_rows * s.scale_cols) +
                                        " values (docs/FORMAT.md)");
        m.scales = scales->data();
        m.group = group;
    }
    return m;
}

// An int8 cache's rows' scales: one key scale and one value scale per key.
void check_kv_scales(const F32& k_scale, const F32& v_scale, int64_t n_keys) {
    if (k_scale.size() != n_keys || v_scale.size() != n_keys)
        throw std::invalid_argument("k_scale and v_scale need one scale per key");
}

// Single query rows of separate heads through Kernels::attention_heads*: n rows of HS at q,
// row i against ks[i], vs[i] [n_keys_i, ld] of one dtype and ld (f32, f16 bits as uint16,
// or int8 with k_scales[i], v_scales[i], one per key); out [n, HS].
void attention_heads_binding(const std::string& isa, const float* q, int64_t n, int64_t HS,
                             const std::vector<py::array>& ks, const std::vector<py::array>& vs, float scale,
                             const std::vector<F32>& k_scales, const std::vector<F32>& v_scales, float* out) {
    if (n < 1 || (size_t)n != ks.size() || ks.size() != vs.size())
        throw std::invalid_argument("q must be [n, HS] with n >= 1 and one k, v per row");
    const int64_t ld = ks[0].ndim() == 2 ? ks[0].shape(1) : 0;
    const py::dtype dt = ks[0].dtype();
    const bool int8 = dt.is(py::dtype::of<int8_t>());
    if (!int8 && !dt.is(py::dtype::of<uint16_t>()) && !dt.is(py::dtype::of<float>()))
        throw std::invalid_argument("keys must be float32, uint16 (f16 bits) or int8");
    if (HS < 1 || HS > ld) throw std::invalid_argument("need 1 <= HS <= ld");
    if (int8 && (k_scales.size() != (size_t)n || v_scales.size() != (size_t)n))
        throw std::invalid_argument("int8 keys and values need one k_scale and v_scale array per row");
    std::vector<AttentionHead> heads(n);
    int64_t total = 0;
    for (int64_t i = 0; i < n; i++) {
        const py::array &k = ks[i], &v = vs[i];
        if (k.ndim() != 2 || v.ndim() != 2 || k.shape(0) != v.shape(0) || k.shape(1) != ld || v.shape(1) != ld ||
            k.shape(0) < 1 || !k.dtype().is(dt) || !v.dtype().is(dt) ||
            !(k.flags() & py::array::c_style) || !(v.flags() & py::array::c_style))
            throw std::invalid_argument("each k, v must be a C-contiguous [n_keys >= 1, ld] array of one dtype");
        if (int8) check_kv_scales(k_scales[i], v_scales[i], k.shape(0));
        heads[i] = {out + i * HS, q + i * HS, k.data(), v.data(), int8 ? k_scales[i].data() : nullptr,
                    int8 ? v_scales[i].data() : nullptr, k.shape(0)};
        total += k.shape(0);
    }
    std::vector<float> scratch(total);
    const Kernels& kt = select_kernels(isa.c_str());
    if (int8) kt.attention_heads_int8(heads.data(), (int)n, ld, HS, scale, scratch.data());
    else if (dt.is(py::dtype::of<uint16_t>())) kt.attention_heads_f16(heads.data(), (int)n, ld, HS, scale, scratch.data());
    else kt.attention_heads(heads.data(), (int)n, ld, HS, scale, scratch.data());
}

// One query row q [HS] of one head: the heads binding with one head.
F32 attention_row_binding(const std::string& isa, const F32& q, const py::array& k, const py::array& v, float scale,
                          const std::vector<F32>& k_scale = {}, const std::vector<F32>& v_scale = {}) {
    F32 out(q.size());
    attention_heads_binding(isa, q.data(), 1, q.size(), {k}, {v}, scale, k_scale, v_scale, out.mutable_data());
    return out;
}

}  // namespace

void bind_kernels(py::module_& m) {
    m.def(
        "_kernel_linear",
        [](const std::string& isa, const std::string& dtype, const U8& w, const py::object& scales,
           const py::object& bias, const F32& x, int64_t n_out, int64_t group, int n_threads, int64_t chunk) {
            if (x.ndim() != 2) throw std::invalid_argument("x must be [T, n_in]");
            const int64_t T = x.shape(0), n_in = x.shape(1);
            F32 s;
            if (!scales.is_none()) s = scales.cast<F32>();
            Matrix mat = make_matrix(dtype, w, scales.is_none() ? nullptr : &s, n_out, n_in, group);
            F32 b;
            if (!bias.is_none()) {
                b = bias.cast<F32>();
                if (b.size() != n_out) throw std::invalid_argument("bias must have n_out values");
            }
            if (n_threads < 1) throw std::invalid_argument("n_threads must be >= 1");
            const Kernels& k = select_kernels(isa.c_str());
            F32 y({T, n_out});
            float* yp = y.mutable_data();
            const float* bp = bias.is_none() ? nullptr : b.data();
            {
                py::gil_scoped_release release;
                if (chunk <= 0) {
                    // thread shares cut at any row (unit 1), so the tests see odd range boundaries
                    run_team(n_threads, [&](const Team& team) {
                        int64_t o0, o1;
                        team.split(n_out, 1, &o0, &o1);
                        k.linear(mat, bp, x.data(), T, yp, o0, o1);
                    });
                } else {
                    // as a prompt's products run (Model::linear): rows prepared by all threads
                    // into one buffer, then columns claimed in chunks of `chunk`
                    std::unique_ptr<uint8_t[]> prep(new uint8_t[k.prepared_bytes(mat, T) + 64]);
                    void* p = prep.get() + (64 - reinterpret_cast<uintptr_t>(prep.get()) % 64) % 64;
                    run_team(n_threads, [&](const Team& team) {
                        int64_t r0, r1, c0, c1;
                        team.split(T, k.prepare_rows, &r0, &r1);
                        k.prepare(mat, x.data(), T, r0, r1, p);
                        team.sync();
                        while (team.next_chunk(n_out, chunk, &c0, &c1)) k.linear_prepared(mat, bp, p, T, yp, c0, c1);
                    });
                }
            }
            return y;
        },
        py::arg("isa"), py::arg("dtype"), py::arg("w"), py::arg("scales"), py::arg("bias"), py::arg("x"),
        py::arg("n_out"), py::arg("group") = 0, py::arg("n_threads") = 1, py::arg("chunk") = 0);

    m.def(
        "_kernel_matrix_row",
        [](const std::string& isa, const std::string& dtype, const U8& w, const py::object& scales, int64_t n_out,
           int64_t n_in, int64_t group, int64_t row) {
            F32 s;
            if (!scales.is_none()) s = scales.cast<F32>();
            Matrix mat = make_matrix(dtype, w, scales.is_none() ? nullptr : &s, n_out, n_in, group);
            if (row < 0 || row >= n_out) throw std::invalid_argument("row out of range");
            F32 out(n_in);
            select_kernels(isa.c_str()).matrix_row(mat, row, out.mutable_data());
            return out;
        });

    m.def("_kernel_layernorm", [](const std::string& isa, const F32& x, const F32& gamma, const py::object& beta,
                                  float eps) {
        const int64_t C = x.size();
        F32 b;
        if (!beta.is_none()) b = beta.cast<F32>();
        if (gamma.size() != C || (!beta.is_none() && b.size() != C))
            throw std::invalid_argument("gamma and beta must match x");
        F32 out(C);
        select_kernels(isa.c_str()).layernorm(out.mutable_data(), x.data(), gamma.data(),
                                              beta.is_none() ? nullptr : b.data(), C, eps);
        return out;
    });

    // The team of threads (threads.h): each of `rounds` rounds, every thread counts itself in,
    // waits at the barrier, then checks that the whole team counted in before anyone passed.
    // Thread `fail_thread` throws at round `fail_round` (-1: never). Returns the team size.
    m.def("_team_selftest", [](int n_threads, int rounds, int fail_thread, int fail_round) {
        if (n_threads < 1 || rounds < 0) throw std::invalid_argument("bad arguments");
        std::vector<std::atomic<int>> counts(rounds);
        for (auto& c : counts) c.store(0);
        std::atomic<int> team_size{0};
        py::gil_scoped_release release;
        run_team(n_threads, [&](const Team& team) {
            team_size.store(team.n);
            for (int r = 0; r < rounds; r++) {
                if (team.id == fail_thread && r == fail_round)
                    throw std::runtime_error("thread " + std::to_string(team.id) + " failed at round " + std::to_string(r));
                counts[r].fetch_add(1);
                team.sync();
                if (counts[r].load() != team.n) throw std::logic_error("a thread passed the barrier early");
            }
        });
        return team_size.load();
    });

    m.def("_kernel_gelu", [](const std::string& isa, const std::string& kind, const F32& x) {
        F32 out(x.size());
        std::memcpy(out.mutable_data(), x.data(), x.size() * sizeof(float));
        const Kernels& k = select_kernels(isa.c_str());
        if (kind == "tanh") k.gelu_tanh(out.mutable_data(), x.size());
        else if (kind == "erf") k.gelu_erf(out.mutable_data(), x.size());
        else throw std::invalid_argument("kind must be 'tanh' or 'erf'");
        return out;
    });

    m.def("_kernel_add", [](const std::string& isa, const F32& y, const F32& x) {
        if (y.size() != x.size()) throw std::invalid_argument("x and y differ in size");
        F32 out(y.size());
        std::memcpy(out.mutable_data(), y.data(), y.size() * sizeof(float));
        select_kernels(isa.c_str()).add(out.mutable_data(), x.data(), x.size());
        return out;
    });

    // y [T, n_out] plus x [T, K] w, w [K, n_out], in columns [o_begin, o_end) (a copy of y is
    // returned).
    m.def("_kernel_add_product", [](const std::string& isa, const F32& y, const F32& x, const F32& w, int64_t o_begin,
                                    int64_t o_end) {
        if (y.ndim() != 2 || x.ndim() != 2 || w.ndim() != 2 || x.shape(0) != y.shape(0) ||
            w.shape(0) != x.shape(1) || w.shape(1) != y.shape(1))
            throw std::invalid_argument("need y [T, n_out], x [T, K], w [K, n_out]");
        const int64_t T = y.shape(0), n_out = y.shape(1), K = x.shape(1);
        if (o_begin < 0 || o_begin > o_end || o_end > n_out)
            throw std::invalid_argument("need 0 <= o_begin <= o_end <= n_out");
        F32 out({T, n_out});
        std::memcpy(out.mutable_data(), y.data(), y.size() * sizeof(float));
        select_kernels(isa.c_str()).add_product(out.mutable_data(), x.data(), w.data(), K, n_out, T, o_begin, o_end);
        return out;
    });

    // q [HS]; k, v [n_keys, ld] with the head in columns [0, HS), as f32 or as f16 bits.
    m.def("_kernel_attention_row", [](const std::string& isa, const F32& q, const F32& k, const F32& v, float scale) {
        return attention_row_binding(isa, q, k, v, scale);
    });
    m.def("_kernel_attention_row_f16", [](const std::string& isa, const F32& q, const U16& k, const U16& v, float scale) {
        return attention_row_binding(isa, q, k, v, scale);
    });

    // int8: k, v [n_keys, ld] int8 with their rows' scales k_scale, v_scale [n_keys]
    m.def("_kernel_attention_row_int8", [](const std::string& isa, const F32& q, const I8& k, const I8& v,
                                           const F32& k_scale, const F32& v_scale, float scale) {
        return attention_row_binding(isa, q, k, v, scale, {k_scale}, {v_scale});
    });

    m.def("_kernel_attention_rows", [](const std::string& isa, const F32& q, const py::array& k, const py::array& v,
                                       float scale, int64_t n_keys, const py::object& k_scale,
                                       const py::object& v_scale) {
        // q [n_rows, HS]; k, v [n_keys + n_rows - 1 or more, ld] as f32, as f16 bits (uint16) or
        // as int8 with k_scale, v_scale (one per key)
        if (q.ndim() != 2 || k.ndim() != 2 || v.ndim() != 2 || k.shape(0) != v.shape(0) || k.shape(1) != v.shape(1))
            throw std::invalid_argument("q must be [n_rows, HS], k and v [n, ld] of one shape");
        const int64_t R = q.shape(0), HS = q.shape(1), ld = k.shape(1);
        if (R < 1 || R > kAttentionRows || HS < 1 || HS > ld || n_keys < 1 || n_keys + R - 1 > k.shape(0))
            throw std::invalid_argument("need 1 <= n_rows <= " + std::to_string(kAttentionRows) +
                                        ", 1 <= HS <= ld, n_keys + n_rows - 1 <= len(k)");
        F32 out({R, HS});
        std::vector<float> scratch(R * (n_keys + R));
        const Kernels& kt = select_kernels(isa.c_str());
        if (py::isinstance<py::array_t<int8_t>>(k)) {
            auto k8 = k.cast<I8>(), v8 = v.cast<I8>();
            if (k_scale.is_none() || v_scale.is_none()) throw std::invalid_argument("int8 keys and values need scales");
            auto ks = k_scale.cast<F32>(), vs = v_scale.cast<F32>();
            check_kv_scales(ks, vs, k.shape(0));
            kt.attention_rows_int8(out.mutable_data(), HS, q.data(), HS, R, k8.data(), v8.data(), ks.data(), vs.data(),
                                   ld, n_keys, HS, scale, scratch.data());
        } else if (py::isinstance<py::array_t<uint16_t>>(k)) {
            auto k16 = k.cast<U16>(), v16 = v.cast<U16>();
            kt.attention_rows_f16(out.mutable_data(), HS, q.data(), HS, R, k16.data(), v16.data(), ld, n_keys, HS, scale,
                                  scratch.data());
        } else {
            auto k32 = k.cast<F32>(), v32 = v.cast<F32>();
            kt.attention_rows(out.mutable_data(), HS, q.data(), HS, R, k32.data(), v32.data(), ld, n_keys, HS, scale,
                              scratch.data());
        }
        return out;
    }, py::arg("isa"), py::arg("q"), py::arg("k"), py::arg("v"), py::arg("scale"), py::arg("n_keys"),
       py::arg("k_scale") = py::none(), py::arg("v_scale") = py::none());

    // Single query rows of separate heads: q [n, HS], the rest as attention_heads_binding's.
    m.def("_kernel_attention_heads", [](const std::string& isa, const F32& q, const std::vector<py::array>& ks,
                                        const std::vector<py::array>& vs, float scale,
                                        const std::vector<F32>& k_scales, const std::vector<F32>& v_scales) {
        if (q.ndim() != 2) throw std::invalid_argument("q must be [n, HS] with n >= 1 and one k, v per row");
        F32 out({q.shape(0), q.shape(1)});
        attention_heads_binding(isa, q.data(), q.shape(0), q.shape(1), ks, vs, scale, k_scales, v_scales,
                                out.mutable_data());
        return out;
    }, py::arg("isa"), py::arg("q"), py::arg("ks"), py::arg("vs"), py::arg("scale"),
       py::arg("k_scales") = std::vector<F32>(), py::arg("v_scales") = std::vector<F32>());

    // One head's row for an int8 KV cache: (q int8, scale)
    m.def("_kernel_quantize_kv", [](const std::string& isa, const F32& x) {
        I8 q(x.size());
        const float s = select_kernels(isa.c_str()).quantize_kv(x.data(), q.mutable_data(), x.size());
        return py::make_tuple(q, s);
    });

    m.def("_kernel_argmax", [](const std::string& isa, const F32& x) {
        return select_kernels(isa.c_str()).argmax(x.data(), x.size());
    });

    m.def("_kernel_to_f16", [](const std::string& isa, const F32& x) {
        U16 out(x.size());
        select_kernels(isa.c_str()).to_f16(x.data(), out.mutable_data(), x.size());
        return out;
    });

    // Benchmark probes (tools/bench.py): seconds to read `a` reps times; seconds and FLOPs
    // of `iters` FMA rounds per thread. The GIL is released while they run.
    m.def("_probe_read_seconds", [](const F32& a, int reps, int n_threads, const std::string& isa) {
        const std::string name = select_kernels(isa.c_str()).name;
        auto fn = &scalar::probe_read;
#if defined(PYGPT_X86)
        if (name == "avx512bf16" || name == "amx") fn = &avx512bf16::probe_read;
        else if (name == "avx512") fn = &avx512::probe_read;
        else if (name == "avx2" || name == "avx2vnni") fn = &avx2::probe_read;
#endif
        py::gil_scoped_release release;
        const auto t0 = std::chrono::steady_clock::now();
        volatile float sink = fn(a.data(), a.size(), reps, n_threads);
        (void)sink;
        return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    });
    m.def("_probe_fma", [](int64_t iters, int n_threads, const std::string& isa) {
        const std::string name = select_kernels(isa.c_str()).name;
        auto fn = &scalar::probe_fma;
#if defined(PYGPT_X86)
        if (name == "avx512bf16" || name == "amx") fn = &avx512bf16::probe_fma;
        else if (name == "avx512") fn = &avx512::probe_fma;
        else if (name == "avx2" || name == "avx2vnni") fn = &avx2::probe_fma;
#endif
        return timed_probe(fn, iters, n_threads);
    });
    m.def(
        "_probe_tiles",
        [](int64_t iters, int n_threads, const std::string& kind) {
            if (kind != "int8" && kind != "bf16")
                throw std::invalid_argument("_probe_tiles: kind must be 'int8' or 'bf16', got '" + kind + "'");
#if defined(PYGPT_AMX)
            if (!cpu_has_amx()) throw std::invalid_argument("_probe_tiles: this CPU has no amx path");
            return timed_probe(kind == "bf16" ? &amx::probe_tiles_bf16 : &amx::probe_tiles, iters, n_threads);
#else
            (void)iters;
            (void)n_threads;
            throw std::invalid_argument("_probe_tiles: this build has no amx path");
#endif
        },
        py::arg("iters"), py::arg("n_threads"), py::arg("kind") = "int8");
}

}  // namespace pygpt
