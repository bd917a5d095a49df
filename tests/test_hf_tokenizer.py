"""Tokenizers as Hugging Face saves them: tokenizer.json (all that transformers 5 writes for a
GPT-2 tokenizer) and the added tokens of a fine-tune (a pad token, chat markers, new words),
read by pygpt.Tokenizer, carried by the converter and checked against transformers' own
tokenizer and model."""

import json
import os
import shutil

import numpy as np
import pytest

import pygpt
import pygpt.convert
from pygpt.tokenizer import Tokenizer

from conftest import GPT2_TOKENIZER, make_hf_model

EOT = "<|endoftext|>"
SPECIALS = ["<|im_start|>", "<|im_end|>"]
PAD = "<|pad|>"
WORDS = ["pygptword", " spacedword", "<|im"]  # not special; "<|im" is a prefix of two specials

TEXTS = [
    "Hello world",
    "<|im_start|>user\nWho art thou?<|im_end|>\n<|im_start|>assistant\n",
    "a pygptword, xpygptwordy, pygptwordpygptword and  spacedword or spacedword.",
    f"<|im<|im_start|><|im_end<|im_end|>{EOT}<|pad|>{PAD}tail",
    "  spacedword\n\n spacedword spacedwords",
    "Ünïcödé 日本語 🤖 <|im_start|>ok",
    "",
]


def gpt2_files():
    with open(os.path.join(GPT2_TOKENIZER, "vocab.json"), encoding="utf-8") as f:
        vocab = json.load(f)
    with open(os.path.join(GPT2_TOKENIZER, "merges.txt"), encoding="utf-8") as f:
        merges = [tuple(line.split()) for line in f.read().splitlines()[1:] if line]
    return vocab, merges


def corpus_lines(n=40):
    with open(os.path.join(os.path.dirname(GPT2_TOKENIZER), "corpus", "shakespeare-sample.txt"),
              encoding="utf-8") as f:
        return [line for line in f.read().splitlines() if line.strip()][:n]


@pytest.fixture(scope="module")
def hf_plain():
    """transformers' GPT-2 tokenizer, as the hub's gpt2 has it."""
    transformers = pytest.importorskip("transformers")
    vocab, merges = gpt2_files()
    return transformers.GPT2TokenizerFast(vocab=vocab, merges=merges)


@pytest.fixture(scope="module")
def hf_tuned(hf_plain):
    """A fine-tune's tokenizer: a pad token and chat markers (special), two new words (not)."""
    import copy

    tok = copy.deepcopy(hf_plain)
    tok.add_special_tokens({"pad_token": PAD, "additional_special_tokens": SPECIALS})
    tok.add_tokens(WORDS)
    assert len(tok) == 50257 + 6
    return tok


@pytest.fixture(scope="module")
def saved(hf_tuned, tmp_path_factory):
    """hf_tuned saved by transformers' save_pretrained."""
    path = tmp_path_factory.mktemp("hf-tuned-tokenizer")
    hf_tuned.save_pretrained(path)
    return path


def test_transformers_saves_tokenizer_json_alone(saved):
    """Why this matters: a GPT-2 tokenizer saved by transformers 5 has no vocab.json, so only
    tokenizer.json carries it."""
    assert os.path.isfile(saved / "tokenizer.json")
    if os.path.isfile(saved / "vocab.json"):
        pytest.skip("this transformers writes vocab.json too (4.x)")


def test_tokenizer_json_encodes_as_transformers(hf_tuned, saved):
    tok = Tokenizer.from_dir(saved)
    assert tok.vocab_size == len(hf_tuned) == 50263
    assert tok.special_tokens == {EOT: 50256, PAD: 50257, "<|im_start|>": 50258, "<|im_end|>": 50259}
    assert tok.added_tokens == hf_tuned.get_added_vocab()
    for text in TEXTS + corpus_lines():
        ids = hf_tuned.encode(text)
        assert tok.encode(text, allowed_special="all") == ids, text
        assert tok.decode(ids) == hf_tuned.decode(ids)
        assert tok.decode(ids, skip_special_tokens=True) == hf_tuned.decode(ids, skip_special_tokens=True)
    assert tok.encode_batch(TEXTS, allowed_special="all") == [hf_tuned.encode(t) for t in TEXTS]


def test_added_words_are_always_matched_specials_only_when_allowed(saved):
    """The added tokens that are not special are vocabulary: matched in every encoding, as in
    transformers; special ones follow tiktoken's contract, as "<|endoftext|>" always has."""
    tok = Tokenizer.from_dir(saved)
    plain = Tokenizer.from_dir(GPT2_TOKENIZER)
    text = f"{EOT} pygptword"
    word = tok.added_tokens["pygptword"]
    assert tok.encode(text) == tok.encode_ordinary(text) == plain.encode(f"{EOT} ") + [word]
    assert tok.encode(text, allowed_special={EOT}) == [50256, 220, word]
    # "<|im" is an added word: in "<|im_start|>" read as text, it is matched first
    assert tok.encode("<|im_start|>") == [tok.added_tokens["<|im"]] + plain.encode("_start|>")
    assert tok.encode_batch([text, text], n_threads=2) == [tok.encode(text)] * 2
    assert tok.encode_batch([text], allowed_special={"<|im_end|>"}) == [tok.encode(text)]
    with pytest.raises(ValueError, match="disallowed"):
        tok.encode(text, disallowed_special="all")
    assert tok.encode("pygptword", disallowed_special="all") == [word]  # not special: no error
    # skip_special_tokens leaves the added words
    assert tok.decode([50258, word, 50256], skip_special_tokens=True) == "pygptword"
    with pytest.raises(TypeError):
        tok.decode(["x"], skip_special_tokens=True)
    with pytest.raises(ValueError):
        tok.decode([50263], skip_special_tokens=True)


def test_plain_tokenizer_json_is_gpt2(hf_plain, tmp_path):
    """The hub's gpt2 tokenizer.json (merges as lists, or "a b" strings as tokenizers before
    0.20 wrote them) gives the ids of vocab.json + merges.txt."""
    hf_plain.save_pretrained(tmp_path)
    ref = Tokenizer.from_dir(GPT2_TOKENIZER)
    tok = Tokenizer.from_dir(tmp_path)
    assert tok.special_tokens == ref.special_tokens == {EOT: 50256} and tok.n_merges == 50000
    with open(tmp_path / "tokenizer.json", encoding="utf-8") as f:
        data = json.load(f)
    data["model"]["merges"] = [" ".join(m) for m in data["model"]["merges"]]
    with open(tmp_path / "old.json", "w", encoding="utf-8") as f:
        json.dump(data, f)
    old = Tokenizer.from_file(tmp_path / "old.json")
    for text in TEXTS + corpus_lines():
        assert tok.encode(text, allowed_special="all") == ref.encode(text, allowed_special="all")
        assert old.encode(text) == ref.encode(text)


def test_vocab_merges_with_added_tokens_in_tokenizer_config(hf_tuned, saved, tmp_path):
    """transformers 4.34 to 4.x saved slow tokenizers as vocab.json + merges.txt, and listed
    the added tokens in tokenizer_config.json's added_tokens_decoder."""
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(os.path.join(GPT2_TOKENIZER, name), tmp_path / name)
    decoder = {str(i): {"content": t, "lstrip": False, "normalized": False, "rstrip": False,
                        "single_word": False, "special": t in hf_tuned.all_special_tokens}
               for t, i in hf_tuned.get_added_vocab().items()}
    with open(tmp_path / "tokenizer_config.json", "w", encoding="utf-8") as f:
        json.dump({"added_tokens_decoder": decoder, "model_max_length": 1024}, f)
    tok = Tokenizer.from_dir(tmp_path)
    ref = Tokenizer.from_dir(saved)
    assert tok.special_tokens == ref.special_tokens and tok.added_tokens == ref.added_tokens
    for text in TEXTS:
        assert tok.encode(text, allowed_special="all") == hf_tuned.encode(text)
    # the added tokens listed in added_tokens.json alone (older transformers): refused, not dropped
    os.remove(tmp_path / "tokenizer_config.json")
    with open(tmp_path / "added_tokens.json", "w", encoding="utf-8") as f:
        json.dump({PAD: 50257}, f)
    with pytest.raises(pygpt.ModelFormatError, match="added_tokens.json"):
        Tokenizer.from_dir(tmp_path)


def edit(saved, tmp_path, change):
    with open(saved / "tokenizer.json", encoding="utf-8") as f:
        data = json.load(f)
    change(data)
    with open(tmp_path / "tokenizer.json", "w", encoding="utf-8") as f:
        json.dump(data, f)
    return tmp_path


def added(data, content):
    return next(t for t in data["added_tokens"] if t["content"] == content)


@pytest.mark.parametrize("change,match", [
    (lambda d: d["model"].update(type="WordPiece"), "'WordPiece', not BPE"),
    (lambda d: d["model"].update(dropout=0.1), "dropout"),
    (lambda d: d["model"].update(continuing_subword_prefix="##"), "continuing_subword_prefix"),
    (lambda d: d["model"].update(byte_fallback=True), "byte_fallback"),
    (lambda d: d["pre_tokenizer"].update(add_prefix_space=True), "not GPT-2's"),
    (lambda d: d.update(pre_tokenizer={"type": "Whitespace"}), "not GPT-2's"),
    (lambda d: d.update(normalizer={"type": "NFC"}), "normalizer"),
    (lambda d: d.update(decoder={"type": "WordPiece"}), "decoder"),
    (lambda d: added(d, "pygptword").update(lstrip="yes"), "lstrip 'yes', not true or false"),
    (lambda d: added(d, "<|im_end|>").update(single_word=1), "single_word 1, not true or false"),
    (lambda d: added(d, "pygptword").update(id=50300), "no gap"),
    (lambda d: added(d, "pygptword").update(id=50257), "repeats"),
    (lambda d: added(d, "pygptword").update(id=5), "gives to"),
    (lambda d: added(d, "pygptword").update(id="x"), "integer id"),
    (lambda d: added(d, "pygptword").update(content=""), "non-empty"),
    (lambda d: added(d, "pygptword").update(content="Hello"), "vocabulary has"),
    (lambda d: d.update(added_tokens={}), "must be a list"),
    (lambda d: d["model"]["merges"].append(["Ġ", "zzz"]), "uses 'zzz'"),
    (lambda d: d["model"]["merges"].append("a b c"), r"merges\[50000\] must be two tokens"),
    (lambda d: d["model"].update(vocab=[]), "mapping each token"),
    (lambda d: d.pop("model"), "no \"model\" object"),
])
def test_other_tokenizers_are_refused(saved, tmp_path, change, match):
    folder = edit(saved, tmp_path, change)
    with pytest.raises(pygpt.ModelFormatError, match=match) as info:
        Tokenizer.from_dir(folder)
    assert "tokenizer.json" in str(info.value)


def test_added_token_with_the_bytes_of_a_vocabulary_token_is_refused(saved, tmp_path):
    """transformers adds " the" beside "Ġthe" (the same bytes); pygpt cannot tell them apart."""
    folder = edit(saved, tmp_path, lambda d: added(d, "pygptword").update(content=" the"))
    with pytest.raises(pygpt.ModelFormatError, match="same bytes"):
        Tokenizer.from_dir(folder)


def test_not_json(tmp_path):
    (tmp_path / "tokenizer.json").write_text("{nope", encoding="utf-8")
    with pytest.raises(pygpt.ModelFormatError, match="not valid JSON"):
        Tokenizer.from_dir(tmp_path)
    (tmp_path / "tokenizer.json").write_text("[" * 100_000, encoding="utf-8")
    with pytest.raises(pygpt.ModelFormatError, match="nested too deeply"):
        Tokenizer.from_dir(tmp_path)


# -- a fine-tuned model with added tokens, converted ------------------------------------------


@pytest.fixture(scope="module")
def tuned_model(hf_tuned, tmp_path_factory):
    """(torch model, hf folder, pygpt folder): a random GPT-2 resized to the fine-tune's tokenizer
    (padded to a multiple of 64 rows, as resize_token_embeddings(pad_to_multiple_of=64) does),
    saved with its tokenizer by transformers, converted by pygpt."""
    torch = pytest.importorskip("torch")
    base = tmp_path_factory.mktemp("tuned")
    hf_dir, out_dir = base / "hf", base / "pygpt"
    model = make_hf_model(hf_dir, seed=3, n_layer=2, n_head=2, n_embd=64, n_positions=128)
    model.resize_token_embeddings(len(hf_tuned), pad_to_multiple_of=64, mean_resizing=False)
    with torch.no_grad():  # the new rows: random like the others, so that they matter
        model.transformer.wte.weight[50257:] = torch.randn(model.transformer.wte.weight.shape[0] - 50257, 64) * 0.2
    model.save_pretrained(hf_dir)
    hf_tuned.save_pretrained(hf_dir)
    pygpt.convert.convert(str(hf_dir), str(out_dir))
    return model, hf_dir, out_dir


def test_converted_model_keeps_its_added_tokens(tuned_model, hf_tuned):
    torch = pytest.importorskip("torch")
    hf, _, out_dir = tuned_model
    assert hf.transformer.wte.weight.shape[0] == 50304
    assert sorted(os.listdir(out_dir)) == ["config.json", "generation_config.json", "model.safetensors",
                                           "tokenizer.json"]
    model = pygpt.load(out_dir)
    assert model.config["vocab_size"] == 50263  # the padding rows trimmed, the added tokens' kept
    text = "<|im_start|>user\nSay pygptword<|im_end|>\n<|im_start|>assistant\n"
    ids = hf_tuned.encode(text)
    assert model.tokenizer.encode(text, allowed_special="all") == ids and 50258 in ids and 50260 in ids
    with torch.no_grad():
        ref = hf(torch.tensor([ids])).logits[0, :, :50263].numpy()
    got = model.logits(ids)
    assert np.abs(got - ref).max() <= 1e-4 * np.abs(ref).max()
    out = model.generate(text, max_new_tokens=12, temperature=0, ignore_eos=True)
    want = hf.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                       max_new_tokens=12, do_sample=False, min_new_tokens=12, pad_token_id=50257,
                       suppress_tokens=list(range(50263, 50304)))[0, len(ids):].tolist()  # not the padding
    assert out.tokens == want


def test_converted_chat_model_ends_at_its_end_token(tuned_model, hf_tuned):
    """ChatML with its markers as tokens: the prompt is the tokens transformers'
    apply_chat_template gives, and the reply ends where the model writes <|im_end|>."""
    _, _, out_dir = tuned_model
    model = pygpt.load(out_dir)
    messages = [{"role": "user", "content": "Who art thou?"}]
    template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    hf_tuned.chat_template = template
    want = hf_tuned.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)
    want = want["input_ids"] if isinstance(want, dict) or hasattr(want, "keys") else want
    assert model.tokenizer.encode(model.apply_chat_template(messages, template="chatml"),
                                  allowed_special="all") == list(want)
    end = model.tokenizer.special_tokens["<|im_end|>"]
    words = model.tokenizer.added_tokens["pygptword"]
    out = model.chat(messages, template="chatml", max_new_tokens=8, temperature=0, logit_bias={end: 30.0})
    assert out.text == "" and out.finish_reason == "stop" and out.tokens == [end]
    out = model.chat(messages, template="chatml", max_new_tokens=3, temperature=0, logit_bias={words: 30.0})
    assert out.text == "pygptword" * 3 and out.tokens == [words] * 3


def test_converter_carries_added_tokens_of_a_vocab_folder(tuned_model, hf_tuned, tmp_path):
    """A source whose tokenizer is vocab.json + merges.txt with added tokens in
    tokenizer_config.json: the output folder lists them again, in a tokenizer_config.json of
    its own, beside the vocabulary files."""
    _, hf_dir, _ = tuned_model
    src = tmp_path / "src"
    shutil.copytree(hf_dir, src)
    os.remove(src / "tokenizer.json")
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(os.path.join(GPT2_TOKENIZER, name), src / name)
    decoder = {str(i): {"content": t, "special": t in hf_tuned.all_special_tokens}
               for t, i in hf_tuned.get_added_vocab().items()}
    with open(src / "tokenizer_config.json", "w", encoding="utf-8") as f:
        json.dump({"added_tokens_decoder": decoder}, f)
    out = tmp_path / "out"
    os.makedirs(out)
    (out / "tokenizer.json").write_text("{}", encoding="utf-8")  # an earlier conversion's: removed
    pygpt.convert.convert(str(src), str(out))
    assert {"vocab.json", "merges.txt", "tokenizer_config.json"} <= set(os.listdir(out))
    assert not os.path.exists(out / "tokenizer.json")
    model = pygpt.load(out)
    assert model.config["vocab_size"] == 50263
    assert model.tokenizer.added_tokens == hf_tuned.get_added_vocab()
    assert model.tokenizer.encode(TEXTS[2]) == hf_tuned.encode(TEXTS[2])


def test_converter_refuses_a_tokenizer_it_cannot_read(tuned_model, tmp_path):
    _, hf_dir, _ = tuned_model
    bad = edit(hf_dir, tmp_path, lambda d: d.update(normalizer={"type": "NFKC"}))
    with pytest.raises(pygpt.ModelFormatError, match="normalizer"):
        pygpt.convert.convert(str(hf_dir), str(tmp_path / "out"), tokenizer=str(bad))
    assert not os.path.exists(tmp_path / "out")  # nothing written


def test_tokenizer_option_accepts_a_tokenizer_json_folder(hf_plain, tmp_path):
    model_dir = tmp_path / "hf"
    make_hf_model(model_dir, seed=1, n_layer=1, n_head=2, n_embd=32, n_positions=32)
    tok_dir = tmp_path / "tok"
    hf_plain.save_pretrained(tok_dir)
    pygpt.convert.convert(str(model_dir), str(tmp_path / "out"), tokenizer=str(tok_dir))
    model = pygpt.load(tmp_path / "out")
    assert model.tokenizer.encode("Hello world") == [15496, 995]
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        pygpt.convert.convert(str(model_dir), str(tmp_path / "out2"), tokenizer=str(tmp_path))


def test_gguf_file_of_the_fine_tune_keeps_its_added_tokens(tuned_model, hf_tuned, load_tool, tmp_path):
    """llama.cpp's converter writes the added tokens as CONTROL (special) or USER_DEFINED
    tokens holding their text, and pads the list to the embedding's 50304 rows with UNUSED
    "[PAD<id>]" tokens: converted, the pads and their rows go, the added tokens stay."""
    pytest.importorskip("gguf")
    _, hf_dir, ref_dir = tuned_model
    added = sorted((i, t) for t, i in hf_tuned.get_added_vocab().items() if i >= 50257)
    path = str(tmp_path / "tuned.gguf")
    load_tool("bench").write_gguf(str(hf_dir), path, tokenizer_dir=GPT2_TOKENIZER,
                                  added_tokens=[(t, t in hf_tuned.all_special_tokens) for _, t in added])
    out = pygpt.convert.convert(path, str(tmp_path / "out"))
    model, ref = pygpt.load(out), pygpt.load(ref_dir)
    assert model.config["vocab_size"] == 50263
    assert model.tokenizer.added_tokens == hf_tuned.get_added_vocab()
    assert model.tokenizer.special_tokens == ref.tokenizer.special_tokens
    for text in TEXTS:
        assert model.tokenizer.encode(text, allowed_special="all") == hf_tuned.encode(text)
    ids = hf_tuned.encode(TEXTS[1])
    assert np.array_equal(model.logits(ids), ref.logits(ids))


def test_command_line_tokenizes_with_added_tokens(saved, hf_tuned, pygpt_cmd):
    import subprocess

    text = "<|im_start|>hi pygptword<|im_end|>"
    run = subprocess.run(pygpt_cmd + ["tokenize", str(saved), text, "--special"], capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert [int(t) for t in run.stdout.split()] == hf_tuned.encode(text)


def test_a_token_cannot_be_both_special_and_added():
    byte_tokens = [bytes([b]) for b in range(256)] + [b"<|x|>"]
    with pytest.raises(ValueError, match="both special and added"):
        Tokenizer(byte_tokens, [], {"<|x|>": 256}, {"<|x|>": 256})
    t = Tokenizer(byte_tokens, [], None, {"<|x|>": 256})
    assert t.encode("a<|x|>") == [97, 256] and t.special_tokens == {} and t.added_tokens == {"<|x|>": 256}


def test_a_post_processor_that_adds_tokens_is_named(saved, tmp_path):
    """transformers' add_bos_token writes a post-processor that puts <|endoftext|> before every
    text; pygpt's encode gives a text's own tokens, and says so when it loads such a file."""
    import transformers

    vocab, merges = gpt2_files()
    with_bos = transformers.GPT2TokenizerFast(vocab=vocab, merges=merges, add_bos_token=True)
    assert with_bos.encode("Hello world") == [50256, 15496, 995]
    with_bos.save_pretrained(tmp_path / "bos")
    with open(tmp_path / "bos" / "tokenizer.json", encoding="utf-8") as f:
        bos = json.load(f)["post_processor"]
    for post in (bos, {"type": "Sequence", "processors": [{"type": "ByteLevel"}, bos]}):
        folder = edit(saved, tmp_path, lambda d: d.update(post_processor=post))
        with pytest.warns(UserWarning, match="adds special tokens to each text"):
            tok = Tokenizer.from_dir(folder)
        assert tok.encode("Hello world") == [15496, 995]
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Tokenizer.from_dir(saved)  # GPT-2's adds nothing: no warning


def test_a_tokenizer_larger_than_the_model_is_refused_at_conversion(saved, tmp_path):
    """Tokens added to the tokenizer without resize_token_embeddings: the model has no rows for
    them. The converter says so (before, the folder was written and failed to load)."""
    make_hf_model(tmp_path / "hf", seed=1, n_layer=1, n_head=2, n_embd=32, n_positions=32)
    with pytest.raises(pygpt.convert.ConversionError, match="50263 tokens but the model's embedding only 50257"):
        pygpt.convert.convert(str(tmp_path / "hf"), str(tmp_path / "out"), tokenizer=str(saved))
    assert not os.path.exists(tmp_path / "out")


def test_info_lists_the_added_tokens(tuned_model, pygpt_cmd):
    import subprocess

    _, _, out_dir = tuned_model
    run = subprocess.run(pygpt_cmd + ["info", str(out_dir)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    line = next(ln for ln in run.stdout.splitlines() if ln.startswith("tokenizer"))
    assert line.split(None, 1)[1] == ("50263 tokens, 6 added ('<|pad|>', '<|im_start|>', '<|im_end|>', "
                                      "'pygptword', ' spacedword', '<|im')")


def test_a_model_id_downloads_its_tokenizer_json(tuned_model, hf_tuned, monkeypatch, tmp_path):
    """`convert("user/model", out)`: the weights through transformers' from_pretrained, the
    tokenizer and the other files through huggingface_hub's hf_hub_download (tokenizer.json
    first). The hub is faked here by a local folder: no download happens."""
    import huggingface_hub
    import transformers

    _, hf_dir, _ = tuned_model
    hub = tmp_path / "hub"
    shutil.copytree(hf_dir, hub)
    template = "{% for m in messages %}<|im_start|>{{ m['content'] }}<|im_end|>{% endfor %}"
    (hub / "chat_template.jinja").write_text(template, encoding="utf-8")
    cache = tmp_path / "cache"
    fetched = []

    def fake_download(repo_id, filename, **kw):
        assert repo_id == "someone/tuned-gpt2"
        fetched.append(filename)
        if not os.path.isfile(hub / filename):
            raise huggingface_hub.errors.EntryNotFoundError(f"{filename} not in {repo_id}")
        os.makedirs(cache, exist_ok=True)
        return shutil.copy(hub / filename, cache / filename)

    real = transformers.GPT2LMHeadModel.from_pretrained
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    monkeypatch.setattr(transformers.GPT2LMHeadModel, "from_pretrained",
                        lambda model_id, **kw: real(str(hub) if model_id == "someone/tuned-gpt2" else model_id, **kw))
    out = pygpt.convert.convert("someone/tuned-gpt2", str(tmp_path / "out"))
    assert fetched[0] == "tokenizer.json" and "vocab.json" not in fetched
    assert {"tokenizer.json", "chat_template.jinja", "generation_config.json"} <= set(os.listdir(out))
    model = pygpt.load(out)
    assert model.config["vocab_size"] == 50263
    assert model.tokenizer.added_tokens == hf_tuned.get_added_vocab()
    assert model.chat_template.stop == ("<|im_end|>",)
    # what cannot be a model id is a missing path
    for missing in ("no/such/folder", "./gpt2", "../gpt2", "ckpt.pt", "model.gguf", str(tmp_path / "gone")):
        with pytest.raises(FileNotFoundError, match="no such file or folder"):
            pygpt.convert.convert(missing, str(tmp_path / "x"))
