"""Perplexity of a text under a model, with strided sliding windows.

Scored the way the Hugging Face perplexity guide scores a causal LM
(https://huggingface.co/docs/transformers/perplexity), so numbers compare across tools:

  * windows of at most n_ctx tokens start every `stride` tokens: [0, n_ctx), [stride, stride + n_ctx), ...
    until one reaches the end of the text;
  * in each window only the tokens that no earlier window scored are scored (the guide masks the
    overlapping labels with -100); the other tokens are context only;
  * token t is scored by the window's prediction at position t - 1, so the very first token of the
    text is never scored;
  * perplexity = exp(total negative log-likelihood / number of scored tokens).

stride = n_ctx (the default) gives disjoint windows (fast, less context per token); a smaller
stride gives every scored token more context at the price of more forward passes.

The guide weights each window's mean loss by `(labels != -100).sum() - 1`, which is the number of
tokens it scored when windows do not overlap but one less in every overlapping window after the
first; we sum the exact per-token losses instead. With the shipped model on the eval text of
MODEL_CARD.md the two are identical at stride = n_ctx and 1.5e-5 apart (relative) at n_ctx / 2.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import numpy as np


def windows(n_tokens: int, n_ctx: int, stride: int):
    """(begin, end, first_scored) of each window over n_tokens ids: the model reads
    ids[begin:end] and scores the tokens first_scored .. end - 1."""
    if n_ctx < 2:
        raise ValueError(f"n_ctx must be at least 2, got {n_ctx}")
    if not 1 <= stride <= n_ctx:
        raise ValueError(f"stride must be between 1 and n_ctx ({n_ctx}), got {stride}")
    out = []
    prev_end = 0
    for begin in range(0, n_tokens, stride):
        end = min(begin + n_ctx, n_tokens)
        first = max(prev_end, begin + 1)  # tokens before prev_end were scored by earlier windows
        if first < end:
            out.append((begin, end, first))
        prev_end = end
        if end == n_tokens:
            break
    return out


def _context_length(model) -> int:
    cfg = model.config
    for key in ("n_ctx", "n_positions", "block_size"):
        if key in cfg:
            return int(cfg[key])
    raise ValueError("model config has no context length (n_ctx)")


def negative_log_likelihood(model, ids: Sequence[int], stride: Optional[int] = None,
                            progress: Optional[bool] = None):
    """(sum of the per-token negative log-likelihoods in nats, number of scored tokens)."""
    ids = [int(i) for i in ids]
    n_ctx = _context_length(model)
    stride = n_ctx if stride is None else int(stride)
    wins = windows(len(ids), n_ctx, stride)
    if not wins:
        raise ValueError("need at least 2 tokens to measure perplexity")
    if progress is None:
        progress = len(wins) > 1
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(wins), desc="perplexity", unit="window", leave=False)
    nll, count = 0.0, 0
    try:
        for begin, end, first in wins:
            logits = model.logits(ids[begin:end])                               # [end - begin, V]
            pred = np.asarray(logits[first - 1 - begin:end - 1 - begin], dtype=np.float64)  # predict first..end-1
            m = pred.max(axis=1, keepdims=True)
            logz = m[:, 0] + np.log(np.exp(pred - m).sum(axis=1))              # log-sum-exp per row
            target = np.asarray(ids[first:end])
            nll += float((logz - pred[np.arange(len(target)), target]).sum())
            count += end - first
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return nll, count


def perplexity(model, text: Union[str, Sequence[int]], stride: Optional[int] = None,
               progress: Optional[bool] = None) -> float:
    """Perplexity of `text` (a string, or a sequence of token ids) under `model`.

    stride: tokens between window starts, 1..n_ctx (default n_ctx: disjoint windows).
    progress: show a tqdm bar (default: when there is more than one window).
    """
    if isinstance(text, str):
        ids = model.tokenizer.encode(text)
    else:
        ids = list(text)
    nll, count = negative_log_likelihood(model, ids, stride=stride, progress=progress)
    return math.exp(nll / count)


# -- command line: `pygpt perplexity -m DIR FILE` (also `python -m pygpt.perplexity`) ----------


def add_arguments(p) -> None:
    """The arguments of the perplexity command, on an argparse parser."""
    from . import lora

    p.add_argument("file", help="UTF-8 text file to score")
    p.add_argument("-m", "--model", default=None, help="pygpt model folder (default: the shipped model)")
    p.add_argument("--stride", type=int, default=None,
                   help="tokens between window starts, 1..n_ctx (default n_ctx: disjoint windows)")
    p.add_argument("--threads", type=int, default=None, help="threads (default: physical cores)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    lora.add_arguments(p)


def run(args) -> int:
    """Runs the perplexity command for parsed `args`; prints the result, returns 0."""
    import os

    from .model import load

    if not os.path.isfile(args.file):
        raise FileNotFoundError(f"no such file: {args.file}")
    with open(args.file, encoding="utf-8") as f:
        text = f.read()
    model = load(args.model, n_threads=args.threads, lora=args.lora)
    if model.tokenizer is None:
        raise ValueError(f"{model.path}: the model folder has no tokenizer (tokenizer.json, or vocab.json + "
                         "merges.txt)")
    ids = model.tokenizer.encode(text)
    nll, count = negative_log_likelihood(model, ids, stride=args.stride,
                                         progress=False if args.no_progress else None)
    stride = args.stride or model.config["n_ctx"]
    print(f"perplexity {math.exp(nll / count):.4f}  (loss {nll / count:.4f} nats/token over {count} "
          f"scored tokens of {len(ids)}; n_ctx {model.config['n_ctx']}, stride {stride})")
    return 0


def main(argv=None) -> int:
    import argparse
    import sys

    p = argparse.ArgumentParser(prog="pygpt perplexity",
                                description="Perplexity of a text file under a model (strided sliding windows, "
                                "scored like the Hugging Face perplexity guide).")
    add_arguments(p)
    args = p.parse_args(argv)
    try:
        return run(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
