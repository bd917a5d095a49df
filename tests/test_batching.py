"""Continuous batching: pygpt.Batcher (pygpt/batching.py), the C++ Generation it drives
(_core.Generation: add, remove, finished; csrc/generate.h) and `pygpt serve` on top of it.

The promise tested throughout: a request run through a Batcher gives bitwise what
model.generate gives with the same options and seed (tokens, text, logprobs, finish_reason),
whatever runs beside it and whenever it joins the running batch. Also: that batching really
happens (few forward calls for many requests, at most max_batch sequences at once), streams,
errors in the caller's thread or failing one request alone, cancellation (Job.cancel, closing
a stream, Ctrl-C while waiting), close(), and the HTTP server's concurrent requests.

Everything runs on the small shipped model (pygpt.load(None), on one thread), which is fast; a
request of many sequences makes the steps slow enough where a test needs another request to be
still running when something happens.
"""

import http.client
import json
import os
import shutil
import signal
import subprocess
import threading
import time
import urllib.request

import pytest

import pygpt
import pygpt.batching
from pygpt import _core
from pygpt import server as pygpt_server
from pygpt.batching import BatchedStream, Job
from pygpt.generation import _Request
from pygpt.model import DEFAULT_MODEL_DIR

# As many sequences as a default batcher runs (pygpt.batching.DEFAULT_MAX_BATCH), up to the
# end of the context: 250 slow steps (about a second), during which nothing else can join;
# cancelled, it leaves the batcher's step count far below that.
LONG = dict(num_return_sequences=16, max_new_tokens=250, temperature=1.0, ignore_eos=True, seed=11)
LONG_STEPS = 250


@pytest.fixture(scope="module")
def model():
    # one thread: fast on a busy machine, where a second OpenMP thread waits for a core
    return pygpt.load(None, n_threads=1)


@pytest.fixture(scope="module")
def model_without_tokenizer(tmp_path_factory):
    folder = tmp_path_factory.mktemp("no_tokenizer")
    for name in ("config.json", "model.safetensors"):
        shutil.copy(os.path.join(DEFAULT_MODEL_DIR, name), folder)
    m = pygpt.load(str(folder), n_threads=1)
    assert m.tokenizer is None
    return m


@pytest.fixture
def batcher(model):
    b = pygpt.Batcher(model)
    yield b
    b.close()


# -- helpers ------------------------------------------------------------------------------------


def flatten(out) -> list:
    """The GenerationOutputs of one generate call, prompt-major."""
    if isinstance(out, list):
        return [o for x in out for o in flatten(x)]
    return [out]


def assert_same(got, want):
    """got has generate's shape (one output, a list, or a list of lists) and bitwise its outputs."""
    if isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), (got, want)
        for g, w in zip(got, want):
            assert_same(g, w)
        return
    assert isinstance(got, pygpt.GenerationOutput), got
    assert got.tokens == want.tokens
    assert got.text == want.text
    assert got.finish_reason == want.finish_reason
    assert got.prompt_tokens == want.prompt_tokens
    assert got.logprobs == want.logprobs  # bitwise: the same logits rows
    assert got.top_logprobs == want.top_logprobs
    assert got.score is None and want.score is None


def generated(o, echo: bool) -> int:
    return len(o.tokens) - (len(o.prompt_tokens) if echo else 0)


def assert_timings(got, want, options):
    """The batched request's token counts are generate's, and those the outputs imply."""
    outs, wants = flatten(got), flatten(want)
    t, w = outs[0].timings, wants[0].timings
    assert all(o.timings == t for o in outs)
    n = options.get("num_return_sequences", 1)
    echo = options.get("echo", False)
    counts = [generated(o, echo) for o in outs]
    # prompt tokens either ran or came from another sequence's cache (prefix caching)
    assert t.prefill_tokens + t.cached_tokens == w.prefill_tokens + w.cached_tokens == \
        sum(len(o.prompt_tokens) for o in outs[::n])
    assert t.cached_tokens == w.cached_tokens == 0 or not (echo and options.get("logprobs"))
    assert t.decode_tokens == w.decode_tokens == sum(counts) - sum(1 for c in counts if c > 0)
    assert t.draft_tokens == w.draft_tokens
    assert t.accepted_draft_tokens == w.accepted_draft_tokens
    if options.get("prompt_lookup_num_tokens"):
        assert t.draft_tokens > 0 and t.accepted_draft_tokens <= t.draft_tokens
    assert t.time_to_first_token >= 0 and t.prefill_seconds >= 0 and t.decode_seconds >= 0


def wait_for(condition, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.001)


def batcher_threads() -> set:
    return {t for t in threading.enumerate() if t.name == "pygpt-batcher"}


def varied_requests(model):
    """[(name, prompt, options)]: every kind of request the batcher takes."""
    tok = model.tokenizer
    comma, newline, eot = tok.encode(",")[0], tok.encode("\n")[0], tok.eot_id
    n_ctx = model.config["n_ctx"]
    text = "Once upon a time there was a king, and the king had a king. "
    full = (tok.encode(text) * n_ctx)[:n_ctx]
    repeating = "Hello, my dog is a good dog, my dog is a good dog, my dog is"
    return [
        ("greedy", "Once upon a time", dict(max_new_tokens=30)),
        ("top_k top_p", "The king said", dict(max_new_tokens=40, temperature=0.9, top_k=40, top_p=0.9, seed=1)),
        ("min_p", "The king said", dict(max_new_tokens=40, temperature=1.2, min_p=0.05, seed=2)),
        ("typical_p", "Once upon a time", dict(max_new_tokens=40, temperature=1.0, typical_p=0.8, seed=3)),
        ("penalties", "Once upon a time", dict(max_new_tokens=40, temperature=0.8, repetition_penalty=1.3,
                                                presence_penalty=0.5, frequency_penalty=0.4, seed=4)),
        ("no_repeat_ngram", "Once upon a time", dict(max_new_tokens=40, no_repeat_ngram_size=2)),
        ("logit_bias", "Once upon a time", dict(max_new_tokens=20, logit_bias={comma: -float("inf"), 287: 2.0})),
        ("stop", "Once upon a time", dict(max_new_tokens=40, stop=[", and", "king"])),
        ("stop_token_ids", "The king said", dict(max_new_tokens=40, temperature=1.0, seed=13,
                                                 stop_token_ids=[newline, comma])),
        ("eos", "The king said", dict(max_new_tokens=40, min_new_tokens=3, logit_bias={eot: 50.0})),
        ("ignore_eos", "The king said", dict(max_new_tokens=60, ignore_eos=True, temperature=1.0, seed=5,
                                             logit_bias={eot: 3.0})),
        ("min_new_tokens", "Once upon a time", dict(max_new_tokens=40, min_new_tokens=10,
                                                           stop_token_ids=[comma, newline])),
        ("logprobs", "The king said", dict(max_new_tokens=25, temperature=0.7, seed=6, logprobs=True,
                                           top_logprobs=3)),
        ("echo", "Once upon a time", dict(max_new_tokens=10, echo=True)),
        ("echo logprobs", "The king said", dict(max_new_tokens=10, echo=True, logprobs=True, top_logprobs=2)),
        ("n", "Once upon a time", dict(max_new_tokens=30, temperature=1.0, seed=7, num_return_sequences=3)),
        ("batch n", ["Once upon a time", "The king said", "Once upon a time"],
         dict(max_new_tokens=20, temperature=1.0, seed=8, num_return_sequences=2)),
        ("token ids", tok.encode("The king said"), dict(max_new_tokens=20, temperature=0.5, seed=9)),
        ("batch of token ids", [tok.encode("The"), tok.encode("Once upon")], dict(max_new_tokens=15)),
        ("lookup greedy", repeating, dict(max_new_tokens=40, prompt_lookup_num_tokens=5, logprobs=True)),
        ("lookup sampling", repeating, dict(max_new_tokens=40, prompt_lookup_num_tokens=5, temperature=0.7,
                                            seed=10)),
        ("max_new_tokens=0", "The king said", dict(max_new_tokens=0)),
        ("scoring", "Once upon a time", dict(max_new_tokens=0, echo=True, logprobs=True)),
        ("full context", full, dict(max_new_tokens=10, logprobs=True)),
        ("nearly full context", full[:n_ctx - 3], dict(max_new_tokens=10, temperature=1.0, seed=12)),
    ]


# -- outputs are model.generate's ----------------------------------------------------------------


# the shipped model's context is 256: the default chunk runs every prompt whole; 7 and 64 cut
# the long ones into pieces
@pytest.mark.parametrize("prefill_chunk", [pygpt.batching.DEFAULT_PREFILL_CHUNK, 64, 7])
def test_requests_joining_a_running_batch_get_generates_outputs(model, prefill_chunk):
    reqs = varied_requests(model)
    background = dict(num_return_sequences=8, max_new_tokens=250, temperature=1.0, ignore_eos=True, seed=0)
    results, joined, errors = {}, {}, []
    with pygpt.Batcher(model, prefill_chunk=prefill_chunk) as b:
        bg = b.submit("Once upon a time", **background)

        def one(i, name, prompt, options):
            try:
                time.sleep(0.01 * i)  # staggered: each joins the batch between two steps
                job = b.submit(prompt, **options)
                joined[name] = b.steps > 0 and not bg.done()
                results[name] = job.result(timeout=60)
            except BaseException as e:  # noqa: BLE001 - reported below
                errors.append((name, e))

        threads = [threading.Thread(target=one, args=(i, *r)) for i, r in enumerate(reqs)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert not errors, errors
        assert_same(bg.result(), model.generate("Once upon a time", **background))
        assert b.most_sequences > 8
    assert sum(joined.values()) >= 3, joined  # the premise: they joined a running batch
    for name, prompt, options in reqs:
        want = model.generate(prompt, **options)
        assert_same(results[name], want)
        assert_timings(results[name], want, options)


def test_the_varied_requests_do_what_they_ask(model):
    """The requests above exercise what they name (else equality proves little)."""
    outs = {name: model.generate(prompt, **options) for name, prompt, options in varied_requests(model)}
    assert outs["stop"].finish_reason == "stop" and outs["stop_token_ids"].finish_reason == "stop"
    assert outs["eos"].finish_reason == "eos" and len(outs["eos"].tokens) == 4
    assert outs["min_new_tokens"].finish_reason == "stop" and len(outs["min_new_tokens"].tokens) > 10
    assert outs["max_new_tokens=0"].tokens == [] and outs["full context"].tokens == []
    assert outs["full context"].finish_reason == "length" and outs["nearly full context"].finish_reason == "length"
    assert len(outs["nearly full context"].tokens) == 3
    assert outs["lookup greedy"].timings.accepted_draft_tokens > 0
    assert outs["scoring"].logprobs[0] is None and len(outs["scoring"].logprobs) > 2
    assert len(outs["batch n"]) == 3 and all(len(g) == 2 for g in outs["batch n"])


def test_a_batch_of_requests_shares_its_steps(model):
    n, t = 6, 40
    prompts = ["Once upon a time", "The king said", "Hello", "A", "The", "Once upon"]
    options = [dict(max_new_tokens=t, ignore_eos=True, temperature=0.9, seed=i) for i in range(n)]
    with pygpt.Batcher(model, max_batch=n) as b:
        # a first request fills the batch: the others, submitted meanwhile, start together after it
        first = b.submit("Hello", max_new_tokens=60, ignore_eos=True, num_return_sequences=n)
        jobs = [b.submit(p, **o) for p, o in zip(prompts, options)]
        assert all(isinstance(j, Job) for j in jobs)
        first.result(timeout=60)
        outs = [j.result(timeout=60) for j in jobs]
        assert all(j.done() for j in jobs)
        assert all(len(o.tokens) == t for o in outs)
        assert b.steps <= 60 + t + n  # not 60 + n * t: the requests ran together
        assert b.most_sequences == n
    for o, p, opt in zip(outs, prompts, options):
        assert_same(o, model.generate(p, **opt))


def test_max_batch_bounds_the_sequences_of_a_step(model):
    with pygpt.Batcher(model, max_batch=2) as b:
        options = [dict(max_new_tokens=30, ignore_eos=True, temperature=1.0, seed=i) for i in range(5)]
        jobs = [b.submit("Once upon a time", **o) for o in options]
        outs = [j.result(timeout=60) for j in jobs]
        assert b.most_sequences == 2
        assert b.steps >= 3 * 30  # five requests, two at a time
    for o, opt in zip(outs, options):
        assert_same(o, model.generate("Once upon a time", **opt))


def test_a_request_larger_than_max_batch_runs_alone(model):
    small = dict(max_new_tokens=30, ignore_eos=True)
    big = dict(max_new_tokens=20, temperature=1.0, seed=3, num_return_sequences=5)
    with pygpt.Batcher(model, max_batch=2) as b:
        jobs = [b.submit("The king said", **small), b.submit("Once upon a time", **big),
                b.submit("Hello", **small)]
        outs = [j.result(timeout=60) for j in jobs]
        assert b.most_sequences == 5  # neither small request ran beside it
    assert_same(outs[0], model.generate("The king said", **small))
    assert_same(outs[1], model.generate("Once upon a time", **big))
    assert_same(outs[2], model.generate("Hello", **small))


# -- streams ------------------------------------------------------------------------------------


@pytest.mark.parametrize("options", [
    dict(max_new_tokens=40),
    dict(max_new_tokens=40, temperature=1.0, seed=3, stop=[", and", "\n\n"]),
    dict(max_new_tokens=30, echo=True),
    dict(max_new_tokens=40, prompt_lookup_num_tokens=4),
], ids=["greedy", "stop", "echo", "lookup"])
def test_a_stream_yields_generates_text(batcher, model, options):
    prompt = "Once upon a time"
    s = batcher.stream(prompt, **options)
    assert isinstance(s, BatchedStream)
    pieces = list(s)
    want = model.generate(prompt, **options)
    assert "".join(pieces) == s.output.text == want.text
    assert_same(s.output, want)
    if options.get("echo"):
        assert pieces[0] == model.tokenizer.decode(want.prompt_tokens)


@pytest.mark.parametrize("options", [
    dict(max_new_tokens=12, temperature=0.9, seed=1, num_return_sequences=3),
    dict(max_new_tokens=10, echo=True, stop=["\n"], num_return_sequences=2, temperature=1.0, seed=2),
])
def test_stream_choices_yields_every_sequences_text(batcher, model, options):
    prompts = ["Once upon a time", "ROMEO:"]
    stream = batcher.stream_choices(prompts, **options)
    texts = {}
    for index, piece in stream:
        texts[index] = texts.get(index, "") + piece
    want = flatten(model.generate(prompts, **options))
    assert len(stream.outputs) == len(want) == 2 * options["num_return_sequences"]
    for i, w in enumerate(want):
        assert texts.get(i, "") == w.text
        assert_same(stream.outputs[i], w)


@pytest.mark.parametrize("options", [dict(max_new_tokens=12, temperature=1.0, seed=2, num_return_sequences=2,
                                          logprobs=True, top_logprobs=2),
                                     dict(max_new_tokens=12, echo=True, stop=["e", "\n"]),
                                     dict(max_new_tokens=12, prompt_lookup_num_tokens=3)],
                         ids=["logprobs", "echo_stop", "lookup"])
def test_stream_choices_with_tokens(batcher, model, options):
    """tokens=True: a triple whenever a sequence has new text or tokens; joined, the tokens,
    logprobs and pieces are the outputs' (the pieces may lag the tokens, and text cut at a
    stop string never comes, its tokens do)."""
    prompts = ["Once upon a time", "ROMEO:"]
    stream = batcher.stream_choices(prompts, tokens=True, **options)
    got = {}
    for index, piece, new in stream:
        assert piece or new["tokens"]
        g = got.setdefault(index, {"text": "", "tokens": [], "logprobs": [], "top_logprobs": []})
        g["text"] += piece
        for k in ("tokens", "logprobs", "top_logprobs"):
            g[k] += new[k]
    want = flatten(model.generate(prompts, **options))
    for i, w in enumerate(want):
        assert got[i]["text"] == w.text
        generated = w.tokens[len(w.prompt_tokens):] if options.get("echo") else w.tokens
        assert got[i]["tokens"] == generated
        if options.get("logprobs"):
            assert got[i]["logprobs"] == w.logprobs
            assert [[tuple(x) for x in row] for row in got[i]["top_logprobs"]] == w.top_logprobs
        else:
            assert got[i]["logprobs"] == [] and got[i]["top_logprobs"] == []
    if options.get("stop"):
        assert any(w.finish_reason == "stop" for w in want)


def test_stream_choices_refuses_beams_and_models_without_tokenizer(batcher, model, model_without_tokenizer):
    with pytest.raises(ValueError, match="beam"):
        batcher.stream_choices("Hi", num_beams=2)
    with pygpt.Batcher(model_without_tokenizer) as b:
        with pytest.raises(ValueError, match="tokenizer"):
            b.stream_choices([[1, 2, 3]], max_new_tokens=3)


def test_streams_refuse_what_model_stream_refuses(model, model_without_tokenizer):
    cases = [(model, ["a", "b"], {}), (model, "a", dict(num_return_sequences=2)),
             (model, "a", dict(num_beams=2)), (model_without_tokenizer, [1, 2, 3], {})]
    for m, prompt, options in cases:
        with pytest.raises(Exception) as want:
            m.stream(prompt, **options)
        with pygpt.Batcher(m) as b:
            with pytest.raises(type(want.value)) as got:
                b.stream(prompt, **options)
            assert str(got.value) == str(want.value)
            assert b.steps == 0


def test_closing_a_stream_cancels_its_request(model):
    long = dict(max_new_tokens=250, ignore_eos=True, temperature=1.0, seed=1)
    with pygpt.Batcher(model, max_batch=32) as b:
        bg = b.submit("The king said", **LONG)  # slow steps: the streams are still running when closed
        s = b.stream("Once upon a time", **long)
        assert next(s)
        s.close()
        with pytest.raises(pygpt.BatcherClosed):
            list(s)
        assert s.output is None
        with b.stream("Hello", **long) as s2:
            for _ in s2:
                break
        with pytest.raises(pygpt.BatcherClosed):
            list(s2)
        # the others were not disturbed, and the batcher goes on
        assert_same(bg.result(timeout=60), model.generate("The king said", **LONG))
        s3 = b.stream("Once upon a time", max_new_tokens=20)
        assert "".join(s3) == model.generate("Once upon a time", max_new_tokens=20).text


def test_a_model_without_tokenizer_batches_token_ids(model_without_tokenizer):
    m = model_without_tokenizer
    options = [dict(max_new_tokens=20), dict(max_new_tokens=20, temperature=1.0, seed=1, num_return_sequences=2,
                                               logprobs=True, echo=True)]
    with pygpt.Batcher(m) as b:
        jobs = [b.submit([[1, 2, 3], [4, 5]], **o) for o in options]
        outs = [j.result(timeout=60) for j in jobs]
    for out, o in zip(outs, options):
        want = m.generate([[1, 2, 3], [4, 5]], **o)
        assert_same(out, want)
        assert all(x.text is None for x in flatten(out))


# -- errors -------------------------------------------------------------------------------------


@pytest.mark.parametrize("prompt, options", [
    ("hi", dict(temperature=-1.0)),
    ("hi", dict(max_new_tokens="many")),
    ("hi", dict(top_p=2.0)),
    ("hi", dict(stop="")),
    ("hi", dict(logit_bias=[1, 2])),
    ("hi", dict(seed=-1)),
    ("hi", dict(echo="yes")),
    ("hi", dict(frobnicate=1)),
    ("hi", dict(num_beams=2, temperature=1.0)),
    ([], {}),
    (b"hi", {}),
    ([4096], {}),
    ([1] * 257, {}),
])
def test_bad_requests_raise_in_the_callers_thread_as_generate_does(batcher, model, prompt, options):
    threads = batcher_threads()
    with pytest.raises((ValueError, TypeError)) as want:
        model.generate(prompt, **options)
    for call in (batcher.submit, batcher.generate):
        with pytest.raises(type(want.value)) as got:
            call(prompt, **options)
        assert str(got.value) == str(want.value)
    assert batcher.steps == 0 and batcher_threads() == threads  # nothing reached the scheduler


def test_beam_search_is_refused(batcher, model):
    model.generate("hi", num_beams=2, max_new_tokens=3)  # a fine request for model.generate
    for call in (batcher.submit, batcher.generate):
        with pytest.raises(ValueError, match="beam"):
            call("hi", num_beams=2, max_new_tokens=3)


@pytest.mark.parametrize("max_batch", [0, -1, 1.5, True, "2", None])
def test_max_batch_must_be_a_positive_integer(model, max_batch):
    with pytest.raises(ValueError, match="max_batch"):
        pygpt.Batcher(model, max_batch=max_batch)


@pytest.mark.parametrize("not_a_model", [None, "model", object()])
def test_a_batcher_needs_a_model(not_a_model):
    with pytest.raises(TypeError):
        pygpt.Batcher(not_a_model)


def test_a_request_failing_in_the_scheduler_fails_alone(batcher, model):
    huge = dict(num_return_sequences=10 ** 7, max_new_tokens=5)
    with pytest.raises(MemoryError) as want:  # the memory check, in C++: not when submitting
        model.generate("hi", **huge)
    ok = dict(max_new_tokens=40, ignore_eos=True, temperature=1.0, seed=2)
    before = batcher.submit("Once upon a time", **ok)
    bad = batcher.submit("hi", **huge)
    after = batcher.submit("The king said", **ok)
    with pytest.raises(MemoryError) as got:
        bad.result(timeout=60)
    assert str(got.value) == str(want.value)
    with pytest.raises(MemoryError):
        batcher.generate("hi", **huge)
    assert_same(before.result(timeout=60), model.generate("Once upon a time", **ok))
    assert_same(after.result(timeout=60), model.generate("The king said", **ok))
    assert_same(batcher.generate("Hello", max_new_tokens=10), model.generate("Hello", max_new_tokens=10))


# -- close, cancel, timeouts ---------------------------------------------------------------------


def test_close_fails_unfinished_requests_and_ends_the_thread(model):
    before = batcher_threads()
    b = pygpt.Batcher(model, max_batch=1)
    running = b.submit("Once upon a time", **LONG)  # more sequences than max_batch: runs alone
    waiting = b.submit("The king said", max_new_tokens=5)
    wait_for(lambda: b.steps > 0)
    b.close()
    for job in (running, waiting):
        assert job.done()
        with pytest.raises(pygpt.BatcherClosed):
            job.result()
    assert b.steps < LONG_STEPS
    with pytest.raises(pygpt.BatcherClosed):
        b.submit("hi")
    with pytest.raises(pygpt.BatcherClosed):
        b.generate("hi")
    with pytest.raises(pygpt.BatcherClosed):
        b.stream("hi")
    b.close()  # twice is fine
    assert batcher_threads() == before


def test_with_block_closes_the_batcher(model):
    before = batcher_threads()
    with pygpt.Batcher(model) as b:
        assert_same(b.generate("Hello", max_new_tokens=5), model.generate("Hello", max_new_tokens=5))
        assert len(batcher_threads() - before) == 1
    assert batcher_threads() == before
    with pytest.raises(pygpt.BatcherClosed):
        b.submit("hi")
    pygpt.Batcher(model).close()  # without a request: no thread to end


def test_cancel_a_running_job(batcher, model):
    job = batcher.submit("Once upon a time", **LONG)
    wait_for(lambda: batcher.steps > 0)
    assert not job.done()
    job.cancel()
    with pytest.raises(pygpt.BatcherClosed):
        job.result(timeout=60)
    assert job.done()
    assert_same(batcher.generate("Hello", max_new_tokens=5), model.generate("Hello", max_new_tokens=5))
    assert batcher.steps < LONG_STEPS  # it did not run to its end


def test_cancel_a_waiting_job(model):
    """A request cancelled before its turn leaves the queue at the next step, not when a place
    frees up."""
    with pygpt.Batcher(model, max_batch=1) as b:
        running = b.submit("Once upon a time", **LONG)  # fills the batch for 250 steps
        waiting = b.submit("Hello", max_new_tokens=5)
        wait_for(lambda: b.steps > 0)
        waiting.cancel()
        with pytest.raises(pygpt.BatcherClosed):
            waiting.result(timeout=60)
        assert not running.done() and b.steps < LONG_STEPS


def test_a_failing_scheduler_fails_its_requests_instead_of_hanging(model, monkeypatch):
    """Should the scheduler itself fail (a bug), waiting callers get an error, not a hang."""
    def broken(*args, **kwargs):
        raise ZeroDivisionError("broken on purpose")

    monkeypatch.setattr(_Request, "outputs", broken)
    monkeypatch.setattr(threading, "excepthook", lambda args: None)  # the thread's own report
    b = pygpt.Batcher(model)
    job = b.submit("Hello", max_new_tokens=3)
    with pytest.raises(RuntimeError, match="the batcher failed: ZeroDivisionError"):
        job.result(timeout=60)
    with pytest.raises(pygpt.BatcherClosed):
        b.submit("Hello", max_new_tokens=3)
    b.close()


def test_result_with_a_timeout_and_cancel_after_done(batcher, model):
    job = batcher.submit("Once upon a time", **LONG)
    with pytest.raises(TimeoutError):
        job.result(timeout=0.001)
    assert not job.done()
    job.cancel()
    with pytest.raises(pygpt.BatcherClosed):
        job.result(timeout=60)
    short = batcher.submit("Hello", max_new_tokens=5)
    out = short.result(timeout=60)
    assert short.done()
    short.cancel()  # a no-op once done
    assert_same(short.result(), out)
    assert_same(out, model.generate("Hello", max_new_tokens=5))


def test_ctrl_c_while_waiting_cancels_the_request(model):
    assert threading.current_thread() is threading.main_thread()

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    with pygpt.Batcher(model) as b:
        old = signal.signal(signal.SIGALRM, interrupt)
        try:
            signal.setitimer(signal.ITIMER_REAL, 0.05)
            with pytest.raises(KeyboardInterrupt):
                b.generate("Once upon a time", **LONG)  # about a second
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old)
        # LONG fills the batch: had it gone on, this request would have waited for its end
        assert_same(b.generate("Hello", max_new_tokens=5), model.generate("Hello", max_new_tokens=5))
        assert 0 < b.steps < LONG_STEPS
        assert b.most_sequences == LONG["num_return_sequences"]


# -- the C++ Generation, driven directly ---------------------------------------------------------


def new_generation(model):
    return _core.Generation(model._core, model.tokenizer._core)


def add(gen, model, prompt, **options):
    """Adds a request to gen; returns (its _Request, its first id)."""
    req = _Request(model, prompt, **options)
    return req, gen.add(req.prompts, req.options)


def step_to_end(gen) -> int:
    """Steps gen until every sequence has finished; returns how many steps that took."""
    steps = 1
    while gen.step():
        steps += 1
    return steps


def test_generation_takes_requests_at_any_time(model):
    gen = new_generation(model)
    assert gen.n_live == 0 and len(gen) == 0
    a_opts = dict(max_new_tokens=30, temperature=0.8, seed=1, logprobs=True, top_logprobs=2)
    a, first_a = add(gen, model, "Once upon a time", **a_opts)
    assert first_a == 0 and gen.n_live == 1 and not gen.finished(0)
    for _ in range(5):
        assert gen.step()
    b_opts = dict(max_new_tokens=20, num_return_sequences=2, temperature=1.0, seed=2)
    b, first_b = add(gen, model, "The king said", **b_opts)  # joins at step 6
    assert first_b == 1 and gen.n_live == 3 and len(gen) == 3
    assert step_to_end(gen) == 30 - 5  # b ran beside a, within a's steps
    assert gen.n_live == 0 and all(gen.finished(i) for i in range(3))
    assert_same(a.outputs(gen, first_a)[0], model.generate("Once upon a time", **a_opts))
    assert_same(b.outputs(gen, first_b), model.generate("The king said", **b_opts))

    # the batch has finished; a new request starts it again
    assert not gen.step()
    c_opts = dict(max_new_tokens=10, stop=["\n"])
    c, first_c = add(gen, model, "Hello", **c_opts)
    assert first_c == 3
    assert gen.step()
    step_to_end(gen)
    assert_same(c.outputs(gen, first_c)[0], model.generate("Hello", **c_opts))


def test_generation_prefill_chunk_runs_a_long_prompt_beside_the_running_sequences(model):
    """With prefill_chunk c, a prompt that joins runs c tokens a step while the running sequence
    gets a token every step; outputs (prompt logprobs included) are generate's."""
    ids = model.tokenizer.encode("It was the best of times, it was the worst of times, " * 20)[:200]
    assert len(ids) == 200
    gen = new_generation(model)
    gen.prefill_chunk = 16
    options_a = dict(max_new_tokens=60, temperature=0.9, seed=2, ignore_eos=True)
    options_b = dict(max_new_tokens=5, echo=True, logprobs=True, top_logprobs=2, num_return_sequences=2, seed=3,
                     temperature=1.0)
    req_a, a = add(gen, model, "Once upon a time", **options_a)
    gen.step()
    req_b, b = add(gen, model, ids, **options_b)
    for k in range(12):  # 12 pieces of 16 tokens: 192 of 200
        gen.step()
        assert not gen.started(b) and not gen.started(b + 1)
        assert len(gen.result(a)["tokens"]) == 2 + k  # a token every step
    gen.step()  # the last 8 prompt tokens, and the first tokens of both samples
    assert gen.started(b) and gen.started(b + 1) and len(gen.result(b)["tokens"]) == 1
    step_to_end(gen)
    assert_same(req_a.shape(req_a.outputs(gen, a)), model.generate("Once upon a time", **options_a))
    assert_same(req_b.shape(req_b.outputs(gen, b)), model.generate(ids, **options_b))


def test_prefill_chunk_must_be_a_count(model):
    gen = new_generation(model)
    assert gen.prefill_chunk == 0  # whole prompts unless asked
    with pytest.raises(ValueError, match="prefill_chunk"):
        gen.prefill_chunk = -1
    for bad in (-1, 1.5, True, None):
        with pytest.raises(ValueError, match="prefill_chunk"):
            pygpt.Batcher(model, prefill_chunk=bad)


# -- prefix caching ---------------------------------------------------------------------------------


def run_alone(gen, model, prompt, **options):
    """Adds a request to gen, steps to its end; (its outputs as generate shapes them, result 0)."""
    req, first = add(gen, model, prompt, **options)
    step_to_end(gen)
    return req.shape(req.outputs(gen, first)), gen.result(first)


@pytest.mark.parametrize("kv_cache", ["auto", "int8"])
def test_prefix_cache_continues_a_finished_sequence(kv_cache):
    """A prompt that extends a finished sequence's tokens takes over its kept cache: every
    position it ran (all but the last generated token) is cached, and outputs are generate's."""
    model = pygpt.load(None, n_threads=1, kv_cache=kv_cache)
    gen = new_generation(model)
    gen.prefix_cache = 2
    prompt = model.tokenizer.encode("Once upon a time there was")
    a, ra = run_alone(gen, model, prompt, max_new_tokens=20, ignore_eos=True)
    assert ra["cached_tokens"] == 0
    longer = prompt + a.tokens + model.tokenizer.encode(" and then")
    options = dict(max_new_tokens=15, temperature=0.9, seed=4, logprobs=True)
    b, rb = run_alone(gen, model, longer, **options)
    assert rb["cached_tokens"] == len(prompt) + 20 - 1
    assert_same(b, model.generate(longer, **options))
    assert gen.timings["cached_tokens"] == len(prompt) + 19
    assert gen.timings["prefill_tokens"] == len(prompt) + len(longer) - (len(prompt) + 19)


def test_prefix_cache_copies_a_running_sequences_prefix(model):
    gen = new_generation(model)
    gen.prefix_cache = 1
    prompt = model.tokenizer.encode("It was the best of times, it was the worst of times")
    req_a, a = add(gen, model, prompt, **LONG)
    for _ in range(3):
        gen.step()
    options = dict(max_new_tokens=10, num_return_sequences=3, temperature=1.0, seed=8)
    req_b, b = add(gen, model, prompt + [11], **options)
    gen.step()
    assert [gen.result(b + j)["cached_tokens"] for j in range(3)] == [len(prompt)] * 3
    assert gen.timings["prefill_tokens"] == len(prompt) + 1  # a's prompt, then b's one new token
    step_to_end(gen)
    assert_same(req_b.shape(req_b.outputs(gen, b)), model.generate(prompt + [11], **options))
    assert_same(req_a.shape(req_a.outputs(gen, a)), model.generate(prompt, **LONG))


def test_prefix_cache_keeps_the_last_n_finished_caches(model):
    tok = model.tokenizer
    p1, p2 = tok.encode("The king of the north said"), tok.encode("Meanwhile, far away, a dragon")
    for n, hit in ((1, False), (2, True)):
        gen = new_generation(model)
        gen.prefix_cache = n
        run_alone(gen, model, p1, max_new_tokens=5)
        run_alone(gen, model, p2, max_new_tokens=5)  # with n = 1 this one's cache evicts p1's
        _, r = run_alone(gen, model, p1 + [13], max_new_tokens=5)
        assert (r["cached_tokens"] == len(p1)) == hit, (n, r["cached_tokens"])
    gen.prefix_cache = 0  # drops what it kept
    _, r = run_alone(gen, model, p1 + [13], max_new_tokens=5)
    assert r["cached_tokens"] == 0


def test_prefix_cache_never_serves_prompt_logprobs(model):
    """echo with logprobs needs every prompt row, so such a prompt runs whole."""
    gen = new_generation(model)
    gen.prefix_cache = 4
    prompt = model.tokenizer.encode("To be, or not to be, that is the question")
    run_alone(gen, model, prompt, max_new_tokens=5)
    options = dict(max_new_tokens=4, echo=True, logprobs=True, top_logprobs=2)
    out, r = run_alone(gen, model, prompt + [11], **options)
    assert r["cached_tokens"] == 0
    assert_same(out, model.generate(prompt + [11], **options))


def test_prefix_cache_after_prompt_lookup_holds_only_the_taken_tokens(model):
    """A sequence that stops inside a draft leaves a cache cut back to the tokens it took, so a
    prompt continuing it gets generate's outputs."""
    tok = model.tokenizer
    prompt = tok.encode("the cat sat on the mat. the cat sat on the mat. the cat sat on the")
    gen = new_generation(model)
    gen.prefix_cache = 2
    # the shipped model loops "[Enter CUE.]", so drafts are taken, until it writes "CAR" where
    # the draft said "CUE": the stop string ends it on a row whose draft it rejects
    options = dict(max_new_tokens=40, prompt_lookup_num_tokens=8, ignore_eos=True, stop=["CAR"])
    a, ra = run_alone(gen, model, prompt, **options)
    assert a.finish_reason == "stop" and 0 < ra["accepted_draft_tokens"] < ra["draft_tokens"]
    longer = prompt + a.tokens + tok.encode(" the")
    b, rb = run_alone(gen, model, longer, max_new_tokens=12, temperature=0.7, seed=1)
    assert rb["cached_tokens"] == len(prompt) + len(a.tokens) - 1
    assert_same(b, model.generate(longer, max_new_tokens=12, temperature=0.7, seed=1))


def test_prefix_cache_prompts_that_arrive_together_run_their_preamble_once(model):
    """Prompts added together that share a preamble: the first runs, the others wait one step
    and copy its keys and values; outputs are generate's."""
    tok = model.tokenizer
    preamble = tok.encode("Q: What is the capital of France?\nA: Paris.\nQ: What is two and two?\nA: Four.\n" * 2)
    assert len(preamble) >= 40
    tails = [tok.encode(f"Q: {q}\nA:") for q in ("Who wrote Hamlet?", "What is ice?", "Where is Rome?")]
    gen = new_generation(model)
    gen.prefix_cache = 1
    options = dict(max_new_tokens=6, temperature=0.8, seed=2)
    req, first = add(gen, model, [preamble + t for t in tails], **options)
    gen.step()
    assert [gen.started(first + i) for i in range(3)] == [True, False, False]
    gen.step()
    assert all(gen.started(first + i) for i in range(3))
    prompts = [preamble + t for t in tails]
    shared = [0] + [max(len(os.path.commonprefix([prompts[j], prompts[i]])) for j in range(i)) for i in (1, 2)]
    assert shared[1] >= len(preamble) and shared[2] >= len(preamble)  # the preamble and what the tails share
    assert [gen.result(first + i)["cached_tokens"] for i in range(3)] == shared
    step_to_end(gen)
    assert_same(req.shape(req.outputs(gen, first)), model.generate(prompts, **options))
    assert gen.timings["prefill_tokens"] == sum(len(p) for p in prompts) - sum(shared)


def test_batcher_reports_cached_tokens(model):
    with pygpt.Batcher(model, prefix_cache=2) as b:
        first = b.generate("Once upon a time", max_new_tokens=8, ignore_eos=True)
        again = "Once upon a time" + first.text + " and"
        out = b.generate(again, max_new_tokens=6)
    want = model.generate(again, max_new_tokens=6)
    assert_same(out, want)
    assert out.timings.cached_tokens > 0
    assert out.timings.prefill_tokens + out.timings.cached_tokens == want.timings.prefill_tokens
    for bad in (-1, 1.5, True, None):
        with pytest.raises(ValueError, match="prefix_cache"):
            pygpt.Batcher(model, prefix_cache=bad)
    with pytest.raises(ValueError, match="prefix_cache"):
        new_generation(model).prefix_cache = -1


def test_generation_remove_drops_a_running_sequence(model):
    gen = new_generation(model)
    opts = dict(max_new_tokens=25, num_return_sequences=3, temperature=1.0, seed=4)
    req, first = add(gen, model, "Once upon a time", **opts)
    for _ in range(3):
        gen.step()
    assert gen.n_live == 3
    gen.remove(first + 1)
    assert gen.n_live == 2
    for call in (gen.result, gen.finished, gen.take_text, gen.remove):
        with pytest.raises(IndexError):
            call(first + 1)
    step_to_end(gen)
    want = model.generate("Once upon a time", **opts)
    got = [gen.result(first), gen.result(first + 2)]
    assert [r["tokens"] for r in got] == [want[0].tokens, want[2].tokens]
    assert [r["text"] for r in got] == [want[0].text, want[2].text]
    gen.remove(first)  # a finished one
    assert gen.n_live == 0
    with pytest.raises(IndexError):
        gen.result(first)
    assert gen.result(first + 2)["tokens"] == want[2].tokens


def test_generation_refuses_a_bad_request_and_runs_on(model):
    gen = new_generation(model)
    opts = dict(max_new_tokens=30, temperature=0.9, seed=5, logprobs=True)
    req, first = add(gen, model, "Once upon a time", **opts)
    gen.step()
    bad_options = _Request(model, "hi").options
    bad_options.max_new_tokens = -1
    huge = _Request(model, "hi", num_return_sequences=10 ** 7).options
    for prompts, options, error in [([[1, 2]], bad_options, ValueError), ([[]], req.options, ValueError),
                                    ([], req.options, ValueError), ([[4096]], req.options, ValueError),
                                    ([[1] * 257], req.options, ValueError), ([[1, 2]], huge, MemoryError)]:
        with pytest.raises(error):
            gen.add(prompts, options)
        assert len(gen) == 1 and gen.n_live == 1
        gen.step()
    step_to_end(gen)
    assert_same(req.outputs(gen, first)[0], model.generate("Once upon a time", **opts))


def test_a_beam_search_generation_takes_no_further_requests(model):
    req = _Request(model, "Once upon a time", num_beams=2, max_new_tokens=5)
    gen = req.start()
    more = _Request(model, "hi")
    with pytest.raises(ValueError, match="beam"):
        gen.add(more.prompts, more.options)
    with pytest.raises(ValueError, match="beam"):
        gen.remove(0)
    with pytest.raises(ValueError, match="beam"):
        gen.finished(0)
    step_to_end(gen)
    assert req.shape(req.outputs(gen)).tokens == model.generate("Once upon a time", num_beams=2,
                                                               max_new_tokens=5).tokens


# -- pygpt serve ---------------------------------------------------------------------------------


@pytest.fixture
def server(model):
    srv = pygpt_server.Server(model, "127.0.0.1", 0, max_batch=8)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield srv
    srv.shutdown()
    srv.server_close()
    t.join(timeout=30)


def post(srv, body):
    req = urllib.request.Request(f"http://127.0.0.1:{srv.server_address[1]}/v1/completions",
                                 data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read())


def test_concurrent_completions_are_batched(server, model):
    bodies = [{"prompt": "Once upon a time", "max_tokens": 200, "temperature": 0, "ignore_eos": True},
              {"prompt": "The king said", "max_tokens": 200, "temperature": 0.9, "seed": 1, "ignore_eos": True},
              {"prompt": "Hello", "max_tokens": 150, "temperature": 1.0, "seed": 2, "n": 2},
              {"prompt": ["A", "The"], "max_tokens": 200, "temperature": 0, "stop": ["\n\n"]}]
    barrier = threading.Barrier(len(bodies))
    results = [None] * len(bodies)

    def one(i):
        barrier.wait()
        results[i] = post(server, bodies[i])

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(bodies))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    for body, r in zip(bodies, results):
        options = pygpt_server.completion_options(body)
        want = flatten(model.generate(body["prompt"], **options))
        assert [c["text"] for c in r["choices"]] == [o.text for o in want]
        assert [c["finish_reason"] for c in r["choices"]] == [
            "length" if o.finish_reason == "length" else "stop" for o in want]
    assert server.batcher.most_sequences > 1


def test_a_stream_whose_client_goes_away_is_cancelled(server, model):
    # 7 sequences of 120 tokens (the batch is 8) slow the steps; a stream of 250 tokens beside them
    bg = {"prompt": "The king said", "max_tokens": 120, "n": 7, "temperature": 1.0, "seed": 3, "ignore_eos": True}
    done = threading.Thread(target=post, args=(server, bg))
    done.start()
    wait_for(lambda: server.batcher.steps > 0)
    conn = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=60)
    conn.request("POST", "/v1/completions", json.dumps({"prompt": "Once upon a time", "max_tokens": 250,
                                                        "temperature": 0, "ignore_eos": True, "stream": True}))
    r = conn.getresponse()
    assert r.status == 200 and r.readline().startswith(b"data: ")
    r.close()  # goes away after the first piece (the response holds the socket too)
    conn.close()
    done.join(timeout=60)
    steps = -1
    while steps != server.batcher.steps:  # until the batcher is idle
        steps = server.batcher.steps
        time.sleep(0.2)
    assert steps < 200  # the stream did not run its 250 tokens


@pytest.mark.parametrize("option, value", [("--max-batch", "0"), ("--max-batch", "-3"), ("--prefill-chunk", "-1"),
                                           ("--prefix-cache", "-2")])
def test_serve_refuses_a_bad_batcher_setting(pygpt_cmd, option, value):
    r = subprocess.run(pygpt_cmd + ["serve", "--port", "0", option, value], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode != 0
    assert "Traceback" not in r.stderr and option[2:].replace("-", "_") in r.stderr.replace("-", "_"), r.stderr


def test_closing_the_model_refuses_new_requests_and_lets_running_ones_finish():
    model = pygpt.load(None, n_threads=1)
    want = model.generate("Once upon a time", max_new_tokens=40, ignore_eos=True)
    with pygpt.Batcher(model) as b:
        job = b.submit("Once upon a time", max_new_tokens=40, ignore_eos=True)
        wait_for(lambda: b.steps > 0)
        model.close()  # the batch holds the weights until it lets go of them
        with pytest.raises(ValueError, match="closed"):
            b.submit("Hello")
        assert_same(job.result(timeout=60), want)
