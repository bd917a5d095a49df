"""tools/train_tokenizer.py and tools/train.py: tokenizer training, pre-training, resume,
fine-tuning and export; and the quality of the default model shipped in the package.

Every training run here is a tiny config on a few KB of text and takes seconds."""

import json
import math
import os
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("tokenizers")

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "tools"))

import train  # noqa: E402  tools/train.py
import train_tokenizer  # noqa: E402  tools/train_tokenizer.py

CORPUS = os.path.join(HERE, "data", "corpus")
SAMPLE = os.path.join(CORPUS, "shakespeare-sample.txt")      # ~8 KB, the opening of a play
HELD_OUT = os.path.join(CORPUS, "eval-areopagitica.txt")     # Milton prose, never trained on

# besides the corpus text: pieces that stress byte-level BPE (unicode, digits, runs of spaces)
ODD_TEXTS = [
    "", " ", "\n\n\n", "Hello world", "  two  spaces\tand a tab", "ROMEO: O, she doth teach the torches!",
    "naïve café — “quoted” ’tis", "数学 and emoji 🙂🙃", "1234567 3.14159 2026-11-29", "don't I'll we've",
    "<|endoftext|> is plain text here",
]

TINY = ["--n-layer", "1", "--n-head", "2", "--n-embd", "32", "--block-size", "32", "--batch-size", "8",
        "--eval-iters", "4", "--threads", "1", "--quiet"]


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("tok")
    n = train_tokenizer.train_tokenizer([SAMPLE], out, vocab_size=400, show_progress=False)
    assert n == 400
    return out


def test_tokenizer_layout(tok_dir):
    vocab = json.loads((tok_dir / "vocab.json").read_text(encoding="utf-8"))
    merges = (tok_dir / "merges.txt").read_text(encoding="utf-8").splitlines()
    assert merges[0].startswith("#version")
    assert len(vocab) == 400 and len(merges) - 1 == 400 - 256 - 1
    assert vocab[train_tokenizer.EOT] == 399                       # <|endoftext|> is the last id
    assert sorted(vocab.values()) == list(range(400))
    # ids 0..255 are the bytes in GPT-2's order (same as GPT-2's own vocab.json)
    gpt2 = json.load(open(os.path.join(HERE, "data", "gpt2-tokenizer", "vocab.json"), encoding="utf-8"))
    by_id = {i: t for t, i in vocab.items()}
    assert all(gpt2[by_id[i]] == i for i in range(256))
    # every merge's result is a token, numbered in merge order after the bytes
    for rank, line in enumerate(merges[1:]):
        a, b = line.split(" ")
        assert vocab[a + b] == 256 + rank


def test_tokenizer_is_deterministic(tok_dir, tmp_path):
    train_tokenizer.train_tokenizer([SAMPLE], tmp_path, vocab_size=400, show_progress=False)
    for name in ("vocab.json", "merges.txt"):
        assert (tmp_path / name).read_bytes() == (tok_dir / name).read_bytes()


def test_tokenizer_compresses_and_round_trips(tok_dir):
    hf = train_tokenizer.load_hf_tokenizer(tok_dir)
    text = open(SAMPLE, encoding="utf-8").read()
    ids = hf.encode(text).ids
    assert len(ids) < 0.6 * len(text.encode())    # 143 merges already save 40% of the tokens
    assert hf.decode(ids) == text


def test_pygpt_tokenizer_agrees_with_hf(tok_dir):
    from pygpt.tokenizer import Tokenizer

    ours = Tokenizer.from_dir(str(tok_dir))
    hf = train_tokenizer.load_hf_tokenizer(tok_dir)
    texts = [open(SAMPLE, encoding="utf-8").read(), open(HELD_OUT, encoding="utf-8").read()[:5000]] + ODD_TEXTS
    for text in texts:
        expected = hf.encode(text).ids
        assert list(ours.encode(text)) == expected, text[:60]
        assert ours.decode(expected) == text


def test_tokenizer_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        train_tokenizer.train_tokenizer([tmp_path / "missing.txt"], tmp_path / "o")
    with pytest.raises(ValueError):
        train_tokenizer.train_tokenizer([SAMPLE], tmp_path / "o", vocab_size=100)


# ---------------------------------------------------------------------------------------------
# training


def _text_loss(model, ids, block_size):
    """Mean next-token loss of a torch GPT over the whole id sequence, disjoint windows."""
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for s in range(0, len(ids) - 1, block_size):
            chunk = torch.tensor(ids[s:s + block_size + 1])[None]
            if chunk.shape[1] < 2:
                break
            logits, _ = model(chunk[:, :-1])
            total += torch.nn.functional.cross_entropy(logits[0], chunk[0, 1:], reduction="sum").item()
            count += chunk.shape[1] - 1
    return total / count


def test_train_from_scratch_lowers_loss(tok_dir, tmp_path):
    out = tmp_path / "run"
    res = train.main([SAMPLE, "--tokenizer", str(tok_dir), "--out", str(out), "--max-iters", "60",
                      "--lr", "3e-3", "--warmup-iters", "5", "--eval-interval", "30", *TINY])
    # a fresh model predicts ~uniformly: loss ln(400) = 6.0; 60 steps take it below 5.0
    assert res["train_loss"] < math.log(400) - 1.0
    ckpt = torch.load(out / "ckpt.pt", map_location="cpu", weights_only=True)  # what the converter loads
    assert ckpt["model_args"]["n_layer"] == 1 and ckpt["model_args"]["vocab_size"] == 400
    assert ckpt["iter_num"] == 60
    assert [it for it, _ in ckpt["history"]["val"]] == [30, 60]
    assert ckpt["history"]["val"][-1][1] < ckpt["history"]["val"][0][1]
    assert (out / "loss.png").stat().st_size > 1000
    assert (out / "vocab.json").is_file() and (out / "merges.txt").is_file()
    # the checkpoint is an --init-from source too (through the converter), tokenizer included
    model, tok = train.load_init(str(out / "ckpt.pt"), dropout=0.0)
    direct = train.gpt_from_checkpoint(ckpt)
    for k, v in direct.state_dict().items():
        torch.testing.assert_close(model.state_dict()[k], v)
    assert (tok / "vocab.json").read_bytes() == (out / "vocab.json").read_bytes()


def test_resume_continues_exactly(tok_dir, tmp_path):
    common = [SAMPLE, "--tokenizer", str(tok_dir), "--warmup-iters", "2", "--eval-interval", "5", *TINY]
    straight = train.main(common + ["--out", str(tmp_path / "a"), "--max-iters", "10"])
    # an interrupted run: the same schedule (decaying over 10 steps), stopped after 5
    train.main(common + ["--out", str(tmp_path / "b"), "--max-iters", "5", "--lr-decay-iters", "10"])
    resumed = train.main(common + ["--out", str(tmp_path / "b"), "--max-iters", "10", "--resume"])
    a = torch.load(tmp_path / "a" / "ckpt.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "b" / "ckpt.pt", weights_only=True)["model"]
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)
    assert resumed["train_loss"] == pytest.approx(straight["train_loss"], rel=1e-4)


def test_train_errors(tok_dir, tmp_path):
    with pytest.raises(ValueError, match="tokenizer"):
        train.main([SAMPLE, "--out", str(tmp_path / "x"), *TINY])
    with pytest.raises(FileNotFoundError):
        train.main([SAMPLE, "--out", str(tmp_path / "y"), "--resume", *TINY])


def test_gpt_matches_hugging_face(tmp_path):
    """Our GPT, initialised from a converted HF GPT-2, computes HF's logits (tanh GELU)."""
    from conftest import make_hf_model

    hf = make_hf_model(str(tmp_path / "hf"), n_layer=2, n_head=2, n_embd=32, n_positions=64, vocab_size=300)
    model, _ = train.load_init(str(tmp_path / "hf"), dropout=0.0)
    assert model.config.activation == "gelu_tanh"
    ids = torch.randint(0, 300, (2, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours, _ = model.eval()(ids)
        theirs = hf(ids).logits
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)


def test_finetune_lowers_loss_and_exports(tok_dir, tmp_path):
    """Fine-tune a converted tiny HF GPT-2 on a few KB: its loss on the text drops, and the
    exported pygpt folder loads, agrees with the trained torch model and generates."""
    import shutil

    import pygpt
    from conftest import make_hf_model

    hf_dir = tmp_path / "hf"
    make_hf_model(str(hf_dir), seed=1, n_layer=2, n_head=2, n_embd=32, n_positions=64, vocab_size=400)
    for name in ("vocab.json", "merges.txt"):
        shutil.copyfile(tok_dir / name, hf_dir / name)
    ids = train_tokenizer.load_hf_tokenizer(tok_dir).encode(open(SAMPLE, encoding="utf-8").read()).ids
    before, _ = train.load_init(str(hf_dir), dropout=0.0)
    loss_before = _text_loss(before, ids, 64)

    out, export = tmp_path / "ft", tmp_path / "exported"
    train.main([SAMPLE, "--init-from", str(hf_dir), "--out", str(out), "--max-iters", "40", "--lr", "3e-3",
                "--warmup-iters", "2", "--eval-interval", "20", "--val-fraction", "0", "--batch-size", "8",
                "--block-size", "64", "--eval-iters", "2", "--threads", "1", "--quiet", "--export", str(export)])
    after = train.gpt_from_checkpoint(torch.load(out / "ckpt.pt", weights_only=True))
    loss_after = _text_loss(after, ids, 64)
    assert loss_after < loss_before - 0.5, (loss_before, loss_after)

    m = pygpt.load(str(export))
    assert m.config["activation"] == "gelu_tanh"                # kept from the HF source
    assert m.config["n_ctx"] == 64 and m.config["vocab_size"] == 400
    with torch.no_grad():
        expected = after.eval()(torch.tensor(ids[:50])[None])[0][0].numpy()
    np.testing.assert_allclose(m.logits(ids[:50]), expected, rtol=1e-3, atol=1e-3)
    text = m.generate("COUNTESS.\n", max_new_tokens=12, temperature=0).text
    assert isinstance(text, str) and len(text) > 0

    # the exported folder is itself a valid --init-from source
    again, tok = train.load_init(str(export), dropout=0.0)
    for k, v in after.state_dict().items():
        torch.testing.assert_close(again.state_dict()[k], v)


# ---------------------------------------------------------------------------------------------
# the default model shipped in the package


def _unigram_entropy(ids, vocab_size):
    """Cross-entropy (nats/token) of the text under the unigram distribution fitted to the
    text itself: the best any model that ignores context can do on it."""
    counts = np.bincount(np.asarray(ids), minlength=vocab_size).astype(np.float64)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def test_default_model_beats_unigram_baseline():
    import pygpt
    from pygpt.perplexity import negative_log_likelihood

    m = pygpt.load()
    assert m.config["n_ctx"] >= 128
    text = open(HELD_OUT, encoding="utf-8").read()[:12000]
    ids = m.tokenizer.encode(text)
    nll, n = negative_log_likelihood(m, ids, progress=False)
    model_loss = nll / n
    baseline = _unigram_entropy(ids, m.config["vocab_size"])
    # the unigram fitted to the held-out text itself is an optimistic baseline; the model,
    # which never saw this text, must still beat it clearly
    assert model_loss < baseline - 0.5, (model_loss, baseline)


def test_default_model_greedy_sample_reads_like_the_corpus():
    """Greedy continuations are mostly real words of the corpus' English, unlike noise: the
    share of their words found in the test texts is measured against random tokens."""
    import re

    import pygpt

    m = pygpt.load()
    known = set()
    for path in (SAMPLE, HELD_OUT):
        known |= {w.lower() for w in re.findall(r"[A-Za-z]+", open(path, encoding="utf-8").read())}

    def known_share(text):
        words = re.findall(r"[A-Za-z]+", text)
        return sum(w.lower() in known for w in words) / max(1, len(words)), len(words)

    prompts = ["To be, or not to be", "KING HENRY.\nNow, lords,", "Of Man's first disobedience"]
    text = " ".join(m.generate(p, max_new_tokens=40, temperature=0).text for p in prompts)
    share, n_words = known_share(text)
    noise = m.tokenizer.decode(np.random.default_rng(0).integers(0, m.config["vocab_size"] - 1, 120).tolist())
    noise_share, _ = known_share(noise)
    assert n_words >= 30, text
    assert noise_share < 0.4                 # random tokens: mostly word fragments
    assert share > 0.6, text                 # the model: mostly words
