"""Writes a tokenizer as the flat binary the C++ fuzz targets read (they have no JSON parser).

    python fuzz/dump_vocab.py tests/data/gpt2-tokenizer fuzz/build/gpt2-vocab.bin

Layout, little-endian: u32 n_tokens, then per token u32 length + bytes; u32 n_merges, then per
merge i32 left + i32 right; u32 n_specials, then per special u32 length + text + i32 id.
The tokenizer is loaded with pygpt.Tokenizer's own file readers, so the C++ side gets exactly
the data the Python package hands the core.
"""

import argparse
import os
import struct
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from pygpt import tokenizer as T  # noqa: E402


def dump(folder: str, out: str) -> None:
    vocab_path, merges_path = os.path.join(folder, "vocab.json"), os.path.join(folder, "merges.txt")
    vocab = T._load_vocab(vocab_path)
    specials = {T.ENDOFTEXT: vocab[T.ENDOFTEXT]} if T.ENDOFTEXT in vocab else {}
    token_bytes = [b""] * len(vocab)
    for token, idx in vocab.items():
        token_bytes[idx] = token.encode() if token in specials else T._token_to_bytes(token)
    merges = T._load_merges(merges_path, vocab)
    parts = [struct.pack("<I", len(token_bytes))]
    parts += [struct.pack("<I", len(b)) + b for b in token_bytes]
    parts.append(struct.pack("<I", len(merges)))
    parts += [struct.pack("<ii", a, b) for a, b in merges]
    parts.append(struct.pack("<I", len(specials)))
    parts += [struct.pack("<I", len(t.encode())) + t.encode() + struct.pack("<i", i) for t, i in specials.items()]
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "wb") as f:
        f.write(b"".join(parts))


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder")
    ap.add_argument("out")
    a = ap.parse_args()
    dump(a.folder, a.out)
