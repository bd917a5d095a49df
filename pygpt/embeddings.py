"""Embeddings: a text's (or token sequence's) final hidden states, pooled into one vector.

The hidden states are the ln_f output, what transformers' GPT2Model returns as
last_hidden_state and what the LM head multiplies by the token embeddings. Inputs run
together in forward calls of up to n_ctx tokens (in a Batcher, of up to its prefill_chunk,
between its generation steps), each sequence from a fresh cache; a sequence's rows never
depend on what else is in the call, nor on where a longer one is cut between calls, so a
text gets the same bits alone or in a batch.
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


def embed(model, inputs, pooling: str = "mean", normalize: bool = True, truncate: bool = False):
    """Embeddings of a text or token id list ([n_embd] float32), or of a list of them ([n,
    n_embd]).

    pooling: "mean" averages the token states; "last" takes the last token's, the only one
    that has seen the whole text (GPT-2 attends left to right); "none" keeps every token's
    ([tokens, n_embd] an input; a list of such arrays for a list).
    normalize: scale each vector (each token's, with "none") to unit length, so that a dot
    product is the cosine similarity (OpenAI's embeddings are normalised so).
    truncate: embed the first n_ctx tokens of a longer input instead of raising ValueError."""
    run = EmbeddingRun.of(model, inputs, pooling, normalize, truncate)
    while not run.step(model.config["n_ctx"]):
        pass
    return run.answer()


class EmbeddingRun:
    """The forward calls of one embedding request, a call at a time, so that a Batcher can run
    them between its generation steps: step(budget) runs the next inputs, whole while they fit
    in `budget` tokens; an input longer than what is left starts the next call, or is cut at
    `budget` when it would be the call's first, and goes on in the next calls from its KV cache.
    A sequence's rows are the same bits however it is cut and whatever runs beside it
    (tests/test_embeddings.py), so the vectors are embed()'s."""

    def __init__(self, model, seqs: list, pooling: str = "mean", normalize: bool = True, single: bool = False):
        """seqs: checked token id arrays (token_ids); single: one input was given (answer())."""
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {', '.join(map(repr, POOLINGS))}, not {pooling!r}")
        if not isinstance(normalize, bool):
            raise TypeError("normalize must be True or False")
        self._core = model._live()
        self.seqs, self.pooling, self.normalize, self.single = seqs, pooling, normalize, single
        self.tokens = sum(s.size for s in seqs)
        self._next, self._at = 0, 0      # the input and token to run next
        self._cache = None               # the KV cache of an input cut between two calls
        self._rows: list = []            # the rows of the input cut so far
        self.vectors: list = []          # a vector (or, pooling "none", rows) an input done

    @classmethod
    def of(cls, model, inputs, pooling: str, normalize: bool, truncate: bool) -> "EmbeddingRun":
        """The run of embed()'s arguments, checked (texts encoded)."""
        if not isinstance(truncate, bool):
            raise TypeError("truncate must be True or False")
        model._live()
        items, single = split_inputs(inputs)
        return cls(model, token_ids(model, items, truncate), pooling, normalize, single)

    def answer(self):
        """The vectors, shaped as embed() returns them (once done)."""
        if self.single:
            return self.vectors[0]
        return self.vectors if self.pooling == "none" else np.stack(self.vectors)

    def done(self) -> bool:
        return self._next == len(self.seqs)

    def step(self, budget: int) -> bool:
        """Runs one forward call of at most budget tokens; True once every input is done."""
        pieces, caches, left, cut = [], [], budget, None
        for i in range(self._next, len(self.seqs)):
            s = self.seqs[i]
            start = self._at if i == self._next else 0
            n = s.size - start
            if n > left and pieces:
                break
            n = min(n, left)
            cache = self._cache if start > 0 else None
            if start + n < s.size:  # cut here: it goes on from this cache in the next call
                cut = cache = cache if cache is not None else self._core.new_cache(s.size)
            pieces.append(s[start:start + n])
            caches.append(cache)
            left -= n
            if cut is not None or left == 0:
                break
        if all(c is None for c in caches):
            caches = None
        else:  # the others from fresh caches, as hidden_states gives them without
            caches = [c if c is not None else self._core.new_cache(p.size) for c, p in zip(caches, pieces)]
        rows = self._core.hidden_states(pieces, self.pooling != "last", caches)
        at = 0
        for piece in pieces:
            k = piece.size if self.pooling != "last" else 1
            part, at = rows[at:at + k], at + k
            self._at += piece.size
            if self._at < self.seqs[self._next].size:  # the piece cut: the rest in the next call
                self._rows.append(part)
                break
            self._finish(np.concatenate(self._rows + [part]) if self._rows else part)
            self._next, self._at, self._rows = self._next + 1, 0, []
        self._cache = cut
        return self.done()

    def _finish(self, states: np.ndarray) -> None:
        if self.pooling == "last":
            v = states[-1]
        elif self.pooling == "none":
            v = states
        else:
            v = states.mean(0, dtype=np.float64).astype(np.float32)
        if self.normalize:
            v = v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), np.float32(1e-12))
        self.vectors.append(v)
