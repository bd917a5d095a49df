#!/usr/bin/env python
"""Kernel paths side by side on one model, in one process: the "Kernel paths" figures of
BENCHMARKS.md.

The model is loaded once per path (`pygpt.Model(dir, isa=...)`, no prefix cache); every round
runs each path in turn: the prompt with one new token (prefill tokens/s), then --new greedy
tokens (decode tokens/s) and the same for a batch of --batch prompts (batched decode
tokens/s). A shared host's drift hits each path alike, so the report is each path's median
and the median of the per-round ratios to the first path.

  python tools/bench_paths.py /tmp/pygpt-bench/pygpt-124M-int8 --isas avx512bf16,amx --threads 2
"""

from __future__ import annotations

import argparse
import statistics
import sys

MEASURES = ("prefill", "decode", "batch")


def measure(model, prompts: list, new: int) -> dict:
    """One round of one path: tokens/s of the first prompt's prefill and decode, and of the
    batch's decode."""
    prefill = model.generate(prompts[0], max_new_tokens=1, ignore_eos=True).timings.prefill_tokens_per_s
    decode = model.generate(prompts[0], max_new_tokens=new, ignore_eos=True).timings.decode_tokens_per_s
    batch = model.generate(prompts, max_new_tokens=new, ignore_eos=True)[0].timings.decode_tokens_per_s
    return {"prefill": prefill, "decode": decode, "batch": batch}


def run(path: str, isas: list, threads: int, rounds: int, prompt: int, new: int, batch: int) -> dict:
    """{isa: {measure: [tok/s of each round]}}, the paths run in turns."""
    import numpy as np

    from pygpt.model import Model

    models = {isa: Model(path, n_threads=threads, isa=isa, prefix_cache=0) for isa in isas}
    vocab = next(iter(models.values())).config["vocab_size"]
    rng = np.random.default_rng(1)
    prompts = [rng.integers(0, vocab, prompt).tolist() for _ in range(batch)]
    for m in models.values():  # warm up: pages of the weights, the threads, the scratch
        m.generate(prompts[0][:8], max_new_tokens=2, ignore_eos=True)
    out = {isa: {k: [] for k in MEASURES} for isa in isas}
    for _ in range(rounds):
        for isa in isas:
            for k, v in measure(models[isa], prompts, new).items():
                out[isa][k].append(v)
    return out


def report(results: dict) -> list:
    """Lines: each path's medians, then each later path's median per-round ratio to the first."""
    isas = list(results)
    lines = [f"{isa}: " + ", ".join(f"{k} {statistics.median(results[isa][k]):.1f} tok/s" for k in MEASURES)
             for isa in isas]
    base = results[isas[0]]
    for isa in isas[1:]:
        ratios = {k: statistics.median(b / a for a, b in zip(base[k], results[isa][k])) for k in MEASURES}
        lines.append(f"{isa} / {isas[0]}: " + ", ".join(f"{k} {ratios[k]:.3f}x" for k in MEASURES))
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", help="pygpt model folder")
    ap.add_argument("--isas", required=True, help="kernel paths, comma-separated (the first is the base)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--prompt", type=int, default=128, help="prompt tokens")
    ap.add_argument("--new", type=int, default=32, help="new tokens of the decode runs")
    ap.add_argument("--batch", type=int, default=8, help="prompts of the batched decode")
    a = ap.parse_args(argv)
    isas = [i for i in a.isas.split(",") if i]
    if not isas or a.rounds < 1 or a.new < 2 or a.batch < 1 or a.prompt < 1:
        ap.error("need at least one path, one round, one prompt token, two new tokens and a batch of one")
    try:
        results = run(a.model, isas, a.threads, a.rounds, a.prompt, a.new, a.batch)
    except ValueError as e:  # a path this CPU or build lacks
        print(f"bench_paths: {e}", file=sys.stderr)
        return 2
    print(f"{a.model}, {a.threads} threads, {a.rounds} rounds, prompt {a.prompt}, {a.new} new, batch {a.batch}")
    print("\n".join(report(results)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
