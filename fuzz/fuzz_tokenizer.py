"""atheris target: pygpt.Tokenizer with the real GPT-2 vocabulary, through the Python API.

    python fuzz/fuzz_tokenizer.py fuzz/corpus/tokenizer -max_total_time=180
    python fuzz/fuzz_tokenizer.py fuzz/corpus/tokenizer -runs=0            # replay the corpus

The first byte picks the operation on the rest:
  0: encode a str (no surrogates): ids in range, decode(encode(s)) == s, batch == single
  1: the same with allowed_special="all" (special token texts become their id)
  2: arbitrary bytes as a str with lone surrogates (surrogateescape): encode must raise
     ValueError (UnicodeEncodeError) if it has any, else round-trip
  3: decode arbitrary ids (int32): ValueError if one is out of range, else decode == the
     streamed text (StreamDecoder push + flush) == decode_bytes decoded with errors="replace"
  4: tokenizer files from the input (vocab.json NUL merges.txt): ModelFormatError or a
     tokenizer that round-trips
  5: a Hugging Face tokenizer.json from the input: ModelFormatError or a tokenizer that
     round-trips (its added tokens too: their bytes are their text; those that strip the
     white space around them drop it, so there only the text without white space must)
Only those exceptions may escape; anything else, a wrong round trip or a crash is a finding.
"""

import json
import atexit
import contextlib
import importlib.util
import os
import shutil
import sys
import tempfile
import warnings

try:
    import atheris
except ImportError:  # replaying the corpus as a test (tests/test_fuzz_regressions.py) needs no atheris
    atheris = None

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
if importlib.util.find_spec("pygpt") is None:  # (tools/sanitize.sh puts a sanitized build first)
    sys.path.insert(0, ROOT)

with atheris.instrument_imports() if atheris else contextlib.nullcontext():
    from pygpt import ModelFormatError
    from pygpt.tokenizer import Tokenizer

TOK = Tokenizer.from_dir(os.path.join(ROOT, "tests", "data", "gpt2-tokenizer"))
V = TOK.vocab_size
WORK = tempfile.mkdtemp(prefix="pygpt-fuzz-tok-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
atexit.register(shutil.rmtree, WORK, ignore_errors=True)


# Unicode's White_Space (what an added token's lstrip / rstrip takes)
WHITE_SPACE = {chr(c) for c in [*range(0x09, 0x0E), 0x20, 0x85, 0xA0, 0x1680, *range(0x2000, 0x200B), 0x2028, 0x2029,
                                0x202F, 0x205F, 0x3000]}


def without_white_space(text: str) -> str:
    return "".join(c for c in text if c not in WHITE_SPACE)


def roundtrip(tok, text: str, allowed=frozenset()) -> None:
    ids = tok.encode(text, allowed_special=allowed)
    assert all(0 <= i < tok.vocab_size for i in ids), ids
    back = tok.decode(ids)
    if tok.matching:  # white space beside a token that strips it is dropped
        assert without_white_space(back) == without_white_space(text), (text, ids, back)
    else:
        assert back == text, (text, ids, back)
    assert tok.encode_batch([text, text], allowed_special=allowed, n_threads=2) == [ids, ids]


def check_one(data: bytes) -> None:
    if not data:
        return
    mode, body = data[0] % 6, data[1:]
    fdp = atheris.FuzzedDataProvider(body)
    if mode in (0, 1):
        text = fdp.ConsumeUnicodeNoSurrogates(len(body))
        roundtrip(TOK, text, "all" if mode == 1 else frozenset())
    elif mode == 2:
        text = body.decode("utf-8", "surrogateescape")
        has_surrogate = any(0xD800 <= ord(c) <= 0xDFFF for c in text)
        try:
            roundtrip(TOK, text)
        except UnicodeEncodeError:
            assert has_surrogate
            return
        assert not has_surrogate
    elif mode == 3:
        ids = [fdp.ConsumeIntInRange(-2**31, 2**31 - 1) if fdp.ConsumeBool() else fdp.ConsumeIntInRange(0, V - 1)
               for _ in range(min(len(body) // 3, 512))]
        in_range = all(0 <= i < V for i in ids)
        try:
            text = TOK.decode(ids)
        except ValueError:
            assert not in_range
            return
        assert in_range
        dec = TOK.stream_decoder()
        streamed = "".join(dec.push(i) for i in ids) + dec.flush()
        assert streamed == text
        assert TOK.decode_bytes(ids).decode("utf-8", "replace") == text
    elif mode == 5:
        folder = os.path.join(WORK, "hf")
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, "tokenizer.json"), "wb") as f:
            f.write(body)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # a post-processor that adds tokens is named in a warning
                tok = Tokenizer.from_dir(folder)
        except ModelFormatError:
            return
        roundtrip(tok, fdp.ConsumeUnicodeNoSurrogates(64))
    else:
        vocab_text, _, merges_text = body.partition(b"\0")
        vocab_path, merges_path = os.path.join(WORK, "vocab.json"), os.path.join(WORK, "merges.txt")
        with open(vocab_path, "wb") as f:
            f.write(vocab_text)
        with open(merges_path, "wb") as f:
            f.write(merges_text)
        try:
            tok = Tokenizer.from_files(vocab_path, merges_path)
        except ModelFormatError:
            return
        roundtrip(tok, fdp.ConsumeUnicodeNoSurrogates(64))  # the core insists on all 256 bytes


def main() -> None:
    atheris.Setup(sys.argv, check_one)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
