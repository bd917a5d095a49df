"""A model's prefix cache (pygpt.load(..., prefix_cache=n)): generate keeps the KV caches of
its last n finished sequences, and a later prompt that starts with the tokens one of them ran
runs only the rest. Every output must be bitwise what a model without the cache gives."""

import threading

import pytest

import pygpt

pytest.importorskip("torch")

PREAMBLE = "Q: What is the capital of France? A: Paris. Q: And of Spain? A:"
QUESTIONS = [" Madrid. Q: And of Italy? A:", " Madrid. Q: Of Peru? A:", " Lima?"]


@pytest.fixture(scope="module")
def folder(hf_model_factory):
    return hf_model_factory("tiny")[2]  # n_ctx 64, the GPT-2 tokenizer


@pytest.fixture(scope="module")
def plain(folder):
    return pygpt.load(folder, prefix_cache=0)


def assert_same(got, want):
    if isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want)
        for g, w in zip(got, want):
            assert_same(g, w)
        return
    assert got.tokens == want.tokens and got.text == want.text and got.finish_reason == want.finish_reason
    assert got.logprobs == want.logprobs and got.top_logprobs == want.top_logprobs  # bitwise: the same rows
    assert got.prompt_tokens == want.prompt_tokens


def prompt_tokens(out):
    outs = out if isinstance(out, list) else [out]
    return len(outs[0].prompt_tokens)


@pytest.mark.parametrize("options", [
    dict(max_new_tokens=8, logprobs=True, top_logprobs=3),
    dict(max_new_tokens=8, temperature=0.9, top_p=0.9, seed=5, logprobs=True),
    dict(max_new_tokens=6, temperature=1.0, seed=2, num_return_sequences=3),
    dict(max_new_tokens=6, repetition_penalty=1.3, no_repeat_ngram_size=2),
    dict(max_new_tokens=6, prompt_lookup_num_tokens=3),
])
def test_later_prompts_take_their_prefix_with_the_same_bits(folder, plain, options):
    model = pygpt.load(folder, prefix_cache=2)
    prompts = [PREAMBLE + q for q in QUESTIONS]
    cached = []
    for i in range(len(prompts) + 1):
        if i == len(prompts):  # the last prompt, its answer and more: only what came after runs
            answer = out[0].text if isinstance(out, list) else out.text
            prompts.append(prompts[-1] + answer + " Q:")
        out = model.generate(prompts[i], **options)
        assert_same(out, plain.generate(prompts[i], **options))
        t = (out[0] if isinstance(out, list) else out).timings
        assert t.prefill_tokens + t.cached_tokens == prompt_tokens(out)
        cached.append(t.cached_tokens)
    assert cached[0] == 0 and all(c >= len(model.tokenizer.encode(PREAMBLE)) - 1 for c in cached[1:3])
    assert cached[3] >= len(model.tokenizer.encode(prompts[2])) - 1


def test_what_does_not_use_it(folder, plain):
    model = pygpt.load(folder, prefix_cache=2)
    model.generate(PREAMBLE, max_new_tokens=4)
    # a prompt's own logprobs need every prompt row; beam search keeps no caches
    for options in (dict(echo=True, logprobs=True, max_new_tokens=3), dict(num_beams=3, max_new_tokens=4)):
        out = model.generate(PREAMBLE + QUESTIONS[0], **options)
        assert out.timings.cached_tokens == 0
        want = plain.generate(PREAMBLE + QUESTIONS[0], **options)
        assert out.tokens == want.tokens and out.logprobs == want.logprobs


def test_a_conversation_runs_each_turn_once(folder, plain):
    model = pygpt.load(folder)  # the default: the last sequence
    assert model.prefix_cache == 1
    messages = [{"role": "user", "content": "Hello there"}]
    first = model.chat(messages, max_new_tokens=5, ignore_eos=True)
    messages += [{"role": "assistant", "content": first.text}, {"role": "user", "content": "And then?"}]
    second = model.chat(messages, max_new_tokens=5, ignore_eos=True)
    assert second.timings.cached_tokens >= len(first.prompt_tokens)
    assert_same(second, plain.chat(messages, max_new_tokens=5, ignore_eos=True))


def test_the_assistants_caches_are_kept_too(folder, plain):
    model = pygpt.load(folder, prefix_cache=1)
    assistant = pygpt.load(folder, kv_cache="f16")
    options = dict(max_new_tokens=8, assistant_model=assistant, num_assistant_tokens=3)
    for q in QUESTIONS[:2]:
        out = model.generate(PREAMBLE + q, **options)
        assert_same(out, plain.generate(PREAMBLE + q, max_new_tokens=8))
    assert out.timings.cached_tokens > 0
    # the assistant ran only its share of the rest of the prompt, and its drafts
    assert out.timings.assistant_tokens < prompt_tokens(out)


def test_capacity(folder):
    model = pygpt.load(folder, prefix_cache=1)
    model.generate(PREAMBLE, max_new_tokens=3)
    model.generate("Something else entirely", max_new_tokens=3)  # drops the preamble's cache
    assert len(model._prefix_cache) == 1
    assert model.generate(PREAMBLE + QUESTIONS[0], max_new_tokens=3).timings.cached_tokens == 0
    model.prefix_cache = 3
    for q in QUESTIONS:
        model.generate(q, max_new_tokens=2, num_return_sequences=2, temperature=1.0, seed=1)
    assert len(model._prefix_cache) == 3
    model.prefix_cache = 0  # off: the kept caches are freed
    assert len(model._prefix_cache) == 0 and model.prefix_cache == 0
    model.generate(PREAMBLE, max_new_tokens=3)
    assert model.generate(PREAMBLE + QUESTIONS[0], max_new_tokens=3).timings.cached_tokens == 0
    for bad in (-1, True, 1.5, "2", None):
        with pytest.raises(ValueError, match="prefix_cache must be an integer >= 0"):
            model.prefix_cache = bad
        with pytest.raises(ValueError, match="prefix_cache must be an integer >= 0"):
            pygpt.load(folder, prefix_cache=bad)
    model.prefix_cache = 2
    model.generate(PREAMBLE, max_new_tokens=3)
    model.close()  # frees the kept caches with the weights
    assert len(model._prefix_cache) == 0


def test_threads_share_one_model_and_its_cache(folder, plain):
    model = pygpt.load(folder, prefix_cache=2)
    prompts = [PREAMBLE + q for q in QUESTIONS]
    kw = dict(max_new_tokens=6, temperature=0.8, seed=7, logprobs=True)
    want = [plain.generate(p, **kw) for p in prompts]
    got = [[] for _ in range(4)]

    def run(i):  # each thread asks every prompt twice, from its own place in the list
        for k in range(2 * len(prompts)):
            j = (i + k) % len(prompts)
            got[i].append((j, model.generate(prompts[j], **kw)))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(got))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for outs in got:
        assert len(outs) == 2 * len(prompts)
        for j, out in outs:
            assert_same(out, want[j])
    assert sum(out.timings.cached_tokens > 0 for outs in got for _, out in outs) >= 4
    assert len(model._prefix_cache) <= 2


def test_the_benchmark_tool(folder, load_tool, capsys):
    tool = load_tool("bench_prefix")
    assert tool.main([folder, "--threads", "1", "--preamble", "30", "--questions", "3", "--new", "3"]) == 0
    out = capsys.readouterr().out
    assert "the same tokens: True" in out and "| prefix_cache=1 |" in out and "faster with the prefix cache" in out
