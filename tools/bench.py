#!/usr/bin/env python
"""Speed of pygpt at every weight dtype next to transformers (torch), CTranslate2 and
llama.cpp (llama-cpp-python), on randomly initialised models with the exact gpt2 (124M) and
gpt2-medium (355M) shapes.

One run measures, per engine / dtype / thread count (batch 1): load time, prefill tokens/s
on a 128-token prompt, time to first token, decode tokens/s over 128 new tokens and peak RSS
(each case runs in its own process); at 124M every engine also batch-8 decode (--batch; pygpt
also batch 1 and batch 8 again in turns, for their ratio), and pygpt's and llama.cpp's decode
at matching dtypes in turns (--turns). It measures this machine's memory read bandwidth
(before and after every case, and for pygpt's and llama.cpp's decode also before and after
each run; arrays far larger than the caches) and peak f32 FMA rate, and prints each pygpt
figure as a share of its limit (llama.cpp's decode too):
  decode:  tokens/s / (bandwidth / bytes read per token)      (weights + the KV cache read)
  prefill: FLOPs per token * tokens/s / compute peak          (bf16: 2x, int8/int4: 4x the f32 peak,
                                                               the rates of vdpbf16ps / vpdpbusd)
Medians of --runs runs. Writes a markdown report (--update BENCHMARKS.md replaces the text
between the bench.py:speed markers), a JSON file and a chart of decode tokens/s per engine
and dtype with each dtype's bandwidth ceiling.

--quality SOURCE instead reports, for a trained model (anything pygpt.convert reads), the
perplexity of --text at each dtype and the mean KL divergence and top-1 agreement of each
dtype's next-token distribution against f32 (the "bench.py:quality" markers).

Needs: torch, transformers, matplotlib; ctranslate2 for its rows; llama-cpp-python and gguf
for llama.cpp's (pip install ".[bench]" installs them all; llama-cpp-python compiles
llama.cpp for this CPU, some minutes; a peer not installed is skipped; on a CPU with AMX its
0.3.36 build segfaults on q8_0 unless built without AMX: BENCHMARKS.md, "Kernel paths").
llama.cpp's models are written here from the same HF model with gguf's writer and tensor-name map (f32), then
quantized by llama.cpp itself (llama_model_quantize: f16, bf16, q8_0, q4_0, with its
default recipe for each).
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import platform
import resource
import signal
import statistics
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # also when loaded from a file by the tests
import checkout  # noqa: E402

ROOT = checkout.ROOT
checkout.use_if_built()  # and the workers likewise (run_case)
# importing pygpt sets OMP_WAIT_POLICY=passive for its own OpenMP: the peers' worker processes
# get the environment as it was before, so each engine runs with its own default
USER_OMP_WAIT_POLICY = os.environ.get("OMP_WAIT_POLICY")

SHAPES = {  # name: (n_layer, n_head, n_embd)
    "124M": (12, 12, 768),
    "355M": (24, 16, 1024),
    "12x64": (12, 4, 64),  # per-token overhead: arithmetic negligible, the 50257-row LM head stays
}
VOCAB, N_CTX = 50257, 1024
PYGPT_DTYPES = ["f32", "bf16", "f16", "int8", "int4"]
LLAMA_TYPES = ["f32", "f16", "bf16", "q8_0", "q4_0"]
LLAMA_MATCH = {"f32": "f32", "f16": "f16", "bf16": "bf16", "int8": "q8_0", "int4": "q4_0"}  # nearest to pygpt's
PEER_MODULES = {"transformers": ["transformers"], "ctranslate2": ["ctranslate2"], "llama.cpp": ["llama_cpp", "gguf"]}
QUANT_GROUP = {"int8": 0, "int4": 64}  # 0: one scale per output row
TOKENIZER_DIR = os.path.join(ROOT, "tests", "data", "gpt2-tokenizer")


# ----------------------------------------------------------------------------------------
# machine


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _probe_array(n_threads: int, mib: int) -> np.ndarray:
    """An array of `mib` MiB (far larger than L3), its pages faulted in by one read."""
    from pygpt import _core

    a = np.ones(mib * 2**20 // 4, np.float32)
    _core._probe_read_seconds(a, 1, n_threads, "")
    return a


def best_pass(a: np.ndarray, n_threads: int, reps: int = 3) -> float:
    """Bytes/s of the fastest of `reps` single passes over the array `a`."""
    from pygpt import _core

    return a.nbytes / min(_core._probe_read_seconds(a, 1, n_threads, "") for _ in range(reps))


def read_bandwidth(n_threads: int, mib: int = 512, reps: int = 3) -> float:
    """Bytes/s reading an array of `mib` MiB, best of `reps` single passes."""
    return best_pass(_probe_array(n_threads, mib), n_threads, reps)


def sustained_bandwidth(n_threads: int, mib: int = 512, passes: int = 40) -> float:
    """Bytes/s of one long read: `passes` passes over an array of `mib` MiB without a pause.
    Context for the decode rows, which read for seconds on end: single passes on a shared
    host spread widely, and the best of three (read_bandwidth, the issue's ceiling) picks
    the fast ones."""
    from pygpt import _core

    a = _probe_array(n_threads, mib)
    return passes * a.nbytes / _core._probe_read_seconds(a, passes, n_threads, "")


def best_rate(probe) -> float:
    """The best of 3 calls of probe() -> (seconds, operations), in operations per second."""
    return max(ops / seconds for seconds, ops in (probe() for _ in range(3)))


def fma_peak(n_threads: int, iters: int = 20_000_000) -> float:
    """f32 FLOP/s of independent FMA chains on n_threads threads, best of 3 (20M iterations:
    about 85 ms each at 2 threads; 2M: about 13 ms)."""
    from pygpt import _core

    return best_rate(lambda: _core._probe_fma(iters, n_threads, ""))


def tile_peak(n_threads: int, iters: int = 3_000_000, kind: str = "int8") -> float:
    """Operations per second of AMX tile products on n_threads threads, best of 3: int8
    (the amx path's int8 prompt kernels; about 120 ms each) or bf16 (its bf16 kernels; FLOPs,
    2 per multiply-add)."""
    from pygpt import _core

    return best_rate(lambda: _core._probe_tiles(iters, n_threads, kind))


def prefill_multiples(isa: str, fma: float, tiles: float | None, tiles_bf16: float | None = None) -> dict:
    """Each dtype's prefill peak as a multiple of the f32 FMA peak on that ISA: bf16 twice
    (vdpbf16ps), int8 and int4 four times (vpdpbusd: four products a lane); on the amx path
    int8 and bf16 the measured tile rates instead (int4's default groups of 64 stay on
    vpdpbusd)."""
    vnni = isa in ("avx512", "avx512bf16", "amx")
    mult = {"f32": 1, "f16": 1, "bf16": 2 if isa in ("avx512bf16", "amx") else 1,
            "int8": 4 if vnni else 1, "int4": 4 if vnni else 1}
    if isa == "amx" and tiles:
        mult["int8"] = tiles / fma
    if isa == "amx" and tiles_bf16:
        mult["bf16"] = tiles_bf16 / fma
    return mult


def peak_rss_mib() -> float:
    """This process's peak resident set (VmHWM: unlike ru_maxrss, not inherited across exec)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def idle_cpu_percent(seconds: float = 1.0) -> float:
    """CPU this process uses while the caller sleeps (OpenMP threads spinning after a call)."""
    c0, t0 = time.process_time(), time.perf_counter()
    time.sleep(seconds)
    return 100 * (time.process_time() - c0) / (time.perf_counter() - t0)


# ----------------------------------------------------------------------------------------
# models


def make_models(workdir: str, shape: str, dtypes, want_ct2: bool, log, llama_types=()) -> dict:
    """Random HF GPT-2 of this shape (seed 0) + its pygpt conversions + CTranslate2 and
    llama.cpp (GGUF, `llama_types`) ones."""
    import torch
    import transformers

    L, H, C = SHAPES[shape]
    hf_dir = os.path.join(workdir, f"hf-{shape}")
    if not os.path.isfile(os.path.join(hf_dir, "config.json")):
        log(f"creating random {shape} model in {hf_dir}")
        torch.manual_seed(0)
        cfg = transformers.GPT2Config(n_layer=L, n_head=H, n_embd=C, n_positions=N_CTX, vocab_size=VOCAB)
        transformers.GPT2LMHeadModel(cfg).eval().save_pretrained(hf_dir)
        with open(os.path.join(TOKENIZER_DIR, "vocab.json"), encoding="utf-8") as f:
            vocab = json.load(f)
        with open(os.path.join(TOKENIZER_DIR, "merges.txt"), encoding="utf-8") as f:
            merges = [tuple(ln.split()) for ln in f.read().splitlines()[1:] if ln]
        transformers.GPT2TokenizerFast(vocab=vocab, merges=merges).save_pretrained(hf_dir)
    paths = {"hf": hf_dir}
    from pygpt import convert

    for dt in dtypes:
        out = os.path.join(workdir, f"pygpt-{shape}-{dt}")
        if not os.path.isfile(os.path.join(out, "config.json")):
            log(f"converting {shape} to pygpt {dt}")
            convert_to(hf_dir, out, dt, TOKENIZER_DIR, fallback_group=C, log=log)
        paths[dt] = out
    if want_ct2:
        import ctranslate2.converters

        for q in ("float32", "int8"):
            out = os.path.join(workdir, f"ct2-{shape}-{q}")
            if not os.path.isfile(os.path.join(out, "model.bin")):
                log(f"converting {shape} to CTranslate2 {q}")
                ctranslate2.converters.TransformersConverter(hf_dir).convert(out, quantization=q, force=True)
            paths["ct2-" + q] = out
    if llama_types:
        f32 = os.path.join(workdir, f"gguf-{shape}-f32.gguf")
        if not os.path.isfile(f32):
            log(f"writing {shape} as GGUF f32")
            write_gguf(hf_dir, f32, tokenizer_dir=TOKENIZER_DIR)
        paths["llama.cpp-f32"] = f32
        for q in (q for q in llama_types if q != "f32"):
            out = os.path.join(workdir, f"gguf-{shape}-{q}.gguf")
            if not os.path.isfile(out):
                log(f"quantizing {shape} to GGUF {q} (llama.cpp)")
                llama_quantize(f32, out, q)
            paths["llama.cpp-" + q] = out
    return paths


def write_gguf(hf_dir: str, out: str, tokenizer_dir: str | None = None, matrix_type: str = "F32",
               head_type: str | None = None, chat_template: str | None = None, added_tokens=(),
               tokenizer_pre: str = "gpt-2") -> None:
    """The HF GPT-2 in `hf_dir` as a GGUF file llama.cpp loads (its "gpt2" architecture):
    gguf's tensor-name map gives the names; Conv1D weights (in, out) are stored as (out, in);
    the tied LM head is written as output.weight, as llama.cpp's converter does; the
    tokenizer is the byte-level BPE of `tokenizer_dir` (default `hf_dir`: vocab.json, merges.txt).
    Matrices are stored as f32 (tools/bench.py then runs llama.cpp's own quantizer), or as
    `matrix_type` (a GGMLQuantizationType name gguf's quantize writes: F16, BF16, Q8_0), the
    LM head as `head_type` (default: the same), for tests of pygpt's GGUF reading.
    `added_tokens`: (text, special) of a fine-tune's added tokens, after the vocabulary, as
    llama.cpp's converter writes them (CONTROL or USER_DEFINED, holding their text); the list is
    padded to the embedding's rows with UNUSED "[PAD<id>]" tokens, as it pads it.
    `tokenizer_pre`: the pre-tokenizer's name (tokenizer.ggml.pre)."""
    import gguf
    from safetensors.numpy import load_file

    with open(os.path.join(hf_dir, "config.json")) as f:
        cfg = json.load(f)
    tokenizer_dir = tokenizer_dir or hf_dir
    with open(os.path.join(tokenizer_dir, "vocab.json"), encoding="utf-8") as f:
        vocab = json.load(f)
    with open(os.path.join(tokenizer_dir, "merges.txt"), encoding="utf-8") as f:
        merges = [ln for ln in f.read().splitlines()[1:] if ln]
    tensors = load_file(os.path.join(hf_dir, "model.safetensors"))
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.GPT2, cfg["n_layer"])
    w = gguf.GGUFWriter(out, "gpt2")
    w.add_context_length(cfg["n_positions"])
    w.add_embedding_length(cfg["n_embd"])
    w.add_feed_forward_length(cfg.get("n_inner") or 4 * cfg["n_embd"])
    w.add_block_count(cfg["n_layer"])
    w.add_head_count(cfg["n_head"])
    w.add_layer_norm_eps(cfg["layer_norm_epsilon"])
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    tokens = sorted(vocab, key=vocab.get)
    if [vocab[t] for t in tokens] != list(range(len(tokens))):
        raise ValueError(f"{tokenizer_dir}/vocab.json: ids are not 0..{len(tokens) - 1}")
    eos = vocab.get("<|endoftext|>", len(tokens) - 1)
    types = [gguf.TokenType.CONTROL if i == eos else gguf.TokenType.NORMAL for i in range(len(tokens))]
    for text, special in added_tokens:
        tokens.append(text)
        types.append(gguf.TokenType.CONTROL if special else gguf.TokenType.USER_DEFINED)
    rows = cfg["vocab_size"]
    types += [gguf.TokenType.UNUSED] * (rows - len(tokens))
    tokens += [f"[PAD{i}]" for i in range(len(tokens), rows)]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(tokenizer_pre)
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(eos)
    w.add_eos_token_id(eos)
    if chat_template is not None:
        w.add_chat_template(chat_template)

    def add(name, t, kind):
        qtype = gguf.GGMLQuantizationType[kind]
        if t.ndim != 2 or qtype == gguf.GGMLQuantizationType.F32 or name == "position_embd.weight":
            w.add_tensor(name, t)
        else:
            w.add_tensor(name, gguf.quants.quantize(t, qtype), raw_dtype=qtype)

    conv1d = (".attn.c_attn.weight", ".attn.c_proj.weight", ".mlp.c_fc.weight", ".mlp.c_proj.weight")
    for name, t in tensors.items():
        if name.endswith((".attn.bias", ".attn.masked_bias")):  # causal-mask buffers of old checkpoints
            continue
        new = names.get_name(name, try_suffixes=(".weight", ".bias"))
        if new is None:
            raise ValueError(f"{hf_dir}: no GGUF name for tensor {name}")
        t = np.ascontiguousarray(t.T if name.endswith(conv1d) else t, dtype=np.float32)
        add(new, t, matrix_type)
        if new == "token_embd.weight" and "lm_head.weight" not in tensors:
            add("output.weight", t, head_type or matrix_type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


LLAMA_FTYPES = {"f16": "LLAMA_FTYPE_MOSTLY_F16", "bf16": "LLAMA_FTYPE_MOSTLY_BF16",
                "q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0", "q4_0": "LLAMA_FTYPE_MOSTLY_Q4_0"}


def llama_quantize(src: str, out: str, qtype: str) -> None:
    """llama.cpp's own quantizer (what its llama-quantize tool runs), with its defaults. Its
    line per tensor, written by C to fd 2, goes to /dev/null."""
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, LLAMA_FTYPES[qtype])
    params.nthread = os.cpu_count() or 1
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with open(os.devnull, "w") as null:
        os.dup2(null.fileno(), 1)
        os.dup2(null.fileno(), 2)
    try:
        rc = llama_cpp.llama_model_quantize(src.encode(), out.encode(), params)
    finally:
        for fd, old in zip((1, 2), saved):
            os.dup2(old, fd)
            os.close(old)
    if rc != 0:
        raise RuntimeError(f"llama_model_quantize {src} -> {qtype} failed ({rc})")


def convert_to(src, out, dt, tokenizer, fallback_group, log):
    """pygpt.convert with this benchmark's group sizes (int8 per row, int4 64)."""
    from pygpt import convert

    try:
        convert.convert(src, out, dtype=dt, tokenizer=tokenizer, group_size=QUANT_GROUP.get(dt, 0))
    except ValueError as e:  # a converter that does not take group 0 (per row)
        if QUANT_GROUP.get(dt) != 0:
            raise
        log(f"per-row int8 refused ({e}); using groups of {fallback_group}")
        convert.convert(src, out, dtype=dt, tokenizer=tokenizer, group_size=fallback_group)


def weight_bytes_per_token(model_dir: str) -> int:
    """Bytes of weights one decode step reads: everything but the position embedding, and the
    token embedding where the LM head is a matrix of its own (one row of each is read)."""
    from pygpt import _format

    tensors = _format.read_safetensors_header(os.path.join(model_dir, "model.safetensors"))
    untied = any(t[0] == "lm_head.weight" for t in tensors)
    rows_only = {"wpe.weight", "wte.weight", "wte.weight_scales"} if untied else {"wpe.weight"}
    return sum(end - begin for name, _dtype, _shape, begin, end in tensors if name not in rows_only)


def kv_bytes_per_token(shape: str, prompt: int, new: int, kv_cache: str = "f32") -> float:
    """Mean bytes of keys and values one decode step reads over the decode run."""
    L, H, C = SHAPES[shape]
    mean_pos = prompt + (new - 1) / 2
    per_value = {"f32": 4, "f16": 2, "int8": 1 + 4 / (C // H)}[kv_cache]  # int8: an f32 scale per head
    return L * 2 * C * per_value * mean_pos


def gguf_weight_bytes_per_token(path: str) -> int:
    """The same for a GGUF file: everything but the two embeddings, of which a step reads one
    row each (output.weight, the LM head, is read whole)."""
    import gguf

    return sum(int(t.n_bytes) for t in gguf.GGUFReader(path).tensors
               if t.name not in ("token_embd.weight", "position_embd.weight"))


def decode_pct_per_run(probed_runs: list, bytes_per_token: float) -> float:
    """Median over [tok/s, bandwidth before, bandwidth after] runs of each run's decode as a
    share (%) of its own ceiling: the higher of its two probes / bytes per token."""
    return statistics.median(100 * tok_s * bytes_per_token / max(bw0, bw1) for tok_s, bw0, bw1 in probed_runs)


def prefill_pct_per_run(probed_runs: list, flops_per_token: float, mult: float) -> float:
    """Median over [tok/s, FMA peak before, FMA peak after] runs of each run's prefill as a
    share (%) of the higher of its two probes (times `mult`: bf16 2, int8/int4 4)."""
    return statistics.median(100 * tok_s * flops_per_token / (mult * max(p0, p1)) for tok_s, p0, p1 in probed_runs)


def probed_runs_summary(runs: list, tok_fmt: str, unit: str) -> str:
    """'(median tok/s, probes lo-hi unit)' of [tok/s, probe before, probe after] runs (probes
    in bytes/s or FLOP/s, printed in G)."""
    return (f"({statistics.median(p[0] for p in runs):{tok_fmt}} tok/s, probes "
            f"{min(min(p[1:]) for p in runs) / 1e9:.0f}-{max(max(p[1:]) for p in runs) / 1e9:.0f} {unit})")


def flops_per_prompt_token(shape: str, prompt: int) -> float:
    """Multiply-adds x 2 per prompt token: the linear layers, attention over the mean
    causal span, the LM head for the last position only (as run)."""
    L, _, C = SHAPES[shape]
    linear = L * (3 * C * C + C * C + 4 * C * C + 4 * C * C)
    attention = L * 2 * C * (prompt + 1) / 2
    lm_head = VOCAB * C / prompt
    return 2 * (linear + attention + lm_head)


# ----------------------------------------------------------------------------------------
# workers: one case per process (peak RSS is per process)


def cpu_share(c0: float, w0: float, threads: int) -> float:
    """CPU time this process got since (c0, w0) over what `threads` busy threads would use:
    well below 1 means the machine was busy with other work (or the engine idled)."""
    return (time.process_time() - c0) / max((time.perf_counter() - w0) * threads, 1e-9)


def prompt_ids(n: int, seed: int = 1) -> list:
    return np.random.default_rng(seed).integers(0, VOCAB - 1, n).tolist()


def batch_prompts(a: dict) -> list:
    """The a["batch"] prompts of a batched decode (none without one), the same for every engine."""
    return [prompt_ids(a["prompt"], seed=10 + i) for i in range(a.get("batch") or 0)]


def case_result(loads, pre, dec, ttft, c0, w0, threads: int) -> dict:
    """A worker's batch-1 figures: medians of its load times, prefill and decode tok/s and
    times to the first token, its CPU share since (c0, w0) and its peak RSS so far."""
    return {"load_s": statistics.median(loads), "prefill_tok_s": statistics.median(pre),
            "decode_tok_s": statistics.median(dec), "ttft_s": statistics.median(ttft),
            "cpu_share": cpu_share(c0, w0, threads), "peak_rss_mib": peak_rss_mib()}


def subtracted_decode(run, n_seqs: int, n_new: int) -> tuple:
    """(seconds to the first new token, tok/s of the n_new tokens after it over n_seqs
    sequences) of an engine whose call generates all its tokens at once: run(k) is the
    seconds of one call that generates k tokens per sequence."""
    first = run(1)
    return first, n_seqs * n_new / max(run(n_new + 1) - first, 1e-9)


def subtracted_batch_decode(run, n_seqs: int, a: dict) -> float:
    """Median tok/s over a["runs"] of subtracted_decode for a batch of n_seqs, after a
    warm-up call at the batch's shape."""
    run(2)
    return statistics.median(subtracted_decode(run, n_seqs, a["new"])[1] for _ in range(a["runs"]))


def between_probes(run, probe, runs: int) -> list:
    """[result, probe before, probe after] of `runs` calls of run, each between two calls of
    probe."""
    out = []
    for _ in range(runs):
        before = probe()
        result = run()
        out.append([result, before, probe()])
    return out


def fma_probe(threads: int) -> float:
    """A short probe of the f32 FMA rate the threads get (best of 3 x 13 ms at 2 threads).
    On this shared host it moves by the second between about one core's and two cores'
    worth (BENCHMARKS.md, session 14), so a compute-bound run's share of the peak measured
    once at the start says as much about the host as about the code."""
    return fma_peak(threads, 2_000_000)


def probed_decode_runs(decode_run, threads: int, runs: int) -> list:
    """[tok/s, bandwidth before, bandwidth after] of `runs` calls of decode_run, each between
    two probes of the read bandwidth a few hundred ms away (the parent's probes are a minute
    apart, around the whole case, on a host whose bandwidth moves by the second)."""
    probe = _probe_array(threads, 512)
    return between_probes(decode_run, lambda: best_pass(probe, threads), runs)


def probed_prefill_runs(prefill_run, threads: int, runs: int) -> list:
    """[tok/s, FMA rate before, FMA rate after] of `runs` calls of prefill_run (fma_probe)."""
    return between_probes(prefill_run, lambda: fma_probe(threads), runs)


def worker_pygpt(a: dict) -> dict:
    import pygpt

    loads, model = [], None
    for _ in range(3):
        if model is not None:
            model.close()  # one model at a time: two would count their mapped weights twice in the RSS
        t0 = time.perf_counter()
        # prefix_cache=0: every run computes its whole prompt (the same prompt each run)
        model = pygpt.load(a["path"], n_threads=a["threads"], prefix_cache=0)
        loads.append(time.perf_counter() - t0)
    ids = prompt_ids(a["prompt"])
    model.generate(ids[:8], max_new_tokens=4, ignore_eos=True)  # warm-up: fault the weights in

    def decode_run():  # tok/s of one batch-1 decode
        return model.generate(ids, max_new_tokens=a["new"], ignore_eos=True).timings.decode_tokens_per_s

    if a.get("turns"):
        return serve_turns(decode_run)
    pre, dec, ttft = [], [], []
    c0, w0 = time.process_time(), time.perf_counter()
    for _ in range(a["runs"]):
        t = model.generate(ids, max_new_tokens=a["new"], ignore_eos=True).timings
        pre.append(t.prefill_tokens_per_s)
        dec.append(t.decode_tokens_per_s)
        ttft.append(t.time_to_first_token)
    # batch 1, as the table's other columns (the peak RSS not batch 8's caches)
    out = dict(case_result(loads, pre, dec, ttft, c0, w0, a["threads"]), kv_cache=model.kv_cache)
    prompts = batch_prompts(a)
    if prompts:
        bt, pairs = [], []
        for _ in range(a["runs"]):
            outs = model.generate(prompts, max_new_tokens=a["new"], ignore_eos=True)
            bt.append(outs[0].timings.decode_tokens_per_s)
        out["batch_decode_tok_s"] = statistics.median(bt)
        # batch 1 and batch 8 again in turns, so that each pair meets the same host (batch 1 is
        # bound by the bandwidth, which moves by the second; batch 8 by arithmetic, so the
        # f32 FMA rate the threads get is probed right before and after each batch-8 run)
        def batch_run():
            return model.generate(prompts, max_new_tokens=a["new"], ignore_eos=True)[0].timings.decode_tokens_per_s

        fma = []
        for _ in range(a["runs"]):
            one = decode_run()
            (eight, f0, f1), = between_probes(batch_run, lambda: fma_probe(a["threads"]), 1)
            pairs.append([one, eight])
            fma.append([f0, f1])
        out["batch_pairs"], out["batch_pair_fma"] = pairs, fma
    model.generate(ids[:8], max_new_tokens=2, ignore_eos=True)
    out["idle_cpu_pct_after_call"] = idle_cpu_percent()
    if a.get("probe_runs"):  # after the peak RSS: the probe's array is not pygpt's
        out["probed_runs"] = probed_decode_runs(decode_run, a["threads"], a["runs"])
        out["probed_prefill_runs"] = probed_prefill_runs(
            lambda: model.generate(ids, max_new_tokens=1, ignore_eos=True).timings.prefill_tokens_per_s,
            a["threads"], a["runs"])
    if prompts:
        # the same with another KV cache (f32 weights: f16; bf16/f16 weights: int8; int8/int4
        # weights, whose default is int8: f16), batch 1 and batch 8: 8 sequences read 8
        # caches per step
        alt_kv = {"f32": "f16", "f16": "int8", "int8": "f16"}[model.kv_cache]
        model.close()
        model = pygpt.load(a["path"], n_threads=a["threads"], kv_cache=alt_kv, prefix_cache=0)
        model.generate(ids[:8], max_new_tokens=4, ignore_eos=True)
        d2, b2 = [], []
        for _ in range(a["runs"]):
            d2.append(model.generate(ids, max_new_tokens=a["new"], ignore_eos=True).timings.decode_tokens_per_s)
            b2.append(model.generate(prompts, max_new_tokens=a["new"], ignore_eos=True)[0].timings.decode_tokens_per_s)
        out["alt_kv"] = alt_kv
        out["decode_altkv_tok_s"] = statistics.median(d2)
        out["batch_decode_altkv_tok_s"] = statistics.median(b2)
    model.close()
    return out


def worker_transformers(a: dict) -> dict:
    import torch
    import transformers

    torch.set_num_threads(a["threads"])
    loads = []
    for _ in range(3):
        model = None  # one model at a time (the RSS is one model's)
        t0 = time.perf_counter()
        model = transformers.GPT2LMHeadModel.from_pretrained(a["path"], torch_dtype=torch.float32).eval()
        loads.append(time.perf_counter() - t0)
    ids = torch.tensor([prompt_ids(a["prompt"])])
    kw = dict(do_sample=False, pad_token_id=0, eos_token_id=None)

    def run(batch, n_new):  # seconds of one greedy generate of n_new tokens per sequence
        t0 = time.perf_counter()
        model.generate(batch, attention_mask=torch.ones_like(batch), max_new_tokens=n_new, min_new_tokens=n_new, **kw)
        return time.perf_counter() - t0

    pre, dec, ttft = [], [], []
    with torch.inference_mode():
        run(ids[:, :8], 4)
        c0, w0 = time.process_time(), time.perf_counter()
        for _ in range(a["runs"]):
            t0 = time.perf_counter()
            model(ids, use_cache=True)
            pre.append(a["prompt"] / (time.perf_counter() - t0))
            first, tok_s = subtracted_decode(lambda n: run(ids, n), 1, a["new"])
            ttft.append(first)
            dec.append(tok_s)
        out = case_result(loads, pre, dec, ttft, c0, w0, a["threads"])
        prompts = batch_prompts(a)
        if prompts:  # equal lengths: no padding
            batch = torch.tensor(prompts)
            out["batch_decode_tok_s"] = subtracted_batch_decode(lambda n: run(batch, n), len(prompts), a)
    return out


def worker_ct2(a: dict) -> dict:
    import ctranslate2
    import transformers

    tok = transformers.GPT2TokenizerFast.from_pretrained(a["hf"])
    loads = []
    for _ in range(3):
        gen = None  # one model at a time (the RSS is one model's)
        t0 = time.perf_counter()
        gen = ctranslate2.Generator(a["path"], device="cpu", compute_type=a["compute_type"],
                                    intra_threads=a["threads"], inter_threads=1)
        loads.append(time.perf_counter() - t0)
    tokens = tok.convert_ids_to_tokens(prompt_ids(a["prompt"]))

    def run(batch, n_new):  # seconds of one greedy generate_batch of n_new tokens per sequence
        t0 = time.perf_counter()
        gen.generate_batch(batch, max_length=n_new, min_length=n_new, sampling_topk=1,
                           include_prompt_in_result=False)
        return time.perf_counter() - t0

    run([tokens], 4)
    pre, dec, ttft = [], [], []
    c0, w0 = time.process_time(), time.perf_counter()
    for _ in range(a["runs"]):
        t0 = time.perf_counter()
        gen.forward_batch([tokens])  # prefill only: logits of every position
        pre.append(a["prompt"] / (time.perf_counter() - t0))
        first, tok_s = subtracted_decode(lambda n: run([tokens], n), 1, a["new"])
        ttft.append(first)
        dec.append(tok_s)
    out = case_result(loads, pre, dec, ttft, c0, w0, a["threads"])
    prompts = [tok.convert_ids_to_tokens(p) for p in batch_prompts(a)]
    if prompts:
        out["batch_decode_tok_s"] = subtracted_batch_decode(lambda n: run(prompts, n), len(prompts), a)
    return out


def worker_llamacpp(a: dict) -> dict:
    """llama.cpp through llama-cpp-python, as a Python app calls it: Llama.eval for the prompt,
    Llama.generate (llama.cpp's sampler chain, greedy) for new tokens. Flash attention on, as
    llama.cpp's own tools have it on a CPU ("auto"; the Llama class defaults it off): its
    q4_0 decode ran 7-18% faster so, f32 the same."""
    import llama_cpp

    loads = []
    for _ in range(3):
        llm = None  # one model at a time (the RSS is one model's)
        t0 = time.perf_counter()
        llm = llama_cpp.Llama(model_path=a["path"], n_ctx=N_CTX, n_batch=512, n_threads=a["threads"],
                              n_threads_batch=a["threads"], flash_attn=True, verbose=False)
        loads.append(time.perf_counter() - t0)
    ids = prompt_ids(a["prompt"])

    def run(n_new):
        llm.reset()  # no reuse of the previous run's cache for the same prompt
        t0 = time.perf_counter()
        for i, _ in enumerate(llm.generate(ids, top_k=1, temp=0.0, reset=True)):
            if i + 1 == n_new:
                break
        return time.perf_counter() - t0

    def decode():  # (seconds to the first new token, tok/s over the a["new"] after it)
        return subtracted_decode(run, 1, a["new"])

    run(4)
    if a.get("turns"):
        return serve_turns(lambda: decode()[1])
    pre, dec, ttft = [], [], []
    c0, w0 = time.process_time(), time.perf_counter()
    for _ in range(a["runs"]):
        llm.reset()
        t0 = time.perf_counter()
        llm.eval(ids)  # prefill only: logits of the last position
        pre.append(a["prompt"] / (time.perf_counter() - t0))
        first, tok_s = decode()
        ttft.append(first)
        dec.append(tok_s)
    out = dict(case_result(loads, pre, dec, ttft, c0, w0, a["threads"]), kv_cache="f16")
    if a.get("probe_runs"):  # as pygpt's (llama.cpp reads as many bytes a step)
        out["probed_runs"] = probed_decode_runs(lambda: decode()[1], a["threads"], a["runs"])
    prompts = batch_prompts(a)
    if prompts:
        with LlamaBatch(llm, prompts) as batch:
            batch.run(2)  # warm-up
            out["batch_decode_tok_s"] = statistics.median(batch.run(a["new"])[1] for _ in range(a["runs"]))
    return out


class LlamaBatch:
    """Batched greedy decoding with llama.cpp's C API (llama-cpp-python's Llama object decodes
    one sequence), as its `batched` example does: one context holding a KV sequence per
    prompt, all prompts in one llama_decode, then each step one llama_decode of one token per
    sequence and the argmax of each sequence's logits."""

    def __init__(self, llm, prompts: list):
        import llama_cpp

        self.lib, self.prompts = llama_cpp, prompts
        # llm's context settings (threads, flash attention, KV cache types), for more sequences
        params = type(llm.context_params).from_buffer_copy(llm.context_params)
        params.n_seq_max = len(prompts)
        params.n_ctx = len(prompts) * N_CTX  # each sequence its own N_CTX positions
        params.n_batch = max(512, sum(len(p) for p in prompts))
        self.ctx = llama_cpp.llama_init_from_model(llm.model, params)
        if not self.ctx:
            raise RuntimeError("llama.cpp: no context for a batch")
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(llama_cpp.llama_model_get_vocab(llm.model))
        self.batch = llama_cpp.llama_batch_init(params.n_batch, 0, 1)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.lib.llama_batch_free(self.batch)
        self.lib.llama_free(self.ctx)

    def _decode(self, entries) -> list:
        """One llama_decode of (token, position, sequence, wants logits) entries; the greedy
        next token of each entry that wants logits."""
        b = self.batch
        for i, (tok, pos, seq, logits) in enumerate(entries):
            b.token[i], b.pos[i], b.n_seq_id[i], b.logits[i] = tok, pos, 1, logits
            b.seq_id[i][0] = seq
        b.n_tokens = len(entries)
        if self.lib.llama_decode(self.ctx, b) != 0:
            raise RuntimeError("llama.cpp: llama_decode failed")
        return [int(np.ctypeslib.as_array(self.lib.llama_get_logits_ith(self.ctx, i), (self.n_vocab,)).argmax())
                for i, e in enumerate(entries) if e[3]]

    def run(self, n_new: int) -> tuple:
        """(the greedy tokens of each prompt, tok/s of the n_new tokens after each one's first)."""
        self.lib.llama_memory_clear(self.lib.llama_get_memory(self.ctx), True)
        last = self._decode([(tok, pos, s, pos == len(p) - 1)
                             for s, p in enumerate(self.prompts) for pos, tok in enumerate(p)])
        out = [[t] for t in last]
        t0 = time.perf_counter()
        for step in range(n_new):
            last = self._decode([(out[s][-1], len(p) + step, s, True) for s, p in enumerate(self.prompts)])
            for s, t in enumerate(last):
                out[s].append(t)
        return out, len(self.prompts) * n_new / max(time.perf_counter() - t0, 1e-9)


def serve_turns(decode_run) -> dict:
    """Turns mode (see in_turns): after "READY", one decode run (tok/s) per "run" line read."""
    print("READY", flush=True)
    for line in sys.stdin:
        if line.strip() != "run":
            break
        print(f"TOKS {decode_run()!r}", flush=True)
    return {}


def in_turns(a: dict, b: dict, n: int, timeout: float = 1800) -> list:
    """Decode runs of two cases in turns, [tok/s of a, tok/s of b] n times: both workers load
    and warm up, then run one at a time, back to back (the idle one sleeps: pygpt's OpenMP is
    passive), so each pair meets the same host. On a host whose bandwidth moves by the second
    this compares two bandwidth-bound engines more fairly than two cases a minute apart."""
    procs = [subprocess.Popen([sys.executable, os.path.abspath(__file__), "--worker",
                               json.dumps(dict(args, turns=True))], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True, env=worker_env(args)) for args in (a, b)]
    deadline = time.monotonic() + timeout

    def expect(p, prefix):
        while time.monotonic() < deadline:
            line = p.stdout.readline()
            if not line:
                raise RuntimeError(f"turns worker exited (waiting for {prefix})")
            if line.startswith(prefix):
                return line[len(prefix):].strip()
        raise TimeoutError("turns worker")

    try:
        for p in procs:
            expect(p, "READY")
        pairs = []
        for _ in range(n):
            pair = []
            for p in procs:
                p.stdin.write("run\n")
                p.stdin.flush()
                pair.append(float(expect(p, "TOKS ")))
            pairs.append(pair)
        return pairs
    finally:
        for p in procs:
            try:
                p.stdin.close()
            except OSError:
                pass
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()


WORKERS = {"pygpt": worker_pygpt, "transformers": worker_transformers, "ctranslate2": worker_ct2,
           "llama.cpp": worker_llamacpp}


def drop_page_cache(path: str) -> None:
    """Drops a model file (or every file of a model folder) from the page cache, so every
    case starts from the state convert.py leaves a pygpt model in, and peers start cold too.
    pygpt then reads its weights into 2 MiB pages (docs/DESIGN.md, "Memory"); the medians of
    three loads hide the cold first one."""
    files = [path] if os.path.isfile(path) else [os.path.join(path, f) for f in os.listdir(path)]
    for f in files:
        if os.path.isfile(f):
            with open(f, "rb") as fh:
                os.posix_fadvise(fh.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)


def worker_env(args: dict) -> dict:
    """A worker process's environment: the checkout's pygpt, the case's thread count, and for
    peers the OpenMP wait policy as it was before pygpt's import changed it."""
    env = dict(os.environ)
    if checkout.BUILT:
        env["PYTHONPATH"] = ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = str(args["threads"])
    if args["engine"] != "pygpt":
        env.pop("OMP_WAIT_POLICY", None)
        if USER_OMP_WAIT_POLICY is not None:
            env["OMP_WAIT_POLICY"] = USER_OMP_WAIT_POLICY
    return env


def signal_name(n: int) -> str:
    """Signal n's name: SIGSEGV for 11, "signal 40" for one without a name (real-time)."""
    try:
        return signal.Signals(n).name
    except ValueError:
        return f"signal {n}"


def run_case(args: dict, timeout: float = 1800) -> dict:
    """Runs one worker in a fresh process; returns its result, or {"error": ...}: the signal
    that killed it (llama-cpp-python 0.3.36 segfaults on q8_0 on an Intel Xeon with AMX),
    else the last line it wrote to stderr."""
    p = subprocess.run([sys.executable, os.path.abspath(__file__), "--worker", json.dumps(args)],
                       capture_output=True, text=True, timeout=timeout, env=worker_env(args))
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
    if p.returncode < 0:
        return {"error": f"worker died with {signal_name(-p.returncode)}"}
    if p.returncode != 0 or not lines:
        return {"error": (p.stderr.strip().splitlines() or ["no output"])[-1]}
    return json.loads(lines[-1][len("RESULT "):])


# ----------------------------------------------------------------------------------------
# report


def fmt(v, spec=".0f", suffix=""):
    return "n/a" if v is None else f"{v:{spec}}{suffix}"


def speed_markdown(meta: dict, rows: list, chart: str | None) -> str:
    nb = meta.get("batch", 8)  # JSON of runs before the key: 8
    out = [f"Run of `tools/bench.py` on {meta['date']}: {meta['cpu']}, {meta['cores']} cores, "
           f"pygpt ISA {meta['isa']}; prompt {meta['prompt']} tokens, {meta['new']} new tokens, "
           f"batch 1, greedy, medians of {meta['runs']} runs. Random weights with the exact model shapes.",
           "",
           "Machine limits measured in this run: read bandwidth "
           + ", ".join(f"{t} thread{'s' if t > 1 else ''} {bw / 1e9:.1f} GB/s" for t, bw in meta["bandwidth"].items())
           + " (at the start; each decode row uses the higher of the probes right before and after it); "
           + "f32 FMA peak " + ", ".join(f"{t} thr {p / 1e9:.0f} GFLOP/s" for t, p in meta["fma_peak"].items())
           + ("; AMX int8 tile peak " + ", ".join(f"{t} thr {p / 1e9:.0f} GOP/s" for t, p in meta["tile_peak"].items())
              + " (int8 prefill's % peak is of it)" if meta.get("tile_peak") else "")
           + ("; AMX bf16 tile peak " + ", ".join(f"{t} thr {p / 1e9:.0f} GFLOP/s"
                                                  for t, p in meta["tile_peak_bf16"].items())
              + " (bf16 prefill's % peak is of it)" if meta.get("tile_peak_bf16") else "") + ".",
           ""]
    for shape in meta["shapes"]:
        out += [f"### {shape} (n_layer {SHAPES[shape][0]}, n_embd {SHAPES[shape][2]})", "",
                "| engine | weights | threads | load s | prefill tok/s | % peak | TTFT ms | decode tok/s "
                f"| % BW ceiling | ceiling tok/s | batch-{nb} decode tok/s | other KV: decode / batch-{nb} tok/s "
                "| peak RSS MiB | CPU share |",
                "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        # pygpt rows: the weights' dtype and, in brackets, the KV cache the default ("auto") gave them
        for r in rows:
            if r["shape"] != shape:
                continue
            if "error" in r:
                out.append(f"| {r['engine']} | {r['dtype']} | {r['threads']} | error: {r['error'][:80]} |"
                           " | | | | | | | | | |")
                continue
            altkv = (f"{r['alt_kv']}: {r['decode_altkv_tok_s']:.1f} / {r['batch_decode_altkv_tok_s']:.0f}"
                     if r.get("batch_decode_altkv_tok_s") else "n/a")
            dtype = r["dtype"] + (f" ({r['kv_cache']} KV)" if r.get("kv_cache") else "")
            out.append("| {engine} | {dtype} | {threads} | {load} | {pre} | {pp} | {ttft} | {dec} | {dp} | {ceil} | "
                       "{b8} | {altkv} | {rss} | {share} |".format(altkv=altkv,
                           engine=r["engine"], dtype=dtype, threads=r["threads"], load=fmt(r["load_s"], ".2f"),
                           pre=fmt(r["prefill_tok_s"]), pp=fmt(r.get("prefill_pct"), ".0f", "%"),
                           ttft=fmt(r["ttft_s"] * 1e3, ".0f"), dec=fmt(r["decode_tok_s"], ".1f"),
                           dp=fmt(r.get("decode_pct"), ".0f", "%"), ceil=fmt(r.get("ceiling_tok_s"), ".0f"),
                           b8=fmt(r.get("batch_decode_tok_s"), ".0f"), rss=fmt(r["peak_rss_mib"], ".0f"),
                           share=fmt(100 * r["cpu_share"] if r.get("cpu_share") is not None else None, ".0f", "%")))
        if shape == "12x64":
            out.append("")
            out.append("Per-token overhead (decode step, ms): " + ", ".join(
                f"{r['engine']} {r['dtype']} {r['threads']} thr {1e3 / r['decode_tok_s']:.2f}"
                for r in rows if r["shape"] == shape and "error" not in r))
        per_run_lines = [  # (head, share key, runs key, engine named, tok/s format, probe unit)
            ("Decode with the bandwidth probed right before and after each run (pygpt's and llama.cpp's "
             f"workers decode {meta['runs']} more times; median of each run's tok/s against the higher of "
             "its own two probes): ", "decode_pct_per_run", "probed_runs", True, ".1f", "GB/s"),
            ("pygpt prefill with the f32 FMA rate probed right before and after each run (the worker "
             f"runs the prompt {meta['runs']} more times; median of each run's share of the higher "
             "of its own two probes, times 2 for bf16 and 4 for int8 and int4"
             + (", int8 times the tile peak over the FMA peak" if meta.get("tile_peak") else "")
             + (", bf16 times the bf16 tile peak over it" if meta.get("tile_peak_bf16") else "") + "): ",
             "prefill_pct_per_run",
             "probed_prefill_runs", False, ".0f", "GFLOP/s"),
        ]
        for head, pct, runs, named, tok_fmt, unit in per_run_lines:
            probed = [r for r in rows if r["shape"] == shape and r.get(pct) is not None]
            if probed:
                out.append("")
                out.append(head + ", ".join((f"{r['engine']} " if named else "")
                                            + f"{r['dtype']} {r['threads']} thr {r[pct]:.0f}% "
                                            + probed_runs_summary(r[runs], tok_fmt, unit) for r in probed))
        sus = [r for r in rows if r["shape"] == shape and r.get("decode_pct_sustained") is not None]
        if sus:
            out.append("")
            out.append("pygpt decode against a sustained read (40 passes over 512 MiB right after the case, "
                       "instead of the best single pass of the ceiling): " + ", ".join(
                           f"{r['dtype']} {r['threads']} thr {r['decode_pct_sustained']:.0f}% of "
                           f"{r['bw_sustained'] / 1e9:.1f} GB/s" for r in sus))
        idle = [r for r in rows if r["shape"] == shape and r.get("idle_cpu_pct_after_call") is not None]
        if idle:
            out.append("")
            out.append("pygpt CPU use in the second after a call returns (OpenMP threads idle): " + ", ".join(
                f"{r['dtype']} {r['threads']} thr {r['idle_cpu_pct_after_call']:.1f}%" for r in idle))
        out.append("")
        ratios = ratio_lines(rows, shape, max(meta["threads"]), meta.get("turns", ()), nb)
        if ratios:
            out += ratios + [""]
    if chart:
        out += [f"![decode tokens/s per engine and dtype]({chart})", ""]
    return "\n".join(out)


def ratio_lines(rows, shape, threads, turns=(), nb=8) -> list:
    def get(engine, dtype):
        for r in rows:
            if r["shape"] == shape and r["engine"] == engine and r["dtype"] == dtype and r["threads"] == threads \
                    and "error" not in r:
                return r
        return None

    lines = []
    pairs = [("f32", "transformers", "f32"), ("f32", "ctranslate2", "f32"), ("int8", "ctranslate2", "int8"),
             ("bf16", "transformers", "f32"), ("int4", "ctranslate2", "int8")]
    pairs += [(mine, "llama.cpp", theirs) for mine, theirs in LLAMA_MATCH.items()]
    for mine, engine, theirs in pairs:
        a, b = get("pygpt", mine), get(engine, theirs)
        if a and b:
            line = (f"- {shape}, {threads} threads: pygpt {mine} / {engine} {theirs}: decode "
                    f"{a['decode_tok_s'] / b['decode_tok_s']:.2f}x, prefill {a['prefill_tok_s'] / b['prefill_tok_s']:.2f}x")
            if a.get("batch_decode_tok_s") and b.get("batch_decode_tok_s"):
                line += f", batch-{nb} decode {a['batch_decode_tok_s'] / b['batch_decode_tok_s']:.2f}x"
            lines.append(line)
    for t in turns:
        if t["shape"] != shape or t["threads"] != threads:
            continue
        head = f"- {shape}, {threads} threads: pygpt {t['mine']} / {t['engine']} {t['theirs']}"
        if t.get("pairs"):
            lines.append(f"{head} decode, runs in turns: {statistics.median(x / y for x, y in t['pairs']):.2f}x ("
                         + ", ".join(f"{x:.1f} / {y:.1f}" for x, y in t["pairs"]) + " tok/s)")
        else:
            lines.append(f"{head} in turns: error: {t.get('error', '?')[:80]}")
    b1 = [r for r in rows if r["shape"] == shape and r.get("batch_decode_tok_s") and r["threads"] == threads]
    for r in b1:
        line = (f"- {shape}, {threads} threads, {r['engine']} {r['dtype']}: batch-{nb} decode throughput "
                f"{r['batch_decode_tok_s'] / r['decode_tok_s']:.1f}x batch 1")
        if r.get("batch_pairs"):
            line += (f" (runs in turns: {statistics.median(b8 / b1 for b1, b8 in r['batch_pairs']):.1f}x, "
                     + ", ".join(f"{b8:.0f} / {b1:.0f}" for b1, b8 in r["batch_pairs"]) + " tok/s"
                     + ("; FMA probes around the batch-8 runs " + ", ".join(
                         f"{f0 / 1e9:.0f}-{f1 / 1e9:.0f}" for f0, f1 in r["batch_pair_fma"]) + " GFLOP/s"
                        if r.get("batch_pair_fma") else "") + ")")
        if r.get("batch_decode_altkv_tok_s"):
            line += (f"; with the {r['alt_kv']} KV cache {r['batch_decode_altkv_tok_s'] / r['decode_altkv_tok_s']:.1f}x"
                     f" ({r['decode_altkv_tok_s']:.0f} / {r['batch_decode_altkv_tok_s']:.0f} tok/s)")
        lines.append(line)
    return lines


def draw_chart(rows, meta, shape, threads, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sel = [r for r in rows if r["shape"] == shape and r["threads"] == threads and "error" not in r]
    if not sel:
        return None
    fig, ax = plt.subplots(figsize=(max(9.0, 0.85 * len(sel)), 4.5))
    colors = {"pygpt": "#1f77b4", "transformers": "#ff7f0e", "ctranslate2": "#2ca02c", "llama.cpp": "#d62728"}
    labels = [f"{r['engine']}\n{r['dtype']}" for r in sel]
    xs = np.arange(len(sel))
    ax.bar(xs, [r["decode_tok_s"] for r in sel], color=[colors[r["engine"]] for r in sel])
    for x, r in zip(xs, sel):
        if r.get("ceiling_tok_s"):
            ax.hlines(r["ceiling_tok_s"], x - 0.45, x + 0.45, colors="black", linestyles="dashed")
            ax.text(x, r["ceiling_tok_s"], f"{r['ceiling_tok_s']:.0f}", ha="center", va="bottom", fontsize=7)
    ax.set_xticks(xs, labels, fontsize=7)
    ax.set_ylabel("decode tokens/s (batch 1)")
    ax.set_title(f"GPT-2 {shape}, {threads} threads, {meta['date'][:10]}: bars = measured, "
                 "dashed = memory-bandwidth ceiling of that dtype", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def replace_section(md_path: str, marker: str, text: str) -> None:
    begin, end = f"<!-- bench.py:{marker}:begin -->", f"<!-- bench.py:{marker}:end -->"
    with open(md_path) as f:
        doc = f.read()
    if begin not in doc or end not in doc:
        raise SystemExit(f"{md_path}: markers {begin} / {end} not found")
    head, rest = doc.split(begin, 1)
    _, tail = rest.split(end, 1)
    with open(md_path, "w") as f:
        f.write(head + begin + "\n" + text.rstrip() + "\n" + end + tail)


# ----------------------------------------------------------------------------------------
# quality


def quality(args, log) -> str:
    import pygpt
    from pygpt import convert, perplexity, quantize

    with open(args.text, encoding="utf-8") as f:
        text = f.read()
    rows, ref = [], {}

    def measure(label, m, size):
        ids = m.tokenizer.encode(text)
        n_ctx = m.config["n_ctx"]
        ppl = perplexity.perplexity(m, ids, progress=False)
        wins = [ids[i:i + n_ctx] for i in range(0, min(len(ids), 4 * n_ctx), n_ctx)]  # first 4 windows
        window = sum(wins, [])
        lg = np.concatenate([m.logits(w) for w in wins]).astype(np.float64)
        ref_logits = ref.setdefault("logits", lg)
        p = np.exp(ref_logits - ref_logits.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        logq = lg - lg.max(1, keepdims=True)
        logq -= np.log(np.exp(logq).sum(1, keepdims=True))
        kl = max(0.0, float((p * (np.log(p) - logq)).sum(1).mean()))
        top1 = float((lg.argmax(1) == ref_logits.argmax(1)).mean())
        rows.append((label, ppl, kl, top1, float(np.abs(lg - ref_logits).max()), size, len(ids), len(window)))
        log(f"{label}: ppl {ppl:.3f} KL {kl:.2e} top1 {top1:.4f}")

    for dt in args.dtypes:
        out = os.path.join(args.workdir, f"quality-{dt}")
        if not os.path.isfile(os.path.join(out, "config.json")):
            log(f"converting {args.quality} to {dt}")
            convert_to(args.quality, out, dt, args.tokenizer, fallback_group=64, log=log)
        m = pygpt.load(out)
        group = m.config.get("quant_group_size")
        size = os.path.getsize(os.path.join(out, "model.safetensors"))
        label = dt if group is None else f"{dt} (group {group or 'row'})"
        measure(label + ("" if m.kv_cache == "f32" else f", {m.kv_cache} KV cache"), m, size)
        if dt == "f32":  # the same weights with keys and values stored as f16, then int8
            measure("f32, f16 KV cache", pygpt.load(out, kv_cache="f16"), size)
            measure("f32, int8 KV cache", pygpt.load(out, kv_cache="int8"), size)
        if dt in ("int8", "int4"):  # against the f16 cache (their default is int8)
            measure(label + ", f16 KV cache", pygpt.load(out, kv_cache="f16"), size)
        n_embd = m.config["n_embd"]
        if dt in ("int8", "int4") and all(quantize.group_fits(n, 32) for n in (n_embd, 4 * n_embd)):
            out32 = out + "-g32"  # llama.cpp's block size
            if not os.path.isfile(os.path.join(out32, "config.json")):
                log(f"converting {args.quality} to {dt} in groups of 32")
                convert.convert(args.quality, out32, dtype=dt, tokenizer=args.tokenizer, group_size=32)
            m32 = pygpt.load(out32)
            measure(f"{dt} (group 32), {m32.kv_cache} KV cache", m32,
                    os.path.getsize(os.path.join(out32, "model.safetensors")))
    base = rows[0][1]
    n_layer, n_embd = m.config["n_layer"], m.config["n_embd"]
    lines = [f"Trained model `{os.path.basename(os.path.normpath(args.quality))}` "
             f"({n_layer} layers, n_embd {n_embd}), "
             f"text `{os.path.basename(args.text)}` ({rows[0][6]} tokens), run of `tools/bench.py --quality` on "
             f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC. Perplexity over the whole text "
             f"(disjoint windows of n_ctx); KL(f32 || dtype), top-1 agreement and max |logit difference| over the "
             f"first {rows[0][7]} positions.", "",
             "| weights | file MB | perplexity | vs f32 | mean KL vs f32 (nats) | top-1 agreement | max abs logit diff |",
             "|---|---|---|---|---|---|---|"]
    for dt, ppl, kl, top1, maxdiff, size, _, _ in rows:
        lines.append(f"| {dt} | {size / 1e6:.1f} | {ppl:.3f} | {100 * (ppl / base - 1):+.2f}% | {kl:.2e} | "
                     f"{100 * top1:.2f}% | {maxdiff:.3f} |")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default="124M,355M,12x64",
                    help="model shapes (comma-separated): 124M, 355M, 12x64 (per-token overhead)")
    ap.add_argument("--threads", default="1,2", help="thread counts (comma-separated)")
    ap.add_argument("--large-threads", default=None,
                    help="thread counts for the 355M shape (default: --threads), to bound the run time")
    ap.add_argument("--dtypes", default=",".join(PYGPT_DTYPES), help="pygpt weight dtypes")
    ap.add_argument("--peers", default="transformers,ctranslate2,llama.cpp",
                    help="peer engines ('' for none; one not installed is skipped with a message)")
    ap.add_argument("--llama-types", default=",".join(LLAMA_TYPES), help="llama.cpp weight types")
    ap.add_argument("--turns", type=int, default=3,
                    help="decode runs of pygpt and llama.cpp in turns at each matching dtype (most threads; 0: none)")
    ap.add_argument("--prompt", type=int, default=128, help="prompt tokens")
    ap.add_argument("--new", type=int, default=128, help="new tokens to decode")
    ap.add_argument("--runs", type=int, default=3, help="runs per case (medians)")
    ap.add_argument("--batch", type=int, default=8,
                    help="batched-decode size (124M shape, most threads; 0: none)")
    ap.add_argument("--workdir", default="/tmp/pygpt-bench", help="where models are created and converted")
    ap.add_argument("--json", default=None, help="write all figures to this JSON file")
    ap.add_argument("--chart", default=os.path.join(ROOT, "docs", "bench-decode.png"), help="chart PNG path")
    ap.add_argument("--update", default=None, help="markdown file whose bench.py section to replace")
    ap.add_argument("--quality", default=None, help="trained model source: run the quality report instead")
    ap.add_argument("--tokenizer", default=None, help="--quality: tokenizer folder of that model")
    ap.add_argument("--text", default=os.path.join(ROOT, "tests", "data", "corpus", "eval-areopagitica.txt"),
                    help="--quality: evaluation text")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.worker:
        a = json.loads(args.worker)
        print("RESULT " + json.dumps(WORKERS[a["engine"]](a)), flush=True)
        return 0

    def log(msg):
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    os.makedirs(args.workdir, exist_ok=True)
    args.dtypes = [d for d in args.dtypes.split(",") if d]
    if args.quality:
        md = quality(args, log)
        print(md)
        if args.update:
            replace_section(args.update, "quality", md)
        return 0

    import pygpt

    shapes = [s for s in args.shapes.split(",") if s]
    threads = [int(t) for t in args.threads.split(",") if t]
    peers = []
    for p in (p for p in args.peers.split(",") if p):
        if p not in PEER_MODULES:
            raise SystemExit(f"--peers: unknown engine {p!r} (known: {', '.join(PEER_MODULES)})")
        missing = [m for m in PEER_MODULES[p] if importlib.util.find_spec(m) is None]
        if missing:
            log(f"skipping {p}: {', '.join(missing)} not installed")
        else:
            peers.append(p)
    llama_types = [q for q in args.llama_types.split(",") if q] if "llama.cpp" in peers else []
    info = pygpt.system_info()
    meta = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "cpu": cpu_name(),
            "cores": info["physical_cores"], "isa": info["isa"], "prompt": args.prompt, "new": args.new,
            "runs": args.runs, "batch": args.batch, "shapes": shapes, "threads": threads,
            "bandwidth": {t: read_bandwidth(t) for t in threads}, "fma_peak": {}, "turns": []}
    all_threads = sorted(set(threads) | {int(t) for t in (args.large_threads or "").split(",") if t})
    meta["fma_peak"] = {t: fma_peak(t) for t in all_threads}
    if info["isa"] == "amx":
        meta["tile_peak"] = {t: tile_peak(t) for t in all_threads}
        meta["tile_peak_bf16"] = {t: tile_peak(t, kind="bf16") for t in all_threads}
    log(f"bandwidth {meta['bandwidth']}, FMA peak {meta['fma_peak']}, tile peaks {meta.get('tile_peak')}, "
        f"bf16 {meta.get('tile_peak_bf16')}")
    mults = {t: prefill_multiples(info["isa"], meta["fma_peak"][t], meta.get("tile_peak", {}).get(t),
                                  meta.get("tile_peak_bf16", {}).get(t))
             for t in all_threads}
    rows = []
    for shape in shapes:
        shape_llama = llama_types if shape != "12x64" else [q for q in llama_types if q == "f32"]
        paths = make_models(args.workdir, shape, args.dtypes if shape != "12x64" else ["f32"], "ctranslate2" in peers,
                            log, shape_llama)
        cases = [("pygpt", dt, paths[dt]) for dt in (args.dtypes if shape != "12x64" else ["f32"])]
        if "transformers" in peers:
            cases.append(("transformers", "f32", paths["hf"]))
        if "ctranslate2" in peers:
            cases += [("ctranslate2", "f32", paths["ct2-float32"]), ("ctranslate2", "int8", paths["ct2-int8"])]
        cases += [("llama.cpp", q, paths["llama.cpp-" + q]) for q in shape_llama]
        shape_threads = threads
        if shape == "355M" and args.large_threads:
            shape_threads = [int(t) for t in args.large_threads.split(",") if t]
        for t in shape_threads:
            for engine, dt, path in cases:
                a = {"engine": engine, "path": path, "threads": t, "prompt": args.prompt, "new": args.new,
                     "runs": args.runs, "hf": paths["hf"], "compute_type": "int8" if dt == "int8" else "float32"}
                a["probe_runs"] = shape != "12x64"  # its weights sit in the caches: no bandwidth ceiling
                if t == max(threads) and shape == "124M":
                    a["batch"] = args.batch
                bw_before = read_bandwidth(t)
                log(f"{shape} {engine} {dt} {t} threads ...")
                drop_page_cache(path)
                r = run_case(a)
                bw_after = read_bandwidth(t)
                r.update(engine=engine, dtype=dt, threads=t, shape=shape, bw=max(bw_before, bw_after))
                if engine in ("pygpt", "llama.cpp") and "error" not in r:
                    weights = weight_bytes_per_token(path) if engine == "pygpt" else gguf_weight_bytes_per_token(path)
                    per_tok = weights + kv_bytes_per_token(shape, args.prompt, args.new, r["kv_cache"])
                    r["bytes_per_token"] = per_tok
                    r["ceiling_tok_s"] = r["bw"] / per_tok
                    r["decode_pct"] = 100 * r["decode_tok_s"] / r["ceiling_tok_s"]
                    if r.get("probed_runs"):
                        r["decode_pct_per_run"] = decode_pct_per_run(r["probed_runs"], per_tok)
                if engine == "pygpt" and "error" not in r:
                    r["bw_sustained"] = sustained_bandwidth(t)
                    r["decode_pct_sustained"] = 100 * r["decode_tok_s"] * per_tok / r["bw_sustained"]
                    peak = meta["fma_peak"][t] * mults[t][dt]
                    flops = flops_per_prompt_token(shape, args.prompt)
                    r["prefill_pct"] = 100 * r["prefill_tok_s"] * flops / peak
                    if r.get("probed_prefill_runs"):
                        r["prefill_pct_per_run"] = prefill_pct_per_run(r["probed_prefill_runs"], flops,
                                                                       mults[t][dt])
                log(f"  -> {json.dumps({k: v for k, v in r.items() if k not in ('engine', 'shape')})}")
                rows.append(r)
        if args.turns and shape != "12x64":
            t = max(shape_threads)
            for mine, theirs in LLAMA_MATCH.items():
                if mine not in args.dtypes or theirs not in shape_llama:
                    continue
                log(f"{shape} pygpt {mine} and llama.cpp {theirs}, {t} threads, in turns ...")
                case = {"threads": t, "prompt": args.prompt, "new": args.new}
                entry = {"shape": shape, "threads": t, "mine": mine, "engine": "llama.cpp", "theirs": theirs}
                try:
                    entry["pairs"] = in_turns(dict(case, engine="pygpt", path=paths[mine]),
                                              dict(case, engine="llama.cpp", path=paths["llama.cpp-" + theirs]),
                                              args.turns)
                except (RuntimeError, TimeoutError, OSError) as e:
                    entry["error"] = str(e)
                log(f"  -> {entry}")
                meta["turns"].append(entry)
    chart = None
    if args.chart:
        os.makedirs(os.path.dirname(os.path.abspath(args.chart)), exist_ok=True)
        chart = draw_chart(rows, meta, shapes[0], max(threads), args.chart)
    rel_chart = os.path.relpath(chart, os.path.dirname(os.path.abspath(args.update))) if (chart and args.update) else chart
    md = speed_markdown(meta, rows, rel_chart)
    print(md)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=1)
    if args.update:
        replace_section(args.update, "speed", md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
