"""The f16 and int8 KV caches (pygpt.load(..., kv_cache="f16" or "int8")): keys and values
stored as half floats, or as 8-bit integers with a scale per position and head;
kv_cache="auto" (the default) picks f16 for bf16 and f16 weights, int8 for int8 and int4."""

import numpy as np
import pytest

import pygpt
from reference_gpt2 import gpt2_logits

PROMPT = "The meaning of life is"


def ids_for(m, n, seed=0):
    return np.random.default_rng(seed).integers(0, m.config["vocab_size"], n).tolist()


def std_error(a, b):
    return np.abs(a - b).max() / b.std()


@pytest.mark.parametrize("name", ["tiny", "odd"])
def test_f16_cache_matches_the_reference_with_half_keys_and_values(hf_model_factory, name):
    """The NumPy oracle with keys and values rounded to f16 agrees as closely as the f32 cache
    agrees with the plain oracle; the f32 oracle is further away (the cache really is f16)."""
    _, _, out = hf_model_factory(name)
    m16 = pygpt.load(out, kv_cache="f16")
    assert m16.kv_cache == "f16" and pygpt.load(out).kv_cache == "f32"
    ids = ids_for(m16, min(40, m16.config["n_ctx"]), seed=1)
    logits = m16.logits(ids)
    ref16 = gpt2_logits(out, ids, kv_cache="f16")
    assert np.abs(logits - ref16).max() <= 1e-4
    assert np.abs(logits - gpt2_logits(out, ids)).max() > np.abs(logits - ref16).max()


def test_f16_cache_close_to_f32(hf_model_factory):
    _, _, out = hf_model_factory("gpt2")
    m32, m16 = pygpt.load(out), pygpt.load(out, kv_cache="f16")
    ids = ids_for(m32, 64)
    a, b = m16.logits(ids), m32.logits(ids)
    assert 0 < std_error(a, b) < 2e-3


@pytest.mark.parametrize("kv", ["f16", "int8"])
def test_cache_identical_for_any_thread_count_and_batch(hf_model_factory, kv):
    _, _, out = hf_model_factory("tiny")
    one = pygpt.load(out, n_threads=1, kv_cache=kv)
    ids = ids_for(one, 37, seed=4)
    ref = one.logits(ids)
    prompts = [ids, ids[:5], ids[:20]]
    alone = [one.generate(p, max_new_tokens=6, ignore_eos=True).tokens for p in prompts]
    for n in (2, 3, 5):
        m = pygpt.load(out, n_threads=n, kv_cache=kv)
        assert np.array_equal(m.logits(ids), ref), f"n_threads={n}"
        assert [o.tokens for o in m.generate(prompts, max_new_tokens=6, ignore_eos=True)] == alone


@pytest.mark.parametrize("kv", ["f16", "int8"])
def test_cache_forks_for_several_return_sequences(hf_model_factory, kv):
    _, _, out = hf_model_factory("tiny")
    m = pygpt.load(out, kv_cache=kv)
    outs = m.generate(PROMPT, max_new_tokens=8, num_return_sequences=3, temperature=1.0, seed=5, ignore_eos=True)
    again = m.generate(PROMPT, max_new_tokens=8, num_return_sequences=3, temperature=1.0, seed=5, ignore_eos=True)
    assert [o.tokens for o in outs] == [o.tokens for o in again]
    cache = m._core.new_cache()
    m._core.forward(cache, ids_for(m, 9), False)
    fork = cache.fork()
    assert cache.dtype == kv and fork.dtype == kv and fork.pos == 9
    nxt = ids_for(m, 3, seed=8)
    assert np.array_equal(m._core.forward(fork, nxt, True), m._core.forward(cache, nxt, True))


@pytest.mark.parametrize("dtype,kv", [("f16", "f16"), ("bf16", "f16"), ("int8", "int8"), ("int4", "int8")])
def test_auto_cache_follows_the_weights(hf_model_factory, tmp_path, dtype, kv):
    """The default (kv_cache="auto") gives f32 weights an f32 cache (tested above: transformers'
    logits), bf16 and f16 weights an f16 one and int8 and int4 weights an int8 one: the same
    logits, bit for bit, as asking for it."""
    import pygpt.convert

    _, hf_dir, f32_dir = hf_model_factory("tiny")
    assert pygpt.load(f32_dir).kv_cache == "f32" and pygpt.model.auto_kv_cache("f32") == "f32"
    out = str(tmp_path / dtype)
    pygpt.convert.convert(hf_dir, out, dtype=dtype)
    auto = pygpt.load(out)
    assert auto.kv_cache == kv and pygpt.model.auto_kv_cache(dtype) == kv
    ids = ids_for(auto, 30, seed=2)
    logits = auto.logits(ids)
    assert np.array_equal(logits, pygpt.load(out, kv_cache=kv).logits(ids))
    other = "f32" if kv == "int8" else "int8"
    assert not np.array_equal(logits, pygpt.load(out, kv_cache=other).logits(ids))


@pytest.mark.parametrize("bad", ["f8", "F16", "q8", "INT8", "", None, 16])
def test_bad_kv_cache_is_a_value_error(hf_model_factory, bad):
    _, _, out = hf_model_factory("tiny")
    with pytest.raises(ValueError, match="kv_cache"):
        pygpt.load(out, kv_cache=bad)


@pytest.mark.parametrize("name", ["tiny", "odd"])
def test_int8_cache_matches_the_reference_with_quantized_keys_and_values(hf_model_factory, name):
    """The NumPy oracle with each head's keys and values quantized as the int8 cache stores
    them agrees about as closely as the f32 cache agrees with the plain oracle; the plain
    oracle is much further away (the cache really is int8)."""
    _, _, out = hf_model_factory(name)
    m8 = pygpt.load(out, kv_cache="int8")
    assert m8.kv_cache == "int8"
    ids = ids_for(m8, min(40, m8.config["n_ctx"]), seed=1)
    logits = m8.logits(ids)
    ref8 = gpt2_logits(out, ids, kv_cache="int8")
    assert np.abs(logits - ref8).max() <= 1e-4
    assert np.abs(logits - gpt2_logits(out, ids)).max() > 10 * np.abs(logits - ref8).max()


def test_int8_cache_close_to_f32_and_f16(hf_model_factory):
    """On the gpt2 shape the int8 cache moves the logits more than the f16 cache, and still
    little: the tolerance documented in docs/GENERATION.md."""
    _, _, out = hf_model_factory("gpt2")
    m32, m16, m8 = (pygpt.load(out, kv_cache=kv) for kv in ("f32", "f16", "int8"))
    ids = ids_for(m32, 64)
    ref = m32.logits(ids)
    e16, e8 = std_error(m16.logits(ids), ref), std_error(m8.logits(ids), ref)
    assert 0 < e16 < e8 < 5e-2


def test_int8_cache_step_by_step_equals_one_prompt(hf_model_factory):
    """Keys and values appended one token at a time (decode) are quantized exactly as in one
    prompt: the last logits agree bit for bit."""
    _, _, out = hf_model_factory("odd")
    m = pygpt.load(out, kv_cache="int8")
    ids = ids_for(m, 12, seed=6)
    whole = m._core.forward(m._core.new_cache(), ids, True)
    cache = m._core.new_cache()
    steps = [m._core.forward(cache, [t], False) for t in ids]
    assert np.array_equal(np.concatenate(steps), whole)
