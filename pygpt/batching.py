"""Continuous batching: generate and stream calls from many threads share forward calls.

    batcher = pygpt.Batcher(model, max_batch=16)
    out = batcher.generate("Once upon a time", max_new_tokens=50)   # from any thread
    for piece in batcher.stream("Hello", max_new_tokens=50):
        print(piece, end="")
    out = await batcher.agenerate("Hello")                        # asyncio: agenerate, astream
    batcher.close()

Calls on a pygpt.Model from several threads take turns, a forward call each. A Batcher runs
them together instead: one scheduler thread owns a C++ Generation (csrc/generate.h) and, between
two steps, adds the requests that arrived and hands out what the step produced. A step is one
forward call for every running sequence (and the prompts just added), and batch-8 decoding
costs little more than batch 1, so throughput grows with the number of concurrent requests.

Outputs are those of model.generate with the same options: a sequence's logits and random
stream never depend on what runs beside it (docs/DESIGN.md, "Determinism"). Timings are wall
times seen by the request, while sharing each step with the others. Beam search is not
batched: use model.generate for it.
"""

from __future__ import annotations

import asyncio
import collections
import queue
import threading
import time
from typing import Callable, Iterator, Optional

from . import _core
from .generation import BEAM_OPTIONS, GenerationOutput, Timings, _Request, _stream_request
from .model import check_prefix_cache

DEFAULT_MAX_BATCH = 16
# prompt tokens a step runs at most: a long prompt that joins delays the running sequences'
# next token by this much prefill, not all of its own (124M: 256-token pieces cost the prompt
# no measurable time against whole, 64-token ones 5-13%; BENCHMARKS.md "Continuous batching")
DEFAULT_PREFILL_CHUNK = 256
# finished sequences whose KV caches are kept for prompts that start the same way
DEFAULT_PREFIX_CACHE = 4


class BatcherClosed(RuntimeError):
    """The batcher was closed before the request finished."""


class Job:
    """One submitted request: its sequences in the scheduler's Generation, its result when done.
    result() waits for it; cancel() stops it (its result() then raises BatcherClosed)."""

    def __init__(self, req: _Request, sink: Optional[Callable] = None, tokens: bool = False):
        self.req = req
        self.first = -1                   # id of its first sequence, once added
        self.sink = sink                  # streaming: gets (sequence index, text piece) pairs, then None
        self.tokens = tokens              # and the tokens since the last pair: (index, piece, tokens)
        self._done = threading.Event()
        self._lock = threading.Lock()
        self._callbacks: list = []
        self._outputs = None
        self._error: Optional[BaseException] = None
        self.cancelled = False
        self.t_submit = time.perf_counter()
        self.t_start: Optional[float] = None  # start of its first step
        self.t_first: Optional[float] = None  # end of the step that gave its first token

    def result(self, timeout: Optional[float] = None):
        """The outputs, shaped as model.generate returns them; raises what failed the request."""
        return self.req.shape(self.outputs(timeout))

    def outputs(self, timeout: Optional[float] = None) -> list:
        """The outputs as one list, prompt-major (sequence j of prompt p at p * n + j)."""
        if not self._done.wait(timeout):
            raise TimeoutError("the request has not finished")
        if self._error is not None:
            raise self._error
        return self._outputs

    def done(self) -> bool:
        return self._done.is_set()

    def cancel(self) -> None:
        """Stops the request between two steps (a no-op once it is done)."""
        self.cancelled = True

    def add_done_callback(self, fn: Callable[[], None]) -> None:
        """Calls fn() once the request is done (from the scheduler thread, or now if it is)."""
        with self._lock:
            if not self._done.is_set():
                self._callbacks.append(fn)
                return
        fn()

    # -- called by the scheduler ---------------------------------------------------------------

    def _emit(self, piece: Optional[str]) -> None:
        """Hands a piece to the sink; a sink that fails (an event loop closed since, say) stops
        the request rather than the scheduler."""
        try:
            self.sink(piece)
        except Exception:  # noqa: BLE001 - the consumer is gone
            self.cancelled = True

    def _finish(self, outputs=None, error: Optional[BaseException] = None) -> None:
        self._outputs, self._error = outputs, error
        with self._lock:
            self._done.set()
            callbacks, self._callbacks = self._callbacks, []
        if self.sink is not None:
            self._emit(None)
        for fn in callbacks:
            try:
                fn()
            except Exception:  # noqa: BLE001 - a waiter that is gone (its event loop closed)
                pass


class EmbeddingJob(Job):
    """One embedding request (Batcher.submit_embed): its forward calls, run by the scheduler
    between generation steps; result() gives model.embed's answer."""

    def __init__(self, run):
        super().__init__(None)
        self.run = run

    def result(self, timeout: Optional[float] = None):
        self.outputs(timeout)  # waits; raises what failed the request
        return self.run.answer()


class ChoiceStream:
    """Iterator over (index, text piece) of every sequence of one batched request (a batch of
    prompts, num_return_sequences > 1), as they come: index p * num_return_sequences + j is
    sequence j of prompt p. With echo, each sequence's prompt text comes first. Once
    exhausted, .outputs holds the GenerationOutputs in index order. Leaving the loop early
    stops the request: call close() (or use it in a with block) rather than wait for the
    garbage collector.

    tokens=True: (index, text piece, tokens) triples instead, one whenever a sequence has new
    text or new tokens: tokens is {"tokens", "logprobs", "top_logprobs"} of the tokens it
    generated since its previous triple (logprobs with logprobs=True, as in GenerationOutput;
    the echoed prompt's triple has none). A piece may lag its tokens: text that may still
    become a stop string or a UTF-8 character comes with a later triple (or never, as the
    stop string itself)."""

    def __init__(self, submit: Callable[[Callable], Job], req: _Request, tokens: bool = False):
        self._pieces: queue.SimpleQueue = queue.SimpleQueue()
        n = req.options.num_return_sequences
        self._tokens = tokens
        self._echoes = collections.deque((k, req.prompt_text(k // n)) for k in range(req.n_sequences) if req.echo)
        self.outputs: Optional[list] = None
        self._job = submit(self._pieces.put)

    def __iter__(self):
        return self

    def __next__(self):
        while self._echoes:
            k, text = self._echoes.popleft()
            if text:
                return (k, text, {"tokens": [], "logprobs": [], "top_logprobs": []}) if self._tokens else (k, text)
        if self.outputs is not None:
            raise StopIteration
        try:
            item = self._pieces.get()
        except BaseException:  # Ctrl-C while waiting: stop the request too
            self._job.cancel()
            raise
        if item is None:  # the request ended: its outputs, or what failed it
            self.outputs = self._job.outputs()
            raise StopIteration
        return item

    def close(self) -> None:
        if not self._job.done():
            self._job.cancel()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        if hasattr(self, "_job"):
            self.close()


class BatchedStream(ChoiceStream):
    """Iterator over the text pieces of one batched request of one sequence, as model.stream's:
    once exhausted, .output holds the GenerationOutput."""

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        return super().__next__()[1]

    @property
    def output(self) -> Optional[GenerationOutput]:
        return self.outputs[0] if self.outputs is not None else None


class AsyncBatchedStream:
    """The async iterator of Batcher.astream(): pieces reach the event loop from the scheduler
    thread (no executor thread waits for them). Leaving the loop early: aclose() it (or use
    `async with`); cancelling the task that waits stops the request too."""

    def __init__(self, submit: Callable[[Callable], Job], req: _Request):
        loop = asyncio.get_running_loop()
        self._pieces: asyncio.Queue = asyncio.Queue()
        self._echo = req.prompt_text(0) if req.echo else None
        self.output: Optional[GenerationOutput] = None
        self._job = submit(lambda piece: loop.call_soon_threadsafe(self._pieces.put_nowait, piece))

    def __aiter__(self) -> "AsyncBatchedStream":
        return self

    async def __anext__(self) -> str:
        if self._echo:
            text, self._echo = self._echo, None
            return text
        if self.output is not None:
            raise StopAsyncIteration
        try:
            piece = await self._pieces.get()
        except asyncio.CancelledError:
            self._job.cancel()
            raise
        if piece is None:
            self.output = self._job.result()
            raise StopAsyncIteration
        return piece[1]  # (index 0, piece)

    async def aclose(self) -> None:
        if not self._job.done():
            self._job.cancel()

    async def __aenter__(self) -> "AsyncBatchedStream":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()


class Batcher:
    """Runs generate and stream requests on one model in shared forward calls (continuous
    batching; see the module's doc).

    max_batch: at most this many sequences run at once (a request with more runs alone);
    requests beyond it wait their turn, first come first served. Each running sequence holds a
    KV cache (up to n_ctx positions).
    prefill_chunk: at most this many prompt tokens a step (0: whole prompts), so a long prompt
    runs in pieces beside the running sequences instead of stalling them for its whole prefill.
    prefix_cache: keep the KV caches of this many finished sequences (0: none); a prompt that
    starts like one of them, or like a running sequence, copies those positions' keys and
    values instead of running them (a request that continues an earlier one's text, a shared
    few-shot prefix); timings.cached_tokens counts them. Not for echo with logprobs.
    Outputs are the same whatever these settings.

    embed() runs embedding requests in the same thread, a forward call of at most
    prefill_chunk tokens (n_ctx with 0) between two generation steps, so that a large one
    delays the running sequences' tokens by a call each, not by all of its calls.
    """

    def __init__(self, model, max_batch: int = DEFAULT_MAX_BATCH, prefill_chunk: int = DEFAULT_PREFILL_CHUNK,
                 prefix_cache: int = DEFAULT_PREFIX_CACHE):
        if not hasattr(model, "_core") or model._core is None:
            raise TypeError("model must be an open pygpt.Model (from pygpt.load)")
        if isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1:
            raise ValueError(f"max_batch must be an integer >= 1, got {max_batch!r}")
        if isinstance(prefill_chunk, bool) or not isinstance(prefill_chunk, int) or prefill_chunk < 0:
            raise ValueError(f"prefill_chunk must be an integer >= 0 (0: whole prompts), got {prefill_chunk!r}")
        self.model = model
        self.max_batch = max_batch
        self.prefill_chunk = prefill_chunk
        self.prefix_cache = check_prefix_cache(prefix_cache)
        self._cv = threading.Condition()
        self._waiting: collections.deque = collections.deque()
        self._embeddings: collections.deque = collections.deque()  # EmbeddingJobs, first come first served
        self._closed = False
        self._thread: Optional[threading.Thread] = None
        self.steps = 0             # forward calls run so far
        self.most_sequences = 0    # the most sequences one step has run
        self.running = 0           # sequences in the batch now
        # what the finished and cancelled requests ran: prompt tokens (those a prefix cache
        # gave not counted: cached_tokens), and tokens generated
        self.prompt_tokens = 0
        self.cached_tokens = 0
        self.generated_tokens = 0
        self.embedded_tokens = 0   # tokens of the finished embedding requests

    # -- public API ----------------------------------------------------------------------------

    def waiting(self) -> int:
        """Requests queued for a place in the batch."""
        with self._cv:
            return len(self._waiting)

    def submit(self, prompt, **options) -> Job:
        """Queues a request (model.generate's arguments, checked here) and returns its Job."""
        return self._submit(_Request(self.model, prompt, leave_out=BEAM_OPTIONS, **options))

    def generate(self, prompt, **options):
        """model.generate, run in the shared batch: waits for the outputs."""
        job = self.submit(prompt, **options)
        try:
            return job.result()
        except BaseException:  # Ctrl-C while waiting: stop the request too
            job.cancel()
            raise

    def stream(self, prompt, **options) -> BatchedStream:
        """model.stream, run in the shared batch: yields the text as it is generated."""
        req = _stream_request(self.model, prompt, options)
        return BatchedStream(lambda sink: self._submit(req, sink), req)

    def chat(self, messages, template=None, **options):
        """model.chat, run in the shared batch (with prefix_cache, a conversation's next turn
        reuses the keys and values of the turns before it)."""
        from . import chat

        return chat.chat(self.model, messages, template, runner=self, **options)

    def chat_stream(self, messages, template=None, **options):
        """model.chat_stream, run in the shared batch."""
        from . import chat

        return chat.chat_stream(self.model, messages, template, runner=self, **options)

    def submit_embed(self, inputs, pooling: str = "mean", normalize: bool = True,
                     truncate: bool = False) -> EmbeddingJob:
        """Queues an embedding request (model.embed's arguments, checked here) and returns its
        job; job.result() gives model.embed's answer, the same bits."""
        from .embeddings import EmbeddingRun

        return self._enqueue(self._embeddings, EmbeddingJob(EmbeddingRun.of(self.model, inputs, pooling, normalize,
                                                                              truncate)))

    def embed(self, inputs, pooling: str = "mean", normalize: bool = True, truncate: bool = False):
        """model.embed, run by the scheduler between generation steps (see the class)."""
        job = self.submit_embed(inputs, pooling, normalize, truncate)
        try:
            return job.result()
        except BaseException:  # Ctrl-C while waiting: stop the request too
            job.cancel()
            raise

    def stream_choices(self, prompt, *, tokens: bool = False, **options) -> ChoiceStream:
        """The text of every sequence of a request as it is generated, as (index, piece) pairs
        (a batch of prompts, num_return_sequences > 1; see ChoiceStream), for servers that
        stream several choices; tokens=True: (index, piece, tokens) with the new tokens (and
        their logprobs)."""
        req = _Request(self.model, prompt, leave_out=BEAM_OPTIONS, **options)
        if req.tokenizer is None:
            raise ValueError("stream_choices() yields text and this model has no tokenizer; use generate()")
        return ChoiceStream(lambda sink: self._submit(req, sink, tokens), req, tokens)

    async def agenerate(self, prompt, **options):
        """generate() for asyncio: the event loop waits without a worker thread. Cancelling the
        task stops the request between two steps."""
        job = self.submit(prompt, **options)
        loop = asyncio.get_running_loop()
        finished = loop.create_future()

        def wake() -> None:
            if not finished.done():
                finished.set_result(None)

        job.add_done_callback(lambda: loop.call_soon_threadsafe(wake))
        try:
            await finished
        except asyncio.CancelledError:
            job.cancel()
            raise
        return job.result()

    def astream(self, prompt, **options) -> AsyncBatchedStream:
        """stream() for asyncio: `async for piece in batcher.astream(...)` (in a running loop)."""
        req = _stream_request(self.model, prompt, options)
        return AsyncBatchedStream(lambda sink: self._submit(req, sink), req)

    def close(self) -> None:
        """Stops taking requests, fails the ones not finished (BatcherClosed) and ends the
        scheduler thread."""
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()

    def __enter__(self) -> "Batcher":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- the scheduler -------------------------------------------------------------------------

    def _submit(self, req: _Request, sink=None, tokens: bool = False) -> Job:
        if req.options.num_beams != 1:
            raise ValueError("a Batcher does not run beam search (num_beams > 1): use model.generate")
        return self._enqueue(self._waiting, Job(req, sink, tokens))

    def _enqueue(self, queue: collections.deque, job: Job) -> Job:
        """Queues a job for the scheduler, whose thread starts with the first one."""
        with self._cv:
            if self._closed:
                raise BatcherClosed("this batcher is closed")
            queue.append(job)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="pygpt-batcher", daemon=True)
                self._thread.start()
            self._cv.notify()
        return job

    def _run(self) -> None:
        active: list = []
        try:
            self._schedule(active)
        except BaseException as e:  # a bug of ours: fail every request rather than leave it waiting
            with self._cv:
                self._closed = True
                jobs = active + list(self._waiting) + list(self._embeddings)
                self._waiting.clear()
                self._embeddings.clear()
            for job in jobs:
                if not job.done():
                    job._finish(error=RuntimeError(f"the batcher failed: {type(e).__name__}: {e}"))
            raise

    def _schedule(self, active: list) -> None:
        """The scheduler loop; active: the jobs in the batch (for _run, should this fail)."""
        tok = self.model.tokenizer._core if self.model.tokenizer is not None else None

        def new_batch():
            gen = _core.Generation(self.model._core, tok)
            gen.prefill_chunk = self.prefill_chunk
            gen.prefix_cache = self.prefix_cache
            gen.contain_errors = True  # a request's processors that fail (the caller's code) fail it alone
            return gen

        gen = new_batch()
        running = 0  # sequences of the active jobs
        while True:
            with self._cv:
                while not self._closed and not self._waiting and not active and not self._embeddings:
                    self._cv.wait()
                if self._closed:
                    for job in active + list(self._waiting) + list(self._embeddings):
                        job._finish(error=BatcherClosed("the batcher was closed"))
                    self._waiting.clear()
                    self._embeddings.clear()
                    return
                embedding = self._embeddings[0] if self._embeddings else None
                for job in [j for j in self._waiting if j.cancelled]:  # cancelled before its turn
                    self._waiting.remove(job)
                    job._finish(error=BatcherClosed("the request was cancelled"))
                new = []
                while self._waiting and (running == 0 or running + self._waiting[0].req.n_sequences <= self.max_batch):
                    job = self._waiting.popleft()
                    new.append(job)
                    running += job.req.n_sequences
            for job in new:
                try:
                    job.first = gen.add(job.req.prompts, job.req.options)
                    active.append(job)
                except Exception as e:  # noqa: BLE001 - a bad request fails alone
                    running -= job.req.n_sequences
                    job._finish(error=e)
            for job in [j for j in active if j.cancelled]:
                self._count(gen, job)
                self._drop(gen, job)
                active.remove(job)
                running -= job.req.n_sequences
                job._finish(error=BatcherClosed("the request was cancelled"))
            self.running = running
            if embedding is not None:
                self._embed_step(embedding)
            if not active:
                continue
            self.most_sequences = max(self.most_sequences, gen.n_live)
            t0 = time.perf_counter()
            try:
                gen.step()
            except Exception as e:  # noqa: BLE001 - the batch's state is unknown: fail it, start anew
                for job in active:
                    job._finish(error=e)
                active.clear()
                running = 0
                gen = new_batch()
                continue
            self.steps += 1
            now = time.perf_counter()
            for job in list(active):
                ids = range(job.first, job.first + job.req.n_sequences)
                if job.t_start is None:  # its first step
                    job.t_start = t0
                if job.t_first is None and gen.started(job.first):  # its first token
                    job.t_first = now
                if job.sink is not None:
                    for k in range(job.req.n_sequences):
                        piece = gen.take_text(job.first + k)
                        if job.tokens:
                            new = gen.take_tokens(job.first + k)
                            if piece or new["tokens"]:
                                job._emit((k, piece, new))
                        elif piece:
                            job._emit((k, piece))
                if all(gen.finished(i) for i in ids) or any(gen.failed(i) for i in ids):
                    outputs = error = None
                    try:
                        for i in ids:
                            gen.raise_error(i)
                    except BaseException as e:  # noqa: BLE001 - what a token choice (the caller's code) raised
                        error = e
                    if error is None:
                        outputs = job.req.outputs(gen, job.first, self._timings(gen, job, now))
                    self._count(gen, job)
                    self._drop(gen, job)
                    active.remove(job)
                    running -= job.req.n_sequences
                    job._finish(outputs, error)
            self.running = running

    def _embed_step(self, job: EmbeddingJob) -> None:
        """One forward call of the first embedding request; finishes it when it is done."""
        outputs = error = None
        try:
            if job.cancelled:
                raise BatcherClosed("the request was cancelled")
            if not job.run.step(self.prefill_chunk or self.model.config["n_ctx"]):
                return
            outputs = job.run.vectors
            self.embedded_tokens += job.run.tokens
        except Exception as e:  # noqa: BLE001 - a request that fails (memory, say) fails alone
            error = e
        with self._cv:
            self._embeddings.popleft()
        job._finish(outputs, error)

    def _count(self, gen, job: Job) -> None:
        """Adds what a request leaving the batch ran to the counters (pygpt serve's /metrics)."""
        results = [gen.result(i) for i in range(job.first, job.first + job.req.n_sequences)]
        if not any(gen.started(i) for i in range(job.first, job.first + job.req.n_sequences)):
            return  # cancelled before its prompt ran
        cached = sum(r["cached_tokens"] for r in results[::job.req.options.num_return_sequences])
        self.prompt_tokens += sum(len(p) for p in job.req.prompts) - cached
        self.cached_tokens += cached
        self.generated_tokens += sum(len(r["tokens"]) for r in results)

    @staticmethod
    def _drop(gen, job: Job) -> None:
        for i in range(job.first, job.first + job.req.n_sequences):
            gen.remove(i)

    @staticmethod
    def _timings(gen, job: Job, now: float) -> Timings:
        """The request's timings as it saw them: its steps ran the other requests' tokens too,
        and time_to_first_token counts from submit(), the wait for a place included."""
        results = [gen.result(i) for i in range(job.first, job.first + job.req.n_sequences)]
        started = sum(1 for r in results if r["tokens"])
        cached = sum(r["cached_tokens"] for r in results[::job.req.options.num_return_sequences])  # a prompt's
        return Timings(prefill_tokens=sum(len(p) for p in job.req.prompts) - cached, cached_tokens=cached,
                       prefill_seconds=job.t_first - job.t_start,
                       decode_tokens=sum(len(r["tokens"]) for r in results) - started,
                       decode_seconds=now - job.t_first,
                       time_to_first_token=job.t_first - job.t_submit,
                       draft_tokens=sum(r["draft_tokens"] for r in results),
                       assistant_tokens=sum(r["assistant_tokens"] for r in results),
                       accepted_draft_tokens=sum(r["accepted_draft_tokens"] for r in results))
