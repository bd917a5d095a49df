"""Memory: no growth over many calls, close()/del unmaps the weights, processes share pages.

Linux only (reads /proc). RSS figures are printed (pytest -s) and quoted in RELIABILITY.md.
"""

import gc
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import pygpt

import hostile_files as hf

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux /proc")

PAGE = os.sysconf("SC_PAGE_SIZE")
MB = 1 << 20


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


def mapped(path, pid="self") -> bool:
    real = os.path.realpath(path)
    with open(f"/proc/{pid}/maps") as f:
        return any(line.rstrip("\n").endswith(real) for line in f)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture(scope="module")
def cache_heavy(tmp_path_factory):
    """A model whose KV cache is 1 MiB (2 layers x 1024 positions x 64 x k,v), so a leaked cache or
    logits buffer per call would show at once."""
    cfg = hf.tiny_config(n_layer=2, n_head=4, n_embd=64, n_ctx=1024)
    return hf.write_model(tmp_path_factory.mktemp("mem"), cfg=cfg, tokenizer=True, seed=7)


def flat_rss(fn, calls=1000, warmup=100):
    for i in range(warmup):
        fn(i)
    gc.collect()
    before = rss()
    for i in range(calls):
        fn(i)
    gc.collect()
    return rss() - before


def test_1000_generate_calls_keep_rss_flat(cache_heavy):
    m = pygpt.load(cache_heavy, n_threads=1)
    prompts = [[(i * 7 + j) % 277 for j in range(1 + i % 13)] for i in range(32)]

    def call(i):
        out = m.generate(prompts[i % 32], max_new_tokens=8, ignore_eos=True, logprobs=(i % 2 == 0),
                         temperature=0.7 * (i % 3), seed=i)
        assert len(out.tokens) == 8

    growth = flat_rss(call)
    print(f"\nRSS growth over 1000 generate calls: {growth / 1024:.0f} KiB")
    assert growth < 2 * MB


def test_1000_other_calls_keep_rss_flat(cache_heavy):
    m = pygpt.load(cache_heavy, n_threads=1)
    tok = m.tokenizer
    text = "the weather is nice and the cat is on the mat " * 10

    def call(i):
        m.logits([i % 277, 3, 4, 5])
        ids = tok.encode(text[: 50 + i % 400])
        tok.decode(ids)
        list(m.stream("the", max_new_tokens=4, ignore_eos=True))
        batch = m.generate(["a", "b c", "the"], max_new_tokens=3, ignore_eos=True, num_return_sequences=2)
        assert len(batch) == 3

    growth = flat_rss(call, calls=300, warmup=30)
    print(f"\nRSS growth over 300 logits+encode+decode+stream+batch rounds: {growth / 1024:.0f} KiB")
    assert growth < 2 * MB


def test_embedding_calls_keep_rss_flat_and_small(cache_heavy):
    """Each text gets a KV cache of its own length: a thousand one-token texts in one call
    touch a few pages each, not the pages of 1,000 caches of n_ctx positions."""
    m = pygpt.load(cache_heavy, n_threads=1)
    texts = ["a", "the cat", "weather"] * 333

    def call(i):
        assert m.embed(texts[i % 3:]).shape[1] == 64

    gc.collect()
    before = rss()
    call(0)
    first = rss() - before
    growth = flat_rss(call, calls=30, warmup=3)
    print(f"\nRSS: the first call of 999 texts {first / 1024:.0f} KiB, 30 more {growth / 1024:.0f} KiB")
    assert first < 16 * MB and growth < 2 * MB


def test_failed_calls_leak_nothing(cache_heavy):
    """Errors raised from C++ (bad ids, full caches, bad files) free what they allocated."""
    m = pygpt.load(cache_heavy, n_threads=1)
    from pygpt import _core, _format

    st = os.path.join(cache_heavy, "model.safetensors")
    tensors = _format.read_safetensors_header(st)
    cfg = m.config
    broken = [t if t[0] != "ln_f.bias" else (t[0], t[1], t[2], t[3], t[4] + 10**9) for t in tensors]

    full = m._core.new_cache()
    m._core.forward(full, np.zeros(1024, np.int32))

    def call(i):
        with pytest.raises(ValueError):
            m.logits([300])
        with pytest.raises(ValueError):
            m.generate([1] * 1025, max_new_tokens=1)
        with pytest.raises(pygpt.ModelFormatError):
            _core.Model(st, cfg, broken, 1, "")
        with pytest.raises(ValueError):
            m._core.forward(full, np.zeros(1 + i % 8, np.int32))
        with pytest.raises(ValueError):
            m._core.forward(m._core.new_cache(), np.array([5, 300], np.int32))

    growth = flat_rss(call, calls=300, warmup=30)
    print(f"\nRSS growth over 300 rounds of failing calls: {growth / 1024:.0f} KiB")
    assert growth < 2 * MB


def test_1000_load_close_cycles(cache_heavy):
    """Loading and closing: no mapping, file descriptor or memory left behind."""
    st = os.path.join(cache_heavy, "model.safetensors")

    def count_maps():
        with open("/proc/self/maps") as f:
            return sum(1 for line in f if st in line)

    def call(i):
        m = pygpt.load(cache_heavy, n_threads=1)
        m.logits([1, 2])
        if i % 2:
            m.close()
        del m

    fds = open_fds()
    growth = flat_rss(call, calls=1000, warmup=20)
    print(f"\nRSS growth over 1000 load/close cycles: {growth / 1024:.0f} KiB")
    assert growth < 2 * MB
    assert count_maps() == 0
    assert open_fds() <= fds


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    """A 25 MB model (8 layers, n_embd 256), big enough to see in RSS."""
    cfg = hf.tiny_config(n_layer=8, n_head=4, n_embd=256, n_ctx=64, vocab_size=300)
    return hf.write_model(tmp_path_factory.mktemp("big"), cfg=cfg, seed=1)


def test_close_and_del_unmap_and_return_memory(big):
    st = os.path.join(big, "model.safetensors")
    size = os.path.getsize(st)
    assert size > 20 * MB
    assert pygpt.load(big)._core.copied_bytes == 0  # the weights live in the mapping only
    for how in ("close", "del", "context manager"):
        gc.collect()
        base = rss()
        if how == "context manager":
            with pygpt.load(big, n_threads=1) as m:
                m.logits([1, 2, 3])  # touches every weight: the file's pages are now resident
                assert mapped(st)
                loaded = rss()
        else:
            m = pygpt.load(big, n_threads=1)
            m.logits([1, 2, 3])
            assert mapped(st)
            loaded = rss()
            if how == "close":
                m.close()
            else:
                del m
        gc.collect()
        assert not mapped(st), how
        freed = rss()
        print(f"\n{how}: RSS +{(loaded - base) / MB:.1f} MiB loaded, {(freed - base) / MB:+.1f} MiB after")
        assert loaded - base > 0.8 * size
        assert freed - base < 0.1 * size


def test_mapping_outlives_close_while_a_generation_holds_it(big):
    """A Generation keeps the core model alive: close() then finishing it is safe."""
    from pygpt import generation

    st = os.path.join(big, "model.safetensors")
    m = pygpt.load(big, n_threads=1)
    req = generation._Request(m, [1, 2, 3], max_new_tokens=5, ignore_eos=True)
    gen = req.start()
    ref = m.generate([1, 2, 3], max_new_tokens=5, ignore_eos=True).tokens
    m.close()
    gc.collect()
    assert mapped(st)  # still needed
    gen.run()
    assert gen.result(0)["tokens"] == ref
    del gen, req
    gc.collect()
    assert not mapped(st)


CHILD = textwrap.dedent("""
    import sys
    import pygpt
    m = pygpt.load(sys.argv[1], n_threads=1)
    m.logits([1, 2, 3])          # every weight read: all pages of the file resident
    assert m._core.copied_bytes == 0  # weights used in place from the mapping, not copied
    print("ready", flush=True)
    sys.stdin.readline()         # hold the mapping until the parent has looked
""")


def smaps_of(pid, path):
    """{field: kB} summed over the mappings of path in process pid."""
    real = os.path.realpath(path)
    out, inside = {}, False
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            parts = line.split()
            if "-" in parts[0] and len(parts) >= 5 and not parts[0].endswith(":"):
                inside = line.rstrip("\n").endswith(real)
            elif inside and len(parts) == 3 and parts[2] == "kB":
                out[parts[0].rstrip(":")] = out.get(parts[0].rstrip(":"), 0) + int(parts[1])
    return out


def test_two_processes_share_the_mapped_weights(big):
    st = os.path.join(big, "model.safetensors")
    size_kb = os.path.getsize(st) // 1024
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(pygpt.__file__))))
    procs = [subprocess.Popen([sys.executable, "-c", CHILD, big], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              env=env, text=True) for _ in range(2)]
    try:
        for p in procs:
            assert p.stdout.readline().strip() == "ready"
        stats = [smaps_of(p.pid, st) for p in procs]
    finally:
        for p in procs:
            p.stdin.close()
            p.wait(timeout=60)
    for s in stats:
        print(f"\nchild: Rss {s['Rss']} kB, Pss {s['Pss']} kB, Shared_Clean {s['Shared_Clean']} kB, "
              f"Private {s.get('Private_Clean', 0) + s.get('Private_Dirty', 0)} kB (file {size_kb} kB)")
        assert s["Rss"] > 0.9 * size_kb              # the whole file is resident in each process
        # Pss charges each shared page 1/n to each of the n processes mapping it: about half here.
        # (Shared_Clean is not asserted: kernels >= 6.15 may estimate it as 0 for large folios.)
        assert s["Pss"] < 0.6 * s["Rss"]
        assert s.get("Private_Dirty", 0) == 0        # nothing was copied on write
