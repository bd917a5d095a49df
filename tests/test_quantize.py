"""pygpt.quantize: the int8/int4 layouts the converter writes and the C++ loader reads."""

import numpy as np
import pytest

from pygpt import quantize as qz


@pytest.mark.parametrize("dtype,group",
                         [("int8", 0), ("int8", 64), ("int4", 64), ("int4", 0), ("int4", 128), ("int8", 32), ("int4", 32)])
def test_round_trip_error_is_bounded(dtype, group):
    rng = np.random.default_rng(0)
    w = rng.standard_normal((9, 256)).astype(np.float32)
    parts = qz.quantize_matrix(w, dtype, group)
    back = qz.dequantize(parts, dtype, 9, 256)
    g = group or 256
    scales = np.repeat(qz.row_scales(parts["_scales"], 9), g, axis=1)
    # rounding to the nearest level: at most half a step (int4: the clip at +7 costs one step at most)
    bound = 0.5 * np.abs(scales) if dtype == "int8" else 1.0 * np.abs(scales)
    assert np.all(np.abs(back - w) <= bound + 1e-7)
    assert np.abs(back - w).max() > 0  # it did quantize


def test_shapes_match_tensor_specs():
    rng = np.random.default_rng(1)
    for dtype, group, n_in in [("int8", 0, 67), ("int8", 64, 192), ("int4", 64, 192), ("int4", 0, 100),
                               ("int8", 32, 128), ("int4", 32, 192), ("int4", 32, 32)]:
        w = rng.standard_normal((5, n_in)).astype(np.float32)
        tensors = qz.quantize("h.0.mlp.c_fc.weight", w, dtype, group)
        specs = qz.tensor_specs("h.0.mlp.c_fc.weight", 5, n_in, dtype, group)
        assert set(tensors) == set(specs)
        st_dtype = {"I8": np.int8, "U8": np.uint8, "F32": np.float32}
        for name, (dt, shape) in specs.items():
            assert tensors[name].dtype == st_dtype[dt], name
            assert tensors[name].shape == tuple(shape), name


def test_int8_layout():
    """Panels of 16 rows; per block of 64 inputs 16 runs of 64 bytes, run j holding 4 bytes of
    each row (row r at 4r), byte i = input 4j + i, stored as q + 128 (docs/FORMAT.md)."""
    w = np.array([[1.0, -0.5, 0.25, 0.0, 0.5], [0, 0, 0, 0, 0]], np.float32)
    parts = qz.quantize_matrix(w, "int8", 0)
    assert parts[""].shape == (1, 1024) and parts["_scales"].shape == (1, 16)
    assert qz.unpack_int8(parts[""], 2, 5).tolist() == [[127, -64, 32, 0, 64], [0] * 5]  # -63.5 rounds to even
    b = parts[""][0]
    assert b[:4].tolist() == [255, 64, 160, 128] and b[4:8].tolist() == [128] * 4  # run 0: rows 0, 1
    assert b[64] == 64 + 128  # run 1, row 0, byte 0: input 4
    assert (b[8:64] == 128).all() and (b[65:] == 128).all()  # padding rows and inputs: q = 0
    np.testing.assert_allclose(parts["_scales"][0, :2], [1 / 127, 0])
    assert not parts["_scales"][0, 2:].any()


def test_int4_layout_nibbles():
    """Panels of 16 rows; per block of 64 inputs 8 runs of 64 bytes, run j holding 4 bytes of
    each row (row r at 4r), byte i = input 4j + i (low nibble) | input 32 + 4j + i (high
    nibble), stored as q + 8 (docs/FORMAT.md)."""
    q = np.arange(64) % 16 - 8
    parts = qz.quantize_matrix(-q.astype(np.float32)[None], "int4", 64)
    # the value of largest magnitude (8, at index 0) maps to -8: scale -1, so q comes back
    assert parts["_scales"].shape == (1, 16) and parts["_scales"][0, 0] == -1.0
    assert not parts["_scales"][0, 1:].any()  # rows 1..15 of the panel: padding
    np.testing.assert_array_equal(qz.unpack_int4(parts[""], 1, 64)[0], q)
    b = parts[""][0]
    assert b.shape == (512,)
    assert b[0] == (q[0] + 8) | ((q[32] + 8) << 4)
    assert b[3] == (q[3] + 8) | ((q[35] + 8) << 4)
    assert b[64 + 1] == (q[5] + 8) | ((q[37] + 8) << 4)  # run 1, row 0, byte 1
    assert (b[4:64] == 0x88).all()  # the other rows of run 0: padding, q = 0


def test_int4_panels_of_16_rows():
    rng = np.random.default_rng(3)
    w = rng.standard_normal((35, 128)).astype(np.float32)  # 3 panels (the last holds 3 rows), 2 blocks
    parts = qz.quantize_matrix(w, "int4", 64)
    assert parts[""].shape == (3, 1024) and parts["_scales"].shape == (3, 32)
    q = qz.unpack_int4(parts[""], 35, 128)
    row, k = 21, 64 + 32 + 4 * 5 + 2  # panel 1, row 5 of it; block 1, high nibble of run 5, byte 2
    assert parts[""][1, 512 + 5 * 64 + 5 * 4 + 2] >> 4 == q[row, k] + 8
    assert parts["_scales"][1, 1 * 16 + 5] == qz.row_scales(parts["_scales"], 35)[row, 1]
    assert parts["_scales"][2, 3:16].tolist() == [0] * 13
    assert (parts[""][2].reshape(2, 8, 16, 4)[:, :, 3:] == 0x88).all()  # padding rows: q = 0
    np.testing.assert_allclose(qz.dequantize(parts, "int4", 35, 128), q * np.repeat(
        qz.row_scales(parts["_scales"], 35), 64, axis=1))


def test_int4_pads_rows_to_blocks_of_64():
    w = np.ones((3, 100), np.float32)
    parts = qz.quantize_matrix(w, "int4", 0)
    assert parts[""].shape == (1, 1024)
    np.testing.assert_allclose(qz.dequantize(parts, "int4", 3, 100), w)


def test_zero_weights():
    for dtype in qz.DTYPES:
        parts = qz.quantize_matrix(np.zeros((2, 64), np.float32), dtype, 64)
        assert not parts["_scales"].any()
        np.testing.assert_array_equal(qz.dequantize(parts, dtype, 2, 64), 0)


@pytest.mark.parametrize("group", [96, 50, -2, 100, 16])
def test_bad_groups_are_value_errors(group):
    with pytest.raises(ValueError, match="group size"):
        qz.quantize_matrix(np.zeros((2, 192), np.float32), "int8", group)
    with pytest.raises(ValueError, match="group size"):
        qz.tensor_specs("w", 2, 192, "int4", group)


def test_groups_of_32_need_whole_blocks():
    """32 inputs a scale: two groups in each block of 64, so the inputs must fill the blocks
    (a row of 32 inputs alone is one group, the per-row case)."""
    with pytest.raises(ValueError, match="group size 32"):
        qz.quantize_matrix(np.zeros((2, 96), np.float32), "int4", 32)
    assert qz.tensor_specs("w", 2, 32, "int4", 32)["w_scales"] == ("F32", (1, 16))
    assert qz.tensor_specs("w", 2, 128, "int4", 32)["w_scales"] == ("F32", (1, 64))


def test_groups_of_32_scale_each_half_block():
    """At 32 inputs a scale, the first and second halves of a block (for int4 the low and the
    high nibbles of its bytes) get scales of their own, as llama.cpp's q4_0 blocks do."""
    levels = np.tile(np.arange(-8, 8), 2)  # every level of int4, twice: 32 inputs
    w = np.concatenate([levels, 0.1 * levels]).astype(np.float32)[None]
    parts = qz.quantize_matrix(w, "int4", 32)
    np.testing.assert_allclose(qz.row_scales(parts["_scales"], 1)[0], [1.0, 0.1], rtol=1e-6)
    np.testing.assert_allclose(qz.dequantize(parts, "int4", 1, 64), w, rtol=0, atol=1e-6)


def test_bad_dtype_and_shape():
    with pytest.raises(ValueError, match="dtype"):
        qz.quantize_matrix(np.zeros((2, 64), np.float32), "int3")
    with pytest.raises(ValueError, match="2-D"):
        qz.quantize_matrix(np.zeros(64, np.float32), "int8")


# -- whole models: each dtype's logits close to f32, bitwise the same for any thread count ----

# Logit error of each dtype relative to the spread (std) of the f32 logits, on a random
# 2-layer model (n_embd 128): (max over all logits, root mean square). Measured: f16 9e-4 /
# 2.4e-4, bf16 1.2e-2 / 2.7e-3, int8 4.1e-2 / 1.0e-2, int4 0.41 / 0.11 (random Gaussian
# weights are the worst case for 4 bits; trained models: see BENCHMARKS.md). Bounds ~3x that.
LOGIT_TOLERANCE = {
    "f16": (3e-3, 1e-3),
    "bf16": (4e-2, 1e-2),
    "int8": (0.12, 0.03),
    "int4": (1.2, 0.3),
    # groups of 32 (llama.cpp's block): measured int8 4.4e-2 / 1.0e-2, int4 0.42 / 0.10
    "int8-g32": (0.12, 0.03),
    "int4-g32": (1.2, 0.3),
}


@pytest.fixture(scope="module")
def dtype_models(tmp_path_factory):
    from conftest import make_hf_model

    import pygpt.convert

    base = tmp_path_factory.mktemp("dtypes")
    make_hf_model(str(base / "hf"), n_layer=2, n_head=2, n_embd=128, n_positions=64, vocab_size=1000,
                  bos_token_id=0, eos_token_id=0)
    out = {}
    for key, dt, group in [("f32", "f32", 0), ("f16", "f16", 0), ("bf16", "bf16", 0), ("int8", "int8", 64),
                           ("int4", "int4", 64), ("int8-g32", "int8", 32), ("int4-g32", "int4", 32)]:
        out[key] = str(base / key)
        kw = {"group_size": group} if group else {}
        pygpt.convert.convert(str(base / "hf"), out[key], dtype=dt, **kw)
    return out


IDS = np.random.default_rng(0).integers(0, 1000, 40)


@pytest.mark.parametrize("dtype", list(LOGIT_TOLERANCE))
def test_dtype_logits_close_to_f32(dtype_models, dtype):
    import pygpt

    ref = pygpt.load(dtype_models["f32"], n_threads=2).logits(IDS)
    got = pygpt.load(dtype_models[dtype], n_threads=2).logits(IDS)
    err = np.abs(got - ref) / ref.std()
    max_tol, rms_tol = LOGIT_TOLERANCE[dtype]
    assert err.max() < max_tol, f"{dtype}: max error {err.max():.3g} x std(logits)"
    assert np.sqrt((err**2).mean()) < rms_tol, f"{dtype}: rms error {np.sqrt((err**2).mean()):.3g} x std(logits)"
    assert err.max() > 0  # really a different dtype


@pytest.mark.parametrize("dtype", ["f32", "f16", "bf16", "int8", "int4", "int8-g32", "int4-g32"])
def test_dtype_logits_identical_for_any_thread_count(dtype_models, dtype):
    import pygpt

    first = pygpt.load(dtype_models[dtype], n_threads=1).logits(IDS)
    for n in (2, 3):
        assert np.array_equal(first, pygpt.load(dtype_models[dtype], n_threads=n).logits(IDS)), f"{n} threads"


@pytest.mark.parametrize("dtype", ["f32", "bf16", "int8", "int4", "int4-g32"])
def test_dtype_sequence_same_alone_or_in_a_batch(dtype_models, dtype):
    """Greedy tokens of a prompt do not change when other prompts run in the same batch."""
    import pygpt

    m = pygpt.load(dtype_models[dtype], n_threads=2)
    prompts = [IDS[:5].tolist(), IDS[5:17].tolist(), IDS[17:20].tolist()]
    alone = [m.generate(p, max_new_tokens=6, ignore_eos=True).tokens for p in prompts]
    batch = [o.tokens for o in m.generate(prompts, max_new_tokens=6, ignore_eos=True)]
    assert alone == batch


@pytest.mark.parametrize("key,line", [("int8", "int8 (a scale per 64 weights)"), ("int4-g32", "int4 (a scale per 32 weights)")])
def test_info_names_the_group(dtype_models, pygpt_cmd, key, line):
    import subprocess

    r = subprocess.run([*pygpt_cmd, "info", dtype_models[key], "--threads", "1"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert any(ln.split(None, 1) == ["dtype", line] for ln in r.stdout.splitlines()), r.stdout
