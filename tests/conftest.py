"""Shared fixtures: random-weight GPT-2 models in Hugging Face format, converted by our
converter. Real pretrained weights cannot be downloaded here; random weights with the
real shapes exercise the same code."""

import contextlib
import importlib.util
import json
import os
import re
import sys
import threading
import urllib.error
import urllib.request

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "data")
GPT2_TOKENIZER = os.path.join(DATA, "gpt2-tokenizer")

# name -> GPT2Config arguments
SHAPES = {
    "tiny": dict(n_layer=2, n_head=2, n_embd=32, n_positions=64, vocab_size=50257),
    "odd": dict(n_layer=3, n_head=3, n_embd=36, n_positions=37, vocab_size=1001, bos_token_id=0, eos_token_id=0),
    "gpt2": dict(n_layer=12, n_head=12, n_embd=768, n_positions=1024, vocab_size=50257),
}


def make_hf_model(path, seed=0, **shape):
    """A GPT2LMHeadModel with seeded random weights, saved with save_pretrained (a test that
    needs one is skipped where torch and transformers are not installed)."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    GPT2Config, GPT2LMHeadModel = transformers.GPT2Config, transformers.GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(**shape)
    model = GPT2LMHeadModel(config).eval()
    # the default init leaves biases and LayerNorm at 0/1: randomise them so they are tested
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".bias") or ".ln_" in name:
                p.add_(torch.randn_like(p) * 0.05)
    model.save_pretrained(path)
    return model


def write_bin_folder(model, hf_dir, folder):
    """A Hugging Face folder with the model pickled (pytorch_model.bin) and hf_dir's config."""
    torch = pytest.importorskip("torch")

    os.makedirs(folder, exist_ok=True)
    torch.save(model.state_dict(), os.path.join(folder, "pytorch_model.bin"))
    with open(os.path.join(hf_dir, "config.json")) as src, open(os.path.join(folder, "config.json"), "w") as dst:
        dst.write(src.read())
    return str(folder)


@pytest.fixture(scope="session", autouse=True)
def subprocesses_import_the_tested_pygpt():
    """Child Pythons (CLI, tools, isolation tests) must import the pygpt under test. With
    `python -c` or `-m`, Python puts the working directory first on sys.path, and in CI that
    is a source tree whose pygpt/ has no compiled _core: PYTHONSAFEPATH (3.11+) turns that
    off (before 3.11, the tests run from an empty folder instead), and PYTHONPATH names the
    tested package's parent."""
    import tempfile

    import pygpt

    parent = os.path.dirname(os.path.dirname(os.path.abspath(pygpt.__file__)))
    old = {k: os.environ.get(k) for k in ("PYTHONSAFEPATH", "PYTHONPATH")}
    os.environ["PYTHONSAFEPATH"] = "1"
    os.environ["PYTHONPATH"] = parent + (os.pathsep + old["PYTHONPATH"] if old["PYTHONPATH"] else "")
    cwd = os.getcwd()
    with tempfile.TemporaryDirectory() as empty:
        if sys.version_info < (3, 11):
            os.chdir(empty)
        yield
        os.chdir(cwd)
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def hf_model_factory(tmp_path_factory):
    """hf_model_factory(name) -> (torch model, hf folder, pygpt folder), built once per session."""
    import pygpt.convert

    cache = {}

    def get(name):
        if name not in cache:
            base = tmp_path_factory.mktemp(name)
            hf_dir, out_dir = str(base / "hf"), str(base / "pygpt")
            model = make_hf_model(hf_dir, **SHAPES[name])
            tok = GPT2_TOKENIZER if SHAPES[name]["vocab_size"] == 50257 else None
            pygpt.convert.convert(hf_dir, out_dir, tokenizer=tok)
            cache[name] = (model, hf_dir, out_dir)
        return cache[name]

    return get


@pytest.fixture(scope="session")
def load_tool():
    """load_tool(name) -> the module tools/<name>.py, loaded from its file (tools/ is no package)."""

    def load(name):
        spec = importlib.util.spec_from_file_location(name, os.path.join(os.path.dirname(HERE), "tools", name + ".py"))
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load


def console_script_entry():
    """'module:function' of the pygpt script in pyproject.toml."""
    with open(os.path.join(os.path.dirname(HERE), "pyproject.toml"), encoding="utf-8") as f:
        m = re.search(r'^pygpt\s*=\s*"([\w.]+):(\w+)"', f.read(), re.M)
    assert m, "pyproject.toml has no [project.scripts] pygpt entry"
    return m.group(1), m.group(2)


@pytest.fixture(scope="session")
def pygpt_cmd(tmp_path_factory):
    """The installed `pygpt` script; in a source tree without an install, a launcher written
    the way pip writes console scripts, from the pyproject.toml entry point."""
    import shutil

    found = shutil.which("pygpt")
    if found:
        return [found]
    module, func = console_script_entry()
    path = tmp_path_factory.mktemp("bin") / "pygpt"
    path.write_text(f"#!{sys.executable}\nimport sys\nfrom {module} import {func}\nsys.exit({func}())\n")
    path.chmod(0o755)
    return [str(path)]


# -- pygpt serve ---------------------------------------------------------------------------------


@contextlib.contextmanager
def serving(model, **options):
    """A pygpt.server.Server over model on a free port, in a thread: yields its base URL."""
    from pygpt import server

    srv = server.Server(model, "127.0.0.1", 0, **options)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}"
    finally:
        srv.shutdown()
        srv.server_close()
        t.join(timeout=30)


def post(url, body, path="/v1/completions", raw=None):
    """(status, response text) of a POST of body as JSON (or of the bytes raw)."""
    data = raw if raw is not None else json.dumps(body).encode()
    req = urllib.request.Request(url + path, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def get(url, path):
    with urllib.request.urlopen(url + path, timeout=60) as r:
        return r.status, json.loads(r.read())


def sse_events(text) -> list:
    """The events of a server-sent event stream: its JSON objects, then "[DONE]" if it ended so."""
    events = [e for e in text.split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events), events
    return [e[len("data: "):] if e == "data: [DONE]" else json.loads(e[len("data: "):]) for e in events]
