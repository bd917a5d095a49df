"""Grammar-constrained generation against free generation, and against llama.cpp's grammar
sampler (llama-cpp-python), side by side in one process.

For a pygpt model folder (and with --gguf a llama.cpp file of the same weights): one short
prompt, up to --new tokens with no grammar and with each grammar (any JSON object, a JSON
schema, a bounded string (the worst case), and --grammar GBNF files: the same text for both engines, GBNF being llama.cpp's
format), greedy and sampled (temperature 0.8, top_p 0.95: with a filter after the mask,
pygpt masks the whole vocabulary every token), in turns, --rounds rounds. Prints a markdown
table of the median milliseconds per generated token of each call (prompt included: a few
tokens), its ratio to the same engine without a grammar, what the grammar adds a token, and
the tokens generated (a grammar may end the text before --new). llama-cpp-python's own cost
a token (its sampling in Python) is in both of its rows: compare what the grammar adds.

Then the cost of one mask in pygpt (the vocabulary walk) for a few texts so far, from a new
matcher: what a token costs the first time its state is met (a generation keeps the masks of
its last 16 states).

    python tools/bench_grammar.py /tmp/pygpt-bench/pygpt-124M-int8 --gguf /tmp/pygpt-bench/gguf-124M-q8_0.gguf
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

PROMPT = "The record, as JSON:"
SCHEMA = {"type": "object",
          "properties": {"name": {"type": "string", "maxLength": 20}, "age": {"type": "integer", "minimum": 0},
                         "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 3}},
          "required": ["name", "age", "tags"]}
SAMPLING = {"greedy": dict(temperature=0.0), "T=0.8, top_p=0.95": dict(temperature=0.8, top_p=0.95)}


def grammars(paths):
    """{name: GBNF text}: none, any JSON object, the schema, the files."""
    from pygpt.json_schema import JSON_OBJECT_GBNF, json_schema_to_gbnf

    # the last: a string of exactly 1000 characters, where every token moves to a state not met
    # before (the count is in the state), so no walk is ever reused: the worst case
    out = {"none": None, "JSON object": JSON_OBJECT_GBNF, "JSON schema": json_schema_to_gbnf(SCHEMA),
           "string of 1000 characters": json_schema_to_gbnf({"type": "string", "minLength": 1000, "maxLength": 1000})}
    for p in paths:
        with open(p, encoding="utf-8") as f:
            out[p] = f.read()
    return out


def run_pygpt(model, compiled, sampling, new, seed):
    """(seconds, tokens generated)."""
    t0 = time.perf_counter()
    out = model.generate(PROMPT, max_new_tokens=new, grammar=compiled, seed=seed, **sampling)
    return time.perf_counter() - t0, len(out.tokens)


def run_llama(llm, compiled, sampling, new, seed):
    t0 = time.perf_counter()
    r = llm.create_completion(PROMPT, max_tokens=new, grammar=compiled, seed=seed,
                              top_p=sampling.get("top_p", 1.0), top_k=0, min_p=0.0,
                              temperature=sampling["temperature"], repeat_penalty=1.0)
    return time.perf_counter() - t0, r["usage"]["completion_tokens"]


def mask_costs(model, rounds):
    """[(text so far, ms, allowed tokens)]: one vocabulary walk from a new matcher (its
    following of the text's few tokens included)."""
    import numpy as np

    import pygpt
    from pygpt import _core

    g = pygpt.Grammar.json()
    tok = model.tokenizer
    trie = tok.vocab_trie()
    V = int(model.config["vocab_size"])
    rows = []
    for text in ['{', '{"', '{"name": "Ann', '{"age": 12', '{"a": [1, ']:
        ids = tok.encode(text)
        times = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            masks = _core.grammar_masks(g._core, trie, ids, V, [tok.eot_id], every=False, share=False)
            times.append(time.perf_counter() - t0)
        ms = statistics.median(times) * 1e3
        rows.append((text, ms, int(np.count_nonzero(masks[-1]))))
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", metavar="DIR", help="a pygpt model folder")
    ap.add_argument("--gguf", metavar="FILE", help="llama.cpp's file of the same weights (llama-cpp-python)")
    ap.add_argument("--grammar", action="append", default=[], metavar="FILE", help="more GBNF grammars")
    ap.add_argument("--new", type=int, default=128, help="at most this many new tokens (default: %(default)s)")
    ap.add_argument("--rounds", type=int, default=3, help="default: %(default)s")
    ap.add_argument("--threads", type=int, default=None, help="default: physical cores")
    args = ap.parse_args(argv)

    import pygpt

    model = pygpt.load(args.model, n_threads=args.threads, prefix_cache=0)  # every run computes its prompt
    threads = model.n_threads
    engines = {"pygpt": (model, run_pygpt, pygpt.Grammar)}
    if args.gguf:
        import llama_cpp

        llm = llama_cpp.Llama(args.gguf, n_threads=threads, n_threads_batch=threads, n_ctx=1024, verbose=False,
                              logits_all=False)
        engines["llama.cpp"] = (llm, run_llama, lambda text: llama_cpp.LlamaGrammar.from_string(text, verbose=False))
    texts = grammars(args.grammar)
    compiled = {(e, name): (None if text is None else make(text))
                for e, (_, _, make) in engines.items() for name, text in texts.items()}
    cases = [(e, name, how) for how in SAMPLING for name in texts for e in engines]
    times = {c: [] for c in cases}
    tokens = {c: [] for c in cases}
    for r in range(args.rounds):
        for c in cases:  # in turns: every case once a round
            e, name, how = c
            handle, run, _ = engines[e]
            sec, n = run(handle, compiled[(e, name)], SAMPLING[how], args.new, r)
            times[c].append(sec / max(n, 1))
            tokens[c].append(n)

    print(f"{args.model}{' and ' + args.gguf if args.gguf else ''}, {threads} threads, up to {args.new} new tokens, "
          f"{args.rounds} rounds, {time.strftime('%Y-%m-%d %H:%M')}\n")
    print("| sampling | grammar | engine | ms / token (median) | against no grammar | the grammar's ms / token "
          "| tokens (per round) |")
    print("|---|---|---|---|---|---|---|")
    for c in cases:
        e, name, how = c
        ms = statistics.median(times[c]) * 1e3
        base = statistics.median(times[(e, "none", how)]) * 1e3
        added = f"{ms - base:+.2f}" if name != "none" else "n/a"
        print(f"| {how} | {name} | {e} | {ms:.2f} | {ms / base:.2f}x | {added} | {', '.join(map(str, tokens[c]))} |")
    for how in SAMPLING:
        for name in texts:
            if name != "none" and "llama.cpp" in engines:
                ours = statistics.median(times[("pygpt", name, how)])
                theirs = statistics.median(times[("llama.cpp", name, how)])
                def added(e):
                    return (statistics.median(times[(e, name, how)]) - statistics.median(times[(e, "none", how)])) * 1e3

                print(f"\n{how}, {name}: pygpt {theirs / ours:.2f}x llama.cpp's tokens/s; what the grammar adds a "
                      f"token: llama.cpp {added('llama.cpp'):+.2f} ms, pygpt {added('pygpt'):+.2f} ms", end="")
    print("\n\nOne vocabulary walk in pygpt (a new matcher; any JSON object):\n")
    print("| text so far | ms | tokens allowed |")
    print("|---|---|---|")
    for text, ms, n in mask_costs(model, args.rounds):
        print(f"| `{json.dumps(text)[1:-1]}` | {ms:.2f} | {n} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
