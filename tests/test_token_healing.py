"""token_healing=True: the prompt's last token is dropped and the first generated token must
start with its bytes. The oracle is the same generation from the shortened prompt with the
first token constrained by prefix_allowed_tokens_fn (Python), whose text is then the
caller's prompt plus the output's text."""

import numpy as np
import pytest

import pygpt

PROMPTS = ["The url is http:", "Hello wor", "Once upon a time ", "I like to eat app"]


@pytest.fixture(scope="module")
def model(hf_model_factory):
    return pygpt.load(hf_model_factory("tiny")[2])


def extensions(tok, piece: bytes) -> list:
    """Ids of the regular tokens whose bytes start with piece (a plain loop: the oracle)."""
    specials = set(tok.special_tokens.values())
    return [i for i in range(tok.vocab_size) if i not in specials and tok.token_bytes(i).startswith(piece)]


def oracle(model, prompt: str, **options):
    """(shortened prompt, its outputs) with the first token held to the dropped one's extensions."""
    tok = model.tokenizer
    ids = tok.encode(prompt, allowed_special="all")
    short, allowed = ids[:-1], extensions(tok, tok.token_bytes(ids[-1]))
    every = list(range(model.config["vocab_size"]))

    def first_token(batch_id, input_ids):
        return allowed if len(input_ids) == len(short) else every

    return short, model.generate(short, prefix_allowed_tokens_fn=first_token, **options)


@pytest.mark.parametrize("options", [
    dict(),
    dict(temperature=0.9, top_k=40, seed=3),
    dict(temperature=1.0, seed=5, num_return_sequences=3),
    dict(num_beams=3, num_return_sequences=2),
    dict(repetition_penalty=1.3, top_p=0.8, temperature=0.7, seed=1),
])
def test_healing_is_the_first_token_held_to_the_last_ones_extensions(model, options):
    tok = model.tokenizer
    for prompt in PROMPTS:
        ids = tok.encode(prompt, allowed_special="all")
        short, want = oracle(model, prompt, max_new_tokens=10, ignore_eos=True, **options)
        got = model.generate(prompt, max_new_tokens=10, ignore_eos=True, token_healing=True, **options)
        for g, w in zip(got if isinstance(got, list) else [got], want if isinstance(want, list) else [want]):
            assert g.tokens == w.tokens
            assert g.prompt_tokens == short
            assert tok.token_bytes(g.tokens[0]).startswith(tok.token_bytes(ids[-1]))
            # the text continues the prompt as written: the healed bytes are the prompt's
            assert prompt + g.text == tok.decode(short + g.tokens)
            if w.score is not None:
                assert g.score == pytest.approx(w.score)


def test_without_healing_the_outputs_differ(model):
    """The check above is not vacuous: healing changes these prompts' greedy continuations."""
    changed = [model.generate(p, max_new_tokens=6).text != model.generate(p, max_new_tokens=6, token_healing=True).text
               for p in PROMPTS]
    assert sum(changed) >= 2


def test_echo_stream_and_batcher(model):
    prompt = PROMPTS[1]
    out = model.generate(prompt, max_new_tokens=8, token_healing=True)
    echo = model.generate(prompt, max_new_tokens=8, token_healing=True, echo=True)
    assert echo.text == prompt + out.text
    assert echo.tokens == out.prompt_tokens + out.tokens
    assert "".join(model.stream(prompt, max_new_tokens=8, token_healing=True)) == out.text
    assert "".join(model.stream(prompt, max_new_tokens=8, token_healing=True, echo=True)) == prompt + out.text
    with pygpt.Batcher(model) as batcher:
        assert batcher.generate(prompt, max_new_tokens=8, token_healing=True).tokens == out.tokens
    lp = model.generate(prompt, max_new_tokens=4, token_healing=True, echo=True, logprobs=True)
    assert len(lp.logprobs) == len(lp.tokens) and lp.logprobs[0] is None


def test_stop_strings_see_only_the_new_text(model):
    """A stop string the healed bytes would complete does not fire on them."""
    tok = model.tokenizer
    prompt = PROMPTS[1]  # "Hello wor": the dropped token is " wor"
    tail = tok.token_bytes(tok.encode(prompt)[-1]).decode()
    full = model.generate(prompt, max_new_tokens=12, ignore_eos=True, token_healing=True)
    cut = model.generate(prompt, max_new_tokens=12, ignore_eos=True, token_healing=True, stop=[tail.strip()])
    at = full.text.find(tail.strip())
    assert cut.text == (full.text if at < 0 else full.text[:at])
    assert cut.finish_reason == ("length" if at < 0 else "stop")
    assert len(cut.tokens) >= 1


def test_prompts_left_as_they_are(model):
    tok = model.tokenizer
    one = tok.encode("Hello")
    assert len(one) == 1
    e_acute = tok.encode("café")
    split = e_acute[:-1] + list(tok.encode_ordinary("é"))  # ensure a tail that is a whole character
    byte_tail = [tok.encode("x")[0], next(i for i in range(tok.vocab_size) if tok.token_bytes(i) == b"\xa9")]
    cases = [one, tok.encode("Hello<|endoftext|>", allowed_special="all"), byte_tail]
    for ids in cases:
        plain = model.generate(ids, max_new_tokens=5)
        healed = model.generate(ids, max_new_tokens=5, token_healing=True)
        assert healed.tokens == plain.tokens and healed.prompt_tokens == ids
    assert model.generate(split, max_new_tokens=3, token_healing=True).prompt_tokens == split[:-1]
    none = model.generate("Hello wor", max_new_tokens=0, token_healing=True)
    assert none.tokens == [] and none.prompt_tokens == tok.encode("Hello wor")
    # a batch heals each prompt on its own
    outs = model.generate(["Hello wor", "Hello"], max_new_tokens=4, token_healing=True)
    assert outs[0].prompt_tokens == tok.encode("Hello wor")[:-1] and outs[1].prompt_tokens == one
    assert outs[0].tokens == model.generate("Hello wor", max_new_tokens=4, token_healing=True).tokens


def test_drafts_keep_the_tokens(model, hf_model_factory):
    want = model.generate(PROMPTS[0] + " the cat the cat the", max_new_tokens=12, token_healing=True)
    for extra in (dict(prompt_lookup_num_tokens=3), dict(assistant_model=model)):
        got = model.generate(PROMPTS[0] + " the cat the cat the", max_new_tokens=12, token_healing=True, **extra)
        assert got.tokens == want.tokens


def test_no_processor_lifts_the_constraint(model):
    tok = model.tokenizer
    outside = tok.encode(" zebra")[0]

    def push(ids, scores):
        scores[outside] = 1e9
        return scores

    out = model.generate(PROMPTS[1], max_new_tokens=3, token_healing=True, logits_processor=[push])
    assert tok.token_bytes(out.tokens[0]).startswith(b" wor") and out.tokens[1:] == [outside, outside]


def test_bad_uses(model, hf_model_factory):
    with pytest.raises(TypeError, match="token_healing"):
        model.generate("Hi there", token_healing="yes")
    with pytest.raises(ValueError, match="token_healing does not go with a grammar"):
        model.generate("Hi there", token_healing=True, grammar=pygpt.Grammar.json())
    no_tok = pygpt.load(hf_model_factory("odd")[2])
    with pytest.raises(ValueError, match="token_healing needs a model with a tokenizer"):
        no_tok.generate([1, 2, 3], token_healing=True)
    # the core's own checks (a caller of _core reaches it without _Request's)
    from pygpt import _core

    opt = _core.GenerateOptions()
    opt.heal = [b"a", b"b"]
    with pytest.raises(ValueError, match="one string a prompt"):
        _core.Generation(model._core, model.tokenizer._core, [[1, 2]], opt)
    opt.heal = [b"\xff\xfe\xfd"]
    with pytest.raises(ValueError, match="no token starts with"):
        _core.Generation(model._core, model.tokenizer._core, [[1, 2]], opt)
    opt.heal = [b"x"]
    with pytest.raises(ValueError, match="needs a model with a tokenizer"):
        _core.Generation(model._core, None, [[1, 2]], opt)
    assert opt.heal == [b"x"]
