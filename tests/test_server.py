"""pygpt serve: OpenAI's completions API over HTTP, answered through the server's pygpt.Batcher (as
model.generate / model.stream would answer); bad requests get a 400 with OpenAI's error object."""

import json
import re
import subprocess
import threading
import urllib.error
import urllib.request

import numpy as np
import pytest

import pygpt
import pygpt.server
from conftest import GPT2_TOKENIZER, get, post, serving, sse_events

pytest.importorskip("torch")

PROMPTS = ["Hello, my dog is", "The quick brown fox"]


@pytest.fixture(scope="module")
def model(hf_model_factory, tmp_path_factory):
    import pygpt.convert

    _, hf_dir, _ = hf_model_factory("tiny")
    return pygpt.load(pygpt.convert.convert(hf_dir, str(tmp_path_factory.mktemp("serve")), tokenizer=GPT2_TOKENIZER))


@pytest.fixture(scope="module")
def url(model):
    with serving(model, name="tiny") as base:
        yield base


def test_completion_is_generate(url, model):
    status, text = post(url, {"prompt": PROMPTS[0], "max_tokens": 12, "temperature": 0, "model": "x", "user": "u"})
    assert status == 200
    r = json.loads(text)
    want = model.generate(PROMPTS[0], max_new_tokens=12)
    assert r["object"] == "text_completion" and r["model"] == "tiny" and r["id"].startswith("cmpl-")
    assert r["choices"] == [{"text": want.text, "index": 0, "logprobs": None, "finish_reason": "length",
                             "stop_reason": None}]
    cached = r["usage"].pop("prompt_tokens_details")["cached_tokens"]  # depends on what ran before
    assert r["usage"] == {"prompt_tokens": len(want.prompt_tokens), "completion_tokens": 12,
                          "total_tokens": len(want.prompt_tokens) + 12}
    assert 0 <= cached < len(want.prompt_tokens)


def test_a_prompt_continuing_an_earlier_completion_reuses_its_cache(url, model):
    """The server keeps finished requests' KV caches: a client that sends its text back with
    more gets those prompt tokens as cached_tokens, and generate's answer."""
    first = json.loads(post(url, {"prompt": PROMPTS[1] + " and", "max_tokens": 10, "temperature": 0})[1])
    prompt = PROMPTS[1] + " and" + first["choices"][0]["text"] + " then"
    status, text = post(url, {"prompt": prompt, "max_tokens": 8, "temperature": 0})
    r = json.loads(text)
    assert status == 200 and r["choices"][0]["text"] == model.generate(prompt, max_new_tokens=8).text
    n_first = first["usage"]["prompt_tokens"] + first["usage"]["completion_tokens"]
    # the earlier request's tokens, but its last generated one (never fed) and any the new
    # text tokenizes otherwise
    assert n_first - 4 <= r["usage"]["prompt_tokens_details"]["cached_tokens"] <= n_first - 1


def test_defaults_are_openais(url, model):
    # max_tokens 16 and temperature 1 (sampling): a seed makes it reproducible
    r = json.loads(post(url, {"prompt": PROMPTS[1], "seed": 3})[1])
    want = model.generate(PROMPTS[1], max_new_tokens=16, temperature=1.0, seed=3)
    assert r["choices"][0]["text"] == want.text and r["usage"]["completion_tokens"] == 16


def test_batches_and_n_are_prompt_major(url, model):
    body = {"prompt": PROMPTS, "n": 2, "max_tokens": 5, "seed": 1, "top_k": 40, "stop": ["\n"]}
    r = json.loads(post(url, body)[1])
    want = model.generate(PROMPTS, num_return_sequences=2, max_new_tokens=5, seed=1, top_k=40, stop=["\n"],
                          temperature=1.0)
    assert [c["text"] for c in r["choices"]] == [o.text for group in want for o in group]
    assert [c["index"] for c in r["choices"]] == [0, 1, 2, 3]
    assert r["usage"]["prompt_tokens"] == sum(len(g[0].prompt_tokens) for g in want)


def test_token_id_prompts_echo_and_stop(url, model):
    ids = model.tokenizer.encode(PROMPTS[0])
    r = json.loads(post(url, {"prompt": ids, "max_tokens": 6, "temperature": 0, "echo": True})[1])
    want = model.generate(ids, max_new_tokens=6, echo=True)
    assert r["choices"][0]["text"] == want.text and want.text.startswith(PROMPTS[0])
    assert r["usage"]["completion_tokens"] == 6
    plain = model.generate(PROMPTS[0], max_new_tokens=10).text
    stop = plain[3:6]
    r = json.loads(post(url, {"prompt": PROMPTS[0], "max_tokens": 10, "temperature": 0, "stop": stop})[1])
    assert r["choices"][0]["text"] == plain[:plain.index(stop)] and r["choices"][0]["finish_reason"] == "stop"
    tokens = model.generate(PROMPTS[0], max_new_tokens=10).tokens  # vLLM's stop_token_ids: stop after one
    r = json.loads(post(url, {"prompt": PROMPTS[0], "max_tokens": 10, "temperature": 0, "stop_token_ids": [tokens[4]],
                              "logprobs": 0})[1])
    assert r["choices"][0]["finish_reason"] == "stop"
    assert len(r["choices"][0]["logprobs"]["tokens"]) == tokens.index(tokens[4]) + 1
    assert r["choices"][0]["stop_reason"] == tokens[4]  # vLLM's: what stopped it
    r = json.loads(post(url, {"prompt": PROMPTS[0], "max_tokens": 10, "temperature": 0, "stop": ["zz", stop]})[1])
    assert r["choices"][0]["stop_reason"] == stop
    r = json.loads(post(url, {"prompt": PROMPTS[0], "max_tokens": 10, "temperature": 0, "stop": stop,
                              "include_stop_str_in_output": True})[1])  # vLLM's
    assert r["choices"][0]["text"] == plain[:plain.index(stop) + len(stop)]
    r = json.loads(post(url, {"prompt": PROMPTS[0], "max_tokens": 2, "temperature": 0, "ignore_eos": True})[1])
    assert r["choices"][0]["stop_reason"] is None


def test_logprobs_are_generates_in_openais_lists(url, model):
    r = json.loads(post(url, {"prompt": PROMPTS[0], "max_tokens": 5, "temperature": 0, "logprobs": 2})[1])
    lp = r["choices"][0]["logprobs"]
    want = model.generate(PROMPTS[0], max_new_tokens=5, logprobs=True, top_logprobs=2)
    assert lp["tokens"] == [model.tokenizer.decode([t]) for t in want.tokens]
    assert lp["token_logprobs"] == pytest.approx(want.logprobs, abs=1e-6)
    assert [list(d.values()) for d in lp["top_logprobs"]] == [pytest.approx([x for _, x in row], abs=1e-6)
                                                             for row in want.top_logprobs]
    assert lp["text_offset"] == [len("".join(lp["tokens"][:i])) for i in range(5)]
    assert "".join(lp["tokens"]) == r["choices"][0]["text"]


def test_scoring_a_prompt_as_evaluation_harnesses_do(url, model):
    # echo + max_tokens 0 + logprobs: the prompt's own log-probabilities (None for the first)
    r = json.loads(post(url, {"prompt": PROMPTS[1], "max_tokens": 0, "echo": True, "logprobs": 0,
                              "temperature": 0})[1])
    lp = r["choices"][0]["logprobs"]
    ids = model.tokenizer.encode(PROMPTS[1])
    logits = model.logits(ids).astype("float64")
    want = [None] + [float(logits[i, ids[i + 1]] - np.log(np.exp(logits[i] - logits[i].max()).sum())
                           - logits[i].max()) for i in range(len(ids) - 1)]
    assert lp["token_logprobs"][0] is None and lp["token_logprobs"][1:] == pytest.approx(want[1:], abs=1e-4)
    assert r["choices"][0]["text"] == PROMPTS[1] and r["usage"]["completion_tokens"] == 0


def test_streaming_sends_the_pieces_then_done(url, model):
    status, text = post(url, {"prompt": PROMPTS[0], "max_tokens": 10, "temperature": 0, "stream": True})
    assert status == 200
    events = [e for e in text.split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events) and events[-1] == "data: [DONE]"
    chunks = [json.loads(e[len("data: "):]) for e in events[:-1]]
    pieces = [c["choices"][0]["text"] for c in chunks]
    assert "".join(pieces) == model.generate(PROMPTS[0], max_new_tokens=10).text
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None] * (len(chunks) - 1) + ["length"]
    assert len({c["id"] for c in chunks}) == 1


def test_streaming_several_choices(url, model):
    """A batch of prompts with n = 2, streamed: each choice's pieces make generate's text, and
    each choice ends with one chunk that has its finish reason."""
    body = {"prompt": PROMPTS, "max_tokens": 8, "temperature": 1.0, "seed": 3, "n": 2, "stream": True,
            "echo": True}
    status, text = post(url, body)
    assert status == 200
    events = [e for e in text.split("\n\n") if e]
    assert events[-1] == "data: [DONE]"
    chunks = [json.loads(e[len("data: "):])["choices"][0] for e in events[:-1]]
    want = [o for g in model.generate(PROMPTS, max_new_tokens=8, temperature=1.0, seed=3, num_return_sequences=2,
                                      echo=True) for o in g]
    for i, w in enumerate(want):
        mine = [c for c in chunks if c["index"] == i]
        assert "".join(c["text"] for c in mine) == w.text
        assert [c["finish_reason"] for c in mine][-1] == "length"
        assert all(c["finish_reason"] is None for c in mine[:-1])
    finals = [c["index"] for c in chunks if c["finish_reason"] is not None]
    assert finals == list(range(4)) and chunks[-4:] == [c for c in chunks if c["finish_reason"]]


def test_streaming_with_logprobs(url, model):
    """stream + logprobs: each choice's chunks carry the logprobs of its tokens as they come;
    joined, they are the non-streamed response's lists (text_offset counting on from chunk to
    chunk), and the texts join to generate's text (here cut at a stop string, whose tokens
    are still listed, as without stream)."""
    plain = model.generate(PROMPTS[0], max_new_tokens=12).text
    stop = plain[8:11]
    body = {"prompt": PROMPTS, "max_tokens": 12, "temperature": 0, "n": 2, "logprobs": 2,
            "stop": stop}
    whole = json.loads(post(url, body)[1])["choices"]
    status, text = post(url, {**body, "stream": True})
    assert status == 200
    events = [e for e in text.split("\n\n") if e]
    assert events[-1] == "data: [DONE]"
    chunks = [json.loads(e[len("data: "):])["choices"][0] for e in events[:-1]]
    want = [o for g in model.generate(PROMPTS, max_new_tokens=12, num_return_sequences=2, logprobs=True,
                                      top_logprobs=2, stop=stop) for o in g]
    assert any(w.finish_reason == "stop" for w in want)
    for i, (w, ref) in enumerate(zip(want, whole)):
        mine = [c for c in chunks if c["index"] == i]
        assert "".join(c["text"] for c in mine) == w.text == ref["text"]
        body_chunks, last = mine[:-1], mine[-1]
        assert last["logprobs"] is None and last["finish_reason"] == ref["finish_reason"]
        assert all(c["logprobs"] is not None and c["finish_reason"] is None for c in body_chunks)
        joined = {k: [x for c in body_chunks for x in c["logprobs"][k]] for k in ref["logprobs"]}
        assert joined == ref["logprobs"]
        assert joined["tokens"] == [model.tokenizer.decode([t]) for t in w.tokens]
        assert joined["token_logprobs"] == pytest.approx(w.logprobs, abs=1e-6)


def test_models_and_health(url):
    assert get(url, "/health") == (200, {"status": "ok"})
    status, r = get(url, "/v1/models")
    assert status == 200 and [m["id"] for m in r["data"]] == ["tiny"]
    assert get(url, "/v1/models/tiny") == (200, r["data"][0])
    with pytest.raises(urllib.error.HTTPError) as e:
        get(url, "/v1/models/gpt-4")
    assert e.value.code == 404 and "serves 'tiny'" in json.loads(e.value.read())["error"]["message"]


@pytest.mark.parametrize("body, match", [
    ({"prompt": "hi", "temperature": -1}, "temperature"),
    ({"prompt": "hi", "max_tokens": "many"}, "max_new_tokens"),
    ({"prompt": "hi", "logprobs": 3, "stream": True, "echo": True}, "'echo' with 'logprobs'"),
    ({"prompt": "hi", "logprobs": 21}, "logprobs"),
    ({"prompt": "hi", "logprobs": True}, "logprobs"),
    ({"prompt": "hi", "suffix": "x"}, "suffix"),
    ({"prompt": "hi", "best_of": 3, "stream": True}, "cannot be streamed"),
    ({"prompt": "hi", "best_of": 1, "n": 2}, "'best_of' must be an integer from n (2) to 20"),
    ({"prompt": "hi", "best_of": 21}, "best_of"),
    ({"prompt": "hi", "best_of": True}, "best_of"),
    ({"prompt": "hi", "frobnicate": 1}, "unknown field 'frobnicate'"),
    ({"prompt": "hi", "stream": "yes"}, "stream"),
    ({"prompt": "hi", "logit_bias": {"x": 1}}, "logit_bias"),
    ({"prompt": "hi", "n": 10 ** 7}, "memory"),
    ({"prompt": "hi", "grammar": "root ::= ("}, "line 1"),
    ({"prompt": "hi", "grammar": 3}, "GBNF"),
    ({"prompt": "hi", "response_format": {"type": "xml"}}, "response_format"),
    ({"prompt": "hi", "response_format": {"type": "json_schema"}}, "json_schema"),
    ({"prompt": "hi", "json_schema": {"type": "string", "pattern": "a+"}}, "pattern"),
    ({"prompt": "hi", "json_schema": [1]}, "JSON schema must be an object"),
    ({"prompt": "hi", "grammar": 'root ::= "a"', "json_schema": {}}, "one of"),
    ([1, 2], "JSON object"),
])
def test_bad_requests_are_400_with_a_message(url, body, match):
    status, text = post(url, body)
    assert status == 400, text
    err = json.loads(text)["error"]
    assert match in err["message"] and err["type"] == "invalid_request_error"


def test_llama_cpp_sampling_fields(url, model):
    body = {"prompt": PROMPTS[0], "max_tokens": 10, "temperature": 1.0, "seed": 5, "top_n_sigma": 1.0,
            "xtc_probability": 0.5, "xtc_threshold": 0.05, "epsilon_cutoff": 0.001, "eta_cutoff": 0.001,
            "dynatemp_range": 0.5, "dynatemp_exponent": 1.5, "exponential_decay_length_penalty": [3, 1.2],
            "guidance_scale": 1.5, "negative_prompt": "The end"}
    status, text = post(url, body)
    assert status == 200, text
    want = model.generate(PROMPTS[0], max_new_tokens=10, temperature=1.0, seed=5, top_n_sigma=1.0,
                          xtc_probability=0.5, xtc_threshold=0.05, epsilon_cutoff=0.001, eta_cutoff=0.001,
                          dynatemp_range=0.5, dynatemp_exponent=1.5, exponential_decay_length_penalty=(3, 1.2),
                          guidance_scale=1.5, negative_prompt="The end")
    assert json.loads(text)["choices"][0]["text"] == want.text
    body = {"prompt": PROMPTS[0], "max_tokens": 10, "seed": 5, "mirostat": 2, "mirostat_tau": 4.0, "mirostat_eta": 0.2}
    status, text = post(url, body)
    assert status == 200, text
    want = model.generate(PROMPTS[0], max_new_tokens=10, temperature=1.0, seed=5, mirostat=2, mirostat_tau=4.0,
                          mirostat_eta=0.2)
    assert json.loads(text)["choices"][0]["text"] == want.text
    status, text = post(url, {"prompt": "hi", "mirostat": 2, "top_p": 0.5})
    assert status == 400 and "mirostat" in text
    body = {"prompt": PROMPTS[0], "max_tokens": 20, "temperature": 0, "dry_multiplier": 0.8, "dry_base": 2.0,
            "dry_allowed_length": 1, "dry_penalty_last_n": 64, "dry_sequence_breakers": ["."]}
    want = model.generate(PROMPTS[0], max_new_tokens=20, dry_multiplier=0.8, dry_base=2.0, dry_allowed_length=1,
                          dry_penalty_last_n=64, dry_sequence_breakers=["."])
    assert json.loads(post(url, body)[1])["choices"][0]["text"] == want.text


def test_constrained_output(url, model):
    """response_format (OpenAI's), grammar and json_schema (llama.cpp server's)."""
    schema = {"type": "object", "properties": {"n": {"type": "integer"}, "ok": {"type": "boolean"}},
              "required": ["n", "ok"]}
    grammar = 'root ::= "yes" | "no"'
    for extra, check in [
        ({"grammar": grammar}, lambda t: t in ("yes", "no")),
        ({"json_schema": schema}, lambda t: set(json.loads(t)) == {"n", "ok"}),
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}},
         lambda t: set(json.loads(t)) == {"n", "ok"}),
    ]:
        finished = 0
        for seed in range(3):
            body = {"prompt": PROMPTS[0], "max_tokens": 60, "seed": seed, "logit_bias": {"50256": 5}, **extra}
            status, text = post(url, body)
            assert status == 200, text
            choice = json.loads(text)["choices"][0]
            if choice["finish_reason"] == "stop":
                assert check(choice["text"]), (extra, choice)
                finished += 1
        assert finished >= 2, extra
    # any JSON object: a random model rarely closes its strings in 60 tokens, but never leaves JSON
    any_object = pygpt.Grammar.json()
    for seed in range(3):
        body = {"prompt": PROMPTS[0], "max_tokens": 30, "seed": seed, "response_format": {"type": "json_object"}}
        choice = json.loads(post(url, body)[1])["choices"][0]
        assert any_object.is_prefix(choice["text"]) and choice["text"].startswith("{")
        if choice["finish_reason"] == "stop":
            assert isinstance(json.loads(choice["text"]), dict)
    free = json.loads(post(url, {"prompt": PROMPTS[0], "max_tokens": 8, "temperature": 0,
                                 "response_format": {"type": "text"}})[1])
    assert free["choices"][0]["text"] == model.generate(PROMPTS[0], max_new_tokens=8).text
    # the same as generate with the grammar
    r = json.loads(post(url, {"prompt": PROMPTS[1], "max_tokens": 8, "temperature": 0, "grammar": grammar})[1])
    assert r["choices"][0]["text"] == model.generate(PROMPTS[1], max_new_tokens=8, grammar=grammar).text


def test_tokenize_and_detokenize(url, model):
    text = "Hello, wörld<|endoftext|> 🦜"
    status, body = post(url, {"content": text}, path="/tokenize")
    ids = model.tokenizer.encode(text, allowed_special="all")
    assert status == 200 and json.loads(body) == {"tokens": ids}
    pieces = json.loads(post(url, {"content": text, "with_pieces": True}, path="/tokenize")[1])["tokens"]
    assert [p["id"] for p in pieces] == ids
    raw = b"".join(p["piece"].encode() if isinstance(p["piece"], str) else bytes(p["piece"]) for p in pieces)
    assert raw == text.encode() and any(isinstance(p["piece"], list) for p in pieces)  # the parrot is split
    assert json.loads(post(url, {"tokens": ids}, path="/detokenize")[1]) == {"content": text}
    for path, bad, match in [("/tokenize", {"content": 3}, "content"), ("/tokenize", {"content": "a", "with_pieces": 1},
                             "with_pieces"), ("/detokenize", {"tokens": [10 ** 9]}, "outside"),
                             ("/detokenize", {"tokens": "12"}, "list of token ids")]:
        status, body = post(url, bad, path=path)
        assert status == 400 and match in json.loads(body)["error"]["message"]


def test_malformed_bodies_and_paths(url):
    status, text = post(url, None, raw=b"{not json")
    assert status == 400 and "not JSON" in json.loads(text)["error"]["message"]
    status, text = post(url, {"prompt": "hi"}, path="/v1/chat")
    assert status == 404 and json.loads(text)["error"]["type"] == "not_found_error"
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(url + "/nope", timeout=30)
    assert e.value.code == 404


def test_concurrent_requests(url, model):
    bodies = [{"prompt": p, "max_tokens": 20, "temperature": 0} for p in PROMPTS * 2]
    results = [None] * len(bodies)

    def one(i):
        results[i] = json.loads(post(url, bodies[i])[1])["choices"][0]["text"]

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(bodies))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert results == [model.generate(b["prompt"], max_new_tokens=20).text for b in bodies]


def test_an_assistant_drafts_for_every_request(model):
    """Server(assistant=...), `pygpt serve --assistant DIR`: every request is decoded with the
    assistant's drafts, to the same text (greedy) and the same sampled text as
    model.generate with assistant_model."""
    with serving(model, name="tiny", assistant=model) as url:
        r = json.loads(post(url, {"prompt": PROMPTS, "max_tokens": 12, "temperature": 0})[1])
        assert [c["text"] for c in r["choices"]] == [model.generate(p, max_new_tokens=12).text for p in PROMPTS]
        r = json.loads(post(url, {"prompt": PROMPTS[0], "max_tokens": 12, "seed": 9})[1])
        want = model.generate(PROMPTS[0], max_new_tokens=12, temperature=1.0, seed=9, assistant_model=model)
        assert r["choices"][0]["text"] == want.text
        assert want.timings.accepted_draft_tokens > 0
        # (which plain sampling's random numbers would not give: the drafts were used)
        assert want.text != model.generate(PROMPTS[0], max_new_tokens=12, temperature=1.0, seed=9).text


def test_the_serve_command(pygpt_cmd, model):
    p = subprocess.Popen(pygpt_cmd + ["serve", "-m", model.path, "--port", "0", "--assistant", model.path],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = p.stdout.readline()
        assert line.startswith("pygpt: serving") and "/v1/completions" in line, line + p.stderr.read()
        base = line.split("http://", 1)[1].split("/v1/", 1)[0]
        status, text = post("http://" + base, {"prompt": PROMPTS[0], "max_tokens": 4, "temperature": 0})
        assert status == 200
        assert json.loads(text)["choices"][0]["text"] == model.generate(PROMPTS[0], max_new_tokens=4).text
    finally:
        p.terminate()
        p.wait(timeout=30)


def test_embeddings_are_model_embed(url, model):
    texts = ["A first text to embed.", "And a second, longer one, to embed as well."]
    status, text = post(url, {"input": texts, "model": "x", "user": "u"}, path="/v1/embeddings")
    assert status == 200
    r = json.loads(text)
    want = model.embed(texts)
    n = sum(len(model.tokenizer.encode(t)) for t in texts)
    assert r["object"] == "list" and r["model"] == "tiny"
    assert r["usage"] == {"prompt_tokens": n, "total_tokens": n}
    assert [d["index"] for d in r["data"]] == [0, 1] and all(d["object"] == "embedding" for d in r["data"])
    assert np.array_equal(np.array([d["embedding"] for d in r["data"]], np.float32), want)
    # one text, token ids, lists of ids; base64 as OpenAI's client decodes it; last-token pooling
    one = json.loads(post(url, {"input": texts[0], "encoding_format": "base64", "pooling": "last"},
                          path="/v1/embeddings")[1])
    import base64

    got = np.frombuffer(base64.b64decode(one["data"][0]["embedding"]), dtype=np.float32)
    assert np.array_equal(got, model.embed(texts[0], pooling="last"))
    ids = model.tokenizer.encode(texts[1])
    for inp in (ids, [ids]):
        r = json.loads(post(url, {"input": inp, "dimensions": model.config["n_embd"]}, path="/v1/embeddings")[1])
        assert len(r["data"]) == 1 and np.array_equal(np.array(r["data"][0]["embedding"], np.float32), want[1])


@pytest.mark.parametrize("body, match", [
    ({}, "'input' is required"),
    ({"input": ""}, r"inputs\[0\] is empty"),
    ({"input": []}, "empty input"),
    ({"input": [[1], []]}, r"inputs\[1\] is empty"),
    ({"input": [50257]}, "out of range"),
    ({"input": ["a", 1]}, r"inputs\[1\] must be"),
    ({"input": "x" * 2000}, "more than n_ctx"),
    ({"input": "x", "encoding_format": "int8"}, "encoding_format"),
    ({"input": "x", "pooling": "none"}, "pooling"),
    ({"input": "x", "dimensions": 8}, "dimensions"),
    ({"input": "x", "temperature": 1}, "unknown field 'temperature'"),
    ({"input": ["x"] * 2049}, "more than 2048"),
    ([1, 2], "JSON object"),
])
def test_bad_embedding_requests(url, body, match):
    status, text = post(url, body, path="/v1/embeddings")
    assert status == 400, text
    assert re.search(match, json.loads(text)["error"]["message"])


def test_token_healing(url, model):
    status, text = post(url, {"prompt": "Hello wor", "max_tokens": 6, "temperature": 0, "token_healing": True})
    assert status == 200
    want = model.generate("Hello wor", max_new_tokens=6, token_healing=True)
    r = json.loads(text)
    assert r["choices"][0]["text"] == want.text
    assert r["usage"]["prompt_tokens"] == len(want.prompt_tokens)
    status, text = post(url, {"prompt": "Hello wor", "token_healing": 1})
    assert status == 400 and "token_healing" in json.loads(text)["error"]["message"]


def test_best_of_answers_the_most_likely_samples(url, model):
    """best_of samples best_of choices a prompt (the n samples generate draws with
    num_return_sequences=best_of) and answers the n of highest mean log-probability."""
    body = {"prompt": PROMPTS, "max_tokens": 6, "temperature": 1.0, "seed": 3, "best_of": 4, "n": 2}
    status, text = post(url, body)
    assert status == 200, text
    r = json.loads(text)
    samples = model.generate(PROMPTS, max_new_tokens=6, temperature=1.0, seed=3, num_return_sequences=4,
                             logprobs=True)
    want = [o for group in samples for o in sorted(group, key=lambda o: -np.mean(o.logprobs))[:2]]
    assert [c["text"] for c in r["choices"]] == [o.text for o in want]
    assert [c["index"] for c in r["choices"]] == [0, 1, 2, 3] and all(c["logprobs"] is None for c in r["choices"])
    assert r["usage"]["completion_tokens"] == sum(len(o.tokens) for g in samples for o in g)
    # with logprobs asked for, the chosen ones carry theirs; best_of = n samples n
    r = json.loads(post(url, {**body, "n": 1, "logprobs": 1})[1])
    assert [c["logprobs"]["token_logprobs"] for c in r["choices"]] == \
        [max(g, key=lambda o: np.mean(o.logprobs)).logprobs for g in samples]
    same = json.loads(post(url, {**body, "best_of": 2})[1])
    plain = json.loads(post(url, {**body, "best_of": None})[1])
    assert [c["text"] for c in same["choices"]] == [c["text"] for c in plain["choices"]]


def test_a_stream_can_end_with_the_usage(url, model):
    body = {"prompt": PROMPTS, "max_tokens": 5, "temperature": 0, "n": 2, "stream": True}
    status, text = post(url, {**body, "stream_options": {"include_usage": True}})
    assert status == 200
    *chunks, usage, done = sse_events(text)
    assert done == "[DONE]" and all(c["usage"] is None for c in chunks)
    want = json.loads(post(url, {**body, "stream": False})[1])["usage"]
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == want["completion_tokens"] == 20
    assert usage["usage"]["prompt_tokens"] == want["prompt_tokens"]
    assert "usage" not in sse_events(post(url, body)[1])[0]  # only when asked for
    for bad, match in [({"stream_options": {"include_usage": True}, "stream": False}, "goes with 'stream'"),
                       ({"stream_options": {"other": 1}}, "stream_options")]:
        status, text = post(url, {**body, **bad})
        assert status == 400 and match in json.loads(text)["error"]["message"]


def _random_value(rng, depth=0):
    kinds = ["int", "float", "str", "bool", "none", "list", "dict", "big", "neg"]
    kind = kinds[rng.integers(len(kinds) if depth < 2 else 7)]
    return {"int": lambda: int(rng.integers(0, 5)), "float": lambda: float(rng.normal()),
            "str": lambda: rng.choice(["", "hi", "x" * 300, "<|endoftext|>", "é", "\ud800"[:0] + "\n"]),
            "bool": lambda: bool(rng.integers(2)), "none": lambda: None, "big": lambda: 10 ** 12,
            "neg": lambda: -int(rng.integers(1, 5)),
            "list": lambda: [_random_value(rng, depth + 1) for _ in range(int(rng.integers(0, 3)))],
            "dict": lambda: {str(rng.choice(["type", "role", "content", "schema", "a"])): _random_value(rng, depth + 1)
                             for _ in range(int(rng.integers(0, 3)))}}[kind]()


FUZZ_FIELDS = {
    "/v1/completions": ["prompt", "max_tokens", "temperature", "top_p", "n", "stop", "seed", "logprobs", "echo",
                        "best_of", "logit_bias", "response_format", "grammar", "stream", "stream_options",
                        "token_healing", "guidance_scale", "negative_prompt", "exponential_decay_length_penalty",
                        "dynatemp_range", "min_tokens", "suffix", "top_k", "mirostat"],
    "/v1/chat/completions": ["messages", "max_tokens", "max_completion_tokens", "temperature", "n", "stop", "seed",
                             "logprobs", "top_logprobs", "stream", "stream_options", "response_format", "tools"],
    "/v1/embeddings": ["input", "encoding_format", "dimensions", "pooling", "model"],
    "/tokenize": ["content", "with_pieces"],
    "/detokenize": ["tokens"],
}


@pytest.mark.parametrize("path", FUZZ_FIELDS)
def test_random_request_bodies_get_an_answer_never_a_server_error(url, path):
    """Every POST endpoint, bodies of random fields and values (a fixed seed): a 200 or a 400
    with OpenAI's error object, never a 500 or a dropped connection."""
    import zlib

    rng = np.random.default_rng(zlib.crc32(path.encode()))
    seen = set()
    for i in range(150):
        fields = FUZZ_FIELDS[path]
        size = min(len(fields), int(rng.integers(0, 5)))
        body = {str(k): _random_value(rng) for k in rng.choice(fields, size=size, replace=False)}
        if path.endswith("completions") and "max_tokens" not in body:
            body["max_tokens"] = 3  # keep generations short
        if path == "/v1/chat/completions" and i % 2:
            body["messages"] = [{"role": "user", "content": "Hi"}]  # valid, so that the other fields get a go
        if path == "/v1/embeddings" and i % 2:
            body["input"] = "Hi"
        status, text = post(url, body, path=path)
        seen.add(status)
        assert status in (200, 400), (body, status, text)
        if status == 400:
            assert json.loads(text)["error"]["type"] == "invalid_request_error", text
    assert seen == {200, 400}


def test_a_client_that_goes_away_stops_its_generation(hf_model_factory):
    """A request that is not streamed, whose client closes the connection while it waits, is
    cancelled (its sequences leave the batch) instead of running to max_tokens."""
    import socket
    import time

    from pygpt import server as srv_module

    model = pygpt.load(hf_model_factory("gpt2")[2])  # 124M shape: 400 tokens take seconds
    srv = srv_module.Server(model, "127.0.0.1", 0)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        body = json.dumps({"prompt": "Hello", "max_tokens": 400, "ignore_eos": True, "temperature": 0}).encode()
        with socket.create_connection(srv.server_address[:2]) as s:
            s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      b"Content-Length: %d\r\n\r\n" % len(body) + body)
            deadline = time.time() + 30
            while srv.batcher.steps < 3 and time.time() < deadline:  # it is generating
                time.sleep(0.01)
        time.sleep(1.0)  # the handler notices (it looks every 0.05 s) and the batcher drops it
        steps = srv.batcher.steps
        time.sleep(0.5)
        assert srv.batcher.steps == steps < 400  # idle, long before 400 tokens
        # the server still answers the next client
        url = f"http://127.0.0.1:{srv.server_address[1]}"
        status, text = post(url, {"prompt": "Hi", "max_tokens": 2})
        assert status == 200
    finally:
        srv.shutdown()
        srv.server_close()
        t.join(timeout=30)


def test_an_api_key_guards_every_endpoint_but_health(model):
    key = "sk-test-123"
    with serving(model, api_key=key) as url:
        def call(method, path, headers, body=None):
            data = json.dumps(body).encode() if body is not None else None
            req = urllib.request.Request(url + path, data=data, method=method,
                                         headers={"Content-Type": "application/json", **headers})
            try:
                with urllib.request.urlopen(req, timeout=60) as r:
                    return r.status, r.read().decode()
            except urllib.error.HTTPError as e:
                return e.code, e.read().decode()

        good = {"Authorization": f"Bearer {key}"}
        for bad in ({}, {"Authorization": "Bearer nope"}, {"Authorization": key}, {"Authorization": "Basic x"}):
            for method, path, body in [("POST", "/v1/completions", {"prompt": "Hi", "max_tokens": 2}),
                                       ("POST", "/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}]}),
                                       ("POST", "/v1/embeddings", {"input": "x"}), ("POST", "/tokenize", {"content": "x"}),
                                       ("GET", "/v1/models", None)]:
                status, text = call(method, path, bad, body)
                assert status == 401, (path, bad)
                assert json.loads(text)["error"]["type"] == "authentication_error"
        assert call("GET", "/health", {}) == (200, json.dumps({"status": "ok"}))
        status, text = call("POST", "/v1/completions", good, {"prompt": "Hi", "max_tokens": 2})
        assert status == 200 and json.loads(text)["usage"]["completion_tokens"] == 2
        assert call("GET", "/v1/models", good)[0] == 200
    with pytest.raises(ValueError, match="api_key"):
        pygpt.server.Server(model, "127.0.0.1", 0, api_key="")


def test_serve_api_key_option(pygpt_cmd, model):
    """pygpt serve --api-key, or $PYGPT_API_KEY."""
    import os

    for args, env in ((["--api-key", "k1"], {}), ([], {"PYGPT_API_KEY": "k1"})):
        p = subprocess.Popen(pygpt_cmd + ["serve", "--port", "0", *args], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env={**os.environ, **env})
        try:
            line = p.stdout.readline()
            assert "API key required" in line, line + p.stderr.read()
            base = "http://" + line.split("http://", 1)[1].split("/v1/", 1)[0]
            with pytest.raises(urllib.error.HTTPError) as e:
                get(base, "/v1/models")
            assert e.value.code == 401
            req = urllib.request.Request(base + "/v1/models", headers={"Authorization": "Bearer k1"})
            with urllib.request.urlopen(req, timeout=60) as r:
                assert r.status == 200
        finally:
            p.terminate()
            p.wait(timeout=30)


def cors_call(url, method, path, headers, body=None):
    """(status, response headers) of a request with headers."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url + path, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            r.read()
            return r.status, r.headers
    except urllib.error.HTTPError as e:
        e.read()
        return e.code, e.headers


def test_cors_lets_the_named_origins_read_answers(model):
    app = "http://localhost:3000"
    with serving(model, cors_origins=[app + "/"], api_key="k") as url:
        key = {"Authorization": "Bearer k"}
        status, h = cors_call(url, "GET", "/v1/models", {"Origin": app, **key})
        assert status == 200 and h["Access-Control-Allow-Origin"] == app and h["Vary"] == "Origin"
        status, h = cors_call(url, "POST", "/v1/completions", {"Origin": app, "Content-Type": "application/json", **key},
                              {"prompt": "Hi", "max_tokens": 2})
        assert status == 200 and h["Access-Control-Allow-Origin"] == app
        status, h = cors_call(url, "GET", "/v1/models", {"Origin": app})  # the 401 is readable too
        assert status == 401 and h["Access-Control-Allow-Origin"] == app
        status, h = cors_call(url, "GET", "/v1/models", {"Origin": "http://evil.example", **key})
        assert status == 200 and "Access-Control-Allow-Origin" not in h
        assert "Access-Control-Allow-Origin" not in cors_call(url, "GET", "/health", {})[1]  # no Origin: no header
        # the preflight: no API key, the methods and headers a page may use
        status, h = cors_call(url, "OPTIONS", "/v1/chat/completions",
                              {"Origin": app, "Access-Control-Request-Method": "POST",
                               "Access-Control-Request-Headers": "authorization, content-type"})
        assert status == 204 and h["Access-Control-Allow-Origin"] == app
        assert "POST" in h["Access-Control-Allow-Methods"]
        assert {"authorization", "content-type"} <= {x.strip().lower() for x in h["Access-Control-Allow-Headers"].split(",")}
        status, h = cors_call(url, "OPTIONS", "/v1/models", {"Origin": "http://evil.example"})
        assert status == 204 and "Access-Control-Allow-Origin" not in h
    with serving(model, cors_origins=["*"]) as url:
        assert cors_call(url, "GET", "/health", {"Origin": "http://any.example"})[1]["Access-Control-Allow-Origin"] == "*"
    with serving(model) as url:  # off by default
        status, h = cors_call(url, "OPTIONS", "/v1/models", {"Origin": app})
        assert status == 405 and "Access-Control-Allow-Origin" not in h
        assert "Access-Control-Allow-Origin" not in cors_call(url, "GET", "/health", {"Origin": app})[1]
    for bad in (["localhost"], ["http://a\n"], [3]):
        with pytest.raises(ValueError, match="cors_origins"):
            pygpt.server.Server(model, "127.0.0.1", 0, cors_origins=bad)


def test_serve_cors_option(pygpt_cmd):
    p = subprocess.Popen(pygpt_cmd + ["serve", "--port", "0", "--cors-origin", "http://a.example", "--cors-origin",
                                      "http://b.example"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = p.stdout.readline()
        base = "http://" + line.split("http://", 1)[1].split("/v1/", 1)[0]
        for origin in ("http://a.example", "http://b.example"):
            assert cors_call(base, "GET", "/health", {"Origin": origin})[1]["Access-Control-Allow-Origin"] == origin
    finally:
        p.terminate()
        p.wait(timeout=30)
    r = subprocess.run(pygpt_cmd + ["serve", "--port", "0", "--cors-origin", "localhost"], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode != 0 and "cors_origins must be" in r.stderr


def test_metrics(model):
    import socket

    with serving(model) as url:
        for _ in range(2):
            assert post(url, {"prompt": "Hello", "max_tokens": 4, "ignore_eos": True, "n": 2})[0] == 200
        assert post(url, {"prompt": "Hello", "temperature": -1})[0] == 400
        assert post(url, {"input": "Hello"}, path="/v1/embeddings")[0] == 200
        host, port = url[len("http://"):].split(":")
        with socket.create_connection((host, int(port))) as s:  # a request line that does not parse
            s.sendall(b"GARBAGE\r\n\r\n")
            answer = b""
            while chunk := s.recv(4096):
                answer += chunk
            assert b"400" in answer
        with urllib.request.urlopen(url + "/metrics", timeout=60) as r:
            assert r.headers["Content-Type"].startswith("text/plain")
            text = r.read().decode()
    values = {}
    for line in text.splitlines():
        if not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    assert values['pygpt_requests_total{method="POST",endpoint="/v1/completions",status="200"}'] == 2
    assert values['pygpt_requests_total{method="POST",endpoint="/v1/completions",status="400"}'] == 1
    assert values['pygpt_requests_total{method="POST",endpoint="/v1/embeddings",status="200"}'] == 1
    assert values['pygpt_requests_total{method="other",endpoint="other",status="400"}'] == 1
    n_prompt = len(model.tokenizer.encode("Hello"))
    assert values["pygpt_generated_tokens_total"] == 2 * 2 * 4
    assert values["pygpt_embedded_tokens_total"] == n_prompt
    assert values["pygpt_prompt_tokens_total"] + values["pygpt_cached_prompt_tokens_total"] == 2 * n_prompt
    assert values["pygpt_steps_total"] >= 4 and values["pygpt_batch_sequences_max"] == 2
    assert values["pygpt_sequences_running"] == 0 and values["pygpt_requests_waiting"] == 0
    assert "# TYPE pygpt_generated_tokens_total counter" in text
