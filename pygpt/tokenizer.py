"""GPT-2 byte-level BPE tokenizer, in C++ (csrc/tokenizer.cpp), with no tokenizer dependency.

    tok = pygpt.Tokenizer.from_dir("gpt2-tokenizer/")   # tokenizer.json, vocab.json + merges.txt
                                                        # (Hugging Face) or encoder.json + vocab.bpe
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

A fine-tune's added tokens (Hugging Face's tokenizer.json, or tokenizer_config.json beside
vocab.json) extend the vocabulary: the special ones are special tokens, the others are always
matched whole before BPE, as transformers does, each with its lstrip, rstrip and
single_word flags (docs/FORMAT.md).

The files are parsed here with the json module; the C++ core receives plain, validated data
(the bytes of every token, merges as id pairs) and checks it again.
"""

from __future__ import annotations

import json
import os
import threading
import warnings
from typing import AbstractSet, Iterable, Optional, Sequence, Union

from . import _core
from ._threads import check_threads
from ._core import ModelFormatError

ENDOFTEXT = "<|endoftext|>"
# (vocabulary, merges) file names: Hugging Face layout first, then OpenAI's original one.
LAYOUTS = (("vocab.json", "merges.txt"), ("encoder.json", "vocab.bpe"))
# The `tokenizers` library's file: what transformers saves (alone, since transformers 5).
HF_TOKENIZER = "tokenizer.json"
# Where transformers (4.34 and later) lists the added tokens of a tokenizer saved as vocab.json + merges.txt.
HF_TOKENIZER_CONFIG = "tokenizer_config.json"


def find_tokenizer(folder) -> Optional[str]:
    """The file that makes `folder` hold a tokenizer (tokenizer.json, vocab.json, encoder.json),
    or None."""
    for name in (HF_TOKENIZER, *(vocab for vocab, _ in LAYOUTS)):
        if os.path.isfile(os.path.join(folder, name)):
            return name
    return None

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


def _load_json(path: str, what: str):
    try:
        return json.loads(_read_text(path))
    except json.JSONDecodeError as e:
        raise ModelFormatError(f"{path}: not valid JSON: {e}") from None
    except RecursionError:  # e.g. "[[[[..." nested deeper than the json module can parse
        raise ModelFormatError(f"{path}: not {what} (JSON nested too deeply)") from None


def _check_vocab(vocab, where: str) -> dict:
    if not isinstance(vocab, dict) or not vocab:
        raise ModelFormatError(f"{where}: expected a JSON object mapping each token to its id")
    n = len(vocab)
    seen = {}
    for token, idx in vocab.items():
        if isinstance(idx, bool) or not isinstance(idx, int):
            raise ModelFormatError(f"{where}: id of token {token!r} must be an integer, got {idx!r}")
        if not 0 <= idx < n:
            raise ModelFormatError(f"{where}: id {idx} of token {token!r} is outside 0..{n - 1} "
                                   "(ids must be dense)")
        if idx in seen:
            raise ModelFormatError(f"{where}: tokens {seen[idx]!r} and {token!r} have the same id {idx}")
        seen[idx] = token
    return vocab


def _load_vocab(path: str) -> dict:
    return _check_vocab(_load_json(path, "a vocabulary"), path)


def _merge_ids(pairs, vocab: dict) -> list:
    """[(where, left, right)] of token strings -> [(left id, right id)], each checked."""
    merges = []
    for where, left, right in pairs:
        for part in (left, right):
            if part not in vocab:
                raise ModelFormatError(f"{where}: merge {left + ' ' + right!r} uses {part!r}, "
                                       "which is not in the vocabulary")
        if left + right not in vocab:
            raise ModelFormatError(f"{where}: merge {left + ' ' + right!r} makes {left + right!r}, "
                                   "which is not in the vocabulary")
        merges.append((vocab[left], vocab[right]))
    return merges


def _load_merges(path: str, vocab: dict) -> list:
    pairs = []
    lines = _read_text(path).split("\n")
    first = 1 if lines and lines[0].startswith("#version") else 0
    for lineno, line in enumerate(lines[first:], start=first + 1):
        line = line.rstrip("\r")
        if not line:
            continue
        parts = line.split(" ")
        if len(parts) != 2 or not parts[0] or not parts[1]:
            raise ModelFormatError(f"{path}:{lineno}: expected two tokens separated by one space, got {line!r}")
        pairs.append((f"{path}:{lineno}", *parts))
    return _merge_ids(pairs, vocab)


def _expect(cond: bool, where: str, what: str) -> None:
    if not cond:
        raise ModelFormatError(f"{where}: {what}: pygpt reads GPT-2's byte-level BPE only")


def _read_tokenizer_json(path: str):
    """(vocab, merges as [(where, left, right)], added tokens [(id, text, special)]) of a
    tokenizer.json, refused unless it describes GPT-2's tokenizer: a byte-level BPE with
    GPT-2's pre-tokenizer and no normalizer."""
    tj = _load_json(path, "a tokenizer")
    if not isinstance(tj, dict) or not isinstance(tj.get("model"), dict):
        raise ModelFormatError(f"{path}: not a tokenizers file (no \"model\" object)")
    model = tj["model"]
    _expect(model.get("type") == "BPE", path, f"the model is {model.get('type')!r}, not BPE")
    for key in ("dropout", "continuing_subword_prefix", "end_of_word_suffix"):
        _expect(not model.get(key), path, f"the BPE has {key} {model.get(key)!r}")
    for key in ("byte_fallback", "ignore_merges"):
        _expect(not model.get(key), path, f"the BPE has {key} set")
    pre = tj.get("pre_tokenizer")
    _expect(isinstance(pre, dict) and pre.get("type") == "ByteLevel" and pre.get("use_regex", True)
            and not pre.get("add_prefix_space", False), path,
            f"the pre-tokenizer is {pre!r}, not GPT-2's (ByteLevel, use_regex, no add_prefix_space)")
    _expect(tj.get("normalizer") is None, path, f"it has a normalizer, {tj.get('normalizer')!r}")
    decoder = tj.get("decoder")
    _expect(decoder is None or isinstance(decoder, dict) and decoder.get("type") == "ByteLevel", path,
            f"the decoder is {decoder!r}, not ByteLevel")
    vocab = _check_vocab(model.get("vocab"), f"{path}: model.vocab")
    raw = model.get("merges")
    if not isinstance(raw, list):
        raise ModelFormatError(f"{path}: model.merges must be a list")
    pairs = []
    for k, m in enumerate(raw):
        parts = m.split(" ") if isinstance(m, str) else m  # "a b" (tokenizers < 0.20) or ["a", "b"]
        if (not isinstance(parts, list) or len(parts) != 2
                or not all(isinstance(x, str) and x for x in parts)):
            raise ModelFormatError(f"{path}: model.merges[{k}] must be two tokens, got {m!r}")
        pairs.append((f"{path}: model.merges[{k}]", *parts))
    _warn_of_post_processor(tj.get("post_processor"), path)
    added = tj.get("added_tokens", [])
    if not isinstance(added, list):
        raise ModelFormatError(f"{path}: added_tokens must be a list")
    return vocab, pairs, [_added_token(t, t.get("id") if isinstance(t, dict) else None, path) for t in added]


def _warn_of_post_processor(post, where: str) -> None:
    """A post-processor that adds tokens to every text (transformers' add_bos_token, say) is not
    followed: pygpt's encode gives the text's tokens only. Say so once, at load."""
    processors = post.get("processors", []) if isinstance(post, dict) and post.get("type") == "Sequence" else [post]
    for p in processors:
        if not isinstance(p, dict):
            continue
        if p.get("type") in ("BertProcessing", "RobertaProcessing") or (
                p.get("type") == "TemplateProcessing" and any(
                    isinstance(piece, dict) and "SpecialToken" in piece for piece in p.get("single", []))):
            warnings.warn(f"{where}: its post-processor ({p.get('type')}) adds special tokens to each text "
                          "(as transformers' add_bos_token does); pygpt's encode and generate do not: put "
                          "them in the prompt where the model expects them", stacklevel=4)
            return


MATCH_FLAGS = ("lstrip", "rstrip", "single_word")


def _added_token(t, id, where: str):
    """(id, text, special, matching) of one of Hugging Face's added tokens (an AddedToken's
    dict); matching: {flag: True} of its MATCH_FLAGS set."""
    if (not isinstance(t, dict) or isinstance(id, bool) or not isinstance(id, int)
            or not isinstance(t.get("content"), str) or not t["content"]):
        raise ModelFormatError(f"{where}: an added token must have an integer id and a non-empty "
                               f"content, got {t!r}")
    for flag in (*MATCH_FLAGS, "special"):
        if not isinstance(t.get(flag, False), bool):
            raise ModelFormatError(f"{where}: added token {t['content']!r} has {flag} {t[flag]!r}, "
                                   "not true or false")
    return id, t["content"], t.get("special", False), {flag: True for flag in MATCH_FLAGS if t.get(flag)}


def _config_added_tokens(folder: str) -> list:
    """The added tokens listed in a folder's tokenizer_config.json (added_tokens_decoder), beside
    a vocab.json + merges.txt; []: none. A legacy added_tokens.json without that list is refused."""
    path = os.path.join(folder, HF_TOKENIZER_CONFIG)
    config = _load_json(path, "a tokenizer config") if os.path.isfile(path) else {}
    if not isinstance(config, dict):
        raise ModelFormatError(f"{path}: expected a JSON object")
    decoder = config.get("added_tokens_decoder")
    if decoder is None:
        legacy = os.path.join(folder, "added_tokens.json")
        if os.path.isfile(legacy):
            raise ModelFormatError(f"{legacy}: added tokens listed there alone are not read; save the "
                                   "tokenizer again with transformers (4.34 or later writes them to "
                                   "tokenizer_config.json, 5 to tokenizer.json)")
        return []
    if not isinstance(decoder, dict):
        raise ModelFormatError(f"{path}: added_tokens_decoder must be an object")
    added = []
    for key, t in decoder.items():
        try:
            id = int(key)
        except ValueError:
            raise ModelFormatError(f"{path}: added_tokens_decoder key {key!r} is not an id") from None
        added.append(_added_token(t, id, path))
    return added


def _check_added(added: list, vocab: dict, where: str) -> list:
    """The added tokens, checked: one inside the vocabulary is that token; the others take the
    ids that follow the vocabulary, with no gap; no two share an id or a text."""
    n = len(vocab)
    token_of = {j: t for t, j in vocab.items()} if any(i < n for i, *_ in added) else {}
    ids, texts = set(), set()
    for i, text, *_ in added:
        if i in ids or text in texts:
            raise ModelFormatError(f"{where}: added token {text!r} (id {i}) repeats an id or a text")
        ids.add(i)
        texts.add(text)
        if i < 0:
            raise ModelFormatError(f"{where}: added token {text!r} has the negative id {i}")
        if i < n and token_of[i] != text and _bytes_or_none(token_of[i]) != text.encode("utf-8"):
            raise ModelFormatError(f"{where}: added token {text!r} has id {i}, which the vocabulary "
                                   f"gives to {token_of[i]!r}")
        if i >= n and text in vocab:
            raise ModelFormatError(f"{where}: added token {text!r} has id {i}, but the vocabulary has "
                                   f"it as {vocab[text]}")
    beyond = sorted(i for i in ids if i >= n)
    if beyond != list(range(n, n + len(beyond))):
        raise ModelFormatError(f"{where}: the added tokens' ids past the vocabulary ({n} tokens) must "
                               f"be {n}, {n + 1}, ... with no gap, got {beyond[:8]}")
    return added


def _bytes_or_none(token: str):
    try:
        return _token_to_bytes(token)
    except ValueError:
        return None


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

    def __init__(self, token_bytes: Sequence[bytes], merges: Sequence[tuple], special_tokens=None,
                 added_tokens=None, matching=None):
        """token_bytes[id] = raw bytes of that token; merges = (left id, right id) by rank;
        special_tokens = {text: id} (each token_bytes[id] must equal the UTF-8 of text);
        added_tokens = {text: id}, likewise: tokens that are not special but, as Hugging Face's
        added tokens, are always matched whole in a text before BPE. matching = {text: {flag:
        bool}} for special or added tokens matched as Hugging Face's AddedToken flags say:
        "lstrip" (the white space before the token is part of it, dropped), "rstrip" (the white
        space after it) and "single_word" (matched only where no word character touches it)."""
        specials = dict(special_tokens or {})
        added = dict(added_tokens or {})
        both = specials.keys() & added.keys()
        if both:
            raise ValueError(f"tokens both special and added: {sorted(both)!r}")
        matching = {text: self._flags(text, flags) for text, flags in dict(matching or {}).items()}
        unknown = matching.keys() - specials.keys() - added.keys()
        if unknown:
            raise ValueError(f"matching names tokens that are neither special nor added: {sorted(unknown)!r}")
        tokens = list(specials.items()) + list(added.items())
        self._core = _core.Tokenizer(
            list(token_bytes), [tuple(m) for m in merges], tokens,
            [tuple(matching.get(text, {}).get(flag, False) for flag in MATCH_FLAGS) for text, _ in tokens])
        self._matching = {text: flags for text, flags in matching.items() if flags}
        self._specials = specials
        self._special_ids = frozenset(specials.values())
        self._added = added
        self._added_ids = list(added.values())
        self._vocab_trie = None
        self._trie_lock = threading.Lock()
        self._containing = {}

    @staticmethod
    def _flags(text, flags) -> dict:
        """{flag: True} of the MATCH_FLAGS set in `flags` (a dict of bools)."""
        if not isinstance(flags, dict):
            raise TypeError(f"matching[{text!r}] must be a dict of flags, got {type(flags).__name__}")
        for flag, value in flags.items():
            if flag not in MATCH_FLAGS:
                raise ValueError(f"matching[{text!r}]: unknown flag {flag!r} (flags: {', '.join(MATCH_FLAGS)})")
            if not isinstance(value, bool):
                raise TypeError(f"matching[{text!r}][{flag!r}] must be a bool, got {value!r}")
        return {flag: True for flag in MATCH_FLAGS if flags.get(flag)}

    @classmethod
    def from_dir(cls, path: Union[str, os.PathLike], *, special_tokens: Iterable[str] = None) -> "Tokenizer":
        """Loads a folder's tokenizer, as transformers does: its tokenizer.json (what transformers
        saves), else vocab.json + merges.txt (the added tokens of tokenizer_config.json with
        them), else OpenAI's encoder.json + vocab.bpe.

        special_tokens: the tokens to treat as special. Default: the added tokens marked special,
        and "<|endoftext|>" if the vocabulary has it. Raises FileNotFoundError if the files are
        missing and pygpt.ModelFormatError (a ValueError) if they are malformed or describe a
        tokenizer other than GPT-2's byte-level BPE.
        """
        path = os.fspath(path)
        if not os.path.isdir(path):
            raise FileNotFoundError(f"tokenizer folder not found: {path}")
        hf_file = os.path.join(path, HF_TOKENIZER)
        if os.path.isfile(hf_file):
            return cls.from_file(hf_file, special_tokens=special_tokens)
        for vocab_name, merges_name in LAYOUTS:
            vocab_path, merges_path = os.path.join(path, vocab_name), os.path.join(path, merges_name)
            if os.path.isfile(vocab_path) or os.path.isfile(merges_path):
                for p in (vocab_path, merges_path):
                    if not os.path.isfile(p):
                        raise FileNotFoundError(f"tokenizer file missing: {p}")
                vocab = _load_vocab(vocab_path)
                added = _config_added_tokens(path)
                return cls._build(vocab, lambda: _load_merges(merges_path, vocab), added, special_tokens,
                                  f"{vocab_path}, {merges_path}")
        raise FileNotFoundError(f"no tokenizer in {path}: expected tokenizer.json, vocab.json + merges.txt "
                                "or encoder.json + vocab.bpe")

    @classmethod
    def from_files(cls, vocab_path: str, merges_path: str, *, special_tokens: Iterable[str] = None) -> "Tokenizer":
        """Loads a vocabulary JSON file (token -> id) and a merges file ("left right" per line, by rank)."""
        vocab = _load_vocab(vocab_path)
        return cls._build(vocab, lambda: _load_merges(merges_path, vocab), [], special_tokens,
                          f"{vocab_path}, {merges_path}")

    @classmethod
    def from_file(cls, path: Union[str, os.PathLike], *, special_tokens: Iterable[str] = None) -> "Tokenizer":
        """Loads a Hugging Face tokenizer.json (the `tokenizers` library's file) of a GPT-2
        byte-level BPE, with its added tokens."""
        path = os.fspath(path)
        vocab, pairs, added = _read_tokenizer_json(path)
        return cls._build(vocab, lambda: _merge_ids(pairs, vocab), added, special_tokens, path)

    @classmethod
    def _build(cls, vocab: dict, merges, added: list, special_tokens, where: str) -> "Tokenizer":
        """vocab: {byte-level token: id}, dense; merges(): the merges as id pairs; added: the
        added tokens [(id, text, special)] (ids past the vocabulary's extend it)."""
        added = _check_added(added, vocab, where)
        ids = {**vocab, **{text: i for i, text, *_ in added}}
        if special_tokens is None:
            names = [ENDOFTEXT] if ENDOFTEXT in vocab else []
            names += [text for _, text, special, _ in added if special and text not in names]
        else:
            if isinstance(special_tokens, str):
                raise TypeError("special_tokens must be an iterable of str, not str")
            names = list(special_tokens)
            for name in names:
                if name not in ids:
                    raise ValueError(f"special token {name!r} is not in {where}")
        specials = {name: ids[name] for name in names}
        plain_added = {text: i for i, text, *_ in added if text not in specials}  # matched whole, as HF does
        matching = {text: flags for _, text, _, flags in added if flags}
        token_bytes = [b""] * (len(vocab) + sum(i >= len(vocab) for i, *_ in added))
        for token, idx in vocab.items():
            if token in specials:
                token_bytes[idx] = token.encode("utf-8")
                continue
            try:
                token_bytes[idx] = _token_to_bytes(token)
            except ValueError as e:
                raise ModelFormatError(f"{where}: {e}") from None
        for i, text, *_ in added:
            token_bytes[i] = text.encode("utf-8")
        merges = merges()
        try:
            return cls(token_bytes, merges, specials, plain_added, matching)
        except ValueError as e:  # checks only the core makes (e.g. a byte without a token)
            raise ModelFormatError(f"{where}: {e}") from None

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
        Added tokens that are not special (Hugging Face's, `added_tokens`) are always matched.
        Raises TypeError for non-str, ValueError for a str that is not valid Unicode (lone
        surrogates)."""
        if not allowed_special and not disallowed_special:
            return self._core.encode(text, self._matched(False))
        allowed = self._allowed(allowed_special) if allowed_special else False
        if disallowed_special:
            self._check_disallowed(text, allowed, disallowed_special)
        return self._core.encode(text, self._matched(allowed))

    def encode_ordinary(self, text: str) -> list:
        """encode(text) with every special token text treated as plain text."""
        return self._core.encode(text, self._matched(False))

    def _matched(self, allowed):
        """The core's `allowed` (True: every special, False: none, or a list of ids) with the
        added tokens that are not special, which every encoding matches."""
        if not self._added_ids or allowed is True:
            return allowed
        return (allowed or []) + self._added_ids

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
        return self._core.encode_batch(texts, self._matched(allowed), n_threads)

    # -- decode ------------------------------------------------------------------------------

    def decode(self, ids: Iterable[int], *, skip_special_tokens: bool = False) -> str:
        """Text of ids. Never raises for valid ids: invalid UTF-8 becomes U+FFFD (errors="replace").
        Ids outside [0, vocab_size): ValueError; non-int ids: TypeError. skip_special_tokens
        leaves the special tokens out, as transformers' decode does."""
        if skip_special_tokens and self._special_ids:
            ids = [i for i in ids if not (isinstance(i, int) and i in self._special_ids)]
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
                self._containing[key] = [i for i in range(self.vocab_size) if i not in self._special_ids
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
    def added_tokens(self) -> dict:
        """{text: id} of Hugging Face's added vocabulary (transformers' get_added_vocab()): the
        special tokens, and the added tokens that are not special (always matched whole)."""
        return {**self._specials, **self._added}

    @property
    def matching(self) -> dict:
        """{text: {flag: True}} of the special and added tokens with lstrip, rstrip or
        single_word set (Hugging Face's AddedToken flags; see __init__)."""
        return {text: dict(flags) for text, flags in self._matching.items()}

    @property
    def n_merges(self) -> int:
        return self._core.n_merges

    def __len__(self) -> int:
        return self.vocab_size

    def __repr__(self) -> str:
        return f"Tokenizer(vocab_size={self.vocab_size}, n_merges={self.n_merges}, eot_id={self.eot_id})"
