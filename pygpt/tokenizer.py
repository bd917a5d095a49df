"""GPT-2 byte-level BPE tokenizer, in C++ (csrc/tokenizer.cpp), with no tokenizer dependency.

    tok = pygpt.Tokenizer.from_dir("gpt2-tokenizer/")   # vocab.json + merges.txt (Hugging Face)
                                                        # or encoder.json + vocab.bpe (OpenAI)
    ids = tok.encode("Hello world")                     # [15496, 995]
    tok.decode(ids)                                     # 'Hello world'

Ids are those of OpenAI's GPT-2 encoder (= tiktoken's "gpt2" encoding = Hugging Face's
GPT2TokenizerFast). The pre-tokenizer classifies characters with Unicode 16.0 tables, the
version tiktoken's regex engine uses (`pygpt._core.unicode_version`).

Special tokens follow tiktoken's contract: by default "<|endoftext|>" in the text is encoded
as plain text; `allowed_special={"<|endoftext|>"}` or `allowed_special="all"` turns it into
its id. One difference: tiktoken's default is `disallowed_special="all"` (a special token's
text raises ValueError); ours is `disallowed_special=()`, and passing "all" gives tiktoken's
behaviour.

The files are parsed here with the json module; the C++ core receives plain, validated data
(the bytes of every token, merges as id pairs) and checks it again.
"""

from __future__ import annotations

import json
import os
import threading
from typing import AbstractSet, Iterable, Sequence, Union

from . import _core
from ._threads import check_threads
from ._core import ModelFormatError

ENDOFTEXT = "<|endoftext|>"
# (vocabulary, merges) file names: Hugging Face layout first, then OpenAI's original one.
LAYOUTS = (("vocab.json", "merges.txt"), ("encoder.json", "vocab.bpe"))

AllowedSpecial = Union[str, AbstractSet[str], Iterable[str]]


def bytes_to_unicode() -> dict:
    """GPT-2's reversible map from the 256 byte values to printable characters.

    Bytes that are printable Latin-1 characters ('!'..'~', '¡'..'¬', '®'..'ÿ') stand for
    themselves; the other 68 (control characters, space, NBSP, soft hyphen) are given the
    characters U+0100, U+0101, ... in byte order. So " the" is stored as "Ġthe" in vocab.json.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    mapping = {b: chr(b) for b in printable}
    shifted = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + shifted)
            shifted += 1
    return mapping


_BYTE_OF_CHAR = {c: b for b, c in bytes_to_unicode().items()}
# str.translate table: byte-level character -> the Latin-1 character of its byte; characters below
# U+0100 that are not in the byte-level alphabet go to a character Latin-1 cannot encode.
_TO_LATIN1 = {ord(c): chr(b) for c, b in _BYTE_OF_CHAR.items()}
_TO_LATIN1.update({cp: "\U0010ffff" for cp in range(256) if chr(cp) not in _BYTE_OF_CHAR})


def _token_to_bytes(token: str) -> bytes:
    """vocab.json key (byte-level characters) -> raw bytes; ValueError if not byte-level."""
    try:
        return token.translate(_TO_LATIN1).encode("latin-1")
    except UnicodeEncodeError:
        bad = next(c for c in token if c not in _BYTE_OF_CHAR)
        raise ValueError(f"token {token!r} has the character {bad!r} (U+{ord(bad):04X}), which is not in the "
                         "byte-level BPE alphabet") from None


def _read_text(path: str) -> str:
    with open(path, "rb") as f:
        raw = f.read()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ModelFormatError(f"{path}: not UTF-8 text: {e}") from None


def _load_vocab(path: str) -> dict:
    try:
        vocab = json.loads(_read_text(path))
    except json.JSONDecodeError as e:
        raise ModelFormatError(f"{path}: not valid JSON: {e}") from None
    except RecursionError:  # e.g. "[[[[..." nested deeper than the json module can parse
        raise ModelFormatError(f"{path}: not a vocabulary (JSON nested too deeply)") from None
    if not isinstance(vocab, dict) or not vocab:
        raise ModelFormatError(f"{path}: expected a JSON object mapping each token to its id")
    n = len(vocab)
    seen = {}
    for token, idx in vocab.items():
        if isinstance(idx, bool) or not isinstance(idx, int):
            raise ModelFormatError(f"{path}: id of token {token!r} must be an integer, got {idx!r}")
        if not 0 <= idx < n:
            raise ModelFormatError(f"{path}: id {idx} of token {token!r} is outside 0..{n - 1} "
                                   "(ids must be dense)")
        if idx in seen:
            raise ModelFormatError(f"{path}: tokens {seen[idx]!r} and {token!r} have the same id {idx}")
        seen[idx] = token
    return vocab


def _load_merges(path: str, vocab: dict) -> list:
    merges = []
    lines = _read_text(path).split("\n")
    first = 1 if lines and lines[0].startswith("#version") else 0
    for lineno, line in enumerate(lines[first:], start=first + 1):
        line = line.rstrip("\r")
        if not line:
            continue
        parts = line.split(" ")
        if len(parts) != 2 or not parts[0] or not parts[1]:
            raise ModelFormatError(f"{path}:{lineno}: expected two tokens separated by one space, got {line!r}")
        left, right = parts
        for part in parts:
            if part not in vocab:
                raise ModelFormatError(f"{path}:{lineno}: merge {line!r} uses {part!r}, "
                                       "which is not in the vocabulary")
        if left + right not in vocab:
            raise ModelFormatError(f"{path}:{lineno}: merge {line!r} makes {left + right!r}, "
                                   "which is not in the vocabulary")
        merges.append((vocab[left], vocab[right]))
    return merges


class StreamDecoder:
    """Incremental detokenizer for streaming generation.

    push(id) returns the text that is now complete: bytes of a character split across tokens
    are held back until the character is whole. Invalid bytes become U+FFFD. Joining every
    push() and the final flush() equals tok.decode(all_ids).
    """

    __slots__ = ("_dec",)

    def __init__(self, tokenizer: "Tokenizer"):
        self._dec = _core.StreamDecoder(tokenizer._core)

    def push(self, id: int) -> str:
        """Feed one token id; returns the newly completed text (often "")."""
        return self._dec.push(id)

    def flush(self) -> str:
        """End of stream: returns held-back bytes (as U+FFFD) and resets the decoder."""
        return self._dec.flush()

    def reset(self) -> None:
        """Drop held-back bytes."""
        self._dec.reset()

    @property
    def pending_bytes(self) -> int:
        """Number of bytes held back (0..3)."""
        return self._dec.pending_bytes


class Tokenizer:
    """GPT-2 byte-level BPE: text -> ids -> text. Thread-safe; encode/decode release the GIL."""

    def __init__(self, token_bytes: Sequence[bytes], merges: Sequence[tuple], special_tokens=None):
        """token_bytes[id] = raw bytes of that token; merges = (left id, right id) by rank;
        special_tokens = {text: id} (each token_bytes[id] must equal the UTF-8 of text)."""
        specials = dict(special_tokens or {})
        self._core = _core.Tokenizer(list(token_bytes), [tuple(m) for m in merges], list(specials.items()))
        self._specials = specials
        self._vocab_trie = None
        self._trie_lock = threading.Lock()
        self._containing = {}

    @classmethod
    def from_dir(cls, path: Union[str, os.PathLike], *, special_tokens: Iterable[str] = None) -> "Tokenizer":
        """Loads vocab.json + merges.txt (Hugging Face) or encoder.json + vocab.bpe (OpenAI) from a folder.

        special_tokens: vocabulary entries to treat as special tokens. Default: "<|endoftext|>"
        if the vocabulary has it. Raises FileNotFoundError if the files are missing and
        pygpt.ModelFormatError (a ValueError) if they are malformed.
        """
        path = os.fspath(path)
        if not os.path.isdir(path):
            raise FileNotFoundError(f"tokenizer folder not found: {path}")
        for vocab_name, merges_name in LAYOUTS:
            vocab_path, merges_path = os.path.join(path, vocab_name), os.path.join(path, merges_name)
            if os.path.isfile(vocab_path) or os.path.isfile(merges_path):
                for p in (vocab_path, merges_path):
                    if not os.path.isfile(p):
                        raise FileNotFoundError(f"tokenizer file missing: {p}")
                return cls.from_files(vocab_path, merges_path, special_tokens=special_tokens)
        raise FileNotFoundError(f"no tokenizer in {path}: expected vocab.json + merges.txt "
                                "or encoder.json + vocab.bpe")

    @classmethod
    def from_files(cls, vocab_path: str, merges_path: str, *, special_tokens: Iterable[str] = None) -> "Tokenizer":
        """Loads a vocabulary JSON file (token -> id) and a merges file ("left right" per line, by rank)."""
        vocab = _load_vocab(vocab_path)
        if special_tokens is None:
            names = [ENDOFTEXT] if ENDOFTEXT in vocab else []
        else:
            if isinstance(special_tokens, str):
                raise TypeError("special_tokens must be an iterable of str, not str")
            names = list(special_tokens)
            for name in names:
                if name not in vocab:
                    raise ValueError(f"special token {name!r} is not in {vocab_path}")
        specials = {name: vocab[name] for name in names}
        token_bytes = [b""] * len(vocab)
        for token, idx in vocab.items():
            if token in specials:
                token_bytes[idx] = token.encode("utf-8")
                continue
            try:
                token_bytes[idx] = _token_to_bytes(token)
            except ValueError as e:
                raise ModelFormatError(f"{vocab_path}: {e}") from None
        merges = _load_merges(merges_path, vocab)
        try:
            return cls(token_bytes, merges, specials)
        except ValueError as e:  # checks only the core makes (e.g. a byte without a token)
            raise ModelFormatError(f"{vocab_path}, {merges_path}: {e}") from None

    # -- encode ------------------------------------------------------------------------------

    def _allowed(self, allowed_special: AllowedSpecial):
        """-> True (all specials), False (none) or a list of special ids."""
        if isinstance(allowed_special, str):
            if allowed_special == "all":
                return True
            raise ValueError(f"allowed_special must be 'all' or a set of special token strings, "
                             f"got {allowed_special!r}")
        names = set(allowed_special)
        if not names:
            return False
        unknown = names - self._specials.keys()
        if unknown:
            raise ValueError(f"not special tokens of this tokenizer: {sorted(unknown)!r} "
                             f"(special tokens: {sorted(self._specials)!r})")
        if len(names) == len(self._specials):
            return True
        return [self._specials[name] for name in names]

    def _check_disallowed(self, text, allowed, disallowed_special):
        """tiktoken's disallowed_special: raise if text holds a special token that is disallowed."""
        if disallowed_special == "all":  # every special token that is not allowed
            if allowed is True:
                return
            disallowed = {name for name, i in self._specials.items() if not (allowed and i in allowed)}
        elif isinstance(disallowed_special, str):
            raise ValueError(f"disallowed_special must be 'all' or a set of special token strings, "
                             f"got {disallowed_special!r}")
        else:
            disallowed = set(disallowed_special)
        if isinstance(text, str):
            for name in disallowed:
                if name in text:
                    raise ValueError(f"text contains the special token {name!r}, which is disallowed; pass "
                                     f"allowed_special={{{name!r}}} to encode it as a special token, or "
                                     "disallowed_special=() to encode it as text")

    def encode(self, text: str, *, allowed_special: AllowedSpecial = frozenset(),
               disallowed_special: AllowedSpecial = ()) -> list:
        """Token ids of text. Special token texts are plain text unless listed in allowed_special
        (a set of strings, or "all"). disallowed_special (a set, or "all" = every special not
        allowed) makes such texts raise ValueError instead, as tiktoken does by default.
        Raises TypeError for non-str, ValueError for a str that is not valid Unicode (lone
        surrogates)."""
        if not allowed_special and not disallowed_special:
            return self._core.encode(text, False)
        allowed = self._allowed(allowed_special) if allowed_special else False
        if disallowed_special:
            self._check_disallowed(text, allowed, disallowed_special)
        return self._core.encode(text, allowed)

    def encode_ordinary(self, text: str) -> list:
        """encode(text) with every special token text treated as plain text."""
        return self._core.encode(text, False)

    def encode_batch(self, texts: Sequence[str], *, allowed_special: AllowedSpecial = frozenset(),
                     disallowed_special: AllowedSpecial = (), n_threads: int = None) -> list:
        """encode() of each text, in parallel on n_threads threads (default: all cores)."""
        if n_threads is None:
            n_threads = 0
        else:
            check_threads(n_threads)
        allowed = self._allowed(allowed_special) if allowed_special else False
        if disallowed_special and not isinstance(texts, str):
            texts = list(texts)
            for text in texts:
                self._check_disallowed(text, allowed, disallowed_special)
        if isinstance(allowed, list):  # a strict subset of the specials: not batched in C++
            if isinstance(texts, str):
                raise TypeError("texts must be a sequence of str, not str")
            return [self._core.encode(t, allowed) for t in texts]
        return self._core.encode_batch(texts, allowed, n_threads)

    # -- decode ------------------------------------------------------------------------------

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ids. Never raises for valid ids: invalid UTF-8 becomes U+FFFD (errors="replace").
        Ids outside [0, vocab_size): ValueError; non-int ids: TypeError."""
        return self._core.decode(ids)

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        """Concatenated raw bytes of ids (may be invalid UTF-8)."""
        return self._core.decode_bytes(ids)

    def token_bytes(self, id: int) -> bytes:
        """Raw bytes of one token."""
        return self._core.token_bytes(id)

    def vocab_trie(self) -> "_core.VocabTrie":
        """The ordinary tokens' bytes as a trie, for grammars; built on first use (about 20 ms)."""
        with self._trie_lock:
            if self._vocab_trie is None:
                self._vocab_trie = _core.VocabTrie(self._core)
            return self._vocab_trie

    def tokens_containing(self, texts: Sequence[str]) -> list:
        """Ids of the ordinary tokens whose bytes contain the UTF-8 of one of texts (kept for the
        next call with the same texts)."""
        key = tuple(texts)
        with self._trie_lock:
            if key not in self._containing:
                needles = [t.encode("utf-8") for t in key if t]
                specials = set(self._specials.values())
                self._containing[key] = [i for i in range(self.vocab_size) if i not in specials
                                         and any(n in self._core.token_bytes(i) for n in needles)]
            return self._containing[key]

    def stream_decoder(self) -> StreamDecoder:
        """A new incremental detokenizer (see StreamDecoder)."""
        return StreamDecoder(self)

    # -- properties --------------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        return self._core.vocab_size

    @property
    def eot_id(self) -> int:
        """Id of "<|endoftext|>", or -1 if this vocabulary has none."""
        return self._core.eot_id

    @property
    def special_tokens(self) -> dict:
        """{text: id} of the special tokens."""
        return dict(self._specials)

    @property
    def n_merges(self) -> int:
        return self._core.n_merges

    def __len__(self) -> int:
        return self.vocab_size

    def __repr__(self) -> str:
        return f"Tokenizer(vocab_size={self.vocab_size}, n_merges={self.n_merges}, eot_id={self.eot_id})"
