"""Model.embed: final hidden states against transformers and the NumPy oracle, pooling,
batching, and bad inputs."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import pygpt  # noqa: E402
from reference_gpt2 import gpt2_hidden  # noqa: E402


def random_ids(n, vocab, seed=0):
    return np.random.default_rng(seed).integers(0, vocab, n)


def torch_hidden(model, ids):
    with torch.no_grad():
        return model.transformer(torch.tensor(np.asarray(ids))[None]).last_hidden_state[0].numpy()


@pytest.mark.parametrize("name", ["tiny", "odd"])
def test_hidden_states_match_transformers_and_the_reference(hf_model_factory, name):
    model, _, out = hf_model_factory(name)
    m = pygpt.load(out)
    ids = random_ids(min(40, m.config["n_ctx"]), m.config["vocab_size"], seed=2)
    ours = m.embed(ids, pooling="none", normalize=False)
    assert ours.shape == (len(ids), m.config["n_embd"]) and ours.dtype == np.float32
    assert np.abs(ours - torch_hidden(model, ids)).max() <= 1e-4
    assert np.abs(ours - gpt2_hidden(out, ids)).max() <= 1e-4


def test_the_lm_head_of_the_hidden_states_is_the_logits(hf_model_factory):
    _, _, out = hf_model_factory("tiny")
    m = pygpt.load(out)
    ids = random_ids(20, m.config["vocab_size"], seed=3)
    from safetensors.numpy import load_file

    wte = load_file(out + "/model.safetensors")["wte.weight"]
    hidden = m.embed(ids, pooling="none", normalize=False)
    assert np.abs(hidden @ wte.T - m.logits(ids)).max() <= 1e-4


def test_pooling_and_normalisation():
    m = pygpt.load()
    text = "The quick brown fox jumps over the lazy dog."
    states = m.embed(text, pooling="none", normalize=False)
    mean = m.embed(text, normalize=False)
    assert mean.shape == (m.config["n_embd"],) and mean.dtype == np.float32
    np.testing.assert_allclose(mean, states.astype(np.float64).mean(0), rtol=1e-6, atol=1e-6)
    assert np.array_equal(m.embed(text, pooling="last", normalize=False), states[-1])
    unit = m.embed(text)
    np.testing.assert_allclose(unit, mean / np.linalg.norm(mean), rtol=1e-5, atol=1e-7)
    assert abs(np.linalg.norm(unit) - 1) < 1e-5
    np.testing.assert_allclose(np.linalg.norm(m.embed(text, pooling="none"), axis=1), 1, atol=1e-5)
    # a text is embedded as its prompt's tokens (special token texts as special tokens)
    assert np.array_equal(m.embed(text), m.embed(m.tokenizer.encode(text, allowed_special="all")))
    assert np.array_equal(m.embed("a<|endoftext|>b"), m.embed(m.tokenizer.encode("a<|endoftext|>b",
                                                                                  allowed_special="all")))


@pytest.mark.parametrize("pooling", ["mean", "last", "none"])
def test_a_batch_gives_each_input_the_bits_it_gets_alone(hf_model_factory, pooling):
    _, _, out = hf_model_factory("odd")  # n_ctx 37: these 9 inputs take several forward calls
    m = pygpt.load(out, n_threads=2)
    rng = np.random.default_rng(4)
    inputs = [rng.integers(0, 1001, n).tolist() for n in (1, 5, 37, 12, 30, 2, 20, 20, 9)]
    batch = m.embed(inputs, pooling=pooling)
    alone = [m.embed(x, pooling=pooling) for x in inputs]
    if pooling == "none":
        assert isinstance(batch, list) and len(batch) == len(inputs)
        assert all(b.shape == (len(x), 36) for b, x in zip(batch, inputs))
    else:
        assert batch.shape == (len(inputs), 36)
    for b, a in zip(batch, alone):
        assert np.array_equal(b, a)
    one_thread = pygpt.load(out, n_threads=1).embed(inputs, pooling=pooling)
    for b, a in zip(batch, one_thread):
        assert np.array_equal(b, a)


@pytest.mark.parametrize("pooling", ["mean", "last", "none"])
@pytest.mark.parametrize("budget", [1, 7, 16, 37])
def test_inputs_cut_between_calls_get_the_same_bits(hf_model_factory, pooling, budget):
    """EmbeddingRun with a small budget: long inputs go on over several calls from their
    caches, several short ones share a call, and the vectors are embed()'s, bit for bit."""
    from pygpt.embeddings import EmbeddingRun, token_ids

    _, _, out = hf_model_factory("odd")
    m = pygpt.load(out)
    rng = np.random.default_rng(6)
    inputs = [rng.integers(0, 1001, n).tolist() for n in (1, 30, 5, 37, 3, 3, 20)]
    run = EmbeddingRun(m, token_ids(m, inputs, False), pooling)
    calls = 0
    while not run.step(budget):
        calls += 1
    assert calls + 1 >= -(-sum(map(len, inputs)) // budget)
    for v, x in zip(run.vectors, inputs):
        assert np.array_equal(v, m.embed(x, pooling=pooling))


def test_a_batcher_embeds_between_generation_steps(hf_model_factory):
    """Batcher.embed gives model.embed's bits, a forward call of at most prefill_chunk tokens
    between two steps of the running sequences: a stream goes on while it runs."""
    m = pygpt.load()
    texts = ["The cat sat on the mat. " * k for k in (1, 9, 20, 3, 14)]
    want = m.embed(texts)
    with pygpt.Batcher(m, prefill_chunk=16) as b:
        assert np.array_equal(b.embed(texts), want)
        assert np.array_equal(b.embed(texts[1]), want[1])
        assert all(np.array_equal(x, y) for x, y in zip(b.embed(texts[:2], pooling="none"),
                                                       m.embed(texts[:2], pooling="none")))
        stream = iter(b.stream("Once upon a time", max_new_tokens=40, ignore_eos=True))
        next(stream)
        job = b.submit_embed(texts)
        while_embedding = sum(1 for _ in stream if not job.done())
        calls = -(-sum(len(m.tokenizer.encode(t)) for t in texts) // 16)  # at least
        assert while_embedding >= min(calls, 39) - 2  # a token a call, give or take the start
        assert np.array_equal(job.result(), want)
        n = [len(m.tokenizer.encode(t)) for t in texts]
        assert b.embedded_tokens == sum(n) + n[1] + n[0] + n[1] + sum(n)  # the four requests'
        with pytest.raises(ValueError, match="pooling must be one of"):
            b.embed("x", pooling="max")
        with pytest.raises(ValueError, match=r"inputs\[1\] is empty"):
            b.submit_embed(["ok", ""])
        job = b.submit_embed(texts)
        job.cancel()
        with pytest.raises(pygpt.BatcherClosed, match="cancelled"):
            job.result()
    with pytest.raises(pygpt.BatcherClosed):
        b.embed("x")


def test_truncate(hf_model_factory):
    _, _, out = hf_model_factory("odd")
    m = pygpt.load(out)
    ids = random_ids(50, 1001, seed=5).tolist()
    with pytest.raises(ValueError, match=r"inputs\[0\] is 50 tokens, more than n_ctx = 37.*truncate=True"):
        m.embed(ids)
    assert np.array_equal(m.embed(ids, truncate=True), m.embed(ids[:37]))


def test_similar_texts_are_closer_than_unrelated_ones():
    """Not a quality claim about GPT-2 embeddings: only that the vectors carry the text (a
    text is nearest to itself with a word changed than to an unrelated one)."""
    m = pygpt.load()
    a, b, c = m.embed(["The cat sat on the mat today.", "The cat sat on the rug today.",
                       "Quarterly revenue rose by four percent in 1997"])
    assert a @ b > a @ c


def test_bad_inputs(hf_model_factory):
    m = pygpt.load()
    for bad, err, match in [
        ("", ValueError, r"inputs\[0\] is empty"),
        ([], ValueError, "empty input"),
        (["ok", ""], ValueError, r"inputs\[1\] is empty"),
        ([[1, 2], []], ValueError, r"inputs\[1\] is empty"),
        (None, TypeError, "inputs must be"),
        (3, TypeError, "inputs must be"),
        (["ok", 3], TypeError, r"inputs\[1\] must be a str or a list of token ids"),
        ([[1, 2], [1.5]], TypeError, r"inputs\[1\]"),
        ([1, m.config["vocab_size"]], ValueError, "out of range"),
        ([[-1]], ValueError, r"inputs\[0\]: token id -1 out of range"),
    ]:
        with pytest.raises(err, match=match):
            m.embed(bad)
    with pytest.raises(ValueError, match="pooling must be one of 'mean', 'last', 'none'"):
        m.embed("x", pooling="max")
    with pytest.raises(TypeError, match="normalize"):
        m.embed("x", normalize=1)
    with pytest.raises(TypeError, match="truncate"):
        m.embed("x", truncate="yes")
    _, _, out = hf_model_factory("odd")
    with pytest.raises(ValueError, match="no tokenizer: pass token ids"):
        pygpt.load(out).embed("text")
    m.close()
    with pytest.raises(ValueError, match="closed"):
        m.embed("x")


def test_the_core_refuses_what_the_python_side_checks(hf_model_factory):
    """The binding's own checks (a caller of _core reaches it without embed's)."""
    m = pygpt.load()
    core = m._core
    with pytest.raises(ValueError, match="no sequences"):
        core.hidden_states([])
    with pytest.raises(ValueError, match="empty input"):
        core.hidden_states([np.array([], np.int32)])
    with pytest.raises(ValueError, match="out of range"):
        core.hidden_states([np.array([m.config["vocab_size"]], np.int32)])
    with pytest.raises(ValueError, match="n_ctx|sequence of"):
        core.hidden_states([np.zeros(m.config["n_ctx"] + 1, np.int32)])
    short = core.new_cache(4)
    with pytest.raises(ValueError, match="sequence of 5"):
        core.hidden_states([np.zeros(5, np.int32)], True, [short])
    with pytest.raises(ValueError, match="one a sequence"):
        core.hidden_states([np.zeros(2, np.int32)], True, [short, short])
    with pytest.raises(ValueError, match="appears twice"):
        core.hidden_states([np.zeros(1, np.int32)] * 2, True, [short, short])
    with pytest.raises(ValueError, match="another model"):
        pygpt.load(hf_model_factory("odd")[2])._core.hidden_states([np.zeros(1, np.int32)], True, [short])
    with pytest.raises(ValueError, match="positions out of range"):
        core.new_cache(m.config["n_ctx"] + 1)


@pytest.mark.parametrize("dtype, floor", [("bf16", 0.999), ("f16", 0.9999), ("int8", 0.99), ("int4", 0.9)])
def test_every_dtype_embeds_close_to_f32(hf_model_factory, tmp_path, dtype, floor):
    """The same forward pass at every weight type: vectors near f32's (cosine; random weights,
    so the bound is loose for int4 and only catches a broken path)."""
    import pygpt.convert

    _, hf_dir, f32_dir = hf_model_factory("tiny")
    out = pygpt.convert.convert(hf_dir, str(tmp_path / dtype), dtype=dtype, tokenizer=pygpt.load(f32_dir).path)
    texts = ["The quick brown fox.", "Jumps over the lazy dog, twice.", "A"]
    want, got = pygpt.load(f32_dir).embed(texts), pygpt.load(out).embed(texts)
    cos = (want * got).sum(1)
    assert cos.min() > floor, cos
