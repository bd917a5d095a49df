"""Perplexity with strided sliding windows (pygpt/perplexity.py) against PyTorch computing the
Hugging Face perplexity guide's recipe with the same weights and the same windows."""

import math
import os
import sys

import numpy as np
import pytest

from pygpt.perplexity import negative_log_likelihood, perplexity, windows

HERE = os.path.dirname(os.path.abspath(__file__))
HELD_OUT = os.path.join(HERE, "data", "corpus", "eval-areopagitica.txt")
REL_TOL = 1e-3


def torch_guide_perplexity(forward, ids, n_ctx, stride):
    """The HF guide's loop (https://huggingface.co/docs/transformers/perplexity) in PyTorch:
    windows of n_ctx every `stride` tokens, labels already scored masked with -100, the
    loss summed over the scored (shifted) labels. forward: [1, T] ids -> [1, T, V] logits."""
    import torch
    import torch.nn.functional as F

    nll, count, prev_end = 0.0, 0, 0
    for begin in range(0, len(ids), stride):
        end = min(begin + n_ctx, len(ids))
        trg_len = end - prev_end
        input_ids = torch.tensor(ids[begin:end])[None]
        target_ids = input_ids.clone()
        target_ids[:, :-trg_len] = -100
        with torch.no_grad():
            logits = forward(input_ids).double()
        labels = target_ids[0, 1:]  # the model's own label shift
        nll += F.cross_entropy(logits[0, :-1], labels, ignore_index=-100, reduction="sum").item()
        count += int((labels != -100).sum())
        prev_end = end
        if end == len(ids):
            break
    return math.exp(nll / count), count


# ---------------------------------------------------------------------------------------------
# the windows


@pytest.mark.parametrize("n,n_ctx,stride", [(1000, 64, 64), (1000, 64, 32), (1000, 64, 1), (64, 64, 16),
                                            (65, 64, 64), (10, 64, 64), (2, 8, 3), (130, 64, 63)])
def test_windows_score_every_token_once(n, n_ctx, stride):
    wins = windows(n, n_ctx, stride)
    scored = [t for _, end, first in wins for t in range(first, end)]
    # no token twice, in order; the only tokens left out are the text's first token and, when
    # windows do not overlap (stride = n_ctx), the first token of each window (nothing before it)
    assert scored == sorted(set(scored))
    unscored = set(range(n)) - set(scored)
    assert unscored == {0} | (set(range(0, n, stride)) if stride == n_ctx else set())
    for begin, end, first in wins:
        assert 0 <= begin < first < end <= n and end - begin <= n_ctx
    assert wins[-1][1] == n or (stride == n_ctx and n % n_ctx == 1)  # a last window of 1 token scores nothing
    # with overlapping windows, every scored token after the first window sees >= n_ctx - stride context
    for begin, end, first in wins[1:]:
        assert first - begin >= n_ctx - stride


def test_window_errors():
    with pytest.raises(ValueError, match="stride"):
        windows(100, 64, 0)
    with pytest.raises(ValueError, match="stride"):
        windows(100, 64, 65)
    with pytest.raises(ValueError, match="n_ctx"):
        windows(100, 1, 1)


# ---------------------------------------------------------------------------------------------
# against PyTorch, with a random-weight model converted from Hugging Face


@pytest.mark.parametrize("stride", [None, 20, 1])
def test_matches_torch_on_ids(hf_model_factory, stride):
    import pygpt

    hf, _, out = hf_model_factory("odd")                # n_ctx 37, vocab 1001, 3 heads
    m = pygpt.load(out)
    ids = np.random.default_rng(0).integers(0, 1001, size=150).tolist()
    expected, count = torch_guide_perplexity(lambda x: hf(x).logits, ids, 37, stride or 37)
    nll, n = negative_log_likelihood(m, ids, stride=stride, progress=False)
    assert n == count == (149 if stride else 150 - 5)   # disjoint windows: 5 window starts unscored
    assert perplexity(m, ids, stride=stride) == pytest.approx(expected, rel=REL_TOL)
    assert math.exp(nll / n) == pytest.approx(expected, rel=REL_TOL)


def test_matches_torch_on_text(hf_model_factory):
    import pygpt

    hf, _, out = hf_model_factory("tiny")               # GPT-2 tokenizer, n_ctx 64
    m = pygpt.load(out)
    text = open(HELD_OUT, encoding="utf-8").read()[:1500]
    ids = m.tokenizer.encode(text)
    assert len(ids) > 3 * 64
    expected, _ = torch_guide_perplexity(lambda x: hf(x).logits, list(ids), 64, 32)
    assert perplexity(m, text, stride=32) == pytest.approx(expected, rel=REL_TOL)
    assert m.perplexity(text, stride=32) == pytest.approx(expected, rel=REL_TOL)


def test_errors(hf_model_factory):
    import pygpt

    m = pygpt.load(hf_model_factory("odd")[2])
    with pytest.raises(ValueError, match="at least 2 tokens"):
        perplexity(m, [5])
    with pytest.raises(ValueError, match="stride"):
        perplexity(m, list(range(100)), stride=38)
    with pytest.raises(ValueError, match="stride"):
        perplexity(m, list(range(100)), stride=0)
    with pytest.raises(ValueError):
        perplexity(m, [1, 2, 5000])                     # id out of range for vocab 1001


def test_progress_bar(hf_model_factory, capsys):
    import pygpt

    m = pygpt.load(hf_model_factory("odd")[2])
    ids = list(range(200))
    perplexity(m, ids, progress=True)
    assert "perplexity" in capsys.readouterr().err
    perplexity(m, ids, progress=False)
    assert capsys.readouterr().err == ""


# ---------------------------------------------------------------------------------------------
# the shipped default model: same weights in PyTorch (tools/train.py's GPT), same windows


def test_default_model_matches_torch():
    pytest.importorskip("torch")
    import pygpt

    sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tools"))
    import train

    m = pygpt.load()
    ref = train.gpt_from_pygpt_folder(m.path).eval()    # the stored (f16/bf16) weights, in f32
    text = open(HELD_OUT, encoding="utf-8").read()[:6000]
    ids = list(m.tokenizer.encode(text))
    n_ctx = m.config["n_ctx"]
    for stride in (None, n_ctx // 2):
        expected, _ = torch_guide_perplexity(lambda x: ref(x)[0], ids, n_ctx, stride or n_ctx)
        assert m.perplexity(text, stride=stride) == pytest.approx(expected, rel=REL_TOL)


# ---------------------------------------------------------------------------------------------
# command line


def test_command_line(hf_model_factory, tmp_path, capsys):
    import pygpt
    from pygpt import perplexity as ppl_mod

    out = hf_model_factory("tiny")[2]
    f = tmp_path / "t.txt"
    f.write_text(open(HELD_OUT, encoding="utf-8").read()[:800], encoding="utf-8")
    assert ppl_mod.main(["-m", out, str(f), "--stride", "32", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    expected = perplexity(pygpt.load(out), f.read_text(encoding="utf-8"), stride=32)
    assert printed.startswith("perplexity ") and float(printed.split()[1]) == pytest.approx(expected, rel=1e-4)
    assert "stride 32" in printed

    assert ppl_mod.main(["-m", out, str(tmp_path / "missing.txt")]) == 1
    assert "no such file" in capsys.readouterr().err
    assert ppl_mod.main(["-m", out, str(f), "--stride", "65"]) == 1
    assert "stride" in capsys.readouterr().err

    # the same as a subcommand of `pygpt`
    from pygpt import cli

    assert cli.main(["perplexity", "-m", out, str(f), "--stride", "32", "--no-progress"]) == 0
    assert capsys.readouterr().out == printed
    assert cli.main(["perplexity", "-m", str(tmp_path / "no-model"), str(f)]) == 1
    assert "pygpt: error:" in capsys.readouterr().err
