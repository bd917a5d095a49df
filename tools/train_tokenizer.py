#!/usr/bin/env python3
"""Train a GPT-2-style byte-level BPE tokenizer on text files.

The result is a folder with vocab.json + merges.txt in the Hugging Face / OpenAI GPT-2
layout, which pygpt.Tokenizer (and tokenizers, transformers, ...) load:

  * GPT-2 pre-tokenization (the GPT-2 regex, no prefix space), byte-level alphabet;
  * ids 0..255 are the 256 single bytes, then one id per merge in merge order;
  * <|endoftext|> is the last id (vocab_size - 1), as in GPT-2 (50256).

The BPE training itself is done by Hugging Face `tokenizers` (pip install tokenizers).

    python tools/train_tokenizer.py corpus.txt more.txt -o my-tokenizer --vocab-size 4096
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

EOT = "<|endoftext|>"


def _gpt2_byte_order() -> list[str]:
    """The 256 byte characters in GPT-2's id order (printable bytes first).

    GPT-2 maps every byte to a printable unicode character (bytes_to_unicode in OpenAI's
    encoder.py); ids 0..255 of its vocab.json are those characters in this order.
    """
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    chars = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in chars:  # control bytes, space, ... are shifted above U+00FF
            chars[b] = chr(256 + extra)
            extra += 1
    return [chars[b] for b in printable] + [chars[b] for b in range(256) if b not in printable]


def train_tokenizer(files, out_dir, vocab_size=4096, min_frequency=2, show_progress=True):
    """Train a byte-level BPE on `files`; write vocab.json + merges.txt into `out_dir`.

    vocab_size counts everything: 256 bytes + merges + <|endoftext|>. Returns the
    number of entries written to vocab.json.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    files = [str(f) for f in files]
    for f in files:
        if not os.path.isfile(f):
            raise FileNotFoundError(f"training text not found: {f}")
    if vocab_size < 257 + 1:
        raise ValueError(f"vocab_size must be at least 258 (256 bytes, one merge, <|endoftext|>), got {vocab_size}")

    tok = Tokenizer(models.BPE())
    # use_regex=True is the GPT-2 split pattern; no prefix space, like GPT-2
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - 1,  # <|endoftext|> is appended after training
        min_frequency=min_frequency,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
        show_progress=show_progress,
    )
    tok.train(files, trainer)

    trained = json.loads(tok.to_str())["model"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in trained["merges"]]

    # Renumber GPT-2 style: the 256 bytes in GPT-2's order, then each merge's result in
    # merge order (the trainer's own numbering is the same up to the order of the bytes).
    byte_chars = _gpt2_byte_order()
    vocab = {c: i for i, c in enumerate(byte_chars)}
    for m in merges:
        a, b = m.split(" ")
        vocab.setdefault(a + b, len(vocab))
    vocab[EOT] = len(vocab)
    if len(vocab) != len(trained["vocab"]) + 1:
        raise RuntimeError("trained vocabulary and merges disagree; cannot write a GPT-2 layout")

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "vocab.json", "w", encoding="utf-8") as f:
        json.dump(vocab, f, ensure_ascii=False)
    with open(out / "merges.txt", "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n")
        for m in merges:
            f.write(m + "\n")
    return len(vocab)


def load_hf_tokenizer(tok_dir):
    """The folder's vocab.json + merges.txt as a Hugging Face `tokenizers` GPT-2 tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    tok_dir = Path(tok_dir)
    bpe = models.BPE.from_file(str(tok_dir / "vocab.json"), str(tok_dir / "merges.txt"))
    tok = Tokenizer(bpe)
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    return tok


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("files", nargs="+", help="UTF-8 text files to train on")
    p.add_argument("-o", "--out", required=True, help="output folder (vocab.json, merges.txt)")
    p.add_argument("--vocab-size", type=int, default=4096,
                   help="total vocabulary: 256 bytes + merges + <|endoftext|> (default 4096)")
    p.add_argument("--min-frequency", type=int, default=2, help="drop merges seen fewer times (default 2)")
    args = p.parse_args(argv)
    try:
        n = train_tokenizer(args.files, args.out, args.vocab_size, args.min_frequency)
    except (FileNotFoundError, ValueError) as e:
        sys.exit(f"error: {e}")
    print(f"wrote {args.out}/vocab.json ({n} tokens, <|endoftext|> = {n - 1}) and merges.txt")


if __name__ == "__main__":
    main()
