#!/usr/bin/env python
"""Side-by-side speed of two (or more) pygpt builds on one model: the A/B comparisons quoted
in BENCHMARKS.md ("each measured in alternating processes").

Each build is a folder holding a `pygpt` package with its compiled `_core` (a checkout built
in place by tools/dev_build.sh, or a copy of one). Every round runs each build once, in its
own process and in turn (the order rotates from round to round), so that a shared host's
drift hits every build alike; each process drops the model from the page cache, loads it,
warms up and reports the median of --runs measurements.

  python tools/ab.py decode /tmp/pygpt-bench/pygpt-124M-int8 --builds old=/tmp/old,new=. --threads 2
  python tools/ab.py batch  MODEL --builds ... --batch 8       # batched decode tokens/s
  python tools/ab.py prefill MODEL --builds ...                # prompt tokens/s

Prints every round's figures and each build's median as a ratio to the first build's.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import statistics
import subprocess
import sys

TOOLS = os.path.dirname(os.path.abspath(__file__))


def worker(a: dict) -> float:
    import numpy as np

    import pygpt  # first: from the build on PYTHONPATH (bench.py puts the repository first)

    if not os.path.abspath(pygpt.__file__).startswith(os.path.abspath(a["build"]) + os.sep):
        raise SystemExit(f"loaded {pygpt.__file__}, not the build in {a['build']}")
    sys.path.insert(0, TOOLS)
    import bench

    bench.drop_page_cache(a["model"])
    # prefix_cache=0 where the build has one: every run computes its whole prompt, as in older builds
    cache = {"prefix_cache": 0} if "prefix_cache" in inspect.signature(pygpt.load).parameters else {}
    model = pygpt.load(a["model"], n_threads=a["threads"], **cache)
    rng = np.random.default_rng(1)
    prompts = [rng.integers(0, model.config["vocab_size"], a["prompt"]).tolist() for _ in range(a["batch"])]
    model.generate(prompts[0][:8], max_new_tokens=4, ignore_eos=True)
    new = 1 if a["what"] == "prefill" else a["new"]
    figures = []
    for _ in range(a["runs"]):
        out = model.generate(prompts if a["what"] == "batch" else prompts[0], max_new_tokens=new, ignore_eos=True)
        timings = (out[0] if a["what"] == "batch" else out).timings
        figures.append(timings.prefill_tokens_per_s if a["what"] == "prefill" else timings.decode_tokens_per_s)
    return statistics.median(figures)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("what", choices=("decode", "batch", "prefill"))
    ap.add_argument("model", help="pygpt model folder")
    ap.add_argument("--builds", required=True, help="name=folder,name=folder,... (the first is the baseline)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--runs", type=int, default=3, help="measurements per process (median)")
    ap.add_argument("--prompt", type=int, default=128, help="prompt tokens")
    ap.add_argument("--new", type=int, default=128, help="new tokens (decode, batch)")
    ap.add_argument("--batch", type=int, default=8, help="sequences (batch)")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        print("RESULT", worker(json.loads(args.worker)), flush=True)
        return 0

    builds = []
    for item in args.builds.split(","):
        name, sep, folder = item.partition("=")
        if not sep or not os.path.isdir(os.path.join(folder, "pygpt")):
            ap.error(f"--builds: {item!r} is not name=folder with a pygpt package in the folder")
        builds.append((name, os.path.abspath(folder)))
    results = {name: [] for name, _ in builds}
    for r in range(args.rounds):
        k = r % len(builds)
        for name, folder in builds[k:] + builds[:k]:
            a = {"what": args.what, "model": os.path.abspath(args.model), "build": folder, "threads": args.threads,
                 "runs": args.runs, "prompt": args.prompt, "new": args.new,
                 "batch": args.batch if args.what == "batch" else 1}
            env = {**os.environ, "PYTHONPATH": folder}
            p = subprocess.run([sys.executable, os.path.abspath(__file__), args.what, args.model, "--builds",
                                args.builds, "--worker", json.dumps(a)], env=env, capture_output=True, text=True)
            lines = [line for line in p.stdout.splitlines() if line.startswith("RESULT ")]
            if p.returncode != 0 or not lines:
                print(p.stdout + p.stderr, file=sys.stderr)
                return 1
            results[name].append(float(lines[-1].split()[1]))
        print(f"round {r + 1}: " + ", ".join(f"{n} {v[-1]:.1f}" for n, v in results.items()), flush=True)
    base = statistics.median(results[builds[0][0]])
    unit = "prompt tok/s" if args.what == "prefill" else "tok/s"
    for name, values in results.items():
        med = statistics.median(values)
        print(f"{name}: median {med:.1f} {unit} (x{med / base:.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
