"""pygpt.Tokenizer: golden GPT-2 cases, the special-token contract, streaming, bad input.

Golden data (tests/data/tokenizer-cases/, see SOURCE.md there): 412 encode cases and 234 decode
cases whose answers agree across tiktoken, Hugging Face tokenizers and a Python regex BPE, and
llama.cpp's own GPT-2 tokenizer test. Randomised comparisons with tiktoken are in
test_tokenizer_fuzz.py.
"""

import json
import os
import shutil
import threading

import numpy as np
import pytest

import pygpt
from pygpt import _core
from pygpt.tokenizer import Tokenizer, bytes_to_unicode

HERE = os.path.dirname(os.path.abspath(__file__))
GPT2_DIR = os.path.join(HERE, "data", "gpt2-tokenizer")
CASES_DIR = os.path.join(HERE, "data", "tokenizer-cases")
EOT = "<|endoftext|>"


def read_jsonl(name):
    with open(os.path.join(CASES_DIR, name), encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


ENCODE_CASES = read_jsonl("tokenizer-cases.jsonl")
DECODE_CASES = read_jsonl("decode-cases.jsonl")
DISAGREEMENTS = read_jsonl("tokenizer-cases-disagreements.jsonl")


def llama_cpp_cases():
    with open(os.path.join(CASES_DIR, "ggml-vocab-gpt-2.gguf.inp"), encoding="utf-8", newline="") as f:
        inputs = f.read().split("\n__ggml_vocab_test__\n")
    with open(os.path.join(CASES_DIR, "ggml-vocab-gpt-2.gguf.out"), encoding="utf-8") as f:
        outputs = f.read().split("\n")
    if inputs[-1].endswith("\n__ggml_vocab_test__"):  # the last case is "" (file ends with the separator)
        inputs[-1] = inputs[-1][: -len("\n__ggml_vocab_test__")]
        inputs.append("")
    outputs = outputs[: len(inputs)]
    return [(text, [int(t) for t in out.split()]) for text, out in zip(inputs, outputs)]


LLAMA_CASES = llama_cpp_cases()


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.from_dir(GPT2_DIR)


def stream(tok, ids):
    dec = tok.stream_decoder()
    pieces = [dec.push(i) for i in ids]
    return pieces, dec.flush()


# -- golden cases -------------------------------------------------------------------------------


def test_case_files_are_complete():
    assert len(ENCODE_CASES) == 412
    assert len(DECODE_CASES) == 234
    assert len(LLAMA_CASES) == 47 and LLAMA_CASES[-1] == ("", [])


@pytest.mark.parametrize("case", ENCODE_CASES, ids=[f"{i}-{c['category']}" for i, c in enumerate(ENCODE_CASES)])
def test_golden_encode(tok, case):
    text, ids = case["text"], case["ids"]
    assert tok.encode(text, allowed_special="all") == ids
    assert tok.encode(text, allowed_special={EOT}) == ids
    assert tok.encode(text) == case.get("ids_ordinary", ids)  # default: <|endoftext|> is plain text
    assert tok.decode(ids) == text
    if "ids_ordinary" in case:
        assert tok.decode(case["ids_ordinary"]) == text


def test_golden_encode_batch(tok):
    texts = [c["text"] for c in ENCODE_CASES]
    assert tok.encode_batch(texts, allowed_special="all") == [c["ids"] for c in ENCODE_CASES]
    assert tok.encode_batch(texts, n_threads=1) == [c.get("ids_ordinary", c["ids"]) for c in ENCODE_CASES]


@pytest.mark.parametrize("case", DISAGREEMENTS, ids=[str(i) for i in range(len(DISAGREEMENTS))])
def test_unicode_16_answers(tok, case):
    # letters new in Unicode 17: with Unicode 16 tables they are not \p{L}, as in tiktoken and HF
    assert _core.unicode_version == "16.0.0"
    assert tok.encode(case["text"]) == case["tiktoken"] == case["hf_tokenizers"]


@pytest.mark.parametrize("case", DECODE_CASES, ids=[str(i) for i in range(len(DECODE_CASES))])
def test_golden_decode(tok, case):
    ids, raw = case["ids"], bytes.fromhex(case["bytes_hex"])
    assert tok.decode_bytes(ids) == raw
    assert tok.decode(ids) == case["text_replace"] == raw.decode("utf-8", "replace")
    assert _core.utf8_replace(raw)[0] == case["text_replace"]
    pieces, tail = stream(tok, ids)
    assert "".join(pieces) + tail == case["text_replace"]


@pytest.mark.parametrize("text,ids", LLAMA_CASES, ids=[str(i) for i in range(len(LLAMA_CASES))])
def test_llama_cpp_cases(tok, text, ids):
    assert tok.encode(text) == ids
    assert tok.decode(ids) == text


def test_known_ids(tok):
    assert tok.vocab_size == len(tok) == 50257
    assert tok.n_merges == 50000
    assert tok.eot_id == 50256
    assert tok.special_tokens == {EOT: 50256}
    assert tok.encode("Hello world") == [15496, 995]
    assert tok.encode(" the") == [262]
    assert tok.token_bytes(262) == b" the"
    assert tok.token_bytes(50256) == EOT.encode()
    assert tok.encode("") == [] and tok.decode([]) == ""
    assert pygpt.Tokenizer is Tokenizer
    assert "vocab_size=50257" in repr(tok)


# -- special tokens: tiktoken's contract ----------------------------------------------------------


def test_endoftext_is_plain_text_by_default(tok):
    text = f"a{EOT}b{EOT}{EOT}"
    plain = tok.encode(text)
    assert 50256 not in plain and tok.decode(plain) == text
    assert plain == tok.encode_ordinary(text)
    special = [64, 50256, 65, 50256, 50256]
    assert tok.encode(text, allowed_special="all") == special
    assert tok.encode(text, allowed_special={EOT}) == special
    assert tok.encode(text, allowed_special=[EOT]) == special
    assert tok.encode(text, allowed_special=set()) == plain
    assert tok.decode(special) == text
    # near misses are text
    for near in ("<|endoftext|", "<|endoftext |>", "<|ENDOFTEXT|>", "<<|endoftext|"):
        assert 50256 not in tok.encode(near, allowed_special="all")


def test_disallowed_special(tok):
    text = f"a{EOT}"
    with pytest.raises(ValueError, match="disallowed"):
        tok.encode(text, disallowed_special="all")
    with pytest.raises(ValueError, match="disallowed"):
        tok.encode(text, disallowed_special={EOT})
    assert tok.encode(text, allowed_special="all", disallowed_special="all") == [64, 50256]
    assert tok.encode("plain", disallowed_special="all") == tok.encode("plain")
    with pytest.raises(ValueError, match="'all'"):
        tok.encode(text, disallowed_special="none")
    with pytest.raises(ValueError, match="disallowed"):
        tok.encode_batch(["fine", text], disallowed_special="all")
    assert tok.encode_batch(["fine", text], allowed_special="all", disallowed_special="all")[1] == [64, 50256]


def test_special_segments_are_encoded_separately(tok):
    # text on each side of a special token is encoded on its own, as tiktoken does
    assert tok.encode(f" {EOT} world", allowed_special="all") == tok.encode(" ") + [50256] + tok.encode(" world")


def test_bad_allowed_special(tok):
    with pytest.raises(ValueError, match="not special tokens"):
        tok.encode("x", allowed_special={"<|im_start|>"})
    with pytest.raises(ValueError, match="'all'"):
        tok.encode("x", allowed_special="none")
    with pytest.raises(TypeError):
        tok.encode("x", allowed_special=5)


def test_vocab_without_endoftext(tmp_path):
    vocab_path = os.path.join(GPT2_DIR, "vocab.json")
    with open(vocab_path, encoding="utf-8") as f:
        vocab = json.load(f)
    del vocab[EOT]
    write_dir(tmp_path, vocab=vocab)
    t = Tokenizer.from_dir(tmp_path)
    assert t.eot_id == -1 and t.vocab_size == 50256 and t.special_tokens == {}
    assert t.encode(EOT, allowed_special="all") == t.encode(EOT)


def test_custom_special_tokens(tmp_path):
    t = Tokenizer.from_dir(GPT2_DIR, special_tokens=[EOT, "Hello"])
    assert t.encode("Hello world", allowed_special={"Hello"}) == [15496, 995]  # the id; same as text here
    assert t.encode("xHello", allowed_special={"Hello"}) == [87, 15496]        # split out of "xHello"
    assert t.encode("xHello") == Tokenizer.from_dir(GPT2_DIR).encode("xHello")  # as text: BPE as usual
    assert t.encode(f"Hello{EOT}", allowed_special={EOT}) == [15496, 50256]
    with pytest.raises(ValueError, match="not in"):
        Tokenizer.from_dir(GPT2_DIR, special_tokens=["<|im_start|>"])
    with pytest.raises(TypeError):
        Tokenizer.from_dir(GPT2_DIR, special_tokens=EOT)


# -- both file layouts ----------------------------------------------------------------------------


def test_openai_layout(tmp_path, tok):
    shutil.copy(os.path.join(GPT2_DIR, "vocab.json"), tmp_path / "encoder.json")
    shutil.copy(os.path.join(GPT2_DIR, "merges.txt"), tmp_path / "vocab.bpe")
    t = Tokenizer.from_dir(str(tmp_path))
    text = "OpenAI's layout: encoder.json + vocab.bpe ✓ 1234"
    assert t.encode(text) == tok.encode(text) and t.eot_id == 50256


def test_tiny_vocabulary_uses_merge_ranks():
    # A vocabulary where "abc" is a token but BPE never makes it from "abc": (b, c) merges first
    # and (a, bc) is not a merge. The whole-word shortcut must not return it.
    token_bytes = [bytes([b]) for b in range(256)] + [b"bc", b"ab", b"abc", b"cc"]
    a, b, c = ord("a"), ord("b"), ord("c")
    merges = [(b, c), (a, b), (257, c), (c, c)]
    t = Tokenizer(token_bytes, merges)
    assert t.encode("abc") == [a, 256]
    assert t.encode("ab") == [257]
    assert t.encode("abx") == [257, ord("x")]
    assert t.encode("abcc") == [a, 256, c]  # (b, c) rank 0 first; then (a, bc), (bc, c) are not merges
    assert t.encode("ccc") == [259, c]      # leftmost first among equal ranks
    assert t.decode(t.encode("abc abcc")) == "abc abcc"
    assert t.eot_id == -1


# -- streaming ------------------------------------------------------------------------------------

STREAM_TEXTS = [
    "héllo wörld, naïve café — “quotes” ½ ∑ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
    "我想在apple工作1314151天～ 日本語のテキスト、한국어 텍스트",
    "👨‍👩‍👧‍👦 family 🏳️‍🌈 flag 👍🏽 thumbs 1️⃣ keycap 🇯🇵🇫🇷 flags",
    "Zalgo: Z̵̡̢̛͈͎̝a̸̧̛̯l̴̨̛g̷o̶ and Ǆ ﬁ ﬀ ligatures",
    "😀" * 20 + "ok" + "\U0001F9D1\u200D\U0001F680" * 5,
]


@pytest.mark.parametrize("text", STREAM_TEXTS)
def test_stream_join_equals_decode(tok, text):
    ids = tok.encode(text)
    pieces, tail = stream(tok, ids)
    assert "".join(pieces) + tail == tok.decode(ids) == text
    assert tail == ""
    for piece in pieces:  # every piece is whole characters (it went through str)
        assert piece.encode("utf-8").decode("utf-8") == piece


def test_stream_holds_back_partial_character(tok):
    ids = tok.encode(" 😀")  # ' \xf0\x9f\x98' + '\x80'
    assert [tok.token_bytes(i) for i in ids] == [b" \xf0\x9f\x98", b"\x80"]
    dec = tok.stream_decoder()
    assert dec.push(ids[0]) == " "
    assert dec.pending_bytes == 3
    assert dec.push(ids[1]) == "😀"
    assert dec.pending_bytes == 0


def test_stream_invalid_bytes(tok):
    byte_id = {tok.token_bytes(i): i for i in range(tok.vocab_size) if len(tok.token_bytes(i)) == 1}
    dec = tok.stream_decoder()
    assert dec.push(byte_id[b"\xf0"]) == ""
    assert dec.push(byte_id[b"\x9f"]) == ""
    assert dec.push(byte_id[b"A"]) == "\ufffdA"  # unfinished sequence, then a non-continuation
    assert dec.push(byte_id[b"\xff"]) == "\ufffd"  # never valid: no hold-back
    assert dec.push(byte_id[b"\xe2"]) == ""
    assert dec.flush() == "\ufffd"  # end of stream with an unfinished character
    assert dec.pending_bytes == 0 and dec.flush() == ""
    dec.push(byte_id[b"\xe2"])
    dec.reset()
    assert dec.push(byte_id[b"B"]) == "B"


def test_stream_bad_ids(tok):
    dec = tok.stream_decoder()
    for bad in (-1, 50257, 2**70):
        with pytest.raises(ValueError, match="out of range"):
            dec.push(bad)
    with pytest.raises(TypeError):
        dec.push(1.0)
    with pytest.raises(TypeError):
        dec.push("1")


def test_stream_decoder_outlives_tokenizer():
    t = Tokenizer.from_dir(GPT2_DIR)
    dec = t.stream_decoder()
    del t
    assert dec.push(15496) == "Hello"


# -- bad input ------------------------------------------------------------------------------------


def test_encode_rejects_non_str(tok):
    for bad in (b"bytes", None, 123, ["a"], bytearray(b"x")):
        with pytest.raises(TypeError, match="str"):
            tok.encode(bad)
    with pytest.raises(TypeError):
        tok.encode_batch("not a list")
    with pytest.raises(TypeError):
        tok.encode_batch(["ok", b"bytes"])
    with pytest.raises(TypeError):
        tok.encode_batch(None)


@pytest.mark.parametrize("text", ["\ud800", "a\udfffb", "\udc80" * 3, "ok \ud83d\ude00"])
def test_lone_surrogates_refused(tok, text):
    with pytest.raises(ValueError, match="surrogates"):
        tok.encode(text)
    with pytest.raises(ValueError, match="surrogates"):
        tok.encode(text, allowed_special="all")
    with pytest.raises(ValueError, match="surrogates"):
        tok.encode_batch(["fine", text])


def test_decode_bad_ids(tok):
    for bad in ([-1], [50257], [0, 2**31], [2**70], [1, -(2**70)]):
        with pytest.raises(ValueError, match="out of range"):
            tok.decode(bad)
        with pytest.raises(ValueError, match="out of range"):
            tok.decode_bytes(bad)
    for bad in ([1.0], ["1"], [None], "123", b"12", 5):
        with pytest.raises(TypeError):
            tok.decode(bad)
    with pytest.raises(ValueError):
        tok.token_bytes(50257)


def test_decode_accepts_sequences(tok):
    ids = tok.encode("Hello world")
    assert tok.decode(tuple(ids)) == tok.decode(np.array(ids, dtype=np.int64)) == "Hello world"
    assert tok.decode(np.array(ids, dtype=np.int32)) == "Hello world"
    assert tok.decode(iter(ids)) == "Hello world"


def test_decode_any_ids_never_raises(tok):
    rng = np.random.default_rng(0)
    ids = rng.integers(0, tok.vocab_size, 5000).tolist()
    raw = tok.decode_bytes(ids)
    assert tok.decode(ids) == raw.decode("utf-8", "replace")


def test_encode_batch(tok):
    texts = ["Hello world", "", " ", "emoji 😀", f"x{EOT}y"] * 7
    expect = [tok.encode(t) for t in texts]
    for n_threads in (None, 1, 2, 3, 64):
        assert tok.encode_batch(texts, n_threads=n_threads) == expect
    assert tok.encode_batch(texts, allowed_special="all") == [tok.encode(t, allowed_special="all") for t in texts]
    assert tok.encode_batch([]) == []
    assert tok.encode_batch(tuple(texts[:3])) == expect[:3]
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="n_threads"):
            tok.encode_batch(texts, n_threads=bad)


def test_concurrent_python_threads(tok):
    text = open(os.path.join(HERE, "data", "gpt2-tokenizer", "merges.txt"), encoding="utf-8").read()[:200_000]
    expect = tok.encode(text)
    results = [None] * 4

    def work(k):
        results[k] = tok.encode(text)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(r == expect for r in results)


# -- malformed files ------------------------------------------------------------------------------


def gpt2_vocab():
    with open(os.path.join(GPT2_DIR, "vocab.json"), encoding="utf-8") as f:
        return json.load(f)


def gpt2_merges():
    with open(os.path.join(GPT2_DIR, "merges.txt"), encoding="utf-8") as f:
        return f.read()


def write_dir(path, vocab=None, merges=None, vocab_text=None):
    with open(os.path.join(path, "vocab.json"), "w", encoding="utf-8") as f:
        f.write(vocab_text if vocab_text is not None else json.dumps(vocab if vocab is not None else gpt2_vocab()))
    with open(os.path.join(path, "merges.txt"), "w", encoding="utf-8") as f:
        f.write(merges if merges is not None else gpt2_merges())
    return path


def test_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        Tokenizer.from_dir(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="vocab.json"):
        Tokenizer.from_dir(tmp_path)
    shutil.copy(os.path.join(GPT2_DIR, "vocab.json"), tmp_path / "vocab.json")
    with pytest.raises(FileNotFoundError, match="merges.txt"):
        Tokenizer.from_dir(tmp_path)


@pytest.mark.parametrize(
    "vocab_text,match",
    [
        ("{not json", "not valid JSON"),
        ("[1, 2, 3]", "JSON object"),
        ("{}", "JSON object"),
        ('{"a": "0"}', "must be an integer"),
        ('{"a": true}', "must be an integer"),
        ('{"a": 0, "b": 5}', "outside"),
        ('{"a": 0, "b": -1}', "outside"),
        ('{"a": 0, "b": 0}', "same id"),
        ("[" * 100_000, "nested too deeply"),
        ('{"a": ' + "[" * 100_000 + "]" * 100_000 + "}", "nested too deeply"),
    ],
)
def test_malformed_vocab(tmp_path, vocab_text, match):
    write_dir(tmp_path, vocab_text=vocab_text, merges="#version: 0.2\n")
    with pytest.raises(pygpt.ModelFormatError, match=match):
        Tokenizer.from_dir(tmp_path)


def test_malformed_vocab_contents(tmp_path):
    vocab = gpt2_vocab()
    vocab["a b"] = vocab.pop("Ġthe")  # a raw space is not a byte-level character
    write_dir(tmp_path, vocab=vocab)
    with pytest.raises(ValueError, match="byte-level"):
        Tokenizer.from_dir(tmp_path)

    vocab = gpt2_vocab()
    hole = vocab.pop("Ā")  # byte 0; the last token takes its id so ids stay dense
    vocab[max(vocab, key=vocab.get)] = hole
    write_dir(tmp_path, vocab=vocab, merges="#version: 0.2\n")
    with pytest.raises(ValueError, match="no token for byte 0"):
        Tokenizer.from_dir(tmp_path)

    with open(tmp_path / "vocab.json", "wb") as f:
        f.write(b'{"\xff": 0}')
    with pytest.raises(ValueError, match="UTF-8"):
        Tokenizer.from_dir(tmp_path)


@pytest.mark.parametrize(
    "line,match",
    [
        ("Ġ zzzunknown", "uses 'zzzunknown'"),
        ("nope Ġ", "uses 'nope'"),
        ("Ġthe Ġthe", "makes 'ĠtheĠthe'"),
        ("Ġ t h", "two tokens"),
        ("Ġt", "two tokens"),
        ("Ġ  t", "two tokens"),
    ],
)
def test_malformed_merges(tmp_path, line, match):
    write_dir(tmp_path, merges=gpt2_merges() + line + "\n")
    with pytest.raises(pygpt.ModelFormatError, match=match) as info:
        Tokenizer.from_dir(tmp_path)
    assert ":50002:" in str(info.value)  # names the line
    assert isinstance(info.value, ValueError)


def test_merges_file_variants(tmp_path, tok):
    # no header, CRLF line endings, no final newline: all accepted
    body = gpt2_merges().split("\n", 1)[1].rstrip("\n").replace("\n", "\r\n")
    write_dir(tmp_path, merges=body)
    t = Tokenizer.from_dir(tmp_path)
    assert t.n_merges == 50000 and t.encode("merges file variants") == tok.encode("merges file variants")


def test_core_validates_plain_data():
    byte_tokens = [bytes([b]) for b in range(256)]
    with pytest.raises(ValueError, match="between 256"):
        Tokenizer(byte_tokens[:10], [])
    with pytest.raises(ValueError, match="empty"):
        Tokenizer(byte_tokens + [b""], [])
    with pytest.raises(ValueError, match="same bytes"):
        Tokenizer(byte_tokens + [b"a"], [])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        Tokenizer(byte_tokens, [(0, 999)])
    with pytest.raises(ValueError, match="not in the vocabulary"):
        Tokenizer(byte_tokens, [(97, 98)])
    with pytest.raises(ValueError, match="does not match"):
        Tokenizer(byte_tokens + [b"<|x|>"], [], {"<|y|>": 256})
    with pytest.raises(ValueError, match="outside the vocabulary"):
        Tokenizer(byte_tokens, [], {"<|y|>": 300})
    # the C++ core itself refuses a special that is not text (the Python class only passes str)
    from pygpt import _core

    with pytest.raises(ValueError, match="special token 256 is not valid UTF-8"):
        _core.Tokenizer(byte_tokens + [b"<\xff>"], [], [(b"<\xff>", 256)])


def test_byte_to_unicode_table():
    table = bytes_to_unicode()
    assert len(table) == 256 and len(set(table.values())) == 256
    assert table[ord(" ")] == "Ġ" and table[ord("\n")] == "Ċ" and table[ord("a")] == "a"


def test_overlapping_special_tokens():
    # two specials, one a prefix of the other: at the same position the longer one wins
    token_bytes = [bytes([b]) for b in range(256)] + [b"<|x|>", b"<|x|>y"]
    t = Tokenizer(token_bytes, [], {"<|x|>": 256, "<|x|>y": 257})
    text = "<|x|>y<|x|>z<|x|"
    tail = [ord(c) for c in "z<|x|"]
    assert t.encode(text, allowed_special="all") == [257, 256] + tail
    assert t.encode(text, allowed_special={"<|x|>"}) == [256, ord("y"), 256] + tail
    assert t.encode(text, allowed_special={"<|x|>y"}) == [257] + [ord(c) for c in "<|x|>"] + tail
    assert t.encode_batch([text, "y"], allowed_special={"<|x|>"}) == [t.encode(text, allowed_special={"<|x|>"}),
                                                                    [ord("y")]]
    assert t.encode(text) == list(text.encode())
    assert t.decode(t.encode(text, allowed_special="all")) == text
