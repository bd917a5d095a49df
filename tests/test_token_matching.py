"""Added tokens with Hugging Face's matching flags (AddedToken's lstrip, rstrip and
single_word): pygpt's tokenizer against transformers' (the tokenizers library) on the same
tokenizer.json, the flags carried by the converter, and the constructor's checks."""

import json
import os
import random
import shutil

import pytest

import pygpt
import pygpt.convert
from pygpt import _core
from pygpt.tokenizer import Tokenizer

from conftest import GPT2_TOKENIZER, make_hf_model

# Added tokens (not special) and special ones, each flag alone and together. Their texts
# begin and end with neither white space nor a word character, as real markers do.
ADDED = {"<L>": {"lstrip": True}, "<R>": {"rstrip": True}, "<B>": {"lstrip": True, "rstrip": True},
         "<W>": {"single_word": True}, "<LW>": {"lstrip": True, "single_word": True}, "<P>": {}}
SPECIAL = {"<|sp|>": {"lstrip": True, "rstrip": True}, "<|w|>": {"single_word": True}, "<|x|>": {}}
# Neighbours: white space (Unicode White_Space: U+001C is not), word characters (letters,
# digits, "_", a combining mark, U+200D) and others ("²" is a number but not \w).
PIECES = [" ", "  ", "\t", "\n", "\u3000", "\xa0", "\u2028", "\x1c", "a", "word", "é", "_", "\u0301", "\u0663",
          "\u200d", "\u00b2", "7", "!", "-", ".", "🤖", "日本", "'s"]
TEXTS = ["a <L> b", "a  \n<L>b", "a <R>  b", "x<W>y", "x <W> y", "<W>y", "y<W>", "_<W>", "²<W>²", "a <B>  b",
         "a <L><L> b", " <L>", "a\xa0<L>", "a\x1c<L>", "a <R> <L> b", "é<W>", "<W><W>", "a<W> b <W>",
         "\u3000\u3000<L>\u3000", "x <|sp|>  y", "x<|w|>", "x <|w|> y", "<R>\n\n<|sp|>\t<L>", "<LW> a <LW>",
         "a<LW>", "a <P> b", "", "<", "<W"]


def hf_tokenizer(tmp_path):
    """transformers' GPT-2 tokenizer with ADDED and SPECIAL added, saved (its tokenizer.json)."""
    transformers = pytest.importorskip("transformers")
    from tokenizers import AddedToken

    with open(os.path.join(GPT2_TOKENIZER, "vocab.json"), encoding="utf-8") as f:
        vocab = json.load(f)
    with open(os.path.join(GPT2_TOKENIZER, "merges.txt"), encoding="utf-8") as f:
        merges = [tuple(line.split()) for line in f.read().splitlines()[1:] if line]
    hf = transformers.GPT2TokenizerFast(vocab=vocab, merges=merges)
    hf.add_tokens([AddedToken(text, **flags) for text, flags in ADDED.items()])
    hf.add_special_tokens({"additional_special_tokens": [AddedToken(text, special=True, **flags)
                                                         for text, flags in SPECIAL.items()]})
    hf.save_pretrained(tmp_path)
    return hf


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """(transformers' tokenizer, pygpt's from the folder transformers saved it to, the folder)."""
    path = tmp_path_factory.mktemp("matching")
    hf = hf_tokenizer(path)
    return hf, Tokenizer.from_dir(path), path


def random_texts(n, seed):
    rng = random.Random(seed)
    tokens = list(ADDED) + list(SPECIAL)
    return ["".join(rng.choice(tokens) if rng.random() < 0.35 else rng.choice(PIECES)
                    for _ in range(rng.randint(1, 12))) for _ in range(n)]


def test_flags_are_read_from_tokenizer_json(pair):
    hf, tok, path = pair
    with open(path / "tokenizer.json", encoding="utf-8") as f:
        listed = {t["content"]: t for t in json.load(f)["added_tokens"]}
    assert listed["<B>"]["lstrip"] and listed["<B>"]["rstrip"] and listed["<|w|>"]["single_word"]
    assert tok.matching == {text: flags for text, flags in {**ADDED, **SPECIAL}.items() if flags}
    assert set(SPECIAL) < set(tok.special_tokens) and set(ADDED) < set(tok.added_tokens)


def test_encodes_as_transformers(pair):
    """Every flag, alone and together, special or not, beside white space, word characters
    and each other: the ids of transformers (the tokenizers library)."""
    hf, tok, path = pair
    texts = TEXTS + random_texts(3000, seed=1)
    want = [hf.encode(t) for t in texts]
    assert tok.encode_batch(texts, allowed_special="all") == want
    for text in TEXTS:
        assert tok.encode(text, allowed_special="all") == hf.encode(text), text
    # the flags matter: the same tokens without them differ on a third of the texts
    with open(path / "tokenizer.json", encoding="utf-8") as f:
        data = json.load(f)
    for t in data["added_tokens"]:
        t.update(lstrip=False, rstrip=False, single_word=False)
    (path / "bare.json").write_text(json.dumps(data), encoding="utf-8")
    bare = Tokenizer.from_file(path / "bare.json")
    differ = sum(a != b for a, b in zip(bare.encode_batch(texts, allowed_special="all"), want))
    assert differ > len(texts) // 3


def test_special_tokens_not_allowed_are_text_and_keep_their_white_space(pair):
    """Special tokens follow tiktoken's contract (plain text unless allowed), flags and all,
    as transformers' split_special_tokens; the added tokens that are not special still match."""
    hf, tok, _ = pair
    assert tok.encode("x <|sp|>  y") == tok.encode_ordinary("x <|sp|>  y") == hf.encode("x <|sp|>  y",
                                                                                          split_special_tokens=True)
    for text in TEXTS + random_texts(500, seed=2):
        assert tok.encode(text) == hf.encode(text, split_special_tokens=True), text


def test_single_word_asks_every_code_point_as_the_regex_w_does(pair):
    """Whether a character beside a single_word token is a word character (\\w: letters, marks,
    decimal digits, connector punctuation, Join_Control, Alphabetic), and whether lstrip takes
    it as white space: the tokenizers library's answer on planes 0-3 and 14 in full, every 97th
    code point elsewhere."""
    hf, tok, _ = pair
    cps = [c for c in range(0x40000) if not 0xD800 <= c <= 0xDFFF] + list(range(0xE0000, 0xF0000))
    cps += list(range(0x40000, 0xE0000, 97)) + list(range(0xF0000, 0x110000, 97))
    w, lw = tok.added_tokens["<W>"], tok.added_tokens["<L>"]
    before = tok.encode_batch([chr(c) + "<W>" for c in cps])
    after = tok.encode_batch(["<W>" + chr(c) for c in cps])
    strip = tok.encode_batch(["!" + chr(c) + "<L>" for c in cps])
    theirs = hf.backend_tokenizer.encode_batch([chr(c) + "<W>" for c in cps] + ["<W>" + chr(c) for c in cps]
                                               + ["!" + chr(c) + "<L>" for c in cps], add_special_tokens=False)
    n = len(cps)
    words = [c for c, ids in zip(cps, before) if w not in ids]
    assert words == [c for c, e in zip(cps, theirs[:n]) if w not in e.ids]
    assert [c for c, ids in zip(cps, after) if w not in ids] == [c for c, e in zip(cps, theirs[n:2 * n])
                                                                if w not in e.ids] == words
    spaces = [c for c, ids in zip(cps, strip) if ids == [0, lw]]
    assert spaces == [c for c, e in zip(cps, theirs[2 * n:]) if e.ids == [0, lw]]
    assert spaces == [0x09, 0x0A, 0x0B, 0x0C, 0x0D, 0x20, 0x85, 0xA0, 0x1680, *range(0x2000, 0x200B), 0x2028,
                      0x2029, 0x202F, 0x205F, 0x3000]
    assert {ord(c) for c in "a_é\u0301\u0663\u200d\u24b6"} <= set(words)
    assert not {ord(c) for c in "²!- \u200b"} & set(words)


def test_converter_carries_the_flags(pair, tmp_path):
    """A source whose tokenizer is vocab.json + merges.txt with its added tokens in
    tokenizer_config.json (transformers 4.x): the converted folder lists them again, flags
    included, and encodes as the source does."""
    hf, tok, path = pair
    src = tmp_path / "src"
    make_hf_model(src, seed=5, n_layer=1, n_head=2, n_embd=32, n_positions=64, vocab_size=len(hf))
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(os.path.join(GPT2_TOKENIZER, name), src / name)
    decoder = {str(i): {"content": text, "special": text in SPECIAL, "normalized": False, **flags}
               for text, flags in {**ADDED, **SPECIAL}.items() for i in [tok.added_tokens[text]]}
    with open(src / "tokenizer_config.json", "w", encoding="utf-8") as f:
        json.dump({"added_tokens_decoder": decoder}, f)
    out = tmp_path / "out"
    pygpt.convert.convert(str(src), str(out))
    with open(out / "tokenizer_config.json", encoding="utf-8") as f:
        written = json.load(f)["added_tokens_decoder"]
    flags = {t["content"]: {k: v for k, v in t.items() if k in ("lstrip", "rstrip", "single_word")}
             for t in written.values()}
    assert flags == {"<|endoftext|>": {}, **ADDED, **SPECIAL}
    model = pygpt.load(out)
    assert model.tokenizer.matching == tok.matching
    texts = TEXTS + random_texts(200, seed=3)
    assert model.tokenizer.encode_batch(texts, allowed_special="all") == [hf.encode(t) for t in texts]


def test_constructor_checks_matching():
    from pygpt.tokenizer import _load_merges, _load_vocab

    vocab = _load_vocab(os.path.join(GPT2_TOKENIZER, "vocab.json"))
    merges = _load_merges(os.path.join(GPT2_TOKENIZER, "merges.txt"), vocab)
    plain = Tokenizer.from_dir(GPT2_TOKENIZER)
    token_bytes = [plain.token_bytes(i) for i in range(plain.vocab_size)] + [b"<L>"]
    added = {"<L>": 50257}
    tok = Tokenizer(token_bytes, merges, {"<|endoftext|>": 50256}, added, {"<L>": {"lstrip": True}})
    assert tok.encode("a  <L>") == [64, 50257] and tok.matching == {"<L>": {"lstrip": True}}
    assert Tokenizer(token_bytes, merges, {}, added).encode("a  <L>") == plain.encode("a  ") + [50257]
    assert Tokenizer(token_bytes, merges, {}, added, {"<L>": {"lstrip": False}}).matching == {}
    with pytest.raises(ValueError, match="neither special nor added"):
        Tokenizer(token_bytes, merges, {}, added, {"<X>": {"lstrip": True}})
    with pytest.raises(ValueError, match="unknown flag 'strip'"):
        Tokenizer(token_bytes, merges, {}, added, {"<L>": {"strip": True}})
    with pytest.raises(TypeError, match="must be a bool"):
        Tokenizer(token_bytes, merges, {}, added, {"<L>": {"lstrip": 1}})
    with pytest.raises(TypeError, match="must be a dict"):
        Tokenizer(token_bytes, merges, {}, added, {"<L>": True})
    # the core's own check: one entry per special
    with pytest.raises(ValueError, match="matching has 2 entries for 1 special tokens"):
        _core.Tokenizer(token_bytes, merges, [("<L>", 50257)], [(True, False, False)] * 2)
