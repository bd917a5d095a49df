"""pygpt.Tokenizer against tiktoken, over arbitrary and adversarial text.

tiktoken (a test-only dependency) is built from the same local files, with no download:
mergeable ranks from tiktoken.load.data_gym_to_mergeable_bpe_ranks(merges.txt, vocab.json) and
the GPT-2 ("r50k") split pattern. Its regex engine uses Unicode 16 tables, as ours do.
"""

import os
import random
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pygpt import _core
from pygpt.tokenizer import Tokenizer

tiktoken = pytest.importorskip("tiktoken")
from tiktoken.load import data_gym_to_mergeable_bpe_ranks  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
GPT2_DIR = os.path.join(HERE, "data", "gpt2-tokenizer")
ROOT = os.path.dirname(HERE)
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
EOT = "<|endoftext|>"

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FEW = settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.from_dir(GPT2_DIR)


@pytest.fixture(scope="module")
def ref():
    ranks = data_gym_to_mergeable_bpe_ranks(os.path.join(GPT2_DIR, "merges.txt"), os.path.join(GPT2_DIR, "vocab.json"))
    return tiktoken.Encoding("gpt2-local", pat_str=GPT2_PATTERN, mergeable_ranks=ranks,
                             special_tokens={EOT: 50256})


def check(tok, ref, text):
    ids = tok.encode(text)
    assert ids == ref.encode_ordinary(text)
    assert tok.decode(ids) == text


# Characters that exercise every branch of the split pattern: contractions (and near misses),
# each kind of white space, letters/numbers/punctuation from several scripts, combining marks.
TRICKY = list("'sStTrReEvVmMlLdD \t\n\r\x0b\x0c") + [
    "\x85", "\xa0", "\u1680", "\u2000", "\u2009", "\u200b", "\u2028", "\u2029", "\u202f", "\u205f", "\u3000",
    "\x1c", "\x1f", "\ufeff", "\x00", "\x7f", "'", "’", "‘", "`", "a", "Z", "é", "ß", "ǅ", "λ", "я", "中", "ア",
    "한", "ا", "א", "क", "\u0301", "\u093f", "1", "٣", "५", "½", "²", "Ⅻ", "𝟘", "!", ".", ",", "-", "_", "@",
    "😀", "👍🏽", "\u200d", "\ufe0f", "🇯", "\U000e0067", "\ufffd", "\U0010ffff", "\ue000", "$", "€",
]


def tricky_text(max_size):
    return st.lists(st.sampled_from(TRICKY), max_size=max_size).map("".join)


WHITESPACE = [" ", "\t", "\n", "\r", "\x0b", "\x0c", "\x85", "\xa0", "\u2003", "\u2028", "\u3000"]


@FUZZ
@given(st.text())
def test_any_text_matches_tiktoken(tok, ref, text):
    check(tok, ref, text)


@FUZZ
@given(tricky_text(60))
def test_tricky_text_matches_tiktoken(tok, ref, text):
    check(tok, ref, text)


@FUZZ
@given(st.text(alphabet=st.characters(categories=["Cc", "Cf", "Zs", "Zl", "Zp", "Co", "Cn", "Mn"]), max_size=40))
def test_control_and_format_characters(tok, ref, text):
    check(tok, ref, text)


@FUZZ
@given(st.lists(st.tuples(st.sampled_from(WHITESPACE), st.integers(1, 400), st.sampled_from(["", "x", "1", "!", "'s", " y"])),
                max_size=6))
def test_long_whitespace_runs(tok, ref, runs):
    check(tok, ref, "".join(ws * n + after for ws, n, after in runs))


@FEW
@given(st.integers(0, 2**32), st.sampled_from(["mixed", "letters", "punct", "digits", "words"]))
def test_100kb_strings(tok, ref, seed, kind):
    rng, n = random.Random(seed), 100_000
    if kind == "mixed":
        text = "".join(rng.choice(TRICKY) for _ in range(n))
    elif kind == "letters":  # one 100 KB piece: the heap BPE path
        text = "".join(rng.choice("abcdefghijklmnopqrstuvwxyzéß") for _ in range(n))
    elif kind == "punct":
        text = "".join(rng.choice("!\"#$%&()*+,-./:;<=>?@[]^_{|}~'") for _ in range(n))
    elif kind == "digits":
        text = "".join(rng.choice("0123456789٣५") for _ in range(n))
    else:
        words = ["the", " the", "Hello", " world", "'s", " 😀", "\n\n", "  ", " naïve", " 1234", "!!"]
        text = "".join(rng.choice(words) for _ in range(n // 4))
    check(tok, ref, text)


@pytest.mark.parametrize("text", ["a" * 100_000, "!" * 100_000, " " * 100_000, "\n" * 100_000, "1" * 100_000,
                                  "😀" * 25_000, "ab" * 50_000, " a" * 50_000, "'s" * 50_000, "é" * 50_000])
def test_100kb_repetitive(tok, ref, text):
    check(tok, ref, text)


@FUZZ
@given(st.lists(st.one_of(tricky_text(10),
                          st.sampled_from([EOT, "<|endoftext|", "|>", "<|"])), max_size=8))
def test_special_tokens_match_tiktoken(tok, ref, parts):
    text = "".join(parts)
    assert tok.encode(text, allowed_special="all") == ref.encode(text, allowed_special="all")
    assert tok.encode(text, allowed_special={EOT}) == ref.encode(text, allowed_special={EOT})
    assert tok.encode(text) == ref.encode_ordinary(text)  # default: special text is plain text
    assert tok.encode(text, disallowed_special=()) == ref.encode(text, disallowed_special=())
    for allowed in (set(), {EOT}):  # tiktoken's default, disallowed_special="all"
        try:
            expect = ref.encode(text, allowed_special=allowed)
        except ValueError:
            with pytest.raises(ValueError, match="disallowed"):
                tok.encode(text, allowed_special=allowed, disallowed_special="all")
        else:
            assert tok.encode(text, allowed_special=allowed, disallowed_special="all") == expect


@settings(max_examples=40, deadline=None)
@given(st.lists(st.text(max_size=50), max_size=20), st.integers(1, 4))
def test_encode_batch_matches_tiktoken(tok, ref, texts, n_threads):
    assert tok.encode_batch(texts, n_threads=n_threads) == [ref.encode_ordinary(t) for t in texts]


@FUZZ
@given(st.text(), st.integers(0, 10), st.sampled_from(["\ud800", "\udbff", "\udc00", "\udfff"]))
def test_lone_surrogates_refused(tok, text, at, surrogate):
    at = min(at, len(text))
    with pytest.raises(ValueError):
        tok.encode(text[:at] + surrogate + text[at:])


# -- decode and streaming -------------------------------------------------------------------------


@FUZZ
@given(st.lists(st.integers(0, 50256), max_size=40))
def test_decode_any_ids(tok, ref, ids):
    text = tok.decode(ids)
    assert text == ref.decode(ids, errors="replace")
    dec = tok.stream_decoder()
    assert "".join(dec.push(i) for i in ids) + dec.flush() == text


@FUZZ
@given(st.text())
def test_stream_join_equals_decode(tok, text):
    ids = tok.encode(text)
    dec = tok.stream_decoder()
    pieces = [dec.push(i) for i in ids]
    assert "".join(pieces) + dec.flush() == tok.decode(ids) == text


@FUZZ
@given(st.binary(max_size=40))
def test_cpp_replace_decoder_matches_python(data):
    text, used = _core.utf8_replace(data, True)
    assert (text, used) == (data.decode("utf-8", "replace"), len(data))
    # not final: an unfinished character at the end is held back, and only that
    head, used = _core.utf8_replace(data, False)
    assert len(data) - used <= 3
    assert head + data[used:].decode("utf-8", "replace") == data.decode("utf-8", "replace")


# -- Unicode tables -------------------------------------------------------------------------------


def test_every_code_point_matches_tiktoken(tok, ref):
    # Each code point c in several contexts (inside letters/digits/punctuation, after a space,
    # before a contraction, in white space); "\n\n" + a letter keeps the contexts apart.
    # Planes 0-3 and 14 (every assigned character) in full; the unassigned and private-use
    # planes 4-13, 15, 16 every 97th code point.
    cps = [c for c in range(0x40000) if not 0xD800 <= c <= 0xDFFF] + list(range(0xE0000, 0xF0000))
    cps += list(range(0x40000, 0xE0000, 97)) + list(range(0xF0000, 0x110000, 97))
    text = "\n\n".join(f"a{c}b 1{c}2 !{c}? {c}'s\t{c} {c}{c}x" for c in map(chr, cps))
    ours, theirs = tok.encode(text), ref.encode_ordinary(text)
    if ours != theirs:
        i = next(k for k, (x, y) in enumerate(zip(ours, theirs)) if x != y)
        where = tok.decode(ours[max(0, i - 10):i + 10])
        pytest.fail(f"first difference at token {i}, around {where!r}")


def test_tables_are_unicode_16():
    assert _core.unicode_version == "16.0.0"
    unicodedata2 = pytest.importorskip("unicodedata2")
    if unicodedata2.unidata_version != "16.0.0":
        pytest.skip(f"unicodedata2 is Unicode {unicodedata2.unidata_version}, not 16.0.0")
    classes = _core.unicode_char_classes()
    white_space = {*range(0x09, 0x0E), 0x20, 0x85, 0xA0, 0x1680, *range(0x2000, 0x200B), 0x2028, 0x2029, 0x202F,
                   0x205F, 0x3000}
    expect = bytearray(0x110000)
    for cp in range(0x110000):
        major = unicodedata2.category(chr(cp))[0]
        expect[cp] = 3 if cp in white_space else 1 if major == "L" else 2 if major == "N" else 0
    assert classes == bytes(expect)
    # and the committed files are what the generator writes
    subprocess.run([sys.executable, os.path.join(ROOT, "tools", "gen_unicode_tables.py"), "--check"], check=True)


def test_corpus_matches_tiktoken(tok, ref):
    with open(os.path.join(GPT2_DIR, "merges.txt"), encoding="utf-8") as f:
        merges_text = f.read()
    check(tok, ref, merges_text)  # 450 KB of every merge's byte-level text
    corpus = os.path.join(HERE, "data", "corpus")
    for name in sorted(os.listdir(corpus)) if os.path.isdir(corpus) else []:
        if name.endswith(".txt"):
            with open(os.path.join(corpus, name), encoding="utf-8") as f:
                check(tok, ref, f.read())
