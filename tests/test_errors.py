"""Bad model folders and bad inputs: each a clear Python exception, never a crash."""

import json
import os
import shutil
import struct

import numpy as np
import pytest

import pygpt
from pygpt import ModelFormatError


@pytest.fixture
def folder(hf_model_factory, tmp_path):
    """A writable copy of the converted 'odd' model (no tokenizer files)."""
    _, _, out = hf_model_factory("odd")
    dst = tmp_path / "model"
    shutil.copytree(out, dst)
    return dst


def read_st(path):
    raw = open(path, "rb").read()
    n = struct.unpack("<Q", raw[:8])[0]
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def write_st(path, header, data, header_len=None):
    h = json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h) if header_len is None else header_len))
        f.write(h)
        f.write(data)


def test_missing_folder_and_files(tmp_path, folder):
    with pytest.raises(FileNotFoundError):
        pygpt.load(tmp_path / "nowhere")
    os.remove(folder / "model.safetensors")
    with pytest.raises(FileNotFoundError):
        pygpt.load(folder)
    os.remove(folder / "config.json")
    with pytest.raises(FileNotFoundError, match="config.json"):
        pygpt.load(folder)


def test_truncated_file(folder):
    st = folder / "model.safetensors"
    raw = st.read_bytes()
    st.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ModelFormatError, match="outside"):
        pygpt.load(folder)
    st.write_bytes(raw[:5])
    with pytest.raises(ModelFormatError, match="truncated"):
        pygpt.load(folder)


def test_wrong_header_length(folder):
    st = folder / "model.safetensors"
    header, data = read_st(st)
    write_st(st, header, data, header_len=10**12)
    with pytest.raises(ModelFormatError, match="header length"):
        pygpt.load(folder)
    write_st(st, header, data, header_len=len(json.dumps(header)) - 3)
    with pytest.raises(ModelFormatError, match="JSON"):
        pygpt.load(folder)


def test_shape_mismatch_names_the_tensor(folder):
    st = folder / "model.safetensors"
    header, data = read_st(st)
    header["h.1.mlp.c_fc.bias"]["shape"] = [8, 18]  # same bytes, wrong shape
    write_st(st, header, data)
    with pytest.raises(ModelFormatError, match=r"h\.1\.mlp\.c_fc\.bias.*shape"):
        pygpt.load(folder)


@pytest.mark.parametrize("dtype", ["int8", "int4"])
def test_quantized_folder_in_the_old_row_layout(hf_model_factory, tmp_path, dtype):
    """int8/int4 folders written before the panel layout (one stored row per output, int8 as
    I8) fail with a ModelFormatError that says to convert them again."""
    from safetensors.numpy import load_file, save_file

    import pygpt.convert
    from pygpt import quantize as qz

    _, hf_dir, _ = hf_model_factory("odd")
    out = tmp_path / dtype
    pygpt.convert.convert(hf_dir, str(out), dtype=dtype)
    st = str(out / "model.safetensors")
    tensors = load_file(st)
    w = tensors["h.0.mlp.c_fc.weight"]  # -> as the row layout stored it
    n_in = json.loads((out / "config.json").read_text())["n_embd"]
    n_out = 4 * n_in
    q = (qz.unpack_int8 if dtype == "int8" else qz.unpack_int4)(w, n_out, n_in)
    tensors["h.0.mlp.c_fc.weight"] = q if dtype == "int8" else np.zeros((n_out, -(-n_in // 64) * 32), np.uint8)
    save_file(tensors, st)
    with pytest.raises(ModelFormatError, match=r"h\.0\.mlp\.c_fc\.weight.*convert.*again"):
        pygpt.load(out)


def test_unknown_dtype(folder):
    st = folder / "model.safetensors"
    header, data = read_st(st)
    header["ln_f.weight"]["dtype"] = "F8_E4M3"
    write_st(st, header, data)
    with pytest.raises(ModelFormatError, match=r"ln_f\.weight.*dtype"):
        pygpt.load(folder)


def test_dtype_that_does_not_match_config(folder):
    cfg = json.loads((folder / "config.json").read_text())
    cfg["dtype"] = "f16"
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelFormatError, match="dtype F32"):
        pygpt.load(folder)


def test_overlapping_and_missing_tensors(folder):
    st = folder / "model.safetensors"
    header, data = read_st(st)
    bad = json.loads(json.dumps(header))
    bad["ln_f.bias"]["data_offsets"] = bad["ln_f.weight"]["data_offsets"]
    write_st(st, bad, data)
    with pytest.raises(ModelFormatError, match="overlap"):
        pygpt.load(folder)
    del header["h.2.ln_2.weight"]
    write_st(st, header, data)
    with pytest.raises(ModelFormatError, match=r"h\.2\.ln_2\.weight.*missing"):
        pygpt.load(folder)


@pytest.mark.parametrize("key,value,match", [
    ("n_layer", -1, "n_layer"), ("n_head", 5, "divisible"), ("n_ctx", 10**9, "n_ctx"),
    ("activation", "relu", "activation"), ("format_version", 99, "format_version"), ("bias", "yes", "bias")])
def test_bad_config(folder, key, value, match):
    cfg = json.loads((folder / "config.json").read_text())
    cfg[key] = value
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelFormatError, match=match):
        pygpt.load(folder)


def test_config_not_json(folder):
    (folder / "config.json").write_text("{not json")
    with pytest.raises(ModelFormatError, match="JSON"):
        pygpt.load(folder)


def test_bad_token_inputs(folder):
    m = pygpt.load(folder)
    V, n_ctx = m.config["vocab_size"], m.config["n_ctx"]
    with pytest.raises(ValueError, match="out of range"):
        m.logits([1, V])
    with pytest.raises(ValueError, match="out of range"):
        m.logits([-1])
    with pytest.raises(ValueError, match="empty"):
        m.logits([])
    with pytest.raises(ValueError, match="n_ctx"):
        m.logits(list(range(n_ctx + 1)))
    with pytest.raises(TypeError):
        m.logits("hello")
    with pytest.raises(TypeError):
        m.logits([1.5, 2.0])
    # the core checks too, not only the Python wrapper
    with pytest.raises(ValueError, match="out of range"):
        m._core.logits(np.array([V], np.int32))
    cache = m._core.new_cache()
    m._core.forward(cache, np.arange(n_ctx, dtype=np.int32) % V)
    with pytest.raises(ValueError, match="n_ctx"):
        m._core.forward(cache, np.array([1], np.int32))
    assert m.logits([1, 2]).shape == (2, V)  # still usable


def test_bad_thread_count(folder):
    for n in (0, -2, 1.5, True, 10**6):
        with pytest.raises(ValueError):
            pygpt.load(folder, n_threads=n)


def test_closed_model(folder):
    m = pygpt.load(folder)
    m.close()
    assert "closed" in repr(m)
    with pytest.raises(ValueError, match="closed"):
        m.logits([1])
