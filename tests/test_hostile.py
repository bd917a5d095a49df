"""Hostile model folders: corrupted model.safetensors, config.json and tokenizer files.

Every variant must end in a clear Python exception (pygpt.ModelFormatError, naming the
problem, or FileNotFoundError) raised in this process: a crash would take pytest down with it.
The files are generated here from a tiny valid model (tests/hostile_files.py), so each load
costs about a millisecond. RELIABILITY.md counts the variants.
"""

import copy
import json
import math
import os
import pickle
import random
import struct

import numpy as np
import pytest

import pygpt
from pygpt import ModelFormatError, _core, _format

import hostile_files as hf

# ---------------------------------------------------------------------------------------------
# the base model


@pytest.fixture(scope="module")
def base():
    """(config, tensors, file bytes, header) of the valid tiny f32 model."""
    cfg = hf.tiny_config()
    tensors = hf.tiny_tensors(cfg)
    raw, header = hf.pack_safetensors(tensors)
    return cfg, tensors, raw, header


@pytest.fixture
def folder(tmp_path, base):
    cfg, tensors, _, _ = base
    return hf.write_model(tmp_path / "m", cfg=cfg, tensors=tensors)


def put(folder, name, content):
    mode = "wb" if isinstance(content, bytes) else "w"
    with open(os.path.join(folder, name), mode) as f:
        f.write(content)


def test_base_model_is_valid(folder):
    m = pygpt.load(folder, check_finite=True)
    logits = m.logits([1, 2, 3])
    assert logits.shape == (3, 300) and np.isfinite(logits).all()


# ---------------------------------------------------------------------------------------------
# model.safetensors: one targeted corruption per case
#
# Each case is (id, function(header, data, raw) -> file bytes, regex the message must match).
# `header` is a deep copy of the valid header, `data` the bytes after it, `raw` the whole file.

DATA_NAMES = ("wte.weight", "wpe.weight", "h.0.ln_1.weight", "h.0.attn.c_attn.weight", "h.0.mlp.c_proj.bias",
              "ln_f.bias")


def repack(header, data):
    return hf.pack_raw(json.dumps(header).encode(), data)


def with_entry(name, **fields):
    def f(header, data, raw):
        header[name].update(fields)
        return repack(header, data)
    return f


def without_field(name, field):
    def f(header, data, raw):
        del header[name][field]
        return repack(header, data)
    return f


def header_len(value):
    return lambda header, data, raw: struct.pack("<Q", value) + raw[8:]


def header_bytes(text: bytes):
    return lambda header, data, raw: hf.pack_raw(text, data)


def header_len_delta(delta):
    """The length of the (unpadded) JSON off by delta: cuts the JSON or swallows data bytes."""
    def f(header, data, raw):
        text = json.dumps(header).encode()
        return hf.pack_raw(text, data, header_len=len(text) + delta)
    return f


def truncate_to(fraction):
    return lambda header, data, raw: raw[:int(len(raw) * fraction)]


def offsets_of(name, fn):
    def f(header, data, raw):
        b, e = header[name]["data_offsets"]
        header[name]["data_offsets"] = fn(b, e, len(data))
        return repack(header, data)
    return f


def shape_and_offsets(name, shape, nbytes=None):
    """A shape with the offsets it claims to need (nbytes overrides)."""
    def f(header, data, raw):
        entry = header[name]
        size = _format.ST_DTYPE_SIZE[entry["dtype"]]
        n = math.prod(shape) * size if nbytes is None else nbytes
        b = entry["data_offsets"][0]
        entry["shape"], entry["data_offsets"] = shape, [b, b + n]
        return repack(header, data)
    return f


def drop(name):
    def f(header, data, raw):
        del header[name]
        return repack(header, data)
    return f


def add_entry(name, entry):
    def f(header, data, raw):
        header[name] = entry
        return repack(header, data)
    return f


def duplicate_key(name):
    """The same tensor name twice in the JSON text (a dict cannot hold that)."""
    def f(header, data, raw):
        text = json.dumps(header)
        extra = json.dumps({name: header[name]})[1:-1]
        return hf.pack_raw((text[:-1] + ", " + extra + "}").encode(), data)
    return f


def overlap(a, b, shift=0):
    """Tensor a's offsets moved to start inside tensor b's data."""
    def f(header, data, raw):
        n = header[a]["data_offsets"][1] - header[a]["data_offsets"][0]
        start = header[b]["data_offsets"][0] + shift
        header[a]["data_offsets"] = [start, start + n]
        return repack(header, data)
    return f


def retype(name, dtype):
    """name stored as dtype, with the byte count that dtype needs (so only the dtype is wrong)."""
    def f(header, data, raw):
        entry = header[name]
        n = math.prod(entry["shape"]) * _format.ST_DTYPE_SIZE[dtype]
        b = entry["data_offsets"][0]
        entry["dtype"], entry["data_offsets"] = dtype, [b, b + n]
        return repack(header, data)
    return f


MAXQ = 2**64 - 1
ST_CASES = [
    # the 8-byte header length
    ("empty-file", lambda h, d, r: b"", "truncated"),
    ("7-bytes", lambda h, d, r: r[:7], "truncated"),
    ("header-len-0", header_len(0), "header length"),
    ("header-len-1", header_len(1), "header length"),
    ("header-len-file+1", lambda h, d, r: struct.pack("<Q", len(r) - 7) + r[8:], "header length"),
    ("header-len-2^32", header_len(2**32), "header length"),
    ("header-len-2^63", header_len(2**63), "header length"),
    ("header-len-2^64-1", header_len(MAXQ), "header length"),
    ("header-len-100MB+1", header_len(100 * 1024 * 1024 + 1), "header length"),
    ("header-len-minus-1", header_len_delta(-1), "JSON"),
    ("header-len-minus-2", header_len_delta(-2), "JSON"),
    ("header-len-plus-1", header_len_delta(1), "JSON"),
    ("header-len-plus-9", header_len_delta(9), "JSON"),
    ("header-only", lambda h, d, r: r[:len(r) - len(d)], "outside"),
    *[(f"truncated-{f}", truncate_to(f), "outside|header length|truncated")
      for f in (0.001, 0.01, 0.05, 0.1, 0.5, 0.9, 0.99, 0.999)],
    ("truncated-1-byte", lambda h, d, r: r[:-1], "outside"),
    # the header text
    ("not-utf8", header_bytes(b"\xff\xfe" + b"{}" * 10), "JSON"),
    ("bad-utf8-in-name", header_bytes(b'{"\xc3\x28": {}}'), "JSON"),
    ("utf16-header", lambda h, d, r: hf.pack_raw(json.dumps(h).encode("utf-16"), d), "JSON"),
    ("bom-header", lambda h, d, r: hf.pack_raw(b"\xef\xbb\xbf" + json.dumps(h).encode(), d), "JSON"),
    ("not-json", header_bytes(b"{not json}"), "JSON"),
    ("nul-bytes", header_bytes(b"\0" * 64), "JSON"),
    ("trailing-garbage", lambda h, d, r: hf.pack_raw(json.dumps(h).encode() + b"xx", d), "JSON"),
    ("json-array", header_bytes(b"[1, 2, 3]"), "not a JSON object"),
    ("json-number", header_bytes(b"12345678"), "not a JSON object"),
    ("json-string", header_bytes(b'"model"'), "not a JSON object"),
    ("json-null", header_bytes(b"null"), "not a JSON object"),
    ("deep-array", header_bytes(b"[" * 200_000), "JSON"),
    ("deep-object", header_bytes(b'{"a":' * 100_000), "JSON"),
    ("empty-object", header_bytes(b"{}"), "missing"),
    ("only-metadata", header_bytes(b'{"__metadata__": {"format": "pt"}}'), "missing"),
    # one entry
    *[(f"entry-{kind}", add_entry("ln_f.weight", v), "not an object")
      for kind, v in (("list", [1, 2]), ("string", "F32"), ("null", None), ("number", 7))],
    *[(f"dtype-{v}", with_entry("ln_f.weight", dtype=v), "dtype")
      for v in ("F64", "f32", "F8_E4M3", "BOOL", "I64", "", None, 4, ["F32"])],
    ("dtype-missing", without_field("ln_f.weight", "dtype"), "dtype"),
    *[(f"shape-{i}", with_entry("ln_f.weight", shape=v), "bad shape")
      for i, v in enumerate(("8", [8.0], [-8], [True, 8], [None], {}, [[8]], None, [8, -1], ["8"]))],
    ("shape-missing", without_field("ln_f.weight", "shape"), "bad shape"),
    *[(f"offsets-{i}", with_entry("ln_f.weight", data_offsets=v), "data_offsets")
      for i, v in enumerate(([1], [1, 2, 3], ["0", "32"], [0.0, 32.0], [True, False], None, {}, [], [None, 32]))],
    ("offsets-missing", without_field("ln_f.weight", "data_offsets"), "data_offsets"),
    # offsets against the data area
    ("offsets-negative", offsets_of("ln_f.weight", lambda b, e, n: [-32, 0]), "outside"),
    ("offsets-negative-end", offsets_of("ln_f.weight", lambda b, e, n: [-64, -32]), "outside"),
    ("offsets-end-before-begin", offsets_of("ln_f.weight", lambda b, e, n: [e, b]), "outside"),
    ("offsets-past-end", offsets_of("ln_f.weight", lambda b, e, n: [n - 16, n + 16]), "outside"),
    ("offsets-far-past-end", offsets_of("wte.weight", lambda b, e, n: [n + 4096, n + 4096 + e - b]), "outside"),
    ("offsets-2^63", offsets_of("ln_f.weight", lambda b, e, n: [2**63 - 32, 2**63]), "outside"),
    ("offsets-2^64", offsets_of("ln_f.weight", lambda b, e, n: [2**64, 2**64 + 32]), "outside"),
    ("offsets-2^100", offsets_of("ln_f.weight", lambda b, e, n: [2**100, 2**100 + 32]), "outside"),
    ("offsets-wrap", offsets_of("ln_f.weight", lambda b, e, n: [MAXQ - 15, MAXQ + 17]), "outside"),
    ("offsets-short", offsets_of("ln_f.weight", lambda b, e, n: [b, e - 4]), "bytes of data"),
    ("offsets-long", offsets_of("ln_f.weight", lambda b, e, n: [b, e + 4]), "bytes of data|overlap"),
    ("offsets-empty", offsets_of("ln_f.weight", lambda b, e, n: [b, b]), "bytes of data"),
    # shapes whose element count overflows 64 bits (with the byte count they would claim)
    ("shape-2^32x2^32", shape_and_offsets("ln_f.weight", [2**32, 2**32]), "absurdly large"),
    ("shape-2^62x4", shape_and_offsets("ln_f.weight", [2**62, 4]), "absurdly large"),
    ("shape-2^64", shape_and_offsets("ln_f.weight", [2**64]), "absurdly large"),
    ("shape-2^63-wraps-to-0", shape_and_offsets("ln_f.weight", [2**63, 2], nbytes=0), "absurdly large"),
    ("shape-2^61-f32", shape_and_offsets("ln_f.weight", [2**61], nbytes=32), "absurdly large"),
    ("shape-huge-times-0", shape_and_offsets("ln_f.weight", [0, 2**70]), "shape"),
    ("shape-many-dims", shape_and_offsets("ln_f.weight", [2] * 3 + [1] * 10000), "shape"),
    ("shape-transposed", with_entry("h.0.mlp.c_fc.weight", shape=[8, 32]), "shape"),
    ("shape-flat", with_entry("wte.weight", shape=[2400]), "shape"),
    ("shape-scalar", shape_and_offsets("ln_f.bias", []), "shape"),
    # overlaps
    ("overlap-same", overlap("ln_f.bias", "ln_f.weight"), "overlap"),
    ("overlap-partial", overlap("ln_f.bias", "ln_f.weight", 4), "overlap"),
    ("overlap-inside-wte", overlap("ln_f.bias", "wte.weight", 1000), "overlap"),
    ("overlap-big-over-small", overlap("wpe.weight", "h.0.ln_1.weight"), "overlap"),
    # names
    *[(f"duplicate-{n}", duplicate_key(n), "twice") for n in ("wte.weight", "ln_f.bias", "h.0.ln_2.weight")],
    ("duplicate-metadata", lambda h, d, r: hf.pack_raw(
        (json.dumps(h)[:-1] + ', "__metadata__": {}, "__metadata__": {}}').encode(), d), "twice"),
    ("extra-lm_head", add_entry("lm_head.weight", {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]}),
     "lm_head.weight.*not part"),
    ("extra-layer", add_entry("h.1.ln_1.weight", {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]}),
     "not part"),
    ("extra-attn-bias", add_entry("h.0.attn.bias", {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]}),
     "not part"),
    ("extra-empty-name", add_entry("", {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]}), "not part"),
    ("extra-long-name", add_entry("x" * 100_000, {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]}),
     "not part"),
    ("renamed", lambda h, d, r: repack({("wte.weight\u0000" if k == "wte.weight" else k): v
                                        for k, v in h.items()}, d), "missing"),
    # dtypes that do not match the config (f32 model)
    *[(f"dtype-{n}-{t}", retype(n, t), "dtype")
      for n in ("wte.weight", "h.0.attn.c_attn.weight", "ln_f.weight", "wpe.weight") for t in ("F16", "BF16", "I8")],
]
# every tensor missing in turn
ST_CASES += [(f"missing-{name}", drop(name), "missing") for name in _format.expected_tensors(hf.tiny_config())]


@pytest.mark.parametrize("make,match", [c[1:] for c in ST_CASES], ids=[c[0] for c in ST_CASES])
def test_hostile_safetensors(base, folder, make, match):
    cfg, tensors, raw, header = base
    _, data = hf.split_safetensors(raw)
    put(folder, "model.safetensors", make(copy.deepcopy(header), data, raw))
    with pytest.raises(ModelFormatError, match=match):
        pygpt.load(folder)


def test_metadata_of_any_type_is_ignored(base, folder):
    """__metadata__ is free-form in safetensors: whatever it holds, the model loads."""
    cfg, tensors, raw, header = base
    _, data = hf.split_safetensors(raw)
    for meta in ({"format": "pt"}, "text", 5, [1, 2], None, {"nested": {"a": [1, {"b": None}]}}):
        put(folder, "model.safetensors", repack({"__metadata__": meta, **header}, data))
        assert pygpt.load(folder).logits([0]).shape == (1, 300)


def test_misaligned_tensors_are_copied_and_correct(base, tmp_path):
    """Offsets that leave tensors misaligned are legal: the core copies them and computes the same."""
    cfg, tensors, _, _ = base
    ref = pygpt.load(hf.write_model(tmp_path / "a", cfg=cfg, tensors=tensors)).logits([5, 6, 7])
    assert pygpt.load(hf.write_model(tmp_path / "c", cfg=cfg, tensors=tensors))._core.copied_bytes == 0
    for pad, align in ((1, 1), (2, 1), (3, 2), (5, 4), (6, 8)):
        m = pygpt.load(hf.write_model(tmp_path / f"b{pad}", cfg=cfg, tensors=tensors, header_pad=pad, align=align))
        assert m._core.copied_bytes > 0
        np.testing.assert_array_equal(m.logits([5, 6, 7]), ref)


def test_model_file_not_a_regular_file(folder):
    os.remove(os.path.join(folder, "model.safetensors"))
    os.mkdir(os.path.join(folder, "model.safetensors"))
    with pytest.raises(FileNotFoundError):
        pygpt.load(folder)
    os.rmdir(os.path.join(folder, "model.safetensors"))
    os.symlink("/dev/zero", os.path.join(folder, "model.safetensors"))
    with pytest.raises(FileNotFoundError):
        pygpt.load(folder)


# ---------------------------------------------------------------------------------------------
# model.safetensors: random corruption (seeded). Any outcome but a crash or a non-pygpt
# exception is acceptable: a flipped data byte is still a valid (different) model.

N_RANDOM = 400


def _mutate(raw: bytes, rng: random.Random) -> bytes:
    b = bytearray(raw)
    n = struct.unpack("<Q", raw[:8])[0]
    kind = rng.randrange(6)
    if kind == 0:    # flip bytes of the header text
        for _ in range(rng.randint(1, 4)):
            b[8 + rng.randrange(n)] = rng.randrange(256)
    elif kind == 1:  # flip bytes of the length
        b[rng.randrange(8)] = rng.randrange(256)
    elif kind == 2:  # truncate anywhere
        del b[rng.randrange(len(b)):]
    elif kind == 3:  # delete a run inside the header
        i = 8 + rng.randrange(n)
        del b[i:i + rng.randint(1, 16)]
    elif kind == 4:  # insert bytes inside the header
        i = 8 + rng.randrange(n)
        b[i:i] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
    else:            # change a digit of the header (offsets and shapes)
        digits = [i for i in range(8, 8 + n) if chr(b[i]).isdigit()]
        i = rng.choice(digits)
        b[i] = ord(str(rng.randrange(10)))
    return bytes(b)


def test_random_corruptions(base, folder):
    cfg, tensors, raw, header = base
    rng = random.Random(1234)
    outcomes = {"loaded": 0, "ModelFormatError": 0}
    for _ in range(N_RANDOM):
        put(folder, "model.safetensors", _mutate(raw, rng))
        try:
            m = pygpt.load(folder)
        except ModelFormatError:
            outcomes["ModelFormatError"] += 1
            continue
        m.logits([0, 1, 2])  # what loaded must run
        outcomes["loaded"] += 1
    print(f"\nrandom corruptions: {outcomes}")
    assert outcomes["ModelFormatError"] > N_RANDOM // 2, outcomes


# ---------------------------------------------------------------------------------------------
# the C++ core re-checks the tensor table against the mapping even if Python were bypassed


def _core_tensors(header, data_start):
    return [(k, v["dtype"], v["shape"], data_start + v["data_offsets"][0], data_start + v["data_offsets"][1])
            for k, v in header.items()]


def _core_variants(tensors, size):
    i = next(j for j, t in enumerate(tensors) if t[0] == "ln_f.weight")

    def with_(**kw):
        out = list(tensors)
        name, dtype, shape, b, e = out[i]
        d = dict(name=name, dtype=dtype, shape=shape, b=b, e=e)
        d.update(kw)
        out[i] = (d["name"], d["dtype"], d["shape"], d["b"], d["e"])
        return out

    name, dtype, shape, b, e = tensors[i]
    yield "past-end", with_(b=size - 16, e=size + 16), "outside"
    yield "far-past-end", with_(b=size + (1 << 40), e=size + (1 << 40) + 32), "outside"
    yield "in-length-prefix", with_(b=0, e=32), "outside"
    yield "negative", with_(b=-32, e=0), "outside"
    yield "reversed", with_(b=e, e=b), "outside"
    yield "int64-max", with_(b=2**63 - 33, e=2**63 - 1), "outside"
    yield "size-mismatch", with_(e=e - 4), "byte size"
    yield "shape-overflow", with_(shape=[2**32, 2**32, 2]), "shape|byte size"
    yield "shape-overflow-bytes", with_(shape=[2**61, 2]), "byte size"
    yield "shape-negative", with_(shape=[-8]), "shape"
    yield "shape-neg-neg", with_(shape=[-2, -4]), "shape"
    yield "dtype", with_(dtype="F64"), "dtype"
    yield "dtype-mismatch", with_(dtype="I8", e=b + 8), "dtype"
    yield "duplicate", list(tensors) + [tensors[i]], "duplicate"
    yield "overlap", with_(name="ln_f.weight_copy") + [tensors[i]], "overlap"
    yield "missing", [t for j, t in enumerate(tensors) if j != i], "missing"
    yield "unexpected", tensors + [("zzz", "F32", [0], 8, 8)], "unexpected"


def test_core_rechecks_the_tensor_table(base, folder):
    cfg, tensors, raw, header = base
    n = struct.unpack("<Q", raw[:8])[0]
    good = _core_tensors(header, 8 + n)
    path = os.path.join(folder, "model.safetensors")
    vcfg = _format.validate_config(cfg)
    _core.Model(path, vcfg, good, 1, "")  # the valid table loads
    count = 0
    for label, table, match in _core_variants(good, len(raw)):
        with pytest.raises(ModelFormatError, match=match):
            _core.Model(path, vcfg, table, 1, "")
        count += 1
    assert count == 17


def test_core_rechecks_the_config(base, folder):
    """Dimensions Python would refuse, handed straight to the core: a clear error, no crash."""
    cfg, tensors, raw, header = base
    n = struct.unpack("<Q", raw[:8])[0]
    good = _core_tensors(header, 8 + n)
    path = os.path.join(folder, "model.safetensors")
    for key, value in (("n_embd", 0), ("n_head", 3), ("n_head", 0), ("n_layer", -1), ("vocab_size", 0),
                       ("n_ctx", 0), ("n_ctx", 17), ("vocab_size", 301), ("n_layer", 2)):
        bad = dict(_format.validate_config(cfg), **{key: value})
        with pytest.raises(ModelFormatError):
            _core.Model(path, bad, good, 1, "")
    with pytest.raises(ValueError):
        _core.Model(path, _format.validate_config(cfg), good, 0, "")


# ---------------------------------------------------------------------------------------------
# config.json

REQUIRED = ("format", "format_version", "n_layer", "n_head", "n_embd", "n_ctx", "vocab_size",
            "layer_norm_epsilon", "activation", "bias", "dtype")
INT_KEYS = ("n_layer", "n_head", "n_embd", "n_ctx", "vocab_size")
BAD_INTS = (0, -1, -(2**63), True, 1.5, 8.0, "8", None, [8], {"v": 8}, 2**64, 2**21 + 1)

CONFIG_CASES = [(f"missing-{k}", {k: KeyError}, k) for k in REQUIRED]
CONFIG_CASES += [(f"{k}={v!r}", {k: v}, k) for k in INT_KEYS for v in BAD_INTS
                 if not (k == "n_head" and v == 2**21 + 1)]  # (covered by 'divisible')
CONFIG_CASES += [
    ("n_head=3", {"n_head": 3}, "divisible"),
    ("n_head=16", {"n_head": 16}, "divisible"),
    ("n_head=2^21+1", {"n_head": 2**21 + 1}, "n_head"),
    ("n_ctx=2^20+1", {"n_ctx": 2**20 + 1}, "n_ctx"),
    ("n_ctx=10^12", {"n_ctx": 10**12}, "n_ctx"),
    ("n_ctx=10^100", {"n_ctx": 10**100}, "n_ctx"),
    *[(f"eps={v!r}", {"layer_norm_epsilon": v}, "layer_norm_epsilon")
      for v in (0, -1e-5, 1, 2.5, float("nan"), float("inf"), "1e-5", True, None, [1e-5])],
    *[(f"activation={v!r}", {"activation": v}, "activation") for v in ("relu", "gelu", "", None, 5, ["gelu_tanh"])],
    *[(f"dtype={v!r}", {"dtype": v}, "dtype") for v in ("f64", "F32", "float32", "", None, 1)],
    *[(f"bias={v!r}", {"bias": v}, "bias") for v in ("true", 1, 0, None, [])],
    *[(f"format={v!r}", {"format": v}, "pygpt config") for v in ("gpt2", "", None, 1)],
    *[(f"version={v!r}", {"format_version": v}, "format_version") for v in (0, 2, "1", None, -1)],
    # int8/int4 need a group size
    ("int8-no-group", {"dtype": "int8"}, "quant_group_size"),
    ("int8-group-0-vs-file", {"dtype": "int8", "quant_group_size": 0}, "dtype F32"),  # 0: one scale per row
    ("int4-group-neg", {"dtype": "int4", "quant_group_size": -32}, "quant_group_size"),
    ("int4-group-str", {"dtype": "int4", "quant_group_size": "32"}, "quant_group_size"),
    ("int8-group-8", {"dtype": "int8", "quant_group_size": 8}, "group size 8"),
    ("int4-group-48", {"dtype": "int4", "quant_group_size": 48}, "group size 48"),
    ("int8-group-2^20", {"dtype": "int8", "quant_group_size": 2**20}, "group size"),
    # valid configs that do not match the tensors
    ("n_layer=2-vs-file", {"n_layer": 2}, r"h\.1\..*missing"),
    ("vocab-vs-file", {"vocab_size": 299}, r"wte\.weight.*shape"),
    ("n_ctx-vs-file", {"n_ctx": 15}, r"wpe\.weight.*shape"),
    ("n_embd-vs-file", {"n_embd": 16}, "shape"),
    ("bias-false-vs-file", {"bias": False}, r"\.bias.*not part"),
    ("f16-vs-file", {"dtype": "f16"}, "dtype F32"),
    ("bf16-vs-file", {"dtype": "bf16"}, "dtype F32"),
]


@pytest.mark.parametrize("change,match", [c[1:] for c in CONFIG_CASES], ids=[c[0] for c in CONFIG_CASES])
def test_hostile_config(folder, change, match):
    cfg = hf.tiny_config()
    for k, v in change.items():
        if v is KeyError:
            del cfg[k]
        else:
            cfg[k] = v
    put(folder, "config.json", json.dumps(cfg))
    with pytest.raises(ModelFormatError, match=match):
        pygpt.load(folder)


CONFIG_TEXTS = [
    ("empty", b""), ("not-json", b"{format: pygpt}"), ("list", b"[]"), ("string", b'"pygpt"'), ("null", b"null"),
    ("number", b"1"), ("not-utf8", b'{"format": "\xff"}'), ("utf16", '{"format": "pygpt"}'.encode("utf-16")),
    ("bom", b'\xef\xbb\xbf{"format": "pygpt"}'), ("deep-array", b"[" * 200_000),
    ("deep-object", b'{"a":' * 100_000), ("nul", b"\0" * 100), ("truncated", json.dumps(hf.tiny_config())[:40].encode()),
]


@pytest.mark.parametrize("text", [c[1] for c in CONFIG_TEXTS], ids=[c[0] for c in CONFIG_TEXTS])
def test_hostile_config_text(folder, text):
    put(folder, "config.json", text)
    with pytest.raises(ModelFormatError, match="JSON|expected a JSON object|pygpt config"):
        pygpt.load(folder)


def test_config_not_a_file(folder):
    os.remove(os.path.join(folder, "config.json"))
    os.mkdir(os.path.join(folder, "config.json"))
    with pytest.raises(FileNotFoundError, match="config.json"):
        pygpt.load(folder)


# ---------------------------------------------------------------------------------------------
# NaN / Inf weights: flagged by check_finite=True, naming the tensor


def _poison(tensors, name, index, value):
    dtype, raw, shape = tensors[name]
    if dtype == "F32":
        a = np.frombuffer(raw, "<f4").copy()
        a[index] = value
    elif dtype == "F16":
        a = np.frombuffer(raw, "<f2").copy()
        a[index] = value
    else:
        a = np.frombuffer(raw, "<u2").copy()
        a[index] = np.array([value], np.float32).view(np.uint32)[0] >> 16
    out = dict(tensors)
    out[name] = (dtype, a.tobytes(), shape)
    return out


NONFINITE = [(dt, name, idx, val)
             for dt in ("f32", "f16", "bf16")
             for name, idx in (("wte.weight", 0), ("wte.weight", 2399), ("h.0.attn.c_proj.weight", 17),
                               ("wpe.weight", 100), ("h.0.ln_2.bias", 7), ("ln_f.weight", 3))
             for val in (float("nan"), float("inf"), float("-inf"))]


@pytest.mark.parametrize("dtype,name,index,value", NONFINITE)
def test_nonfinite_weights_flagged_when_asked(tmp_path, dtype, name, index, value):
    cfg = hf.tiny_config(dtype=dtype)
    tensors = _poison(hf.tiny_tensors(cfg), name, index, value)
    folder = hf.write_model(tmp_path / "m", cfg=cfg, tensors=tensors)
    pygpt.load(folder)  # without the check: loads (the check reads every weight, so it is opt-in)
    with pytest.raises(ModelFormatError, match=rf"'{name}': element {index} is (nan|inf|-inf)"):
        pygpt.load(folder, check_finite=True)


def test_check_finite_passes_extremes(tmp_path):
    """Largest finite values and subnormals are not flagged."""
    for dtype, big in (("f32", 3.4e38), ("f16", 65504.0), ("bf16", 3.38e38)):
        cfg = hf.tiny_config(dtype=dtype)
        tensors = _poison(_poison(hf.tiny_tensors(cfg), "wte.weight", 1, big), "wte.weight", 2, 1e-40)
        pygpt.load(hf.write_model(tmp_path / dtype, cfg=cfg, tensors=tensors), check_finite=True)


# ---------------------------------------------------------------------------------------------
# tokenizer files (vocab.json + merges.txt next to the model)


@pytest.fixture
def tok_folder(tmp_path, base):
    cfg, tensors, _, _ = base
    return hf.write_model(tmp_path / "t", cfg=cfg, tensors=tensors, tokenizer=True)


def _vocab_cases():
    vocab, merges = hf.byte_level_vocab()
    first = next(iter(vocab))

    def v(fn):
        d = dict(vocab)
        fn(d)
        return json.dumps(d, ensure_ascii=False)

    def reassign(d, tok, idx):
        d[tok] = idx

    def drop_byte(d):
        del d["A"]  # byte 0x41 has no token now; renumber to keep ids dense
        for i, k in enumerate(list(d)):
            d[k] = i

    return [
        ("vocab-not-json", "{", "JSON"),
        ("vocab-list", "[]", "JSON object"),
        ("vocab-empty", "{}", "JSON object"),
        ("vocab-string-id", v(lambda d: reassign(d, first, "0")), "integer"),
        ("vocab-float-id", v(lambda d: reassign(d, first, 0.0)), "integer"),
        ("vocab-bool-id", v(lambda d: reassign(d, first, False)), "integer"),
        ("vocab-null-id", v(lambda d: reassign(d, first, None)), "integer"),
        ("vocab-negative-id", v(lambda d: reassign(d, first, -1)), "outside"),
        ("vocab-id-too-big", v(lambda d: reassign(d, first, 10**6)), "outside"),
        ("vocab-id-2^64", v(lambda d: reassign(d, first, 2**64)), "outside"),
        ("vocab-duplicate-id", v(lambda d: reassign(d, first, 1)), "same id"),
        ("vocab-not-byte-level", v(lambda d: d.__setitem__("€", len(d))), "byte-level"),
        ("vocab-missing-byte", v(drop_byte), "no token for byte 65"),
        ("vocab-not-utf8", b'{"\xff": 0}', "UTF-8"),
    ]


def _merges_cases():
    vocab, merges = hf.byte_level_vocab()
    body = "\n".join(merges)
    return [
        ("merges-three-parts", body + "\na b c\n", "two tokens"),
        ("merges-one-part", body + "\nab\n", "two tokens"),
        ("merges-double-space", body + "\na  b\n", "two tokens"),
        ("merges-unknown-token", body + "\nzzz q\n", "not in the vocabulary"),
        ("merges-result-unknown", body + "\nq z\n", "not in the vocabulary"),
        ("merges-not-utf8", body.encode() + b"\n\xff \xfe\n", "UTF-8"),
        ("merges-tab", body + "\na\tb\n", "two tokens"),
    ]


@pytest.mark.parametrize("text,match", [c[1:] for c in _vocab_cases()], ids=[c[0] for c in _vocab_cases()])
def test_hostile_vocab(tok_folder, text, match):
    put(tok_folder, "vocab.json", text)
    with pytest.raises(ModelFormatError, match=match):
        pygpt.load(tok_folder)


@pytest.mark.parametrize("text,match", [c[1:] for c in _merges_cases()], ids=[c[0] for c in _merges_cases()])
def test_hostile_merges(tok_folder, text, match):
    put(tok_folder, "merges.txt", text)
    with pytest.raises(ModelFormatError, match=match):
        pygpt.load(tok_folder)


def test_tokenizer_file_pairs(tok_folder):
    os.remove(os.path.join(tok_folder, "merges.txt"))
    with pytest.raises(FileNotFoundError, match="merges.txt"):
        pygpt.load(tok_folder)
    os.remove(os.path.join(tok_folder, "vocab.json"))
    pygpt.load(tok_folder)  # no tokenizer at all is allowed: ids only
    put(tok_folder, "merges.txt", "a b\n")
    pygpt.load(tok_folder)  # a lone merges.txt is not a tokenizer: ignored


def test_tokenizer_larger_than_model(tmp_path, base):
    cfg = hf.tiny_config(vocab_size=270)  # the tokenizer has 277 tokens
    folder = hf.write_model(tmp_path / "m", cfg=cfg, tokenizer=True)
    with pytest.raises(ModelFormatError, match="277 tokens"):
        pygpt.load(folder)


def test_empty_merges_is_a_valid_tokenizer(tok_folder):
    put(tok_folder, "merges.txt", "#version: 0.2\n")
    m = pygpt.load(tok_folder)
    assert m.tokenizer.decode(m.tokenizer.encode("hello")) == "hello"


# ---------------------------------------------------------------------------------------------
# the converter never unpickles code


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch EVIL_MARKER",))


def test_converter_refuses_pickled_code(tmp_path, monkeypatch):
    pytest.importorskip("torch")
    from pygpt.convert import ConversionError, convert

    monkeypatch.chdir(tmp_path)
    for name, obj in (("ckpt.pt", {"model": _Evil(), "model_args": {}}), ("evil.bin", _Evil())):
        with open(tmp_path / name, "wb") as f:
            pickle.dump(obj, f, protocol=2)
        with pytest.raises(ConversionError, match="weights_only"):
            convert(str(tmp_path / name), str(tmp_path / "out"))
        assert not (tmp_path / "EVIL_MARKER").exists()


def test_hostile_file_count():
    """The number RELIABILITY.md quotes (targeted variants; random ones are N_RANDOM more)."""
    n = (len(ST_CASES) + len(CONFIG_CASES) + len(CONFIG_TEXTS) + len(NONFINITE) + len(_vocab_cases())
         + len(_merges_cases()))
    print(f"\ntargeted hostile files: {n}, random corruptions: {N_RANDOM}, core tables: 17")
    assert n > 300


@pytest.mark.parametrize("name,value", [("ln_f.weight", float("nan")), ("h.0.mlp.c_fc.bias", float("nan")),
                                        ("h.0.mlp.c_proj.weight", float("nan"))])
def test_nonfinite_weights_without_the_check_never_give_silent_tokens(tmp_path, name, value):
    """Unchecked NaN weights make NaN logits; generation refuses them (greedy or sampled) with a
    ValueError rather than returning tokens drawn from garbage. (An infinite logit is a limit
    the sampler handles: that token, or a ban for -inf.)"""
    cfg = hf.tiny_config()
    folder = hf.write_model(tmp_path / "m", cfg=cfg, tensors=_poison(hf.tiny_tensors(cfg), name, 3, value),
                            tokenizer=True)
    m = pygpt.load(folder)
    assert not np.isfinite(m.logits([1, 2, 3])).all()
    for opts in (dict(), dict(temperature=1.0, top_p=0.9), dict(temperature=0.7, top_k=20, min_p=0.1),
                 dict(temperature=1.0, typical_p=0.5, repetition_penalty=1.3), dict(logprobs=True, top_logprobs=5)):
        with pytest.raises(ValueError):
            m.generate([1, 2, 3], max_new_tokens=5, ignore_eos=True, seed=0, **opts)
