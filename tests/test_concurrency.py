"""Many Python threads on one shared model.

What is thread-safe (RELIABILITY.md has the table):
  * pygpt.Model: logits(), generate(), stream() and _core.forward() may be called from any
    number of threads at once. Every forward pass takes the model's mutex, so passes on one
    model run one at a time, each on the model's n_threads cores: threads never oversubscribe
    the CPU, and results are bitwise those of sequential calls.
  * pygpt.Tokenizer: immutable; encode/decode from any number of threads at once.
  * A KV cache, a _core.Generation and a stream (TextStream) belong to one thread at a time
    (a Generation refuses a second concurrent caller with RuntimeError).
"""

import os
import resource
import threading
import time

import numpy as np
import pytest

import pygpt

import hostile_files as hf

N_THREADS = 8
CFG = hf.tiny_config(n_layer=3, n_head=4, n_embd=128, n_ctx=128)
PROMPTS = [[(13 * t + 7 * i) % 277 for i in range(3 + t)] for t in range(N_THREADS)]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return hf.write_model(tmp_path_factory.mktemp("conc"), cfg=CFG, tokenizer=True, seed=5)


def run_threads(fn, n=N_THREADS):
    """Runs fn(i) on n threads started together; returns the results, re-raises any error."""
    results, errors = [None] * n, []
    barrier = threading.Barrier(n)

    def body(i):
        try:
            barrier.wait()
            results[i] = fn(i)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=body, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results


def cpu_seconds():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


@pytest.mark.parametrize("n_threads", [1, 2])
def test_threads_generate_like_sequential(folder, n_threads):
    m = pygpt.load(folder, n_threads=n_threads)
    opts = dict(max_new_tokens=48, ignore_eos=True)
    expected = [m.generate(p, **opts).tokens for p in PROMPTS]
    expected_text = [m.generate(p, **opts).text for p in PROMPTS]
    rounds = 3

    def work(i):
        out = []
        for r in range(rounds):
            j = (i + r) % N_THREADS  # every thread runs several prompts, in a different order
            o = m.generate(PROMPTS[j], **opts)
            out.append((j, o.tokens, o.text))
        return out

    wall0, cpu0 = time.perf_counter(), cpu_seconds()
    results = run_threads(work)
    wall, cpu = time.perf_counter() - wall0, cpu_seconds() - cpu0
    for per_thread in results:
        for j, tokens, text in per_thread:
            assert tokens == expected[j]
            assert text == expected_text[j]
    # no oversubscription: the passes are serialised, so the process never keeps more than
    # n_threads cores busy (8 unserialised threads would use min(8 * n_threads, cores))
    busy = cpu / wall
    print(f"\n{N_THREADS} threads x {rounds} generations, n_threads={n_threads}: "
          f"{busy:.2f} cores busy on average ({os.cpu_count()} on the machine)")
    assert busy <= n_threads + 0.5


def test_threads_sampled_generation_is_seeded(folder):
    """Sampling with a seed gives the same tokens whatever runs beside it."""
    m = pygpt.load(folder, n_threads=1)
    opts = dict(max_new_tokens=24, ignore_eos=True, temperature=1.0, top_k=50)
    expected = [m.generate(p, seed=i, **opts).tokens for i, p in enumerate(PROMPTS)]
    got = run_threads(lambda i: m.generate(PROMPTS[i], seed=i, **opts).tokens)
    assert got == expected


def test_threads_mix_every_entry_point(folder):
    """logits, generate, stream, forward on private caches and the tokenizer, all at once."""
    m = pygpt.load(folder, n_threads=2)
    tok = m.tokenizer
    text = "the cat sat on the mat. " * 20
    ref_logits = m.logits(PROMPTS[3])
    ref_gen = m.generate(PROMPTS[1], max_new_tokens=16, ignore_eos=True).tokens
    ref_stream = "".join(m.stream("the", max_new_tokens=16, ignore_eos=True))
    ref_ids = tok.encode(text)
    core = m._core
    ref_cache = core.new_cache()
    ref_fwd = core.forward(ref_cache, np.array(PROMPTS[2], np.int32), True)

    def work(i):
        for _ in range(5):
            kind = i % 5
            if kind == 0:
                np.testing.assert_array_equal(m.logits(PROMPTS[3]), ref_logits)
            elif kind == 1:
                assert m.generate(PROMPTS[1], max_new_tokens=16, ignore_eos=True).tokens == ref_gen
            elif kind == 2:
                assert "".join(m.stream("the", max_new_tokens=16, ignore_eos=True)) == ref_stream
            elif kind == 3:
                assert tok.encode(text) == ref_ids and tok.decode(ref_ids) == text
            else:
                cache = core.new_cache()
                np.testing.assert_array_equal(core.forward(cache, np.array(PROMPTS[2], np.int32), True), ref_fwd)
        return True

    assert all(run_threads(work, n=10))


def test_one_generation_refuses_two_threads(folder):
    m = pygpt.load(folder, n_threads=1)
    from pygpt import generation

    req = generation._Request(m, PROMPTS[0], max_new_tokens=CFG["n_ctx"] - len(PROMPTS[0]), ignore_eos=True)
    gen = req.start()
    outcome = []

    def step_all():
        try:
            while gen.step():
                pass
            outcome.append("done")
        except RuntimeError as e:
            outcome.append(str(e))

    run_threads(lambda i: step_all(), n=4)
    assert "done" in outcome
    # whoever lost the race got a clear error, and the winner's result is intact
    assert all(o == "done" or "already running" in o for o in outcome)
    assert len(gen.result(0)["tokens"]) == CFG["n_ctx"] - len(PROMPTS[0])


def test_close_while_other_threads_run(folder):
    """close() (or del) while other threads compute: they finish; the mapping goes with the last."""
    m = pygpt.load(folder, n_threads=1)
    ref = m.generate(PROMPTS[0], max_new_tokens=64, ignore_eos=True).tokens
    started = threading.Barrier(N_THREADS + 1)
    results = []

    def work():
        core_generate = m.generate  # bound before close()
        started.wait()
        try:
            results.append(core_generate(PROMPTS[0], max_new_tokens=64, ignore_eos=True).tokens)
        except (ValueError, TypeError, AttributeError) as e:  # closed before it began: a Python error
            results.append(type(e).__name__)

    threads = [threading.Thread(target=work) for _ in range(N_THREADS)]
    for t in threads:
        t.start()
    started.wait()
    m.close()
    for t in threads:
        t.join()
    assert len(results) == N_THREADS
    assert all(r == ref or isinstance(r, str) for r in results)


def test_no_thread_explosion(folder):
    """Threads the process holds after many rounds of concurrent calls: back to where it was.
    (OpenMP gives each calling thread its own worker pool; the workers leave with their thread,
    asynchronously, so the count is polled for a moment.)"""
    m = pygpt.load(folder, n_threads=2)

    def count():
        return len(os.listdir("/proc/self/task"))

    def settled(limit):
        deadline = time.monotonic() + 5
        while count() > limit and time.monotonic() < deadline:
            time.sleep(0.01)
        return count()

    before = count()
    for _ in range(4):
        run_threads(lambda i: m.generate(PROMPTS[i], max_new_tokens=8, ignore_eos=True))
    assert settled(before + 1) <= before + 1  # (+1: the main thread's pool, if it made one)
