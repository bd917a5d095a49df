"""A GPT-2 whose LM head is a matrix of its own (Hugging Face's tie_word_embeddings=False):
converted with it as lm_head.weight, its logits those of transformers and of the NumPy
reference at f32 and close to them at every other dtype; LoRA adapters on it; and the
config and files that disagree about it refused."""

import json
import os
import re
import shutil
import subprocess
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
from safetensors.numpy import load_file, save_file  # noqa: E402

import pygpt  # noqa: E402
import pygpt.convert  # noqa: E402
from conftest import SHAPES, make_hf_model  # noqa: E402
from pygpt import ModelFormatError  # noqa: E402
from pygpt._format import read_safetensors_header  # noqa: E402
from pygpt.convert import ConversionError  # noqa: E402
from reference_gpt2 import gpt2_logits  # noqa: E402
from test_quantize import LOGIT_TOLERANCE  # noqa: E402  (measured on this same shape)

SHAPE = dict(n_layer=2, n_head=2, n_embd=128, n_positions=64, vocab_size=1000, bos_token_id=0, eos_token_id=0)
IDS = np.random.default_rng(0).integers(0, 1000, 40)
GROUP = {"int8": 64, "int4": 64, "int8-g32": 32, "int4-g32": 32}  # test_quantize's keys: dtype[-g32]


@pytest.fixture(scope="module")
def untied(tmp_path_factory):
    """(torch model, Hugging Face folder, {dtype: pygpt folder}) of a random untied GPT-2."""
    base = tmp_path_factory.mktemp("untied")
    model = make_hf_model(str(base / "hf"), tie_word_embeddings=False, **SHAPE)
    assert model.lm_head.weight.data_ptr() != model.transformer.wte.weight.data_ptr()
    out = {}
    for dt in LOGIT_TOLERANCE.keys() | {"f32"}:
        out[dt] = pygpt.convert.convert(str(base / "hf"), str(base / dt), dtype=dt.split("-")[0],
                                        group_size=GROUP.get(dt))
    return model, str(base / "hf"), out


def test_the_head_is_converted_and_used_at_f32(untied):
    model, _, out = untied
    with open(os.path.join(out["f32"], "config.json")) as f:
        assert json.load(f)["tie_word_embeddings"] is False
    tensors = load_file(os.path.join(out["f32"], "model.safetensors"))
    head = model.lm_head.weight.detach().numpy()
    np.testing.assert_array_equal(tensors["lm_head.weight"], head)
    assert not np.array_equal(tensors["wte.weight"], head)
    with torch.no_grad():
        want = model(torch.tensor(IDS[None])).logits[0].numpy()
    got = pygpt.load(out["f32"]).logits(IDS)
    np.testing.assert_allclose(got, want, atol=2e-4 * np.abs(want).max(), rtol=0)
    np.testing.assert_allclose(got, gpt2_logits(out["f32"], IDS), atol=2e-4 * np.abs(want).max(), rtol=0)


@pytest.mark.parametrize("dtype", sorted(LOGIT_TOLERANCE))
def test_every_dtype_stores_its_own_head(untied, dtype):
    _, _, out = untied
    names = {t[0] for t in read_safetensors_header(os.path.join(out[dtype], "model.safetensors"))}
    assert "lm_head.weight" in names and ("lm_head.weight_scales" in names) == (dtype in GROUP)
    ref = pygpt.load(out["f32"], n_threads=2).logits(IDS)
    got = pygpt.load(out[dtype], n_threads=2).logits(IDS)
    err = np.abs(got - ref) / ref.std()
    max_tol, rms_tol = LOGIT_TOLERANCE[dtype]
    assert 0 < err.max() < max_tol and np.sqrt((err**2).mean()) < rms_tol, (dtype, err.max())
    np.testing.assert_array_equal(got, pygpt.load(out[dtype], n_threads=1).logits(IDS))


def test_a_tied_model_stores_one_matrix(hf_model_factory):
    _, _, out = hf_model_factory("tiny")
    assert "lm_head.weight" not in load_file(os.path.join(out, "model.safetensors"))
    with open(os.path.join(out, "config.json")) as f:
        assert "tie_word_embeddings" not in json.load(f)  # GPT-2's own: not written


def edited_copy(src, dst, config=None, drop=(), add=None):
    shutil.copytree(src, dst)
    path = os.path.join(dst, "config.json")
    with open(path) as f:
        cfg = json.load(f)
    with open(path, "w") as f:
        json.dump({**cfg, **(config or {})}, f)
    st = os.path.join(dst, "model.safetensors")
    tensors = {k: v for k, v in load_file(st).items() if k not in drop}
    save_file({**tensors, **(add or {})}, st)
    return str(dst)


def test_a_config_that_disagrees_with_the_file_is_refused(untied, hf_model_factory, tmp_path):
    _, _, out = untied
    with pytest.raises(ModelFormatError, match="tensor 'lm_head.weight': missing"):
        pygpt.load(edited_copy(out["f32"], tmp_path / "a", drop=["lm_head.weight"]))
    with pytest.raises(ModelFormatError, match="lm_head.weight"):
        pygpt.load(edited_copy(out["f32"], tmp_path / "b", config={"tie_word_embeddings": True}))
    with pytest.raises(ModelFormatError, match="'tie_word_embeddings' must be true or false"):
        pygpt.load(edited_copy(out["f32"], tmp_path / "c", config={"tie_word_embeddings": 0}))
    _, _, tiny = hf_model_factory("tiny")
    with pytest.raises(ModelFormatError, match="tensor 'lm_head.weight': missing"):
        pygpt.load(edited_copy(tiny, tmp_path / "d", config={"tie_word_embeddings": False}))


def test_sources_that_cannot_hold_a_head_are_refused(untied, tmp_path):
    model, hf_dir, _ = untied
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    config = os.path.join(hf_dir, "config.json")
    sd["lm_head.weight"] = sd["lm_head.weight"][:-1]
    torch.save(sd, tmp_path / "short.pt")
    with pytest.raises(ConversionError, match=r"the LM head has shape \[999, 128\], the token embedding \[1000, 128\]"):
        pygpt.convert.convert(str(tmp_path / "short.pt"), str(tmp_path / "o1"), config=config)
    del sd["lm_head.weight"]
    torch.save(sd, tmp_path / "headless.pt")
    with pytest.raises(ConversionError, match="tie_word_embeddings false.*no lm_head.weight"):
        pygpt.convert.convert(str(tmp_path / "headless.pt"), str(tmp_path / "o2"), config=config)


def test_a_head_equal_to_the_embedding_is_stored_once(untied, tmp_path):
    model, hf_dir, _ = untied
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    sd["lm_head.weight"] = sd["transformer.wte.weight"].clone()
    torch.save(sd, tmp_path / "same.pt")
    out = pygpt.convert.convert(str(tmp_path / "same.pt"), str(tmp_path / "o"), config=os.path.join(hf_dir, "config.json"))
    assert "lm_head.weight" not in load_file(os.path.join(out, "model.safetensors"))
    with open(os.path.join(out, "config.json")) as f:
        assert "tie_word_embeddings" not in json.load(f)


# -- LoRA: the head and the embedding are two layers, each with its own adapter -----------------

@pytest.fixture(scope="module")
def odd_untied(tmp_path_factory):
    base = tmp_path_factory.mktemp("odd-untied")
    make_hf_model(str(base / "hf"), tie_word_embeddings=False, **SHAPES["odd"])
    return str(base / "hf"), pygpt.convert.convert(str(base / "hf"), str(base / "pygpt"))


def test_loras_on_the_head_and_the_embedding_merge_as_peft_applies_them(odd_untied, tmp_path):
    pytest.importorskip("peft")
    from test_lora import IDS as ODD_IDS, assert_close, make_adapter, torch_logits

    hf_dir, base = odd_untied
    model = make_adapter(hf_dir, tmp_path / "a", target_modules=["lm_head", "wte", "c_fc"])
    got = pygpt.load(pygpt.convert.convert(hf_dir, str(tmp_path / "m"), lora=str(tmp_path / "a"))).logits(ODD_IDS)
    want = torch_logits(model)
    assert_close(got, want)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert_close(got, torch_logits(model.merge_and_unload()))
    assert np.abs(got - pygpt.load(base).logits(ODD_IDS)).max() > 1e-2 * np.abs(want).max()
    head = make_adapter(hf_dir, tmp_path / "h", target_modules=["lm_head", "c_attn"])  # alone: no tie to keep
    merged = pygpt.load(pygpt.convert.convert(hf_dir, str(tmp_path / "m2"), lora=str(tmp_path / "h"))).logits(ODD_IDS)
    assert_close(merged, torch_logits(head))
    for n_threads in (1, 2):  # and at load time, unmerged
        assert_close(pygpt.load(base, lora=str(tmp_path / "h"), n_threads=n_threads).logits(ODD_IDS), torch_logits(head))
        assert_close(pygpt.load(base, lora=str(tmp_path / "a"), n_threads=n_threads).logits(ODD_IDS), want)


def test_the_benchmark_counts_the_head_once(untied, load_tool, tmp_path):
    """A decode step reads the LM head whole and one row of the embedding: the bytes of a tied
    model of the same shape."""
    bench = load_tool("bench")
    make_hf_model(str(tmp_path / "hf"), **SHAPE)
    for dt in ("f32", "int4"):
        tied = pygpt.convert.convert(str(tmp_path / "hf"), str(tmp_path / dt), dtype=dt, group_size=GROUP.get(dt))
        assert bench.weight_bytes_per_token(untied[2][dt]) == bench.weight_bytes_per_token(tied)


def test_info_names_the_head(untied, pygpt_cmd):
    r = subprocess.run(pygpt_cmd + ["info", untied[2]["int8"], "--threads", "1"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    fields = dict(re.split(r"\s{2,}", line.strip(), maxsplit=1) for line in r.stdout.splitlines())
    assert fields["lm head"] == "its own (lm_head.weight)"
    C, V, L, T = SHAPE["n_embd"], SHAPE["vocab_size"], SHAPE["n_layer"], SHAPE["n_positions"]
    assert fields["parameters"] == f"~{(L * 12 * C * C + (2 * V + T) * C) / 1e6:.1f} M"
