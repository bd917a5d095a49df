"""Every GPT-2-family shape loads. The big ones are written as sparse files (the header is
real, the weights are holes that read as zeros), so no gigabytes are written."""

import json
import os
import struct

import numpy as np
import pytest

import pygpt
from pygpt._format import ST_DTYPE_SIZE, expected_tensors

FAMILY = {
    "distilgpt2": dict(n_layer=6, n_head=12, n_embd=768),
    "gpt2": dict(n_layer=12, n_head=12, n_embd=768),
    "gpt2-medium": dict(n_layer=24, n_head=16, n_embd=1024),
    "gpt2-large": dict(n_layer=36, n_head=20, n_embd=1280),
    "gpt2-xl": dict(n_layer=48, n_head=25, n_embd=1600),
}


def write_sparse_model(folder, **shape):
    cfg = {"format": "pygpt", "format_version": 1, "architecture": "gpt2", "n_ctx": 1024, "vocab_size": 50257,
           "layer_norm_epsilon": 1e-5, "activation": "gelu_tanh", "bias": True, "dtype": "f32", **shape}
    header, offset = {}, 0
    for name, (dtype, shp) in expected_tensors(cfg).items():
        n = int(np.prod(shp)) * ST_DTYPE_SIZE[dtype]
        header[name] = {"dtype": dtype, "shape": shp, "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "model.safetensors"), "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        f.truncate(8 + len(raw) + offset)  # sparse: no data written
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(cfg, f)
    return offset


@pytest.mark.parametrize("name", list(FAMILY))
def test_family_shape_loads(tmp_path, name):
    nbytes = write_sparse_model(str(tmp_path), **FAMILY[name])
    m = pygpt.load(str(tmp_path))
    assert m.config["n_layer"] == FAMILY[name]["n_layer"]
    assert m._core.file_bytes > nbytes and m._core.copied_bytes == 0  # used in place, not copied
    if name == "distilgpt2":  # small enough to run: zero weights give zero logits
        assert not m.logits([50256, 1]).any()


@pytest.mark.parametrize("name", ["tiny", "odd"])
def test_small_and_odd_shapes_load(hf_model_factory, name):
    _, _, out = hf_model_factory(name)
    m = pygpt.load(out)
    assert m.logits([0, 1, 2]).shape == (3, m.config["vocab_size"])
