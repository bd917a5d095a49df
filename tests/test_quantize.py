"""pygpt.quantize: the int8/int4 layouts the converter writes and the C++ loader reads."""

import numpy as np
import pytest

from pygpt import quantize as qz


@pytest.mark.parametrize("dtype,group", [("int8", 0), ("int8", 64), ("int4", 64), ("int4", 0), ("int4", 128)])
def test_round_trip_error_is_bounded(dtype, group):
    rng = np.random.default_rng(0)
    w = rng.standard_normal((9, 256)).astype(np.float32)
    parts = qz.quantize_matrix(w, dtype, group)
    back = qz.dequantize(parts, dtype, 256)
    g = group or 256
    scales = np.repeat(parts["_scales"], g, axis=1)
    # rounding to the nearest level: at most half a step (int4: the clip at +7 costs one step at most)
    bound = 0.5 * np.abs(scales) if dtype == "int8" else 1.0 * np.abs(scales)
    assert np.all(np.abs(back - w) <= bound + 1e-7)
    assert np.abs(back - w).max() > 0  # it did quantize


def test_shapes_match_tensor_specs():
    rng = np.random.default_rng(1)
    for dtype, group, n_in in [("int8", 0, 67), ("int8", 64, 192), ("int4", 64, 192), ("int4", 0, 100)]:
        w = rng.standard_normal((5, n_in)).astype(np.float32)
        tensors = qz.quantize("h.0.mlp.c_fc.weight", w, dtype, group)
        specs = qz.tensor_specs("h.0.mlp.c_fc.weight", 5, n_in, dtype, group)
        assert set(tensors) == set(specs)
        st_dtype = {"I8": np.int8, "U8": np.uint8, "F32": np.float32}
        for name, (dt, shape) in specs.items():
            assert tensors[name].dtype == st_dtype[dt], name
            assert tensors[name].shape == tuple(shape), name


def test_int8_layout():
    w = np.array([[1.0, -0.5, 0.25, 0.0], [0, 0, 0, 0]], np.float32)
    parts = qz.quantize_matrix(w, "int8", 0)
    assert parts[""].tolist() == [[127, -64, 32, 0], [0, 0, 0, 0]]  # -63.5 rounds to even
    np.testing.assert_allclose(parts["_scales"][:, 0], [1 / 127, 0])


def test_int4_layout_nibbles():
    """Block of 64: byte j = input j (low nibble) | input j + 32 (high nibble), stored as q + 8."""
    q = np.arange(64) % 16 - 8
    parts = qz.quantize_matrix(-q.astype(np.float32)[None], "int4", 64)
    # the value of largest magnitude (8, at index 0) maps to -8: scale -1, so q comes back
    assert parts["_scales"][0, 0] == -1.0
    np.testing.assert_array_equal(qz.unpack_int4(parts[""], 64)[0], q)
    b = parts[""][0]
    assert b[0] == (q[0] + 8) | ((q[32] + 8) << 4)
    assert b[5] == (q[5] + 8) | ((q[37] + 8) << 4)


def test_int4_pads_rows_to_blocks_of_64():
    w = np.ones((3, 100), np.float32)
    parts = qz.quantize_matrix(w, "int4", 0)
    assert parts[""].shape == (3, 64)
    np.testing.assert_allclose(qz.dequantize(parts, "int4", 100), w)


def test_zero_weights():
    for dtype in qz.DTYPES:
        parts = qz.quantize_matrix(np.zeros((2, 64), np.float32), dtype, 64)
        assert not parts["_scales"].any()
        np.testing.assert_array_equal(qz.dequantize(parts, dtype, 64), 0)


@pytest.mark.parametrize("group", [32, 50, -2, 100])
def test_bad_groups_are_value_errors(group):
    with pytest.raises(ValueError, match="group size"):
        qz.quantize_matrix(np.zeros((2, 192), np.float32), "int8", group)
    with pytest.raises(ValueError, match="group size"):
        qz.tensor_specs("w", 2, 192, "int4", group)


def test_bad_dtype_and_shape():
    with pytest.raises(ValueError, match="dtype"):
        qz.quantize_matrix(np.zeros((2, 64), np.float32), "int3")
    with pytest.raises(ValueError, match="2-D"):
        qz.quantize_matrix(np.zeros(64, np.float32), "int8")
