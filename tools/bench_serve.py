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


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+", metavar="DIR", help="pygpt model folders")
    ap.add_argument("--text", required=True, help="a text file the prompts are cut from")
    ap.add_argument("--clients", default="1,4,8", help="concurrent clients, comma-separated (default: %(default)s)")
    ap.add_argument("--requests", type=int, default=2, help="requests per client (default: %(default)s)")
    ap.add_argument("--prompt", type=int, default=32, help="prompt tokens (default: %(default)s)")
    ap.add_argument("--new", type=int, default=64, help="new tokens per request (default: %(default)s)")
    ap.add_argument("--rounds", type=int, default=3, help="default: %(default)s")
    ap.add_argument("--threads", type=int, default=None, help="default: physical cores")
    ap.add_argument("--max-batch", type=int, default=16, help="the Batcher's max_batch (default: %(default)s)")
    args = ap.parse_args(argv)

    import pygpt

    clients = [int(c) for c in args.clients.split(",") if c]
    with open(args.text, encoding="utf-8") as f:
        text = f.read()
    print(f"{args.requests} requests per client, {args.prompt}-token prompts, {args.new} new tokens each, "
          f"{args.rounds} rounds, {time.strftime('%Y-%m-%d %H:%M')}\n")
    print("| model | clients | mode | tokens/s | latency s | first token s | batched against turns |")
    print("|---|---|---|---|---|---|---|")
    for path in args.models:
        model = pygpt.load(path, n_threads=args.threads)
        ids = model.tokenizer.encode(text)
        for n in clients:
            per_client = [[dict(prompt=ids[(c * args.requests + r) * args.prompt:][:args.prompt],
                                max_new_tokens=args.new, temperature=0.8, seed=c * args.requests + r,
                                ignore_eos=True) for r in range(args.requests)] for c in range(n)]
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
