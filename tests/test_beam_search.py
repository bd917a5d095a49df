"""Beam search (num_beams > 1) and min_new_tokens: parity with transformers' beam search
(tokens, sequences_scores, finished hypotheses, length_penalty, early_stopping), the logits
processors on log-probabilities, batches, threads, logprobs (which check that the KV caches
are forked and reordered with the beams), echo, the context end, bad arguments and the CLI."""

import math
import os
import subprocess
import sys

import numpy as np
import pytest

import pygpt
import pygpt.convert
from pygpt import generation

torch = pytest.importorskip("torch")

HERE = os.path.dirname(os.path.abspath(__file__))
GPT2_TOKENIZER = os.path.join(HERE, "data", "gpt2-tokenizer")
EOT = 50256

# The "tiny" shape (2 layers, n_embd 32, n_ctx 64, the full vocabulary) with larger random
# weights: the default initializer_range of 0.02 gives an almost flat next-token distribution
# on which every beam repeats one token; 0.3 gives varied beams, finished hypotheses that
# matter, and log-prob gaps far above float rounding (no near-ties between candidates).
SHARP_SHAPE = dict(n_layer=2, n_head=2, n_embd=32, n_positions=64, vocab_size=50257, initializer_range=0.3)
SHARP_SEED = 5

# (prompt, position in transformers' best unconstrained 4-beam result of the token that becomes
# the stop token). The id prompts were found to make early_stopping=False and "never" differ.
CASES = [
    ("Hello, my dog is", 3),
    ("The quick brown fox jumps over the lazy dog because", 3),
    ("1 2 3", 3),
    ([34013, 18993, 29395, 32022, 38331, 46819, 44518], 2),
    ([5482, 24138, 14426, 17099, 38353, 10917], 4),
]
MAX_NEW = 10
NUM_BEAMS = [2, 4]
LENGTH_PENALTIES = [1.0, 0.0, 2.0, -0.5]
EARLY_STOPPING = [False, True, "never"]


# -- fixtures and helpers -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sharp(tmp_path_factory):
    """(transformers model, pygpt folder with the GPT-2 tokenizer)."""
    from conftest import make_hf_model

    base = tmp_path_factory.mktemp("beam_sharp")
    hf_model = make_hf_model(str(base / "hf"), seed=SHARP_SEED, **SHARP_SHAPE)
    pygpt.convert.convert(str(base / "hf"), str(base / "pygpt"), tokenizer=GPT2_TOKENIZER)
    return hf_model, str(base / "pygpt")


@pytest.fixture(scope="module")
def model(sharp):
    return pygpt.load(sharp[1])


@pytest.fixture(scope="module")
def hf(sharp):
    return sharp[0]


def hf_beam(hf_model, ids, max_new_tokens, num_beams, eos, *, length_penalty=1.0, early_stopping=False,
            num_return_sequences=1, **kw):
    """transformers' beam search: [(generated ids, sequences_score)] best first. A sequence's
    generated length is the number of steps in its beam_indices (shorter sequences are padded)."""
    with torch.no_grad():
        out = hf_model.generate(torch.tensor([list(ids)]), max_new_tokens=max_new_tokens, num_beams=num_beams,
                                do_sample=False, length_penalty=length_penalty, early_stopping=early_stopping,
                                num_return_sequences=num_return_sequences, eos_token_id=list(eos),
                                pad_token_id=EOT, output_scores=True, return_dict_in_generate=True, **kw)
    res = []
    for i in range(num_return_sequences):
        n = int((out.beam_indices[i] >= 0).sum())
        res.append((out.sequences[i, len(ids):len(ids) + n].tolist(), float(out.sequences_scores[i])))
    return res


def hf_greedy(hf_model, ids, max_new_tokens, eos, **kw):
    with torch.no_grad():
        out = hf_model.generate(torch.tensor([list(ids)]), max_new_tokens=max_new_tokens, do_sample=False,
                                num_beams=1, pad_token_id=EOT, eos_token_id=list(eos), **kw)
    seq = out[0, len(ids):].tolist()
    for i, t in enumerate(seq):  # cut after the first end token: the rest is padding
        if t in eos:
            return seq[:i + 1]
    return seq


def as_list(out, n):
    """The outputs of one prompt as a list, checking the shape generate gives."""
    if n == 1:
        assert isinstance(out, generation.GenerationOutput), type(out)
        return [out]
    assert isinstance(out, list) and len(out) == n, out
    assert all(isinstance(o, generation.GenerationOutput) for o in out)
    return out


def expected_reason(tokens, stop_ids, ignore_eos=False):
    if tokens and tokens[-1] == EOT and not ignore_eos:
        return "eos"
    if tokens and tokens[-1] in stop_ids:
        return "stop"
    return "length"


def check_same_as_hf(model, outs, ref, stop_ids=(), ignore_eos=False, what=""):
    assert [o.tokens for o in outs] == [r[0] for r in ref], what
    for o, (tokens, score) in zip(outs, ref):
        assert isinstance(o.score, float), (what, o.score)
        assert o.score == pytest.approx(score, rel=1e-4, abs=1e-6), (what, tokens)
        reason = expected_reason(tokens, stop_ids, ignore_eos)
        assert o.finish_reason == reason, (what, tokens)
        body = tokens[:-1] if reason in ("eos", "stop") else tokens
        assert o.text == model.tokenizer.decode(body), what
    scores = [o.score for o in outs]
    assert scores == sorted(scores, reverse=True), what  # best first


def prompt_ids(model, prompt):
    return model.tokenizer.encode(prompt) if isinstance(prompt, str) else list(prompt)


@pytest.fixture(scope="module")
def cases(hf, model):
    """[(prompt, prompt ids, stop token)]: the stop token is one transformers' unconstrained
    search produces early, so that passing it as an end token finishes hypotheses early."""
    out = []
    for prompt, pos in CASES:
        ids = prompt_ids(model, prompt)
        best = hf_beam(hf, ids, MAX_NEW, 4, [EOT])[0][0]
        assert len(best) == MAX_NEW and EOT not in best[:pos + 1]
        out.append((prompt, ids, best[pos]))
    return out


@pytest.fixture(scope="module")
def hf_grid(hf, cases):
    """transformers' results for every (num_beams, length_penalty, early_stopping) and case, with
    num_return_sequences = num_beams. transformers' search does not depend on
    num_return_sequences (it only slices the finished beams at the end), so the results for
    num_return_sequences = 1 are the first of these."""
    grid = {}
    for nb in NUM_BEAMS:
        for lp in LENGTH_PENALTIES:
            for es in EARLY_STOPPING:
                grid[nb, lp, es] = [hf_beam(hf, ids, MAX_NEW, nb, [EOT, stop], length_penalty=lp, early_stopping=es,
                                            num_return_sequences=nb) for _, ids, stop in cases]
    return grid


@pytest.fixture(scope="module")
def our_grid(model, cases):
    """Our results for the grid of hf_grid, num_return_sequences = num_beams."""
    return {(nb, lp, es): [as_list(model.generate(prompt, max_new_tokens=MAX_NEW, num_beams=nb, length_penalty=lp,
                                                  early_stopping=es, num_return_sequences=nb, stop_token_ids=[stop]),
                                   nb)
                           for prompt, _, stop in cases]
            for nb in NUM_BEAMS for lp in LENGTH_PENALTIES for es in EARLY_STOPPING}


# -- 1. parity with transformers ------------------------------------------------------------------


@pytest.mark.parametrize("early_stopping", EARLY_STOPPING, ids=str)
@pytest.mark.parametrize("length_penalty", LENGTH_PENALTIES)
@pytest.mark.parametrize("num_beams", NUM_BEAMS)
@pytest.mark.parametrize("all_sequences", [False, True], ids=["best", "all"])
def test_beam_search_matches_transformers(model, cases, hf_grid, our_grid, num_beams, length_penalty,
                                          early_stopping, all_sequences):
    setting = num_beams, length_penalty, early_stopping
    for i, ((prompt, ids, stop), ref) in enumerate(zip(cases, hf_grid[setting])):
        if all_sequences:
            outs = our_grid[setting][i]
        else:
            outs = as_list(model.generate(prompt, max_new_tokens=MAX_NEW, num_beams=num_beams,
                                          length_penalty=length_penalty, early_stopping=early_stopping,
                                          stop_token_ids=[stop]), 1)
            ref = ref[:1]
        check_same_as_hf(model, outs, ref, [stop], what=(prompt, stop))
        assert all(o.prompt_tokens == ids for o in outs)


def test_parity_grid_exercises_finished_hypotheses(our_grid):
    """The parity grid is not all full-length beams: hypotheses that finish early on the stop
    token are returned, and early_stopping and length_penalty change results."""
    res = {setting: [[(tuple(o.tokens), o.finish_reason) for o in group] for group in groups]
           for setting, groups in our_grid.items()}
    best_stops = sum(group[0][1] == "stop" for r in res.values() for group in r)
    reasons = [reason for r in res.values() for group in r for _, reason in group]
    assert best_stops >= 10, best_stops           # the best beam often is a finished hypothesis
    assert reasons.count("length") >= 50 and reasons.count("stop") >= 50, (reasons.count("length"),
                                                                          reasons.count("stop"))
    # stopped sequences of several lengths, some well before max_new_tokens
    stop_lengths = {len(t) for r in res.values() for group in r for t, reason in group if reason == "stop"}
    assert min(stop_lengths) <= 3 and len(stop_lengths) >= 4, stop_lengths
    for nb in NUM_BEAMS:
        assert any(res[nb, lp, False] != res[nb, lp, True] for lp in LENGTH_PENALTIES)
        assert any(res[nb, lp, False] != res[nb, lp, "never"] for lp in LENGTH_PENALTIES)
        assert res[nb, 1.0, False] != res[nb, 0.0, False] != res[nb, 2.0, False]


def test_fewer_return_sequences_are_the_best_beams(model, cases):
    prompt, _, stop = cases[2]
    four = model.generate(prompt, max_new_tokens=MAX_NEW, num_beams=4, num_return_sequences=4, stop_token_ids=[stop])
    two = model.generate(prompt, max_new_tokens=MAX_NEW, num_beams=4, num_return_sequences=2, stop_token_ids=[stop])
    one = model.generate(prompt, max_new_tokens=MAX_NEW, num_beams=4, stop_token_ids=[stop])
    assert len({tuple(o.tokens) for o in four}) == 4  # distinct hypotheses
    assert [(o.tokens, o.score) for o in two] == [(o.tokens, o.score) for o in four[:2]]
    assert (one.tokens, one.score, one.finish_reason) == (four[0].tokens, four[0].score, four[0].finish_reason)


def test_beam_search_matches_transformers_124m_shape(hf_model_factory):
    hf_model, _, path = hf_model_factory("gpt2")  # converted without a tokenizer: prompt as ids
    m = pygpt.load(path)
    ids = pygpt.Tokenizer.from_dir(GPT2_TOKENIZER).encode("Once upon a time, there was")
    ref = hf_beam(hf_model, ids, 5, 3, [EOT], num_return_sequences=3)
    outs = m.generate(ids, max_new_tokens=5, num_beams=3, num_return_sequences=3)
    assert [o.tokens for o in outs] == [r[0] for r in ref]
    for o, (tokens, score) in zip(outs, ref):
        assert o.score == pytest.approx(score, rel=1e-4)
        assert o.finish_reason == expected_reason(tokens, ())


@pytest.mark.parametrize("seed", range(3))
def test_random_settings_match_transformers(model, hf, seed):
    """Random prompts (ids), beam counts, lengths, penalties, early_stopping, several stop tokens
    and processors, against transformers."""
    import random

    rng = random.Random(seed)
    for _ in range(10):
        ids = [rng.randrange(EOT) for _ in range(rng.randrange(1, 20))]
        nb = rng.choice([2, 3, 5, 8])
        nrs = rng.randint(1, nb)
        mx = rng.randrange(1, 14)
        unconstrained = hf_beam(hf, ids, mx, nb, [EOT])[0][0]
        stops = [t for t in dict.fromkeys(rng.sample(unconstrained, min(len(unconstrained), rng.randrange(3))))
                 if t != EOT]
        ours = dict(length_penalty=rng.choice([1.0, 0.0, 2.0, -0.5, 0.7, -2.0]),
                    early_stopping=rng.choice([False, True, "never"]))
        theirs = dict(ours)
        if rng.random() < 0.3:
            ours["repetition_penalty"] = theirs["repetition_penalty"] = rng.choice([1.2, 2.0, 0.8])
        if rng.random() < 0.3:
            ours["no_repeat_ngram_size"] = theirs["no_repeat_ngram_size"] = rng.choice([1, 2, 3])
        if rng.random() < 0.3:
            ours["logit_bias"] = {rng.choice(unconstrained): rng.uniform(-3, 3), EOT: rng.uniform(0, 7)}
            theirs["sequence_bias"] = {(t,): b for t, b in ours["logit_bias"].items()}
        if rng.random() < 0.3:
            ours["min_new_tokens"] = theirs["min_new_tokens"] = rng.randrange(6)
        ref = hf_beam(hf, ids, mx, nb, [EOT] + stops, num_return_sequences=nrs, **theirs)
        outs = as_list(model.generate(ids, max_new_tokens=mx, num_beams=nb, num_return_sequences=nrs,
                                      stop_token_ids=stops, **ours), nrs)
        check_same_as_hf(model, outs, ref, stops, what=(ids, nb, nrs, mx, stops, ours))


# -- 2. processors and min_new_tokens -------------------------------------------------------------


PROCESSORS = ["repetition_penalty", "no_repeat_ngram_size", "logit_bias", "all_three", "min_new_tokens",
              "min_new_tokens_all_three", "sequence_bias", "bad_words_ids"]


def processor_options(name, best):
    """(pygpt options, transformers options) for a processor case. best: the unconstrained best
    beam's tokens, whose first ones are biased down or banned, so that the processor changes
    the search."""
    bias = {best[0]: -3.0, 11: 1.5, EOT: 2.0}
    seq_bias = {(t,): b for t, b in bias.items()}
    pair = (best[1], best[2])  # a two-token sequence the search generates
    assert EOT not in pair
    return {
        "repetition_penalty": (dict(repetition_penalty=1.5), dict(repetition_penalty=1.5)),
        "no_repeat_ngram_size": (dict(no_repeat_ngram_size=1), dict(no_repeat_ngram_size=1)),
        "logit_bias": (dict(logit_bias=bias), dict(sequence_bias=seq_bias)),
        "all_three": (dict(repetition_penalty=1.3, no_repeat_ngram_size=3, logit_bias=bias),
                      dict(repetition_penalty=1.3, no_repeat_ngram_size=3, sequence_bias=seq_bias)),
        "min_new_tokens": (dict(min_new_tokens=4), dict(min_new_tokens=4)),
        "min_new_tokens_all_three": (dict(min_new_tokens=3, repetition_penalty=1.3, no_repeat_ngram_size=2,
                                          logit_bias=bias),
                                     dict(min_new_tokens=3, repetition_penalty=1.3, no_repeat_ngram_size=2,
                                          sequence_bias=seq_bias)),
        "sequence_bias": (dict(sequence_bias={pair: -4.0, (best[0],): -1.0, (best[3], 11): 2.0}),
                          dict(sequence_bias={pair: -4.0, (best[0],): -1.0, (best[3], 11): 2.0})),
        "bad_words_ids": (dict(bad_words_ids=[list(pair), [best[3]]]), dict(bad_words_ids=[list(pair), [best[3]]])),
    }[name]


@pytest.mark.parametrize("num_beams", [2, 4])
@pytest.mark.parametrize("name", PROCESSORS)
def test_processors_with_beams_match_transformers(model, hf, cases, name, num_beams):
    changed = 0
    lp = 0.0  # the sum of log-probs: finished short hypotheses compete with the long ones
    for prompt, ids, stop in cases:
        plain = model.generate(prompt, max_new_tokens=MAX_NEW, num_beams=num_beams, num_return_sequences=num_beams,
                               stop_token_ids=[stop], length_penalty=lp)
        free = model.generate(prompt, max_new_tokens=MAX_NEW, num_beams=num_beams, length_penalty=lp)
        ours, theirs = processor_options(name, free.tokens)
        ref = hf_beam(hf, ids, MAX_NEW, num_beams, [EOT, stop], num_return_sequences=num_beams, length_penalty=lp,
                      **theirs)
        outs = model.generate(prompt, max_new_tokens=MAX_NEW, num_beams=num_beams, num_return_sequences=num_beams,
                              stop_token_ids=[stop], length_penalty=lp, **ours)
        check_same_as_hf(model, outs, ref, [stop], what=(prompt, name))
        changed += [o.tokens for o in outs] != [o.tokens for o in plain]
        if "min_new_tokens" in name:
            m = ours["min_new_tokens"]
            assert all(len(o.tokens) > m or o.finish_reason == "length" for o in outs)
    assert changed >= 2, changed  # the processor did something


def test_min_new_tokens_changes_beams_that_stop_early(model, cases):
    """Without min_new_tokens some returned hypotheses finish within 4 tokens; with it none do."""
    early = 0
    for prompt, _, stop in cases:
        kw = dict(max_new_tokens=MAX_NEW, num_beams=4, num_return_sequences=4, stop_token_ids=[stop],
                  length_penalty=0.0)
        early += sum(o.finish_reason == "stop" and len(o.tokens) <= 4 for o in model.generate(prompt, **kw))
        for o in model.generate(prompt, min_new_tokens=4, **kw):
            assert stop not in o.tokens[:4] and EOT not in o.tokens[:4]
            assert o.finish_reason == "length" or len(o.tokens) >= 5
    assert early >= 3, early


@pytest.mark.parametrize("bias", [5.0, 6.0])
@pytest.mark.parametrize("min_new_tokens", [0, 3])
def test_eos_hypotheses_match_transformers(model, hf, cases, bias, min_new_tokens):
    """<|endoftext|> made likely with logit_bias: beams finish with "eos" (transformers applies
    sequence_bias to the log-probabilities in beam search, as our logit_bias with beams)."""
    reasons = []
    for prompt, ids, _ in cases[:3]:
        ref = hf_beam(hf, ids, 8, 3, [EOT], num_return_sequences=3, sequence_bias={(EOT,): bias},
                      min_new_tokens=min_new_tokens)
        outs = model.generate(prompt, max_new_tokens=8, num_beams=3, num_return_sequences=3, logit_bias={EOT: bias},
                              min_new_tokens=min_new_tokens)
        check_same_as_hf(model, outs, ref, what=prompt)
        reasons += [o.finish_reason for o in outs]
        assert all(EOT not in o.tokens[:min_new_tokens] for o in outs)
    assert "eos" in reasons


def test_ignore_eos_with_beams_matches_transformers(model, hf, cases):
    """ignore_eos: <|endoftext|> is an ordinary token, only stop_token_ids end hypotheses."""
    saw_eot = False
    for prompt, ids, stop in cases[:3]:
        ref = hf_beam(hf, ids, 8, 3, [stop], num_return_sequences=3, sequence_bias={(EOT,): 6.0})
        outs = model.generate(prompt, max_new_tokens=8, num_beams=3, num_return_sequences=3, logit_bias={EOT: 6.0},
                              ignore_eos=True, stop_token_ids=[stop])
        check_same_as_hf(model, outs, ref, [stop], ignore_eos=True, what=prompt)
        saw_eot |= any(EOT in o.tokens for o in outs)
    assert saw_eot  # <|endoftext|> was generated and did not end a hypothesis


@pytest.fixture(scope="module")
def hf_tokenizer():
    import json

    from transformers import GPT2TokenizerFast

    with open(os.path.join(GPT2_TOKENIZER, "vocab.json"), encoding="utf-8") as f:
        vocab = json.load(f)
    with open(os.path.join(GPT2_TOKENIZER, "merges.txt"), encoding="utf-8") as f:
        merges = [tuple(line.split()) for line in f.read().splitlines()[1:] if line]
    tok = GPT2TokenizerFast(vocab=vocab, merges=merges)
    assert len(tok.get_vocab()) == 50257
    return tok


@pytest.mark.parametrize("num_beams", [2, 4])
def test_stop_strings_with_beams_match_transformers(model, hf, hf_tokenizer, cases, num_beams):
    """A stop string ends a beam as transformers' stop_strings do (the hypothesis keeps the
    token that completes it; its text is cut before it)."""
    stopped = 0
    for prompt, ids, _ in cases:
        free = hf_beam(hf, ids, MAX_NEW, num_beams, [EOT], num_return_sequences=num_beams)
        # a stop string that one beam completes in its third token: the last 2 characters of it
        # and a character of the token before, so that it spans two tokens
        text = model.tokenizer.decode(free[-1][0][:3])
        stop = text[-3:]
        assert stop.strip() and stop not in model.tokenizer.decode(ids)[-8:]
        ref = hf_beam(hf, ids, MAX_NEW, num_beams, [EOT], num_return_sequences=num_beams, stop_strings=[stop],
                      tokenizer=hf_tokenizer)
        outs = model.generate(prompt, max_new_tokens=MAX_NEW, num_beams=num_beams, num_return_sequences=num_beams,
                              stop=[stop])
        assert [o.tokens for o in outs] == [r[0] for r in ref], prompt
        for o, (_, score) in zip(outs, ref):
            assert o.score == pytest.approx(score, rel=1e-4, abs=1e-6)
            full = model.tokenizer.decode(o.tokens)
            if o.finish_reason == "stop":
                stopped += 1
                assert stop in full and o.text == full[:full.index(stop)]
            else:
                assert o.finish_reason == "length" and stop not in full and o.text == full
    assert stopped >= 3


@pytest.mark.filterwarnings("ignore:Unfeasible length constraints")
def test_min_new_tokens_greedy_matches_transformers(model, hf, cases):
    stopped = 0
    for prompt, ids, _ in cases:
        greedy = model.generate(prompt, max_new_tokens=MAX_NEW)
        stop = greedy.tokens[1]  # without min_new_tokens greedy stops after 2 tokens (or earlier)
        short = model.generate(prompt, max_new_tokens=MAX_NEW, stop_token_ids=[stop])
        assert short.finish_reason == "stop" and len(short.tokens) <= 2
        for m in (1, 2, 4, 20):
            out = model.generate(prompt, max_new_tokens=MAX_NEW, stop_token_ids=[stop], min_new_tokens=m)
            ref = hf_greedy(hf, ids, MAX_NEW, [EOT, stop], min_new_tokens=m)
            assert out.tokens == ref, (prompt, m)
            assert out.finish_reason == expected_reason(ref, [stop])
            assert out.score is None
            assert stop not in out.tokens[:m]
            stopped += out.finish_reason == "stop"
        # eos made certain, then banned for the first m tokens
        for m in (0, 3):
            out = model.generate(prompt, max_new_tokens=MAX_NEW, logit_bias={EOT: 100.0}, min_new_tokens=m)
            ref = hf_greedy(hf, ids, MAX_NEW, [EOT], sequence_bias={(EOT,): 100.0}, min_new_tokens=m)
            assert out.tokens == ref and len(ref) == m + 1 and out.finish_reason == "eos"
    assert stopped >= 2


def test_min_new_tokens_when_sampling(model):
    kw = dict(max_new_tokens=12, temperature=1.0, seed=7)
    for m in (0, 1, 5):
        out = model.generate("Hello", logit_bias={EOT: 100.0}, min_new_tokens=m, **kw)
        assert len(out.tokens) == m + 1 and out.tokens[-1] == EOT and out.finish_reason == "eos"
        assert EOT not in out.tokens[:m]
        out = model.generate("Hello", logit_bias={42: 100.0}, stop_token_ids=[42], min_new_tokens=m, **kw)
        assert len(out.tokens) == m + 1 and out.tokens[-1] == 42 and out.finish_reason == "stop"
    # more than max_new_tokens: runs to the length
    out = model.generate("Hello", logit_bias={EOT: 100.0}, min_new_tokens=50, **kw)
    assert out.finish_reason == "length" and len(out.tokens) == 12 and EOT not in out.tokens


def test_min_new_tokens_leaves_eos_alone_with_ignore_eos(model):
    """With ignore_eos, <|endoftext|> is not an end token, so min_new_tokens does not ban it."""
    out = model.generate("Hello", max_new_tokens=5, logit_bias={EOT: 100.0}, ignore_eos=True, min_new_tokens=3)
    assert out.tokens == [EOT] * 5 and out.finish_reason == "length"
    out = model.generate("Hello", max_new_tokens=5, num_beams=2, logit_bias={EOT: 100.0}, ignore_eos=True,
                         min_new_tokens=3)
    assert out.tokens[0] == EOT and len(out.tokens) == 5 and out.finish_reason == "length"


# -- 3. batches, threads, num_beams=1 -------------------------------------------------------------


def key(o):
    return (o.tokens, o.score, o.finish_reason, o.text)


@pytest.mark.parametrize("nrs", [1, 3])
def test_batch_equals_each_prompt_alone(model, cases, nrs):
    prompts = [c[0] for c in cases]
    stops = [c[2] for c in cases]
    kw = dict(max_new_tokens=MAX_NEW, num_beams=3, num_return_sequences=nrs, stop_token_ids=stops,
              length_penalty=0.5, repetition_penalty=1.2)
    alone = [as_list(model.generate(p, **kw), nrs) for p in prompts]
    batch = model.generate(prompts, **kw)
    assert isinstance(batch, list) and len(batch) == len(prompts)
    for p, a, b in zip(prompts, alone, batch):
        b = [b] if nrs == 1 else b
        assert isinstance(b, list) and len(b) == nrs
        assert [key(o) for o in b] == [key(o) for o in a], p
    assert any(o.finish_reason == "stop" for a in alone for o in a)
    # the same prompt twice in a batch gives the same beams twice
    twice = model.generate([prompts[1], prompts[1]], max_new_tokens=MAX_NEW, num_beams=3)
    assert key(twice[0]) == key(twice[1]) == key(model.generate(prompts[1], max_new_tokens=MAX_NEW, num_beams=3))


def test_beams_are_independent_of_thread_count(sharp, cases):
    one = pygpt.load(sharp[1], n_threads=1)
    two = pygpt.load(sharp[1], n_threads=2)
    assert (one.n_threads, two.n_threads) == (1, 2)
    prompts = [c[0] for c in cases]
    kw = dict(max_new_tokens=MAX_NEW, num_beams=4, num_return_sequences=4, stop_token_ids=[c[2] for c in cases],
              logprobs=True)
    a = one.generate(prompts, **kw)
    b = two.generate(prompts, **kw)
    assert [[key(o) + (o.logprobs,) for o in g] for g in a] == [[key(o) + (o.logprobs,) for o in g] for g in b]


@pytest.mark.parametrize("options", [
    dict(),
    dict(repetition_penalty=1.5, no_repeat_ngram_size=2),
    dict(logit_bias={11: 3.0, 13: -2.0}, min_new_tokens=2),
    dict(length_penalty=2.0, early_stopping=True),
    dict(length_penalty=-0.5, early_stopping="never", logprobs=True),
], ids=["plain", "penalties", "bias", "length_penalty", "never"])
def test_one_beam_is_greedy(model, cases, options):
    for prompt, _, stop in cases[:3]:
        greedy_opts = {k: v for k, v in options.items() if k not in ("length_penalty", "early_stopping")}
        greedy = model.generate(prompt, max_new_tokens=MAX_NEW, stop_token_ids=[stop], **greedy_opts)
        one = model.generate(prompt, max_new_tokens=MAX_NEW, stop_token_ids=[stop], num_beams=1, **options)
        assert (one.tokens, one.text, one.finish_reason, one.logprobs) == \
               (greedy.tokens, greedy.text, greedy.finish_reason, greedy.logprobs)
        assert one.score is None and greedy.score is None


def test_beams_differ_from_greedy(model, cases):
    """Sanity for the parity tests: beam search finds other sequences than greedy here."""
    differ = sum(model.generate(p, max_new_tokens=MAX_NEW, num_beams=4).tokens
                 != model.generate(p, max_new_tokens=MAX_NEW).tokens for p, _, _ in cases)
    assert differ >= 2


# -- 4. logprobs: the beams' KV caches ------------------------------------------------------------


def log_softmax(x):
    x = np.asarray(x, dtype=np.float64)
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


def model_logprobs(model, ids, tokens):
    """log-probability of each of tokens after ids, from one forward pass over ids + tokens."""
    lp = log_softmax(model.logits(list(ids) + list(tokens)))
    return [float(lp[len(ids) - 1 + i, t]) for i, t in enumerate(tokens)]


@pytest.mark.parametrize("num_beams, length_penalty, early_stopping", [
    (2, 1.0, False), (4, 1.0, False), (4, 2.0, "never"), (4, 0.0, True), (5, -0.5, False)])
def test_logprobs_of_every_beam_match_the_model(model, cases, num_beams, length_penalty, early_stopping):
    n_tokens = 0
    for prompt, ids, stop in cases:
        outs = model.generate(prompt, max_new_tokens=MAX_NEW, num_beams=num_beams, num_return_sequences=num_beams,
                              length_penalty=length_penalty, early_stopping=early_stopping, stop_token_ids=[stop],
                              logprobs=True)
        for o in outs:
            assert len(o.logprobs) == len(o.tokens)
            want = model_logprobs(model, ids, o.tokens)
            np.testing.assert_allclose(o.logprobs, want, atol=1e-4, err_msg=str((prompt, o.tokens)))
            # without processors the score is the length-normalised sum of these
            assert o.score == pytest.approx(sum(want) / len(o.tokens) ** length_penalty, rel=1e-4, abs=1e-5)
            n_tokens += len(o.tokens)
        # the logprobs option does not change the search
        plain = model.generate(prompt, max_new_tokens=MAX_NEW, num_beams=num_beams, num_return_sequences=num_beams,
                               length_penalty=length_penalty, early_stopping=early_stopping, stop_token_ids=[stop])
        assert [key(o) for o in plain] == [key(o) for o in outs]
    assert n_tokens >= 50


def test_logprobs_are_raw_with_processors(model, cases):
    """logprobs are under the model's distribution, before repetition_penalty / bias / min_new_tokens;
    the score is the processed one (so it differs from the raw sum)."""
    differs = 0
    for prompt, ids, stop in cases[:3]:
        first = model.generate(prompt, max_new_tokens=1).tokens[0]  # biased up: the beams take it
        outs = model.generate(prompt, max_new_tokens=MAX_NEW, num_beams=3, num_return_sequences=3,
                              stop_token_ids=[stop], repetition_penalty=1.5, logit_bias={first: 1.0},
                              min_new_tokens=2, logprobs=True)
        for o in outs:
            want = model_logprobs(model, ids, o.tokens)
            np.testing.assert_allclose(o.logprobs, want, atol=1e-4)
            differs += abs(o.score - sum(want) / len(o.tokens)) > 1e-3
    assert differs >= 3


def test_top_logprobs_with_beams(model, cases):
    prompt, ids, stop = cases[1]
    outs = model.generate(prompt, max_new_tokens=6, num_beams=3, num_return_sequences=3, top_logprobs=3)
    for o in outs:
        lp = log_softmax(model.logits(ids + o.tokens))
        assert len(o.top_logprobs) == len(o.tokens)
        for i, row in enumerate(o.top_logprobs):
            pos = lp[len(ids) - 1 + i]
            best = np.argsort(-pos)[:3]
            assert [t for t, _ in row] == best.tolist()
            np.testing.assert_allclose([v for _, v in row], pos[best], atol=1e-4)


# -- 5. echo, lengths, the context -----------------------------------------------------------------


def test_echo_with_beams(model, cases):
    prompt, ids, stop = cases[2]
    kw = dict(max_new_tokens=MAX_NEW, num_beams=3, num_return_sequences=3, stop_token_ids=[stop], logprobs=True)
    plain = model.generate(prompt, **kw)
    echoed = model.generate(prompt, echo=True, **kw)
    prompt_lps = model_logprobs(model, ids[:1], ids[1:])
    for p, e in zip(plain, echoed):
        assert e.tokens == ids + p.tokens
        assert e.text == prompt + p.text
        assert e.score == p.score and e.finish_reason == p.finish_reason
        assert e.logprobs[0] is None and len(e.logprobs) == len(e.tokens)
        np.testing.assert_allclose(e.logprobs[1:len(ids)], prompt_lps, atol=1e-4)
        assert e.logprobs[len(ids):] == p.logprobs


@pytest.mark.parametrize("nrs", [1, 2])
def test_max_new_tokens_zero_with_beams(model, nrs):
    outs = as_list(model.generate("Hello", max_new_tokens=0, num_beams=2, num_return_sequences=nrs), nrs)
    for o in outs:
        assert o.tokens == [] and o.text == "" and o.finish_reason == "length"


@pytest.mark.parametrize("max_new_tokens", [1, 2])
def test_very_short_beams_match_transformers(model, hf, cases, max_new_tokens):
    for prompt, ids, stop in cases:
        ref = hf_beam(hf, ids, max_new_tokens, 3, [EOT, stop], num_return_sequences=3)
        outs = model.generate(prompt, max_new_tokens=max_new_tokens, num_beams=3, num_return_sequences=3,
                              stop_token_ids=[stop])
        check_same_as_hf(model, outs, ref, [stop], what=prompt)


def test_beams_stop_at_the_context(model, hf):
    n_ctx = model.config["n_ctx"]
    ids = [(7919 * i) % 50000 + 100 for i in range(n_ctx - 5)]
    outs = model.generate(ids, max_new_tokens=30, num_beams=3, num_return_sequences=3)
    assert all(len(o.tokens) == 5 and o.finish_reason == "length" for o in outs)
    # as transformers with max_new_tokens cut to what the context holds
    check_same_as_hf(model, outs, hf_beam(hf, ids, 5, 3, [EOT], num_return_sequences=3))
    full = model.generate(ids + [11] * 5, max_new_tokens=10, num_beams=2, num_return_sequences=2)
    assert all(o.tokens == [] and o.finish_reason == "length" for o in full)
    # truncate="left" keeps the end of the prompt and leaves room for max_new_tokens
    long = model.generate(ids + [11] * 20, max_new_tokens=4, num_beams=2, truncate="left")
    assert len(long.prompt_tokens) == n_ctx - 4 and len(long.tokens) == 4


def test_a_huge_max_new_tokens_stops_at_the_context(model):
    outs = model.generate("Hello", max_new_tokens=2**63 - 1, num_beams=2, num_return_sequences=2)
    n_ctx, n_prompt = model.config["n_ctx"], len(outs[0].prompt_tokens)
    assert all(o.finish_reason in ("length", "eos") and len(o.tokens) <= n_ctx - n_prompt for o in outs)
    assert outs[0].finish_reason == "eos" or len(outs[0].tokens) == n_ctx - n_prompt


def test_greedy_output_has_no_score(model):
    assert model.generate("Hello", max_new_tokens=3).score is None
    assert model.generate("Hello", max_new_tokens=3, temperature=1.0, seed=1).score is None


# -- errors ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("kw, exc, match", [
    (dict(num_beams=2.0), TypeError, "num_beams"),
    (dict(num_beams=True), TypeError, "num_beams"),
    (dict(num_beams="2"), TypeError, "num_beams"),
    (dict(num_beams=None), TypeError, "num_beams"),
    (dict(num_beams=0), ValueError, "num_beams"),
    (dict(num_beams=-2), ValueError, "num_beams"),
    (dict(num_beams=2, temperature=0.7), ValueError, "temperature|sampl"),
    (dict(num_beams=2, num_return_sequences=3), ValueError, "num_return_sequences"),
    (dict(num_beams=2, length_penalty=math.nan), ValueError, "length_penalty"),
    (dict(num_beams=2, length_penalty=math.inf), ValueError, "length_penalty"),
    (dict(num_beams=2, length_penalty=-math.inf), ValueError, "length_penalty"),
    (dict(num_beams=2, length_penalty="1.0"), TypeError, "length_penalty"),
    (dict(num_beams=2, length_penalty=[1.0]), TypeError, "length_penalty"),
    (dict(num_beams=2, early_stopping="always"), ValueError, "early_stopping"),
    (dict(num_beams=2, early_stopping="true"), ValueError, "early_stopping"),
    (dict(num_beams=2, early_stopping=2), ValueError, "early_stopping"),
    (dict(min_new_tokens=-1), ValueError, "min_new_tokens"),
    (dict(min_new_tokens=1.5), TypeError, "min_new_tokens"),
    (dict(min_new_tokens="3"), TypeError, "min_new_tokens"),
    (dict(num_beams=2, min_new_tokens=-3), ValueError, "min_new_tokens"),
])
def test_bad_beam_arguments(model, kw, exc, match):
    with pytest.raises(exc, match=match):
        model.generate("hi", max_new_tokens=2, **kw)


def test_stream_has_no_beams(model):
    with pytest.raises(ValueError, match="beam"):
        model.stream("hi", max_new_tokens=2, num_beams=2)


def test_accepted_edge_values(model):
    # numpy integers are integers; num_return_sequences == num_beams is allowed; temperature 0 is greedy
    outs = model.generate("hi", max_new_tokens=2, num_beams=np.int64(2), num_return_sequences=2, temperature=0.0)
    assert len(outs) == 2 and all(isinstance(o.score, float) for o in outs)
    out = model.generate("hi", max_new_tokens=2, min_new_tokens=np.int32(1))
    assert len(out.tokens) == 2
    for lp in (0, 3, -1.5, np.float32(0.5)):
        assert isinstance(model.generate("hi", max_new_tokens=2, num_beams=2, length_penalty=lp).score, float)


# -- CLI ------------------------------------------------------------------------------------------


def run_cli(cmd, *args):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.path.dirname(os.path.dirname(os.path.abspath(pygpt.__file__))) + os.pathsep + \
        env.get("PYTHONPATH", "")
    return subprocess.run(cmd + list(args), capture_output=True, timeout=120, env=env)


def test_cli_beam_search(pygpt_cmd, sharp, model):
    # a prompt whose best beam is not the greedy text, so that the CLI test sees --num-beams
    prompt = next(p for p, _ in CASES if isinstance(p, str)
                  and model.generate(p, max_new_tokens=MAX_NEW, num_beams=3).text
                  != model.generate(p, max_new_tokens=MAX_NEW).text)
    want = model.generate(prompt, max_new_tokens=MAX_NEW, num_beams=3)
    r = run_cli(pygpt_cmd, "generate", "-m", sharp[1], prompt, "--num-beams", "3", "-n", str(MAX_NEW),
                "--temperature", "0")
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode("utf-8") == want.text
    r = run_cli(pygpt_cmd, "generate", "-m", sharp[1], prompt, "--num-beams", "3", "--min-new-tokens", "2",
                "-n", str(MAX_NEW), "--temperature", "0", "--repetition-penalty", "1.5")
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode("utf-8") == model.generate(prompt, max_new_tokens=MAX_NEW, num_beams=3, min_new_tokens=2,
                                                      repetition_penalty=1.5).text


def test_cli_min_new_tokens_greedy(pygpt_cmd, sharp, model):
    prompt = CASES[0][0]
    r = run_cli(pygpt_cmd, "generate", "-m", sharp[1], prompt, "--min-new-tokens", "3", "-n", "8",
                "--temperature", "0")
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode("utf-8") == model.generate(prompt, max_new_tokens=8, min_new_tokens=3).text


def test_cli_bad_num_beams_is_a_one_line_error(pygpt_cmd, sharp):
    r = run_cli(pygpt_cmd, "generate", "-m", sharp[1], "hi", "--num-beams", "0", "-n", "2", "--temperature", "0")
    err = r.stderr.decode()
    assert r.returncode != 0 and "Traceback" not in err, err
    assert "num_beams" in err or "num-beams" in err, err
