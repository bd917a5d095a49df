"""tools/bench.py's pygpt worker and report: the KV-cache bytes it counts in each ceiling, the
"other KV" measurement beside each batch row, and the table and ratio lines it renders."""

import importlib.util
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import hostile_files as hf
import pygpt
from pygpt import _core

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# llama-cpp-python is a benchmark peer, not a test dependency (it compiles llama.cpp); its
# calls run in a child process (in_child), so the parent never imports it
needs_llama_cpp = pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None,
                                     reason="llama-cpp-python is not installed")


@pytest.fixture(scope="module")
def bench(load_tool):
    return load_tool("bench")


def in_child(bench, code: str, what: str, **inputs):
    """Runs `code` in a fresh Python process, with tools/bench.py imported as `bench`, the
    keyword `inputs` as the dict `a` and `result(value)` to hand back a JSON value; returns
    that value. A child that a signal kills, or that exits with an error, fails the calling
    test with a message naming `what` and the signal (named by the parent's `bench`:
    signal_name) or exit status: a peer that crashes (llama-cpp-python 0.3.36 segfaults on
    q8_0 on an Intel Xeon with AMX) fails one test instead of killing pytest."""
    prelude = textwrap.dedent(f"""\
        import json, sys
        sys.path.insert(0, {os.path.join(ROOT, "tools")!r})
        import bench
        a = json.loads(sys.argv[1])
        def result(value):
            print("RESULT " + json.dumps(value), flush=True)
        """)
    p = subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code), json.dumps(inputs)],
                       capture_output=True, text=True, timeout=600)
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
    if p.returncode < 0:
        failure = f"died with {bench.signal_name(-p.returncode)}"
    elif p.returncode > 0:
        failure = f"exited with status {p.returncode}"
    elif not lines:
        failure = "handed back no result"
    else:
        return json.loads(lines[-1][len("RESULT "):])
    pytest.fail(f"{what} {failure}\n{p.stderr[-2000:]}")


def test_in_child_returns_the_childs_result_and_a_crash_fails_the_test_naming_the_signal(bench):
    """The isolation the llama.cpp tests run under: the child's JSON result comes back (here a
    value of tools/bench.py, imported as the child snippets import it); a child killed by
    SIGSEGV, or one that raises, is a test failure naming what died and how."""
    assert in_child(bench, "result(bench.LLAMA_FTYPES[a['q']])", "bench", q="q8_0") == "LLAMA_FTYPE_MOSTLY_Q8_0"
    with pytest.raises(pytest.fail.Exception, match="^llama.cpp on q8_0 died with SIGSEGV"):
        in_child(bench, "import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)", "llama.cpp on q8_0")
    with pytest.raises(pytest.fail.Exception, match="^llama.cpp on bf16 died with signal 40\n"):  # a real-time one
        in_child(bench, "import os\nos.kill(os.getpid(), 40)", "llama.cpp on bf16")
    with pytest.raises(pytest.fail.Exception, match="(?s)^llama.cpp on f16 exited with status 1\n.*ValueError: no"):
        in_child(bench, "raise ValueError('no')", "llama.cpp on f16")


def test_kv_bytes_per_token(bench):
    L, H, C = bench.SHAPES["124M"]
    mean_pos = 128 + (128 - 1) / 2
    assert bench.kv_bytes_per_token("124M", 128, 128, "f32") == L * 2 * C * 4 * mean_pos
    assert bench.kv_bytes_per_token("124M", 128, 128, "f16") == L * 2 * C * 2 * mean_pos
    # int8: one byte per value plus an f32 scale per head of C / H values
    assert bench.kv_bytes_per_token("124M", 128, 128, "int8") == pytest.approx(L * 2 * C * (1 + 4 / 64) * mean_pos)


@pytest.mark.parametrize("dtype,kv,alt", [("f32", "f32", "f16"), ("int8", "int8", "f16")])
def test_worker_measures_the_other_kv_cache_and_the_table_shows_it(bench, hf_model_factory, tmp_path, dtype, kv,
                                                                   alt):
    import pygpt.convert

    _, hf_dir, f32_dir = hf_model_factory("tiny")
    path = f32_dir
    if dtype != "f32":
        path = str(tmp_path / dtype)
        pygpt.convert.convert(hf_dir, path, dtype=dtype)
    r = bench.worker_pygpt({"path": path, "threads": 1, "prompt": 8, "new": 4, "runs": 1, "batch": 2,
                            "probe_runs": True})
    assert r["kv_cache"] == kv and r["alt_kv"] == alt
    assert r["decode_tok_s"] > 0 and r["batch_decode_tok_s"] > 0
    assert r["decode_altkv_tok_s"] > 0 and r["batch_decode_altkv_tok_s"] > 0
    r.update(engine="pygpt", dtype=dtype, threads=1, shape="124M")
    meta = {"date": "today", "cpu": "cpu", "cores": 2, "isa": "avx2", "prompt": 8, "new": 4, "runs": 1,
            "shapes": ["124M"], "threads": [1], "bandwidth": {1: 1e10}, "fma_peak": {1: 1e11}}
    md = bench.speed_markdown(meta, [r], None)
    row = [line for line in md.splitlines() if line.startswith("| pygpt")][0]
    assert f"| {dtype} ({kv} KV) |" in row
    assert f"| {alt}: {r['decode_altkv_tok_s']:.1f} / {r['batch_decode_altkv_tok_s']:.0f} |" in row
    assert f"with the {alt} KV cache" in md
    # batch 1 and batch 8 again in turns: the median ratio of the pairs, then the pairs
    (b1, b8), = r["batch_pairs"]
    (f0, f1), = r["batch_pair_fma"]
    assert f0 > 0 and f1 > 0
    assert (f"(runs in turns: {b8 / b1:.1f}x, {b8:.0f} / {b1:.0f} tok/s; FMA probes around the batch-8 runs "
            f"{f0 / 1e9:.0f}-{f1 / 1e9:.0f} GFLOP/s)") in md
    # decode again between bandwidth probes, one run each: the line under the table
    assert len(r["probed_runs"]) == 1 and all(x > 0 for x in r["probed_runs"][0])
    r["decode_pct_per_run"] = bench.decode_pct_per_run(r["probed_runs"], 1e6)
    assert f"{dtype} 1 thr {r['decode_pct_per_run']:.0f}% (" in bench.speed_markdown(meta, [r], None)
    # the prompt again between FMA probes, one run each: its own line
    assert len(r["probed_prefill_runs"]) == 1 and all(x > 0 for x in r["probed_prefill_runs"][0])
    r["prefill_pct_per_run"] = bench.prefill_pct_per_run(r["probed_prefill_runs"], 1e6, 4 if dtype == "int8" else 1)
    tok_s = r["probed_prefill_runs"][0][0]
    line = [x for x in bench.speed_markdown(meta, [r], None).splitlines() if x.startswith("pygpt prefill with")][0]
    assert f"{dtype} 1 thr {r['prefill_pct_per_run']:.0f}% ({tok_s:.0f} tok/s, probes " in line


def test_prefill_multiples_per_isa_and_the_amx_tile_peak(bench):
    """Each dtype's prefill peak as a multiple of the f32 FMA peak: bf16 2x with AVX512-BF16,
    int8/int4 4x with VNNI, and on the amx path int8 the measured tile rate; the table's
    header names the tile peak when there is one."""
    assert bench.prefill_multiples("avx2", 1e11, None) == {"f32": 1, "f16": 1, "bf16": 1, "int8": 1, "int4": 1}
    assert bench.prefill_multiples("avx512", 1e11, None) == {"f32": 1, "f16": 1, "bf16": 1, "int8": 4, "int4": 4}
    assert bench.prefill_multiples("avx512bf16", 1e11, None)["bf16"] == 2
    amx = bench.prefill_multiples("amx", 1e11, 3e12)
    assert amx["int8"] == pytest.approx(30.0) and amx["int4"] == 4 and amx["bf16"] == 2
    amx = bench.prefill_multiples("amx", 1e11, 3e12, 1.5e12)
    assert amx["int8"] == pytest.approx(30.0) and amx["bf16"] == pytest.approx(15.0) and amx["f32"] == 1
    assert bench.prefill_multiples("avx512bf16", 1e11, None, 1.5e12)["bf16"] == 2  # tiles on the amx path only
    meta = {"date": "today", "cpu": "cpu", "cores": 2, "isa": "amx", "prompt": 8, "new": 4, "runs": 1,
            "shapes": ["124M"], "threads": [1, 2], "bandwidth": {1: 1e10, 2: 2e10}, "fma_peak": {1: 1e11, 2: 2e11},
            "tile_peak": {1: 3e12, 2: 5e12}}
    md = bench.speed_markdown(meta, [], None)
    assert "; AMX int8 tile peak 1 thr 3000 GOP/s, 2 thr 5000 GOP/s (int8 prefill's % peak is of it)." in md
    assert "tile peak" not in bench.speed_markdown(dict(meta, tile_peak=None), [], None)
    md = bench.speed_markdown(dict(meta, tile_peak_bf16={1: 1.5e12, 2: 2.5e12}), [], None)
    assert ("(int8 prefill's % peak is of it); AMX bf16 tile peak 1 thr 1500 GFLOP/s, 2 thr 2500 GFLOP/s "
            "(bf16 prefill's % peak is of it).") in md


@pytest.mark.skipif(not pygpt.system_info()["cpu_amx"], reason="no AMX on this CPU")
def test_tile_peak_probe_runs_where_the_cpu_has_amx(bench):
    """The AMX probes (four chains of int8 or bf16 tile products per thread) report positive
    rates; bf16's is about half int8's (16 x 16 x 32 products an instruction against 64)."""
    int8, bf16 = bench.tile_peak(1, iters=20_000), bench.tile_peak(1, iters=20_000, kind="bf16")
    assert int8 > 0 and bf16 > 0
    with pytest.raises(ValueError, match="kind must be 'int8' or 'bf16'"):
        _core._probe_tiles(10, 1, "f16")


@pytest.mark.skipif(pygpt.system_info()["cpu_amx"], reason="this CPU has AMX")
def test_tile_probe_without_amx_is_a_clear_error():
    with pytest.raises(ValueError, match="no amx path"):
        _core._probe_tiles(10, 1)
    with pytest.raises(ValueError, match="no amx path"):
        _core._probe_tiles(10, 1, "bf16")


def test_decode_pct_per_run_takes_each_runs_higher_probe(bench):
    runs = [[100.0, 10e9, 20e9], [50.0, 10e9, 5e9], [80.0, 8e9, 8e9]]
    # 100 tok/s * 100 MB = 10 GB/s of 20: 50%; 5 of 10: 50%; 8 of 8: 100%
    assert bench.decode_pct_per_run(runs, 100e6) == pytest.approx(50.0)
    assert bench.decode_pct_per_run(runs[2:], 100e6) == pytest.approx(100.0)


def test_prefill_pct_per_run_takes_each_runs_higher_probe_times_the_dtypes_rate(bench):
    runs = [[100.0, 1e11, 2e11], [50.0, 1e11, 0.5e11], [80.0, 0.8e11, 0.8e11]]
    # 100 tok/s * 1 GFLOP = 100 GFLOP/s of 200: 50%; 50 of 100: 50%; 80 of 80: 100%
    assert bench.prefill_pct_per_run(runs, 1e9, 1) == pytest.approx(50.0)
    assert bench.prefill_pct_per_run(runs[2:], 1e9, 1) == pytest.approx(100.0)
    assert bench.prefill_pct_per_run(runs[2:], 1e9, 4) == pytest.approx(25.0)  # int8: 4x the f32 rate


def test_worker_peak_rss_is_one_models(bench, tmp_path):
    """The worker loads the model three times (load time) and again with another KV cache: one
    model at a time, so the peak RSS counts the mapped weights once, not twice."""
    cfg = hf.tiny_config(n_layer=1, n_head=4, n_embd=512, n_ctx=64, vocab_size=bench.VOCAB)
    path = hf.write_model(tmp_path / "m", cfg=cfg)
    weights_mib = os.path.getsize(os.path.join(path, "model.safetensors")) / 2**20  # ~100 MiB: wte
    r = bench.run_case({"engine": "pygpt", "path": path, "threads": 1, "prompt": 8, "new": 4, "runs": 1,
                        "batch": 2}, timeout=300)
    assert "error" not in r, r
    # a fresh interpreter with pygpt imported, no model
    code = ("import pygpt, numpy; print([int(l.split()[1]) for l in open('/proc/self/status') "
            "if l.startswith('VmHWM:')][0] / 1024)")
    env = dict(os.environ, PYTHONPATH=ROOT) if bench.checkout.BUILT else None  # the worker's pygpt
    base_mib = float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                                    env=env, cwd=tmp_path).stdout)
    assert base_mib + 0.9 * weights_mib < r["peak_rss_mib"] < base_mib + 1.5 * weights_mib, (base_mib, weights_mib)


def test_run_case_names_the_signal_that_killed_a_worker(bench, tmp_path, monkeypatch):
    """A worker a signal kills gets the error "worker died with SIGSEGV" in its row (a signal
    without a name, "signal 40"); one that exits with an error, the last line of its stderr."""
    worker = tmp_path / "worker.py"
    monkeypatch.setattr(bench, "__file__", str(worker))  # run_case runs this file as the worker
    case = {"engine": "llama.cpp", "threads": 1}
    worker.write_text("import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)\n")
    assert bench.run_case(case, timeout=60) == {"error": "worker died with SIGSEGV"}
    worker.write_text("raise SystemExit('no such model')\n")
    assert bench.run_case(case, timeout=60) == {"error": "no such model"}
    assert bench.signal_name(40) == "signal 40"


def test_write_gguf_stores_each_tensor_as_llama_cpp_names_and_lays_it_out(bench, hf_model_factory, tmp_path):
    """llama.cpp's rows run a GGUF file bench.py writes from the same HF model: every tensor
    under llama.cpp's gpt2 name, Conv1D weights transposed to (out, in), the tied LM head
    written out, the tokenizer and hyperparameters in the metadata."""
    gguf = pytest.importorskip("gguf")
    from safetensors.numpy import load_file

    _, hf_dir, f32_dir = hf_model_factory("tiny")
    out = str(tmp_path / "tiny.gguf")
    bench.write_gguf(hf_dir, out, tokenizer_dir=os.path.join(ROOT, "tests", "data", "gpt2-tokenizer"))
    reader = gguf.GGUFReader(out)
    weights = load_file(os.path.join(hf_dir, "model.safetensors"))

    def field(name):
        f = reader.fields[name]
        return f.contents()

    assert field("general.architecture") == "gpt2"
    assert (field("gpt2.block_count"), field("gpt2.embedding_length"), field("gpt2.attention.head_count"),
            field("gpt2.context_length"), field("gpt2.feed_forward_length")) == (2, 32, 2, 64, 128)
    tokens = field("tokenizer.ggml.tokens")
    assert len(tokens) == 50257 and tokens[50256] == "<|endoftext|>" and tokens[198] == "\u010a"
    assert field("tokenizer.ggml.merges")[0] == "\u0120 t"
    assert field("tokenizer.ggml.eos_token_id") == 50256
    got = {t.name: t for t in reader.tensors}
    expected = {"token_embd.weight", "position_embd.weight", "output.weight", "output_norm.weight",
                "output_norm.bias"}
    for i in range(2):
        expected |= {f"blk.{i}.{n}.{wb}" for n in ("attn_norm", "attn_qkv", "attn_output", "ffn_norm", "ffn_up",
                                                   "ffn_down") for wb in ("weight", "bias")}
    assert set(got) == expected

    def data(name):  # numpy shape (rows, columns) = GGML's (ne[1], ne[0])
        t = got[name]
        assert t.tensor_type == gguf.GGMLQuantizationType.F32
        return np.asarray(t.data).reshape([int(n) for n in reversed(t.shape)])

    np.testing.assert_array_equal(data("blk.1.attn_qkv.weight"), weights["transformer.h.1.attn.c_attn.weight"].T)
    np.testing.assert_array_equal(data("blk.0.ffn_down.weight"), weights["transformer.h.0.mlp.c_proj.weight"].T)
    np.testing.assert_array_equal(data("blk.0.ffn_up.bias").ravel(), weights["transformer.h.0.mlp.c_fc.bias"])
    np.testing.assert_array_equal(data("output.weight"), weights["transformer.wte.weight"])
    np.testing.assert_array_equal(data("position_embd.weight"), weights["transformer.wpe.weight"])
    # a decode step reads the same bytes from both files: all but one row of each embedding
    # (llama.cpp's output.weight is pygpt's tied wte, read whole as the LM head)
    assert bench.gguf_weight_bytes_per_token(out) == bench.weight_bytes_per_token(f32_dir)


@needs_llama_cpp
def test_llama_cpp_runs_the_written_gguf_like_transformers(bench, hf_model_factory, tmp_path):
    """Where llama-cpp-python is installed: llama.cpp's logits from bench.py's f32 GGUF equal
    transformers' to f32 rounding, its quantized files keep the greedy tokens, and the worker
    reports. Each llama.cpp call runs in a child process (in_child)."""
    pytest.importorskip("gguf")
    import torch

    model, hf_dir, _ = hf_model_factory("tiny")
    f32 = str(tmp_path / "tiny-f32.gguf")
    bench.write_gguf(hf_dir, f32, tokenizer_dir=os.path.join(ROOT, "tests", "data", "gpt2-tokenizer"))
    ids = list(range(100, 120))
    with torch.no_grad():
        ref = model(torch.tensor([ids])).logits[0].numpy()
        greedy = model.generate(torch.tensor([ids]), max_new_tokens=8, do_sample=False, pad_token_id=0,
                                eos_token_id=None)[0, len(ids):].tolist()
    for q, atol in (("f32", 1e-4), ("f16", None), ("q8_0", None)):
        path = f32 if q == "f32" else str(tmp_path / f"tiny-{q}.gguf")
        scores = str(tmp_path / f"scores-{q}.npy")
        tokens = in_child(bench, """
            import llama_cpp
            import numpy as np

            if a["q"] != "f32":
                bench.llama_quantize(a["f32"], a["path"], a["q"])
            llm = llama_cpp.Llama(model_path=a["path"], n_ctx=64, logits_all=True, verbose=False)
            llm.eval(a["ids"])
            np.save(a["scores"], np.asarray(llm.scores[:len(a["ids"])]))
            tokens = []
            for t in llm.generate(a["ids"], top_k=1, temp=0.0, reset=True):
                tokens.append(int(t))
                if len(tokens) == a["n"]:
                    break
            result(tokens)
            """, f"llama.cpp on {q}", f32=f32, path=path, q=q, ids=ids, scores=scores, n=len(greedy))
        if atol:
            np.testing.assert_allclose(np.load(scores), ref, atol=atol, rtol=0)
        assert tokens == greedy, q
    r = in_child(bench, "result(bench.worker_llamacpp(a))", "llama.cpp's worker", path=f32, threads=1, prompt=8, new=4,
                 runs=1, probe_runs=True)
    assert r["decode_tok_s"] > 0 and r["prefill_tok_s"] > 0 and r["ttft_s"] > 0 and r["peak_rss_mib"] > 0
    assert r["kv_cache"] == "f16" and len(r["probed_runs"]) == 1 and all(x > 0 for x in r["probed_runs"][0])


def test_in_turns_alternates_two_workers_and_the_report_gives_the_median_ratio(bench, hf_model_factory, tmp_path):
    """Two engines' decode runs in turns (pygpt against itself here; llama.cpp in the
    benchmark), and a worker that dies before it is ready raises instead of hanging."""
    import statistics

    _, _, f32_dir = hf_model_factory("tiny")
    case = {"engine": "pygpt", "path": f32_dir, "threads": 1, "prompt": 8, "new": 4}
    pairs = bench.in_turns(case, case, 2)
    assert len(pairs) == 2 and all(len(p) == 2 and min(p) > 0 for p in pairs)
    turns = [{"shape": "124M", "threads": 1, "mine": "f32", "engine": "llama.cpp", "theirs": "f32", "pairs": pairs}]
    ratio = statistics.median(a / b for a, b in pairs)
    assert bench.ratio_lines([], "124M", 1, turns) == [
        f"- 124M, 1 threads: pygpt f32 / llama.cpp f32 decode, runs in turns: {ratio:.2f}x "
        f"({pairs[0][0]:.1f} / {pairs[0][1]:.1f}, {pairs[1][0]:.1f} / {pairs[1][1]:.1f} tok/s)"]
    with pytest.raises(RuntimeError, match="exited"):
        bench.in_turns(case, dict(case, path=str(tmp_path / "missing")), 1, timeout=120)


def test_peers_measure_batched_decode_and_the_report_compares_it(bench, hf_model_factory, tmp_path):
    """Every engine decodes the same batch of prompts (--batch): transformers and CTranslate2
    through their generate calls, first token subtracted as at batch 1; the report gives each
    engine's batch against its batch 1, and pygpt's batch against the peer's, labelled with
    the batch size the run used."""
    import shutil

    _, hf_dir, _ = hf_model_factory("tiny")
    case = {"path": hf_dir, "hf": hf_dir, "threads": 1, "prompt": 8, "new": 4, "runs": 1}
    assert "batch_decode_tok_s" not in bench.worker_transformers(case)
    r = bench.worker_transformers(dict(case, batch=2))
    assert r["batch_decode_tok_s"] > 0
    if importlib.util.find_spec("ctranslate2") is not None:  # a benchmark peer, not a test dependency
        import ctranslate2.converters

        hf_tok = str(tmp_path / "hf")
        shutil.copytree(hf_dir, hf_tok)
        for f in ("vocab.json", "merges.txt"):
            shutil.copy(os.path.join(ROOT, "tests", "data", "gpt2-tokenizer", f), hf_tok)
        ct2 = str(tmp_path / "ct2")
        ctranslate2.converters.TransformersConverter(hf_tok).convert(ct2, quantization="float32")
        c = bench.worker_ct2(dict(case, path=ct2, hf=hf_tok, compute_type="float32", batch=2))
        assert c["decode_tok_s"] > 0 and c["batch_decode_tok_s"] > 0

    mine = {"engine": "pygpt", "dtype": "int4", "decode_tok_s": 100.0, "prefill_tok_s": 1000.0,
            "batch_decode_tok_s": 300.0}
    theirs = {"engine": "llama.cpp", "dtype": "q4_0", "decode_tok_s": 50.0, "prefill_tok_s": 500.0,
              "batch_decode_tok_s": 100.0}
    rows = [dict(x, shape="124M", threads=2, load_s=0.1, ttft_s=0.01, peak_rss_mib=1.0, cpu_share=1.0)
            for x in (mine, theirs)]
    lines = bench.ratio_lines(rows, "124M", 2, (), 4)
    assert "- 124M, 2 threads: pygpt int4 / llama.cpp q4_0: decode 2.00x, prefill 2.00x, batch-4 decode 3.00x" in lines
    assert "- 124M, 2 threads, pygpt int4: batch-4 decode throughput 3.0x batch 1" in lines
    assert "- 124M, 2 threads, llama.cpp q4_0: batch-4 decode throughput 2.0x batch 1" in lines
    meta = {"date": "today", "cpu": "cpu", "cores": 2, "isa": "avx512", "prompt": 8, "new": 4, "runs": 1,
            "batch": 4, "shapes": ["124M"], "threads": [2], "bandwidth": {2: 1e10}, "fma_peak": {2: 1e11}}
    md = bench.speed_markdown(meta, rows, None)
    assert "| batch-4 decode tok/s | other KV: decode / batch-4 tok/s |" in md and "batch-8" not in md
    assert "| 300 |" in md and "| 100 |" in md


@needs_llama_cpp
def test_llama_cpp_batch_decodes_every_prompt_as_transformers_does_alone(bench, hf_model_factory, tmp_path):
    """llama.cpp's batch (LlamaBatch: one context, a KV sequence per prompt, one llama_decode
    a step) gives each prompt, whatever its length, transformers' greedy tokens for it alone.
    llama.cpp runs in a child process (in_child)."""
    pytest.importorskip("gguf")
    import torch

    model, hf_dir, _ = hf_model_factory("tiny")
    path = str(tmp_path / "tiny-f32.gguf")
    bench.write_gguf(hf_dir, path, tokenizer_dir=os.path.join(ROOT, "tests", "data", "gpt2-tokenizer"))
    prompts = [p[:n] for p, n in zip(bench.batch_prompts({"prompt": 12, "batch": 3}), (12, 5, 9))]
    runs = in_child(bench, """
        import llama_cpp

        llm = llama_cpp.Llama(model_path=a["path"], n_ctx=64, n_threads=1, n_threads_batch=1, verbose=False)
        with bench.LlamaBatch(llm, a["prompts"]) as batch:
            result([batch.run(6), batch.run(6)])
        """, "llama.cpp's batch", path=path, prompts=prompts)
    (tokens, tok_s), (again, _) = runs
    assert again == tokens  # the cache is cleared between runs
    assert tok_s > 0
    with torch.no_grad():
        for p, got in zip(prompts, tokens):
            want = model.generate(torch.tensor([p]), max_new_tokens=7, do_sample=False, pad_token_id=0,
                                  eos_token_id=None)[0, len(p):].tolist()
            assert got == want
    r = in_child(bench, "result(bench.worker_llamacpp(a))", "llama.cpp's worker", path=path, threads=1, prompt=8, new=4,
                 runs=1, batch=2)
    assert r["batch_decode_tok_s"] > 0


def test_bench_beam_runs_engines_in_turns_and_compares_their_best_sequences(load_tool, hf_model_factory):
    """tools/bench_beam.py: pygpt and transformers search the same model in turns; the table
    gives each one's time and whether its best sequence is transformers'."""
    import argparse

    bench_beam = load_tool("bench_beam")
    _, hf_dir, f32_dir = hf_model_factory("tiny")
    common = dict(threads=1, beams=3, prompt=8, new=5, hf=hf_dir)
    cases = [dict(common, engine="pygpt", dtype="f32", path=f32_dir),
             dict(common, engine="transformers", dtype="f32", path=hf_dir)]
    results = bench_beam.in_turns(cases, 2)
    assert [len(r) for r in results] == [2, 2]
    assert all(s > 0 and len(tokens) == 5 for r in results for s, tokens in r)
    assert results[0][0][1] == results[1][0][1]  # the same search
    args = argparse.Namespace(shape="tiny", threads=1, beams=3, prompt=8, new=5, rounds=2)
    rows = bench_beam.table(cases, results, args).splitlines()[-2:]
    assert rows[0].startswith("| pygpt | f32 |") and rows[0].endswith("| 1.00x | yes |")
    assert rows[1].startswith("| transformers | f32 |") and rows[1].endswith("| yes |")
    with pytest.raises(RuntimeError, match="exited"):
        bench_beam.in_turns([dict(cases[0], path=f32_dir + "-missing")], 1)


def test_bench_embed_runs_engines_in_turns_and_compares_their_vectors(load_tool, hf_model_factory):
    """tools/bench_embed.py: pygpt and transformers embed the same passages in turns; the table
    gives each one's time and how close its vectors are to transformers'."""
    import argparse

    import pygpt

    bench_embed = load_tool("bench_embed")
    _, hf_dir, f32_dir = hf_model_factory("tiny")
    texts = bench_embed.passages(3, 10)
    assert len(texts) == 3 and all(len(t) == 40 for t in texts) and texts[0] != texts[1]
    common = dict(threads=1, texts=3, tokens=10, tokenizer=f32_dir)  # the HF folder has no tokenizer files
    cases = [dict(common, engine="pygpt", dtype="f32", path=f32_dir),
             dict(common, engine="transformers", dtype="f32", path=hf_dir)]
    results = bench_embed.bench_beam.in_turns(cases, 2, script=bench_embed.__file__)
    assert [len(r) for r in results] == [2, 2]
    ours, theirs = (np.array(r[0][1]) for r in results)
    assert ours.shape == theirs.shape == (3, 32)
    assert np.abs(ours - np.asarray(pygpt.load(f32_dir).embed(texts), np.float64)).max() == 0
    assert np.abs(ours - theirs).max() < 1e-5
    args = argparse.Namespace(shape="tiny", threads=1, texts=3, rounds=2)
    rows = bench_embed.table(cases, results, args, 30).splitlines()[-2:]
    assert rows[0].startswith("| pygpt | f32 |") and rows[0].endswith("| 1.00x | 1.000000 |")
    assert rows[1].startswith("| transformers | f32 |") and rows[1].endswith("| 1.000000 |")
    with pytest.raises(SystemExit, match="fewer texts"):
        bench_embed.passages(10_000, 1000)


def test_bench_embed_beside_a_stream_reports_both_ways(load_tool, hf_model_factory):
    import argparse

    bench_embed = load_tool("bench_embed")
    _, _, f32_dir = hf_model_factory("tiny")
    args = argparse.Namespace(shape="tiny", threads=1, texts=3, tokens=10, rounds=2, stream_tokens=12)
    rows = bench_embed.beside_stream(f32_dir, args).splitlines()
    assert rows[0].startswith("tiny pygpt, 1 threads: a 12-token stream beside an embedding of 3 texts")
    assert [r.split(" | ")[0] for r in rows[-2:]] == ["| model.embed", "| batcher.embed"]


def test_bench_lookup_compares_prompt_lookup_with_plain_greedy(load_tool, tmp_path, capsys):
    import pygpt.convert

    from conftest import make_hf_model

    bench_lookup = load_tool("bench_lookup")
    make_hf_model(str(tmp_path / "hf"), seed=1, n_layer=1, n_head=2, n_embd=32, n_positions=64, vocab_size=50257)
    out = pygpt.convert.convert(str(tmp_path / "hf"), str(tmp_path / "m"),
                                tokenizer=os.path.join(ROOT, "tests", "data", "gpt2-tokenizer"))
    text = tmp_path / "t.txt"
    text.write_text("the cat sat on the mat and the cat sat on the hat " * 4)
    assert bench_lookup.main([out, "--text", str(text), "--prompt", "20", "--repeat", "5", "--new", "12", "--k",
                              "3", "--rounds", "1"]) == 0
    rows = [r for r in capsys.readouterr().out.splitlines() if r.startswith(f"| {out} |")]
    assert len(rows) == 2
    assert rows[0].startswith(f"| {out} | 25 | off |") and rows[0].endswith("| 1.00x | n/a |")
    assert rows[1].startswith(f"| {out} | 25 | 3 |") and " of " in rows[1]
    # an assistant model (the same model here: every draft is right), then sampling
    for extra in ([], ["--temperature", "0.9"]):
        assert bench_lookup.main([out, "--assistant", out, "--text", str(text), "--prompt", "20", "--new", "12",
                                  "--k", "3", "--rounds", "2"] + extra) == 0
        printed = capsys.readouterr().out
        assert f"assistant {out}" in printed and ("temperature 0.9" in printed) == bool(extra)
        rows = [r for r in printed.splitlines() if r.startswith(f"| {out} |")]
        assert len(rows) == 2 and rows[0].endswith("| 1.00x | n/a |")
        right, _, drafted = rows[1].split("|")[-2].split()
        assert int(drafted) > 0 and (int(right) == int(drafted) or extra)


def test_bench_grammar_compares_with_and_without_grammars(load_tool, tmp_path, capsys):
    """tools/bench_grammar.py on pygpt alone (llama.cpp's rows need --gguf): a row for each
    sampling, grammar; then the one-walk costs."""
    import pygpt.convert

    from conftest import make_hf_model

    bench_grammar = load_tool("bench_grammar")
    make_hf_model(str(tmp_path / "hf"), seed=1, n_layer=1, n_head=2, n_embd=32, n_positions=64, vocab_size=50257)
    out = pygpt.convert.convert(str(tmp_path / "hf"), str(tmp_path / "m"),
                                tokenizer=os.path.join(ROOT, "tests", "data", "gpt2-tokenizer"))
    extra = tmp_path / "yes.gbnf"
    extra.write_text('root ::= "yes" | "no"')
    assert bench_grammar.main([out, "--new", "6", "--rounds", "1", "--grammar", str(extra)]) == 0
    printed = capsys.readouterr().out
    rows = [r for r in printed.splitlines() if r.startswith(("| greedy |", "| T=0.8"))]
    assert len(rows) == 2 * 5 and all("| pygpt |" in r for r in rows)
    assert [r.split("|")[2].strip() for r in rows[:5]] == ["none", "JSON object", "JSON schema",
                                                          "string of 1000 characters", str(extra)]
    assert rows[0].endswith("| n/a | 6 |") and rows[4].endswith("| 1 |")  # "yes" or "no": one token, closed
    walks = [r for r in printed.splitlines() if r.startswith("| `")]
    assert len(walks) == 5 and walks[0].endswith("| 66 |")  # after "{": whitespace, '"', "}" (66 tokens)


def test_bench_serve_compares_taking_turns_with_a_batcher(load_tool, tmp_path, capsys, monkeypatch):
    """tools/bench_serve.py: the same requests from N client threads, by model.generate and by a
    Batcher, a row each; requests that got other tokens in the two modes stop it."""
    import pygpt
    from pygpt.model import DEFAULT_MODEL_DIR

    bench_serve = load_tool("bench_serve")
    text = tmp_path / "t.txt"
    text.write_text("It was the best of times, it was the worst of times. " * 20)
    args = [DEFAULT_MODEL_DIR, "--text", str(text), "--clients", "1,3", "--requests", "2", "--prompt", "8",
            "--new", "6", "--rounds", "1", "--threads", "1"]
    assert bench_serve.main(args) == 0
    rows = [r.split(" | ") for r in capsys.readouterr().out.splitlines() if r.startswith(f"| {DEFAULT_MODEL_DIR} |")]
    assert [(r[1], r[2]) for r in rows] == [("1", "turns"), ("1", "batched"), ("3", "turns"), ("3", "batched")]
    assert all(float(r[3]) > 0 for r in rows) and rows[3][6].endswith("x tokens/s |")
    # every request drafting with an assistant: the two modes still give the same tokens
    assert bench_serve.main(args + ["--assistant", DEFAULT_MODEL_DIR]) == 0
    out = capsys.readouterr().out
    assert f"assistant {DEFAULT_MODEL_DIR}" in out
    assert len([r for r in out.splitlines() if r.startswith(f"| {DEFAULT_MODEL_DIR} |")]) == 4

    real = pygpt.Batcher.generate
    monkeypatch.setattr(pygpt.Batcher, "generate", lambda self, prompt, **kw: real(self, prompt, **dict(kw, seed=99)))
    with pytest.raises(SystemExit, match="batched gave other tokens"):
        bench_serve.main(args)


def test_bench_serve_join_compares_prefill_chunk_settings(load_tool, tmp_path, capsys):
    """--join: a long prompt joins running streams under each prefill_chunk; a row each."""
    from pygpt.model import DEFAULT_MODEL_DIR

    bench_serve = load_tool("bench_serve")
    text = tmp_path / "t.txt"
    text.write_text("It was the best of times, it was the worst of times. " * 20)
    assert bench_serve.main([DEFAULT_MODEL_DIR, "--text", str(text), "--clients", "", "--prompt", "8", "--new", "30",
                             "--rounds", "1", "--threads", "1", "--join", "40", "--prefill-chunks", "0,8"]) == 0
    out = capsys.readouterr().out
    assert "| clients |" not in out  # no client table asked for
    rows = [r.split(" | ") for r in out.splitlines() if r.startswith(f"| {DEFAULT_MODEL_DIR} |")]
    assert [r[1] for r in rows] == ["whole", "8"]
    # seconds, 3 decimals: a stream whose pieces all queued up while its client waited for the
    # others to start reads a longest wait of 0.000 on a loaded machine, so only their form is
    # asserted (the joining request's tokens are checked by the tool itself)
    assert all(float(r[2]) >= 0 and float(r[3]) >= 0 and float(r[4].rstrip(" |")) >= 0 for r in rows)


def test_bench_serve_turns_compares_prefix_caching_off_and_on(load_tool, tmp_path, capsys):
    """--turns: one client continues its text; with prefix caching it runs fewer prompt tokens."""
    from pygpt.model import DEFAULT_MODEL_DIR

    bench_serve = load_tool("bench_serve")
    text = tmp_path / "t.txt"
    text.write_text("It was the best of times, it was the worst of times. " * 30)
    assert bench_serve.main([DEFAULT_MODEL_DIR, "--text", str(text), "--clients", "", "--prompt", "12", "--new", "5",
                             "--rounds", "1", "--threads", "1", "--turns", "3"]) == 0
    rows = [r.split(" | ") for r in capsys.readouterr().out.splitlines() if r.startswith(f"| {DEFAULT_MODEL_DIR} |")]
    assert [r[1] for r in rows] == ["off", "4"]
    run_off, reused_off = int(rows[0][4]), int(rows[0][5])
    run_on, reused_on = int(rows[1][4]), int(rows[1][5])
    assert reused_off == 0 and run_off == run_on + reused_on  # the same prompts, run or reused
    assert run_on == 12 + 2 * (1 + 16)  # after the first turn only the new tokens run
    assert rows[0][6] == rows[1][6] == "0 |"  # no assistant
    # --assistant: it drafts, and with prefix caching runs fewer tokens too (its caches kept)
    assert bench_serve.main([DEFAULT_MODEL_DIR, "--text", str(text), "--clients", "", "--prompt", "12", "--new", "5",
                             "--rounds", "1", "--threads", "1", "--turns", "3", "--assistant", DEFAULT_MODEL_DIR]) == 0
    rows = [r.split(" | ") for r in capsys.readouterr().out.splitlines() if r.startswith(f"| {DEFAULT_MODEL_DIR} |")]
    ran_off, ran_on = int(rows[0][6].rstrip(" |")), int(rows[1][6].rstrip(" |"))
    assert 0 < ran_on < ran_off


def test_bench_serve_preamble_runs_a_shared_preamble_once_with_prefix_caching(load_tool, tmp_path, capsys):
    from pygpt.model import DEFAULT_MODEL_DIR

    bench_serve = load_tool("bench_serve")
    text = tmp_path / "t.txt"
    text.write_text(" ".join(f"word{i}" for i in range(600)))
    assert bench_serve.main([DEFAULT_MODEL_DIR, "--text", str(text), "--clients", "", "--new", "3", "--rounds", "1",
                             "--threads", "1", "--preamble", "40"]) == 0
    rows = [r.split(" | ") for r in capsys.readouterr().out.splitlines() if r.startswith(f"| {DEFAULT_MODEL_DIR} |")]
    assert [r[1] for r in rows] == ["off", "4"]
    assert (int(rows[0][3]), int(rows[0][4].rstrip(" |"))) == (32 * 52, 0)
    run_on, reused_on = int(rows[1][3]), int(rows[1][4].rstrip(" |"))
    assert run_on + reused_on == 32 * 52 and reused_on >= 31 * 40  # each later prompt reused the preamble


def test_bench_paths_runs_each_path_in_turns_and_reports_the_ratios(load_tool, hf_model_factory, capsys):
    """tools/bench_paths.py: every round measures each kernel path's prefill, decode and batched
    decode on one model; the report gives the medians and the median per-round ratio to the
    first path. A path the CPU lacks is a clear error, not a traceback."""
    tool = load_tool("bench_paths")
    _, _, out = hf_model_factory("tiny")
    isas = ["scalar", pygpt.system_info()["isa"]]
    results = tool.run(out, isas, threads=1, rounds=2, prompt=12, new=3, batch=2)
    assert set(results) == set(isas)
    assert all(len(v) == 2 and min(v) > 0 for r in results.values() for v in r.values())
    lines = tool.report({"a": {"prefill": [1.0, 2.0], "decode": [4.0, 4.0], "batch": [3.0, 1.0]},
                         "b": {"prefill": [2.0, 2.0], "decode": [2.0, 4.0], "batch": [3.0, 3.0]}})
    assert lines == ["a: prefill 1.5 tok/s, decode 4.0 tok/s, batch 2.0 tok/s",
                     "b: prefill 2.0 tok/s, decode 3.0 tok/s, batch 3.0 tok/s",
                     "b / a: prefill 1.500x, decode 0.750x, batch 2.000x"]
    assert tool.main([out, "--isas", "scalar", "--rounds", "1", "--prompt", "6", "--new", "2", "--batch", "1",
                      "--threads", "1"]) == 0
    assert "scalar: prefill" in capsys.readouterr().out
    assert tool.main([out, "--isas", "sse9"]) == 2
    assert "unknown ISA" in capsys.readouterr().err


def test_quality_report_rows_per_dtype_and_groups_of_32(bench, tmp_path):
    """--quality: a row per dtype (the quantized ones also with the f16 KV cache, and in
    groups of 32 where the widths allow), perplexity and KL against f32's own row."""
    import argparse

    from conftest import make_hf_model

    hf_dir = str(tmp_path / "hf")
    make_hf_model(hf_dir, n_layer=2, n_head=2, n_embd=64, n_positions=64, vocab_size=50257)
    text = tmp_path / "text.txt"
    with open(os.path.join(os.path.dirname(__file__), "data", "corpus", "eval-areopagitica.txt"), encoding="utf-8") as f:
        text.write_text(f.read()[:3000], encoding="utf-8")
    args = argparse.Namespace(quality=hf_dir, tokenizer=os.path.join(os.path.dirname(__file__), "data", "gpt2-tokenizer"),
                              text=str(text), dtypes=["f32", "int4"],
                              workdir=str(tmp_path / "work"))
    md = bench.quality(args, log=lambda msg: None)
    rows = {ln.split(" | ")[0].lstrip("| "): ln.split(" | ") for ln in md.splitlines() if ln.startswith("| ")}
    assert set(rows) >= {"f32", "f32, f16 KV cache", "int4 (group 64), int8 KV cache",
                         "int4 (group 64), f16 KV cache", "int4 (group 32), int8 KV cache"}, rows
    assert rows["f32"][3] == "+0.00%" and rows["f32"][5] == "100.00%"
    assert float(rows["int4 (group 32), int8 KV cache"][4]) > 0  # a KL of its own: really quantized
    with open(os.path.join(str(tmp_path / "work"), "quality-int4-g32", "config.json")) as f:
        assert json.load(f)["quant_group_size"] == 32
