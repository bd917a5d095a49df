"""Each ISA's kernels against NumPy and the scalar reference, on odd sizes (not multiples of
any vector width), plus the batch/thread-invariance contract of linear."""

import numpy as np
import pytest

import pygpt
from pygpt import _core
from pygpt import quantize as qz
from reference_gpt2 import quantize_kv_rows

ISAS = pygpt.system_info()["isas"]

# Relative tolerance (against the largest |W||x| row norm) of a kernel's f32 accumulation
# versus float64: sums of a few hundred products in f32, any order.
RTOL_F32_SUM = 2e-6 * 8
# bf16 weights on the avx512bf16 path (vdpbf16ps) and the amx path (AMX-BF16 tiles where n_in
# is a multiple of 32, else vdpbf16ps) meet activations rounded to bf16 (8 bits of mantissa):
# the reference rounds them too, so only the f32 accumulation differs. Every other path
# widens bf16 weights to f32 (test_bf16_widened_is_f32_of_the_same_values).
BF16_DOT_ISAS = ("avx512bf16", "amx")


def bf16_round(a):
    """float32 -> nearest bf16 (ties to even), returned as float32."""
    u = np.asarray(a, np.float32).view(np.uint32).astype(np.uint64)
    u = (u + 0x7FFF + ((u >> 16) & 1)) >> 16 << 16
    return u.astype(np.uint32).view(np.float32)


def encode(w, dtype, group=0):
    """(weight bytes, scales, W as the kernels see it) for a float W [n_out, n_in]."""
    if dtype == "f32":
        return w.astype(np.float32).view(np.uint8).ravel(), None, w.astype(np.float32)
    if dtype == "f16":
        h = w.astype(np.float16)
        return h.view(np.uint8).ravel(), None, h.astype(np.float32)
    if dtype == "bf16":
        b = bf16_round(w)
        return (b.view(np.uint32) >> 16).astype(np.uint16).view(np.uint8).ravel(), None, b
    parts = qz.quantize_matrix(w, dtype, group)
    return parts[""].view(np.uint8).ravel(), parts["_scales"], qz.dequantize(parts, dtype, *w.shape)


def quantize_rows(x):
    """The kernels' activation quantization: per row, scale max|x| / 127, ties to even (f32 math)."""
    x = x.astype(np.float32)
    m = np.abs(x).max(axis=1)
    inv = np.where(m > 0, np.float32(127) / np.where(m > 0, m, 1), 0).astype(np.float32)
    q = np.clip(np.rint(x * inv[:, None]), -127, 127)
    return q, (m / np.float32(127)).astype(np.float32)


def reference(w, dtype, group, x, bias, isa):
    """float64 reference of the linear kernel for one ISA."""
    _, scales, wf = encode(w, dtype, group)
    if dtype in ("int8", "int4"):
        q, sx = quantize_rows(x)
        unpack = qz.unpack_int8 if dtype == "int8" else qz.unpack_int4
        wq = unpack(qz.quantize_matrix(w, dtype, group)[""], *w.shape).astype(np.float64)
        scales = qz.row_scales(scales, w.shape[0])
        g = w.shape[1] // scales.shape[1]
        isum = np.einsum("tgk,ogk->tog", q.reshape(len(x), -1, g).astype(np.float64), wq.reshape(len(w), -1, g))
        y = (isum * scales[None].astype(np.float64)).sum(axis=2) * sx[:, None]
    else:
        xa = bf16_round(x) if (dtype == "bf16" and isa in BF16_DOT_ISAS) else x
        y = xa.astype(np.float64) @ wf.astype(np.float64).T
    if bias is not None:
        y = y + bias
    return y


def run_linear(isa, dtype, w, group, x, bias, n_threads=1, chunk=0):
    data, scales, _ = encode(w, dtype, group)
    g = group if group else w.shape[1]
    return _core._kernel_linear(isa, dtype, data, scales, bias, x, w.shape[0], g if scales is not None else 0,
                                n_threads, chunk)


CASES = [  # dtype, n_out, n_in, group
    ("f32", 37, 67, 0),
    ("f32", 9, 16, 0),
    ("f16", 37, 67, 0),
    ("bf16", 37, 67, 0),
    ("bf16", 5, 129, 0),
    ("f32", 19, 1100, 0),  # long rows: processed in chunks of k when T > 1
    ("f16", 11, 2048, 0),  # rows 8 KiB apart: activations copied with padding
    ("bf16", 19, 2080, 0),
    ("f32", 11, 8300, 0),  # rows longer than 2 K_CHUNK: chunks of k when T > 1
    ("f16", 10, 8250, 0),
    ("bf16", 11, 8200, 0),
    ("f32", 35, 768, 0),  # the tiles of a gpt2 width, rows not a multiple of the tile
    ("f16", 35, 768, 0),
    ("bf16", 35, 768, 0),
    ("int8", 37, 67, 0),
    ("int8", 23, 192, 64),
    ("int8", 11, 300, 0),
    ("int4", 37, 100, 0),
    ("int4", 21, 192, 64),
    ("int4", 6, 256, 128),
    ("int8", 45, 768, 0),  # more than two 16-row panels, a partial one
    ("int8", 33, 384, 192),  # groups of 3 blocks
    ("int4", 35, 768, 64),  # decode: 6 pairs of blocks, one group per block
    ("int4", 17, 320, 64),  # an odd number of blocks: the last pair is half empty
    ("int4", 18, 384, 192),  # groups of 3 blocks straddle the pairs
    ("int4", 16, 512, 256),
    ("int8", 37, 128, 32),  # groups of 32: two a block (its vectors 0..7 and 8..15)
    ("int8", 45, 768, 32),
    ("int4", 35, 768, 32),  # two a block: its low nibbles and its high nibbles
    ("int4", 17, 320, 32),
    ("int4", 21, 64, 32),
]


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("dtype,n_out,n_in,group", CASES)
@pytest.mark.parametrize("T", [1, 7, 10, 13, 17])
def test_linear_matches_reference(isa, dtype, n_out, n_in, group, T):
    rng = np.random.default_rng(n_out * 1000 + n_in + T)
    w = rng.standard_normal((n_out, n_in)).astype(np.float32)
    x = rng.standard_normal((T, n_in)).astype(np.float32)
    bias = rng.standard_normal(n_out).astype(np.float32)
    y = run_linear(isa, dtype, w, group, x, bias)
    ref = reference(w, dtype, group, x, bias, isa)
    _, _, wf = encode(w, dtype, group)
    scale = np.abs(x).max() * np.abs(wf).sum(axis=1).max()
    err = np.abs(y - ref).max() / scale
    assert err < RTOL_F32_SUM, f"{isa} {dtype}: max error {err:.3g} of |W||x| = {scale:.3g}"
    # and close to the scalar reference (the oracle of the C++ side)
    y0 = run_linear("scalar", dtype, w, group, x, bias)
    if dtype in ("int8", "int4"):
        # exact integer sums per group and a fixed float sequence (docs/FORMAT.md): every
        # ISA gives the scalar reference's bits
        assert np.array_equal(y, y0), f"{isa} {dtype}: differs from the scalar reference"
    elif not (dtype == "bf16" and isa in BF16_DOT_ISAS):
        assert np.abs(y - y0).max() / scale < RTOL_F32_SUM


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("dtype,n_out,n_in,group", [c for c in CASES if c[1] > 9])
def test_linear_batch_and_thread_invariant(isa, dtype, n_out, n_in, group):
    """y[t, o] is bitwise the same for any T and any n_threads."""
    rng = np.random.default_rng(7)
    w = rng.standard_normal((n_out, n_in)).astype(np.float32)
    x = rng.standard_normal((13, n_in)).astype(np.float32)
    full = run_linear(isa, dtype, w, group, x, None, n_threads=2)
    assert np.array_equal(full, run_linear(isa, dtype, w, group, x, None, n_threads=1))
    assert np.array_equal(full, run_linear(isa, dtype, w, group, x, None, n_threads=3))
    for t in range(13):
        assert np.array_equal(full[t], run_linear(isa, dtype, w, group, x[t : t + 1], None)[0]), f"row {t}"
    assert np.array_equal(full[5:9], run_linear(isa, dtype, w, group, x[5:9], None, n_threads=2))


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("dtype,group", [("f32", 0), ("bf16", 0), ("int8", 0), ("int4", 64)])
def test_linear_of_no_tokens(isa, dtype, group):
    """Zero tokens: an empty result, through linear and through prepare + linear_prepared."""
    w = np.random.default_rng(0).standard_normal((35, 768)).astype(np.float32)
    x = np.zeros((0, 768), np.float32)
    for chunk in (0, 5):
        assert run_linear(isa, dtype, w, group, x, None, n_threads=2, chunk=chunk).shape == (0, 35)


@pytest.mark.parametrize("isa", ISAS)
def test_linear_large_prefill_shape(isa):
    """More tokens than one token block and rows not a multiple of the tile."""
    rng = np.random.default_rng(3)
    w = rng.standard_normal((45, 768)).astype(np.float32)
    x = rng.standard_normal((700, 768)).astype(np.float32)
    y = run_linear(isa, "f32", w, 0, x, None, n_threads=2)
    ref = x.astype(np.float64) @ w.astype(np.float64).T
    assert np.abs(y - ref).max() < 1e-3
    assert np.array_equal(y[650:], run_linear(isa, "f32", w, 0, x[650:], None))


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("dtype,n_out,n_in,group", CASES)
def test_matrix_row(isa, dtype, n_out, n_in, group):
    rng = np.random.default_rng(1)
    w = rng.standard_normal((n_out, n_in)).astype(np.float32)
    data, scales, wf = encode(w, dtype, group)
    g = (group or n_in) if scales is not None else 0
    for row in (0, n_out - 1):
        out = _core._kernel_matrix_row(isa, dtype, data, scales, n_out, n_in, g, row)
        np.testing.assert_allclose(out, wf[row], rtol=1e-6, atol=1e-7)


def test_linear_rejects_bad_buffers():
    x = np.zeros((1, 64), np.float32)
    with pytest.raises(ValueError, match="bytes"):
        _core._kernel_linear("scalar", "f32", np.zeros(10, np.uint8), None, None, x, 3)
    with pytest.raises(ValueError, match="bytes"):  # int8: one panel of 16 rows x 64 inputs
        _core._kernel_linear("scalar", "int8", np.zeros(3 * 64, np.uint8), np.zeros(16, np.float32), None, x, 3, 64)
    with pytest.raises(ValueError, match="scales"):
        _core._kernel_linear("scalar", "int8", np.zeros(1024, np.uint8), None, None, x, 3, 64)
    with pytest.raises(ValueError, match="scales"):
        _core._kernel_linear("scalar", "int8", np.zeros(1024, np.uint8), np.zeros(3, np.float32), None, x, 3, 64)
    with pytest.raises(ValueError, match="group"):
        _core._kernel_linear("scalar", "int8", np.zeros(1024, np.uint8), np.zeros(32, np.float32), None, x, 3, 48)
    x96 = np.zeros((1, 96), np.float32)  # groups of 32 need whole blocks of 64 inputs
    with pytest.raises(ValueError, match="group"):
        _core._kernel_linear("scalar", "int8", np.zeros(2048, np.uint8), np.zeros(48, np.float32), None, x96, 3, 32)
    with pytest.raises(ValueError, match="ISA"):
        _core._kernel_linear("sse9", "f32", np.zeros(3 * 256, np.uint8), None, None, x, 3)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("C", [1, 13, 64, 100])
@pytest.mark.parametrize("with_beta", [True, False])
def test_layernorm(isa, C, with_beta):
    rng = np.random.default_rng(C)
    x = (rng.standard_normal(C) * 3 + 1.5).astype(np.float32)
    g = rng.standard_normal(C).astype(np.float32)
    b = rng.standard_normal(C).astype(np.float32) if with_beta else None
    out = _core._kernel_layernorm(isa, x, g, b, 1e-5)
    xd = x.astype(np.float64)
    ref = (xd - xd.mean()) / np.sqrt(xd.var() + 1e-5) * g + (b if with_beta else 0)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("n", [1, 15, 77])
def test_gelu(isa, n):
    from math import erf

    x = np.linspace(-12, 12, n).astype(np.float32) if n > 1 else np.array([0.3], np.float32)
    xd = x.astype(np.float64)
    tanh_ref = 0.5 * xd * (1 + np.tanh(np.sqrt(2 / np.pi) * (xd + 0.044715 * xd**3)))
    np.testing.assert_allclose(_core._kernel_gelu(isa, "tanh", x), tanh_ref, rtol=2e-6, atol=2e-7)
    erf_ref = np.array([0.5 * v * (1 + erf(v / np.sqrt(2))) for v in xd])
    np.testing.assert_allclose(_core._kernel_gelu(isa, "erf", x), erf_ref, rtol=2e-6, atol=2e-7)


@pytest.mark.parametrize("isa", ISAS)
def test_add(isa):
    rng = np.random.default_rng(0)
    for n in (1, 17, 100):
        y, x = rng.standard_normal((2, n)).astype(np.float32)
        np.testing.assert_array_equal(_core._kernel_add(isa, y, x), y + x)


def product_reference(y, x, w, o_begin, o_end):
    """add_product's arithmetic in NumPy: per output the chain s = fma(x[t, k], w[k, o], s) from
    s = 0, then y + s in float32. A fused step is emulated in float64 (the product exact, the sum
    rounded to float64, then to float32): that double rounding differs from the one rounding of
    an FMA only for a sum within about 2^-29 ulp of a float32 midpoint, which these draws never
    meet."""
    s = np.zeros((len(y), o_end - o_begin), np.float32)
    for k in range(x.shape[1]):
        s = (x[:, k : k + 1].astype(np.float64) * w[k, o_begin:o_end] + s).astype(np.float32)
    out = y.copy()
    out[:, o_begin:o_end] += s
    return out


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("T,K,n_out", [(1, 1, 1), (1, 8, 37), (3, 5, 17), (7, 16, 131), (13, 3, 200), (6, 24, 64),
                                       (21, 77, 16), (11, 130, 5)])
def test_add_product(isa, T, K, n_out):
    """The bits of NumPy's chain of fused multiply-adds and of the scalar reference on every ISA,
    for any column range and T (odd sizes: tiles of 4 and 8 rows and single rows, blocks of
    vectors of columns, single vectors and a masked tail); columns outside the range untouched.
    The shapes of both low-rank products: u B^T (short sums K = rank, many columns) and x A^T
    (long sums, `rank` columns)."""
    rng = np.random.default_rng(T * 1000 + K * 10 + n_out)
    y = rng.standard_normal((T, n_out)).astype(np.float32)
    x = rng.standard_normal((T, K)).astype(np.float32)
    w = rng.standard_normal((K, n_out)).astype(np.float32)
    full = _core._kernel_add_product(isa, y, x, w, 0, n_out)
    np.testing.assert_array_equal(full, product_reference(y, x, w, 0, n_out))
    np.testing.assert_array_equal(full, _core._kernel_add_product("scalar", y, x, w, 0, n_out))
    want = y.astype(np.float64) + x.astype(np.float64) @ w.astype(np.float64)
    assert np.abs(full - want).max() < RTOL_F32_SUM * (1 + np.abs(x).max() * np.abs(w).sum(axis=0).max())
    for o_begin, o_end in [(0, 0), (1, n_out), (n_out // 3, n_out - n_out // 4), (n_out - 1, n_out)]:
        part = _core._kernel_add_product(isa, y, x, w, o_begin, o_end)
        np.testing.assert_array_equal(part[:, o_begin:o_end], full[:, o_begin:o_end])
        np.testing.assert_array_equal(np.delete(part, np.s_[o_begin:o_end], axis=1),
                                      np.delete(y, np.s_[o_begin:o_end], axis=1))
    for t in range(T):  # a row alone
        np.testing.assert_array_equal(_core._kernel_add_product(isa, y[t : t + 1], x[t : t + 1], w, 0, n_out)[0],
                                      full[t])


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("n_keys,hs,ld", [(1, 64, 64), (5, 7, 13), (33, 64, 192), (100, 80, 97), (17, 130, 131)])
def test_attention_row(isa, n_keys, hs, ld):
    rng = np.random.default_rng(n_keys + hs)
    q = rng.standard_normal(hs).astype(np.float32)
    k = (rng.standard_normal((n_keys, ld)) * 2).astype(np.float32)
    v = rng.standard_normal((n_keys, ld)).astype(np.float32)
    scale = 1 / np.sqrt(hs)
    out = _core._kernel_attention_row(isa, q, k, v, scale)
    s = k[:, :hs].astype(np.float64) @ q * scale
    p = np.exp(s - s.max())
    p /= p.sum()
    np.testing.assert_allclose(out, p @ v[:, :hs], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("n_keys,hs,ld", [(1, 64, 64), (5, 7, 13), (33, 64, 192), (100, 80, 97), (17, 130, 131)])
def test_attention_row_f16(isa, n_keys, hs, ld):
    """Attention over an f16 KV cache: the f16 keys and values, widened exactly, as in f32."""
    rng = np.random.default_rng(n_keys + hs + 1)
    q = rng.standard_normal(hs).astype(np.float32)
    k = (rng.standard_normal((n_keys, ld)) * 2).astype(np.float16)
    v = rng.standard_normal((n_keys, ld)).astype(np.float16)
    scale = 1 / np.sqrt(hs)
    out = _core._kernel_attention_row_f16(isa, q, k.view(np.uint16), v.view(np.uint16), scale)
    s = k[:, :hs].astype(np.float64) @ q * scale
    p = np.exp(s - s.max())
    p /= p.sum()
    np.testing.assert_allclose(out, p @ v[:, :hs].astype(np.float64), rtol=1e-5, atol=1e-5)
    f32 = _core._kernel_attention_row(isa, q, k.astype(np.float32), v.astype(np.float32), scale)
    np.testing.assert_allclose(out, f32, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("n", [1, 7, 64, 131])
def test_quantize_kv(isa, n):
    """One head's row for an int8 cache: round(x * 127 / max|x|) to nearest even, scale
    max|x| / 127, the same bits as NumPy's float32 arithmetic; zeros give scale 0, a row with
    an infinity or NaN scale NaN (so attention over it is NaN, as with f32 keys)."""
    rng = np.random.default_rng(n)
    rows = [rng.standard_normal(n) * 3, np.zeros(n), np.full(n, -2.5), rng.standard_normal(n) * 1e-30]
    rows.append(np.resize(np.array([127, 2.5, -3.5, 0.5, -0.5, 1.5, 126.5]), n))  # inv = 1: exact ties
    for x in rows:
        x = np.asarray(x, np.float32)
        q, scale = _core._kernel_quantize_kv(isa, x)
        want_q, want_s = quantize_kv_rows(x[None])
        np.testing.assert_array_equal(q, want_q[0])
        assert np.float32(scale) == want_s[0]
        assert np.abs(q.astype(np.float32) * np.float32(scale) - x).max() <= np.abs(x).max() / 254 * (1 + 1e-6)
    for bad in (np.inf, -np.inf, np.nan):
        x = rng.standard_normal(n).astype(np.float32)
        x[n // 2] = bad
        q, scale = _core._kernel_quantize_kv(isa, x)
        assert np.isnan(scale) and not q.any()


def first_argmax(x):
    """NumPy model of Kernels::argmax: the first largest value, NaN and -inf never chosen."""
    ok = ~np.isnan(x) & (x > -np.inf)
    return int(np.flatnonzero(ok & (x == x[ok].max()))[0]) if ok.any() else -1


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("n", [1, 7, 16, 17, 50257])
def test_argmax(isa, n):
    """Greedy decoding's choice: the first of equal largest values in any lane, NaN and -inf
    skipped, +inf chosen, -1 when nothing else is left."""
    rng = np.random.default_rng(n)
    cases = [rng.standard_normal(n), np.zeros(n), np.full(n, -np.inf), np.full(n, np.nan)]
    x = rng.integers(-3, 3, n).astype(np.float32)  # many ties, in every lane
    cases += [x, x[::-1].copy()]
    x = rng.standard_normal(n)
    x[rng.integers(0, n, max(1, n // 3))] = np.nan
    cases.append(x)
    x = np.full(n, -np.inf)
    x[n - 1] = -1e30  # the only choice, in the tail
    cases.append(x)
    x = rng.standard_normal(n)
    x[n // 2] = np.inf
    cases.append(x)
    for x in cases:
        x = np.asarray(x, np.float32)
        assert _core._kernel_argmax(isa, x) == first_argmax(x)


def int8_kv(rng, n_keys, ld):
    """Random keys and values as an int8 cache holds them: (k, v, k_scale, v_scale)."""
    k, ks = quantize_kv_rows(rng.standard_normal((n_keys, ld)) * 2)
    v, vs = quantize_kv_rows(rng.standard_normal((n_keys, ld)))
    return k, v, ks, vs


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("n_keys,hs,ld", [(1, 64, 64), (5, 7, 13), (33, 64, 192), (100, 80, 97), (17, 130, 131)])
def test_attention_row_int8(isa, n_keys, hs, ld):
    """Attention over an int8 KV cache: the keys and values it stands for (q * scale, row by
    row), as in f32."""
    rng = np.random.default_rng(n_keys + hs + 2)
    q = rng.standard_normal(hs).astype(np.float32)
    k, v, ks, vs = int8_kv(rng, n_keys, ld)
    scale = 1 / np.sqrt(hs)
    out = _core._kernel_attention_row_int8(isa, q, k, v, ks, vs, scale)
    kf, vf = k.astype(np.float64) * ks[:, None], v.astype(np.float64) * vs[:, None]
    s = kf[:, :hs] @ q * scale
    p = np.exp(s - s.max())
    p /= p.sum()
    np.testing.assert_allclose(out, p @ vf[:, :hs], rtol=1e-5, atol=1e-5)
    f32 = _core._kernel_attention_row(isa, q, kf.astype(np.float32), vf.astype(np.float32), scale)
    np.testing.assert_allclose(out, f32, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("kv", ["f32", "f16", "int8"])
@pytest.mark.parametrize("n_keys,hs,ld", [(1, 64, 64), (1, 64, 192), (17, 64, 64), (40, 128, 130), (9, 7, 13)])
def test_attention_rows_equal_attention_row(isa, kv, n_keys, hs, ld):
    """A prompt's rows in blocks (row r attends to n_keys + r keys): each row's bits are the
    row kernel's, for 1 to 8 rows per call (the model's blocks; AVX-512 scores 8 rows
    together, AVX2 4, so 5-8 rows there are two blocks)."""
    rng = np.random.default_rng(n_keys * 7 + hs)
    k = (rng.standard_normal((n_keys + 7, ld)) * 2).astype(np.float32)
    v = rng.standard_normal((n_keys + 7, ld)).astype(np.float32)
    q = rng.standard_normal((8, hs)).astype(np.float32)
    ks = vs = None
    if kv == "f16":
        k, v = k.astype(np.float16).view(np.uint16), v.astype(np.float16).view(np.uint16)
    if kv == "int8":
        (k, ks), (v, vs) = quantize_kv_rows(k), quantize_kv_rows(v)
    scale = 1 / np.sqrt(hs)
    for n_rows in range(1, 9):
        out = _core._kernel_attention_rows(isa, q[:n_rows], k, v, scale, n_keys, ks, vs)
        for r in range(n_rows):
            n = n_keys + r
            if kv == "f16":
                row = _core._kernel_attention_row_f16(isa, q[r], k[:n], v[:n], scale)
            elif kv == "int8":
                row = _core._kernel_attention_row_int8(isa, q[r], k[:n], v[:n], ks[:n], vs[:n], scale)
            else:
                row = _core._kernel_attention_row(isa, q[r], k[:n], v[:n], scale)
            np.testing.assert_array_equal(out[r], row, err_msg=f"{n_rows} rows, row {r}")


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("kv", ["f32", "f16", "int8"])
@pytest.mark.parametrize("hs,ld", [(64, 64), (7, 13), (80, 97), (130, 131)])
def test_attention_heads_equal_attention_row(isa, kv, hs, ld):
    """Decode rows of separate heads, each against its own keys (of different lengths, the
    longest first or last), run together: each row's bits are the row kernel's alone, for 1 to
    9 rows a call (the kernel takes them 4 at a time)."""
    rng = np.random.default_rng(hs * 3 + ld)
    lengths = [1, 40, 17, 100, 3, 16, 33, 64, 129]
    q = rng.standard_normal((len(lengths), hs)).astype(np.float32)
    ks, vs, k_scales, v_scales = [], [], [], []
    for n in lengths:
        k = (rng.standard_normal((n, ld)) * 2).astype(np.float32)
        v = rng.standard_normal((n, ld)).astype(np.float32)
        if kv == "f16":
            k, v = k.astype(np.float16).view(np.uint16), v.astype(np.float16).view(np.uint16)
        if kv == "int8":
            (k, k_s), (v, v_s) = quantize_kv_rows(k), quantize_kv_rows(v)
            k_scales.append(k_s)
            v_scales.append(v_s)
        ks.append(k)
        vs.append(v)
    scale = 1 / np.sqrt(hs)

    def alone(i):
        if kv == "f16":
            return _core._kernel_attention_row_f16(isa, q[i], ks[i], vs[i], scale)
        if kv == "int8":
            return _core._kernel_attention_row_int8(isa, q[i], ks[i], vs[i], k_scales[i], v_scales[i], scale)
        return _core._kernel_attention_row(isa, q[i], ks[i], vs[i], scale)

    for order in (range(len(lengths)), reversed(range(len(lengths)))):
        order = list(order)
        for n in (1, 2, 3, 4, 5, 9):
            pick = order[:n]
            out = _core._kernel_attention_heads(isa, q[pick], [ks[i] for i in pick], [vs[i] for i in pick], scale,
                                                [k_scales[i] for i in pick] if kv == "int8" else [],
                                                [v_scales[i] for i in pick] if kv == "int8" else [])
            for row, i in enumerate(pick):
                np.testing.assert_array_equal(out[row], alone(i), err_msg=f"{n} heads, head {i}")


@pytest.mark.parametrize("isa", ISAS)
def test_attention_heads_bad_input_is_value_error(isa):
    q = np.zeros((2, 8), np.float32)
    k = np.zeros((3, 8), np.float32)
    with pytest.raises(ValueError, match="one k, v per row"):
        _core._kernel_attention_heads(isa, q, [k], [k], 1.0)
    with pytest.raises(ValueError, match="one dtype"):
        _core._kernel_attention_heads(isa, q, [k, k.astype(np.float16).view(np.uint16)], [k, k], 1.0)
    k8 = np.zeros((3, 8), np.int8)
    with pytest.raises(ValueError, match="scale"):
        _core._kernel_attention_heads(isa, q, [k8, k8], [k8, k8], 1.0, [np.ones(3, np.float32)] * 2,
                                      [np.ones(3, np.float32), np.ones(2, np.float32)])


@pytest.mark.parametrize("isa", ISAS)
def test_attention_int8_bad_scales_are_value_errors(isa):
    q = np.zeros(8, np.float32)
    k = v = np.zeros((3, 8), np.int8)
    with pytest.raises(ValueError, match="scale"):
        _core._kernel_attention_row_int8(isa, q, k, v, np.ones(2, np.float32), np.ones(3, np.float32), 1.0)
    with pytest.raises(ValueError, match="scale"):
        _core._kernel_attention_rows(isa, q[None], k, v, 1.0, 3)


@pytest.mark.parametrize("isa", ISAS)
def test_to_f16_rounds_like_numpy(isa):
    """f32 -> f16 rounds to nearest even on every ISA, subnormals, overflow and ties included."""
    rng = np.random.default_rng(2)
    bits = rng.integers(0, 2**32, 20000, dtype=np.uint64).astype(np.uint32)
    x = bits.view(np.float32)
    x = x[np.isfinite(x)]
    special = np.array([0.0, -0.0, 65504.0, 65519.99, 65520.0, -70000.0, np.inf, -np.inf, 2.0**-24, 2.0**-25,
                        3 * 2.0**-25, 2.0**-14 - 2.0**-25, 1 + 2.0**-11, 1 + 3 * 2.0**-11, 6.1e-5, 1e-8], np.float32)
    scaled = (rng.standard_normal(5000) * np.exp(rng.uniform(-20, 12, 5000))).astype(np.float32)
    x = np.concatenate([x, special, scaled]).astype(np.float32)
    for n in (len(x), 7):  # full vectors and a tail
        with np.errstate(over="ignore"):
            want = x[:n].astype(np.float16).view(np.uint16)
        np.testing.assert_array_equal(_core._kernel_to_f16(isa, x[:n]), want)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("dtype,group",
                         [("f32", 0), ("f16", 0), ("bf16", 0), ("int8", 0), ("int4", 64), ("int8", 32), ("int4", 32)])
def test_linear_thread_invariant_when_split(isa, dtype, group):
    """Big enough that linear really splits rows across threads (small products run on
    fewer threads): results are bitwise equal for 1, 2 and 3 threads and any T."""
    rng = np.random.default_rng(11)
    w = rng.standard_normal((301, 640)).astype(np.float32)
    x = rng.standard_normal((9, 640)).astype(np.float32)
    y1 = run_linear(isa, dtype, w, group, x, None, n_threads=1)
    for n in (2, 3):
        assert np.array_equal(y1, run_linear(isa, dtype, w, group, x, None, n_threads=n)), f"{n} threads"
    assert np.array_equal(y1[4], run_linear(isa, dtype, w, group, x[4:5], None, n_threads=3)[0])


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("dtype,group",
                         [("f32", 0), ("f16", 0), ("bf16", 0), ("int8", 0), ("int4", 64), ("int8", 32), ("int4", 32)])
@pytest.mark.parametrize("T", [1, 2, 7, 37, 200])
def test_linear_prepared_once_claimed_in_chunks(isa, dtype, group, T):
    """A prompt's products: the threads prepare the activations once, each a share of the
    rows, then claim columns in chunks (here of odd sizes): bitwise the same as one thread
    computing everything itself."""
    rng = np.random.default_rng(13)
    w = rng.standard_normal((83, 640)).astype(np.float32)
    x = rng.standard_normal((T, 640)).astype(np.float32)
    bias = rng.standard_normal(83).astype(np.float32)
    ref = run_linear(isa, dtype, w, group, x, bias)
    for n_threads, chunk in ((1, 83), (2, 7), (3, 16), (4, 1)):
        y = run_linear(isa, dtype, w, group, x, bias, n_threads=n_threads, chunk=chunk)
        assert np.array_equal(y, ref), f"{n_threads} threads, chunks of {chunk}"


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("dtype", ["f32", "f16", "bf16"])
def test_linear_batched_decode_sizes(isa, dtype):
    """Batched decode (T = 2..8 sequences) gives each sequence the bits of its own T = 1 pass,
    at a gpt2 width, rows not a multiple of the tile, on 1 and 2 threads."""
    rng = np.random.default_rng(5)
    w = rng.standard_normal((203, 768)).astype(np.float32)
    x = rng.standard_normal((8, 768)).astype(np.float32)
    bias = rng.standard_normal(203).astype(np.float32)
    rows = [run_linear(isa, dtype, w, 0, x[t : t + 1], bias)[0] for t in range(8)]
    for T in range(2, 9):
        for n in (1, 2):
            y = run_linear(isa, dtype, w, 0, x[:T], bias, n_threads=n)
            for t in range(T):
                assert np.array_equal(y[t], rows[t]), f"T={T} n_threads={n} row {t}"


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("dtype,group", [("int8", 0), ("int8", 128), ("int4", 64), ("int4", 256)])
def test_quant_linear_many_tokens_exact(isa, dtype, group):
    """Prefill-sized T (the repacked-panel paths) and partial panels at odd thread splits:
    bitwise the scalar reference, and each token as computed alone."""
    rng = np.random.default_rng(5)
    w = rng.standard_normal((53, 768)).astype(np.float32)
    x = rng.standard_normal((40, 768)).astype(np.float32)
    bias = rng.standard_normal(53).astype(np.float32)
    y = run_linear(isa, dtype, w, group, x, bias, n_threads=3)
    assert np.array_equal(y, run_linear("scalar", dtype, w, group, x, bias))
    for t in (0, 17, 39):
        assert np.array_equal(y[t], run_linear(isa, dtype, w, group, x[t : t + 1], bias)[0])
    # every small-batch tile size: 2-8 tokens, 12, 13
    for t0, t1 in ((3, 5), (3, 6), (3, 7), (3, 8), (3, 9), (3, 10), (3, 11), (3, 15), (3, 16)):
        assert np.array_equal(y[t0:t1], run_linear(isa, dtype, w, group, x[t0:t1], bias, n_threads=2)), (t0, t1)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("dtype,group", [("int8", 0), ("int4", 64)])
def test_quant_linear_token_blocks_exact(isa, dtype, group):
    """More tokens than one token block of the quantized kernels (168 tokens at n_in 3072
    for int8, 156 for int4 g 64), the last block a small batch or a single token: bitwise
    the scalar reference."""
    rng = np.random.default_rng(9)
    w = rng.standard_normal((21, 3072)).astype(np.float32)
    for T in (337, 313, 170):
        x = rng.standard_normal((T, 3072)).astype(np.float32)
        y = run_linear(isa, dtype, w, group, x, None, n_threads=2)
        assert np.array_equal(y, run_linear("scalar", dtype, w, group, x, None)), T


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("dtype", ["f32", "f16", "bf16"])
@pytest.mark.parametrize("n_in", [768, 3100])
def test_linear_float_prefill_panels(isa, dtype, n_in):
    """Prefill over whole row panels and token tiles (AVX2 f16/bf16 rows widened per panel,
    long rows in chunks of inputs, outputs reduced in registers): each row of y has the bits
    of its own T = 1 pass and of a batch cut elsewhere, and agrees with float64."""
    rng = np.random.default_rng(13)
    w = rng.standard_normal((29, n_in)).astype(np.float32)
    x = rng.standard_normal((37, n_in)).astype(np.float32)
    bias = rng.standard_normal(29).astype(np.float32)
    y = run_linear(isa, dtype, w, 0, x, bias)
    ref = reference(w, dtype, 0, x, bias, isa)
    _, _, wf = encode(w, dtype)
    scale = np.abs(x).max() * np.abs(wf).sum(axis=1).max()
    assert np.abs(y - ref).max() / scale < RTOL_F32_SUM
    for t in (0, 5, 17, 36):
        assert np.array_equal(y[t], run_linear(isa, dtype, w, 0, x[t : t + 1], bias)[0]), f"row {t}"
    assert np.array_equal(y[3:26], run_linear(isa, dtype, w, 0, x[3:26], bias, n_threads=2))


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("dtype,n_out,n_in,group", [("int8", 45, 768, 0), ("int8", 33, 384, 192), ("int4", 35, 768, 64),
                                                    ("int4", 18, 384, 192), ("int8", 50, 300, 0)])
def test_quant_token_tiles_match_scalar(isa, dtype, n_out, n_in, group):
    """int8 and int4 at token counts around the tiles' edges (the amx path runs 16 and 32
    tokens a pass and pads a last pass), odd panel counts, columns claimed in chunks that
    start inside a panel, and more tokens than one token block: the scalar reference's bits."""
    rng = np.random.default_rng(n_out * 7 + n_in)
    w = rng.standard_normal((n_out, n_in)).astype(np.float32)
    bias = rng.standard_normal(n_out).astype(np.float32)
    x = rng.standard_normal((700, n_in)).astype(np.float32)
    for T in (2, 15, 16, 17, 31, 32, 33, 47, 65, 700):
        y = run_linear(isa, dtype, w, group, x[:T], bias)
        assert np.array_equal(y, run_linear("scalar", dtype, w, group, x[:T], bias)), f"{isa} T={T}"
        assert np.array_equal(y, run_linear(isa, dtype, w, group, x[:T], bias, n_threads=2, chunk=5)), f"T={T}"


@pytest.mark.parametrize("isa", [i for i in ISAS if i in BF16_DOT_ISAS])
@pytest.mark.parametrize("n_out,n_in", [(45, 768), (19, 2080), (16, 64), (3, 96), (50, 3072)])
def test_bf16_token_tiles(isa, n_out, n_in):
    """bf16 where the amx path runs every token count on AMX-BF16 tiles (inputs a multiple of
    32): token counts around the blocks of 16 and the passes of 32 (a lone token in a padded
    last block included), panels of 16 rows cut by n_out, the range or a chunk, and more
    tokens than one token block. Close to the reference, and each row's bits those of the
    row alone, on any thread count and chunking."""
    rng = np.random.default_rng(n_out * 5 + n_in)
    w = rng.standard_normal((n_out, n_in)).astype(np.float32)
    bias = rng.standard_normal(n_out).astype(np.float32)
    x = rng.standard_normal((700, n_in)).astype(np.float32)
    rows = [run_linear(isa, "bf16", w, 0, x[t : t + 1], bias)[0] for t in range(34)]
    _, _, wf = encode(w, "bf16", 0)
    for T in (1, 2, 15, 16, 17, 31, 32, 33, 700):
        y = run_linear(isa, "bf16", w, 0, x[:T], bias)
        ref = reference(w, "bf16", 0, x[:T], bias, isa)
        scale = np.abs(x[:T]).max() * np.abs(wf).sum(axis=1).max()
        assert np.abs(y - ref).max() / scale < RTOL_F32_SUM, f"T={T}"
        for t in range(min(T, 34)):
            assert np.array_equal(y[t], rows[t]), f"T={T} row {t}"
        for n_threads, chunk in ((2, 5), (3, 0), (2, 16), (3, 7)):  # (3, 7): rows prepared from mid-block
            assert np.array_equal(y, run_linear(isa, "bf16", w, 0, x[:T], bias, n_threads, chunk)), f"T={T}"
    assert np.array_equal(run_linear(isa, "bf16", w, 0, x[650:], bias), y[650:])


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("n_out,n_in,group", [(35, 768, 64), (17, 320, 64), (18, 384, 192), (37, 100, 0), (6, 256, 128)])
def test_q4_small_batches_match_scalar(isa, n_out, n_in, group):
    """int4 small batches (T = 2..8: their own tiles on AVX-512) give the scalar reference's bits."""
    rng = np.random.default_rng(n_out + n_in)
    w = rng.standard_normal((n_out, n_in)).astype(np.float32)
    bias = rng.standard_normal(n_out).astype(np.float32)
    for T in range(2, 9):
        x = rng.standard_normal((T, n_in)).astype(np.float32)
        y = run_linear(isa, "int4", w, group, x, bias)
        assert np.array_equal(y, run_linear("scalar", "int4", w, group, x, bias)), f"{isa} T={T}"
        for n_threads in (2, 3):
            assert np.array_equal(y, run_linear(isa, "int4", w, group, x, bias, n_threads=n_threads)), f"T={T}"


@pytest.mark.parametrize("isa", [i for i in ISAS if i not in BF16_DOT_ISAS])
@pytest.mark.parametrize("n_in", [67, 768, 3100])
def test_bf16_widened_is_f32_of_the_same_values(isa, n_in):
    """Without AVX512-BF16, bf16 weights are widened to f32 exactly and multiplied as f32
    weights: the bits of the f32 linear over the bf16-rounded weights, at any T."""
    rng = np.random.default_rng(n_in)
    w = bf16_round(rng.standard_normal((21, n_in)).astype(np.float32))
    bias = rng.standard_normal(21).astype(np.float32)
    for T in (1, 3, 8, 13):
        x = rng.standard_normal((T, n_in)).astype(np.float32)
        y = run_linear(isa, "bf16", w, 0, x, bias)
        assert np.array_equal(y, run_linear(isa, "f32", w, 0, x, bias)), f"{isa} T={T}"
        assert np.array_equal(y, run_linear(isa, "bf16", w, 0, x, bias, n_threads=2)), f"{isa} T={T}"


@pytest.mark.parametrize("isa", ISAS)
def test_f16_weights_every_value(isa):
    """Every f16 value (subnormals, infinities, NaNs included) times 1 gives its float32
    value: the conversion of each path (F16C, or the scalar path's own) against NumPy's."""
    h = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    ref = h.view(np.float16).astype(np.float32)
    y = _core._kernel_linear(isa, "f16", h.view(np.uint8), None, None, np.ones((1, 1), np.float32), len(h), 0, 1, 0)[0]
    nan = np.isnan(ref)
    assert np.array_equal(np.isnan(y), nan)
    assert np.array_equal(y[~nan], ref[~nan])  # -0.0 == 0.0: the kernel's sum starts from +0
