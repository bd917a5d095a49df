"""model.agenerate / model.astream, and pygpt.Batcher's agenerate / astream: the asyncio forms of
generate and stream give the same outputs, leave the event loop free while tokens are computed,
run side by side on one model, and stop when cancelled."""

import asyncio
import os
import time

import pytest

import pygpt

pytest.importorskip("torch")

HERE = os.path.dirname(os.path.abspath(__file__))
GPT2_TOKENIZER = os.path.join(HERE, "data", "gpt2-tokenizer")
# a context long enough to generate for a while (1024 positions)
LONG_SHAPE = dict(n_layer=2, n_head=4, n_embd=128, n_positions=1024, vocab_size=50257)
PROMPTS = ["Hello, my dog is", "The quick brown fox", "1 2 3"]


@pytest.fixture(scope="module")
def model(hf_model_factory, tmp_path_factory):
    import pygpt.convert

    _, hf_dir, _ = hf_model_factory("tiny")
    out = str(tmp_path_factory.mktemp("async_tiny"))
    pygpt.convert.convert(hf_dir, out, tokenizer=GPT2_TOKENIZER)
    return pygpt.load(out)


@pytest.fixture(scope="module")
def long_model(tmp_path_factory):
    import pygpt.convert
    from conftest import make_hf_model

    base = tmp_path_factory.mktemp("async_long")
    make_hf_model(str(base / "hf"), seed=3, **LONG_SHAPE)
    pygpt.convert.convert(str(base / "hf"), str(base / "pygpt"), tokenizer=GPT2_TOKENIZER)
    return pygpt.load(str(base / "pygpt"))


def tokens(out):
    return [tokens(o) for o in out] if isinstance(out, list) else out.tokens


@pytest.mark.parametrize("prompt, options", [
    (PROMPTS[0], dict(max_new_tokens=12)),
    (PROMPTS, dict(max_new_tokens=10)),
    (PROMPTS[1], dict(max_new_tokens=10, temperature=0.9, top_p=0.9, seed=7, num_return_sequences=3)),
    (PROMPTS, dict(max_new_tokens=8, num_beams=3, num_return_sequences=2)),
    (PROMPTS[2], dict(max_new_tokens=0)),
])
def test_agenerate_equals_generate(model, prompt, options):
    got = asyncio.run(model.agenerate(prompt, **options))
    want = model.generate(prompt, **options)
    assert tokens(got) == tokens(want)
    first = got[0] if isinstance(got, list) else got
    first = first[0] if isinstance(first, list) else first
    assert first.text is not None and first.timings.decode_tokens >= 0


@pytest.mark.parametrize("echo", [False, True])
def test_astream_pieces_join_to_the_text(model, echo):
    async def collect():
        s = model.astream(PROMPTS[1], max_new_tokens=16, echo=echo, stop=[" the"])
        return [p async for p in s], s.output

    pieces, out = asyncio.run(collect())
    want = model.generate(PROMPTS[1], max_new_tokens=16, echo=echo, stop=[" the"])
    assert "".join(pieces) == out.text == want.text
    assert out.tokens == want.tokens and out.finish_reason == want.finish_reason
    assert all(pieces)


def test_bad_arguments_are_raised_as_by_the_sync_calls(model):
    with pytest.raises(ValueError, match="temperature"):
        asyncio.run(model.agenerate("hi", temperature=-1.0))
    with pytest.raises(ValueError, match="one prompt"):
        model.astream(PROMPTS)  # at the call, as stream()
    with pytest.raises(ValueError, match="beam"):
        model.astream("hi", num_beams=2)
    with pytest.raises(TypeError):
        asyncio.run(model.agenerate("hi", no_such_option=1))


def test_the_event_loop_runs_while_tokens_are_computed(long_model):
    ticks = []

    async def ticker(done):
        while not done.is_set():
            ticks.append(time.perf_counter())
            await asyncio.sleep(0.005)

    async def main():
        done = asyncio.Event()
        t = asyncio.create_task(ticker(done))
        t0 = time.perf_counter()
        out = await long_model.agenerate(PROMPTS[0], max_new_tokens=300, ignore_eos=True)
        elapsed = time.perf_counter() - t0
        done.set()
        await t
        return out, elapsed

    out, elapsed = asyncio.run(main())
    assert len(out.tokens) == 300
    # a blocked loop would tick once or twice; a free one about every 5 ms
    assert len(ticks) >= max(5, 0.25 * elapsed / 0.005), (len(ticks), elapsed)


def test_concurrent_calls_share_a_model(long_model):
    options = [dict(max_new_tokens=40, ignore_eos=True), dict(max_new_tokens=30, temperature=1.0, seed=3),
               dict(max_new_tokens=20, num_beams=2)]

    async def main():
        return await asyncio.gather(*(long_model.agenerate(p, **o) for p, o in zip(PROMPTS, options)))

    got = asyncio.run(main())
    assert [o.tokens for o in got] == [long_model.generate(p, **o).tokens for p, o in zip(PROMPTS, options)]


def test_cancelling_stops_the_generation(long_model):
    async def main():
        task = asyncio.create_task(long_model.agenerate([PROMPTS[0]] * 4, max_new_tokens=1000, ignore_eos=True))
        await asyncio.sleep(0.3)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.sleep(0.3)  # the token in progress ends
        # then the worker thread is idle: this process uses (almost) no CPU
        c0 = time.process_time()
        await asyncio.sleep(0.5)
        return time.process_time() - c0

    cpu = asyncio.run(main())
    assert cpu < 0.15, f"{cpu:.2f} s of CPU in 0.5 s after cancelling: the generation went on"
    assert long_model.generate(PROMPTS[0], max_new_tokens=3).finish_reason in ("length", "eos")


def test_an_abandoned_astream_stops(long_model):
    async def main():
        n = 0
        async for _ in long_model.astream(PROMPTS[0], max_new_tokens=1000, ignore_eos=True):
            n += 1
            if n == 5:
                break
        c0 = time.process_time()
        await asyncio.sleep(0.4)
        return n, time.process_time() - c0

    n, cpu = asyncio.run(main())
    assert n == 5 and cpu < 0.15


# -- pygpt.Batcher's asyncio forms -----------------------------------------------------------------


def test_batcher_agenerate_many_at_once_equal_generate(model):
    """Concurrent agenerate calls run in one batch and give generate's outputs."""
    requests = [(PROMPTS[i % 3], dict(max_new_tokens=10 + i, temperature=0.8, seed=i, ignore_eos=True))
                for i in range(6)]
    requests.append((PROMPTS, dict(max_new_tokens=8, num_return_sequences=2, temperature=1.0, seed=5)))

    async def main(batcher):
        return await asyncio.gather(*[batcher.agenerate(p, **o) for p, o in requests])

    with pygpt.Batcher(model) as batcher:
        got = asyncio.run(main(batcher))
        assert batcher.most_sequences > 1  # they shared steps
    for (p, o), out in zip(requests, got):
        assert tokens(out) == tokens(model.generate(p, **o))


def test_batcher_astream_pieces_are_the_text(model):
    async def main(batcher):
        stream = batcher.astream(PROMPTS[0], max_new_tokens=16, echo=True, temperature=0.7, seed=3)
        pieces = [p async for p in stream]
        return pieces, stream.output

    with pygpt.Batcher(model) as batcher:
        pieces, out = asyncio.run(main(batcher))
    want = model.generate(PROMPTS[0], max_new_tokens=16, echo=True, temperature=0.7, seed=3)
    assert pieces[0] == PROMPTS[0] and "".join(pieces) == out.text == want.text
    assert out.tokens == want.tokens


def test_batcher_agenerate_cancel_stops_the_request(long_model):
    """Cancelling the task stops its request; the batcher goes on serving."""
    async def main(batcher):
        task = asyncio.ensure_future(batcher.agenerate(PROMPTS[0], max_new_tokens=1000, ignore_eos=True))
        await asyncio.sleep(0.05)
        steps = batcher.steps
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.sleep(0.2)  # the scheduler drops it at the next step boundary
        return steps

    with pygpt.Batcher(long_model) as batcher:
        steps = asyncio.run(main(batcher))
        after = batcher.steps
        assert after < 1000 and after <= steps + 5  # it stopped, not ran to 1000 tokens
        out = batcher.generate(PROMPTS[1], max_new_tokens=5)
        assert out.tokens == long_model.generate(PROMPTS[1], max_new_tokens=5).tokens


def test_batcher_astream_left_early_stops_the_request(long_model):
    async def main(batcher):
        async with batcher.astream(PROMPTS[0], max_new_tokens=1000, ignore_eos=True) as stream:
            async for _ in stream:
                break
        await asyncio.sleep(0.2)

    with pygpt.Batcher(long_model) as batcher:
        asyncio.run(main(batcher))
        assert batcher.steps < 1000
        steps = batcher.steps
        time.sleep(0.3)
        assert batcher.steps == steps  # nothing runs any more


def test_batcher_astream_refuses_what_stream_refuses(model):
    async def main(batcher):
        with pytest.raises(ValueError):
            batcher.astream(PROMPTS, max_new_tokens=4)
        with pytest.raises(ValueError):
            batcher.astream(PROMPTS[0], num_return_sequences=2)

    with pygpt.Batcher(model) as batcher:
        asyncio.run(main(batcher))
