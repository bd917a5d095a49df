"""pygpt bench: a model's speed on this machine, as llama.cpp's llama-bench reports it.

    pygpt bench -m out/gpt2 --threads 1,2 -p 128 -n 128 --batch 1,8

Tests, each at every thread count of --threads:
  ppN      prefill: an N-token prompt run at once (tokens/s of the call, its first token's
           logits and draw included)
  tgN      decode: N tokens after the first, a forward call each (greedy; tokens/s)
  tgN@B    B sequences decoding together (--batch B > 1): tokens/s of all of them

The figures are the runtime's own timings (GenerationOutput.timings), mean and standard
deviation over --repetitions runs after one warm-up run, on random token ids (the speed does
not depend on them). For pygpt against other engines and the machine's limits, see
tools/bench.py and BENCHMARKS.md.
"""

from __future__ import annotations

import json
import os
import statistics
import time

import numpy as np


def _ints(text: str) -> list:
    """A comma-separated list of positive integers (an argparse type)."""
    import argparse

    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers separated by commas, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected integers >= 1, got {text!r}")
    return values


def add_arguments(p) -> None:
    """The arguments of the bench command, on an argparse parser."""
    from . import lora

    p.add_argument("-m", "--model", metavar="DIR", default=None,
                   help="model folder (default: the model shipped with pygpt)")
    p.add_argument("--threads", type=_ints, default=None, metavar="T[,T...]",
                   help="thread counts to run each test at (default: physical cores)")
    p.add_argument("-p", "--prompt", type=_ints, default=[128], metavar="N[,N...]",
                   help="prompt lengths of the prefill tests (default: 128)")
    p.add_argument("-n", "--new", type=_ints, default=[128], metavar="N[,N...]",
                   help="tokens of the decode tests (default: 128)")
    p.add_argument("--batch", type=_ints, default=[1], metavar="B[,B...]",
                   help="sequences decoding together in the decode tests (default: 1)")
    p.add_argument("-r", "--repetitions", type=int, default=5, metavar="R",
                   help="runs of each test after a warm-up run (default: %(default)s)")
    p.add_argument("--kv-cache", choices=("auto", "f32", "f16", "int8"), default="auto",
                   help="KV cache type (default: auto)")
    lora.add_arguments(p)
    p.add_argument("--json", action="store_true", help="one JSON object a test instead of the table")


def measure(model, test: str, size: int, batch: int, repetitions: int, rng) -> list:
    """Tokens/s of `repetitions` runs of one test ("pp" or "tg") after a warm-up run."""
    vocab = model.config["vocab_size"]
    if test == "pp":
        prompts, new = rng.integers(0, vocab, size).tolist(), 1
    else:
        prompts = [[int(t)] for t in rng.integers(0, vocab, batch)]
        prompts, new = (prompts[0] if batch == 1 else prompts), size + 1  # size tokens after the first
    speeds = []
    for run in range(repetitions + 1):
        out = model.generate(prompts, max_new_tokens=new, ignore_eos=True)
        t = (out[0] if isinstance(out, list) else out).timings
        if test == "pp" and t.prefill_tokens != size:  # a model that kept the prompt's keys and values
            raise RuntimeError(f"pp{size} ran {t.prefill_tokens} prompt tokens: load the model with prefix_cache=0")
        if run:
            speeds.append(t.prefill_tokens_per_s if test == "pp" else t.decode_tokens_per_s)
    return speeds


def _name(model) -> str:
    """The model folder's name, and its adapters (applied at load) if any."""
    name = os.path.basename(os.path.normpath(model.path))
    return name + (f" + {len(model.lora)} LoRA" if model.lora else "")


def run(args) -> int:
    """Prints a row a test and thread count."""
    from ._threads import default_threads
    from .model import load

    if args.repetitions < 1:
        raise ValueError("--repetitions must be >= 1")
    tests = [("pp", n, 1) for n in args.prompt] + [("tg", n, b) for n in args.new for b in args.batch]
    rows = []
    for i, threads in enumerate(args.threads or [default_threads()]):
        # prefix_cache=0: each run computes its whole prompt
        model = load(args.model, n_threads=threads, kv_cache=args.kv_cache, lora=args.lora, prefix_cache=0)
        model.generation_config = {}  # greedy, one sequence: not the folder's sampling or beams
        if i == 0:
            n_ctx = model.config["n_ctx"]
            for test, size, _ in tests:  # the first token and size more (tg) must fit
                if size + (test == "tg") > n_ctx - (test == "tg"):
                    raise ValueError(f"{test}{size} does not fit the model's context ({n_ctx} tokens)")
            if not args.json:
                print("| model | dtype | kv cache | isa | threads | test | tokens/s |")
                print("|---|---|---|---|---|---|---|", flush=True)
        rng = np.random.default_rng(0)
        for test, size, batch in tests:
            speeds = measure(model, test, size, batch, args.repetitions, rng)
            name = f"{test}{size}" + (f"@{batch}" if batch > 1 else "")
            row = dict(model=_name(model), dtype=model.config["dtype"], kv_cache=model.kv_cache, isa=model.isa,
                       threads=threads, test=name, tokens_per_s=statistics.mean(speeds),
                       stdev=statistics.stdev(speeds) if len(speeds) > 1 else 0.0, runs=speeds,
                       date=time.strftime("%Y-%m-%d %H:%M"))
            rows.append(row)
            if args.json:
                print(json.dumps(row), flush=True)
            else:
                print(f"| {row['model']} | {row['dtype']} | {row['kv_cache']} | {row['isa']} | {threads} | {name} | "
                      f"{row['tokens_per_s']:.1f} ± {row['stdev']:.1f} |", flush=True)
        model.close()
    return 0

