#!/usr/bin/env python3
"""Tokenizer throughput: pygpt vs tiktoken vs Hugging Face `tokenizers`, same corpus, same run.

Every library is built from the same local GPT-2 files (no download) and must produce the same
ids, which the script checks before it reports anything. Figures are MB/s of UTF-8 text (input
bytes for encode, output bytes for decode), best of --repeat runs:

  encode 1 thread    each corpus file encoded whole, one call per file
  encode batch       the corpus cut into ~--chunk-bytes documents at line ends, one batch call
                     on --threads threads (pygpt encode_batch, tiktoken encode_ordinary_batch,
                     HF encode_batch with RAYON_NUM_THREADS)
  decode 1 thread    ids of each file back to str
  short call         microseconds per encode of one 40-byte sentence (per-call overhead)

    python tools/bench_tokenizer.py                      # ../shared/data/corpus
    python tools/bench_tokenizer.py --corpus DIR --repeat 5 --threads 2 --json out.json
"""
import argparse
import json
import os
import platform
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHORT = "Hello world, this is a short sentence."
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", default=os.path.join(ROOT, "..", "shared", "data", "corpus"),
                    help="folder of .txt files (default: ../shared/data/corpus)")
    ap.add_argument("--tokenizer-dir", default=os.path.join(ROOT, "tests", "data", "gpt2-tokenizer"),
                    help="vocab.json + merges.txt")
    ap.add_argument("--repeat", type=int, default=3, help="runs per measurement; the best is kept")
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="threads for the batch runs")
    ap.add_argument("--chunk-bytes", type=int, default=4096, help="document size for the batch runs")
    ap.add_argument("--libs", default="pygpt,tiktoken,hf", help="comma-separated subset of pygpt,tiktoken,hf")
    ap.add_argument("--json", help="also write the results to this file")
    return ap.parse_args()


def load_corpus(folder):
    texts = {}
    for name in sorted(os.listdir(folder)):
        if name.endswith(".txt"):
            with open(os.path.join(folder, name), encoding="utf-8") as f:
                texts[name] = f.read()
    if not texts:
        sys.exit(f"no .txt files in {folder}")
    return texts


def chunk(text, size):
    """Pieces of about `size` bytes, cut after a newline (the same cut for every library)."""
    out, start = [], 0
    while start < len(text):
        end = text.find("\n", start + size)
        end = len(text) if end < 0 else end + 1
        out.append(text[start:end])
        start = end
    return out


def make_libs(names, tok_dir, threads):
    libs = {}
    if "hf" in names:
        os.environ["RAYON_NUM_THREADS"] = str(threads)  # read when tokenizers starts its pool
        os.environ["TOKENIZERS_PARALLELISM"] = "true"
    if "pygpt" in names:
        import checkout

        checkout.use_if_built()
        import pygpt

        tok = pygpt.Tokenizer.from_dir(tok_dir)
        libs["pygpt"] = dict(
            version=pygpt.__version__,
            encode=tok.encode_ordinary,
            encode_batch=lambda texts: tok.encode_batch(texts, n_threads=threads),
            decode=tok.decode,
        )
    if "tiktoken" in names:
        import tiktoken
        from tiktoken.load import data_gym_to_mergeable_bpe_ranks

        ranks = data_gym_to_mergeable_bpe_ranks(os.path.join(tok_dir, "merges.txt"), os.path.join(tok_dir, "vocab.json"))
        enc = tiktoken.Encoding("gpt2-local", pat_str=GPT2_PATTERN, mergeable_ranks=ranks,
                                special_tokens={"<|endoftext|>": 50256})
        libs["tiktoken"] = dict(
            version=tiktoken.__version__,
            encode=enc.encode_ordinary,
            encode_batch=lambda texts: enc.encode_ordinary_batch(texts, num_threads=threads),
            decode=enc.decode,
        )
    if "hf" in names:
        import tokenizers
        from tokenizers import decoders, models, pre_tokenizers

        hf = tokenizers.Tokenizer(models.BPE.from_file(os.path.join(tok_dir, "vocab.json"),
                                                       os.path.join(tok_dir, "merges.txt")))
        hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        hf.decoder = decoders.ByteLevel()
        libs["hf"] = dict(
            version=tokenizers.__version__,
            encode=lambda text: hf.encode(text, add_special_tokens=False).ids,
            encode_batch=lambda texts: [e.ids for e in hf.encode_batch(texts, add_special_tokens=False)],
            decode=lambda ids: hf.decode(ids, skip_special_tokens=False),
        )
    return libs


def best_time(fn, repeat):
    best, result = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
    return best, result


def main():
    args = parse_args()
    names = [n.strip() for n in args.libs.split(",") if n.strip()]
    texts = load_corpus(args.corpus)
    chunks = [c for t in texts.values() for c in chunk(t, args.chunk_bytes)]
    n_bytes = sum(len(t.encode("utf-8")) for t in texts.values())
    libs = make_libs(names, args.tokenizer_dir, args.threads)

    results, reference = {}, None
    for name, lib in libs.items():
        t_enc, ids = best_time(lambda: [lib["encode"](t) for t in texts.values()], args.repeat)
        t_batch, batch_ids = best_time(lambda: lib["encode_batch"](chunks), args.repeat)
        t_dec, decoded = best_time(lambda: [lib["decode"](x) for x in ids], args.repeat)
        if decoded != list(texts.values()):
            sys.exit(f"{name}: decode(encode(text)) != text")
        if reference is None:
            reference = (name, ids, batch_ids)
        elif (ids, batch_ids) != reference[1:]:
            sys.exit(f"{name} and {reference[0]} give different ids: the comparison would be meaningless")
        calls = 2000
        t_short, _ = best_time(lambda: [lib["encode"](SHORT) for _ in range(calls)], args.repeat)
        n_tokens = sum(map(len, ids))
        results[name] = dict(version=lib["version"], tokens=n_tokens,
                             encode_mb_s=n_bytes / t_enc / 1e6, encode_batch_mb_s=n_bytes / t_batch / 1e6,
                             decode_mb_s=n_bytes / t_dec / 1e6, short_us=t_short / calls * 1e6)

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    info = dict(corpus={k: len(v.encode()) for k, v in texts.items()}, mb=n_bytes / 1e6, chunks=len(chunks),
                threads=args.threads, repeat=args.repeat, cpu=cpu, cores=os.cpu_count(),
                loadavg=os.getloadavg(), python=platform.python_version())

    print(f"corpus: {n_bytes / 1e6:.2f} MB in {len(texts)} files ({len(chunks)} chunks of ~{args.chunk_bytes} B "
          f"for batch), {results[next(iter(results))]['tokens']:,} tokens; {cpu}, {os.cpu_count()} cores, "
          f"batch threads {args.threads}, best of {args.repeat}, load avg {os.getloadavg()[0]:.1f}")
    print("| library | version | encode 1 thread MB/s | encode batch MB/s | decode 1 thread MB/s | "
          "short call µs |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for name, r in results.items():
        print(f"| {name} | {r['version']} | {r['encode_mb_s']:.1f} | {r['encode_batch_mb_s']:.1f} | "
              f"{r['decode_mb_s']:.1f} | {r['short_us']:.1f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(info=info, results=results), f, indent=2)


if __name__ == "__main__":
    main()
