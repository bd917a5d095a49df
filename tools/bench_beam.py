"""Beam search speed, side by side: pygpt against transformers and CTranslate2 on the same
random gpt2-shaped model (made by tools/bench.py's make_models, in the same work folder).

One search: num_beams beams over a prompt of random token ids, exactly --new tokens (no end
token: every engine runs every step). Each engine runs in its own process; the processes
take turns, one search each, back to back, for --rounds rounds, so every round meets the
same host. Prints a markdown table: median seconds a search, the best sequence's new tokens a
second, the same against pygpt f32, and whether the best sequence equals transformers'.

    python tools/bench_beam.py --threads 2 --dtypes f32,int8
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402  (its models, prompts and worker environment)


def search_pygpt(a):
    import pygpt

    model = pygpt.load(a["path"], n_threads=a["threads"])

    def run(ids, n_new):
        out = model.generate(ids, num_beams=a["beams"], max_new_tokens=n_new, ignore_eos=True)
        return out.tokens

    return run


def search_transformers(a):
    import torch
    import transformers

    torch.set_num_threads(a["threads"])
    model = transformers.GPT2LMHeadModel.from_pretrained(a["path"], torch_dtype=torch.float32).eval()

    def run(ids, n_new):
        with torch.inference_mode():
            x = torch.tensor([ids])
            out = model.generate(x, attention_mask=torch.ones_like(x), num_beams=a["beams"], do_sample=False,
                                 max_new_tokens=n_new, eos_token_id=None, pad_token_id=0)
        return out[0, len(ids):].tolist()

    return run


def search_ctranslate2(a):
    import ctranslate2
    import transformers

    tok = transformers.GPT2TokenizerFast.from_pretrained(a["hf"])
    gen = ctranslate2.Generator(a["path"], device="cpu", compute_type=a["compute_type"],
                                intra_threads=a["threads"], inter_threads=1)

    def run(ids, n_new):
        r = gen.generate_batch([tok.convert_ids_to_tokens(ids)], beam_size=a["beams"], max_length=n_new,
                               min_length=n_new, include_prompt_in_result=False)
        return r[0].sequences_ids[0]

    return run


SEARCHES = {"pygpt": search_pygpt, "transformers": search_transformers, "ctranslate2": search_ctranslate2}


def worker(a: dict) -> None:
    """After "READY", one search per "run" line: "RUN seconds tokens"."""
    run = SEARCHES[a["engine"]](a)
    ids = bench.prompt_ids(a["prompt"])
    run(ids[:8], 2)  # warm up
    print("READY", flush=True)
    for line in sys.stdin:
        if line.strip() != "run":
            break
        t0 = time.perf_counter()
        tokens = run(ids, a["new"])
        print(f"RUN {time.perf_counter() - t0!r} {json.dumps(tokens)}", flush=True)


def in_turns(cases: list, rounds: int, script: str = __file__) -> list:
    """[(seconds, result) per round] for each case, the cases taking turns: a process a case,
    running `script --worker CASE` (worker()'s protocol: "READY", then "RUN seconds json" a
    "run" line)."""
    procs = [subprocess.Popen([sys.executable, os.path.abspath(script), "--worker", json.dumps(c)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                              env=bench.worker_env(c)) for c in cases]

    def expect(p, prefix):
        for line in p.stdout:
            if line.startswith(prefix):
                return line[len(prefix):].strip()
        raise RuntimeError(f"a worker exited before {prefix.strip()!r}")

    try:
        for p in procs:
            expect(p, "READY")
        results = [[] for _ in cases]
        for _ in range(rounds):
            for p, res in zip(procs, results):
                p.stdin.write("run\n")
                p.stdin.flush()
                seconds, tokens = expect(p, "RUN ").split(" ", 1)
                res.append((float(seconds), json.loads(tokens)))
        return results
    finally:
        for p in procs:
            p.stdin.close()
            p.wait(timeout=120)


def table(cases: list, results: list, args) -> str:
    """The markdown report of in_turns' results."""
    median = [statistics.median(s for s, _ in res) for res in results]
    reference = next((res[0][1] for c, res in zip(cases, results) if c["engine"] == "transformers"), None)
    base = next((m for c, m in zip(cases, median) if c["engine"] == "pygpt" and c["dtype"] == "f32"), None)
    lines = [f"{args.shape}, {args.threads} threads, num_beams {args.beams}, prompt {args.prompt}, {args.new} new "
             f"tokens, {args.rounds} rounds in turns, {time.strftime('%Y-%m-%d %H:%M')}", "",
             "| engine | weights | s a search: median (range) | new tok/s | pygpt f32 speed over it | "
             "best sequence = transformers' |",
             "|---|---|---|---|---|---|"]
    for c, res, m in zip(cases, results, median):
        tokens = res[0][1]
        if reference is None:
            same = "n/a"
        elif tokens == reference:
            same = "yes"
        else:
            first = next((i for i, (x, y) in enumerate(zip(tokens, reference)) if x != y), len(reference))
            same = f"no: the first {first} tokens"
        speedup = f"{m / base:.2f}x" if base else "n/a"
        lines.append(f"| {c['engine']} | {c['dtype']} | {m:.3f} ({min(s for s, _ in res):.3f}-"
                     f"{max(s for s, _ in res):.3f}) | {args.new / m:.1f} | {speedup} | {same} |")
    return "\n".join(lines)


def engine_arguments(ap, dtypes: str, peers: str, rounds: int) -> None:
    """The arguments every in-turns benchmark takes (this one and bench_embed.py)."""
    ap.add_argument("--workdir", default="/tmp/pygpt-bench", help="models (made here if missing; default: %(default)s)")
    ap.add_argument("--shape", default="124M", choices=sorted(bench.SHAPES))
    ap.add_argument("--dtypes", default=dtypes, help="pygpt weight types (default: %(default)s)")
    ap.add_argument("--peers", default=peers, help="default: %(default)s")
    ap.add_argument("--threads", type=int, default=2, help="default: %(default)s")
    ap.add_argument("--rounds", type=int, default=rounds, help="default: %(default)s")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    engine_arguments(ap, "f32,int8", "transformers,ctranslate2", 3)
    ap.add_argument("--beams", type=int, default=4, help="default: %(default)s")
    ap.add_argument("--prompt", type=int, default=128, help="prompt tokens (default: %(default)s)")
    ap.add_argument("--new", type=int, default=64, help="new tokens (default: %(default)s)")
    args = ap.parse_args(argv)
    if args.worker:
        worker(json.loads(args.worker))
        return 0

    peers = [p for p in args.peers.split(",") if p]
    dtypes = [d for d in args.dtypes.split(",") if d]
    paths = bench.make_models(args.workdir, args.shape, dtypes, "ctranslate2" in peers, log)
    common = dict(threads=args.threads, beams=args.beams, prompt=args.prompt, new=args.new, hf=paths["hf"])
    cases = [dict(common, engine="pygpt", dtype=d, path=paths[d]) for d in dtypes]
    if "transformers" in peers:
        cases.append(dict(common, engine="transformers", dtype="f32", path=paths["hf"]))
    if "ctranslate2" in peers:
        cases += [dict(common, engine="ctranslate2", dtype=q, path=paths["ct2-" + q], compute_type=q)
                  for q in ("float32", "int8")]
    log(f"{len(cases)} engines, {args.rounds} rounds in turns")
    results = in_turns(cases, args.rounds)

    print(table(cases, results, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
