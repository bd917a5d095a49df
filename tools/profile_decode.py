#!/usr/bin/env python
"""Where a decode step's time goes, function by function: milliseconds per step.

Runs `perf record` over two processes that differ only in the tokens they decode: each
generates from the same prompts (--batch of them, --prompt tokens each) --runs times, one
with --new + 1 new tokens, the other with 1 (the prompt and the first token). The difference
of each function's samples, over both threads and the decode steps, is its time per step:

    ms per step = (samples(new + 1) - samples(1)) / frequency / threads / (runs * new)

(the samples of both threads over the threads: the wall time of a step when both are busy
throughout, as in a decode step whose threads wait at barriers by spinning). Function names
need a _core with symbols (pybind11 strips release builds):

    tools/dev_build.sh build/prof -DCMAKE_BUILD_TYPE=RelWithDebInfo \\
        -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O3 -DNDEBUG -g"
    python tools/profile_decode.py /tmp/pygpt-bench/pygpt-124M-int4 --batch 8

Needs Linux perf. Timing, so run it on a quiet machine and read it as a share of the step.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import checkout  # noqa: E402


def worker(a: dict) -> list:
    """The profiled process: load, warm up, generate a["runs"] times; the new tokens of each
    sequence in the last run."""
    checkout.use_if_built()
    import numpy as np
    import pygpt

    model = pygpt.load(a["model"], n_threads=a["threads"], prefix_cache=0)  # every run computes its prompt
    prompts = [np.random.default_rng(10 + i).integers(0, model.config["vocab_size"] - 1, a["prompt"]).tolist()
               for i in range(a["batch"])]
    model.generate(prompts[0][:8], max_new_tokens=4, ignore_eos=True)
    for _ in range(a["runs"]):
        outs = model.generate(prompts, max_new_tokens=a["new"], ignore_eos=True)
    return [len(o.tokens) for o in outs]


def samples_by_symbol(report: str) -> dict:
    """{symbol: samples} from `perf report --stdio -n --sort symbol` output."""
    out = {}
    for line in report.splitlines():
        m = re.match(r"\s*[\d.]+%\s+(\d+)\s+\[[^\]]+\]\s+(.*?)(\s+-\s+-)?\s*$", line)
        if m:
            name = re.sub(r"pygpt::\w+::simd::|\(anonymous namespace\)::", "", m.group(2))
            out[name] = out.get(name, 0) + int(m.group(1))
    return out


def profile(a: dict, new: int, freq: int, tmp: str) -> dict:
    data = os.path.join(tmp, f"perf-{new}.data")
    cmd = ["perf", "record", "-F", str(freq), "-o", data, "--", sys.executable, os.path.abspath(__file__),
           "--worker", json.dumps(dict(a, new=new))]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    report = subprocess.run(["perf", "report", "-i", data, "--stdio", "-n", "--no-children", "--sort", "symbol"],
                            check=True, capture_output=True, text=True).stdout
    return samples_by_symbol(report)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", nargs="?", help="pygpt model folder")
    ap.add_argument("--batch", type=int, default=1, help="sequences decoded together")
    ap.add_argument("--prompt", type=int, default=128, help="prompt tokens of each sequence")
    ap.add_argument("--new", type=int, default=128, help="decode steps profiled per run")
    ap.add_argument("--runs", type=int, default=5, help="generate calls per process")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--freq", type=int, default=4000, help="perf samples per second and thread")
    ap.add_argument("--top", type=int, default=15, help="functions listed")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        worker(json.loads(args.worker))
        return 0
    if not args.model:
        ap.error("a model folder is needed")
    a = {"model": args.model, "batch": args.batch, "prompt": args.prompt, "runs": args.runs, "threads": args.threads}
    with tempfile.TemporaryDirectory() as tmp:
        base = profile(a, 1, args.freq, tmp)
        full = profile(a, args.new + 1, args.freq, tmp)
    per_step = 1e3 / (args.freq * args.threads * args.runs * args.new)
    diff = sorted(((n - base.get(k, 0)) * per_step, k) for k, n in full.items())[::-1]
    total = sum(full.values()) - sum(base.values())
    print(f"{args.model}: batch {args.batch}, {args.threads} threads, {args.runs} x {args.new} steps "
          f"after a {args.prompt}-token prompt: {total * per_step:.3f} ms a step")
    for ms, name in diff[:args.top]:
        print(f"{ms:8.3f} ms  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
