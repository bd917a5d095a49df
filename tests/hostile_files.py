"""Tiny pygpt model folders written byte by byte (numpy only, no torch), and the hostile
variants of them used by test_hostile.py, test_fuzz_regressions.py and the fuzz targets.

A model here is small enough (n_embd 8, one layer) that loading one costs about a millisecond,
so hundreds of corrupted files can be tried in a test run.
"""

from __future__ import annotations

import json
import os
import struct

import numpy as np

from pygpt import _format
from pygpt.convert import to_bf16_bits
from pygpt.tokenizer import bytes_to_unicode

TINY = dict(n_layer=1, n_head=2, n_embd=8, n_ctx=16, vocab_size=300)


def tiny_config(**over) -> dict:
    cfg = {"format": "pygpt", "format_version": 1, "architecture": "gpt2", **TINY,
           "layer_norm_epsilon": 1e-5, "activation": "gelu_tanh", "bias": True, "dtype": "f32"}
    cfg.update(over)
    return cfg


def tiny_tensors(cfg: dict, seed: int = 0) -> dict:
    """{name: (safetensors dtype, raw little-endian bytes, shape)} of a random model."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, (dtype, shape) in _format.expected_tensors(cfg).items():
        w = rng.standard_normal(shape).astype(np.float32) * 0.2
        if name.endswith("ln_1.weight") or name.endswith("ln_2.weight") or name == "ln_f.weight":
            w += 1.0
        if dtype == "F32":
            raw = w.astype("<f4").tobytes()
        elif dtype == "F16":
            raw = w.astype("<f2").tobytes()
        elif dtype == "BF16":
            raw = to_bf16_bits(w).astype("<u2").tobytes()
        else:
            raise ValueError(f"tiny models are float only, not {dtype}")
        out[name] = (dtype, raw, list(shape))
    return out


def pack_safetensors(tensors: dict, header_pad: int = 0, align: int = 8, metadata=None):
    """(file bytes, header dict) of a safetensors file holding tensors in the given order.

    The JSON is padded with spaces so that the data area starts at a multiple of 8 (as the
    safetensors writer does), then header_pad more spaces (1..7 misalign every tensor);
    align: the data of every tensor starts at a multiple of `align` within the data area.
    """
    header, chunks, pos = {}, [], 0
    if metadata is not None:
        header["__metadata__"] = metadata
    for name, (dtype, raw, shape) in tensors.items():
        pad = (-pos) % align
        chunks.append(b"\0" * pad)
        pos += pad
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [pos, pos + len(raw)]}
        chunks.append(raw)
        pos += len(raw)
    text = json.dumps(header).encode()
    text += b" " * ((-(8 + len(text))) % 8 + header_pad)
    return pack_raw(text, b"".join(chunks)), header


def pack_raw(header_bytes: bytes, data: bytes, header_len: int | None = None) -> bytes:
    n = len(header_bytes) if header_len is None else header_len
    return struct.pack("<Q", n) + header_bytes + data


def split_safetensors(raw: bytes):
    """(header dict, data bytes) of a valid file."""
    n = struct.unpack("<Q", raw[:8])[0]
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def byte_level_vocab(n_merges: int = 20):
    """(vocab {token: id}, merges lines) of a small valid byte-level BPE: the 256 bytes, a few
    merges, then <|endoftext|>. Its vocab_size (257 + n_merges) fits TINY's 300."""
    b2u = bytes_to_unicode()
    vocab = {b2u[b]: b for b in range(256)}
    merges = []
    pairs = [("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("i", "n"), ("a", "n"), ("e", "r"), ("o", "n"),
             ("Ġ", "a"), ("r", "e"), ("a", "t"), ("Ġ", "s"), ("e", "n"), ("o", "r"), ("Ġ", "w"),
             ("e", "s"), ("i", "s"), ("Ġ", "o"), ("i", "t"), ("a", "r"), ("Ġ", "c")]
    for left, right in pairs[:n_merges]:
        vocab[left + right] = len(vocab)
        merges.append(f"{left} {right}")
    vocab["<|endoftext|>"] = len(vocab)
    return vocab, merges


def write_model(folder, cfg: dict | None = None, tensors: dict | None = None, tokenizer: bool = False,
                seed: int = 0, **pack_kw) -> str:
    """Writes a tiny model folder; returns its path."""
    folder = os.fspath(folder)
    os.makedirs(folder, exist_ok=True)
    cfg = tiny_config() if cfg is None else cfg
    if tensors is None:
        tensors = tiny_tensors(cfg, seed)
    raw, _ = pack_safetensors(tensors, **pack_kw)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(cfg, f)
    with open(os.path.join(folder, "model.safetensors"), "wb") as f:
        f.write(raw)
    if tokenizer:
        vocab, merges = byte_level_vocab()
        with open(os.path.join(folder, "vocab.json"), "w", encoding="utf-8") as f:
            json.dump(vocab, f, ensure_ascii=False)
        with open(os.path.join(folder, "merges.txt"), "w", encoding="utf-8") as f:
            f.write("#version: 0.2\n" + "\n".join(merges) + "\n")
    return folder
