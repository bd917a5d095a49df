"""Every bug the hostile files and the fuzzers found, as a test; and the saved fuzz corpora
replayed through the Python API (fuzz/corpus/format, fuzz/corpus/tokenizer), plus the C++
corpora through the libFuzzer binaries when fuzz/build_cpp.sh has built them.

Fixed bugs are plain tests. Bugs in files this suite's author does not own are
xfail(strict=True): the day they are fixed, the xfail turns into a failure and must be removed.
"""

import json
import mmap
import os
import struct
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import pygpt
from pygpt import ModelFormatError, _core

import hostile_files as hf

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FUZZ = os.path.join(ROOT, "fuzz")
PAGE = mmap.PAGESIZE


# -- fixed -------------------------------------------------------------------------------------

GUARD_CHILD = textwrap.dedent("""
    import ctypes, mmap, os, sys
    import pygpt
    folder, size = sys.argv[1], int(sys.argv[2])
    pages = -(-size // mmap.PAGESIZE)
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    # a hole of exactly the file's pages under an inaccessible guard page: the kernel places the
    # next mapping of that size there, so a read past the file's last page faults
    base = libc.mmap(None, (pages + 1) * mmap.PAGESIZE, 0, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, -1, 0)
    libc.munmap(base, pages * mmap.PAGESIZE)
    m = pygpt.load(folder, n_threads=1)
    st = os.path.realpath(os.path.join(folder, "model.safetensors"))
    with open("/proc/self/maps") as f:
        spans = [l.split()[0] for l in f if l.rstrip().endswith(st)]
    start = int(spans[0].split("-")[0], 16) if spans else -1
    print("guarded" if start == base else "unguarded", m._core.copied_bytes, flush=True)
    m.logits([1, 2])
""")


def test_misaligned_last_tensor_reads_nothing_past_the_file(tmp_path):
    """model.cpp TensorTable::get copied `align` bytes too many when realigning a tensor: for
    the last tensor of a file ending 1-3 bytes before a page boundary that read past the
    mapping (SIGSEGV under a guard page). Fixed in 45e2caf."""
    cfg = hf.tiny_config()
    tensors = hf.tiny_tensors(cfg)
    for pad in range(PAGE):  # a header padding that makes the file end 1 byte before a page end
        raw, _ = hf.pack_safetensors(tensors, header_pad=pad, align=1)
        if len(raw) % PAGE == PAGE - 1:
            break
    n = struct.unpack("<Q", raw[:8])[0]
    assert (8 + n) % 4 != 0, "the tensors must be misaligned (copied)"
    folder = hf.write_model(tmp_path / "m", cfg=cfg, tensors=tensors)
    (tmp_path / "m" / "model.safetensors").write_bytes(raw)
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(pygpt.__file__))))
    for _ in range(5):  # the kernel usually, not always, puts the mapping in the hole: retry
        r = subprocess.run([sys.executable, "-c", GUARD_CHILD, folder, str(len(raw))], capture_output=True,
                           text=True, env=env, timeout=120)
        assert r.returncode == 0, f"child died ({r.returncode}): {r.stderr[-2000:]}"
        where, copied = r.stdout.split()
        assert int(copied) > 0
        if where == "guarded":
            return
    pytest.skip("the kernel did not place the mapping under the guard page")


def test_deeply_nested_config_is_a_format_error(tmp_path):
    """_format.read_config let RecursionError escape (fixed in 67886f7)."""
    folder = hf.write_model(tmp_path / "m")
    for text in ("[" * 100_000, '{"a":' * 100_000):
        (tmp_path / "m" / "config.json").write_text(text)
        with pytest.raises(ModelFormatError, match="JSON"):
            pygpt.load(folder)


def test_unhashable_dtype_is_a_format_error(tmp_path):
    """_format.read_safetensors_header raised TypeError (unhashable) for a list dtype (fixed in fcde8e6)."""
    cfg = hf.tiny_config()
    raw, header = hf.pack_safetensors(hf.tiny_tensors(cfg))
    _, data = hf.split_safetensors(raw)
    folder = hf.write_model(tmp_path / "m", cfg=cfg)
    for dtype in (["F32"], {"F32": 1}):
        header["ln_f.weight"]["dtype"] = dtype
        (tmp_path / "m" / "model.safetensors").write_bytes(hf.pack_raw(json.dumps(header).encode(), data))
        with pytest.raises(ModelFormatError, match="dtype"):
            pygpt.load(folder)


def test_quant_group_that_does_not_fit_is_a_format_error(tmp_path):
    """A quant_group_size quantize.py refuses was a bare ValueError (fixed in 472a430)."""
    folder = hf.write_model(tmp_path / "m")
    (tmp_path / "m" / "config.json").write_text(json.dumps(hf.tiny_config(dtype="int8", quant_group_size=8)))
    with pytest.raises(ModelFormatError, match="group size 8"):
        pygpt.load(folder)


def test_deeply_nested_vocab_is_a_format_error(tmp_path):
    """pygpt/tokenizer.py _load_vocab let RecursionError escape (fixed in 1cb4ab8)."""
    folder = hf.write_model(tmp_path / "m", tokenizer=True)
    (tmp_path / "m" / "vocab.json").write_text("[" * 100_000)
    with pytest.raises(ModelFormatError):
        pygpt.load(folder)


# -- open (files owned by others) ---------------------------------------------------------------


def test_closed_model_gives_a_clear_error(tmp_path):
    m = pygpt.load(hf.write_model(tmp_path / "m", tokenizer=True))
    m.close()
    with pytest.raises(ValueError, match="closed"):
        m.logits([1])


LIMITED_CHILD = textwrap.dedent("""
    import resource, sys, tempfile
    # a process that may not map more than 6 GB: creating thousands of threads (8 MB stacks) fails
    resource.setrlimit(resource.RLIMIT_AS, (6 << 30, 6 << 30))
    sys.path.append(sys.argv[2])
    import pygpt
    try:
        if sys.argv[1] == "tokenizer":
            from pygpt.tokenizer import Tokenizer
            tok = Tokenizer.from_dir(sys.argv[3])
            tok.encode_batch(["hello world"] * 5000, n_threads=5000)
        else:
            import hostile_files as hf
            cfg = hf.tiny_config(n_embd=256, n_head=4, n_ctx=64)  # enough work for every parallel region
            m = pygpt.load(hf.write_model(tempfile.mkdtemp(), cfg=cfg), n_threads=5000)
            m.logits(list(range(64)))
        print("ran")
    except Exception as e:  # a clear Python error is fine too
        print("raised", type(e).__name__, e)
""")


def _limited_child(what):
    if os.environ.get("PYGPT_SANITIZED"):
        pytest.skip("ASan cannot run under an address-space limit")
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(pygpt.__file__))))
    tests = os.path.dirname(os.path.abspath(__file__))
    r = subprocess.run([sys.executable, "-c", LIMITED_CHILD, what, tests, os.path.join(tests, "data", "gpt2-tokenizer")],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, f"the process died ({r.returncode}): {r.stderr[-500:]}"
    assert r.stdout.startswith(("ran", "raised")), r.stdout


def test_encode_batch_with_more_threads_than_the_system_allows():
    _limited_child("tokenizer")


def test_model_with_more_threads_than_the_system_allows():
    _limited_child("model")


def _isa_param(isa):
    supported = {"scalar": True, "avx2": _core.cpu_has_avx2(), "avx2vnni": _core.cpu_has_avx2_vnni(),
                 "avx512": _core.cpu_has_avx512(), "avx512bf16": _core.cpu_has_avx512_bf16(),
                 "amx": _core.cpu_has_amx(), "neon": _core.cpu_has_neon(), "neondot": _core.cpu_has_neon_dot()}[isa]
    marks = [pytest.mark.skipif(not supported, reason=f"this CPU cannot run {isa}")]
    return pytest.param(isa, marks=marks)


@pytest.mark.parametrize("isa", [_isa_param(i) for i in ("scalar", "avx2", "avx2vnni", "avx512", "avx512bf16", "amx", "neon",
                                                          "neondot")])
def test_nan_in_attention_propagates_on_every_isa(tmp_path, isa):
    cfg = hf.tiny_config()
    dtype, raw, shape = hf.tiny_tensors(cfg)["h.0.attn.c_attn.weight"]
    tensors = hf.tiny_tensors(cfg)
    a = np.frombuffer(raw, "<f4").copy()
    a[3] = np.nan  # row 0: a query feature of head 0
    tensors["h.0.attn.c_attn.weight"] = (dtype, a.tobytes(), shape)
    m = pygpt.Model(hf.write_model(tmp_path / "m", cfg=cfg, tensors=tensors), isa=isa)
    assert m.isa == isa
    assert np.isnan(m.logits([1, 2, 3])).all()


# -- behaviour around the open bug that already holds ---------------------------------------------


def test_closed_model_generate_gives_a_clear_error(tmp_path):
    m = pygpt.load(hf.write_model(tmp_path / "m", tokenizer=True))
    m.close()
    with pytest.raises(ValueError, match="closed"):
        m.generate([1], max_new_tokens=1)


# -- the saved corpora ---------------------------------------------------------------------------


def _corpus(name):
    d = os.path.join(FUZZ, "corpus", name)
    return sorted(os.path.join(d, f) for f in os.listdir(d)) if os.path.isdir(d) else []


@pytest.fixture(scope="module")
def targets():
    sys.path.insert(0, FUZZ)
    try:
        import fuzz_format
        import fuzz_tokenizer
    finally:
        sys.path.remove(FUZZ)
    return {"format": fuzz_format.check_one, "tokenizer": fuzz_tokenizer.check_one}


@pytest.mark.parametrize("name", ["format", "tokenizer"])
def test_replay_python_corpus(targets, name):
    """Each saved input through the atheris target's checks, without atheris (it raises on a finding)."""
    files = _corpus(name)
    assert len(files) >= 5, f"fuzz/corpus/{name} is missing"
    if name == "tokenizer" and sys.modules["fuzz_tokenizer"].atheris is None:
        pytest.skip("the tokenizer inputs are read through atheris's FuzzedDataProvider (pip install atheris)")
    for path in files:
        with open(path, "rb") as f:
            data = f.read()
        try:
            targets[name](data)
        except Exception as e:  # noqa: BLE001 - name the input
            raise AssertionError(f"{path}: {type(e).__name__}: {e}") from e


@pytest.mark.parametrize("target", ["fuzz_tokenizer", "fuzz_model_load"])
def test_replay_cpp_corpus(target):
    """The libFuzzer corpora through the ASan/UBSan harness binaries (built by fuzz/build_cpp.sh)."""
    binary = os.path.join(FUZZ, "build", target)
    if not os.access(binary, os.X_OK):
        pytest.skip(f"{binary} not built (fuzz/build_cpp.sh needs clang)")
    files = _corpus(target)
    assert files, f"fuzz/corpus/{target} is missing"
    env = dict(os.environ, ASAN_OPTIONS="detect_leaks=1:abort_on_error=1",
               PYGPT_FUZZ_VOCAB=os.path.join(FUZZ, "build", "gpt2-vocab.bin"))
    env.pop("LD_PRELOAD", None)  # (tools/sanitize.sh preloads gcc's ASan; the binaries carry clang's)
    r = subprocess.run([binary, *files], capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
