"""PEFT LoRA adapters merged at conversion (pygpt/lora.py): the merged model's logits against
peft's own forward and its merge_and_unload, and every adapter that cannot be merged exactly
refused with a ConversionError."""

import json
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
peft = pytest.importorskip("peft")
from safetensors.numpy import load_file, save_file  # noqa: E402
from transformers import GPT2LMHeadModel  # noqa: E402

import pygpt  # noqa: E402
import pygpt.convert  # noqa: E402
from pygpt.convert import ConversionError  # noqa: E402
from pygpt.lora import merge_adapters  # noqa: E402

# relative to the largest logit: float32 sums of the same merged weights in another order
# (torch's kernels against ours, peft's float32 B @ A against our float64 one)
F32_TOL = 1e-4
# relative to the largest logit: int8 weights, one scale per row, against float32 ones
INT8_TOL = 0.05
IDS = [464, 5, 900, 3, 77, 12, 0, 400, 1000, 31]  # "odd": vocab 1001, n_ctx 37
TOOL = os.path.join(os.path.dirname(__file__), "..", "tools", "convert.py")
LINEAR = ["c_attn", "c_proj", "c_fc"]


@pytest.fixture(scope="module")
def base(hf_model_factory):
    """(Hugging Face folder, pygpt folder) of a random GPT-2 whose attention c_proj is square
    (36 x 36), so that only the values catch a transpose there."""
    _, hf_dir, out_dir = hf_model_factory("odd")
    return hf_dir, out_dir


def make_adapter(hf_dir, folder, seed=1, safe_serialization=True, **config):
    """Saves a peft LoRA of the model in hf_dir to folder, A and B random (init_lora_weights=False)
    and every trainable tensor moved off its start as training would; returns the peft model."""
    torch.manual_seed(seed)
    model = GPT2LMHeadModel.from_pretrained(hf_dir).eval()
    config = {"r": 4, "lora_alpha": 8, "init_lora_weights": False, **config}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # peft: fan_in_fan_out set for Conv1D, tied embeddings
        model = peft.get_peft_model(model, peft.LoraConfig(**config)).eval()
        with torch.no_grad():
            for p in model.parameters():
                if p.requires_grad:
                    p.mul_(0.5).add_(torch.randn_like(p), alpha=0.02)
        model.save_pretrained(str(folder), safe_serialization=safe_serialization)
    return model


def torch_logits(model, ids=IDS):
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].numpy()


def converted_logits(hf_dir, out, ids=IDS, **kw):
    return pygpt.load(pygpt.convert.convert(hf_dir, str(out), **kw)).logits(ids)


def assert_close(got, want, tol=F32_TOL):
    """|got - want| <= tol * max |want|; else the largest difference, where, and both sides."""
    err = np.abs(got - want)
    i = np.unravel_index(err.argmax(), err.shape)
    assert err.max() <= tol * np.abs(want).max(), (
        f"max |diff| {err.max():.3g} at {i} > {tol} * max |logit| {np.abs(want).max():.3g}: "
        f"got {got[i]:.6g}, want {want[i]:.6g}; first got {got.ravel()[:4]}, want {want.ravel()[:4]}")


def edit_config(folder, **changes):
    path = os.path.join(folder, "adapter_config.json")
    with open(path) as f:
        config = json.load(f)
    with open(path, "w") as f:
        json.dump({**config, **changes}, f)


# -- merges that match peft ---------------------------------------------------------------------

VARIANTS = {
    "plain": dict(target_modules=LINEAR),
    "rslora": dict(target_modules=LINEAR, r=8, lora_alpha=16, use_rslora=True),
    # peft's rule: the first pattern (peft saves them sorted) that is the end of a module's path
    # at a '.'; "attn" is no module's, so it applies nowhere
    "patterns": dict(target_modules=LINEAR, rank_pattern={"attn": 3, "c_fc": 6, "h.1.attn.c_proj": 2},
                     alpha_pattern={"attn.c_attn": 5, "c_proj": 24, "h.0.mlp.c_proj": 11}),
    "regex_targets": dict(target_modules=r".*\.h\.[02]\.(attn\.c_attn|mlp\.c_proj)"),
    "bias_all": dict(target_modules=["c_attn", "c_fc"], bias="all"),
    "bias_lora_only": dict(target_modules=["c_attn", "c_fc"], bias="lora_only"),
    "lora_bias": dict(target_modules=["c_attn", "c_proj"], lora_bias=True),
    "modules_to_save": dict(target_modules=["c_fc"], modules_to_save=["ln_f", "ln_1", "wpe"]),
    "wpe": dict(target_modules=["wpe", "c_attn"]),
    # wte and the LM head carry one LoRA (lm_head's A, B = wte's B.T, A.T)
    "tied_embedding": dict(target_modules=["lm_head", "c_fc"], ensure_weight_tying=True),
}


@pytest.mark.parametrize("variant", VARIANTS)
def test_merged_logits_match_peft(tmp_path, base, variant):
    hf_dir, base_out = base
    model = make_adapter(hf_dir, tmp_path / "adapter", **VARIANTS[variant])
    want = torch_logits(model)
    got = converted_logits(hf_dir, tmp_path / "out", lora=str(tmp_path / "adapter"))
    assert_close(got, want)
    before = pygpt.load(base_out).logits(IDS)
    assert np.abs(want - before).max() > 100 * F32_TOL * np.abs(want).max(), "the adapter changes too little to test"
    if variant != "tied_embedding":  # peft's merge_and_unload adds a tied LoRA to the shared weight twice
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            assert_close(got, torch_logits(model.merge_and_unload()))


def test_a_pickled_adapter_merges_the_same(tmp_path, base):
    hf_dir, _ = base
    make_adapter(hf_dir, tmp_path / "st", target_modules=LINEAR)
    make_adapter(hf_dir, tmp_path / "bin", target_modules=LINEAR, safe_serialization=False)
    assert os.path.isfile(tmp_path / "bin" / "adapter_model.bin")
    np.testing.assert_array_equal(converted_logits(hf_dir, tmp_path / "a", lora=str(tmp_path / "st")),
                                  converted_logits(hf_dir, tmp_path / "b", lora=str(tmp_path / "bin")))


def test_a_bf16_adapter_is_widened_exactly(tmp_path, base):
    """Adapters trained in bfloat16 are saved in it, which numpy lacks."""
    from safetensors.torch import load_file as load_torch, save_file as save_torch

    hf_dir, _ = base
    make_adapter(hf_dir, tmp_path / "f32", target_modules=LINEAR)
    sd = {k: v.to(torch.bfloat16) for k, v in load_torch(str(tmp_path / "f32" / "adapter_model.safetensors")).items()}
    for name, tensors in (("bf16", sd), ("widened", {k: v.float() for k, v in sd.items()})):
        os.makedirs(tmp_path / name)
        save_torch(tensors, str(tmp_path / name / "adapter_model.safetensors"))
        with open(tmp_path / "f32" / "adapter_config.json") as src:
            (tmp_path / name / "adapter_config.json").write_text(src.read())
    np.testing.assert_array_equal(converted_logits(hf_dir, tmp_path / "a", lora=str(tmp_path / "bf16")),
                                  converted_logits(hf_dir, tmp_path / "b", lora=str(tmp_path / "widened")))


def test_a_converted_pissa_adapter_merges_into_the_original_base(tmp_path, base):
    """PiSSA subtracts its start from the base weights; peft's
    path_initial_model_for_weight_conversion saves it as a plain LoRA of the original base."""
    hf_dir, _ = base
    torch.manual_seed(3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = peft.get_peft_model(GPT2LMHeadModel.from_pretrained(hf_dir).eval(),
                                    peft.LoraConfig(r=4, target_modules=["c_attn", "c_fc"],
                                                    init_lora_weights="pissa")).eval()
        model.peft_config["default"].init_lora_weights = True  # the start, saved as peft's docs say
        model.save_pretrained(str(tmp_path / "start"))
        model.peft_config["default"].init_lora_weights = "pissa"
        with torch.no_grad():
            for p in model.parameters():
                if p.requires_grad:
                    p.add_(torch.randn_like(p), alpha=0.02)
        model.save_pretrained(str(tmp_path / "pissa"))
        model.save_pretrained(str(tmp_path / "plain"), path_initial_model_for_weight_conversion=str(tmp_path / "start"))
    with pytest.raises(ConversionError, match="init_lora_weights 'pissa' changes the base weights"):
        pygpt.convert.convert(hf_dir, str(tmp_path / "o"), lora=str(tmp_path / "pissa"))
    assert_close(converted_logits(hf_dir, tmp_path / "out", lora=str(tmp_path / "plain")), torch_logits(model))


def test_several_adapters_merge_in_order(tmp_path, base):
    """As peft merging one (merge_and_unload) and then the next: the LoRAs add up, and what an
    adapter saves whole (its ln_f here) replaces what the one before left."""
    hf_dir, _ = base
    first, second = str(tmp_path / "first"), str(tmp_path / "second")
    make_adapter(hf_dir, first, seed=1, target_modules=["c_attn", "c_fc"], modules_to_save=["ln_f"])
    make_adapter(hf_dir, second, seed=2, target_modules=["c_attn", "c_proj"], r=2, lora_alpha=3, use_rslora=True,
                 modules_to_save=["ln_f"])
    model = GPT2LMHeadModel.from_pretrained(hf_dir).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for folder in (first, second):
            model = peft.PeftModel.from_pretrained(model, folder).merge_and_unload().eval()
    want = torch_logits(model)
    assert_close(converted_logits(hf_dir, tmp_path / "a", lora=[first, second]), want)
    reversed_order = converted_logits(hf_dir, tmp_path / "b", lora=[second, first])
    assert np.abs(reversed_order - want).max() > 100 * F32_TOL * np.abs(want).max()


def test_merged_before_int8_quantization(tmp_path, base):
    """The adapter merges into the float32 weights, then the merged model is quantized: the same
    model as quantizing peft's merged checkpoint."""
    hf_dir, _ = base
    model = make_adapter(hf_dir, tmp_path / "adapter", target_modules=LINEAR)
    want = torch_logits(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.merge_and_unload().save_pretrained(str(tmp_path / "merged"))
    got = converted_logits(hf_dir, tmp_path / "int8", lora=str(tmp_path / "adapter"), dtype="int8")
    assert_close(got, converted_logits(str(tmp_path / "merged"), tmp_path / "ref", dtype="int8"))
    assert_close(got, want, INT8_TOL)


def test_command_line(tmp_path, base):
    hf_dir, _ = base
    first, second = str(tmp_path / "first"), str(tmp_path / "second")
    make_adapter(hf_dir, first, seed=1, target_modules=["c_attn"])
    make_adapter(hf_dir, second, seed=2, target_modules=["c_fc"])
    r = subprocess.run([sys.executable, TOOL, hf_dir, str(tmp_path / "o"), "--lora", first, "--lora", second],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    np.testing.assert_array_equal(pygpt.load(str(tmp_path / "o")).logits(IDS),
                                  converted_logits(hf_dir, tmp_path / "api", lora=[first, second]))
    r = subprocess.run([sys.executable, TOOL, hf_dir, str(tmp_path / "o2"), "--lora", str(tmp_path / "nope")],
                       capture_output=True, text=True)
    assert r.returncode == 1 and r.stderr.startswith("error:") and "adapter_config.json" in r.stderr
    assert "Traceback" not in r.stderr


def test_merging_needs_no_peft_or_torch(tmp_path, base):
    hf_dir, _ = base
    adapter, out = str(tmp_path / "adapter"), str(tmp_path / "out")
    make_adapter(hf_dir, adapter, target_modules=LINEAR)
    code = ("import sys; sys.modules['peft'] = sys.modules['torch'] = sys.modules['transformers'] = None\n"
            f"import pygpt.convert; pygpt.convert.convert({hf_dir!r}, {out!r}, lora={adapter!r})")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    np.testing.assert_array_equal(pygpt.load(out).logits(IDS),
                                  converted_logits(hf_dir, tmp_path / "ref", lora=adapter))


# -- adapters that cannot be merged exactly -----------------------------------------------------


def refused(hf_dir, adapter, match, error=ConversionError):
    with pytest.raises(error, match=match):
        pygpt.convert.convert(hf_dir, f"{adapter}-out", lora=str(adapter))


def test_dora_is_refused(tmp_path, base):
    hf_dir, _ = base
    make_adapter(hf_dir, tmp_path / "dora", target_modules=["c_attn"], use_dora=True)
    refused(hf_dir, tmp_path / "dora", r"DoRA adapter \(use_dora\)")
    edit_config(tmp_path / "dora", use_dora=False)  # its magnitude tensors still say so
    refused(hf_dir, tmp_path / "dora", r"lora_magnitude_vector.* a LoRA variant pygpt cannot merge")


def test_other_adapter_types_are_refused(tmp_path, base):
    hf_dir, _ = base
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = peft.get_peft_model(GPT2LMHeadModel.from_pretrained(hf_dir),
                                    peft.IA3Config(target_modules=["c_attn"], feedforward_modules=[]))
        model.save_pretrained(str(tmp_path / "ia3"))
    refused(hf_dir, tmp_path / "ia3", r"peft_type 'IA3' is not a LoRA adapter")


@pytest.mark.parametrize("key,value", [("layer_replication", [[0, 2], [1, 3]]), ("alora_invocation_tokens", [1, 2]),
                                       ("trainable_token_indices", [5, 6]), ("use_qalora", True),
                                       ("target_parameters", ["attn.c_attn.weight"])])
def test_lora_features_pygpt_cannot_merge_are_refused(tmp_path, base, key, value):
    hf_dir, _ = base
    make_adapter(hf_dir, tmp_path / "a", target_modules=["c_attn"])
    edit_config(tmp_path / "a", **{key: value})
    refused(hf_dir, tmp_path / "a", f"{key} = .* is a LoRA feature pygpt cannot merge")


def test_layers_gpt2_lacks_are_refused(tmp_path, base):
    hf_dir, _ = base
    make_adapter(hf_dir, tmp_path / "a", target_modules=["c_attn"])
    edit_config(tmp_path / "a", target_modules=["q_proj", "v_proj"])  # a Llama adapter's
    refused(hf_dir, tmp_path / "a", r"target_modules names 'q_proj', which is not a layer of this GPT-2")
    # its tensors, with a regex that names nothing in particular
    edit_config(tmp_path / "a", target_modules=".*proj")
    path = str(tmp_path / "a" / "adapter_model.safetensors")
    save_file({k.replace("transformer.h.0.attn.c_attn", "model.layers.0.self_attn.q_proj"): v
               for k, v in load_file(path).items()}, path)
    refused(hf_dir, tmp_path / "a", r"'model.layers.0.self_attn.q_proj' is not a layer of this GPT-2")


def test_an_adapter_of_another_model_is_refused(tmp_path, base, hf_model_factory):
    hf_dir, _ = base
    _, tiny_dir, _ = hf_model_factory("tiny")  # n_embd 32, not 36
    make_adapter(tiny_dir, tmp_path / "tiny", target_modules=["c_proj"])
    refused(hf_dir, tmp_path / "tiny", r"has A \[4, 32\] and B \[32, 4\], which do not fit the base layer "
                                       r"\[n_out, n_in\] = \[36, 36\]")
    make_adapter(hf_dir, tmp_path / "r4", target_modules=["c_attn"])
    edit_config(tmp_path / "r4", r=2)  # a config that is not the tensors' own
    refused(hf_dir, tmp_path / "r4", r"do not fit the base layer \[n_out, n_in\] = \[108, 36\] with r = 2")


@pytest.mark.parametrize("config,match", [
    (dict(target_modules=["lm_head"]), r"a LoRA on the LM head \(lm_head\) alone leaves the token embedding"),
    (dict(target_modules=["wte"]), r"a LoRA on the token embedding \(wte\) alone leaves the LM head"),
    (dict(target_modules=["wte", "lm_head"]), r"the LoRAs on the token embedding \(wte\) and the LM head differ"),
    (dict(target_modules=["c_attn"], modules_to_save=["wte"]), r"replaces the token embedding \(modules_to_save\)"),
    (dict(target_modules=["c_attn"], modules_to_save=["c_fc"]), r"replaces a whole linear layer \(modules_to_save\)"),
])
def test_what_the_tied_embedding_or_an_unknown_layout_cannot_hold_is_refused(tmp_path, base, config, match):
    """pygpt stores wte and the LM head as one tensor, and a whole linear layer's layout
    (Conv1D or Linear) is not in the adapter."""
    hf_dir, _ = base
    make_adapter(hf_dir, tmp_path / "a", **config)
    refused(hf_dir, tmp_path / "a", match)


def test_biases_the_base_lacks_are_refused(tmp_path, base):
    """A GPT-2 without biases (nanoGPT's bias=False) has nothing to add a LoRA bias to."""
    hf_dir, _ = base
    sd, cfg, _ = pygpt.convert.read_source(hf_dir)
    no_bias = {k: v for k, v in pygpt.convert._canonical(sd, cfg).items() if not k.endswith(".bias")}
    make_adapter(hf_dir, tmp_path / "lora_bias", target_modules=["c_attn"], lora_bias=True)
    with pytest.raises(ConversionError, match=r"has a bias \(lora_bias\), and the base layer has none"):
        merge_adapters(dict(no_bias), str(tmp_path / "lora_bias"))
    make_adapter(hf_dir, tmp_path / "bias_all", target_modules=["c_attn"], bias="all")
    with pytest.raises(ConversionError, match=r"tensor 'transformer.h.0.attn.c_attn.base_layer.bias' is not one"):
        merge_adapters(dict(no_bias), str(tmp_path / "bias_all"))


def test_missing_files(tmp_path, base):
    hf_dir, _ = base
    refused(hf_dir, tmp_path / "nope", r"nope: no adapter_config.json", FileNotFoundError)
    make_adapter(hf_dir, tmp_path / "a", target_modules=["c_attn"])
    os.remove(tmp_path / "a" / "adapter_model.safetensors")
    refused(hf_dir, tmp_path / "a", r"no adapter_model.safetensors or adapter_model.bin", FileNotFoundError)


@pytest.mark.parametrize("text,match", [
    ("{not json", "not a JSON file"),
    ("[1, 2]", "expected a JSON object, got list"),
    ('{"r": 4}', "peft_type None is not a LoRA adapter"),
    ('{"peft_type": "LORA", "r": 0}', "r must be a positive integer, got 0"),
    ('{"peft_type": "LORA", "lora_alpha": "16"}', "lora_alpha must be a number"),
    ('{"peft_type": "LORA", "rank_pattern": {"c_attn": 2.5}}', "rank_pattern must map"),
    ('{"peft_type": "LORA", "alpha_pattern": {"(": 4}}', "alpha_pattern must map"),
    ('{"peft_type": "LORA", "bias": "some"}', "bias must be one of"),
])
def test_a_malformed_adapter_config_names_the_file(tmp_path, base, text, match):
    hf_dir, _ = base
    make_adapter(hf_dir, tmp_path / "a", target_modules=["c_attn"])
    (tmp_path / "a" / "adapter_config.json").write_text(text)
    refused(hf_dir, tmp_path / "a", f"adapter_config.json: .*{match}")


def test_an_empty_adapter_is_refused(tmp_path, base):
    hf_dir, _ = base
    make_adapter(hf_dir, tmp_path / "a", target_modules=["c_attn"])
    save_file({}, str(tmp_path / "a" / "adapter_model.safetensors"))
    refused(hf_dir, tmp_path / "a", "the adapter holds no tensors")
