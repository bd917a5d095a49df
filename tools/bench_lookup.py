"""Drafts against plain decoding, side by side in one process: prompt lookup decoding, or
with --assistant an assistant model (assisted decoding).

For each model folder: a prompt cut from a text file (its first --prompt tokens, or with
--repeat a passage followed by its own first --repeat tokens again, so that a model that
copies can copy), decoding of --new tokens without drafts and with drafts of at most each
--k tokens (prompt_lookup_num_tokens, or num_assistant_tokens with the --assistant model) in
turn, --rounds rounds. Prints a markdown table: the median time of each, its ratio to plain
decoding, and how many draft tokens were proposed and right. Greedy (the default): every
run's tokens must be plain greedy's (the script stops otherwise); with --temperature, drafts
give the same distribution from other random numbers, so the tokens differ.

    python tools/bench_lookup.py /tmp/pygpt-bench/pygpt-124M-int8 --text corpus.txt --k 4,10
    python tools/bench_lookup.py /tmp/pygpt-bench/pygpt-124M-f32 --assistant /tmp/pygpt-bench/pygpt-124M-int8 \
        --text corpus.txt --k 4,8
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time


def measure(model, ids, new, ks, rounds, assistant=None, temperature=0.0):
    """{k: (median seconds, draft tokens, accepted)} with k = 0 plain decoding (summed over
    the rounds)."""
    times = {k: [] for k in [0] + ks}
    drafts = {k: [0, 0] for k in times}
    want = None
    for r in range(rounds):
        for k in times:
            if not k:
                kw = {}
            elif assistant is not None:
                kw = dict(assistant_model=assistant, num_assistant_tokens=k)
            else:
                kw = dict(prompt_lookup_num_tokens=k)
            t0 = time.perf_counter()
            out = model.generate(ids, max_new_tokens=new, ignore_eos=True, temperature=temperature, seed=r, **kw)
            times[k].append(time.perf_counter() - t0)
            want = out.tokens if want is None else want
            if temperature == 0.0 and out.tokens != want:
                raise SystemExit(f"{model.path}: k={k} gave other tokens than plain greedy")
            drafts[k][0] += out.timings.draft_tokens
            drafts[k][1] += out.timings.accepted_draft_tokens
    return {k: (statistics.median(v), *drafts[k]) for k, v in times.items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+", metavar="DIR", help="pygpt model folders")
    ap.add_argument("--text", required=True, help="a text file the prompt is cut from")
    ap.add_argument("--prompt", type=int, default=300, help="prompt tokens (default: %(default)s)")
    ap.add_argument("--repeat", type=int, default=0, metavar="N",
                    help="append the prompt's first N tokens again (default: %(default)s)")
    ap.add_argument("--new", type=int, default=100, help="new tokens (default: %(default)s)")
    ap.add_argument("--k", default="4,10", help="the longest drafts (default: %(default)s)")
    ap.add_argument("--assistant", metavar="DIR", help="drafts from this model (assisted decoding) instead of "
                    "prompt lookup")
    ap.add_argument("--temperature", type=float, default=0.0, help="default: %(default)s (greedy)")
    ap.add_argument("--rounds", type=int, default=3, help="default: %(default)s")
    ap.add_argument("--threads", type=int, default=None, help="default: physical cores")
    args = ap.parse_args(argv)

    import pygpt

    ks = [int(k) for k in args.k.split(",") if k]
    with open(args.text, encoding="utf-8") as f:
        text = f.read()
    assistant = pygpt.load(args.assistant, n_threads=args.threads) if args.assistant else None
    how = "greedy" if args.temperature == 0 else f"temperature {args.temperature}"
    drafts = f"assistant {args.assistant}" if assistant is not None else "prompt lookup"
    print(f"{how}, {drafts}, {args.new} new tokens, {args.rounds} rounds, {time.strftime('%Y-%m-%d %H:%M')}\n")
    print("| model | prompt tokens | k | s (median) | against no drafts | draft tokens right |")
    print("|---|---|---|---|---|---|")
    for path in args.models:
        model = pygpt.load(path, n_threads=args.threads, prefix_cache=0)  # every run computes its prompt
        tok = model.tokenizer
        if tok is None:
            raise SystemExit(f"{path}: no tokenizer")
        n_ctx = model.config["n_ctx"]
        budget = n_ctx - args.new - args.repeat
        ids = tok.encode(text)[:max(1, min(args.prompt, budget))]
        ids = ids + ids[:args.repeat]
        res = measure(model, ids, args.new, ks, args.rounds, assistant, args.temperature)
        base = res[0][0]
        for k, (sec, drafted, right) in res.items():
            print(f"| {path} | {len(ids)} | {k or 'off'} | {sec:.3f} | {sec / base:.2f}x | "
                  f"{f'{right} of {drafted}' if k else 'n/a'} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
