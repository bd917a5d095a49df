"""Embeddings: a text's (or token sequence's) final hidden states, pooled into one vector.

The hidden states are the ln_f output, what transformers' GPT2Model returns as
last_hidden_state and what the LM head multiplies by the token embeddings. Inputs run
together in forward calls of up to n_ctx tokens, each sequence from a fresh cache; a
sequence's rows never depend on what else is in the call, so a text gets the same bits alone
or in a batch.
"""

from __future__ import annotations

from typing import Sequence, Union

import numpy as np

from .generation import _is_int

POOLINGS = ("mean", "last", "none")

Input = Union[str, Sequence[int]]


def _is_ids(x) -> bool:
    if isinstance(x, np.ndarray):
        return x.ndim == 1 and np.issubdtype(x.dtype, np.integer)
    return isinstance(x, (list, tuple)) and all(_is_int(i) for i in x)


def split_inputs(inputs) -> tuple:
    """(list of inputs, whether one input was given): a str or a list of token ids is one
    input; a list of those is a batch."""
    if isinstance(inputs, str) or (_is_ids(inputs) and len(inputs) > 0):
        return [inputs], True
    if isinstance(inputs, (list, tuple)) and inputs:
        for i, x in enumerate(inputs):
            if not (isinstance(x, str) or _is_ids(x)):
                raise TypeError(f"inputs[{i}] must be a str or a list of token ids, not {type(x).__name__}")
        return list(inputs), False
    if isinstance(inputs, (list, tuple, np.ndarray)):
        raise ValueError("empty input: give a text, a list of token ids, or a non-empty list of either")
    raise TypeError(f"inputs must be a str, a list of token ids, or a list of either, not {type(inputs).__name__}")


def token_ids(model, inputs: list, truncate: bool) -> list:
    """Each input as an int32 array of token ids, checked (texts encoded as prompts are)."""
    n_ctx, V = model.config["n_ctx"], model.config["vocab_size"]
    out = []
    for i, x in enumerate(inputs):
        if isinstance(x, str):
            if model.tokenizer is None:
                raise ValueError("this model folder has no tokenizer: pass token ids instead of text")
            ids = np.asarray(model.tokenizer.encode(x, allowed_special="all"), np.int64)
        else:
            ids = np.asarray(x, np.int64)
            bad = (ids < 0) | (ids >= V)
            if bad.any():
                raise ValueError(f"inputs[{i}]: token id {int(ids[bad][0])} out of range [0, {V})")
        if ids.size == 0:
            raise ValueError(f"inputs[{i}] is empty: at least one token is needed")
        if ids.size > n_ctx:
            if not truncate:
                raise ValueError(f"inputs[{i}] is {ids.size} tokens, more than n_ctx = {n_ctx}; "
                                 "split it, or pass truncate=True to embed its first n_ctx tokens")
            ids = ids[:n_ctx]
        out.append(ids.astype(np.int32))
    return out


def _calls(seqs: list, budget: int):
    """Runs of consecutive sequences of at most `budget` tokens in all (a longer one alone)."""
    start, total = 0, 0
    for i, s in enumerate(seqs):
        if i > start and total + s.size > budget:
            yield start, i
            start, total = i, 0
        total += s.size
    yield start, len(seqs)


def embed(model, inputs, pooling: str = "mean", normalize: bool = True, truncate: bool = False):
    """Embeddings of a text or token id list ([n_embd] float32), or of a list of them ([n,
    n_embd]).

    pooling: "mean" averages the token states; "last" takes the last token's, the only one
    that has seen the whole text (GPT-2 attends left to right); "none" keeps every token's
    ([tokens, n_embd] an input; a list of such arrays for a list).
    normalize: scale each vector (each token's, with "none") to unit length, so that a dot
    product is the cosine similarity (OpenAI's embeddings are normalised so).
    truncate: embed the first n_ctx tokens of a longer input instead of raising ValueError."""
    if not isinstance(truncate, bool):
        raise TypeError("truncate must be True or False")
    model._live()
    items, single = split_inputs(inputs)
    vectors = embed_ids(model, token_ids(model, items, truncate), pooling, normalize)
    return vectors[0] if single else vectors if pooling == "none" else np.stack(vectors)


def embed_ids(model, seqs: list, pooling: str = "mean", normalize: bool = True) -> list:
    """embed() of checked token id arrays (token_ids): a list with a vector (or, pooling
    "none", an array of token vectors) a sequence."""
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {', '.join(map(repr, POOLINGS))}, not {pooling!r}")
    if not isinstance(normalize, bool):
        raise TypeError("normalize must be True or False")
    core = model._live()
    vectors = []
    for a, b in _calls(seqs, model.config["n_ctx"]):
        rows = core.hidden_states(seqs[a:b], pooling != "last")
        if pooling == "last":
            vectors.extend(rows)
            continue
        at = 0
        for s in seqs[a:b]:
            states = rows[at:at + s.size]
            at += s.size
            vectors.append(states if pooling == "none" else states.mean(0, dtype=np.float64).astype(np.float32))
    if normalize:
        vectors = [v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), np.float32(1e-12)) for v in vectors]
    return vectors
