"""Decode speed with LoRA adapters applied at load time (pygpt.load's lora=) against the same
model without them.

Greedy decode of --new tokens after a --prompt-token prompt (random ids), the model with each
adapter and without one, all loaded in this one process; the models take turns, one run
each, for --rounds rounds, so every round meets the same host. Prints the median decode
tokens/s of each and its ratio to the base model's (and the prefill's, for the record).

The adapters are random peft-format LoRA folders written here (safetensors under the names
peft saves, adapter_config.json): --adapters r8:c_attn,r16:all makes one of rank 8 on every
c_attn and one of rank 16 on every linear layer (c_attn, c_proj, c_fc); rN:lm_head one on
the LM head. Their values do not change the speed. peft and torch are not needed.

    python tools/bench_lora.py -m /tmp/pygpt-bench/pygpt-124M-int8 --threads 2 --rounds 7
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile

import numpy as np

TARGETS = {"c_attn": ["attn.c_attn"], "all": ["attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"],
           "lm_head": ["lm_head"]}


def write_adapter(folder: str, config: dict, rank: int, target: str, seed: int = 0) -> str:
    """A random LoRA of rank `rank` on the `target` layers of every block, as peft saves it."""
    from safetensors.numpy import save_file

    from pygpt.lora import linear_shapes

    rng = np.random.default_rng(seed)
    tensors = {}
    layers = {f"transformer.{name}": shape for name, shape in linear_shapes(config).items()}
    layers["lm_head"] = (config["vocab_size"], config["n_embd"])
    for name, (n_out, n_in) in layers.items():
        if not any(name.endswith(t) for t in TARGETS[target]):
            continue
        key = f"base_model.model.{name}"
        tensors[f"{key}.lora_A.weight"] = (rng.standard_normal((rank, n_in)) / np.sqrt(n_in)).astype(np.float32)
        tensors[f"{key}.lora_B.weight"] = (rng.standard_normal((n_out, rank)) * 0.01).astype(np.float32)
    os.makedirs(folder, exist_ok=True)
    save_file(tensors, os.path.join(folder, "adapter_model.safetensors"))
    modules = sorted({t.split(".")[-1] for t in TARGETS[target]})
    with open(os.path.join(folder, "adapter_config.json"), "w") as f:
        json.dump({"peft_type": "LORA", "r": rank, "lora_alpha": 2 * rank, "target_modules": modules}, f)
    return folder


def adapter_spec(text: str) -> list:
    """"r8:c_attn,r16:all" -> [(8, "c_attn"), (16, "all")] (an argparse type)."""
    specs = []
    for item in text.split(","):
        rank, _, target = item.partition(":")
        if not rank.startswith("r") or not rank[1:].isdigit() or int(rank[1:]) < 1 or target not in TARGETS:
            raise argparse.ArgumentTypeError(f"expected rN:c_attn, rN:all or rN:lm_head items, got {item!r}")
        specs.append((int(rank[1:]), target))
    return specs


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-m", "--model", required=True, metavar="DIR", help="pygpt model folder")
    p.add_argument("--adapters", type=adapter_spec, default=adapter_spec("r8:c_attn,r16:all"),
                   help="rank and layers of each adapter measured (default: r8:c_attn,r16:all)")
    p.add_argument("--threads", type=int, default=None, help="threads (default: physical cores)")
    p.add_argument("--prompt", type=int, default=128, help="prompt tokens (default: %(default)s)")
    p.add_argument("--new", type=int, default=128, help="tokens decoded (default: %(default)s)")
    p.add_argument("--rounds", type=int, default=5, help="runs of each model, in turns (default: %(default)s)")
    args = p.parse_args(argv)

    import pygpt

    base = pygpt.load(args.model, n_threads=args.threads, prefix_cache=0)  # every run computes its prompt
    models = {"base": base}
    with tempfile.TemporaryDirectory() as work:
        for i, (rank, target) in enumerate(args.adapters):
            folder = write_adapter(os.path.join(work, f"r{rank}-{target}"), base.config, rank, target, seed=i)
            models[f"r{rank} {target}"] = pygpt.load(args.model, n_threads=args.threads, lora=folder,
                                                       prefix_cache=0)
    for m in models.values():
        m.generation_config = {}  # greedy: not the folder's sampling
    prompt = np.random.default_rng(0).integers(0, base.config["vocab_size"], args.prompt).tolist()
    decode = {name: [] for name in models}
    prefill = {name: [] for name in models}
    for round_ in range(args.rounds + 1):  # round 0 warms up
        for name, m in models.items():
            t = m.generate(prompt, max_new_tokens=args.new, ignore_eos=True).timings
            if round_:
                decode[name].append(t.decode_tokens_per_s)
                prefill[name].append(t.prefill_tokens_per_s)
    c = base.config
    print(f"{os.path.basename(os.path.normpath(args.model))}: {c['dtype']}, n_layer {c['n_layer']}, n_embd "
          f"{c['n_embd']}; isa {base.isa}, {base.n_threads} threads; prompt {args.prompt}, {args.new} new tokens; "
          f"median of {args.rounds} rounds")
    print("| adapter | A, B MiB | decode tok/s | vs base | prefill tok/s | vs base |")
    print("|---|---|---|---|---|---|")
    base_dec, base_pre = statistics.median(decode["base"]), statistics.median(prefill["base"])
    for name, m in models.items():
        dec, pre = statistics.median(decode[name]), statistics.median(prefill[name])
        dec_text = f"{dec:.1f} | {dec / base_dec:.3f}" if base_dec else "n/a | n/a"  # --new 1: no decode step
        print(f"| {name} | {m._core.lora_bytes / 2 ** 20:.2f} | {dec_text} | {pre:.0f} | {pre / base_pre:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
