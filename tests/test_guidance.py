"""Classifier-free guidance (guidance_scale, negative_prompt): against transformers' generate,
and against the same guidance written as a Python logits_processor for sampling."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import pygpt  # noqa: E402

EOT = 50256
PROMPT = "Hello, my dog is a"
NEGATIVE = "The weather today"


@pytest.fixture(scope="module")
def tiny(hf_model_factory):
    hf, _, out = hf_model_factory("tiny")
    return hf, pygpt.load(out)


@pytest.mark.parametrize("scale", [1.5, 3.0, 0.5])
@pytest.mark.parametrize("negative", [False, True])
def test_greedy_matches_transformers(tiny, scale, negative):
    hf, m = tiny
    ids = m.tokenizer.encode(PROMPT)
    neg = m.tokenizer.encode(NEGATIVE) if negative else None
    extra = dict(negative_prompt_ids=torch.tensor([neg])) if negative else {}
    with torch.no_grad():
        ref = hf.generate(torch.tensor([ids]), max_new_tokens=24, do_sample=False, pad_token_id=EOT,
                          eos_token_id=EOT, guidance_scale=scale, **extra)[0, len(ids):].tolist()
    out = m.generate(PROMPT, max_new_tokens=24, guidance_scale=scale, negative_prompt=NEGATIVE if negative else None)
    assert out.tokens == ref


def test_guidance_changes_the_text(tiny):
    """The checks above are not vacuous: guided greedy text differs from plain greedy's."""
    _, m = tiny
    plain = m.generate(PROMPT, max_new_tokens=24).tokens
    assert m.generate(PROMPT, max_new_tokens=24, guidance_scale=3.0).tokens != plain
    assert m.generate(PROMPT, max_new_tokens=24, guidance_scale=1.5, negative_prompt=NEGATIVE).tokens != plain


def python_guidance(m, scale, negative):
    """The same guidance as a logits_processor: the negative sequence's logits recomputed."""
    def processor(ids, scores):
        n_prompt = processor.n_prompt
        neg = list(negative) + list(ids[n_prompt:])
        uncond = m.logits(neg)[-1].astype(np.float64)
        cond = scores.astype(np.float64)
        c = cond - np.logaddexp.reduce(cond)
        u = uncond - np.logaddexp.reduce(uncond)
        return (scale * (c - u) + u).astype(np.float32)

    return processor


def test_sampling_is_the_guided_distribution(tiny):
    _, m = tiny
    ids = m.tokenizer.encode(PROMPT)
    neg = m.tokenizer.encode(NEGATIVE)
    proc = python_guidance(m, 2.0, neg)
    proc.n_prompt = len(ids)
    for seed in range(4):
        want = m.generate(ids, max_new_tokens=12, temperature=0.9, top_k=50, seed=seed, logits_processor=[proc])
        got = m.generate(ids, max_new_tokens=12, temperature=0.9, top_k=50, seed=seed, guidance_scale=2.0,
                         negative_prompt=neg)
        assert got.tokens == want.tokens
        # logprobs stay the model's own (before any processor)
        lp = m.generate(ids, max_new_tokens=3, guidance_scale=2.0, negative_prompt=neg, logprobs=True, seed=seed)
        plain_row = m.logits(ids)[-1].astype(np.float64)
        assert lp.logprobs[0] == pytest.approx(plain_row[lp.tokens[0]] - np.logaddexp.reduce(plain_row), abs=1e-5)


def test_batches_samples_streams_and_the_batcher(tiny):
    _, m = tiny
    kw = dict(max_new_tokens=10, guidance_scale=1.8, temperature=1.0, seed=5)
    outs = m.generate([PROMPT, "Once upon"], num_return_sequences=2, **kw)
    for p, group in zip([PROMPT, "Once upon"], outs):
        alone = m.generate(p, num_return_sequences=2, **kw)
        assert [o.tokens for o in group] == [o.tokens for o in alone]
    one = m.generate(PROMPT, **kw)
    assert "".join(m.stream(PROMPT, **kw)) == one.text
    with pygpt.Batcher(m, prefill_chunk=3) as b:  # the prompt in pieces: the negative runs with the last
        assert b.generate(PROMPT, **kw).tokens == one.tokens


def test_a_negative_prompt_a_prompt(tiny):
    _, m = tiny
    prompts, negatives = [PROMPT, "Once upon"], [NEGATIVE, m.tokenizer.encode("A dark night")]
    outs = m.generate(prompts, max_new_tokens=10, guidance_scale=2.0, negative_prompt=negatives)
    for p, neg, out in zip(prompts, negatives, outs):
        assert out.tokens == m.generate(p, max_new_tokens=10, guidance_scale=2.0, negative_prompt=neg).tokens
    # one negative prompt for the whole batch
    shared = m.generate(prompts, max_new_tokens=10, guidance_scale=2.0, negative_prompt=NEGATIVE)
    assert shared[0].tokens == outs[0].tokens
    assert shared[1].tokens == m.generate(prompts[1], max_new_tokens=10, guidance_scale=2.0,
                                          negative_prompt=NEGATIVE).tokens
    with pytest.raises(ValueError, match="3 negative prompts for 2 prompts"):
        m.generate(prompts, guidance_scale=2.0, negative_prompt=[NEGATIVE] * 3)
    with pytest.raises(TypeError, match=r"negative_prompt\[1\] must be"):
        m.generate(prompts, guidance_scale=2.0, negative_prompt=[NEGATIVE, 5.0])
    with pytest.raises(ValueError, match=r"negative_prompt\[0\] is empty"):
        m.generate(prompts, guidance_scale=2.0, negative_prompt=["", NEGATIVE])


def test_a_long_negative_prompt_ends_the_sequence_when_its_context_fills(tiny):
    _, m = tiny
    n_ctx = m.config["n_ctx"]
    neg = list(range(100, 100 + n_ctx - 4))
    out = m.generate(PROMPT, max_new_tokens=30, ignore_eos=True, guidance_scale=1.5, negative_prompt=neg)
    assert out.finish_reason == "length" and len(out.tokens) == 5  # the negative sequence reached n_ctx


def test_bad_uses(tiny):
    _, m = tiny
    for kw, err, match in [
        (dict(guidance_scale=1.5, num_beams=2), ValueError, "beam search"),
        (dict(guidance_scale=1.5, prompt_lookup_num_tokens=3), ValueError, "drafts"),
        (dict(guidance_scale=1.5, assistant_model=m), ValueError, "drafts"),
        (dict(negative_prompt="x"), ValueError, "goes with guidance_scale"),
        (dict(guidance_scale=2.0, negative_prompt=""), ValueError, "negative_prompt is empty"),
        (dict(guidance_scale=2.0, negative_prompt=[50257]), ValueError, "outside the vocabulary"),
        (dict(guidance_scale=2.0, negative_prompt=list(range(65))), ValueError, "more than the model's context"),
        (dict(guidance_scale=2.0, negative_prompt=3), TypeError, "negative_prompt must be"),
        (dict(guidance_scale=float("nan")), ValueError, "guidance_scale"),
        (dict(guidance_scale="2"), TypeError, "guidance_scale"),
    ]:
        with pytest.raises(err, match=match):
            m.generate(PROMPT, max_new_tokens=3, **kw)
