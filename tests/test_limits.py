"""Limits and interrupts: Ctrl-C mid-generation, a full context, max_new_tokens=0, empty prompts.

Documented behaviour (RELIABILITY.md):
  * KeyboardInterrupt (Ctrl-C, or any signal whose handler raises) stops generate() at the next
    token boundary; the model stays usable and gives the same results afterwards.
  * A sequence never holds more than n_ctx tokens: prompt + generated <= n_ctx, and generation
    stops with finish_reason "length" when the context is full (a prompt of exactly n_ctx
    tokens generates nothing).
  * max_new_tokens=0 returns no tokens, finish_reason "length".
  * An empty str prompt starts from <|endoftext|> (as GPT-2 starts a document); an empty list
    of ids is a ValueError; an empty str on a model without a tokenizer is a ValueError.
"""

import linecache
import signal
import sys
import threading
import time

import numpy as np
import pytest

import pygpt

import hostile_files as hf

CFG = hf.tiny_config(n_layer=2, n_head=4, n_embd=64, n_ctx=1024)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    folder = hf.write_model(tmp_path_factory.mktemp("limits"), cfg=CFG, tokenizer=True, seed=3)
    return pygpt.load(folder, n_threads=1)


def greedy_reference(m, prompt, n):
    """Greedy continuation computed with full forward passes (no KV cache, no generate loop)."""
    ids = list(prompt)
    for _ in range(n):
        ids.append(int(np.argmax(m.logits(ids)[-1])))
    return ids[len(prompt):]


def is_greedy(m, prompt, tokens) -> bool:
    """Each token is the argmax after the ones before it: one full forward pass checks them all."""
    if not tokens:
        return True
    full = list(prompt) + list(tokens)
    return np.argmax(m.logits(full[:-1]), axis=1)[len(prompt) - 1:].tolist() == list(tokens)


# -- KeyboardInterrupt -------------------------------------------------------------------------


class Interrupter:
    """Sends SIGINT to the main thread every few ms once the main thread is inside a
    `gen.run()` call (its innermost Python frame is at such a line: the C++ loop is running,
    the GIL released), until stop.

    The SIGINT handler raises KeyboardInterrupt only inside `call(fn)`, once, and records how
    many tokens `count()` saw at that moment; signals after the first, or outside call(fn), are
    ignored."""

    def __init__(self, count=lambda: None, delay=0.002):
        self.count, self.delay = count, delay
        self.done = threading.Event()
        self.inside = False
        self.seen = {}

    def _handler(self, signum, frame):
        if not self.inside or "tokens" in self.seen:
            return
        self.seen["tokens"] = self.count()
        self.seen["t_handler"] = time.perf_counter()
        # the loop's own check saw it, not Python once the loop had ended (and left it pending)
        gen = frame.f_locals.get("gen") if self._in_run(frame) else None
        self.seen["in_run"] = gen is not None and not gen.done
        raise KeyboardInterrupt

    @staticmethod
    def _in_run(frame) -> bool:
        return frame is not None and "gen.run()" in linecache.getline(frame.f_code.co_filename, frame.f_lineno)

    @classmethod
    def _main_in_run(cls) -> bool:
        return cls._in_run(sys._current_frames().get(threading.main_thread().ident))

    def _send(self):
        while not self.done.is_set() and not self._main_in_run():
            time.sleep(0.0005)
        time.sleep(self.delay)
        while not self.done.is_set():
            signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)
            self.seen.setdefault("t_sent", time.perf_counter())  # after the first signal left
            self.done.wait(0.005)

    def call(self, fn) -> bool:
        """fn() with the handler armed: True if a KeyboardInterrupt raised inside run()'s loop
        stopped it, False if it returned or the interrupt came only after the loop (inconclusive
        both: the host kept the sender thread off the CPU until the loop had finished). It may
        return only if no signal was sent well before it did."""
        self.inside = True
        try:
            fn()
        except KeyboardInterrupt:
            return self.seen["in_run"]
        finally:
            t_end = time.perf_counter()
            self.inside = False
        sent = self.seen.get("t_sent")
        assert sent is None or sent > t_end - 0.001, \
            f"a SIGINT sent {1000 * (t_end - sent):.1f} ms before the call returned did not stop it"
        return False

    def __enter__(self):
        self.old = signal.signal(signal.SIGINT, self._handler)
        self.thread = threading.Thread(target=self._send)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.done.set()
        self.thread.join()
        time.sleep(0.01)  # let signals still pending reach our handler, not the default one
        signal.signal(signal.SIGINT, self.old)


ATTEMPTS = 20  # a generation here lasts ~35 ms: a busy host can stall the sender thread that long (a
#              full run beside other test runs once missed 5 in a row; a miss costs one generation)


def test_keyboard_interrupt_stops_within_one_token(model):
    from pygpt import generation

    prompt = [5, 6, 7]
    max_new = CFG["n_ctx"] - len(prompt)
    log = []
    for _ in range(ATTEMPTS):
        req = generation._Request(model, prompt, max_new_tokens=max_new, ignore_eos=True)
        gen = req.start()
        gen.step()  # prefill: the interrupt can only arrive inside run()'s token loop
        # the handler runs in the main thread at the loop's next check, while the loop is paused
        # between two tokens: how many tokens exist then is how many exist when run() gives up
        with Interrupter(lambda: len(gen.result(0)["tokens"])) as intr:
            interrupted = intr.call(lambda: gen.run())
        n = len(gen.result(0)["tokens"])
        log.append((interrupted, n, intr.seen))
        if interrupted and 1 < n < max_new:
            break
    else:
        pytest.fail(f"no interrupt arrived mid-generation in {ATTEMPTS} attempts: {log}")
    r = gen.result(0)
    assert n == intr.seen["tokens"], "no token was generated after the interrupt was seen"
    assert r["finish_reason"] is None
    # the tokens it kept are the right ones, and the model is usable afterwards
    assert is_greedy(model, prompt, r["tokens"])
    out = model.generate(prompt, max_new_tokens=8, ignore_eos=True)
    assert out.tokens == greedy_reference(model, prompt, 8)
    print(f"\ninterrupt seen {1000 * (intr.seen['t_handler'] - intr.seen['t_sent']):.2f} ms after the "
          f"signal, after {n} tokens, attempt {len(log)}")


def test_keyboard_interrupt_through_generate(model):
    """The public API: KeyboardInterrupt propagates out of model.generate; nothing is left locked."""
    for _ in range(3):
        for _ in range(ATTEMPTS):
            with Interrupter() as intr:
                if intr.call(lambda: model.generate([1], max_new_tokens=CFG["n_ctx"], ignore_eos=True)):
                    break
        else:
            pytest.fail(f"no interrupt seen inside generate()'s loop in {ATTEMPTS} attempts: {intr.seen}")
        assert model.generate([1, 2], max_new_tokens=4, ignore_eos=True).tokens == \
            greedy_reference(model, [1, 2], 4)


def test_stream_interrupted_then_reused(model):
    stream = model.stream("the", max_new_tokens=50, ignore_eos=True)
    next(iter(stream))
    del stream  # abandoning a stream mid-way is fine
    a = model.generate("the", max_new_tokens=10, ignore_eos=True)
    b = model.generate("the", max_new_tokens=10, ignore_eos=True)
    assert a.tokens == b.tokens


# -- the context limit ---------------------------------------------------------------------------


@pytest.mark.parametrize("prompt_len", [1, 1000, 1022, 1023])
def test_generation_fills_exactly_n_ctx(model, prompt_len):
    n_ctx = CFG["n_ctx"]
    prompt = [(7 * i) % 300 for i in range(prompt_len)]
    out = model.generate(prompt, max_new_tokens=10**6, ignore_eos=True)
    assert out.finish_reason == "length"
    assert len(prompt) + len(out.tokens) == n_ctx
    # every generated token is the argmax of a full forward pass over n_ctx positions
    full = prompt + out.tokens
    expected = np.argmax(model.logits(full), axis=1)[prompt_len - 1:-1]
    assert out.tokens == expected.tolist()


def test_prompt_of_exactly_n_ctx(model):
    n_ctx = CFG["n_ctx"]
    prompt = [i % 300 for i in range(n_ctx)]
    out = model.generate(prompt, max_new_tokens=5, ignore_eos=True)
    assert out.tokens == [] and out.finish_reason == "length"
    with pytest.raises(ValueError, match="context"):
        model.generate(prompt + [1], max_new_tokens=1)
    out = model.generate(prompt + [1, 2, 3], max_new_tokens=4, truncate="left", ignore_eos=True)
    assert len(out.prompt_tokens) + len(out.tokens) == n_ctx
    # logits at exactly n_ctx, one more is refused
    assert model.logits(prompt).shape == (n_ctx, 300)
    with pytest.raises(ValueError, match="n_ctx"):
        model.logits(prompt + [0])


@pytest.mark.parametrize("kv", ["f32", "f16", "int8"])
def test_kv_cache_at_the_limit(model, kv):
    """The core alone: filling the cache up to n_ctx, then one more is refused (every cache
    type: the int8 one's scales fill to n_ctx too)."""
    core = pygpt.load(model.path, n_threads=2, kv_cache=kv)._core
    cache = core.new_cache()
    assert cache.dtype == kv
    ids = np.arange(CFG["n_ctx"], dtype=np.int32) % 300
    for i in range(0, CFG["n_ctx"], 64):
        core.forward(cache, ids[i:i + 64])
    assert cache.pos == CFG["n_ctx"]
    with pytest.raises(ValueError, match="n_ctx"):
        core.forward(cache, ids[:1])
    assert cache.pos == CFG["n_ctx"]  # the refused call changed nothing


def test_max_new_tokens_zero(model):
    out = model.generate("hello", max_new_tokens=0)
    assert out.tokens == [] and out.text == "" and out.finish_reason == "length"
    outs = model.generate(["a", "b c"], max_new_tokens=0)
    assert [o.tokens for o in outs] == [[], []]
    assert list(model.stream("hello", max_new_tokens=0)) == []
    with pytest.raises(ValueError, match="max_new_tokens"):
        model.generate("hello", max_new_tokens=-1)


def test_empty_prompt(model, tmp_path):
    eot = model.tokenizer.eot_id
    out = model.generate("", max_new_tokens=5, ignore_eos=True)
    assert out.prompt_tokens == [eot]
    assert out.tokens == greedy_reference(model, [eot], 5)
    with pytest.raises(ValueError, match="empty"):
        model.generate([], max_new_tokens=5)
    with pytest.raises(ValueError, match="empty"):
        model.logits([])
    no_tok = pygpt.load(hf.write_model(tmp_path / "ids-only", cfg=CFG, seed=3))
    with pytest.raises(ValueError, match="tokenizer"):
        no_tok.generate("", max_new_tokens=1)


def test_huge_and_odd_limits(model):
    with pytest.raises((ValueError, OverflowError, TypeError)):
        model.generate([1], max_new_tokens=2**64)
    with pytest.raises(TypeError):
        model.generate([1], max_new_tokens=1.5)
    with pytest.raises(ValueError):
        model.generate([1], num_return_sequences=0)
    with pytest.raises(ValueError):
        model.generate([1], max_new_tokens=1, seed=-1)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        model.generate([300], max_new_tokens=1)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        model.generate([2**40], max_new_tokens=1)


@pytest.mark.parametrize("kw", [dict(num_return_sequences=10**7), dict(num_beams=10**7),
                                dict(max_new_tokens=2**62, num_return_sequences=10**6)])
def test_a_request_larger_than_memory_is_a_memory_error(model, kw):
    # refused before anything is allocated: a clear MemoryError, not the system's OOM killer
    with pytest.raises(MemoryError, match="GB of memory"):
        model.generate([[1, 2]] * 3, **kw)
    assert model.generate([1, 2], max_new_tokens=2).finish_reason == "length"

