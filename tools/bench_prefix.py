"""What a model's prefix cache (pygpt.load(..., prefix_cache=n)) saves when prompts share a
start: a few-shot preamble of about --preamble tokens (a public-domain passage) asked with
--questions different endings, one generate call each (greedy, --new tokens), on two loads of
the same model folder in one process: prefix_cache=0 and the default (1). The two take turns,
one call each, so both meet the same host. Prints the median time to the first token and of
the whole call for each, the prompt tokens that ran, and checks that both gave the same tokens.

    python tools/bench_prefix.py /tmp/pygpt-bench/pygpt-124M-f32 --threads 2
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

CORPUS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests", "data", "corpus",
                      "eval-areopagitica.txt")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="a pygpt model folder with a tokenizer")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--preamble", type=int, default=400, help="preamble tokens (about)")
    p.add_argument("--questions", type=int, default=8)
    p.add_argument("--new", type=int, default=16, help="new tokens a call")
    args = p.parse_args(argv)

    import pygpt

    models = {"prefix_cache=0": pygpt.load(args.model, n_threads=args.threads, prefix_cache=0),
              "prefix_cache=1": pygpt.load(args.model, n_threads=args.threads)}
    with open(CORPUS, encoding="utf-8") as f:
        text = f.read()
    ids = models["prefix_cache=0"].tokenizer.encode(text)
    preamble = models["prefix_cache=0"].tokenizer.decode(ids[:args.preamble])
    endings = [f"\n\nQuestion {i}: what does the author say of book {i}?\nAnswer:" for i in range(args.questions)]
    for model in models.values():  # the first call of each pays for page faults; not timed
        model.generate("warm up", max_new_tokens=2)
    times = {name: ([], [], []) for name in models}
    tokens = {name: [] for name in models}
    for ending in endings:
        for name, model in models.items():
            t0 = time.perf_counter()
            out = model.generate(preamble + ending, max_new_tokens=args.new, ignore_eos=True)
            whole = time.perf_counter() - t0
            ttft, call, ran = times[name]
            ttft.append(out.timings.time_to_first_token)
            call.append(whole)
            ran.append(out.timings.prefill_tokens)
            tokens[name].append(out.tokens)
    same = tokens["prefix_cache=0"] == tokens["prefix_cache=1"]
    n_prompt = len(models["prefix_cache=0"].tokenizer.encode(preamble + endings[0]))
    print(f"{args.model}: {args.questions} prompts of about {n_prompt} tokens sharing a {args.preamble}-token "
          f"preamble, {args.new} new tokens each, {models['prefix_cache=0'].n_threads} threads; the same tokens: "
          f"{same}\n")
    print("| model | median TTFT ms | median call ms | prompt tokens run (median) |")
    print("|---|---|---|---|")
    for name, (ttft, call, ran) in times.items():
        print(f"| {name} | {1000 * statistics.median(ttft):.0f} | {1000 * statistics.median(call):.0f} | "
              f"{statistics.median(ran):.0f} |")
    base, cached = (statistics.median(times[n][0]) for n in models)
    print(f"\ntime to first token: {base / cached:.1f}x faster with the prefix cache")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
