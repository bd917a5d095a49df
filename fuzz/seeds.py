"""The smallest valid model folder, shared by the fuzz targets and their seed corpora.

    python fuzz/seeds.py        # (re)writes the seed inputs into fuzz/corpus/<target>/
"""

import json
import os
import struct
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))
sys.path.append(os.path.join(HERE, ".."))  # pygpt: whatever is importable first (a sanitized build), else the tree

import hostile_files as hf  # noqa: E402

CFG = hf.tiny_config(n_layer=1, n_head=1, n_embd=4, n_ctx=4, vocab_size=8)


def write_folder(path: str) -> None:
    hf.write_model(path, cfg=CFG, seed=0)


def hf_tokenizer_json(matching: bool = False) -> dict:
    """A small tokenizer.json as transformers saves one: the 256 bytes and a few merges, with
    added tokens (special and not) past the vocabulary; matching: two more with the matching
    flags (lstrip and rstrip, single_word)."""
    vocab, merges = hf.byte_level_vocab(n_merges=8)
    n = len(vocab)
    added = [{"id": n, "content": "<|im_start|>", "special": True}, {"id": n + 1, "content": " word", "special": False}]
    if matching:
        added += [{"id": n + 2, "content": "<B>", "lstrip": True, "rstrip": True},
                  {"id": n + 3, "content": "<W>", "single_word": True, "special": True}]
    return {"version": "1.0", "added_tokens": added, "normalizer": None,
            "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
            "post_processor": None, "decoder": {"type": "ByteLevel"},
            "model": {"type": "BPE", "vocab": vocab, "merges": [m.split(" ") for m in merges]}}


def main() -> None:
    raw, header = hf.pack_safetensors(hf.tiny_tensors(CFG))
    cfg = json.dumps(CFG).encode()
    fmt = {
        "st-valid": b"\x00" + raw,
        "st-valid-checked": b"\x02" + raw,
        "st-header-only": b"\x00" + raw[:8 + struct.unpack("<Q", raw[:8])[0]],
        "st-empty-object": b"\x00" + hf.pack_raw(b"{}", b""),
        "config-valid": b"\x01" + cfg,
        "config-int8": b"\x01" + json.dumps(dict(CFG, dtype="int8", quant_group_size=64)).encode(),
        "config-nested": b"\x01" + b'{"a": [[[{"b": 1e999}]]]}',
    }
    tok = {
        "encode-ascii": b"\x00Hello world, it's 2024!  \n\tok",
        "encode-unicode": b"\x00" + "naïve café — 日本語 🙂\u200b x".encode(),
        "encode-special": b"\x01<|endoftext|>the<|endoftext|>",
        "surrogates": b"\x02abc\xed\xa0\x80def\xff",
        "decode": b"\x03" + struct.pack("<8i", 15496, 995, 50256, 220, 94, 127, 4, 50257),
        "files": b"\x04" + json.dumps({"a": 0, "b": 1, "ab": 2}).encode() + b"\x00a b\n",
        "hf-json": b"\x05" + json.dumps(hf_tokenizer_json()).encode(),
        "hf-json-matching": b"\x05" + json.dumps(hf_tokenizer_json(matching=True)).encode(),
    }
    for target, seeds in (("format", fmt), ("tokenizer", tok)):
        d = os.path.join(HERE, "corpus", target)
        os.makedirs(d, exist_ok=True)
        for name, data in seeds.items():
            with open(os.path.join(d, name), "wb") as f:
                f.write(data)


if __name__ == "__main__":
    main()
