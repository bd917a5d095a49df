"""atheris target: the model folder parsers (pygpt/_format.py) and the C++ loader behind them.

    python fuzz/fuzz_format.py fuzz/corpus/format -max_total_time=180      # fuzz
    python fuzz/fuzz_format.py fuzz/corpus/format -runs=0                  # replay the corpus

The first byte picks the file the rest becomes:
  even: model.safetensors of a tiny model folder -> pygpt.load (header parser, tensor checks,
        C++ TensorTable re-checks, mmap) and, when it loads, a forward pass and check_finite;
  odd:  config.json -> _format.read_config, then expected_tensors of what it accepted.
The only exception allowed out is pygpt.ModelFormatError; anything else (TypeError, KeyError,
RecursionError, MemoryError...) or a crash is a finding. Seeds: fuzz/make_seeds.py.
Run the C++ under ASan with tools/sanitize.sh --fuzz (this script, on the sanitized build).
"""

import atexit
import contextlib
import importlib.util
import os
import shutil
import sys
import tempfile

try:
    import atheris
except ImportError:  # replaying the corpus as a test (tests/test_fuzz_regressions.py) needs no atheris
    atheris = None

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
if importlib.util.find_spec("pygpt") is None:  # (tools/sanitize.sh puts a sanitized build first)
    sys.path.insert(0, ROOT)

with atheris.instrument_imports() if atheris else contextlib.nullcontext():
    import pygpt
    from pygpt import ModelFormatError, _format

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import seeds  # noqa: E402  (fuzz/seeds.py: the tiny valid folder the targets mutate)

WORK = tempfile.mkdtemp(prefix="pygpt-fuzz-format-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
atexit.register(shutil.rmtree, WORK, ignore_errors=True)
seeds.write_folder(WORK)
ST = os.path.join(WORK, "model.safetensors")
CONFIG = os.path.join(WORK, "config.json")
GOOD_CONFIG = open(CONFIG, "rb").read()
GOOD_ST = open(ST, "rb").read()


def check_one(data: bytes) -> None:
    if not data:
        return
    mode, body = data[0], data[1:]
    if mode % 2 == 0:
        with open(CONFIG, "wb") as f:
            f.write(GOOD_CONFIG)
        with open(ST, "wb") as f:
            f.write(body)
        try:
            m = pygpt.load(WORK, n_threads=1, check_finite=bool(mode & 2))
        except ModelFormatError:
            return
        m.logits([0, m.config["vocab_size"] - 1])
        m.close()
    else:
        with open(ST, "wb") as f:
            f.write(GOOD_ST)
        with open(CONFIG, "wb") as f:
            f.write(body)
        try:
            cfg = _format.read_config(WORK)
        except ModelFormatError:
            return
        # sizes the validator accepted must give a tensor list (not a MemoryError or overflow)
        if cfg["n_layer"] * cfg["n_embd"] < 1 << 16:
            try:
                _format.expected_tensors(cfg)
            except ModelFormatError:
                pass


def main() -> None:
    atheris.Setup(sys.argv, check_one)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
