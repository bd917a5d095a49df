"""Embedding speed, side by side: pygpt's Model.embed against transformers (GPT2Model, mean
of last_hidden_state) and llama.cpp (llama-cpp-python, embedding=True, mean pooling) on the
same random gpt2-shaped model (made by tools/bench.py's make_models, in the same work folder;
llama.cpp with flash attention on, as tools/bench.py runs it).

One run embeds --texts passages of a public-domain text (tests/data/corpus), each cut to about
--tokens GPT-2 tokens, as unit vectors, text in and vectors out (each engine tokenizes: pygpt
and llama.cpp their own GPT-2 BPE, transformers its fast tokenizer). Each engine runs in its
own process; the processes take turns, one run each, for --rounds rounds, so every round
meets the same host. Prints a markdown table: median seconds a run, tokens a second, pygpt f32's
speed over it, and how close the engine's vectors are to transformers' (lowest cosine
similarity over the texts; random weights, so this checks the computation, not quality).

    python tools/bench_embed.py --threads 2 --dtypes f32,bf16,int8

--beside-stream measures instead what an embedding request does to a generation running beside
it (pygpt serve's case): a Batcher streams --stream-tokens tokens while another thread embeds
the passages, either with model.embed (each forward call of up to n_ctx tokens holds the model,
and the stream waits for it) or with batcher.embed (calls of at most prefill_chunk tokens
between two steps). Prints the longest wait between two pieces of the stream and the
embedding's seconds, medians over the rounds, the two ways in turns in one process.

    python tools/bench_embed.py --beside-stream --threads 2 --dtypes f32 --texts 16 --tokens 250
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402  (its models and worker environment)
import bench_beam  # noqa: E402  (its processes in turns)

CORPUS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests", "data", "corpus",
                      "eval-areopagitica.txt")


def passages(n: int, tokens: int) -> list:
    """n consecutive passages of the corpus of about `tokens` GPT-2 tokens (4 characters a token)."""
    with open(CORPUS, encoding="utf-8") as f:
        text = f.read()
    size = 4 * tokens
    if n * size > len(text):
        raise SystemExit(f"the corpus has {len(text)} characters: fewer texts or tokens")
    return [text[i * size:(i + 1) * size] for i in range(n)]


def embed_pygpt(a):
    import pygpt

    model = pygpt.load(a["path"], n_threads=a["threads"])
    return lambda texts: model.embed(texts)


def embed_transformers(a):
    import torch
    import transformers

    torch.set_num_threads(a["threads"])
    tok = transformers.GPT2TokenizerFast.from_pretrained(a["tokenizer"])
    tok.pad_token = tok.eos_token
    model = transformers.GPT2Model.from_pretrained(a["path"], torch_dtype=torch.float32).eval()

    def run(texts):
        with torch.inference_mode():
            x = tok(texts, return_tensors="pt", padding=True)
            h = model(**x).last_hidden_state
            mask = x["attention_mask"][..., None].to(h.dtype)
            v = (h * mask).sum(1) / mask.sum(1)
            return torch.nn.functional.normalize(v, dim=-1).numpy()

    return run


def embed_llamacpp(a):
    import llama_cpp

    llm = llama_cpp.Llama(model_path=a["path"], embedding=True, n_ctx=1024, n_batch=1024, n_ubatch=1024,
                          n_threads=a["threads"], n_threads_batch=a["threads"], flash_attn=True,
                          pooling_type=llama_cpp.LLAMA_POOLING_TYPE_MEAN, verbose=False)
    return lambda texts: np.asarray(llm.embed(texts, normalize=True), np.float32)


ENGINES = {"pygpt": embed_pygpt, "transformers": embed_transformers, "llama.cpp": embed_llamacpp}


def worker(a: dict) -> None:
    """After "READY", one run per "run" line: "RUN seconds [first vector, last vector]"."""
    run = ENGINES[a["engine"]](a)
    texts = passages(a["texts"], a["tokens"])
    run(texts[:2])  # warm up
    print("READY", flush=True)
    for line in sys.stdin:
        if line.strip() != "run":
            break
        t0 = time.perf_counter()
        v = run(texts)
        seconds = time.perf_counter() - t0
        print(f"RUN {seconds!r} {json.dumps(np.asarray(v, np.float64).tolist())}", flush=True)


def table(cases: list, results: list, args, n_tokens: int) -> str:
    """The markdown report of the runs in turns."""
    median = [statistics.median(s for s, _ in res) for res in results]
    ref = next((np.array(res[0][1]) for c, res in zip(cases, results) if c["engine"] == "transformers"), None)
    base = next((m for c, m in zip(cases, median) if c["engine"] == "pygpt" and c["dtype"] == "f32"), None)
    lines = [f"{args.shape}, {args.threads} threads, {args.texts} texts of {n_tokens / args.texts:.0f} tokens on "
             f"average, {args.rounds} rounds in turns, {time.strftime('%Y-%m-%d %H:%M')}", "",
             "| engine | weights | s a run: median (range) | tokens/s | pygpt f32 speed over it | "
             "lowest cosine to transformers' vectors |", "|---|---|---|---|---|---|"]
    for c, res, m in zip(cases, results, median):
        v = np.array(res[0][1])
        cos = "n/a" if ref is None else f"{(v * ref).sum(1).min():.6f}"
        speedup = f"{m / base:.2f}x" if base else "n/a"
        lines.append(f"| {c['engine']} | {c['dtype']} | {m:.3f} ({min(s for s, _ in res):.3f}-"
                     f"{max(s for s, _ in res):.3f}) | {n_tokens / m:.0f} | {speedup} | {cos} |")
    return "\n".join(lines)


def beside_stream(path: str, args) -> str:
    """The --beside-stream report (see the module's docstring)."""
    import threading

    import pygpt

    model = pygpt.load(path, n_threads=args.threads)
    texts = passages(args.texts, args.tokens)
    with pygpt.Batcher(model) as batcher:
        ways = {"model.embed": model.embed, "batcher.embed": batcher.embed}
        gaps: dict = {w: [] for w in ways}
        seconds: dict = {w: [] for w in ways}
        batcher.embed(texts[:2])  # warm up
        for _ in range(args.rounds):
            for way, embed in ways.items():
                stream = iter(batcher.stream("Once upon a time", max_new_tokens=args.stream_tokens, ignore_eos=True))
                next(stream)
                span = {}

                def run():
                    span["start"] = time.perf_counter()
                    embed(texts)
                    span["end"] = time.perf_counter()

                t = threading.Thread(target=run)
                t.start()
                times = [time.perf_counter()]
                for _piece in stream:
                    times.append(time.perf_counter())
                t.join()
                during = [b - a for a, b in zip(times, times[1:]) if b > span["start"] and a < span["end"]]
                gaps[way].append(max(during) if during else 0.0)
                seconds[way].append(span["end"] - span["start"])
    lines = [f"{args.shape} {os.path.basename(path)}, {args.threads} threads: a {args.stream_tokens}-token stream beside "
             f"an embedding of {args.texts} texts of about {args.tokens} tokens, {args.rounds} rounds in turns, "
             f"{time.strftime('%Y-%m-%d %H:%M')}", "",
             "| embedding by | longest wait between two stream pieces, ms: median (range) | embedding s: median |",
             "|---|---|---|"]
    for way in ways:
        g = gaps[way]
        lines.append(f"| {way} | {1000 * statistics.median(g):.0f} ({1000 * min(g):.0f}-{1000 * max(g):.0f}) | "
                     f"{statistics.median(seconds[way]):.2f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    bench_beam.engine_arguments(ap, "f32,bf16,int8", "transformers,llama.cpp", 5)
    ap.add_argument("--texts", type=int, default=32, help="texts a run (default: %(default)s)")
    ap.add_argument("--tokens", type=int, default=128, help="about this many tokens a text (default: %(default)s)")
    ap.add_argument("--beside-stream", action="store_true",
                    help="measure a stream's waits beside an embedding request instead (see above)")
    ap.add_argument("--stream-tokens", type=int, default=200, help="--beside-stream: the stream's tokens")
    args = ap.parse_args(argv)
    if args.worker:
        worker(json.loads(args.worker))
        return 0

    import pygpt

    peers = [p for p in args.peers.split(",") if p]
    dtypes = [d for d in args.dtypes.split(",") if d]
    llama_types = ("f32",) if "llama.cpp" in peers else ()
    paths = bench.make_models(args.workdir, args.shape, dtypes, False, bench_beam.log, llama_types)
    if args.beside_stream:
        print(beside_stream(paths[dtypes[0]], args))
        return 0
    common = dict(threads=args.threads, texts=args.texts, tokens=args.tokens, tokenizer=paths["hf"])
    cases = [dict(common, engine="pygpt", dtype=d, path=paths[d]) for d in dtypes]
    if "transformers" in peers:
        cases.append(dict(common, engine="transformers", dtype="f32", path=paths["hf"]))
    if "llama.cpp" in peers:
        cases.append(dict(common, engine="llama.cpp", dtype="f32", path=paths["llama.cpp-f32"]))
    tok = pygpt.Tokenizer.from_dir(paths["f32"])
    n_tokens = sum(len(tok.encode(t)) for t in passages(args.texts, args.tokens))
    bench_beam.log(f"{len(cases)} engines, {args.rounds} rounds in turns")
    results = bench_beam.in_turns(cases, args.rounds, script=__file__)
    print(table(cases, results, args, n_tokens))
    return 0


if __name__ == "__main__":
    sys.exit(main())
