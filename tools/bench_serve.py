"""Concurrent requests on one model: taking turns against continuous batching, side by side.

"turns": N client threads call model.generate (calls on one model are serialised, so the
requests take turns, one forward call each); "batched": the same N threads call one
pygpt.Batcher's generate (every running request in each forward call), as `pygpt serve`
does. Each client sends --requests requests one after another, all clients starting together;
a request's prompt is --prompt tokens cut from --text at its own place, and it samples --new
tokens (temperature 0.8, its own seed, ignore_eos). Modes run in turns, --rounds rounds, and
every request's tokens must be the same in both modes (the script stops otherwise).

Prints a markdown table: generated tokens per second of wall time, the mean request latency
and time to first token (medians over rounds), and batched against turns.

With --join N, a second table: while 4 streams run, a request with an N-token prompt joins;
for each --prefill-chunks setting (the Batcher's prefill_chunk; 0 = whole prompts), the
longest wait between two text pieces of the running streams, the joining request's time
to first token, and its time to first token alone (medians over rounds).

With --turns K, a third table: one client continues its own text K times (each request's
prompt is the last one's prompt, its completion and 16 more tokens of --text; --prompt tokens
at first, --new sampled each turn), with the Batcher's prefix_cache 0 (off) and 4: the mean
time to first token over the turns, the whole conversation's time, and the prompt tokens run
and reused (medians over rounds; the texts must be the same).

With --preamble N, a fourth table: 32 requests submitted at once whose prompts are the same
N tokens of --text followed each by its own 12 (a few-shot preamble and a question), --new
tokens each, prefix_cache 0 and 4: the wall time and the prompt tokens run and reused.

    python tools/bench_serve.py /tmp/pygpt-bench/pygpt-124M-f32 --text corpus.txt --clients 1,4,8
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time


def run_clients(call, requests_per_client):
    """Runs each client's requests (lists of kwargs) in its own thread, all starting together.
    Returns (wall seconds, [(latency s, time to first token s, tokens)] per request)."""
    barrier = threading.Barrier(len(requests_per_client) + 1)
    results = [[] for _ in requests_per_client]
    errors = []

    def client(i):
        barrier.wait()
        try:
            for kwargs in requests_per_client[i]:
                t0 = time.perf_counter()
                out = call(**kwargs)
                results[i].append((time.perf_counter() - t0, out.timings.time_to_first_token, out.tokens))
        except Exception as e:  # noqa: BLE001 - reported by the main thread
            errors.append(e)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(len(requests_per_client))]
    for t in threads:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    if errors:
        raise errors[0]
    return wall, [r for rs in results for r in rs]


def join_while_streaming(batcher, stream_kwargs, join_kwargs):
    """Runs the streams, lets a request join once each has given a piece; returns (longest gap
    between two pieces of a stream, the joining request's output)."""
    started = threading.Barrier(len(stream_kwargs) + 1, timeout=300)
    gaps = []

    def client(kwargs):
        last, longest = None, 0.0
        with batcher.stream(**kwargs) as stream:
            for piece in stream:
                now = time.perf_counter()
                if last is None:
                    started.wait()
                else:
                    longest = max(longest, now - last)
                last = now
        gaps.append(longest)

    threads = [threading.Thread(target=client, args=(kw,)) for kw in stream_kwargs]
    for t in threads:
        t.start()
    started.wait()
    out = batcher.generate(**join_kwargs)
    for t in threads:
        t.join()
    return max(gaps), out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+", metavar="DIR", help="pygpt model folders")
    ap.add_argument("--text", required=True, help="a text file the prompts are cut from")
    ap.add_argument("--clients", default="1,4,8",
                    help="concurrent clients, comma-separated; '' for none (default: %(default)s)")
    ap.add_argument("--requests", type=int, default=2, help="requests per client (default: %(default)s)")
    ap.add_argument("--prompt", type=int, default=32, help="prompt tokens (default: %(default)s)")
    ap.add_argument("--new", type=int, default=64, help="new tokens per request (default: %(default)s)")
    ap.add_argument("--rounds", type=int, default=3, help="default: %(default)s")
    ap.add_argument("--threads", type=int, default=None, help="default: physical cores")
    ap.add_argument("--max-batch", type=int, default=16, help="the Batcher's max_batch (default: %(default)s)")
    ap.add_argument("--join", type=int, default=0, metavar="N",
                    help="also: a request with an N-token prompt joins 4 running streams (default: off)")
    ap.add_argument("--prefill-chunks", default="0,64,256",
                    help="prefill_chunk settings for --join (default: %(default)s)")
    ap.add_argument("--preamble", type=int, default=0, metavar="N",
                    help="also: 32 prompts sharing their first N tokens, prefix caching off and on (default: off)")
    ap.add_argument("--turns", type=int, default=0, metavar="K",
                    help="also: one client continues its text K times, prefix caching off and on (default: off)")
    ap.add_argument("--assistant", metavar="DIR", default=None,
                    help="every request drafts with this assistant model (assisted decoding)")
    args = ap.parse_args(argv)

    import pygpt

    clients = [int(c) for c in args.clients.split(",") if c]
    with open(args.text, encoding="utf-8") as f:
        text = f.read()
    print(f"{args.requests} requests per client, {args.prompt}-token prompts, {args.new} new tokens each"
          f"{f', assistant {args.assistant}' if args.assistant else ''}, {args.rounds} rounds, "
          f"{time.strftime('%Y-%m-%d %H:%M')}\n")
    if clients:
        print("| model | clients | mode | tokens/s | latency s | first token s | batched against turns |")
        print("|---|---|---|---|---|---|---|")
    extra = {"assistant_model": pygpt.load(args.assistant, n_threads=args.threads)} if args.assistant else {}
    for path in args.models if clients else []:
        model = pygpt.load(path, n_threads=args.threads)
        ids = model.tokenizer.encode(text)
        for n in clients:
            per_client = [[dict(prompt=ids[(c * args.requests + r) * args.prompt:][:args.prompt],
                                max_new_tokens=args.new, temperature=0.8, seed=c * args.requests + r,
                                ignore_eos=True, **extra) for r in range(args.requests)] for c in range(n)]
            figures = {"turns": [], "batched": []}
            tokens = {}
            with pygpt.Batcher(model, max_batch=args.max_batch) as batcher:
                calls = {"turns": lambda **kw: model.generate(**kw), "batched": batcher.generate}
                for _ in range(args.rounds):
                    for mode, call in calls.items():
                        wall, results = run_clients(call, per_client)
                        got = sorted((tuple(t) for _, _, t in results))
                        if tokens.setdefault(mode, got) != got or tokens.get("turns", got) != got:
                            raise SystemExit(f"{path}: {mode} gave other tokens")
                        n_tokens = sum(len(t) for _, _, t in results)
                        figures[mode].append((n_tokens / wall, statistics.mean(r[0] for r in results),
                                              statistics.mean(r[1] for r in results)))
            med = {mode: [statistics.median(f[i] for f in fs) for i in range(3)] for mode, fs in figures.items()}
            for mode in ("turns", "batched"):
                tps, lat, ttft = med[mode]
                ratio = f"{tps / med['turns'][0]:.2f}x tokens/s" if mode == "batched" else ""
                print(f"| {path} | {n} | {mode} | {tps:.1f} | {lat:.2f} | {ttft:.3f} | {ratio} |", flush=True)
    if args.join:
        join(args, text)
    if args.turns:
        turns(args, text)
    if args.preamble:
        preamble(args, text)
    return 0


def prefix_cache_off_and_on(args, text, experiment, row) -> None:
    """For each model, experiment(batcher, token ids) -> (outputs, figures) with the Batcher's
    prefix_cache 0 and 4 in turns, --rounds rounds; the outputs' tokens must agree. Prints
    row(path, setting, *median figures) for each setting."""
    import pygpt

    for path in args.models:
        model = pygpt.load(path, n_threads=args.threads)
        ids = model.tokenizer.encode(text)
        figures = {0: [], 4: []}
        want = None
        for _ in range(args.rounds):
            for n in figures:
                with pygpt.Batcher(model, max_batch=args.max_batch, prefix_cache=n) as batcher:
                    outs, fig = experiment(batcher, ids)
                got = [o.tokens for o in outs]
                if want is not None and got != want:
                    raise SystemExit(f"{path}: prefix_cache {n} gave other tokens")
                want = got
                figures[n].append(fig)
        for n, fs in figures.items():
            print(row(path, n or "off", *(statistics.median(f[i] for f in fs) for i in range(len(fs[0])))), flush=True)


def preamble(args, text) -> None:
    print(f"\n32 requests at once: the same {args.preamble}-token preamble and 12 tokens of their own, "
          f"{args.new} new tokens each; {args.rounds} rounds, medians\n")
    print("| model | prefix_cache | s for all | prompt tokens run | reused |")
    print("|---|---|---|---|---|")

    def experiment(batcher, ids):
        prompts = [ids[:args.preamble] + ids[args.preamble + 12 * i:][:12] for i in range(32)]
        t0 = time.perf_counter()
        jobs = [batcher.submit(p, max_new_tokens=args.new, temperature=0.8, seed=i, ignore_eos=True)
                for i, p in enumerate(prompts)]
        outs = [job.result() for job in jobs]
        wall = time.perf_counter() - t0
        return outs, (wall, sum(o.timings.prefill_tokens for o in outs), sum(o.timings.cached_tokens for o in outs))

    prefix_cache_off_and_on(args, text, experiment,
                            lambda path, n, wall, run, reused: f"| {path} | {n} | {wall:.2f} | {run:.0f} | {reused:.0f} |")


def conversation(batcher, ids, args, assistant=None):
    """One client continuing its text args.turns times (drafting with assistant, a
    pygpt.Model, if given); (outputs, wall seconds)."""
    prompt, outs = ids[:args.prompt], []
    extra = {"assistant_model": assistant} if assistant is not None else {}
    t0 = time.perf_counter()
    for k in range(args.turns):
        out = batcher.generate(prompt, max_new_tokens=args.new, temperature=0.8, seed=k, ignore_eos=True, **extra)
        outs.append(out)
        more = ids[args.prompt + 16 * k:][:16]
        prompt = prompt + out.tokens + more
    return outs, time.perf_counter() - t0


def turns(args, text) -> None:
    import pygpt

    assistant = pygpt.load(args.assistant, n_threads=args.threads) if args.assistant else None
    print(f"\nOne client continues its text {args.turns} times ({args.prompt}-token prompt at first, {args.new} "
          f"new tokens and 16 more of the text a turn"
          f"{f'; assistant {args.assistant}' if assistant is not None else ''}); {args.rounds} rounds, medians\n")
    print("| model | prefix_cache | first token s (mean over turns) | conversation s | prompt tokens run | reused "
          "| assistant ran |")
    print("|---|---|---|---|---|---|---|")

    def experiment(batcher, ids):
        outs, wall = conversation(batcher, ids, args, assistant)
        return outs, (statistics.mean(o.timings.time_to_first_token for o in outs), wall,
                      sum(o.timings.prefill_tokens for o in outs), sum(o.timings.cached_tokens for o in outs),
                      sum(o.timings.assistant_tokens for o in outs))

    prefix_cache_off_and_on(args, text, experiment, lambda path, n, ttft, wall, run, reused, ran:
                            f"| {path} | {n} | {ttft:.3f} | {wall:.2f} | {run:.0f} | {reused:.0f} | {ran:.0f} |")


def join(args, text) -> None:
    import pygpt

    chunks = [int(c) for c in args.prefill_chunks.split(",") if c]
    print(f"\nA request with a {args.join}-token prompt (8 new tokens) joins 4 streams of {args.new} tokens "
          f"once each has given a piece; {args.rounds} rounds, medians\n")
    print("| model | prefill_chunk | longest wait between pieces of a running stream, s | "
          "joining request's first token, s | the same request alone, s |")
    print("|---|---|---|---|---|")
    for path in args.models:
        model = pygpt.load(path, n_threads=args.threads)
        ids = model.tokenizer.encode(text)
        streams = [dict(prompt=ids[i * args.prompt:][:args.prompt], max_new_tokens=args.new, temperature=0.8,
                        seed=i, ignore_eos=True) for i in range(4)]
        joining = dict(prompt=ids[-args.join:], max_new_tokens=8, ignore_eos=True)
        figures = {c: [] for c in chunks}
        want = None
        for _ in range(args.rounds):
            for c in chunks:
                with pygpt.Batcher(model, max_batch=args.max_batch, prefill_chunk=c) as batcher:
                    alone = batcher.generate(**joining)
                    gap, out = join_while_streaming(batcher, streams, joining)
                if out.tokens != alone.tokens or (want is not None and out.tokens != want):
                    raise SystemExit(f"{path}: prefill_chunk {c} gave other tokens")
                want = out.tokens
                figures[c].append((gap, out.timings.time_to_first_token, alone.timings.time_to_first_token))
        for c, fs in figures.items():
            gap, ttft, alone = (statistics.median(f[i] for f in fs) for i in range(3))
            print(f"| {path} | {c or 'whole'} | {gap:.3f} | {ttft:.3f} | {alone:.3f} |", flush=True)


if __name__ == "__main__":
    sys.exit(main())
