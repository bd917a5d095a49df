"""PEFT LoRA adapters applied at load time, unmerged (pygpt.load's lora=, --lora and
--lora-scaled): logits against peft's own unmerged forward, against the merge at conversion,
against the NumPy reference on the dequantized weights of bf16 / int8 / int4 bases; the same
bits for any thread count; every feature that runs a model; every refusal."""

import argparse
import json
import os
import re
import subprocess
import sys
import urllib.request
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
peft = pytest.importorskip("peft")
from safetensors.numpy import load_file, save_file  # noqa: E402
from safetensors.torch import load_file as load_torch  # noqa: E402
from transformers import GPT2LMHeadModel  # noqa: E402

import pygpt  # noqa: E402
import pygpt.convert  # noqa: E402
from pygpt import quantize  # noqa: E402
from pygpt._format import read_safetensors_header  # noqa: E402
from pygpt.lora import AdapterError, linear_shapes, low_rank_terms  # noqa: E402
from reference_gpt2 import gpt2_logits  # noqa: E402
from test_lora import F32_TOL, IDS, LINEAR, assert_close, edit_config, make_adapter, torch_logits  # noqa: E402
from test_quantize import LOGIT_TOLERANCE  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LONG = np.random.default_rng(5).integers(0, 1001, 33).tolist()  # "odd": n_ctx 37
# the rows up to which each thread computes the low-rank term itself (csrc/model.cpp); more
# rows take the prompt path, where the threads share the rows of u = x A^T
MAX_OWN_COPY_ROWS = 16
# runtime (x W^T + (x A^T) B^T) against merged (x (W + B A)^T), both float32, relative to the
# largest logit: measured 2.6e-7 on a 2-layer n_embd 128 model
MERGED_TOL = 1e-5


@pytest.fixture(scope="module")
def odd(hf_model_factory):
    """(Hugging Face folder, pygpt f32 folder) of a random GPT-2, n_embd 36, 3 layers."""
    _, hf_dir, out_dir = hf_model_factory("odd")
    return hf_dir, out_dir


@pytest.fixture(scope="module")
def adapter(odd, tmp_path_factory):
    """(folder, peft model) of a LoRA on every linear layer of `odd`."""
    folder = str(tmp_path_factory.mktemp("adapter") / "a")
    return folder, make_adapter(odd[0], folder, target_modules=LINEAR)


def big_change(got, before):
    """The adapter moves the logits far more than the tolerance (so the comparisons mean something)."""
    return np.abs(got - before).max() > 100 * F32_TOL * np.abs(got).max()


# -- against peft's unmerged forward --------------------------------------------------------------

VARIANTS = {
    "all_linear": dict(target_modules=LINEAR),
    "c_attn_only": dict(target_modules=["c_attn"], r=8, lora_alpha=4),
    "rslora": dict(target_modules=LINEAR, r=8, lora_alpha=16, use_rslora=True),
    "patterns": dict(target_modules=LINEAR, rank_pattern={"c_fc": 6, "h.1.attn.c_proj": 2},
                     alpha_pattern={"attn.c_attn": 5, "c_proj": 24, "h.0.mlp.c_proj": 11}),
    "regex_targets": dict(target_modules=r".*\.h\.[02]\.(attn\.c_attn|mlp\.c_proj)"),
    "rank_1": dict(target_modules=["c_proj"], r=1, lora_alpha=3),
    # the tied LM head: peft's forward adapts the logits alone (the embedding stays the base's)
    "lm_head": dict(target_modules=["c_attn", "lm_head"]),
    "lm_head_only": dict(target_modules=["lm_head"], r=2, lora_alpha=5),
    # the embeddings: each adapted row added to the lookup (the tied head keeps the base's)
    "embeddings": dict(target_modules=["wte", "wpe", "c_fc"]),
    # peft's tied pair: the embedding's LoRA and the head's (its A and B the embedding's B.T, A.T)
    "tied_pair": dict(target_modules=["c_attn", "lm_head"], ensure_weight_tying=True),
}


@pytest.mark.parametrize("variant", VARIANTS)
def test_logits_match_peft_unmerged(tmp_path, odd, variant):
    """Few rows (each thread computes x A^T itself) and a prompt (threads share its rows)."""
    hf_dir, out = odd
    model = make_adapter(hf_dir, tmp_path / "a", **VARIANTS[variant])
    m = pygpt.load(out, lora=str(tmp_path / "a"))
    base = pygpt.load(out)
    for ids in (IDS, LONG):
        want = torch_logits(model, ids)
        got = m.logits(ids)
        assert_close(got, want)
        assert big_change(got, base.logits(ids))
    assert len(LONG) > MAX_OWN_COPY_ROWS >= len(IDS)


def test_two_adapters_stacked_match_peft_with_both_active(tmp_path, odd):
    hf_dir, out = odd
    first, second = str(tmp_path / "first"), str(tmp_path / "second")
    make_adapter(hf_dir, first, seed=1, target_modules=["c_attn", "c_fc"])
    make_adapter(hf_dir, second, seed=2, target_modules=["c_attn", "c_proj"], r=2, lora_alpha=3, use_rslora=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = peft.PeftModel.from_pretrained(GPT2LMHeadModel.from_pretrained(hf_dir).eval(), first,
                                               adapter_name="first")
        model.load_adapter(second, adapter_name="second")
        model.base_model.set_adapter(["first", "second"])
    model.eval()
    m = pygpt.load(out, lora=[first, second])
    assert m.lora == ((first, 1.0), (second, 1.0))
    for ids in (IDS, LONG):
        assert_close(m.logits(ids), torch_logits(model, ids))
        only_first = pygpt.load(out, lora=first).logits(ids)
        assert big_change(m.logits(ids), only_first)


@pytest.mark.parametrize("scale", [0.5, 2.0, -1.0])
def test_a_scale_multiplies_the_adapters_effect(tmp_path, odd, scale):
    """lora=[(folder, s)] is the adapter with lora_alpha times s (peft: scaling = alpha / r),
    merged at conversion; the other adapter of the list keeps its own."""
    hf_dir, out = odd
    make_adapter(hf_dir, tmp_path / "a", seed=3, target_modules=LINEAR, lora_alpha=8)
    make_adapter(hf_dir, tmp_path / "b", seed=4, target_modules=["c_attn"])
    make_adapter(hf_dir, tmp_path / "scaled", seed=3, target_modules=LINEAR, lora_alpha=8)
    edit_config(tmp_path / "scaled", lora_alpha=8 * scale)
    want = pygpt.load(pygpt.convert.convert(hf_dir, str(tmp_path / "merged"),
                                            lora=[str(tmp_path / "scaled"), str(tmp_path / "b")])).logits(LONG)
    m = pygpt.load(out, lora=[(str(tmp_path / "a"), scale), str(tmp_path / "b")])
    assert m.lora == ((str(tmp_path / "a"), scale), (str(tmp_path / "b"), 1.0))
    got = m.logits(LONG)
    assert_close(got, want, MERGED_TOL)
    assert big_change(got, pygpt.load(out, lora=[str(tmp_path / "a"), str(tmp_path / "b")]).logits(LONG))


def test_scale_zero_gives_the_base_models_bits(odd, adapter):
    """B scaled by 0 adds exact zeros: the low-rank term runs and changes nothing."""
    _, out = odd
    for ids in (IDS, LONG):
        np.testing.assert_array_equal(pygpt.load(out, lora=[(adapter[0], 0)]).logits(ids), pygpt.load(out).logits(ids))


def test_close_to_the_merge_at_conversion(tmp_path, odd, adapter):
    hf_dir, out = odd
    merged = pygpt.load(pygpt.convert.convert(hf_dir, str(tmp_path / "merged"), lora=adapter[0]))
    m = pygpt.load(out, lora=adapter[0])
    for ids in (IDS, LONG):
        assert_close(m.logits(ids), merged.logits(ids), MERGED_TOL)


@pytest.mark.parametrize("isa", pygpt.system_info()["isas"])
def test_every_isa_path(monkeypatch, odd, adapter, isa):
    _, out = odd
    monkeypatch.setenv("PYGPT_ISA", isa)
    m = pygpt.load(out, lora=adapter[0])
    assert m.isa == isa
    for ids in (IDS, LONG):
        assert_close(m.logits(ids), torch_logits(adapter[1], ids))


# -- bf16, int8, int4 bases: against the NumPy reference on their dequantized weights --------------


@pytest.fixture(scope="module")
def dtype_models(tmp_path_factory):
    """{dtype: pygpt folder} of one random GPT-2 (test_quantize's shape, whose int4 groups of 64
    fit n_embd 128), "hf": its Hugging Face folder, "adapter": a LoRA of its linear layers."""
    from conftest import make_hf_model

    base = tmp_path_factory.mktemp("lora_dtypes")
    make_hf_model(str(base / "hf"), n_layer=2, n_head=2, n_embd=128, n_positions=64, vocab_size=1000,
                  bos_token_id=0, eos_token_id=0)
    out = {"hf": str(base / "hf"), "adapter": str(base / "adapter")}
    make_adapter(out["hf"], out["adapter"], target_modules=LINEAR, r=8, lora_alpha=16)
    for dt in ("bf16", "int8", "int4"):
        out[dt] = pygpt.convert.convert(out["hf"], str(base / dt), dtype=dt,
                                        **({"group_size": 64} if dt != "bf16" else {}))
    return out


def reference_folder(model_dir, folder, terms):
    """An f32 pygpt folder of model_dir's weights as the runtime reads them (dequantized,
    widened), each linear layer's W + B A of `terms` added in float64: for reference_gpt2."""
    with open(os.path.join(model_dir, "config.json")) as f:
        cfg = json.load(f)
    stored = load_torch(os.path.join(model_dir, "model.safetensors"))
    shapes = {"wte": (cfg["vocab_size"], cfg["n_embd"]), **linear_shapes(cfg)}
    tensors = {}
    for key, t in stored.items():
        name = key.removesuffix(".weight")
        if key.endswith("_scales"):
            continue
        if key.endswith(".weight") and name in shapes and cfg["dtype"] in quantize.DTYPES:
            w = quantize.dequantize({"": t.numpy(), "_scales": stored[key + "_scales"].numpy()}, cfg["dtype"],
                                    *shapes[name])
        else:
            w = t.float().numpy()
        if name in terms:
            a, b = terms[name]
            w = w.astype(np.float64) + b.astype(np.float64) @ a.astype(np.float64)
        tensors[key] = np.ascontiguousarray(w, dtype=np.float32)
    os.makedirs(folder)
    cfg["dtype"] = "f32"
    cfg.pop("quant_group_size", None)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(cfg, f)
    save_file(tensors, os.path.join(folder, "model.safetensors"))
    return str(folder)


@pytest.mark.parametrize("dtype", ["bf16", "int8", "int4"])
def test_quantized_bases_against_the_reference(tmp_path, dtype_models, dtype):
    """The weights stay as stored (nothing is re-quantized): the adapted model is as close to the
    reference with the adapter merged in float64 as the base is to its own (LOGIT_TOLERANCE,
    test_quantize's, relative to the std of the logits), and the adapter adds no error of its
    own (rms at most 1.5 times the base's: measured 0.9-1.1 times)."""
    folder = dtype_models[dtype]
    ids = np.random.default_rng(0).integers(0, 1000, 40)
    with open(os.path.join(folder, "config.json")) as f:
        terms = low_rank_terms([(dtype_models["adapter"], 1.0)], json.load(f))
    want = gpt2_logits(reference_folder(folder, tmp_path / "ref", terms), ids)
    want_base = gpt2_logits(reference_folder(folder, tmp_path / "ref_base", {}), ids)
    got = pygpt.load(folder, lora=dtype_models["adapter"], kv_cache="f32").logits(ids)
    got_base = pygpt.load(folder, kv_cache="f32").logits(ids)

    err, err_base = np.abs(got - want) / want.std(), np.abs(got_base - want_base) / want_base.std()
    rms, rms_base = np.sqrt((err ** 2).mean()), np.sqrt((err_base ** 2).mean())
    max_tol, rms_tol = LOGIT_TOLERANCE[dtype]
    assert err.max() < max_tol and rms < rms_tol, f"{dtype}: max error {err.max():.3g}, rms {rms:.3g} x std"
    assert rms <= 1.5 * rms_base, f"{dtype}: rms error {rms:.3g} x std with the adapter, {rms_base:.3g} without"
    effect = np.abs(want - want_base) / want.std()
    assert np.sqrt((effect ** 2).mean()) > 10 * rms_base, "the adapter changes too little to test"


@pytest.mark.parametrize("dtype", ["bf16", "int8", "int4"])
def test_a_lora_on_the_lm_head_adds_to_the_logits_of_any_dtype(tmp_path, dtype_models, dtype):
    """A LoRA on the (tied) LM head adds (h A^T) B^T to the logits, h the final hidden states,
    at any weight dtype; peft saves the head's weights whole beside it (save_embedding_layers),
    which passes as the model's own where, encoded as the model stores them, they are its bytes
    (quantized, or rounded to bf16), and is refused where they are not."""
    folder = dtype_models[dtype]
    make_adapter(dtype_models["hf"], tmp_path / "a", target_modules=["lm_head"], r=3, lora_alpha=6)
    saved = load_file(str(tmp_path / "a" / "adapter_model.safetensors"))
    assert any(k.endswith("lm_head.base_layer.weight") for k in saved)  # the copy this test is about
    st = os.path.join(folder, "model.safetensors")
    with open(os.path.join(folder, "config.json")) as f:
        a, b = low_rank_terms([(str(tmp_path / "a"), 1.0)], json.load(f), base=(st, read_safetensors_header(st)))["lm_head"]
    ids = np.random.default_rng(1).integers(0, 1000, 24).tolist()
    base = pygpt.load(folder)
    h = base.embed(ids, pooling="none", normalize=False).astype(np.float64)
    want = base.logits(ids) + (h @ a.T.astype(np.float64)) @ b.T.astype(np.float64)
    got = pygpt.load(folder, lora=str(tmp_path / "a")).logits(ids)
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()
    assert big_change(got, base.logits(ids))
    key = next(k for k in saved if k.endswith("lm_head.base_layer.weight"))
    saved[key] = saved[key] * 1.01  # a vocabulary changed in training: not the model's own
    save_file(saved, str(tmp_path / "a" / "adapter_model.safetensors"))
    with pytest.raises(AdapterError, match=r"'lm_head\.base_layer\.weight' is a tensor the adapter saves whole"):
        pygpt.load(folder, lora=str(tmp_path / "a"))


# -- the same bits for any thread count, alone or in a batch ---------------------------------------


@pytest.fixture(scope="module")
def tiny(hf_model_factory, tmp_path_factory):
    """(pygpt folder with the GPT-2 tokenizer, n_ctx 64; adapter folder, peft model)."""
    _, hf_dir, out = hf_model_factory("tiny")
    folder = str(tmp_path_factory.mktemp("tiny_adapter") / "a")
    return out, folder, make_adapter(hf_dir, folder, target_modules=LINEAR, r=6, lora_alpha=12)


def test_same_bits_for_any_thread_count(tiny):
    """A decode step (one row: each thread computes u = x A^T itself) and a 40-token prompt
    (the threads split its rows of u, then its columns)."""
    out, folder, _ = tiny
    prompt = np.random.default_rng(6).integers(0, 50257, 40)
    assert len(prompt) > MAX_OWN_COPY_ROWS
    results = []
    for n in (1, 2, 3):
        m = pygpt.load(out, lora=folder, n_threads=n)
        cache = m._core.new_cache()
        rows = m._core.forward(cache, prompt.astype(np.int32), all_logits=True)
        step = m._core.forward(cache, np.array([int(rows[-1].argmax())], np.int32))
        results.append((rows, step))
    for n, (rows, step) in zip((2, 3), results[1:]):
        np.testing.assert_array_equal(rows, results[0][0], err_msg=f"prompt, {n} threads")
        np.testing.assert_array_equal(step, results[0][1], err_msg=f"decode step, {n} threads")


def test_a_sequence_alone_or_in_a_batch(tiny):
    out, folder, _ = tiny
    m = pygpt.load(out, lora=folder, n_threads=2)
    prompts = [[464, 3290, 318], list(range(100, 120)), [50256]]
    alone = [m.generate(p, max_new_tokens=6, ignore_eos=True).tokens for p in prompts]
    assert [o.tokens for o in m.generate(prompts, max_new_tokens=6, ignore_eos=True)] == alone
    with pygpt.Batcher(m, max_batch=3) as batcher:
        jobs = [batcher.submit(p, max_new_tokens=6, ignore_eos=True) for p in prompts]
        assert [j.result().tokens for j in jobs] == alone


# -- every feature that runs a model -------------------------------------------------------------


def test_greedy_generate_follows_its_own_logits(tiny):
    out, folder, _ = tiny
    m = pygpt.load(out, lora=folder)
    prompt = [464, 3290, 318, 257]
    ids = list(prompt)
    for _ in range(8):
        ids.append(int(m.logits(ids)[-1].argmax()))
    assert m.generate(prompt, max_new_tokens=8, ignore_eos=True).tokens == ids[len(prompt):]
    base = pygpt.load(out).generate(prompt, max_new_tokens=8, ignore_eos=True).tokens
    assert base != ids[len(prompt):]


def test_stream_beam_search_and_assistants(tiny):
    out, folder, _ = tiny
    m, base = pygpt.load(out, lora=folder), pygpt.load(out)
    text = m.generate("The meaning of life is", max_new_tokens=10, ignore_eos=True).text
    assert "".join(m.stream("The meaning of life is", max_new_tokens=10, ignore_eos=True)) == text
    # as the model checked or as the drafter: greedy tokens as without an assistant
    prompt = [464, 3290, 318, 257]
    for target, drafter in ((m, base), (base, m)):
        alone = target.generate(prompt, max_new_tokens=12, ignore_eos=True).tokens
        assert target.generate(prompt, max_new_tokens=12, ignore_eos=True, assistant_model=drafter).tokens == alone
    beams = m.generate(prompt, max_new_tokens=6, num_beams=3, ignore_eos=True)
    assert len(beams.tokens) == 6
    # the beam's score is its tokens' log-probability under the adapted model (length penalty 1)
    logp = 0.0
    for i, tok in enumerate(beams.tokens):
        row = m.logits(prompt + beams.tokens[:i])[-1].astype(np.float64)
        logp += row[tok] - row.max() - np.log(np.exp(row - row.max()).sum())
    assert beams.score == pytest.approx(logp / 6, abs=1e-4)


def test_embed_and_perplexity_against_peft(tiny):
    out, folder, model = tiny
    m = pygpt.load(out, lora=folder)
    ids = [464, 3290, 318, 257, 1049, 286, 1204, 13]
    with torch.no_grad():
        hidden = model.base_model.model.transformer(torch.tensor([ids])).last_hidden_state[0].numpy()
    want = hidden.mean(0) / np.linalg.norm(hidden.mean(0))
    np.testing.assert_allclose(m.embed(ids), want, atol=1e-5)
    logits = torch_logits(model, ids).astype(np.float64)
    logp = logits - logits.max(-1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
    want_ppl = np.exp(-np.mean([logp[i, ids[i + 1]] for i in range(len(ids) - 1)]))
    assert m.perplexity(ids, progress=False) == pytest.approx(want_ppl, rel=1e-4)


def test_lora_is_read_only(odd, adapter):
    _, out = odd
    m = pygpt.load(out, lora=adapter[0])
    assert m.lora == ((adapter[0], 1.0),)
    assert pygpt.load(out).lora == ()
    with pytest.raises(AttributeError):
        m.lora = ()
    # the core takes low-rank terms at load only: its KV caches would hold keys and values
    # computed without them
    m.logits(IDS)
    a, b = np.zeros((2, 36), np.float32), np.zeros((36, 2), np.float32)
    with pytest.raises(ValueError, match="set_lora: adapters are set at load, before the first forward pass"):
        m._core.set_lora("h.0.attn.c_proj", a, b)


# -- refusals ---------------------------------------------------------------------------------------

MERGE = r"merge the adapter into the model at conversion instead \(pygpt convert SOURCE OUT --lora ADAPTER\)"


@pytest.mark.parametrize("config,match", [
    (dict(target_modules=["c_attn"], modules_to_save=["ln_f"]), r"'transformer.ln_f.(weight|bias)' is a tensor the "
                                                                r"adapter saves whole \(modules_to_save"),
    (dict(target_modules=["c_fc"], bias="all"), r"saves whole \(modules_to_save, or a bias of bias=\"all\""),
    (dict(target_modules=["c_fc"], bias="lora_only"), r"\.bias' is a tensor the adapter saves whole"),
    (dict(target_modules=["c_attn"], lora_bias=True), r"has a bias \(lora_bias\), which pygpt does not add"),
])
def test_what_only_a_merge_can_do_is_refused(tmp_path, odd, config, match):
    hf_dir, out = odd
    make_adapter(hf_dir, tmp_path / "a", **config)
    with pytest.raises(AdapterError, match=f"{match}.*{MERGE}"):
        pygpt.load(out, lora=str(tmp_path / "a"))
    pygpt.convert.convert(hf_dir, str(tmp_path / "merged"), lora=str(tmp_path / "a"))  # which it can


def test_a_lora_on_one_of_the_tied_embedding_and_head_runs_at_load_time_only(tmp_path, odd):
    """pygpt stores the tied embedding and LM head as one tensor: a LoRA on either alone runs
    at load time (on the lookup or on the logits, as peft's forward applies it) but cannot be
    merged."""
    hf_dir, out = odd
    for target in ("wte", "lm_head"):
        model = make_adapter(hf_dir, tmp_path / target.removeprefix("lm_"), target_modules=[target])
        got = pygpt.load(out, lora=str(tmp_path / target.removeprefix("lm_"))).logits(IDS)
        assert_close(got, torch_logits(model, IDS))
        assert big_change(got, pygpt.load(out).logits(IDS))
    for target, match in (("wte", r"a LoRA on the token embedding \(wte\) alone leaves the LM head tied to it"),
                          ("head", r"a LoRA on the LM head \(lm_head\) alone leaves the token embedding tied to it")):
        with pytest.raises(AdapterError, match=match):
            pygpt.convert.convert(hf_dir, str(tmp_path / "merged"), lora=str(tmp_path / target))


def test_an_adapter_for_another_model_is_refused(tmp_path, odd, hf_model_factory):
    hf_dir, out = odd
    _, tiny_dir, _ = hf_model_factory("tiny")  # n_embd 32, not 36
    make_adapter(tiny_dir, tmp_path / "tiny", target_modules=["c_proj"])
    with pytest.raises(AdapterError, match=r"the LoRA of 'transformer.h.0.attn.c_proj' has A \[4, 32\] and B "
                                           r"\[32, 4\], which do not fit the base layer \[n_out, n_in\] = \[36, 36\]"):
        pygpt.load(out, lora=str(tmp_path / "tiny"))
    make_adapter(hf_dir, tmp_path / "r4", target_modules=["c_attn"])
    edit_config(tmp_path / "r4", r=2)  # a config that is not the tensors' own
    with pytest.raises(AdapterError, match=r"\[108, 36\] with r = 2"):
        pygpt.load(out, lora=str(tmp_path / "r4"))
    # a layer this GPT-2 lacks: a fourth block, a Llama's projection
    path = str(tmp_path / "r4" / "adapter_model.safetensors")
    edit_config(tmp_path / "r4", r=4, target_modules=".*")
    for old, new in (("h.0.", "h.3."), ("transformer.h.0.attn.c_attn", "model.layers.0.self_attn.q_proj")):
        tensors = load_file(path)
        save_file({k.replace(old, new): v for k, v in tensors.items()}, path)
        with pytest.raises(AdapterError, match=r"'.*(h\.3|q_proj).*' is not a layer of this GPT-2 that LoRA adapts"):
            pygpt.load(out, lora=str(tmp_path / "r4"))
    edit_config(tmp_path / "r4", target_modules=["q_proj"])
    with pytest.raises(AdapterError, match=r"target_modules names 'q_proj', which is not a layer of this GPT-2"):
        pygpt.load(out, lora=str(tmp_path / "r4"))


def test_adapters_pygpt_cannot_apply_are_refused_as_at_conversion(tmp_path, odd):
    """read_adapter's checks, shared with the merge: a ConversionError subclass, a ValueError."""
    hf_dir, out = odd
    make_adapter(hf_dir, tmp_path / "dora", target_modules=["c_attn"], use_dora=True)
    with pytest.raises(AdapterError, match=r"DoRA adapter \(use_dora\)"):
        pygpt.load(out, lora=str(tmp_path / "dora"))
    assert issubclass(AdapterError, pygpt.convert.ConversionError) and issubclass(AdapterError, ValueError)
    (tmp_path / "dora" / "adapter_config.json").write_text("{not json")
    with pytest.raises(AdapterError, match="adapter_config.json: not a JSON file"):
        pygpt.load(out, lora=str(tmp_path / "dora"))
    make_adapter(hf_dir, tmp_path / "empty", target_modules=["c_attn"])
    save_file({}, str(tmp_path / "empty" / "adapter_model.safetensors"))
    with pytest.raises(AdapterError, match="the adapter holds no tensors"):
        pygpt.load(out, lora=str(tmp_path / "empty"))
    (tmp_path / "empty" / "adapter_model.safetensors").write_bytes(b"garbage")
    with pytest.raises(AdapterError, match="cannot read safetensors"):
        pygpt.load(out, lora=str(tmp_path / "empty"))


def test_missing_folders_and_files(tmp_path, odd, adapter):
    _, out = odd
    with pytest.raises(FileNotFoundError, match=r"nope: no such adapter folder"):
        pygpt.load(out, lora=[adapter[0], str(tmp_path / "nope")])
    (tmp_path / "file").write_text("")
    with pytest.raises(FileNotFoundError, match=r"file: not a folder \(an adapter is a folder with adapter_config"):
        pygpt.load(out, lora=str(tmp_path / "file"))
    os.makedirs(tmp_path / "bare")
    with pytest.raises(FileNotFoundError, match=r"bare: no adapter_config.json \(not a peft adapter folder\)"):
        pygpt.load(out, lora=str(tmp_path / "bare"))
    (tmp_path / "bare" / "adapter_config.json").write_text('{"peft_type": "LORA"}')
    with pytest.raises(FileNotFoundError, match=r"bare: no adapter_model.safetensors or adapter_model.bin"):
        pygpt.load(out, lora=str(tmp_path / "bare"))


@pytest.mark.parametrize("lora,error,match", [
    (3, TypeError, r"lora must be an adapter folder or a list of folders and \(folder, scale\) pairs, not int"),
    ({"a": 1.0}, TypeError, r"lora must be an adapter folder .* not dict"),
    (("a", 0.5), TypeError, r"lora=\('a', 0.5\): a \(folder, scale\) pair goes in a list: lora=\[\('a', 0.5\)\]"),
    ([("a", "0.5")], TypeError, r"lora: the scale of 'a' must be a number, got '0.5'"),
    ([("a", True)], TypeError, r"lora: the scale of 'a' must be a number, got True"),
    ([("a", None)], TypeError, r"the scale of 'a' must be a number, got None"),
    ([("a", float("nan"))], ValueError, r"lora: the scale of 'a' must be finite, got nan"),
    ([("a", float("inf"))], ValueError, r"lora: the scale of 'a' must be finite, got inf"),
    ([("a", 1.0, 2.0)], TypeError, r"lora: each item must be an adapter folder or a \(folder, scale\) pair"),
    ([None], TypeError, r"each item must be an adapter folder or a \(folder, scale\) pair, got None"),
    ([(1.0, "a")], TypeError, r"each item must be an adapter folder or a \(folder, scale\) pair"),
])
def test_bad_lora_arguments(odd, lora, error, match):
    _, out = odd
    with pytest.raises(error, match=match):
        pygpt.load(out, lora=lora)


def test_the_core_checks_what_it_is_given(odd):
    """Model.set_lora: ValueError for any bad input, never a crash."""
    _, out = odd
    core = pygpt.load(out)._core
    a, b = np.ones((2, 36), np.float32), np.ones((108, 2), np.float32)
    for name, a_, b_, match in [
        ("h.3.attn.c_attn", a, b, r"'h.3.attn.c_attn' is not a layer of this model that takes a LoRA .* N < 3"),
        ("h.0.ln_1", a, b, "is not a layer of this model that takes a LoRA"),
        ("wte", a, b, r"'wte': A \[2, 36\] and B \[108, 2\] .* \[n_out, n_in\] = \[36, 1001\]"),  # [C, V]
        ("h.0.attn.c_attn", a, b[:36], r"A \[2, 36\] and B \[36, 2\] are not \[rank, n_in\] and \[n_out, rank\] of "
                                        r"the layer's \[n_out, n_in\] = \[108, 36\]"),
        ("h.0.attn.c_attn", a[:, :35], b, r"A \[2, 35\]"),
        ("h.0.attn.c_attn", np.ones((0, 36), np.float32), np.ones((108, 0), np.float32), r"rank >= 1"),
        ("h.0.attn.c_attn", a[0], b, "A and B must be 2-D arrays"),
        ("h.0.attn.c_attn", a * np.nan, b, "A or B holds NaN or infinity"),
        ("h.0.attn.c_attn", a, b * np.inf, "A or B holds NaN or infinity"),
    ]:
        with pytest.raises(ValueError, match=match):
            core.set_lora(name, a_, b_)
    core.set_lora("h.0.attn.c_attn", a, b.astype(np.float64))  # converted
    with pytest.raises(ValueError, match="'h.0.attn.c_attn' has its low-rank term already"):
        core.set_lora("h.0.attn.c_attn", a, b)
    assert core.lora_bytes == (2 * 36 + 108 * 2) * 4


# -- the command line ------------------------------------------------------------------------------


def run_cli(*args):
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(pygpt.__file__))))
    return subprocess.run([sys.executable, "-m", "pygpt", *args], capture_output=True, text=True, timeout=120,
                          env=env)


def test_command_line(tmp_path, tiny):
    from pygpt import cli

    args = cli.build_parser().parse_args(["generate", "hi", "--lora", "A", "--lora-scaled", "B", "-0.5", "--lora", "C"])
    assert args.lora == ["A", ("B", -0.5), "C"]  # in the order given
    assert cli.build_parser().parse_args(["generate", "hi"]).lora is None
    out, folder, _ = tiny
    half = [(folder, 0.5)]
    for flags, lora in ((["--lora", folder], folder), (["--lora-scaled", folder, "0.5"], half)):
        r = run_cli("generate", "The meaning of life is", "-m", out, *flags, "-t", "0", "-n", "8", "--ignore-eos")
        assert r.returncode == 0, r.stderr
        want = pygpt.load(out, lora=lora).generate("The meaning of life is", max_new_tokens=8, ignore_eos=True)
        assert r.stdout.rstrip("\n") == want.text
    r = run_cli("info", out, "--lora", folder, "--lora-scaled", folder, "-0.25")
    assert r.returncode == 0, r.stderr
    fields = dict(re.split(r"\s{2,}", line.strip(), maxsplit=1) for line in r.stdout.splitlines())
    assert re.fullmatch(rf"{re.escape(folder)} \(scale 1\), {re.escape(folder)} \(scale -0.25\); [0-9.]+ MiB of f32 "
                        r"A and B", fields["lora adapters"])
    assert fields["parameters"]
    r = run_cli("embed", "-m", out, "--lora", folder, "Hello")
    assert r.returncode == 0, r.stderr
    np.testing.assert_allclose(json.loads(r.stdout), pygpt.load(out, lora=folder).embed("Hello"), atol=1e-6)
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(pygpt.__file__))))
    p = subprocess.Popen([sys.executable, "-m", "pygpt", "serve", "-m", out, "--port", "0", "--lora-scaled", folder,
                          "0.5"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:  # pygpt serve answers with the adapted model
        line = p.stdout.readline()
        assert line.startswith("pygpt: serving"), line + p.stderr.read()
        url = "http://" + line.split("http://", 1)[1].split("/v1/", 1)[0] + "/v1/completions"
        body = json.dumps({"prompt": "The meaning of life is", "max_tokens": 8, "temperature": 0, "ignore_eos": True})
        request = urllib.request.Request(url, data=body.encode(), headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as answer:
            text = json.loads(answer.read())["choices"][0]["text"]
        want = pygpt.load(out, lora=half).generate("The meaning of life is", max_new_tokens=8, ignore_eos=True)
        assert text == want.text
        assert text != pygpt.load(out).generate("The meaning of life is", max_new_tokens=8, ignore_eos=True).text
    finally:
        p.terminate()
        p.wait(timeout=30)


@pytest.mark.parametrize("args,match", [
    (["--lora-scaled", "DIR", "x"], "argument --lora-scaled: SCALE must be a number, got 'x'"),
    (["--lora-scaled", "DIR", "nan"], "argument --lora-scaled: SCALE must be finite, got 'nan'"),
    (["--lora-scaled", "DIR"], "argument --lora-scaled: expected 2 arguments"),
    (["--lora", "NOPE"], "pygpt: error: NOPE: no such adapter folder"),
])
def test_command_line_errors(tmp_path, tiny, args, match):
    out, _, _ = tiny
    args = [str(tmp_path / a) if a in ("DIR", "NOPE") else a for a in args]
    for command in (["generate", "hi", "-m", out], ["perplexity", os.path.join(ROOT, "README.md"), "-m", out],
                    ["bench", "-m", out, "-p", "4", "-n", "2", "-r", "1"]):
        r = run_cli(*command, *args)
        assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr
        assert match.replace("NOPE", str(tmp_path / "NOPE")) in r.stderr, r.stderr


def test_every_command_that_loads_a_model_takes_adapters():
    from pygpt import cli

    commands = next(a for a in cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices
    for name in set(commands) - {"tokenize", "convert"}:
        flags = {flag for action in commands[name]._actions for flag in action.option_strings}
        assert {"--lora", "--lora-scaled"} <= flags, name


def test_the_benchmark_tool(odd, load_tool, capsys):
    """tools/bench_lora.py: a row an adapter; with --new 1 there is no decode step to time."""
    _, folder = odd
    tool = load_tool("bench_lora")
    for new, decode_cell in ((3, "1.000"), (1, "n/a")):
        assert tool.main(["-m", folder, "--threads", "1", "--prompt", "8", "--new", str(new), "--rounds", "1",
                          "--adapters", "r2:c_attn,r4:all,r3:lm_head"]) == 0
        rows = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("| ")]
        assert [r.split(" | ")[0] for r in rows[1:]] == ["| base", "| r2 c_attn", "| r4 all", "| r3 lm_head"]
        assert rows[1].split(" | ")[3] == decode_cell and rows[1].endswith("| 1.000 |")
