"""The `pygpt` command, run as a real console script in a subprocess."""

import os
import re
import signal
import subprocess
import sys

import numpy as np
import pytest

import pygpt

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
GPT2_TOKENIZER = os.path.join(HERE, "data", "gpt2-tokenizer")
PROMPT = "The meaning of life is"




def env():
    # the pygpt this test process imported: the in-place build in a source tree, the installed
    # package in CI (where the source tree's pygpt/ has no compiled _core)
    e = dict(os.environ)
    e["PYTHONPATH"] = os.path.dirname(os.path.dirname(os.path.abspath(pygpt.__file__))) + os.pathsep + e.get("PYTHONPATH", "")
    return e


def run(cmd, *args, input=None, timeout=120):
    return subprocess.run(cmd + list(args), input=input, capture_output=True, timeout=timeout, env=env())


@pytest.fixture(scope="module")
def model_dir(hf_model_factory, tmp_path_factory):
    import pygpt.convert

    _, hf_dir, _ = hf_model_factory("tiny")
    out = str(tmp_path_factory.mktemp("cli_model"))
    pygpt.convert.convert(hf_dir, out, tokenizer=GPT2_TOKENIZER)
    return out


@pytest.fixture(scope="module")
def model(model_dir):
    return pygpt.load(model_dir)


def assert_one_line_error(r, *fragments):
    err = r.stderr.decode()
    assert r.returncode != 0
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("pygpt: error:"), err
    for f in fragments:
        assert f in lines[0], err


# -- help -----------------------------------------------------------------------------------------


def test_help(pygpt_cmd):
    r = run(pygpt_cmd, "--help")
    assert r.returncode == 0
    out = r.stdout.decode()
    for command in ("generate", "info", "tokenize"):
        assert command in out


def test_generate_help_states_the_sampling_defaults(pygpt_cmd):
    out = run(pygpt_cmd, "generate", "--help").stdout.decode()
    out = " ".join(out.split())
    assert "temperature 0.8" in out and "top-p 0.95" in out and "greedy" in out
    for option in ("--max-new-tokens", "--top-k", "--top-p", "--min-p", "--typical-p", "--repetition-penalty",
                   "--presence-penalty", "--frequency-penalty", "--no-repeat-ngram-size", "--seed", "--stop",
                   "--ignore-eos", "--echo", "--truncate", "--threads", "--model"):
        assert option in out


@pytest.mark.parametrize("command", ["info", "tokenize", "batch"])
def test_subcommand_help(pygpt_cmd, command):
    r = run(pygpt_cmd, command, "--help")
    assert r.returncode == 0 and b"DIR" in r.stdout


def test_version(pygpt_cmd):
    assert run(pygpt_cmd, "--version").stdout.decode().strip() == f"pygpt {pygpt.__version__}"


# -- generate -------------------------------------------------------------------------------------


def test_generate_greedy_prints_the_api_text(pygpt_cmd, model_dir, model):
    r = run(pygpt_cmd, "generate", "-m", model_dir, PROMPT, "-n", "20", "--temperature", "0")
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode("utf-8") == model.generate(PROMPT, max_new_tokens=20).text


def test_generate_samples_with_the_cli_defaults(pygpt_cmd, model_dir, model):
    r = run(pygpt_cmd, "generate", "-m", model_dir, PROMPT, "-n", "15", "--seed", "7")
    assert r.returncode == 0, r.stderr
    want = model.generate(PROMPT, max_new_tokens=15, temperature=0.8, top_p=0.95, seed=7).text
    assert r.stdout.decode("utf-8") == want
    again = run(pygpt_cmd, "generate", "-m", model_dir, PROMPT, "-n", "15", "--seed", "7")
    assert again.stdout == r.stdout


def test_generate_options_reach_the_api(pygpt_cmd, model_dir, model):
    args = ["--top-k", "50", "--top-p", "0.9", "--temperature", "1.2", "--repetition-penalty", "1.3",
            "--no-repeat-ngram-size", "2", "--seed", "3", "--ignore-eos"]
    r = run(pygpt_cmd, "generate", "-m", model_dir, PROMPT, "-n", "12", *args)
    want = model.generate(PROMPT, max_new_tokens=12, top_k=50, top_p=0.9, temperature=1.2,
                          repetition_penalty=1.3, no_repeat_ngram_size=2, seed=3, ignore_eos=True).text
    assert r.stdout.decode("utf-8") == want


def test_generate_truncation_and_xtc_options_reach_the_api(pygpt_cmd, model_dir, model):
    args = ["--top-n-sigma", "1.5", "--epsilon-cutoff", "0.0005", "--eta-cutoff", "0.001", "--xtc-probability", "0.5",
            "--xtc-threshold", "0.05", "--seed", "4", "--temperature", "1.1", "--dynatemp-range", "0.5",
            "--dynatemp-exponent", "0.8", "--exponential-decay-length-penalty", "3,1.4", "--guidance-scale", "1.5",
            "--negative-prompt", "The end"]
    r = run(pygpt_cmd, "generate", "-m", model_dir, PROMPT, "-n", "12", *args)
    assert r.returncode == 0, r.stderr
    want = model.generate(PROMPT, max_new_tokens=12, top_n_sigma=1.5, epsilon_cutoff=0.0005, eta_cutoff=0.001,
                          xtc_probability=0.5, xtc_threshold=0.05, seed=4, temperature=1.1, top_p=0.95,
                          dynatemp_range=0.5, dynatemp_exponent=0.8, exponential_decay_length_penalty=(3, 1.4),
                          guidance_scale=1.5, negative_prompt="The end").text
    assert r.stdout.decode("utf-8") == want
    assert want != model.generate(PROMPT, max_new_tokens=12, seed=4, temperature=1.1, top_p=0.95).text
    assert_one_line_error(run(pygpt_cmd, "generate", "-m", model_dir, "hi", "--eta-cutoff", "1"), "eta_cutoff")
    r = run(pygpt_cmd, "generate", "-m", model_dir, "hi", "--exponential-decay-length-penalty", "3")
    assert r.returncode == 2 and b"START,FACTOR" in r.stderr


def test_generate_with_mirostat(pygpt_cmd, model_dir, model):
    """--mirostat turns the default top-p off (mirostat replaces the filters); an explicit one fails."""
    r = run(pygpt_cmd, "generate", "-m", model_dir, PROMPT, "-n", "12", "--seed", "2", "--mirostat", "2",
            "--mirostat-tau", "4", "--mirostat-eta", "0.2")
    assert r.returncode == 0, r.stderr
    want = model.generate(PROMPT, max_new_tokens=12, temperature=0.8, seed=2, mirostat=2, mirostat_tau=4.0,
                          mirostat_eta=0.2)
    assert r.stdout.decode("utf-8") == want.text
    r = run(pygpt_cmd, "generate", "-m", model_dir, "hi", "--mirostat", "1", "--top-p", "0.9")
    assert_one_line_error(r, "mirostat")


def test_generate_max_time(pygpt_cmd, model_dir, model):
    r = run(pygpt_cmd, "generate", "-m", model_dir, PROMPT, "-n", "20", "-t", "0", "--max-time", "1e-9", "--stats")
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode("utf-8") == model.generate(PROMPT, max_new_tokens=1).text
    assert "[1 tokens, finish_reason=length" in r.stderr.decode()


def test_generate_with_dry(pygpt_cmd, model_dir, model):
    args = ["--dry-multiplier", "0.8", "--dry-base", "2", "--dry-allowed-length", "1", "--dry-penalty-last-n", "64"]
    r = run(pygpt_cmd, "generate", "-m", model_dir, PROMPT, "-n", "20", "-t", "0", *args)
    assert r.returncode == 0, r.stderr
    want = model.generate(PROMPT, max_new_tokens=20, dry_multiplier=0.8, dry_base=2.0, dry_allowed_length=1,
                          dry_penalty_last_n=64)
    assert r.stdout.decode("utf-8") == want.text != model.generate(PROMPT, max_new_tokens=20).text


def test_generate_with_an_f16_kv_cache(pygpt_cmd, model_dir):
    r = run(pygpt_cmd, "generate", "-m", model_dir, PROMPT, "-n", "12", "-t", "0", "--kv-cache", "f16")
    assert r.returncode == 0, r.stderr
    want = pygpt.load(model_dir, kv_cache="f16").generate(PROMPT, max_new_tokens=12, temperature=0).text
    assert r.stdout.decode("utf-8") == want
    bad = run(pygpt_cmd, "generate", "-m", model_dir, PROMPT, "--kv-cache", "f8")
    assert bad.returncode == 2 and b"--kv-cache" in bad.stderr
    auto = run(pygpt_cmd, "generate", "-m", model_dir, PROMPT, "-n", "12", "-t", "0", "--kv-cache", "auto")
    f32 = pygpt.load(model_dir, kv_cache="f32").generate(PROMPT, max_new_tokens=12, temperature=0).text
    assert pygpt.load(model_dir).config["dtype"] == "f32" and auto.stdout.decode("utf-8") == f32


def test_generate_with_an_int8_kv_cache(pygpt_cmd, model_dir):
    r = run(pygpt_cmd, "generate", "-m", model_dir, PROMPT, "-n", "12", "-t", "0", "--kv-cache", "int8")
    assert r.returncode == 0, r.stderr
    want = pygpt.load(model_dir, kv_cache="int8").generate(PROMPT, max_new_tokens=12, temperature=0).text
    assert r.stdout.decode("utf-8") == want


def test_generate_reads_the_prompt_from_stdin(pygpt_cmd, model_dir, model):
    r = run(pygpt_cmd, "generate", "-m", model_dir, "-", "-n", "10", "-t", "0", input=(PROMPT + "\n").encode())
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode("utf-8") == model.generate(PROMPT, max_new_tokens=10).text


def test_generate_stop_echo_and_stats(pygpt_cmd, model_dir, model):
    full = model.generate(PROMPT, max_new_tokens=20, ignore_eos=True).text
    stop = full[5:9]
    r = run(pygpt_cmd, "generate", "-m", model_dir, PROMPT, "-n", "20", "-t", "0", "--ignore-eos",
            "--stop", stop, "--echo", "--stats")
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode("utf-8") == PROMPT + full[:full.find(stop)]
    stats = r.stderr.decode()
    assert "finish_reason=stop" in stats and "tok/s" in stats


def test_generate_and_batch_with_an_assistant(pygpt_cmd, model_dir, model, tmp_path):
    """--assistant DIR: the model's greedy text, from drafts of the assistant (the model itself
    here: every draft is right), and the sampled text of assistant_model in the API."""
    r = run(pygpt_cmd, "generate", "-m", model_dir, PROMPT, "-n", "20", "-t", "0", "--ignore-eos",
            "--assistant", model_dir, "--assistant-tokens", "3", "--stats")
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode("utf-8") == model.generate(PROMPT, max_new_tokens=20, ignore_eos=True).text
    assert re.search(r"(\d+) of \1 draft tokens right", r.stderr.decode()), r.stderr
    r = run(pygpt_cmd, "generate", "-m", model_dir, PROMPT, "-n", "15", "--seed", "4", "--assistant", model_dir)
    want = model.generate(PROMPT, max_new_tokens=15, temperature=0.8, top_p=0.95, seed=4, assistant_model=model)
    assert r.returncode == 0 and r.stdout.decode("utf-8") == want.text
    src = tmp_path / "in.txt"
    src.write_text("Hello\nThe quick brown fox\n", encoding="utf-8")
    r = run(pygpt_cmd, "batch", str(src), "-m", model_dir, "-n", "10", "-t", "0", "--assistant", model_dir)
    assert [g["text"] for g in batch_lines(r)] == [model.generate(p, max_new_tokens=10).text
                                                   for p in ("Hello", "The quick brown fox")]
    bad = run(pygpt_cmd, "generate", "-m", model_dir, PROMPT, "--assistant-tokens", "3")
    assert bad.returncode != 0 and b"--assistant-tokens needs --assistant" in bad.stderr
    missing = run(pygpt_cmd, "generate", "-m", model_dir, PROMPT, "--assistant", str(tmp_path / "nope"))
    assert missing.returncode != 0 and b"no such model folder" in missing.stderr


def test_python_dash_m(model_dir, model):
    r = run([sys.executable, "-m", "pygpt"], "generate", "-m", model_dir, PROMPT, "-n", "5", "-t", "0")
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode("utf-8") == model.generate(PROMPT, max_new_tokens=5).text


def test_generate_ctrl_c(pygpt_cmd, tmp_path_factory):
    """SIGINT while streaming: exit status 130, a short note, no traceback."""
    from conftest import make_hf_model
    import pygpt.convert

    base = tmp_path_factory.mktemp("cli_long")
    make_hf_model(str(base / "hf"), n_layer=1, n_head=2, n_embd=64, n_positions=1024, vocab_size=50257)
    pygpt.convert.convert(str(base / "hf"), str(base / "m"), tokenizer=GPT2_TOKENIZER)
    p = subprocess.Popen(pygpt_cmd + ["generate", "-m", str(base / "m"), PROMPT, "-n", "1000", "--ignore-eos"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env())
    try:
        assert p.stdout.read(1)  # it is streaming
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 130
    assert b"Traceback" not in err and b"interrupted" in err


def test_generate_into_a_closed_pipe(pygpt_cmd, model_dir):
    p = subprocess.Popen(pygpt_cmd + ["generate", "-m", model_dir, PROMPT, "-n", "60", "--ignore-eos"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env())
    p.stdout.read(1)
    p.stdout.close()  # like `| head -c 1`
    err = p.stderr.read()
    p.wait(timeout=60)
    assert b"Traceback" not in err


# -- info, tokenize -------------------------------------------------------------------------------


def test_info(pygpt_cmd, model_dir, model):
    r = run(pygpt_cmd, "info", model_dir, "--threads", "1")
    assert r.returncode == 0, r.stderr
    fields = dict(re.split(r"\s{2,}", line.strip(), maxsplit=1) for line in r.stdout.decode().splitlines())
    c = model.config
    for key in ("n_layer", "n_head", "n_embd", "n_ctx", "vocab_size"):
        assert fields[key] == str(c[key])
    assert fields["dtype"] == c["dtype"]
    assert fields["lm head"] == "tied (the token embedding)"
    assert fields["kv cache"] == pygpt.model.auto_kv_cache(c["dtype"]) + " (auto)"
    assert fields["isa"] == model.isa
    assert fields["chat template"] == "plain (built in)"  # the folder has no chat_template.jinja
    assert fields["threads"] == "1"
    assert fields["file size"].endswith("MiB")
    assert fields["in 2 MiB pages"] == "unknown" or re.fullmatch(r"[0-9.]+ MiB \([0-9]+%\)", fields["in 2 MiB pages"])


def test_tokenize(pygpt_cmd, model_dir, model):
    text = "Hello world! <|endoftext|> héllo"
    r = run(pygpt_cmd, "tokenize", model_dir, text)
    assert r.returncode == 0, r.stderr
    assert [int(t) for t in r.stdout.split()] == model.tokenizer.encode(text)
    r = run(pygpt_cmd, "tokenize", model_dir, text, "--special")
    assert 50256 in [int(t) for t in r.stdout.split()]
    r = run(pygpt_cmd, "tokenize", model_dir, "-", "--pieces", input=b"Hi there\n")
    assert r.stdout.decode().splitlines() == ["17250\tb'Hi'", "612\tb' there'"]


def test_chat(pygpt_cmd, model_dir, model):
    r = run(pygpt_cmd, "chat", "-m", model_dir, "-n", "8", "-t", "0", "--system", "You are a bard.",
            input=b"Hello there\n\nHow are you?\n")
    assert r.returncode == 0, r.stderr
    messages = [{"role": "system", "content": "You are a bard."}]
    want = ""
    for line in ("Hello there", "How are you?"):  # the blank line is no message
        messages.append({"role": "user", "content": line})
        reply = model.chat(messages, max_new_tokens=8).text
        messages.append({"role": "assistant", "content": reply})
        want += reply + "\n"
    assert r.stdout.decode("utf-8") == want
    # a long conversation drops its oldest turns instead of failing (the tiny model: 64 positions)
    r = run(pygpt_cmd, "chat", "-m", model_dir, "-n", "8", "-t", "0", "--chat-template", "chatml",
            input=b"".join(b"tell me more about the weather %d\n" % i for i in range(12)))
    assert r.returncode == 0, r.stderr
    assert_one_line_error(run(pygpt_cmd, "chat", "-m", model_dir, "--echo", input=b"hi\n"), "echo")


def test_token_healing(pygpt_cmd, model_dir, model):
    r = run(pygpt_cmd, "generate", "-m", model_dir, "Hello wor", "-n", "6", "-t", "0", "--token-healing")
    assert r.returncode == 0, r.stderr
    want = model.generate("Hello wor", max_new_tokens=6, token_healing=True)
    assert r.stdout.decode("utf-8") == want.text != model.generate("Hello wor", max_new_tokens=6).text


def test_embed(pygpt_cmd, model_dir, model):
    import json

    texts = ["Hello world!", "A second text"]
    r = run(pygpt_cmd, "embed", "-m", model_dir, texts[0], "-", input=(texts[1] + "\n").encode())
    assert r.returncode == 0, r.stderr
    got = np.array([json.loads(line) for line in r.stdout.decode().splitlines()], np.float32)
    assert np.array_equal(got, model.embed(texts))
    r = run(pygpt_cmd, "embed", "-m", model_dir, texts[0], "--pooling", "last", "--no-normalize")
    assert np.array_equal(np.array(json.loads(r.stdout), np.float32),
                          model.embed(texts[0], pooling="last", normalize=False))
    long = "word " * 100  # more than the tiny model's 64 positions
    r = run(pygpt_cmd, "embed", "-m", model_dir, long, "--truncate")
    assert np.array_equal(np.array(json.loads(r.stdout), np.float32), model.embed(long, truncate=True))
    assert_one_line_error(run(pygpt_cmd, "embed", "-m", model_dir, long), "more than n_ctx = 64", "truncate")


# -- errors ---------------------------------------------------------------------------------------


def test_generate_and_batch_with_a_grammar(pygpt_cmd, model_dir, model, tmp_path):
    import json

    grammar = tmp_path / "yes.gbnf"
    grammar.write_text('root ::= "yes" | "no" | "maybe"\n')
    r = run(pygpt_cmd, "generate", "-m", model_dir, PROMPT, "-n", "10", "--seed", "2", "--grammar", str(grammar))
    assert r.returncode == 0, r.stderr
    want = model.generate(PROMPT, max_new_tokens=10, temperature=0.8, top_p=0.95, seed=2,
                          grammar=grammar.read_text())
    assert r.stdout.decode("utf-8") == want.text and want.text in ("yes", "no", "maybe")
    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps({"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}))
    r = run(pygpt_cmd, "generate", "-m", model_dir, PROMPT, "-n", "30", "-t", "0", "--json-schema", str(schema))
    want = model.generate(PROMPT, max_new_tokens=30, grammar=pygpt.Grammar.from_json_schema(schema.read_text()))
    assert r.returncode == 0 and r.stdout.decode("utf-8") == want.text
    r = run(pygpt_cmd, "generate", "-m", model_dir, PROMPT, "-n", "8", "-t", "0", "--json")
    assert r.stdout.decode("utf-8") == model.generate(PROMPT, max_new_tokens=8, grammar=pygpt.Grammar.json()).text
    lines = tmp_path / "in.txt"
    lines.write_text("Hello\nGoodbye\n")
    r = run(pygpt_cmd, "batch", "-m", model_dir, str(lines), "-n", "10", "--seed", "1", "--grammar", str(grammar))
    assert r.returncode == 0, r.stderr
    assert {json.loads(line)["text"] for line in r.stdout.decode().splitlines()} <= {"yes", "no", "maybe"}
    # errors: a missing file, a bad grammar, a bad schema, two constraints
    assert_one_line_error(run(pygpt_cmd, "generate", "-m", model_dir, "hi", "--grammar", str(tmp_path / "x")), "x")
    grammar.write_text("root ::= (")
    assert_one_line_error(run(pygpt_cmd, "generate", "-m", model_dir, "hi", "--grammar", str(grammar)), "line 1")
    schema.write_text('{"type": "string", "pattern": "a"}')
    assert_one_line_error(run(pygpt_cmd, "generate", "-m", model_dir, "hi", "--json-schema", str(schema)), "pattern")
    r = run(pygpt_cmd, "generate", "-m", model_dir, "hi", "--json", "--grammar", str(grammar))
    assert r.returncode == 2 and b"not allowed with" in r.stderr


def test_missing_model_folder(pygpt_cmd, tmp_path):
    assert_one_line_error(run(pygpt_cmd, "generate", "-m", str(tmp_path / "nope"), "hi"), "nope")
    assert_one_line_error(run(pygpt_cmd, "info", str(tmp_path / "nope")), "nope")
    assert_one_line_error(run(pygpt_cmd, "tokenize", str(tmp_path / "nope"), "hi"), "nope")


def test_folder_that_is_not_a_model(pygpt_cmd, tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    assert_one_line_error(run(pygpt_cmd, "generate", "-m", str(tmp_path), "hi"))
    assert_one_line_error(run(pygpt_cmd, "tokenize", str(tmp_path), "hi"))


def test_bad_option_values(pygpt_cmd, model_dir):
    assert_one_line_error(run(pygpt_cmd, "generate", "-m", model_dir, "hi", "--top-p", "2"), "top_p")
    assert_one_line_error(run(pygpt_cmd, "generate", "-m", model_dir, "hi", "--temperature", "-1"), "temperature")
    assert_one_line_error(run(pygpt_cmd, "generate", "-m", model_dir, "hi", "--stop", ""), "stop")


def test_prompt_too_long(pygpt_cmd, model_dir, model):
    long_prompt = " word" * (model.config["n_ctx"] + 5)
    assert_one_line_error(run(pygpt_cmd, "generate", "-m", model_dir, long_prompt, "-n", "3"), "truncate")
    r = run(pygpt_cmd, "generate", "-m", model_dir, long_prompt, "-n", "3", "--truncate", "-t", "0")
    assert r.returncode == 0, r.stderr


def test_prompt_on_stdin_must_be_utf8(pygpt_cmd, model_dir):
    assert_one_line_error(run(pygpt_cmd, "generate", "-m", model_dir, "-", input=b"\xff\xfe"), "UTF-8")


@pytest.mark.parametrize("args", [[], ["generate"], ["generate", "-m", "x", "hi", "-n", "lots"], ["frobnicate"]])
def test_usage_errors(pygpt_cmd, args):
    r = run(pygpt_cmd, *args)
    assert r.returncode == 2  # argparse's usage error
    assert b"Traceback" not in r.stderr and b"usage: pygpt" in r.stderr


def test_default_model(pygpt_cmd):
    from pygpt.model import DEFAULT_MODEL_DIR

    r = run(pygpt_cmd, "generate", "Hello", "-n", "3")
    if os.path.isfile(os.path.join(DEFAULT_MODEL_DIR, "config.json")):
        assert r.returncode == 0, r.stderr
        assert r.stdout
    else:
        assert_one_line_error(r, "default model")


def test_convert_command(pygpt_cmd, hf_model_factory, tmp_path):
    _, hf_dir, ref = hf_model_factory("tiny")
    out = str(tmp_path / "m")
    r = run(pygpt_cmd, "convert", hf_dir, out, "--dtype", "int8")
    assert r.returncode == 0 and out in r.stdout.decode(), r.stderr
    want = pygpt.convert.convert(hf_dir, str(tmp_path / "ref"), dtype="int8")
    np.testing.assert_array_equal(pygpt.load(out).logits([1, 2, 3]), pygpt.load(want).logits([1, 2, 3]))
    r = run(pygpt_cmd, "convert", str(tmp_path / "missing"), str(tmp_path / "x"))
    assert r.returncode == 1 and r.stderr.decode().count("\n") == 1 and "missing" in r.stderr.decode()
    assert b"Traceback" not in r.stderr


def test_convert_command_without_torch_names_the_extra(hf_model_factory, tmp_path):
    from conftest import write_bin_folder

    model, hf_dir, _ = hf_model_factory("tiny")
    folder = write_bin_folder(model, hf_dir, tmp_path / "bin")
    code = ("import sys; sys.modules['torch'] = None; from pygpt.cli import main; "
            f"sys.exit(main(['convert', {folder!r}, {str(tmp_path / 'out')!r}]))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=120)
    assert r.returncode == 1 and b"pip install 'pygpt[convert]'" in r.stderr and b"Traceback" not in r.stderr



# -- batch ----------------------------------------------------------------------------------------


def batch_lines(r):
    import json

    assert r.returncode == 0, r.stderr.decode()
    return [json.loads(line) for line in r.stdout.decode().splitlines()]


def test_batch_writes_generates_text_for_every_line_in_order(pygpt_cmd, model_dir, model, tmp_path):
    """Every line's text is model.generate's with seed + line number, in the input's order;
    JSON lines keep their other keys; plain lines are prompts; blank lines are skipped."""
    import json

    prompts = [PROMPT, "Hello, my dog is", "1 2 3", "The quick brown fox", "Ünïcode ☃ and \"quotes\""]
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"id": 0, "prompt": prompts[0]}) + "\n" + prompts[1] + "\n\n"
                   + "".join(json.dumps({"prompt": p, "id": i + 2, "tag": [i]}) + "\n" for i, p in enumerate(prompts[2:])),
                   encoding="utf-8")
    numbers = [1, 2, 4, 5, 6]  # the line each prompt is on
    r = run(pygpt_cmd, "batch", str(src), "-m", model_dir, "-n", "12", "--seed", "5", "--top-k", "20",
            "--max-batch", "2", "--stop", "\n\n")
    got = batch_lines(r)
    assert [g["prompt"] for g in got] == prompts
    assert got[0]["id"] == 0 and "id" not in got[1] and got[4]["tag"] == [2]
    for g, p, n in zip(got, prompts, numbers):
        want = model.generate(p, max_new_tokens=12, temperature=0.8, top_p=0.95, top_k=20, seed=5 + n, stop="\n\n")
        assert (g["text"], g["finish_reason"], g["generated_tokens"]) == (want.text, want.finish_reason,
                                                                         len(want.tokens))
    out = tmp_path / "out.jsonl"
    again = run(pygpt_cmd, "batch", str(src), "-m", model_dir, "-n", "12", "--seed", "5", "--top-k", "20",
                "-o", str(out), "--stop", "\n\n", "--stats")
    assert again.returncode == 0 and again.stdout == b"" and b"5 prompts" in again.stderr
    assert out.read_text(encoding="utf-8") == r.stdout.decode()  # --max-batch changes nothing


def test_batch_reads_stdin_greedy_with_echo(pygpt_cmd, model_dir, model):
    r = run(pygpt_cmd, "batch", "-", "-m", model_dir, "-n", "6", "-t", "0", "--echo",
            input=f"{PROMPT}\nHello\n".encode())
    got = batch_lines(r)
    for g, p in zip(got, [PROMPT, "Hello"]):
        want = model.generate(p, max_new_tokens=6, echo=True)
        assert g["text"] == want.text and g["generated_tokens"] == 6


def test_batch_a_refused_prompt_gets_an_error_line_and_the_others_run(pygpt_cmd, model_dir, tmp_path):
    n_ctx = pygpt.load(model_dir).config["n_ctx"]
    src = tmp_path / "in.txt"
    src.write_text("fine\n" + " x" * (n_ctx + 5) + "\nalso fine\n")
    r = run(pygpt_cmd, "batch", str(src), "-m", model_dir, "-n", "3")
    assert r.returncode == 1
    import json

    got = [json.loads(line) for line in r.stdout.decode().splitlines()]
    assert [("error" in g) for g in got] == [False, True, False]
    assert "context" in got[1]["error"] and got[2]["generated_tokens"] == 3
    assert_one_line_error(r, "1 of 3 prompts failed")


@pytest.mark.parametrize("content, message", [
    ('{"prompt": 3}\n', 'line 1: a JSON line must be an object with a "prompt" string'),
    ('ok\n{"prompt": \n', "line 2: not JSON"),
    (b"\xff\xfe bad\n", "not UTF-8"),
])
def test_batch_refuses_a_malformed_file(pygpt_cmd, model_dir, tmp_path, content, message):
    src = tmp_path / "in.jsonl"
    src.write_bytes(content if isinstance(content, bytes) else content.encode())
    assert_one_line_error(run(pygpt_cmd, "batch", str(src), "-m", model_dir), message)


def test_batch_missing_file_and_bad_options(pygpt_cmd, model_dir, tmp_path):
    assert_one_line_error(run(pygpt_cmd, "batch", str(tmp_path / "nope.jsonl"), "-m", model_dir), "nope.jsonl")
    src = tmp_path / "in.txt"
    src.write_text("hi\n")
    assert run(pygpt_cmd, "batch", str(src), "--max-batch", "0").returncode == 2  # argparse
    assert_one_line_error(run(pygpt_cmd, "batch", str(src), "-m", model_dir, "--top-p", "2"), "top_p")


def test_bench_reports_each_test_at_each_thread_count(model_dir, capsys, tmp_path):
    import json

    from pygpt import cli

    assert cli.main(["bench", "-m", model_dir, "--threads", "1,2", "-p", "7,16", "-n", "5", "--batch", "1,3",
                     "-r", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "| model | dtype | kv cache | isa | threads | test | tokens/s |"
    rows = [line.split(" | ") for line in lines[2:]]
    assert [(r[4], r[5]) for r in rows] == [(t, name) for t in "12" for name in ("pp7", "pp16", "tg5", "tg5@3")]
    assert all(float(r[6].split(" ± ")[0]) > 0 for r in rows)
    # --json: the runs behind each figure; a folder's sampling defaults do not change the tests
    (tmp_path / "m").mkdir()
    for name in os.listdir(model_dir):
        os.symlink(os.path.join(model_dir, name), tmp_path / "m" / name)
    (tmp_path / "m" / "generation_config.json").write_text('{"do_sample": true, "num_return_sequences": 4}')
    assert cli.main(["bench", "-m", str(tmp_path / "m"), "--threads", "1", "-p", "8", "-n", "4", "-r", "3",
                     "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["test"], len(r["runs"])) for r in rows] == [("pp8", 3), ("tg4", 3)]
    assert rows[1]["tokens_per_s"] == pytest.approx(sum(rows[1]["runs"]) / 3)


def test_bench_computes_every_prompt_it_times(model_dir):
    """pp runs the same prompt again and again: a model that keeps prompts' keys and values
    (the default prefix_cache) would time the last token alone, so bench loads without it and
    measure refuses such a model."""
    import numpy as np

    from pygpt import bench

    model = pygpt.load(model_dir)
    assert model.prefix_cache > 0
    with pytest.raises(RuntimeError, match="pp8 ran 1 prompt tokens: load the model with prefix_cache=0"):
        bench.measure(model, "pp", 8, 1, 2, np.random.default_rng(0))
    model.prefix_cache = 0
    assert len(bench.measure(model, "pp", 8, 1, 2, np.random.default_rng(0))) == 2


def test_bench_bad_arguments(pygpt_cmd, model_dir):
    n_ctx = pygpt.load(model_dir).config["n_ctx"]
    assert_one_line_error(run(pygpt_cmd, "bench", "-m", model_dir, "-p", str(n_ctx + 1)), f"pp{n_ctx + 1}", "context")
    assert_one_line_error(run(pygpt_cmd, "bench", "-m", model_dir, "-p", "8", "-n", str(n_ctx - 1)), f"tg{n_ctx - 1}",
                          "context")
    assert_one_line_error(run(pygpt_cmd, "bench", "-m", model_dir, "-p", "8", "-r", "0"), "--repetitions")
    for args, message in ((["--threads", "0"], "expected integers >= 1"), (["-p", "a,b"], "expected integers")):
        r = run(pygpt_cmd, "bench", "-m", model_dir, *args)
        assert r.returncode == 2 and message in r.stderr.decode()
