"""The C++ forward pass against transformers, the NumPy oracle, itself (KV cache vs
recompute) and across ISA paths."""

import platform

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import pygpt  # noqa: E402
from reference_gpt2 import gpt2_logits  # noqa: E402

ISAS = pygpt.system_info()["isas"]


def torch_logits(model, ids):
    with torch.no_grad():
        return model(torch.tensor(np.asarray(ids))[None]).logits[0].numpy()


def random_ids(n, vocab, seed=0):
    return np.random.default_rng(seed).integers(0, vocab, n)


@pytest.mark.parametrize("name", ["tiny", "odd", "gpt2"])
def test_logits_match_transformers(hf_model_factory, name):
    model, _, out = hf_model_factory(name)
    m = pygpt.load(out)
    n = min(64, m.config["n_ctx"])
    ids = random_ids(n, m.config["vocab_size"])
    diff = np.abs(m.logits(ids) - torch_logits(model, ids)).max()
    assert diff <= 1e-4, f"max |diff| {diff}"


@pytest.mark.parametrize("name", ["tiny", "odd"])
def test_numpy_reference_agrees(hf_model_factory, name):
    _, _, out = hf_model_factory(name)
    m = pygpt.load(out)
    ids = random_ids(min(40, m.config["n_ctx"]), m.config["vocab_size"], seed=1)
    assert np.abs(m.logits(ids) - gpt2_logits(out, ids)).max() <= 1e-4


def test_greedy_tokens_match_transformers(hf_model_factory):
    model, _, out = hf_model_factory("gpt2")
    m = pygpt.load(out)
    prompt = [15496, 995, 11, 314, 716]
    with torch.no_grad():
        ref = model.generate(torch.tensor([prompt]), max_new_tokens=32, do_sample=False,
                             pad_token_id=50256)[0, len(prompt):].tolist()
    # our greedy loop over the KV cache
    cache = m._core.new_cache()
    logits = m._core.forward(cache, np.array(prompt, np.int32))
    ours = []
    for _ in range(32):
        tok = int(np.argmax(logits[-1]))
        ours.append(tok)
        logits = m._core.forward(cache, np.array([tok], np.int32))
    assert ours == ref


@pytest.mark.parametrize("name", ["tiny", "odd"])
def test_kv_cache_equals_recompute(hf_model_factory, name):
    _, _, out = hf_model_factory(name)
    m = pygpt.load(out)
    ids = random_ids(min(30, m.config["n_ctx"]), m.config["vocab_size"], seed=2)
    full = m.logits(ids)
    cache = m._core.new_cache()
    rows = [m._core.forward(cache, ids[:10].astype(np.int32), all_logits=True)]
    for t in ids[10:]:
        rows.append(m._core.forward(cache, np.array([t], np.int32)))
    assert cache.pos == len(ids)
    np.testing.assert_allclose(np.concatenate(rows), full, atol=1e-5, rtol=0)


@pytest.mark.parametrize("isa", ISAS)
def test_isa_paths_agree(hf_model_factory, monkeypatch, isa):
    _, _, out = hf_model_factory("odd")
    ids = random_ids(30, 1001, seed=3)
    monkeypatch.setenv("PYGPT_ISA", "scalar")
    ref = pygpt.load(out).logits(ids)
    monkeypatch.setenv("PYGPT_ISA", isa)
    m = pygpt.load(out)
    assert m.isa == isa
    assert np.abs(m.logits(ids) - ref).max() <= 1e-4


def test_logits_identical_for_any_thread_count(hf_model_factory):
    _, _, out = hf_model_factory("tiny")
    ids = random_ids(20, 50257, seed=4)
    ref = pygpt.load(out, n_threads=1).logits(ids)
    for n in (2, 3):
        assert np.array_equal(pygpt.load(out, n_threads=n).logits(ids), ref)


def test_fork_continues_identically(hf_model_factory):
    _, _, out = hf_model_factory("tiny")
    m = pygpt.load(out)
    cache = m._core.new_cache()
    m._core.forward(cache, np.array([1, 2, 3], np.int32))
    fork = cache.fork()
    assert fork.pos == 3
    a = m._core.forward(cache, np.array([4], np.int32))
    b = m._core.forward(fork, np.array([4], np.int32))
    assert np.array_equal(a, b)


def test_system_info_reports_isa_and_threads(monkeypatch):
    monkeypatch.delenv("PYGPT_ISA", raising=False)
    info = pygpt.system_info()
    assert info["isa"] == info["isas"][-1]  # the widest path the CPU runs
    assert info["isas"][0] == "scalar"
    assert set(info["isas"]) <= {"scalar", "avx2", "avx2vnni", "avx512", "avx512bf16", "amx", "neon", "neondot"}
    assert ("avx2" in info["isas"]) == info["cpu_avx2"] and ("avx512" in info["isas"]) == info["cpu_avx512"]
    assert ("avx2vnni" in info["isas"]) == info["cpu_avx2_vnni"] and (info["cpu_avx2"] or not info["cpu_avx2_vnni"])
    assert ("avx512bf16" in info["isas"]) == info["cpu_avx512_bf16"] and (info["cpu_avx512"] or not info["cpu_avx512_bf16"])
    assert ("amx" in info["isas"]) == info["cpu_amx"] and (info["cpu_avx512_bf16"] or not info["cpu_amx"])
    assert info["cpu_avx2"] or not info["cpu_avx512"]
    assert ("neon" in info["isas"]) == info["cpu_neon"] == (platform.machine() in ("aarch64", "arm64"))
    assert ("neondot" in info["isas"]) == info["cpu_neon_dot"] and (info["cpu_neon"] or not info["cpu_neon_dot"])
    assert info["n_threads"] >= 1


def test_forced_isa_unknown_is_a_clear_error(hf_model_factory, monkeypatch):
    _, _, out = hf_model_factory("tiny")
    monkeypatch.setenv("PYGPT_ISA", "sse9")
    with pytest.raises(ValueError, match="unknown ISA"):
        pygpt.load(out)


THIS_ARCH_ISAS = ["neon", "neondot"] if platform.machine() in ("aarch64", "arm64") else [
    "avx2", "avx2vnni", "avx512", "avx512bf16", "amx"]


@pytest.mark.parametrize("isa", [i for i in THIS_ARCH_ISAS if i not in ISAS])
def test_forced_isa_this_cpu_lacks_is_a_clear_error(hf_model_factory, monkeypatch, isa):
    """A path of this architecture that the CPU cannot run (here: AVX-VNNI on a CPU with
    AVX-512 but no AVX-VNNI, such as Zen 4) is a ValueError naming what it lacks."""
    _, _, out = hf_model_factory("tiny")
    monkeypatch.setenv("PYGPT_ISA", isa)
    with pytest.raises(ValueError, match=f"PYGPT_ISA={isa}: this (CPU lacks|build has no)"):
        pygpt.load(out)


OTHER_ARCH_ISAS = ["avx2", "avx2vnni", "avx512", "avx512bf16", "amx"] if platform.machine() in ("aarch64", "arm64") else ["neon", "neondot"]


@pytest.mark.parametrize("other", OTHER_ARCH_ISAS)
def test_forced_isa_of_another_architecture_is_a_clear_error(monkeypatch, other):
    monkeypatch.setenv("PYGPT_ISA", other)
    with pytest.raises(ValueError, match=f"PYGPT_ISA={other}: not a kernel path of this CPU architecture"):
        pygpt.load()
