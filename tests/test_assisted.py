"""Assisted decoding (assistant_model, num_assistant_tokens): an assistant model's greedy
continuation is a draft that the model checks in one forward call, so greedy output must be
plain greedy decoding's, token for token and logprob for logprob, whatever the assistant (the
same model at a lower precision, or an unrelated one); sampled tokens follow the distribution
of plain sampling. The assistant's own KV cache must follow the tokens taken: with the same
weights as the model, every draft is right."""

import os

import numpy as np
import pytest

import pygpt

pytest.importorskip("torch")

HERE = os.path.dirname(os.path.abspath(__file__))
GPT2_TOKENIZER = os.path.join(HERE, "data", "gpt2-tokenizer")
SHAPE = dict(n_layer=2, n_head=2, n_embd=32, n_positions=96, vocab_size=50257, initializer_range=0.3)
PROMPTS = ["Hello, my dog is a good dog, my dog is", "1 2 3 1 2 3 1 2", "The quick brown fox jumps over the lazy dog"]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """{name: pygpt.Model}: the model (f32) at four weight types, a second load of its f32
    weights, an unrelated model of the same vocabulary, one with a shorter context, and one
    with another vocabulary."""
    import pygpt.convert
    from conftest import make_hf_model

    base = tmp_path_factory.mktemp("assisted")
    out = {}
    make_hf_model(str(base / "hf"), seed=5, **SHAPE)
    for dtype in ("f32", "bf16", "int8", "int4"):
        d = str(base / dtype)
        pygpt.convert.convert(str(base / "hf"), d, dtype=dtype, tokenizer=GPT2_TOKENIZER)
        out[dtype] = pygpt.load(d)
    out["same"] = pygpt.load(str(base / "f32"))
    for name, seed, shape in (("other", 9, SHAPE), ("short", 9, dict(SHAPE, n_positions=24)),
                              ("small_vocab", 9, dict(SHAPE, vocab_size=1000))):
        make_hf_model(str(base / f"hf_{name}"), seed=seed, **shape)
        pygpt.convert.convert(str(base / f"hf_{name}"), str(base / name),
                              tokenizer=GPT2_TOKENIZER if shape["vocab_size"] == 50257 else None)
        out[name] = pygpt.load(str(base / name))
    return out


def assert_same(a, b):
    assert a.tokens == b.tokens
    assert a.text == b.text and a.finish_reason == b.finish_reason
    if a.logprobs is not None:
        assert a.logprobs == b.logprobs  # bitwise: the model's rows are the same bits
        assert a.top_logprobs == b.top_logprobs


@pytest.mark.parametrize("assistant", ["same", "bf16", "int8", "int4", "other"])
@pytest.mark.parametrize("model", ["f32", "int4"])
def test_the_output_is_greedy_decodings(models, model, assistant):
    m, a = models[model], models[assistant]
    drafted = accepted = 0
    for prompt in PROMPTS:
        plain = m.generate(prompt, max_new_tokens=40, logprobs=True, top_logprobs=3)
        for k in (1, 3, 8):
            out = m.generate(prompt, max_new_tokens=40, logprobs=True, top_logprobs=3, assistant_model=a,
                             num_assistant_tokens=k)
            assert_same(out, plain)
            assert out.timings.decode_tokens == len(out.tokens) - 1
            drafted += out.timings.draft_tokens
            accepted += out.timings.accepted_draft_tokens
    assert 0 < drafted and accepted <= drafted
    if assistant == "same" and model == "f32":
        # the assistant is the model: every draft is right, which needs its cache to hold
        # exactly the tokens taken, step after step
        assert accepted == drafted
    elif assistant == "other":
        assert accepted < drafted / 2  # an unrelated model's drafts are thrown away


@pytest.mark.parametrize("options", [
    dict(repetition_penalty=1.3),
    dict(no_repeat_ngram_size=3),
    dict(logit_bias={11: 2.0, 262: -1.0}),
    dict(min_new_tokens=10, stop_token_ids=[11]),
    dict(stop=[" dog"]),
    dict(echo=True, logprobs=True),
    dict(max_new_tokens=1),
    dict(max_new_tokens=2),
    dict(logits_processor=lambda ids, s: s.__setitem__(slice(int(ids[-1]) % 500, None, 3), -5.0)),
    dict(stopping_criteria=lambda ids, s: int(ids[-1]) % 7 == 0),
], ids=str)
def test_every_greedy_option_gives_the_same_output(models, options):
    m = models["f32"]
    options = dict(dict(max_new_tokens=30), **options)
    for prompt in PROMPTS:
        assert_same(m.generate(prompt, assistant_model=models["int8"], num_assistant_tokens=5, **options),
                    m.generate(prompt, **options))


@pytest.mark.parametrize("options", [
    dict(repetition_penalty=1.5),
    dict(no_repeat_ngram_size=2),
    dict(prefix_allowed_tokens_fn=lambda b, ids: list(range(int(ids[-1]) % 997, int(ids[-1]) % 997 + 50))),
    dict(logits_processor=lambda ids, s: s.__setitem__(slice(int(ids[-1]) % 500, None, 3), -5.0)),
    dict(repetition_penalty=1.5, temperature=0.8, seed=3),
    dict(logits_processor=lambda ids, s: s.__setitem__(slice(int(ids[-1]) % 500, None, 3), -5.0),
         temperature=0.8, top_k=20, seed=3),
], ids=str)
def test_drafts_follow_the_requests_processors(models, options):
    """The assistant drafts under the request's processors, the caller's own included: with
    the model's weights, every draft is right (greedy: the processed argmax; sampling: p = q,
    so every draft is kept), where raw drafts would be refused wherever a processor changes
    the choice."""
    m = models["f32"]
    kw = dict(max_new_tokens=30, assistant_model=models["same"], num_assistant_tokens=4, **options)
    for prompt in PROMPTS:
        out = m.generate(prompt, **kw)
        assert out.timings.accepted_draft_tokens == out.timings.draft_tokens > 0
        if options.get("temperature") is None:
            assert_same(out, m.generate(prompt, max_new_tokens=30, **options))


def test_an_error_while_drafting_fails_the_request(models):
    """The caller's processor also runs on the assistant's drafts: what it raises there comes
    out of generate, and in a Batcher fails that request alone."""
    m = models["f32"]
    n_prompt = len(m.tokenizer.encode(PROMPTS[0]))

    def fails_later(ids, scores):
        if len(ids) >= n_prompt + 3:  # a draft reaches this length first
            raise KeyError("processor")

    kw = dict(max_new_tokens=20, assistant_model=models["same"], num_assistant_tokens=4, logits_processor=fails_later)
    with pytest.raises(KeyError, match="processor"):
        m.generate(PROMPTS[0], **kw)
    with pygpt.Batcher(m, prefix_cache=4) as batcher:
        other = batcher.submit(PROMPTS[1], max_new_tokens=20, assistant_model=models["same"])
        with pytest.raises(KeyError, match="processor"):
            batcher.generate(PROMPTS[0], **kw)
        assert_same(other.result(), m.generate(PROMPTS[1], max_new_tokens=20))
        again = batcher.generate(PROMPTS[0], max_new_tokens=20, assistant_model=models["same"])
        assert again.timings.cached_tokens == 0  # nothing of the failed one was kept
        assert_same(again, m.generate(PROMPTS[0], max_new_tokens=20))


def test_batches_forks_and_the_default_draft_length(models):
    m = models["int8"]
    plain = m.generate(PROMPTS, max_new_tokens=25, num_return_sequences=2)
    out = m.generate(PROMPTS, max_new_tokens=25, num_return_sequences=2, assistant_model=models["int4"])
    assert [[o.tokens for o in g] for g in out] == [[o.tokens for o in g] for g in plain]
    assert out[0][0].timings.accepted_draft_tokens > 0


@pytest.mark.parametrize("sampling", [dict(), dict(temperature=0.8, seed=4)], ids=["greedy", "sample"])
def test_samples_of_a_prompt_share_the_assistants_prompt(models, sampling):
    """num_return_sequences: the assistant runs the prompt once for all the samples (their
    caches copied), not once each; with the model's weights every draft is still right."""
    m = models["f32"]
    ids = (m.tokenizer.encode(PROMPTS[2]) * 5)[:60]
    kw = dict(max_new_tokens=6, num_return_sequences=4, assistant_model=models["same"], num_assistant_tokens=3,
              **sampling)
    outs = m.generate([ids, ids[:30]], **kw)
    for group, prompt in zip(outs, (ids, ids[:30])):
        t = group[0].timings
        assert t.accepted_draft_tokens == t.draft_tokens > 0
        if not sampling:
            assert [o.tokens for o in group] == [m.generate(prompt, max_new_tokens=6).tokens] * 4
    ran = outs[0][0].timings.assistant_tokens  # the call's: both prompts once, then new tokens
    assert ran <= 60 + 30 + 8 * 6, ran


def test_up_to_the_end_of_both_contexts(models):
    """Drafts stop at the model's context and at the assistant's (a shorter one here): the
    output is still greedy's, to the model's last position."""
    m = models["f32"]
    n_ctx = m.config["n_ctx"]
    ids = ([464, 2068, 7586] * 40)[:n_ctx - 7]
    plain = m.generate(ids, max_new_tokens=50)
    for a in ("same", "short"):
        out = m.generate(ids, max_new_tokens=50, assistant_model=models[a], num_assistant_tokens=4)
        assert_same(out, plain)
        assert len(out.tokens) == 7 and out.finish_reason == "length"
    # the short assistant drafts while the sequence fits its context, then no more
    short = models["short"].config["n_ctx"]
    ids = m.tokenizer.encode(PROMPTS[2])
    out = m.generate(ids, max_new_tokens=40, assistant_model=models["short"], num_assistant_tokens=4)
    assert_same(out, m.generate(ids, max_new_tokens=40))
    assert 0 < out.timings.draft_tokens <= 4 * (short - len(ids))


def test_streaming_threads_and_the_batcher(models):
    m = models["f32"]
    kw = dict(max_new_tokens=30, assistant_model=models["int8"], num_assistant_tokens=6)
    plain = m.generate(PROMPTS[0], max_new_tokens=30)
    s = m.stream(PROMPTS[0], **kw)
    assert "".join(s) == plain.text and s.output.tokens == plain.tokens
    one = pygpt.load(m.path, n_threads=1)
    assert_same(one.generate(PROMPTS[0], logprobs=True, **kw), m.generate(PROMPTS[0], logprobs=True, **kw))
    with pygpt.Batcher(m, max_batch=8) as batcher:
        jobs = [batcher.submit(p, **kw) for p in PROMPTS] + [batcher.submit(p, max_new_tokens=30) for p in PROMPTS]
        for job, p in zip(jobs, PROMPTS + PROMPTS):
            assert_same(job.result(), m.generate(p, max_new_tokens=30))
        assert sum(j.result().timings.accepted_draft_tokens for j in jobs[:3]) > 0


def test_assistant_tokens_count_what_the_assistant_ran(models):
    m = models["f32"]
    ids = m.tokenizer.encode(PROMPTS[0])
    out = m.generate(ids, max_new_tokens=20, assistant_model=models["same"], num_assistant_tokens=4)
    # each token of the sequence once at most (not the last, nor those after its last draft),
    # and the drafts it ran that were refused (an assistant with the model's weights: none)
    t = out.timings
    assert t.accepted_draft_tokens == t.draft_tokens > 0
    assert len(ids) + t.draft_tokens - 4 <= t.assistant_tokens <= len(ids) + len(out.tokens) - 1
    assert m.generate(ids, max_new_tokens=20).timings.assistant_tokens == 0


def test_prefix_caching_keeps_the_assistants_caches_too(models):
    """A Batcher's prefix cache keeps and copies the assistant's keys and values with the
    model's: a client that continues its text has the assistant run only the new tokens, and
    every draft of an assistant with the model's weights is still right (a wrong reuse would
    give wrong drafts); outputs are model.generate's."""
    m, same = models["f32"], models["same"]
    kw = dict(max_new_tokens=12, assistant_model=same, num_assistant_tokens=4)
    with pygpt.Batcher(m, prefix_cache=4) as batcher:
        text = PROMPTS[2]
        for turn in range(4):
            out = batcher.generate(text, **kw)
            assert_same(out, m.generate(text, **kw))
            t = out.timings
            assert t.accepted_draft_tokens == t.draft_tokens > 0
            n_prompt = len(m.tokenizer.encode(text))
            ran_prompt = t.assistant_tokens - (len(out.tokens) - 1) - (t.draft_tokens - t.accepted_draft_tokens)
            if turn == 0:
                assert t.cached_tokens == 0
            else:  # the assistant ran about what the model ran of the prompt, not all of it
                assert t.cached_tokens > 0 and ran_prompt < n_prompt - t.cached_tokens + 8, (ran_prompt, n_prompt)
            text = text + out.text + " and"
        # samples of one prompt: the forks copy what the first got of the assistant's cache
        outs = batcher.generate(text, num_return_sequences=3, temperature=0.9, seed=1, **kw)
        want = m.generate(text, num_return_sequences=3, temperature=0.9, seed=1, **kw)
        assert [o.tokens for o in outs] == [o.tokens for o in want]
        assert outs[0].timings.cached_tokens > 0
    # another assistant does not take over a cache its keys and values are not
    with pygpt.Batcher(m, prefix_cache=4) as batcher:
        first = batcher.generate(PROMPTS[2], **kw)
        other = batcher.generate(PROMPTS[2] + first.text, max_new_tokens=12, assistant_model=models["int8"],
                                 num_assistant_tokens=4)
        assert other.timings.cached_tokens > 0
        assert_same(other, m.generate(PROMPTS[2] + first.text, max_new_tokens=12))
        n_prompt = len(m.tokenizer.encode(PROMPTS[2] + first.text))
        assert other.timings.assistant_tokens >= n_prompt  # int8 ran the whole prompt itself


def test_sampling_is_deterministic_and_independent_of_threads_and_batch(models):
    m = models["f32"]
    one = pygpt.load(m.path, n_threads=1)
    accepted = drafted = 0
    for assistant in ("int8", "other"):
        kw = dict(max_new_tokens=30, temperature=0.8, seed=11, assistant_model=models[assistant],
                  num_assistant_tokens=5)
        a = m.generate(PROMPTS[1], **kw)
        assert a.tokens == m.generate(PROMPTS[1], **kw).tokens == one.generate(PROMPTS[1], **kw).tokens
        assert m.generate(PROMPTS, **kw)[1].tokens == a.tokens
        accepted += a.timings.accepted_draft_tokens
        drafted += a.timings.draft_tokens
    assert 0 < accepted < drafted  # taken and refused drafts


def test_sampled_tokens_follow_the_distribution_of_plain_sampling(models):
    """The second and third tokens (drawn against the assistant's draft) over many seeds, with
    and without the assistant: a two-sample chi-square test."""
    from test_sampler import generated_token_counts, two_sample_chi2

    kw = dict(max_new_tokens=3, temperature=0.7)
    n = 1500
    accepted = 0
    for pos in (1, 2):
        plain, _, _ = generated_token_counts(models["f32"], PROMPTS[1], pos, n, **kw)
        assisted, _, taken = generated_token_counts(models["f32"], PROMPTS[1], pos, n, assistant_model=models["int4"],
                                                    num_assistant_tokens=2, **kw)
        accepted += taken
        p_value, apart = two_sample_chi2(plain, assisted, n)
        assert apart >= 2 and p_value > 1e-4, (pos, p_value, apart)
    assert accepted > 0


@pytest.mark.parametrize("kw, exc, match", [
    (dict(assistant_model="int8"), TypeError, "assistant_model must be a pygpt.Model"),
    (dict(assistant_model="small_vocab"), ValueError, "vocabulary"),
    (dict(assistant_model="int8", num_beams=2), ValueError, "beam search"),
    (dict(assistant_model="int8", prompt_lookup_num_tokens=3), ValueError, "choose one"),
    (dict(assistant_model="int8", num_assistant_tokens=0), ValueError, "num_assistant_tokens"),
    (dict(assistant_model="int8", num_assistant_tokens=2.0), TypeError, "num_assistant_tokens"),
    (dict(num_assistant_tokens=3), ValueError, "needs an assistant_model"),
])
def test_bad_arguments(models, kw, exc, match):
    kw = dict(kw)
    if kw.get("assistant_model") in models and match != "assistant_model must be a pygpt.Model":
        kw["assistant_model"] = models[kw["assistant_model"]]
    with pytest.raises(exc, match=match):
        models["f32"].generate("hi", max_new_tokens=3, **kw)


def test_a_closed_assistant_is_refused(models):
    a = pygpt.load(models["int8"].path)
    a.close()
    with pytest.raises(ValueError, match="assistant model is closed"):
        models["f32"].generate("hi", max_new_tokens=3, assistant_model=a)


def test_the_assistant_stays_alive_with_the_generation(models):
    """A stream holds its assistant: dropping the caller's reference mid-stream is safe."""
    import gc

    a = pygpt.load(models["int8"].path)
    s = models["f32"].stream(PROMPTS[0], max_new_tokens=20, assistant_model=a)
    first = next(s)
    del a
    gc.collect()
    assert first + "".join(s) == models["f32"].generate(PROMPTS[0], max_new_tokens=20).text
