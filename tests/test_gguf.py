"""Converting llama.cpp's GGUF files (pygpt/gguf_source.py): GPT-2s written with the gguf
package (tools/bench.py's write_gguf, which tools/bench.py gives llama.cpp) at f32, f16 and
q8_0 convert to the model the Hugging Face folder converts to (f32: the same bits; q8_0: the
weights a numpy decoder of q8_0 blocks written here gives), with the file's tokenizer and chat
template; q4_0 and q8_0 files at int4 and int8 keep their weights exactly (groups of 32); what
is not a GPT-2 GGUF is a ConversionError."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("torch")
gguf = pytest.importorskip("gguf")
from safetensors.numpy import load_file  # noqa: E402

import pygpt  # noqa: E402
import pygpt.convert  # noqa: E402
from pygpt.convert import ConversionError  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
TOKENIZER = os.path.join(HERE, "data", "gpt2-tokenizer")
TEXT = "Hello world, it's a GGUF file: ünïcödé and 12345."


@pytest.fixture(scope="module")
def tiny(hf_model_factory):
    _, hf_dir, out_dir = hf_model_factory("tiny")  # the GPT-2 tokenizer
    return hf_dir, out_dir


@pytest.fixture(scope="module")
def bench(load_tool):
    return load_tool("bench")


def write(bench, hf_dir, path, **kw):
    bench.write_gguf(hf_dir, str(path), tokenizer_dir=TOKENIZER, **kw)
    return str(path)


def q8_0_decode(raw: np.ndarray, n_out: int, n_in: int) -> np.ndarray:
    """ggml's q8_0, read independently of the gguf package: blocks of 32 weights, each an f16
    scale d and 32 int8 q, weight = d * q."""
    blocks = raw.reshape(-1, 34)
    d = blocks[:, :2].copy().view(np.float16).astype(np.float32)
    q = blocks[:, 2:].copy().view(np.int8).astype(np.float32)
    return (d * q).reshape(n_out, n_in)


def q4_0_decode(raw: np.ndarray, n_out: int, n_in: int) -> np.ndarray:
    """ggml's q4_0, read independently of the gguf package: blocks of 32 weights, each an f16
    scale d and 16 bytes, byte i holding weight i in its low nibble and weight 16 + i in its
    high one, weight = d * (nibble - 8)."""
    blocks = raw.reshape(-1, 18)
    d = blocks[:, :2].copy().view(np.float16).astype(np.float32)
    nib = blocks[:, 2:]
    q = np.concatenate([nib & 0x0F, nib >> 4], axis=1).astype(np.float32) - 8
    return (d * q).reshape(n_out, n_in)


def test_an_f32_file_converts_to_the_hugging_face_folders_model(bench, tiny, tmp_path):
    hf_dir, ref_dir = tiny
    out = pygpt.convert.convert(write(bench, hf_dir, tmp_path / "m.gguf"), str(tmp_path / "out"))
    got, want = load_file(os.path.join(out, "model.safetensors")), load_file(os.path.join(ref_dir, "model.safetensors"))
    assert sorted(got) == sorted(want) and all(np.array_equal(got[k], want[k]) for k in want)
    with open(os.path.join(out, "config.json")) as f, open(os.path.join(ref_dir, "config.json")) as g:
        a, b = json.load(f), json.load(g)
    assert {k: v for k, v in a.items() if k != "source"} == {k: v for k, v in b.items() if k != "source"}
    model, ref = pygpt.load(out), pygpt.load(ref_dir)
    ids = ref.tokenizer.encode(TEXT)
    assert model.tokenizer.encode(TEXT) == ids and model.tokenizer.decode(ids) == TEXT
    assert np.array_equal(model.logits(ids), ref.logits(ids))
    assert model.generate(TEXT, max_new_tokens=8).tokens == ref.generate(TEXT, max_new_tokens=8).tokens


def test_f16_and_q8_0_files_give_their_own_weights(bench, tiny, tmp_path):
    hf_dir, ref_dir = tiny
    want = load_file(os.path.join(ref_dir, "model.safetensors"))
    for kind in ("F16", "Q8_0"):
        path = write(bench, hf_dir, tmp_path / f"{kind}.gguf", matrix_type=kind)
        raw = {t.name: t for t in gguf.GGUFReader(path).tensors}
        out = pygpt.convert.convert(path, str(tmp_path / kind))
        got = load_file(os.path.join(out, "model.safetensors"))
        stored = raw["blk.1.ffn_up.weight"]
        assert stored.tensor_type.name == kind
        if kind == "F16":
            expect = np.asarray(stored.data, dtype=np.float32)
        else:
            expect = q8_0_decode(np.asarray(stored.data), *want["h.1.mlp.c_fc.weight"].shape)
        assert np.array_equal(got["h.1.mlp.c_fc.weight"], expect)
        assert not np.array_equal(expect, want["h.1.mlp.c_fc.weight"])  # rounded: really that file's
        assert np.array_equal(got["h.1.ln_2.weight"], want["h.1.ln_2.weight"])  # vectors stay f32
        model, ref = pygpt.load(out), pygpt.load(ref_dir)
        ids = ref.tokenizer.encode(TEXT)
        a, b = model.logits(ids), ref.logits(ids)
        assert np.abs(a - b).max() < (0.01 if kind == "F16" else 0.05) * np.abs(b).max()
    # quantized again at conversion
    out = pygpt.convert.convert(str(tmp_path / "Q8_0.gguf"), str(tmp_path / "int8"), dtype="int8")
    assert pygpt.load(out).config["dtype"] == "int8"


@pytest.mark.parametrize("kind,dtype,decode", [("Q4_0", "int4", q4_0_decode), ("Q8_0", "int8", q8_0_decode)])
def test_int4_of_a_q4_0_file_and_int8_of_a_q8_0_file_keep_its_weights(bench, tiny, tmp_path, kind, dtype, decode):
    """The file's blocks are 32 weights a scale: at the matching dtype the converter defaults
    to groups of 32, and the model holds exactly the file's weights (no second rounding). A
    --group-size given is still what is used, and another dtype keeps its own default."""
    from pygpt import quantize as qz

    hf_dir, ref_dir = tiny
    path = write(bench, hf_dir, tmp_path / f"{kind}.gguf", matrix_type=kind)
    raw = {t.name: t for t in gguf.GGUFReader(path).tensors}
    shapes = {k: v.shape for k, v in load_file(os.path.join(ref_dir, "model.safetensors")).items()}
    out = pygpt.convert.convert(path, str(tmp_path / "exact"), dtype=dtype)
    assert pygpt.load(out).config["quant_group_size"] == 32
    got = load_file(os.path.join(out, "model.safetensors"))
    for theirs, ours in (("blk.1.ffn_up.weight", "h.1.mlp.c_fc.weight"), ("blk.0.attn_qkv.weight", "h.0.attn.c_attn.weight"),
                         ("blk.1.ffn_down.weight", "h.1.mlp.c_proj.weight"), ("token_embd.weight", "wte.weight")):
        assert raw[theirs].tensor_type.name == kind
        expect = decode(np.asarray(raw[theirs].data), *shapes[ours])
        back = qz.dequantize({"": got[ours], "_scales": got[ours + "_scales"]}, dtype, *shapes[ours])
        assert np.array_equal(back, expect), ours
    # the same weights as the file's float32 expansion: the logits differ by the activations'
    # int8 rounding alone
    f32 = pygpt.convert.convert(path, str(tmp_path / "f32"))
    model, ref = pygpt.load(out), pygpt.load(f32)
    ids = ref.tokenizer.encode(TEXT)
    a, b = model.logits(ids), ref.logits(ids)
    assert np.abs(a - b).max() < 0.05 * np.abs(b).max()
    per_row = pygpt.convert.convert(path, str(tmp_path / "per_row"), dtype=dtype, group_size=0)
    assert pygpt.load(per_row).config["quant_group_size"] == 0
    other = pygpt.convert.convert(path, str(tmp_path / "other"), dtype="int8" if dtype == "int4" else "int4")
    assert pygpt.load(other).config["quant_group_size"] == 0  # its own default (64 does not fit 32 wide)


def test_the_finer_of_two_roundings_of_the_tied_head(bench, tiny, tmp_path):
    """llama.cpp's quantizer stores output.weight at another type than token_embd.weight:
    pygpt keeps one tensor for both, the finer."""
    hf_dir, ref_dir = tiny
    want = load_file(os.path.join(ref_dir, "model.safetensors"))["wte.weight"]
    for matrix, head in (("Q8_0", "F32"), ("F32", "Q8_0")):
        out = pygpt.convert.convert(write(bench, hf_dir, tmp_path / f"{matrix}-{head}.gguf", matrix_type=matrix,
                                          head_type=head), str(tmp_path / f"{matrix}-{head}"))
        assert np.array_equal(load_file(os.path.join(out, "model.safetensors"))["wte.weight"], want)


def test_an_untied_head_is_kept_as_the_lm_head(bench, tiny, tmp_path):
    """An output.weight of the token embedding's type that differs from it is an LM head of
    its own: here 1.5 x the embedding, so the logits are 1.5 x the tied model's."""
    hf_dir, ref_dir = tiny
    src = write(bench, hf_dir, tmp_path / "src.gguf")
    _rewrite(src, tmp_path / "untied.gguf", head=lambda a: a * 1.5)
    out = pygpt.convert.convert(str(tmp_path / "untied.gguf"), str(tmp_path / "out"))
    tensors, want = load_file(os.path.join(out, "model.safetensors")), load_file(os.path.join(ref_dir, "model.safetensors"))
    np.testing.assert_array_equal(tensors["wte.weight"], want["wte.weight"])
    np.testing.assert_array_equal(tensors["lm_head.weight"], want["wte.weight"] * 1.5)
    ids = [464, 995, 11, 340]
    got, tied = pygpt.load(out).logits(ids), pygpt.load(ref_dir).logits(ids)
    np.testing.assert_allclose(got, 1.5 * tied, rtol=1e-5, atol=1e-5 * np.abs(tied).max())


def test_the_chat_template_and_the_command_line(bench, tiny, tmp_path):
    hf_dir, _ = tiny
    template = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}assistant:"
    path = write(bench, hf_dir, tmp_path / "chat.gguf", chat_template=template)
    r = subprocess.run([sys.executable, "-m", "pygpt", "convert", path, str(tmp_path / "cli"), "--dtype", "bf16"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    with open(tmp_path / "cli" / "chat_template.jinja") as f:
        assert f.read() == template
    assert pygpt.load(str(tmp_path / "cli")).config["dtype"] == "bf16"


def _rewrite(src, dst, arch="gpt2", rename=None, head=None):
    """A copy of a GGUF file with another architecture, a tensor renamed, or another LM head."""
    r = gguf.GGUFReader(src)
    w = gguf.GGUFWriter(dst, arch)
    for key in ("gpt2.context_length", "gpt2.embedding_length", "gpt2.block_count", "gpt2.attention.head_count",
                "gpt2.attention.layer_norm_epsilon"):
        w.add_key_value(key.replace("gpt2", arch), r.fields[key].contents(), r.fields[key].types[0])
    for t in r.tensors:
        data = np.asarray(t.data)
        if t.name == "output.weight" and head is not None:
            data = head(data)
        w.add_tensor((rename or {}).get(t.name, t.name), data)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return str(dst)


@pytest.mark.parametrize("case, match", [
    ("llama", "architecture 'llama'"),
    ("renamed", "'blk.0.attn_q.weight' is not one of a GPT-2's"),
    ("truncated", "not a readable GGUF file"),
    ("pre-tokenizer", "tokenizer.ggml.pre 'llama3'"),
])
def test_what_is_not_a_gpt2_gguf_is_refused(bench, tiny, tmp_path, case, match):
    src = write(bench, tiny[0], tmp_path / "src.gguf")
    dst = tmp_path / "bad.gguf"
    if case == "pre-tokenizer":  # another model's split of text into words, with GPT-2's vocabulary
        write(bench, tiny[0], dst, tokenizer_pre="llama3")
    elif case == "llama":
        _rewrite(src, dst, arch="llama")
    elif case == "renamed":
        _rewrite(src, dst, rename={"blk.0.attn_qkv.weight": "blk.0.attn_q.weight"})
    else:
        with open(src, "rb") as f:
            dst.write_bytes(f.read()[: os.path.getsize(src) // 2])
    with pytest.raises(ConversionError, match=match):
        pygpt.convert.convert(str(dst), str(tmp_path / "out"))


def test_without_the_gguf_package_the_error_says_how_to_get_it(bench, tiny, tmp_path):
    path = write(bench, tiny[0], tmp_path / "m.gguf")
    code = ("import sys; sys.modules['gguf'] = None\n"
            "import pygpt.convert\n"
            "try:\n"
            f"    pygpt.convert.convert({path!r}, {str(tmp_path / 'out')!r})\n"
            "except ImportError as e:\n"
            "    print(e)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert "pip install gguf" in r.stdout, r.stderr
