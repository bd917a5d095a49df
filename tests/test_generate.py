"""model.generate / model.stream / pygpt.generate on small random GPT-2s converted by pygpt:
parity with transformers' generate, batching, determinism, stop conditions, streaming, Ctrl-C."""

import math
import os
import signal
import threading
import time

import numpy as np
import pytest

import pygpt
from pygpt import generation

torch = pytest.importorskip("torch")

HERE = os.path.dirname(os.path.abspath(__file__))
GPT2_TOKENIZER = os.path.join(HERE, "data", "gpt2-tokenizer")
EOT = 50256

# A model whose context is long enough to generate for a while (the Ctrl-C tests).
LONG_SHAPE = dict(n_layer=2, n_head=4, n_embd=128, n_positions=1024, vocab_size=50257)


def _convert_with_tokenizer(hf_dir, out_dir):
    import pygpt.convert

    pygpt.convert.convert(hf_dir, out_dir, tokenizer=GPT2_TOKENIZER)
    return out_dir


@pytest.fixture(scope="module")
def tiny(hf_model_factory, tmp_path_factory):
    """(transformers model, pygpt folder with the GPT-2 tokenizer) for conftest's "tiny" shape
    (2 layers, n_embd 32, n_ctx 64, the full 50257-token vocabulary)."""
    hf_model, hf_dir, _ = hf_model_factory("tiny")
    return hf_model, _convert_with_tokenizer(hf_dir, str(tmp_path_factory.mktemp("gen_tiny")))


@pytest.fixture(scope="module")
def model(tiny):
    return pygpt.load(tiny[1])


@pytest.fixture(scope="module")
def long_model(tmp_path_factory):
    from conftest import make_hf_model

    base = tmp_path_factory.mktemp("gen_long")
    make_hf_model(str(base / "hf"), seed=3, **LONG_SHAPE)
    return pygpt.load(_convert_with_tokenizer(str(base / "hf"), str(base / "pygpt")))


def hf_greedy(hf_model, prompt_ids, max_new_tokens, **kw):
    with torch.no_grad():
        out = hf_model.generate(torch.tensor([prompt_ids]), max_new_tokens=max_new_tokens, do_sample=False,
                                num_beams=1, pad_token_id=EOT, eos_token_id=EOT, **kw)
    return out[0, len(prompt_ids):].tolist()


PROMPTS = ["Hello, my dog is", "The quick brown fox jumps over the lazy dog because", "1 2 3"]


# -- parity with transformers ---------------------------------------------------------------------


@pytest.mark.parametrize("prompt", PROMPTS)
def test_greedy_matches_transformers(tiny, model, prompt):
    ids = model.tokenizer.encode(prompt)
    out = model.generate(prompt, max_new_tokens=24)
    assert out.tokens == hf_greedy(tiny[0], ids, 24)
    assert out.prompt_tokens == ids
    assert out.finish_reason in ("length", "eos")


def test_greedy_penalties_match_transformers(tiny, model):
    ids = model.tokenizer.encode(PROMPTS[1])
    out = model.generate(ids, max_new_tokens=24, repetition_penalty=1.5, no_repeat_ngram_size=2)
    assert out.tokens == hf_greedy(tiny[0], ids, 24, repetition_penalty=1.5, no_repeat_ngram_size=2)
    plain = model.generate(ids, max_new_tokens=24)
    assert out.tokens != plain.tokens  # the penalties changed something


def test_exponential_decay_length_penalty_matches_transformers(tiny, model):
    ids = model.tokenizer.encode(PROMPTS[0])
    plain = model.generate(ids, max_new_tokens=40)
    out = model.generate(ids, max_new_tokens=40, exponential_decay_length_penalty=(4, 1.6))
    assert out.tokens == hf_greedy(tiny[0], ids, 40, exponential_decay_length_penalty=(4, 1.6))
    assert out.finish_reason == "eos" and len(out.tokens) < len(plain.tokens)  # it made the end come sooner
    # beam search runs it on the log-probs, as transformers does
    beams = model.generate(ids, max_new_tokens=20, num_beams=3, exponential_decay_length_penalty=(2, 1.3))
    with torch.no_grad():
        ref = tiny[0].generate(torch.tensor([ids]), max_new_tokens=20, num_beams=3, do_sample=False,
                               pad_token_id=EOT, eos_token_id=EOT, exponential_decay_length_penalty=(2, 1.3))
    assert beams.tokens == [t for t in ref[0, len(ids):].tolist()][:len(beams.tokens)]


def test_transformers_call_names(tiny, model):
    """A transformers user's generate() call runs as written: do_sample, eos_token_id (which
    replaces the end tokens) and pad_token_id, with transformers' tokens."""
    ids = model.tokenizer.encode(PROMPTS[1])
    plain = model.generate(ids, max_new_tokens=24, ignore_eos=True).tokens
    stop = plain[6]
    for eos in (stop, [stop, EOT], [stop]):
        with torch.no_grad():
            ref = tiny[0].generate(torch.tensor([ids]), max_new_tokens=24, do_sample=False, pad_token_id=EOT,
                                   eos_token_id=eos)[0, len(ids):].tolist()
        out = model.generate(ids, max_new_tokens=24, do_sample=False, pad_token_id=EOT, eos_token_id=eos)
        assert out.tokens == ref[:len(out.tokens)] and out.tokens[-1] == stop and out.finish_reason == "stop"
    # eos_token_id without <|endoftext|> makes it an ordinary token, as in transformers
    ended = model.generate(ids, max_new_tokens=40, logit_bias={EOT: 5.0})
    assert ended.finish_reason == "eos"
    kept = model.generate(ids, max_new_tokens=40, logit_bias={EOT: 5.0}, eos_token_id=[1])
    assert kept.finish_reason == "length" and kept.tokens[:len(ended.tokens)] == ended.tokens
    # do_sample=True: transformers' temperature 1 and top_k 50 unless given
    sampled = model.generate(ids, max_new_tokens=12, do_sample=True, seed=3).tokens
    assert sampled == model.generate(ids, max_new_tokens=12, temperature=1.0, top_k=50, seed=3).tokens
    assert model.generate(ids, max_new_tokens=12, do_sample=True, top_k=0, top_p=0.9, seed=3).tokens == \
        model.generate(ids, max_new_tokens=12, temperature=1.0, top_p=0.9, seed=3).tokens
    assert model.generate(ids, max_new_tokens=12, do_sample=False, temperature=0.9, seed=3).tokens == \
        model.generate(ids, max_new_tokens=12).tokens  # greedy whatever the temperature, as transformers
    saved = model.generation_config
    try:  # the model's defaults come before transformers' own, as in transformers
        model.generation_config = {"temperature": 0.6, "top_k": 5}
        assert model.generate(ids, max_new_tokens=12, do_sample=True, seed=3).tokens == \
            model.generate(ids, max_new_tokens=12, temperature=0.6, top_k=5, seed=3).tokens
        model.generation_config = {"temperature": 0.6}
        assert model.generate(ids, max_new_tokens=12, do_sample=False, seed=3).tokens == \
            model.generate(ids, max_new_tokens=12, temperature=0.0).tokens
    finally:
        model.generation_config = saved
    with pygpt.Batcher(model) as b:
        assert b.generate(ids, max_new_tokens=12, do_sample=True, seed=3).tokens == sampled
    for options, error, match in [
        (dict(do_sample="yes"), TypeError, "do_sample must be True or False"),
        (dict(do_sample=True, num_beams=3), ValueError, "beam sampling"),
        (dict(do_sample=True, temperature=0), ValueError, "temperature > 0"),
        (dict(eos_token_id="x"), ValueError, "eos_token_id must be a token id"),
        (dict(eos_token_id=[2, 10**9]), ValueError, "stop_token_ids"),
        (dict(eos_token_id=2, stop_token_ids=[3]), ValueError, "not both"),
        (dict(pad_token_id=-1), ValueError, "pad_token_id must be a token id"),
        (dict(max_length=30), TypeError, "unknown generation option 'max_length' \\(use max_new_tokens"),
        (dict(temprature=0.5), TypeError, "did you mean 'temperature'"),
        (dict(colour="red"), TypeError, "unknown generation option 'colour'"),
    ]:
        with pytest.raises(error, match=match):
            model.generate(ids, **options)
    with pytest.raises(TypeError, match="did you mean 'top_p'"):
        model.stream(ids, topp=0.5)


def test_bad_words_and_sequence_bias_match_transformers(tiny, model):
    # this random model repeats one token: ban it after itself, then bias what came instead
    ids = model.tokenizer.encode(PROMPTS[1])
    plain = model.generate(ids, max_new_tokens=16).tokens
    a = plain[0]
    bad = [[a, a]]
    first = model.generate(ids, max_new_tokens=16, bad_words_ids=bad).tokens
    assert first != plain and all(first[i:i + 2] != [a, a] for i in range(15))
    assert first == hf_greedy(tiny[0], ids, 16, bad_words_ids=bad)
    b = next(t for t in first if t != a)
    seq_bias = {(a, b): -0.5, (b,): -0.1, (b, a, b): 0.2}
    out = model.generate(ids, max_new_tokens=16, bad_words_ids=bad, sequence_bias=seq_bias)
    assert out.tokens == hf_greedy(tiny[0], ids, 16, bad_words_ids=bad, sequence_bias=seq_bias)
    assert out.tokens != first


def test_a_bad_word_that_ends_generation_is_not_banned(model):
    # as transformers: banning eos or a stop token alone would keep generation from ending
    plain = model.generate("Hello", max_new_tokens=6)
    stop = plain.tokens[0]
    out = model.generate("Hello", max_new_tokens=6, stop_token_ids=[stop], bad_words_ids=[[stop], [EOT]])
    assert out.tokens == [stop] and out.finish_reason == "stop"
    banned = model.generate("Hello", max_new_tokens=6, bad_words_ids=[[stop]])
    assert stop not in banned.tokens


def test_greedy_matches_transformers_124m_shape(hf_model_factory):
    hf_model, _, path = hf_model_factory("gpt2")  # converted without a tokenizer: prompt as ids
    m = pygpt.load(path)
    ids = pygpt.Tokenizer.from_dir(GPT2_TOKENIZER).encode("Once upon a time, there was")
    out = m.generate(ids, max_new_tokens=16)
    assert out.tokens == hf_greedy(hf_model, ids, 16)


# -- batches and determinism ----------------------------------------------------------------------


def test_batch_greedy_equals_single(model):
    singles = [model.generate(p, max_new_tokens=20) for p in PROMPTS]
    batch = model.generate(PROMPTS, max_new_tokens=20)
    assert isinstance(batch, list) and len(batch) == len(PROMPTS)
    for one, b in zip(singles, batch):
        assert b.tokens == one.tokens and b.text == one.text and b.finish_reason == one.finish_reason


def test_batch_mixes_text_and_ids(model):
    ids = model.tokenizer.encode(PROMPTS[0])
    a, b = model.generate([ids, PROMPTS[2]], max_new_tokens=8)
    assert a.tokens == model.generate(PROMPTS[0], max_new_tokens=8).tokens
    assert b.tokens == model.generate(PROMPTS[2], max_new_tokens=8).tokens


def test_sequences_stop_independently_in_a_batch(model):
    ref = model.generate(PROMPTS, max_new_tokens=12)
    stop_id = ref[1].tokens[3]
    outs = model.generate(PROMPTS, max_new_tokens=12, stop_token_ids=[stop_id])
    for r, o in zip(ref, outs):
        if stop_id in r.tokens:
            assert o.tokens == r.tokens[:r.tokens.index(stop_id) + 1] and o.finish_reason == "stop"
        else:
            assert o.tokens == r.tokens


SAMPLING = dict(temperature=1.0, top_p=0.95, top_k=1000, seed=1234)


def test_same_seed_same_output(model):
    a = model.generate(PROMPTS[0], max_new_tokens=20, **SAMPLING)
    b = model.generate(PROMPTS[0], max_new_tokens=20, **SAMPLING)
    c = model.generate(PROMPTS[0], max_new_tokens=20, **{**SAMPLING, "seed": 4321})
    assert a.tokens == b.tokens and a.text == b.text
    assert a.tokens != c.tokens


def test_unseeded_sampling_differs(model):
    kw = dict(max_new_tokens=20, temperature=1.0)
    assert model.generate(PROMPTS[0], **kw).tokens != model.generate(PROMPTS[0], **kw).tokens


def test_sampling_is_independent_of_the_batch(model):
    alone = model.generate(PROMPTS[1], max_new_tokens=20, **SAMPLING)
    for batch in ([PROMPTS[1], PROMPTS[0]], [PROMPTS[2], PROMPTS[0], PROMPTS[1]]):
        outs = model.generate(batch, max_new_tokens=20, **SAMPLING)
        assert outs[batch.index(PROMPTS[1])].tokens == alone.tokens


def test_sampling_is_independent_of_thread_count(tiny):
    one = pygpt.load(tiny[1], n_threads=1)
    two = pygpt.load(tiny[1], n_threads=2)
    assert (one.n_threads, two.n_threads) == (1, 2)
    a = one.generate(PROMPTS, max_new_tokens=16, **SAMPLING)
    b = two.generate(PROMPTS, max_new_tokens=16, **SAMPLING)
    assert [o.tokens for o in a] == [o.tokens for o in b]


def test_num_return_sequences_forks_the_prompt(model):
    outs = model.generate(PROMPTS[0], max_new_tokens=16, num_return_sequences=3, **SAMPLING)
    assert len(outs) == 3
    assert len({tuple(o.tokens) for o in outs}) == 3  # three different samples
    # sample 0 is what num_return_sequences=1 gives: the fork shares the prompt's cache exactly
    assert outs[0].tokens == model.generate(PROMPTS[0], max_new_tokens=16, **SAMPLING).tokens
    assert outs[0].timings.prefill_tokens == len(model.tokenizer.encode(PROMPTS[0]))  # prefilled once
    greedy = model.generate(PROMPTS[0], max_new_tokens=16, num_return_sequences=2)
    assert greedy[0].tokens == greedy[1].tokens == model.generate(PROMPTS[0], max_new_tokens=16).tokens


def test_batch_with_num_return_sequences_is_nested(model):
    outs = model.generate(PROMPTS[:2], max_new_tokens=4, num_return_sequences=2, **SAMPLING)
    assert [len(group) for group in outs] == [2, 2]
    assert outs[1][0].tokens == model.generate(PROMPTS[1], max_new_tokens=4, **SAMPLING).tokens


# -- stop conditions ------------------------------------------------------------------------------


def token_texts(model, ids):
    return [model.tokenizer.decode([t]) for t in ids]


def test_stop_string_split_across_tokens(model):
    ref = model.generate(PROMPTS[1], max_new_tokens=24, ignore_eos=True)
    pieces = token_texts(model, ref.tokens)
    # a stop string made of the end of token i and the start of token i + 1
    i = next(i for i in range(3, len(pieces) - 1) if len(pieces[i]) >= 2 and len(pieces[i + 1]) >= 2)
    stop = pieces[i][-2:] + pieces[i + 1][:2]
    where = ref.text.find(stop)
    out = model.generate(PROMPTS[1], max_new_tokens=24, ignore_eos=True, stop=["never in the text", stop])
    assert out.finish_reason == "stop"
    assert out.text == ref.text[:where]
    # the tokens run up to the one that completed the stop string
    assert len(out.tokens) == next(k for k in range(1, len(pieces) + 1) if stop in "".join(pieces[:k]))
    assert out.tokens == ref.tokens[:len(out.tokens)]

    streamed = model.stream(PROMPTS[1], max_new_tokens=24, ignore_eos=True, stop=stop)
    pieces_out = list(streamed)
    assert "".join(pieces_out) == out.text == streamed.output.text
    assert streamed.output.finish_reason == "stop"


@pytest.mark.parametrize("seed", range(6))
def test_random_stop_strings(model, seed):
    """Stop strings cut anywhere in sampled text (inside tokens, across them, multi-byte
    characters included): the text ends right before the first occurrence, streamed or not."""
    rng = np.random.default_rng(seed)
    kw = dict(max_new_tokens=30, ignore_eos=True, temperature=1.0, seed=seed)
    ref = model.generate(PROMPTS[seed % 3], **kw)
    raw = model.tokenizer.decode_bytes(ref.tokens)
    for _ in range(3):
        a = int(rng.integers(0, max(1, len(ref.text) - 1)))
        stop = ref.text[a:a + int(rng.integers(1, 7))].replace("\ufffd", "") or "x"
        stops = [stop, "\u2603 never"]
        out = model.generate(PROMPTS[seed % 3], stop=stops, **kw)
        hit = raw.find(stop.encode())
        if hit < 0:
            assert out.text == ref.text and out.finish_reason == "length"
            continue
        assert out.text == raw[:hit].decode("utf-8", errors="replace")
        assert out.finish_reason == "stop"
        end = next(k for k in range(1, len(ref.tokens) + 1)
                   if model.tokenizer.decode_bytes(ref.tokens[:k]).find(stop.encode()) >= 0)
        assert out.tokens == ref.tokens[:end]
        assert "".join(model.stream(PROMPTS[seed % 3], stop=stops, **kw)) == out.text
        # vLLM's include_stop_str_in_output: the same tokens, the text up to the stop string's end
        kept = model.generate(PROMPTS[seed % 3], stop=stops, include_stop_str_in_output=True, **kw)
        assert kept.text == raw[:hit + len(stop.encode())].decode("utf-8", errors="replace")
        assert kept.tokens == out.tokens and kept.stop_reason == stop
        assert "".join(model.stream(PROMPTS[seed % 3], stop=stops, include_stop_str_in_output=True, **kw)) == kept.text


def test_include_stop_str_in_output_everywhere(model):
    """include_stop_str_in_output keeps the stop string (only it: not what its last token holds
    past it) in generate, streams, the Batcher, prompt lookup and beam search."""
    ref = model.generate(PROMPTS[1], max_new_tokens=24, ignore_eos=True)
    pieces = token_texts(model, ref.tokens)
    i = next(i for i in range(3, len(pieces) - 1) if len(pieces[i]) >= 2 and len(pieces[i + 1]) >= 3)
    stop = pieces[i][-2:] + pieces[i + 1][:1]  # ends inside token i + 1
    kept = ref.text[:ref.text.find(stop) + len(stop)]
    kw = dict(max_new_tokens=24, ignore_eos=True, stop=stop, include_stop_str_in_output=True)
    out = model.generate(PROMPTS[1], **kw)
    assert out.text == kept and out.finish_reason == "stop" and out.stop_reason == stop
    assert out.tokens == ref.tokens[:next(k for k in range(1, len(pieces) + 1) if stop in "".join(pieces[:k]))]
    stream = model.stream(PROMPTS[1], **kw)
    assert "".join(stream) == kept == stream.output.text
    assert model.generate(PROMPTS[1], prompt_lookup_num_tokens=3, **kw).text == kept
    assert model.generate(PROMPTS[1], echo=True, **kw).text == PROMPTS[1] + kept
    with pygpt.Batcher(model) as b:
        assert b.generate(PROMPTS[1], **kw).text == kept
        assert "".join(b.stream(PROMPTS[1], **kw)) == kept
    # stop token ids stay out of the text: the option is about stop strings
    k = ref.tokens.index(ref.tokens[4])
    assert model.generate(PROMPTS[1], max_new_tokens=24, ignore_eos=True, stop_token_ids=[ref.tokens[4]],
                          include_stop_str_in_output=True).text == model.tokenizer.decode(ref.tokens[:k])
    beams = model.generate(PROMPTS[0], max_new_tokens=12, ignore_eos=True, num_beams=3)
    stop = beams.text[3:6]
    bkw = dict(max_new_tokens=12, ignore_eos=True, num_beams=3, num_return_sequences=3, stop=stop,
               length_penalty=0.0)
    cut = model.generate(PROMPTS[0], **bkw)
    whole = model.generate(PROMPTS[0], include_stop_str_in_output=True, **bkw)
    assert [o.tokens for o in whole] == [o.tokens for o in cut]
    assert any(o.finish_reason == "stop" for o in whole)
    for c, w in zip(cut, whole):
        assert w.text == (c.text + stop if c.finish_reason == "stop" else c.text)
    with pytest.raises(TypeError, match="include_stop_str_in_output"):
        model.generate(PROMPTS[1], stop=stop, include_stop_str_in_output="yes")


def test_stop_string_in_the_first_token_gives_empty_text(model):
    ref = model.generate(PROMPTS[0], max_new_tokens=5)
    first = model.tokenizer.decode(ref.tokens[:1])
    out = model.generate(PROMPTS[0], max_new_tokens=5, stop=first)
    assert out.text == "" and out.tokens == ref.tokens[:1] and out.finish_reason == "stop"


def test_stop_token_ids(model):
    ref = model.generate(PROMPTS[0], max_new_tokens=20, ignore_eos=True)
    stop_id = ref.tokens[5]
    k = ref.tokens.index(stop_id)
    out = model.generate(PROMPTS[0], max_new_tokens=20, ignore_eos=True, stop_token_ids=[stop_id])
    assert out.tokens == ref.tokens[:k + 1] and out.finish_reason == "stop"
    assert out.text == model.tokenizer.decode(ref.tokens[:k])  # the stop token's text is left out


def test_stop_reason_says_what_stopped(model):
    """vLLM's stop_reason: the stop string or stop token id, the same from generate, a stream,
    a Batcher and beam search; None for eos, the length, a grammar's end."""
    ref = model.generate(PROMPTS[0], max_new_tokens=20, ignore_eos=True)
    assert ref.finish_reason == "length" and ref.stop_reason is None
    stop_id = ref.tokens[5]
    assert model.generate(PROMPTS[0], max_new_tokens=20, ignore_eos=True, stop_token_ids=[stop_id]).stop_reason == stop_id
    text = ref.text
    first, later = text[6:9], text[7:12]  # overlapping: the one that starts first wins
    stops = ["never there", later, first]
    out = model.generate(PROMPTS[0], max_new_tokens=20, ignore_eos=True, stop=stops)
    assert out.finish_reason == "stop" and out.stop_reason == first and out.text == text[:6]
    stream = model.stream(PROMPTS[0], max_new_tokens=20, ignore_eos=True, stop=stops)
    assert "".join(stream) == text[:6] and stream.output.stop_reason == first
    with pygpt.Batcher(model) as b:
        assert b.generate(PROMPTS[0], max_new_tokens=20, ignore_eos=True, stop=stops).stop_reason == first
    beams = model.generate(PROMPTS[0], max_new_tokens=20, ignore_eos=True, num_beams=3, num_return_sequences=3)
    stop = beams[0].text[4:7]
    outs = model.generate(PROMPTS[0], max_new_tokens=20, ignore_eos=True, num_beams=3, num_return_sequences=3,
                          stop=[stop], length_penalty=0.0)  # the short ones that stop score best
    assert [o.stop_reason for o in outs if o.finish_reason == "stop"] and \
        all(o.stop_reason == (stop if o.finish_reason == "stop" else None) for o in outs)
    outs = model.generate(PROMPTS[0], max_new_tokens=20, ignore_eos=True, num_beams=3, num_return_sequences=3,
                          stop_token_ids=[beams[0].tokens[3]], length_penalty=0.0)
    assert all(o.stop_reason == (beams[0].tokens[3] if o.finish_reason == "stop" else None) for o in outs)
    assert any(o.finish_reason == "stop" for o in outs)
    assert model.generate(PROMPTS[0], max_new_tokens=10, logit_bias={EOT: 100.0}).stop_reason is None
    assert model.generate(PROMPTS[0], grammar=pygpt.Grammar('root ::= "ab"')).stop_reason is None


def test_eos_stops_unless_ignored(model):
    out = model.generate(PROMPTS[0], max_new_tokens=10, logit_bias={EOT: 100.0})
    assert out.tokens == [EOT] and out.finish_reason == "eos" and out.text == ""
    out = model.generate(PROMPTS[0], max_new_tokens=10, logit_bias={EOT: 100.0}, ignore_eos=True)
    assert out.tokens == [EOT] * 10 and out.finish_reason == "length"
    assert out.text == "<|endoftext|>" * 10


def test_max_new_tokens(model):
    assert len(model.generate(PROMPTS[0], max_new_tokens=7, ignore_eos=True).tokens) == 7
    out = model.generate(PROMPTS[0], max_new_tokens=0)
    assert out.tokens == [] and out.text == "" and out.finish_reason == "length"


def test_stops_at_the_context_length(model):
    n_ctx = model.config["n_ctx"]
    prompt = list(range(1000, 1000 + n_ctx - 5))
    out = model.generate(prompt, max_new_tokens=100, ignore_eos=True)
    assert len(out.tokens) == 5 and out.finish_reason == "length"
    full = model.generate(list(range(1000, 1000 + n_ctx)), max_new_tokens=10)
    assert full.tokens == [] and full.finish_reason == "length"


def test_prompt_longer_than_context(model):
    n_ctx = model.config["n_ctx"]
    prompt = list(range(2000, 2000 + n_ctx + 10))
    with pytest.raises(ValueError, match="context"):
        model.generate(prompt, max_new_tokens=4)
    out = model.generate(prompt, max_new_tokens=4, truncate="left", ignore_eos=True)
    assert out.prompt_tokens == prompt[-(n_ctx - 4):] and len(out.tokens) == 4
    assert out.tokens == model.generate(prompt[-(n_ctx - 4):], max_new_tokens=4, ignore_eos=True).tokens


def test_empty_prompt_starts_from_endoftext(model):
    out = model.generate("", max_new_tokens=5)
    assert out.prompt_tokens == [EOT]
    assert out.tokens == model.generate([EOT], max_new_tokens=5).tokens


# -- text, streaming, echo, logprobs --------------------------------------------------------------


def test_text_is_the_decoded_tokens(model):
    out = model.generate(PROMPTS[2], max_new_tokens=20, ignore_eos=True, **SAMPLING)
    assert out.text == model.tokenizer.decode(out.tokens)
    assert str(out) == out.text


@pytest.mark.parametrize("prompt", PROMPTS)
def test_stream_pieces_join_to_text(model, prompt):
    out = model.generate(prompt, max_new_tokens=20, **SAMPLING)
    s = model.stream(prompt, max_new_tokens=20, **SAMPLING)
    pieces = list(s)
    assert all(isinstance(p, str) and p for p in pieces)
    assert "".join(pieces) == out.text == s.output.text
    assert s.output.tokens == out.tokens


def byte_token_ids(tokenizer, byte_values):
    want = {bytes([b]) for b in byte_values}
    return [i for i in range(tokenizer.vocab_size) if tokenizer.token_bytes(i) in want]


def test_stream_never_splits_a_character(model):
    # push the model towards single-byte tokens: lead bytes of 2-, 3- and 4-byte characters,
    # continuation bytes and ASCII, so the output mixes valid and broken UTF-8
    ids = byte_token_ids(model.tokenizer, [0xC3, 0xE2, 0xF0, 0x80, 0x9C, 0xA9, 0x9F, 0x41])
    assert len(ids) == 8
    for seed in range(4):
        kw = dict(max_new_tokens=40, temperature=1.0, seed=seed, logit_bias={i: 30.0 for i in ids}, ignore_eos=True)
        out = model.generate(PROMPTS[0], **kw)
        assert set(out.tokens) <= set(ids)
        raw = model.tokenizer.decode_bytes(out.tokens)
        assert out.text == raw.decode("utf-8", errors="replace")
        s = model.stream(PROMPTS[0], **kw)
        # a character split between pieces would show as U+FFFD in them and not in the text
        assert "".join(s) == out.text


def test_stream_holds_back_a_possible_stop_string(model):
    ref = model.generate(PROMPTS[1], max_new_tokens=20, ignore_eos=True)
    words = ref.text
    stop = words[len(words) // 2:len(words) // 2 + 6]
    s = model.stream(PROMPTS[1], max_new_tokens=20, ignore_eos=True, stop=stop)
    pieces = list(s)
    assert "".join(pieces) == words[:words.find(stop)]
    # with a stop string that never matches, everything comes out, held-back parts included
    s = model.stream(PROMPTS[1], max_new_tokens=20, ignore_eos=True, stop=words[-3:] + "\x00")
    assert "".join(s) == words


def test_stream_can_be_abandoned(model):
    s = model.stream(PROMPTS[0], max_new_tokens=30)
    first = next(iter(s))
    assert first
    del s
    assert model.generate(PROMPTS[0], max_new_tokens=5).tokens == model.generate(PROMPTS[0], max_new_tokens=5).tokens


def test_echo(model):
    ids = model.tokenizer.encode(PROMPTS[0])
    out = model.generate(PROMPTS[0], max_new_tokens=6, echo=True)
    plain = model.generate(PROMPTS[0], max_new_tokens=6)
    assert out.tokens == ids + plain.tokens
    assert out.text == PROMPTS[0] + plain.text
    assert "".join(model.stream(PROMPTS[0], max_new_tokens=6, echo=True)) == out.text


def log_softmax(x):
    x = x.astype(np.float64)
    return x - x.max() - np.log(np.exp(x - x.max()).sum())


def test_logprobs_are_the_models_log_probabilities(model):
    ids = model.tokenizer.encode(PROMPTS[1])
    out = model.generate(ids, max_new_tokens=8, logprobs=True, top_logprobs=3, echo=True, **SAMPLING)
    seq = out.tokens
    assert seq[:len(ids)] == ids
    lp = np.array([log_softmax(row) for row in model.logits(seq)])  # row i predicts token i + 1
    assert out.logprobs[0] is None and out.top_logprobs[0] is None
    want = [lp[i - 1, seq[i]] for i in range(1, len(seq))]
    np.testing.assert_allclose(out.logprobs[1:], want, atol=1e-4)
    for i in range(1, len(seq)):
        top = out.top_logprobs[i]
        assert [t for t, _ in top] == list(np.argsort(-lp[i - 1], kind="stable")[:3])
        np.testing.assert_allclose([v for _, v in top], np.sort(lp[i - 1])[::-1][:3], atol=1e-4)


def test_greedy_logprobs_pick_the_top_token(model):
    out = model.generate(PROMPTS[0], max_new_tokens=6, top_logprobs=1)
    assert out.logprobs is not None and len(out.logprobs) == len(out.tokens)
    assert [top[0][0] for top in out.top_logprobs] == out.tokens
    assert all(lp <= 0 for lp in out.logprobs)
    assert model.generate(PROMPTS[0], max_new_tokens=2).logprobs is None


def test_timings(model):
    out = model.generate(PROMPTS[1], max_new_tokens=10, ignore_eos=True)
    t = out.timings
    assert t.prefill_tokens == len(out.prompt_tokens)
    assert t.decode_tokens == len(out.tokens) - 1
    assert t.prefill_seconds > 0 and t.decode_seconds > 0 and t.time_to_first_token > 0
    assert t.prefill_tokens_per_s > 0 and t.decode_tokens_per_s > 0
    assert "tok/s" in str(t)


def test_one_liner(tiny, model):
    text = pygpt.generate(PROMPTS[0], model=tiny[1], max_new_tokens=6)
    assert text == model.generate(PROMPTS[0], max_new_tokens=6).text
    assert pygpt.generate(PROMPTS[0], model=model, max_new_tokens=6) == text
    texts = pygpt.generate(PROMPTS[:2], model=model, max_new_tokens=6)
    assert isinstance(texts, list) and texts[0] == text
    with pytest.raises(TypeError):
        pygpt.generate(PROMPTS[0], model=42)


# -- Ctrl-C ---------------------------------------------------------------------------------------


def interrupt_after(delay):
    def fire():
        time.sleep(delay)
        os.kill(os.getpid(), signal.SIGINT)

    t = threading.Thread(target=fire, daemon=True)
    t.start()
    return t


@pytest.mark.skipif(not hasattr(signal, "SIGINT") or os.name != "posix", reason="needs POSIX signals")
@pytest.mark.parametrize("options", [dict(temperature=1.0, seed=0), dict(num_beams=4)], ids=["sampling", "beams"])
def test_ctrl_c_stops_generate_and_the_model_stays_usable(long_model, options):
    expected = long_model.generate(PROMPTS[0], max_new_tokens=5)
    # 8 sequences (or 8 prompts of 4 beams) up to the 1024-token context: far longer than the
    # 0.3 s before the signal
    t = interrupt_after(0.3)
    start = time.perf_counter()
    with pytest.raises(KeyboardInterrupt):
        long_model.generate([PROMPTS[0]] * 8, max_new_tokens=1000, ignore_eos=True, **options)
    elapsed = time.perf_counter() - start
    t.join()
    again = long_model.generate(PROMPTS[0], max_new_tokens=5)
    assert again.tokens == expected.tokens
    print(f"interrupted after {elapsed:.2f} s")


@pytest.mark.skipif(os.name != "posix", reason="needs POSIX signals")
def test_ctrl_c_stops_a_stream(long_model):
    s = long_model.stream(PROMPTS[0], max_new_tokens=1000, ignore_eos=True, temperature=1.0, seed=0)
    n = 0
    with pytest.raises(KeyboardInterrupt):
        for _ in s:
            n += 1
            if n == 3:
                os.kill(os.getpid(), signal.SIGINT)
    assert n < 10
    assert long_model.generate(PROMPTS[0], max_new_tokens=3).finish_reason in ("length", "eos")


def test_generation_runs_without_the_gil(model):
    # another Python thread keeps running while generate works
    ticks = []
    stop = threading.Event()

    def tick():
        while not stop.is_set():
            ticks.append(1)
            time.sleep(0.001)

    t = threading.Thread(target=tick)
    t.start()
    try:
        model.generate(PROMPTS * 4, max_new_tokens=40, ignore_eos=True)
    finally:
        stop.set()
        t.join()
    assert ticks


def test_threads_can_share_a_model(model):
    want = [model.generate(p, max_new_tokens=10, **SAMPLING).tokens for p in PROMPTS]
    got = [None] * len(PROMPTS)

    def work(i):
        got[i] = model.generate(PROMPTS[i], max_new_tokens=10, **SAMPLING).tokens

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(PROMPTS))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert got == want


def test_a_generation_runs_in_one_thread_at_a_time(model):
    req = generation._Request(model, PROMPTS[0], max_new_tokens=200, ignore_eos=True)
    gen = req.start()
    errors = []

    def other():
        try:
            while gen.step():
                pass
        except RuntimeError as e:
            errors.append(str(e))

    t = threading.Thread(target=other)
    t.start()
    try:
        while gen.step():
            pass
    except RuntimeError as e:
        errors.append(str(e))
    t.join()
    assert all("another thread" in e for e in errors)
    # whoever was refused stopped; the other ran the generation to its end, undisturbed
    assert gen.result(0)["tokens"] == model.generate(PROMPTS[0], max_new_tokens=200, ignore_eos=True).tokens


def test_closed_model(tiny):
    m = pygpt.load(tiny[1])
    m.close()
    with pytest.raises(ValueError, match="closed"):
        m.generate("hi")


def test_model_without_a_tokenizer(tiny, model, tmp_path):
    for name in ("config.json", "model.safetensors"):  # no vocab.json / merges.txt
        os.symlink(os.path.join(tiny[1], name), tmp_path / name)
    bare = pygpt.load(str(tmp_path))
    assert bare.tokenizer is None
    ids = model.tokenizer.encode(PROMPTS[0])
    out = bare.generate(ids, max_new_tokens=8)
    assert out.text is None and out.tokens == model.generate(ids, max_new_tokens=8).tokens
    assert out.finish_reason == "length"  # no tokenizer, no <|endoftext|> to stop at
    for call, match in [(lambda: bare.generate("text"), "tokenizer"),
                        (lambda: bare.generate(ids, stop=["x"]), "tokenizer"),
                        (lambda: bare.stream(ids), "tokenizer")]:
        with pytest.raises(ValueError, match=match):
            call()


# -- bad input ------------------------------------------------------------------------------------


@pytest.mark.parametrize("prompt, kw, exc, match", [
    (b"bytes", {}, TypeError, "bytes"),
    (3.5, {}, TypeError, "prompt"),
    ([], {}, ValueError, "empty"),
    ([[]], {}, ValueError, "empty"),
    ([1, 2, 50257], {}, ValueError, "vocabulary"),
    ([1, -1], {}, ValueError, "vocabulary"),
    (["ok", 5.0], {}, TypeError, "prompt 1"),
    ("hi", dict(max_new_tokens=-1), ValueError, "max_new_tokens"),
    ("hi", dict(max_new_tokens=2.0), TypeError, "max_new_tokens"),
    ("hi", dict(temperature=-1.0), ValueError, "temperature"),
    ("hi", dict(top_p=2.0), ValueError, "top_p"),
    ("hi", dict(stop=[""]), ValueError, "stop"),
    ("hi", dict(stop=5), TypeError, "stop"),
    ("hi", dict(stop_token_ids=5), TypeError, "stop_token_ids"),
    ("hi", dict(stop_token_ids=[99999]), ValueError, "vocabulary"),
    ("hi", dict(seed=-1), ValueError, "seed"),
    ("hi", dict(seed="x"), TypeError, "seed"),
    ("hi", dict(num_return_sequences=0), ValueError, "num_return_sequences"),
    ("hi", dict(truncate="right"), ValueError, "truncate"),
    ("hi", dict(echo="yes"), TypeError, "echo"),
    ("hi", dict(logprobs=1), TypeError, "logprobs"),
    ("hi", dict(top_logprobs=-2), ValueError, "top_logprobs"),
    ("hi", dict(logit_bias={1: "x"}), TypeError, "logit_bias"),
    ("hi", dict(sequence_bias=[((1, 2), 1.0)]), TypeError, "sequence_bias"),
    ("hi", dict(sequence_bias={(): 1.0}), TypeError, "sequence_bias"),
    ("hi", dict(sequence_bias={(1, "2"): 1.0}), TypeError, "sequence_bias"),
    ("hi", dict(sequence_bias={(1, 50257): 1.0}), ValueError, "outside the vocabulary"),
    ("hi", dict(sequence_bias={(1, 2): float("nan")}), ValueError, "sequence_bias"),
    ("hi", dict(sequence_bias={(1, 2): float("inf")}), ValueError, "sequence_bias"),
    ("hi", dict(exponential_decay_length_penalty=1.5), TypeError, "exponential_decay_length_penalty"),
    ("hi", dict(exponential_decay_length_penalty=(-1, 1.5)), ValueError, "exponential_decay_length_penalty start"),
    ("hi", dict(exponential_decay_length_penalty=(2, 0.0)), ValueError, "exponential_decay_length_penalty factor"),
    ("hi", dict(bad_words_ids=[1, 2]), TypeError, "bad_words_ids"),
    ("hi", dict(bad_words_ids=[[]]), ValueError, "bad_words_ids"),
    ("hi", dict(bad_words_ids=[[-1]]), ValueError, "outside the vocabulary"),
    ("hi", dict(bad_words_ids=[[1, 2], [1, 2]]), ValueError, "already"),
    ("hi", dict(bad_words_ids=[[1, 2]], sequence_bias={(1, 2): -1.0}), ValueError, "already"),
])
def test_bad_arguments(model, prompt, kw, exc, match):
    with pytest.raises(exc, match=match):
        model.generate(prompt, **kw)


def test_unknown_option_is_a_type_error(model):
    with pytest.raises(TypeError, match="unknown generation option 'beam_width'"):
        model.generate("hi", beam_width=3)


def test_stream_takes_one_sequence(model):
    with pytest.raises(ValueError, match="one prompt"):
        model.stream(PROMPTS, max_new_tokens=2)
    with pytest.raises(ValueError, match="num_return_sequences"):
        model.stream("hi", num_return_sequences=2)


def test_not_a_model():
    with pytest.raises(TypeError, match="pygpt.Model"):
        generation.generate(object(), "hi")


def test_everything_banned_is_a_value_error(model):
    bias = {i: -math.inf for i in range(model.config["vocab_size"])}
    with pytest.raises(ValueError, match="filtered out"):
        model.generate("hi", max_new_tokens=2, logit_bias=bias)
    assert model.generate("hi", max_new_tokens=2).finish_reason in ("length", "eos")


def test_mirostat_generates_and_refuses_drafts():
    m = pygpt.load()
    a = m.generate("ROMEO:", max_new_tokens=20, temperature=1.0, seed=1, mirostat=2, mirostat_tau=3.0)
    assert a.tokens == m.generate("ROMEO:", max_new_tokens=20, temperature=1.0, seed=1, mirostat=2,
                                  mirostat_tau=3.0).tokens
    assert a.tokens != m.generate("ROMEO:", max_new_tokens=20, temperature=1.0, seed=1).tokens
    with pytest.raises(ValueError, match="drafts"):
        m.generate("ROMEO:", temperature=1.0, mirostat=2, prompt_lookup_num_tokens=3)
    with pytest.raises(ValueError, match="drafts"):
        m.generate("ROMEO:", temperature=1.0, mirostat=1, assistant_model=m)
    with pytest.raises(ValueError, match="does not go with top_k"):
        m.generate("ROMEO:", temperature=1.0, mirostat=1, top_k=3)


def _repeated_ngrams(tokens, n=4):
    grams = [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]
    return len(grams) - len(set(grams))


def test_dry_cuts_repeats():
    """The shipped model loops when greedy; DRY (llama.cpp's defaults but the multiplier) breaks
    the loops, and drafts keep its greedy tokens."""
    m = pygpt.load()
    plain = m.generate("ROMEO:", max_new_tokens=80)
    dry = m.generate("ROMEO:", max_new_tokens=80, dry_multiplier=0.8)
    assert _repeated_ngrams(dry.tokens) < _repeated_ngrams(plain.tokens) // 2
    assert m.generate("ROMEO:", max_new_tokens=80, dry_multiplier=0.8, prompt_lookup_num_tokens=4).tokens == dry.tokens
    # the breakers are text: without any, a repeat runs across newlines and is cut harder
    other = m.generate("ROMEO:", max_new_tokens=80, dry_multiplier=0.8, dry_sequence_breakers=[])
    assert other.tokens != dry.tokens
    with pytest.raises(TypeError, match="dry_sequence_breakers"):
        m.generate("ROMEO:", dry_multiplier=0.8, dry_sequence_breakers="\n")
    with pytest.raises(ValueError, match="dry_base"):
        m.generate("ROMEO:", dry_multiplier=0.8, dry_base=0.5)


def test_max_time():
    """A limit already past stops every sequence at its first token ("length"); a far one changes
    nothing. (No timing is asserted: a deadline in the past is deterministic.)"""
    m = pygpt.load()
    outs = m.generate(["ROMEO:", "JULIET:"], max_new_tokens=30, temperature=1.0, seed=1, num_return_sequences=2,
                      max_time=1e-9)
    for group in outs:
        assert all(len(o.tokens) == 1 and o.finish_reason == "length" for o in group)
    beams = m.generate("ROMEO:", max_new_tokens=30, num_beams=3, num_return_sequences=3, max_time=1e-9)
    assert all(len(o.tokens) == 1 and o.finish_reason == "length" for o in beams)
    far = m.generate("ROMEO:", max_new_tokens=30, temperature=1.0, seed=1, max_time=1e6)
    assert far.tokens == m.generate("ROMEO:", max_new_tokens=30, temperature=1.0, seed=1).tokens
    with pytest.raises(ValueError, match="max_time"):
        m.generate("ROMEO:", max_time=0)
    with pytest.raises(TypeError, match="max_time"):
        m.generate("ROMEO:", max_time="1s")
