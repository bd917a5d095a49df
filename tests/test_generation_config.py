"""A model's generation_config.json: the defaults of the options a call leaves out, as
transformers' generate takes them; through the converter, pygpt.load, streams, the Batcher,
the command line and the server."""

import json
import os
import shutil
import subprocess
import warnings

import pytest

torch = pytest.importorskip("torch")
GenerationConfig = pytest.importorskip("transformers").GenerationConfig

import pygpt  # noqa: E402
import pygpt.convert  # noqa: E402
from pygpt import generation_config  # noqa: E402
from conftest import make_hf_model, post, serving, SHAPES  # noqa: E402

EOT = 50256
PROMPT = "Hello, my dog is a"


@pytest.fixture(scope="module")
def tiny(hf_model_factory):
    hf, _, out = hf_model_factory("tiny")
    return hf, out


def folder_with(tmp_path, src: str, raw) -> str:
    """A copy of the pygpt folder src (weights linked) with raw as its generation_config.json."""
    dst = tmp_path / "m"
    dst.mkdir()
    for name in os.listdir(src):
        if name == "model.safetensors":
            os.symlink(os.path.join(src, name), dst / name)
        elif name != generation_config.FILE:
            shutil.copyfile(os.path.join(src, name), dst / name)
    if raw is not None:
        (dst / generation_config.FILE).write_text(raw if isinstance(raw, str) else json.dumps(raw))
    return str(dst)


def hf_generate(hf, ids, config: dict) -> list:
    """transformers' generate with config as the model's generation config, no options given."""
    old = hf.generation_config
    hf.generation_config = GenerationConfig(**config)
    try:
        with torch.no_grad():
            out = hf.generate(torch.tensor([ids]), pad_token_id=EOT)
    finally:
        hf.generation_config = old
    return out[0, len(ids):].tolist()


GREEDY_CONFIGS = {
    "penalties": dict(repetition_penalty=1.3, no_repeat_ngram_size=2, max_new_tokens=20),
    "beams": dict(num_beams=3, length_penalty=0.5, early_stopping=True, max_new_tokens=16),
    "biases": dict(suppress_tokens=[24524], sequence_bias={(257, 27920): -2.0}, bad_words_ids=[[257, 257]],
                   max_new_tokens=12),
    "decay": dict(exponential_decay_length_penalty=(2, 3.0), min_new_tokens=2, max_new_tokens=24),
    "guidance": dict(guidance_scale=2.0, max_new_tokens=12),
}


@pytest.mark.parametrize("name", sorted(GREEDY_CONFIGS))
def test_generate_follows_the_defaults_as_transformers(tiny, tmp_path, name):
    hf, out = tiny
    config = dict(GREEDY_CONFIGS[name], eos_token_id=EOT, bos_token_id=EOT)
    GenerationConfig(**config).save_pretrained(tmp_path)  # the file as transformers writes it
    m = pygpt.load(folder_with(tmp_path, out, (tmp_path / generation_config.FILE).read_text()))
    ids = m.tokenizer.encode(PROMPT)
    want = hf_generate(hf, ids, config)
    assert m.generate(PROMPT).tokens == want
    # not vacuous: pygpt's own defaults give other tokens
    plain = pygpt.load(out).generate(PROMPT, max_new_tokens=config["max_new_tokens"]).tokens
    assert plain != want


def test_an_extra_eos_token_stops_as_in_transformers(tiny, tmp_path):
    hf, out = tiny
    plain = pygpt.load(out).generate(PROMPT, max_new_tokens=12).tokens
    stop = plain[6]
    config = dict(eos_token_id=[EOT, stop], max_new_tokens=12)
    m = pygpt.load(folder_with(tmp_path, out, config))
    assert m.generation_config == {"stop_token_ids": [stop], "max_new_tokens": 12}
    o = m.generate(PROMPT)
    assert o.tokens == hf_generate(hf, m.tokenizer.encode(PROMPT), config) == plain[:plain.index(stop) + 1]
    assert o.finish_reason == "stop"


def test_do_sample_samples_with_transformers_defaults(tiny, tmp_path):
    _, out = tiny
    m = pygpt.load(folder_with(tmp_path, out, {"do_sample": True, "top_p": 0.8, "max_new_tokens": 10}))
    assert m.generation_config == {"temperature": 1.0, "top_k": 50, "top_p": 0.8, "max_new_tokens": 10}
    same = m.generate(PROMPT, seed=3, temperature=1.0, top_k=50, top_p=0.8, max_new_tokens=10).tokens
    assert m.generate(PROMPT, seed=3).tokens == same
    assert m.generate(PROMPT, seed=3, temperature=0).tokens == m.generate(PROMPT, temperature=0, seed=4).tokens
    assert m.generate(PROMPT, seed=3, temperature=0).tokens != same
    m.generation_config = {}  # pygpt's own defaults again: greedy, 50 tokens
    assert len(m.generate(PROMPT, ignore_eos=True).tokens) == 50


def test_given_options_win_and_none_turns_a_default_off(tiny, tmp_path):
    _, out = tiny
    m = pygpt.load(folder_with(tmp_path, out, {"do_sample": True, "temperature": 0.7, "top_k": 5}))
    base = pygpt.load(out)
    assert len(m.generate(PROMPT, max_new_tokens=3).tokens) == 3
    assert m.generate(PROMPT, seed=1, top_k=None).tokens == base.generate(PROMPT, seed=1, temperature=0.7).tokens
    assert m.generate(PROMPT, seed=1).tokens == base.generate(PROMPT, seed=1, temperature=0.7, top_k=5).tokens


def test_streams_and_the_batcher_leave_beams_out(tiny, tmp_path):
    _, out = tiny
    m = pygpt.load(folder_with(tmp_path, out, {"num_beams": 3, "num_return_sequences": 2, "max_new_tokens": 9}))
    beams = m.generate(PROMPT)
    assert len(beams) == 2 and beams[0].score is not None
    greedy = pygpt.load(out).generate(PROMPT, max_new_tokens=9, ignore_eos=True)
    stream = m.stream(PROMPT, ignore_eos=True)
    assert "".join(stream) == greedy.text and stream.output.tokens == greedy.tokens
    with pygpt.Batcher(m) as b:
        outs = b.generate(PROMPT, ignore_eos=True)
        assert [o.tokens for o in outs] == [greedy.tokens] * 2  # n from the model, greedy without beams
        assert b.generate(PROMPT, num_return_sequences=1, ignore_eos=True).tokens == greedy.tokens


def test_converter_copies_the_file_and_drops_a_stale_one(tmp_path):
    hf_dir, out = tmp_path / "hf", tmp_path / "out"
    hf = make_hf_model(hf_dir, **SHAPES["tiny"])
    hf.generation_config.do_sample = True
    hf.generation_config.top_p = 0.9
    hf.generation_config.save_pretrained(hf_dir)
    pygpt.convert.convert(hf_dir, out, tokenizer=os.path.join(os.path.dirname(__file__), "data", "gpt2-tokenizer"))
    assert json.loads((out / generation_config.FILE).read_text())["top_p"] == 0.9
    assert pygpt.load(out).generation_config == {"temperature": 1.0, "top_k": 50, "top_p": 0.9}
    os.remove(hf_dir / generation_config.FILE)
    pygpt.convert.convert(hf_dir, out)
    assert not (out / generation_config.FILE).exists()
    assert pygpt.load(out).generation_config == {}
    (hf_dir / generation_config.FILE).write_text("[1, 2]")
    with pytest.raises(pygpt.convert.ConversionError, match="generation_config.json: must be a JSON object"):
        pygpt.convert.convert(hf_dir, out)


def test_reading_the_file():
    read = generation_config.read
    assert read({"eos_token_id": EOT}, eot_id=EOT) == ({}, [])
    assert read({"eos_token_id": [EOT, 13]}, eot_id=EOT) == ({"stop_token_ids": [13]}, [])
    assert read({"eos_token_id": [EOT, 13]}, vocab_size=1000) == ({"stop_token_ids": [13]}, [])  # EOT never comes
    assert read({"suppress_tokens": [3, 4]})[0] == {"logit_bias": {3: float("-inf"), 4: float("-inf")}}
    assert read({"sequence_bias": {"(1, 2)": -1.0, "(3,)": 2.0}})[0] == {"sequence_bias": {(1, 2): -1.0, (3,): 2.0}}
    assert read({"sequence_bias": [[[1, 2], -1.0]]})[0] == {"sequence_bias": {(1, 2): -1.0}}
    assert read({"stop_strings": ["\n\n"], "token_healing": True})[0] == {"stop": ["\n\n"], "token_healing": True}
    assert read({"do_sample": False, "temperature": 0.6, "top_p": 0.9})[0] == {"temperature": 0.0, "top_p": 0.9}
    assert read({"temperature": 0.6})[0] == {}  # transformers is greedy without do_sample
    assert read({"do_sample": True, "top_k": 0})[0] == {"temperature": 1.0}
    # keys at transformers' neutral values, and keys that change only what transformers returns
    neutral = {"top_p": 1.0, "repetition_penalty": 1.0, "num_beams": 1, "num_beam_groups": 1, "diversity_penalty": 0.0,
               "min_length": 0, "use_cache": True, "output_scores": True, "pad_token_id": 0, "transformers_version": "5"}
    assert read(neutral) == ({}, [])
    options, ignored = read({"max_length": 30, "penalty_alpha": 0.6, "top_k": 4})
    assert options == {"top_k": 4} and ignored == ["max_length", "penalty_alpha"]
    options, ignored = read({"do_sample": True, "num_beams": 4, "length_penalty": 2.0})
    assert options == {"temperature": 1.0, "top_k": 50} and ignored == ["num_beams (beam sampling)"]


@pytest.mark.parametrize("raw, match", [
    ("{", "generation_config.json: Expecting"),
    ("[1]", "must be a JSON object"),
    ({"do_sample": "yes"}, "do_sample must be true or false"),
    ({"top_p": 7}, "top_p must be <= 1.0"),
    ({"eos_token_id": "eos"}, "eos_token_id must be a token id"),
    ({"sequence_bias": {"oops": 1.0}}, "sequence_bias key 'oops'"),
    ({"exponential_decay_length_penalty": 3}, r"must be \[start, factor\]"),
    ({"num_beams": 2, "num_return_sequences": 3}, "num_return_sequences"),
])
def test_a_malformed_file_is_a_format_error(tiny, tmp_path, raw, match):
    _, out = tiny
    with pytest.raises(pygpt.ModelFormatError, match=match):
        pygpt.load(folder_with(tmp_path, out, raw))


def test_what_pygpt_cannot_follow_is_a_warning(tiny, tmp_path):
    _, out = tiny
    with pytest.warns(UserWarning, match=r"pygpt ignores max_length, penalty_alpha"):
        m = pygpt.load(folder_with(tmp_path, out, {"max_length": 40, "penalty_alpha": 0.6, "top_k": 4}))
    assert m.generation_config == {"top_k": 4}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pygpt.load(out)


def test_setting_the_defaults(tiny, tmp_path):
    _, out = tiny
    m = pygpt.load(out)
    with pytest.raises(ValueError, match="top_k must be >= 0"):
        m.generation_config = {"top_k": -1}
    with pytest.raises(TypeError, match="generation_config must be a dict"):
        m.generation_config = [("top_k", 3)]
    with pytest.raises(TypeError, match="unknown generation option 'topk' \\(did you mean 'top_k'"):
        m.generation_config = {"topk": 3}
    assert m.generation_config == {}
    m.generation_config = {"temperature": 0.9, "top_k": 3}
    # an option a call gives that clashes with a default says where the default came from
    with pytest.raises(ValueError, match="temperature must be 0.*generation_config.json gave temperature=0.9"):
        m.generate(PROMPT, num_beams=2)
    assert m.generate(PROMPT, num_beams=2, temperature=0, max_new_tokens=4).score is not None


def test_command_line(tiny, tmp_path, pygpt_cmd):
    _, out = tiny
    folder = folder_with(tmp_path, out, {"max_new_tokens": 7, "repetition_penalty": 1.3})

    def run(*args):
        r = subprocess.run(pygpt_cmd + list(args), capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        return r

    r = run("generate", "-m", folder, PROMPT, "--stats", "-t", "0", "--ignore-eos")
    want = pygpt.load(folder).generate(PROMPT, ignore_eos=True)
    assert r.stdout == want.text and "[7 tokens" in r.stderr
    assert "[3 tokens" in run("generate", "-m", folder, PROMPT, "--stats", "-n", "3").stderr
    assert "generation defaults  max_new_tokens=7, repetition_penalty=1.3" in run("info", folder).stdout
    assert "generation defaults  none (pygpt's)" in run("info", out).stdout


def test_server_takes_them_before_openais(tiny, tmp_path):
    _, out = tiny
    m = pygpt.load(folder_with(tmp_path, out, {"max_new_tokens": 5, "num_return_sequences": 2}))
    with serving(m) as url:
        status, body = post(url, {"prompt": PROMPT, "temperature": 0, "ignore_eos": True})
        r = json.loads(body)
        assert status == 200 and len(r["choices"]) == 1 and r["usage"]["completion_tokens"] == 5
        r = json.loads(post(url, {"messages": [{"role": "user", "content": "Hi"}], "temperature": 0,
                                  "ignore_eos": True}, path="/v1/chat/completions")[1])
        assert r["usage"]["completion_tokens"] == 5
        r = json.loads(post(url, {"prompt": PROMPT, "max_tokens": 2, "temperature": 0})[1])
        assert r["usage"]["completion_tokens"] == 2


def test_random_files_load_or_fail_cleanly(tiny, tmp_path):
    """Random values for transformers' keys: each file loads (and generates), or is a
    ModelFormatError; nothing else escapes."""
    import random

    _, out = tiny
    keys = ["do_sample", "temperature", "top_k", "top_p", "min_p", "typical_p", "epsilon_cutoff", "eta_cutoff",
            "repetition_penalty", "no_repeat_ngram_size", "bad_words_ids", "sequence_bias", "suppress_tokens",
            "eos_token_id", "stop_strings", "max_new_tokens", "min_new_tokens", "max_time", "num_beams",
            "length_penalty", "early_stopping", "num_return_sequences", "guidance_scale", "token_healing",
            "exponential_decay_length_penalty", "prompt_lookup_num_tokens", "max_matching_ngram_size",
            "max_length", "penalty_alpha", "pad_token_id", "use_cache"]
    values = [None, True, False, 0, 1, 2, -1, 3, 50256, 50257, 10 ** 12, 0.0, 0.5, 1.0, 1.5, -0.5, 1e308,
              float("nan"), float("inf"), "", "x", [], [1], [[]], [[1, 2]], [[1, 2], 0.5], [3, 1.5], {},
              {"(1, 2)": 1.0}, {"(1,)": float("nan")}, {"x": 1}, [[[1], 2.0]], ["\n"]]
    rng = random.Random(11)
    folder = folder_with(tmp_path, out, {})
    loaded = 0
    for _ in range(150):
        raw = {k: rng.choice(values) for k in rng.sample(keys, rng.randint(1, 4))}
        with open(os.path.join(folder, generation_config.FILE), "w") as f:
            json.dump(raw, f)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                m = pygpt.load(folder)
        except pygpt.ModelFormatError:
            continue
        loaded += 1
        try:
            outs = m.generate([1, 2, 3], max_new_tokens=3, max_time=5.0)
        except MemoryError:  # a default of 10**12 sequences: refused before anything is allocated
            assert 10 ** 12 in (raw.get("num_return_sequences"), raw.get("num_beams")), raw
            continue
        assert all(len(o.tokens) <= 3 for o in (outs if isinstance(outs, list) else [outs])), raw
    assert loaded > 15
