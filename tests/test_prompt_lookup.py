"""Prompt lookup decoding (prompt_lookup_num_tokens): drafts copied from earlier in the
sequence are checked in one forward call against the greedy choices, so the output must be
plain greedy decoding's, token for token (and logprob for logprob), at every weight type, with
every option that greedy decoding takes; with sampling, tokens drawn by speculative sampling
(tests/test_sampler.py checks the draws) follow the distribution of plain sampling."""

import os

import numpy as np
import pytest

import pygpt

pytest.importorskip("torch")

HERE = os.path.dirname(os.path.abspath(__file__))
GPT2_TOKENIZER = os.path.join(HERE, "data", "gpt2-tokenizer")
# tiny shapes: "flat" (the default initializer: greedy repeats a token, drafts are mostly
# right) and "sharp" (larger weights: varied text, drafts often wrong)
SHAPES = {
    "flat": dict(n_layer=2, n_head=2, n_embd=32, n_positions=96, vocab_size=50257),
    "sharp": dict(n_layer=2, n_head=2, n_embd=32, n_positions=96, vocab_size=50257, initializer_range=0.3),
}
PROMPTS = ["Hello, my dog is a good dog, my dog is", "1 2 3 1 2 3 1 2", "The quick brown fox jumps over the lazy dog"]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """{(shape, dtype): pygpt.Model}"""
    import pygpt.convert
    from conftest import make_hf_model

    out = {}
    for shape, cfg in SHAPES.items():
        base = tmp_path_factory.mktemp(f"lookup_{shape}")
        make_hf_model(str(base / "hf"), seed=5, **cfg)
        for dtype in ("f32", "bf16", "int8", "int4"):
            d = str(base / dtype)
            pygpt.convert.convert(str(base / "hf"), d, dtype=dtype, tokenizer=GPT2_TOKENIZER,
                                  **({"group_size": 0} if dtype == "int4" else {}))
            out[shape, dtype] = pygpt.load(d)
    return out


def assert_same(a, b):
    assert a.tokens == b.tokens
    assert a.text == b.text and a.finish_reason == b.finish_reason
    if a.logprobs is not None:
        assert a.logprobs == b.logprobs  # bitwise: the rows are the same bits
        assert a.top_logprobs == b.top_logprobs


@pytest.mark.parametrize("dtype", ["f32", "bf16", "int8", "int4"])
@pytest.mark.parametrize("shape", SHAPES)
def test_the_output_is_greedy_decodings(models, shape, dtype):
    m = models[shape, dtype]
    accepted = drafted = 0
    for prompt in PROMPTS:
        plain = m.generate(prompt, max_new_tokens=40, logprobs=True, top_logprobs=3)
        for k in (1, 3, 10):
            out = m.generate(prompt, max_new_tokens=40, logprobs=True, top_logprobs=3, prompt_lookup_num_tokens=k)
            assert_same(out, plain)
            drafted += out.timings.draft_tokens
            accepted += out.timings.accepted_draft_tokens
            assert out.timings.decode_tokens == len(out.tokens) - 1
    assert accepted <= drafted
    if shape == "flat":
        assert accepted > drafted / 2  # a repeating text is what the drafts copy
    else:
        assert accepted < drafted / 2 and drafted > 0  # wrong drafts were thrown away


@pytest.mark.parametrize("options", [
    dict(repetition_penalty=1.3),
    dict(no_repeat_ngram_size=3),
    dict(logit_bias={11: 2.0, 262: -1.0}, sequence_bias={(11, 11): -3.0}),
    dict(presence_penalty=0.5, frequency_penalty=0.3),
    dict(min_new_tokens=10, stop_token_ids=[11]),
    dict(stop=[" dog"]),
    dict(echo=True, logprobs=True),
    dict(max_new_tokens=1),
    dict(max_new_tokens=2),
    dict(max_matching_ngram_size=1),
    dict(max_matching_ngram_size=4),
], ids=str)
@pytest.mark.parametrize("shape", SHAPES)
def test_every_greedy_option_gives_the_same_output(models, shape, options):
    m = models[shape, "f32"]
    options = dict(dict(max_new_tokens=30), **options)
    for prompt in PROMPTS:
        assert_same(m.generate(prompt, prompt_lookup_num_tokens=5, **options), m.generate(prompt, **options))


def test_batches_and_forks(models):
    m = models["sharp", "int8"]
    plain = m.generate(PROMPTS, max_new_tokens=25, num_return_sequences=2)
    out = m.generate(PROMPTS, max_new_tokens=25, num_return_sequences=2, prompt_lookup_num_tokens=6)
    assert [[o.tokens for o in g] for g in out] == [[o.tokens for o in g] for g in plain]


def test_up_to_the_end_of_the_context(models):
    m = models["flat", "f32"]
    n_ctx = m.config["n_ctx"]
    ids = ([464, 2068, 7586] * 40)[:n_ctx - 7]
    plain = m.generate(ids, max_new_tokens=50)
    out = m.generate(ids, max_new_tokens=50, prompt_lookup_num_tokens=10)
    assert_same(out, plain)
    assert len(out.tokens) == 7 and out.finish_reason == "length"
    assert out.timings.accepted_draft_tokens > 0


def test_streaming(models):
    m = models["flat", "int4"]
    s = m.stream(PROMPTS[0], max_new_tokens=30, prompt_lookup_num_tokens=8)
    pieces = list(s)
    plain = m.generate(PROMPTS[0], max_new_tokens=30)
    assert "".join(pieces) == s.output.text == plain.text and s.output.tokens == plain.tokens
    assert s.output.timings.accepted_draft_tokens > 0
    assert len(pieces) < len(plain.tokens)  # a step can give several tokens


def test_threads_do_not_matter(models, tmp_path):
    m = models["sharp", "f32"]
    one = pygpt.load(m.path, n_threads=1)
    for prompt in PROMPTS:
        a = one.generate(prompt, max_new_tokens=30, prompt_lookup_num_tokens=4, logprobs=True)
        assert_same(a, m.generate(prompt, max_new_tokens=30, prompt_lookup_num_tokens=4, logprobs=True))


def test_no_drafts_without_the_option(models):
    out = models["flat", "f32"].generate(PROMPTS[1], max_new_tokens=20)
    assert out.timings.draft_tokens == 0 and out.timings.accepted_draft_tokens == 0


@pytest.mark.parametrize("kw, exc, match", [
    (dict(prompt_lookup_num_tokens=4, num_beams=2), ValueError, "beam"),
    (dict(prompt_lookup_num_tokens=-1), ValueError, "prompt_lookup_num_tokens"),
    (dict(prompt_lookup_num_tokens=2.5), TypeError, "prompt_lookup_num_tokens"),
    (dict(prompt_lookup_num_tokens=True), TypeError, "prompt_lookup_num_tokens"),
    (dict(prompt_lookup_num_tokens=3, max_matching_ngram_size=0), ValueError, "max_matching_ngram_size"),
    (dict(max_matching_ngram_size="2"), TypeError, "max_matching_ngram_size"),
])
def test_bad_arguments(models, kw, exc, match):
    with pytest.raises(exc, match=match):
        models["flat", "f32"].generate("hi", max_new_tokens=3, **kw)


def test_zero_is_off(models):
    m = models["flat", "f32"]
    out = m.generate(PROMPTS[1], max_new_tokens=10, prompt_lookup_num_tokens=0)
    assert out.timings.draft_tokens == 0
    assert np.array_equal(out.tokens, m.generate(PROMPTS[1], max_new_tokens=10).tokens)


# -- sampling ---------------------------------------------------------------------------------


def test_sampling_is_deterministic_and_independent_of_threads_and_batch(models):
    m = models["flat", "f32"]
    one = pygpt.load(m.path, n_threads=1)
    kw = dict(max_new_tokens=30, temperature=1.0, top_k=2, seed=11, prompt_lookup_num_tokens=5)
    a = m.generate(PROMPTS[1], **kw)
    assert a.tokens == m.generate(PROMPTS[1], **kw).tokens == one.generate(PROMPTS[1], **kw).tokens
    assert m.generate(PROMPTS, **kw)[1].tokens == a.tokens
    assert 0 < a.timings.accepted_draft_tokens < a.timings.draft_tokens  # taken and refused drafts


def test_top_k_1_sampling_is_greedy_with_drafts(models):
    # the sampling path (speculative sampling) with a one-token distribution: the draft is
    # taken exactly when it is the argmax
    m = models["flat", "int8"]
    out = m.generate(PROMPTS[0], max_new_tokens=40, temperature=1.0, top_k=1, seed=1, prompt_lookup_num_tokens=6)
    assert out.timings.accepted_draft_tokens > out.timings.draft_tokens / 2
    assert out.tokens == m.generate(PROMPTS[0], max_new_tokens=40).tokens


def test_sampled_tokens_follow_the_distribution_of_plain_sampling(models):
    """The second and third tokens (drawn against a draft when the text repeats) over many
    seeds, with and without prompt lookup: a two-sample chi-square test."""
    from test_sampler import generated_token_counts, two_sample_chi2

    m = models["sharp", "f32"]
    kw = dict(max_new_tokens=3, temperature=0.7)
    n = 1500
    drafted = 0
    for pos in (1, 2):
        plain, _, _ = generated_token_counts(m, PROMPTS[1], pos, n, **kw)
        looked, proposed, _ = generated_token_counts(m, PROMPTS[1], pos, n, prompt_lookup_num_tokens=2, **kw)
        drafted += proposed
        p_value, apart = two_sample_chi2(plain, looked, n)
        assert apart >= 3 and p_value > 1e-4, (pos, p_value, apart)
    assert drafted > 0

