"""The caller's own code in the decode loop: logits_processor, prefix_allowed_tokens_fn and
stopping_criteria (transformers' generate() options of those names, on numpy arrays).

Parity with transformers (greedy, beam search, stopping), what the callables are given, every
way of generating (batches, samples, streams, prompt lookup, asyncio, a Batcher), and the errors:
a bad callable or return value, and an exception raised by the caller's code."""

import asyncio
import math

import numpy as np
import pytest

import pygpt
import pygpt.convert

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from test_beam_search import GPT2_TOKENIZER, SHARP_SHAPE, SHARP_SEED, hf_beam, hf_greedy  # noqa: E402

EOT = 50256
PROMPTS = ["Hello, my dog is", "The quick brown fox jumps over the lazy dog because", "1 2 3"]
MAX_NEW = 12


@pytest.fixture(scope="module")
def sharp(tmp_path_factory):
    """(transformers model, pygpt model): 2 layers, the full vocabulary, sharp distributions."""
    from conftest import make_hf_model

    base = tmp_path_factory.mktemp("custom_processors")
    hf_model = make_hf_model(str(base / "hf"), seed=SHARP_SEED, **SHARP_SHAPE)
    pygpt.convert.convert(str(base / "hf"), str(base / "pygpt"), tokenizer=GPT2_TOKENIZER)
    return hf_model, pygpt.load(str(base / "pygpt"))


@pytest.fixture(scope="module")
def model(sharp):
    return sharp[1]


@pytest.fixture(scope="module")
def hf(sharp):
    return sharp[0]


def ids_of(model, prompt):
    return model.tokenizer.encode(prompt)


# -- a processor, written once for numpy (ours) and once for torch (transformers) ---------------


def shift_of(last):
    """The tokens a step's processor pushes down, from the last token: every 7th id from
    last % 1000, so the processor depends on the sequence."""
    return slice(int(last) % 1000, None, 7)


def np_processor(ids, scores):
    scores[shift_of(ids[-1])] -= 3.0
    return scores


class TorchProcessor(transformers.LogitsProcessor):
    def __call__(self, input_ids, scores):
        scores = scores.clone()
        for b in range(input_ids.shape[0]):
            scores[b, shift_of(input_ids[b, -1])] -= 3.0
        return scores


def np_boost_last(ids, scores):
    """Raises the last token's score: after the repetition penalty (which divides it, being in
    the history) or before it, a different score."""
    scores[ids[-1]] += 4.0


class TorchBoostLast(transformers.LogitsProcessor):
    def __call__(self, input_ids, scores):
        scores = scores.clone()
        for b in range(input_ids.shape[0]):
            scores[b, input_ids[b, -1]] += 4.0
        return scores


def allowed_tokens(batch_id, ids):
    """prefix_allowed_tokens_fn: 40 tokens that change with the length and the batch id."""
    start = (len(ids) * 997 + batch_id * 31) % 50000
    return list(range(start, start + 40))


class StopAfterRepeat(transformers.StoppingCriteria):
    """Stops a sequence once its last token occurred earlier in it."""

    def __call__(self, input_ids, scores, **kwargs):
        return torch.tensor([bool((row[:-1] == row[-1]).any()) for row in input_ids])


def np_stop_after_repeat(ids, logits):
    return bool((ids[:-1] == ids[-1]).any())


# -- 1. parity with transformers ----------------------------------------------------------------


@pytest.mark.parametrize("builtin", [{}, dict(repetition_penalty=1.7), dict(no_repeat_ngram_size=2)],
                         ids=["alone", "after_repetition_penalty", "after_no_repeat_ngram"])
@pytest.mark.parametrize("procs", [(np_processor, TorchProcessor), (np_boost_last, TorchBoostLast)],
                         ids=["shift", "boost_last"])
def test_logits_processor_matches_transformers_greedy(model, hf, builtin, procs):
    """The caller's processor runs after the built-in ones, as transformers runs its
    logits_processor list: raising the last token's score does not commute with the
    repetition penalty's division, so the order shows in the tokens."""
    ours, theirs = procs
    changed = 0
    for prompt in PROMPTS:
        ids = ids_of(model, prompt)
        ref = hf_greedy(hf, ids, MAX_NEW, [EOT], logits_processor=transformers.LogitsProcessorList([theirs()]),
                        **builtin)
        out = model.generate(prompt, max_new_tokens=MAX_NEW, logits_processor=ours, **builtin)
        assert out.tokens == ref, prompt
        changed += out.tokens != model.generate(prompt, max_new_tokens=MAX_NEW, **builtin).tokens
    assert changed >= 2  # the processor did something


@pytest.mark.parametrize("num_beams", [2, 4])
def test_logits_processor_matches_transformers_beams(model, hf, num_beams):
    """With beam search the processor gets the log-probabilities, as in transformers."""
    for prompt in PROMPTS:
        ids = ids_of(model, prompt)
        ref = hf_beam(hf, ids, MAX_NEW, num_beams, [EOT], num_return_sequences=num_beams,
                      logits_processor=transformers.LogitsProcessorList([TorchProcessor()]))
        outs = model.generate(prompt, max_new_tokens=MAX_NEW, num_beams=num_beams, num_return_sequences=num_beams,
                              logits_processor=np_processor)
        assert [o.tokens for o in outs] == [r[0] for r in ref], prompt
        for o, (_, score) in zip(outs, ref):
            assert o.score == pytest.approx(score, rel=1e-4, abs=1e-6)


@pytest.mark.parametrize("num_beams", [1, 3])
def test_prefix_allowed_tokens_fn_matches_transformers(model, hf, num_beams):
    ids = [ids_of(model, p) for p in PROMPTS]
    outs = model.generate(PROMPTS, max_new_tokens=MAX_NEW, num_beams=num_beams,
                          prefix_allowed_tokens_fn=allowed_tokens)
    for b, (prompt, out) in enumerate(zip(PROMPTS, outs)):
        # our batch_id is the prompt's index in the call: transformers' for the same batch
        def fn(batch_id, sent, b=b):
            return allowed_tokens(b + batch_id, sent.tolist())

        if num_beams == 1:
            ref = hf_greedy(hf, ids[b], MAX_NEW, [EOT], prefix_allowed_tokens_fn=fn)
        else:
            ref = hf_beam(hf, ids[b], MAX_NEW, num_beams, [EOT], prefix_allowed_tokens_fn=fn)[0][0]
        assert out.tokens == ref, prompt
        for k, t in enumerate(out.tokens):
            assert t in allowed_tokens(b, ids[b] + out.tokens[:k])


def test_stopping_criteria_match_transformers(model, hf):
    stopped = 0
    for prompt in PROMPTS:
        ids = ids_of(model, prompt)
        ref = hf_greedy(hf, ids, 40, [EOT], stopping_criteria=transformers.StoppingCriteriaList([StopAfterRepeat()]))
        out = model.generate(prompt, max_new_tokens=40, stopping_criteria=np_stop_after_repeat)
        assert out.tokens == ref, prompt
        if len(out.tokens) < 40:
            stopped += 1
            assert out.finish_reason == "stop"
            assert out.tokens[-1] in ids + out.tokens[:-1]
            # the token that met the criterion stays, in the tokens and the text
            assert out.text == model.tokenizer.decode(out.tokens)
    assert stopped >= 2


def test_a_transformers_processor_through_an_adapter(model, hf):
    """The adapter docs/GENERATION.md gives for transformers' own processors (torch, 2-D)."""
    suppress = model.generate(PROMPTS[0], max_new_tokens=MAX_NEW).tokens[:3]
    proc = transformers.SuppressTokensLogitsProcessor(suppress)

    def adapter(ids, scores):
        return proc(torch.from_numpy(ids)[None], torch.from_numpy(scores)[None])[0].numpy()

    for prompt in PROMPTS:
        ref = hf_greedy(hf, ids_of(model, prompt), MAX_NEW, [EOT], suppress_tokens=suppress)
        out = model.generate(prompt, max_new_tokens=MAX_NEW, logits_processor=adapter)
        assert out.tokens == ref
        assert not set(out.tokens) & set(suppress)


# -- 2. what the callables are given --------------------------------------------------------------


def test_processor_sees_the_tokens_so_far_and_the_logits(model):
    prompt = ids_of(model, PROMPTS[1])
    seen = []

    def record(ids, scores):
        assert ids.dtype == np.int64 and ids.ndim == 1
        assert scores.dtype == np.float32 and scores.shape == (model.config["vocab_size"],)
        seen.append((ids.copy(), scores.copy()))

    out = model.generate(prompt, max_new_tokens=6, logits_processor=record)
    assert len(seen) == 6
    for k, (ids, scores) in enumerate(seen):
        assert ids.tolist() == prompt + out.tokens[:k]
        # with no built-in processor on, the scores are the model's logits
        np.testing.assert_array_equal(scores, model.logits(ids)[-1])


def test_stopping_criteria_see_the_token_and_its_logits(model):
    prompt = ids_of(model, PROMPTS[0])
    seen = []

    def record(ids, logits):
        seen.append((ids.copy(), logits.copy()))
        return False

    out = model.generate(prompt, max_new_tokens=5, stopping_criteria=[record], repetition_penalty=2.0)
    assert [s[0].tolist() for s in seen] == [prompt + out.tokens[:k + 1] for k in range(5)]
    for ids, logits in seen:  # the raw logits row that chose the last token
        np.testing.assert_array_equal(logits, model.logits(ids[:-1])[-1])
    assert out.finish_reason == "length"


def test_processors_run_in_order_and_may_return_new_arrays(model):
    order = []

    def first(ids, scores):
        order.append(1)
        out = np.full_like(scores, -np.inf)
        out[[100, 200, 300]] = scores[[100, 200, 300]]
        return out  # a new array

    def second(ids, scores):
        order.append(2)
        assert np.isfinite(scores).sum() == 3  # sees what the first returned
        scores[300] = np.inf
        return None  # in place

    out = model.generate(PROMPTS[0], max_new_tokens=3, logits_processor=[first, second])
    assert out.tokens == [300, 300, 300]
    assert order == [1, 2] * 3


def test_logprobs_stay_the_models(model):
    """logprobs are the raw distribution's, before any processor (as for the built-in ones)."""
    plain = model.generate(PROMPTS[0], max_new_tokens=6, logprobs=True, logit_bias={11: 5.0})

    def bias(ids, scores):
        scores[11] += 5.0

    out = model.generate(PROMPTS[0], max_new_tokens=6, logprobs=True, logits_processor=bias)
    assert out.tokens == plain.tokens and out.logprobs == plain.logprobs


# -- 3. every way of generating ----------------------------------------------------------------


def bias_processor(ids, scores):
    """The same as logit_bias=BIAS, applied by the caller."""
    for t, b in BIAS.items():
        scores[t] += b


BIAS = {11: 4.0, 13: 3.0, 262: -math.inf, 290: 2.5}


@pytest.mark.parametrize("sampling", [dict(), dict(temperature=0.8, top_p=0.9, top_k=50)], ids=["greedy", "sample"])
def test_a_processor_equals_the_builtin_it_mimics(model, sampling):
    """Adding a bias after the built-in processors gives the built-in logit_bias's scores, bit
    for bit: the same tokens, also when sampling with a seed, in batches and samples."""
    kw = dict(max_new_tokens=MAX_NEW, seed=7, num_return_sequences=2, **sampling)
    ours = model.generate(PROMPTS, logits_processor=bias_processor, **kw)
    builtin = model.generate(PROMPTS, logit_bias=BIAS, **kw)
    assert [[o.tokens for o in g] for g in ours] == [[o.tokens for o in g] for g in builtin]
    assert all(262 not in o.tokens for g in ours for o in g)


def test_batch_id_is_the_prompt_index(model):
    """Each prompt of a batch gets its own batch_id, and a sequence's tokens are those it
    gets alone with that batch_id."""
    outs = model.generate(PROMPTS, max_new_tokens=6, prefix_allowed_tokens_fn=allowed_tokens,
                          num_return_sequences=2, temperature=1.0, seed=3)
    for b, (prompt, group) in enumerate(zip(PROMPTS, outs)):
        alone = model.generate(prompt, max_new_tokens=6, num_return_sequences=2, temperature=1.0, seed=3,
                               prefix_allowed_tokens_fn=lambda _, ids, b=b: allowed_tokens(b, ids))
        assert [o.tokens for o in group] == [o.tokens for o in alone]


def test_prefix_constraint_keeps_banned_tokens_possible(model):
    """When every allowed token was banned by an earlier processor, they stay possible (score
    0), as transformers' PrefixConstrainedLogitsProcessor does, rather than nothing left."""
    out = model.generate(PROMPTS[0], max_new_tokens=4, logit_bias={5: -math.inf, 6: -math.inf},
                         prefix_allowed_tokens_fn=lambda b, ids: [5, 6])
    assert out.tokens == [5, 5, 5, 5]


@pytest.mark.parametrize("sampling", [dict(), dict(temperature=0.9, seed=11)], ids=["greedy", "sample"])
def test_stream_and_asyncio(model, sampling):
    kw = dict(max_new_tokens=MAX_NEW, logits_processor=np_processor, stopping_criteria=np_stop_after_repeat,
              **sampling)
    out = model.generate(PROMPTS[1], **kw)
    stream = model.stream(PROMPTS[1], **kw)
    assert "".join(stream) == out.text
    assert stream.output.tokens == out.tokens

    async def run():
        a = await model.agenerate(PROMPTS[1], **kw)
        pieces = [p async for p in model.astream(PROMPTS[1], **kw)]
        return a, "".join(pieces)

    a, text = asyncio.run(run())
    assert a.tokens == out.tokens and text == out.text


def test_prompt_lookup_gives_the_same_tokens(model):
    """Draft rows go through the processor with the draft so far in the tokens: greedy prompt
    lookup still gives greedy decoding's tokens (and the stopping criteria stop it alike)."""
    prompt = "a b c d a b c d a b c d a b c"
    kw = dict(max_new_tokens=30, logits_processor=np_processor, stopping_criteria=np_stop_after_repeat)
    plain = model.generate(prompt, **kw)
    looked = model.generate(prompt, prompt_lookup_num_tokens=4, **kw)
    assert looked.tokens == plain.tokens and looked.finish_reason == plain.finish_reason
    free = model.generate(prompt, max_new_tokens=30, logits_processor=np_processor, prompt_lookup_num_tokens=4)
    assert free.timings.draft_tokens > 0


def test_batcher_runs_the_callables_of_each_request(model):
    kw = dict(max_new_tokens=MAX_NEW, logits_processor=np_processor)
    with pygpt.Batcher(model, max_batch=8) as batcher:
        jobs = [batcher.submit(p, **kw) for p in PROMPTS]
        plain = batcher.submit(PROMPTS[0], max_new_tokens=MAX_NEW)
        stopped = batcher.submit(PROMPTS[2], max_new_tokens=40, stopping_criteria=np_stop_after_repeat)
        for p, job in zip(PROMPTS, jobs):
            assert job.result().tokens == model.generate(p, **kw).tokens
        assert plain.result().tokens == model.generate(PROMPTS[0], max_new_tokens=MAX_NEW).tokens
        assert stopped.result().tokens == model.generate(PROMPTS[2], max_new_tokens=40,
                                                         stopping_criteria=np_stop_after_repeat).tokens


def test_an_error_in_a_batcher_fails_its_request_alone(model):
    calls = []

    def fails_later(ids, scores):
        calls.append(1)
        if len(calls) == 3:
            raise KeyError("the caller's bug")

    with pygpt.Batcher(model) as batcher:
        others = [batcher.submit(p, max_new_tokens=20) for p in PROMPTS]
        bad = batcher.submit(PROMPTS[0], max_new_tokens=20, num_return_sequences=2, logits_processor=fails_later)
        with pytest.raises(KeyError, match="the caller's bug"):
            bad.result()
        for p, job in zip(PROMPTS, others):
            assert job.result().tokens == model.generate(p, max_new_tokens=20).tokens
        assert len(calls) <= 4  # both sequences stopped right after the error
        assert batcher.generate(PROMPTS[1], max_new_tokens=5, logits_processor=np_processor).tokens == \
            model.generate(PROMPTS[1], max_new_tokens=5, logits_processor=np_processor).tokens


# -- 4. errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize("kw, exc, match", [
    (dict(logits_processor=3), TypeError, "logits_processor must be a callable"),
    (dict(logits_processor=[np_processor, "x"]), TypeError, "logits_processor must be a callable"),
    (dict(stopping_criteria={"a": 1}), TypeError, "stopping_criteria must be a callable"),
    (dict(prefix_allowed_tokens_fn=[1, 2]), TypeError, "prefix_allowed_tokens_fn must be a callable"),
    (dict(stopping_criteria=np_stop_after_repeat, num_beams=2), ValueError, "do not go with beam search"),
])
def test_bad_arguments(model, kw, exc, match):
    with pytest.raises(exc, match=match):
        model.generate(PROMPTS[0], max_new_tokens=3, **kw)


@pytest.mark.parametrize("kw, exc, match", [
    (dict(logits_processor=lambda ids, s: s[:10]), ValueError, r"shape \(10,\)"),
    (dict(logits_processor=lambda ids, s: s[None]), ValueError, r"shape \(1, 50257\)"),
    (dict(logits_processor=lambda ids, s: np.full_like(s, np.nan)), ValueError, "NaN"),
    (dict(logits_processor=lambda ids, s: np.full_like(s, -np.inf)), ValueError, "every token was filtered out"),
    (dict(prefix_allowed_tokens_fn=lambda b, ids: []), ValueError, "returned no token"),
    (dict(prefix_allowed_tokens_fn=lambda b, ids: [50257]), ValueError, "outside the vocabulary"),
    (dict(prefix_allowed_tokens_fn=lambda b, ids: [-1]), ValueError, "outside the vocabulary"),
    (dict(prefix_allowed_tokens_fn=lambda b, ids: ["a"]), TypeError, "integer token ids"),
    (dict(prefix_allowed_tokens_fn=lambda b, ids: 5), TypeError, "must return a list"),
    (dict(logits_processor=lambda ids, s: 1 / 0), ZeroDivisionError, "division by zero"),
    (dict(stopping_criteria=lambda ids, s: ids.nope), AttributeError, "nope"),
])
def test_bad_callables_raise_and_the_model_goes_on(model, kw, exc, match):
    """What the caller's code raises (or a bad return's ValueError) comes out of generate, of a
    stream and of a Batcher request; the model then works as before."""
    expected = model.generate(PROMPTS[0], max_new_tokens=4).tokens
    with pytest.raises(exc, match=match):
        model.generate(PROMPTS[0], max_new_tokens=4, **kw)
    with pytest.raises(exc, match=match):
        list(model.stream(PROMPTS[0], max_new_tokens=4, **kw))
    with pygpt.Batcher(model) as batcher:
        with pytest.raises(exc, match=match):
            batcher.generate(PROMPTS[0], max_new_tokens=4, **kw)
        assert batcher.generate(PROMPTS[0], max_new_tokens=4).tokens == expected
    assert model.generate(PROMPTS[0], max_new_tokens=4).tokens == expected


def test_beam_search_error_comes_out(model):
    def boom(ids, scores):
        raise RuntimeError("beam boom")

    with pytest.raises(RuntimeError, match="beam boom"):
        model.generate(PROMPTS[0], max_new_tokens=4, num_beams=3, logits_processor=boom)


def test_an_error_on_a_draft_row_leaves_no_bad_cache(model):
    """A processor that raises on a draft row (prompt lookup) stops its sequence part way
    through a step, its cache holding more positions than its tokens: the cache is dropped,
    not kept for prefix caching, and a later request with the same prompt gets the tokens it
    gets alone."""
    prompt = "a b c d a b c d a b c d a b c"
    n_prompt = len(ids_of(model, prompt))
    rows = []

    def fails_on_a_draft_row(ids, scores):
        rows.append(len(ids))
        if len(rows) >= 2 and rows[-1] == rows[-2] + 1 and len(ids) > n_prompt + 2:  # a draft row
            raise KeyError("draft row")

    kw = dict(max_new_tokens=20, prompt_lookup_num_tokens=4)
    with pygpt.Batcher(model, prefix_cache=4) as batcher:
        with pytest.raises(KeyError, match="draft row"):
            batcher.generate(prompt, logits_processor=fails_on_a_draft_row, **kw)
        again = batcher.generate(prompt, **kw)
        assert again.timings.cached_tokens == 0  # nothing was kept of the failed one
        assert again.tokens == model.generate(prompt, **kw).tokens
