"""Text generation: ``model.generate``, ``model.stream`` and ``pygpt.generate``.

Arguments are checked here and handed to the C++ decode loop (csrc/generate.cpp), which runs
prefill, sampling (csrc/sampler.cpp) and stop matching without the GIL. The defaults are
transformers' for GPT-2: greedy decoding with every filter off.
"""

from __future__ import annotations

import asyncio
import difflib
import inspect
import math
import numbers
import os
import secrets
import threading
from dataclasses import dataclass, field
from typing import Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from . import _core, generation_config
from .grammar import as_grammar

Prompt = Union[str, Sequence[int]]  # one prompt; a batch is a sequence of them

DEFAULT_MAX_NEW_TOKENS = 50
# llama.cpp's default DRY sequence breakers: a repeat is not followed across these
DRY_SEQUENCE_BREAKERS = ("\n", ":", "\"", "*")


@dataclass
class Timings:
    """Where the time went in one generate call (shared by the outputs of a batch)."""

    prefill_tokens: int           # prompt tokens run through the model (once per distinct prompt)
    prefill_seconds: float        # the prefill forward pass and the first draws
    decode_tokens: int            # tokens generated after the first one of each sequence
    decode_seconds: float
    time_to_first_token: float    # seconds from the start to the first generated token
    draft_tokens: int = 0         # prompt lookup: draft tokens proposed,
    accepted_draft_tokens: int = 0  # and those taken (the token chosen there)
    cached_tokens: int = 0        # prefix caching (model.prefix_cache, a Batcher's): prompt tokens not run, their
                                  # keys and values copied from another sequence's cache
    assistant_tokens: int = 0     # assisted decoding: tokens the assistant model ran (its share
                                  # of the prompt, the tokens taken, the drafts)

    @property
    def prefill_tokens_per_s(self) -> float:
        return self.prefill_tokens / self.prefill_seconds if self.prefill_seconds > 0 else 0.0

    @property
    def decode_tokens_per_s(self) -> float:
        return self.decode_tokens / self.decode_seconds if self.decode_seconds > 0 else 0.0

    def __str__(self) -> str:
        return (f"prefill {self.prefill_tokens} tokens at {self.prefill_tokens_per_s:.1f} tok/s, "
                f"decode {self.decode_tokens} tokens at {self.decode_tokens_per_s:.1f} tok/s, "
                f"first token after {self.time_to_first_token * 1000:.1f} ms")


@dataclass
class GenerationOutput:
    """One generated sequence.

    text:          the generated text (the prompt's text first when echo=True); never holds
                   what stopped generation (a stop string, a stop token, eos), but the stop
                   string with include_stop_str_in_output. None when the model has no
                   tokenizer.
    tokens:        the generated token ids (prompt ids first when echo=True), the token(s)
                   that stopped generation included.
    finish_reason: "length" (max_new_tokens or the context is full), "stop" (a stop string or
                   one of stop_token_ids) or "eos" (<|endoftext|>).
    logprobs:      with logprobs=True, the log-probability of each token in `tokens` under the
                   model's distribution (softmax of the raw logits, before any processor);
                   None for the first prompt token when echo=True.
    top_logprobs:  with top_logprobs=k, for each token the k most likely (id, log-probability)
                   pairs, most likely first (None for the first prompt token with echo).
    prompt_tokens: the prompt's ids as run (after truncation; without its last token when
                   token_healing replaced it).
    score:         with beam search (num_beams > 1), the sequence's score: the sum of its
                   processed log-probabilities / (generated length ** length_penalty), as
                   transformers' sequences_scores; None otherwise.
    stop_reason:   with finish_reason "stop", what stopped it: the stop string (of `stop`) or
                   the token id (of `stop_token_ids`); None otherwise, and for a grammar with
                   nothing left to match or a stopping criterion (vLLM's stop_reason).
    """

    text: Optional[str]
    tokens: List[int]
    finish_reason: str
    timings: Timings
    prompt_tokens: List[int] = field(default_factory=list)
    logprobs: Optional[List[Optional[float]]] = None
    top_logprobs: Optional[List[Optional[List[Tuple[int, float]]]]] = None
    score: Optional[float] = None
    stop_reason: Union[str, int, None] = None

    def __str__(self) -> str:
        return self.text if self.text is not None else str(self.tokens)


# -- argument checks -----------------------------------------------------------------------------


def _is_int(v) -> bool:
    if type(v) is int:  # the common case, without the ABC checks (0.4 ms per 128 ids)
        return True
    return isinstance(v, (numbers.Integral, np.integer)) and not isinstance(v, (bool, np.bool_))


def _int(name, v, lo=None, hi=None, none_ok=False):
    if v is None and none_ok:
        return None
    if not _is_int(v):
        raise TypeError(f"{name} must be an integer, got {type(v).__name__} {v!r}")
    v = int(v)
    if lo is not None and v < lo:
        raise ValueError(f"{name} must be >= {lo}, got {v}")
    if hi is not None and v > hi:
        raise ValueError(f"{name} must be <= {hi}, got {v}")
    return v


def _float(name, v, lo=None, hi=None, lo_open=False, none_ok=False, allow_neg_inf=False):
    if v is None and none_ok:
        return None
    if not isinstance(v, (numbers.Real, np.floating, np.integer)) or isinstance(v, (bool, np.bool_)):
        raise TypeError(f"{name} must be a number, got {type(v).__name__} {v!r}")
    v = float(v)
    if math.isnan(v) or v == math.inf or (v == -math.inf and not allow_neg_inf):
        raise ValueError(f"{name} must be a finite number, got {v}")
    if lo is not None and (v <= lo if lo_open else v < lo):
        raise ValueError(f"{name} must be {'>' if lo_open else '>='} {lo}, got {v}")
    if hi is not None and v > hi:
        raise ValueError(f"{name} must be <= {hi}, got {v}")
    return v


def _bool(name, v):
    if not isinstance(v, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {type(v).__name__} {v!r}")
    return bool(v)


def sampling_params(vocab_size: int, *, temperature=0.0, top_k=None, top_p=None, min_p=None,
                    typical_p=None, top_n_sigma=None, epsilon_cutoff=None, eta_cutoff=None,
                    xtc_probability=None, xtc_threshold=None, mirostat=0, mirostat_tau=5.0, mirostat_eta=0.1,
                    dynatemp_range=None, dynatemp_exponent=1.0, exponential_decay_length_penalty=None,
                    dry_multiplier=None, dry_base=1.75, dry_allowed_length=2, dry_penalty_last_n=-1,
                    dry_sequence_breakers=(), repetition_penalty=None, presence_penalty=None,
                    frequency_penalty=None, no_repeat_ngram_size=None, logit_bias=None, sequence_bias=None,
                    bad_words_ids=None, end_tokens=()) -> "_core.SamplingParams":
    """Checked logits-processor settings for the C++ sampler. None means off. A one-token bad
    word among end_tokens (eos, stop tokens) is not banned, as in transformers'
    NoBadWordsLogitsProcessor, so that generation can still end."""
    p = _core.SamplingParams()
    p.temperature = _float("temperature", temperature, lo=0.0)
    p.top_k = _int("top_k", top_k, lo=0, none_ok=True) or 0
    p.top_p = 1.0 if top_p is None else _float("top_p", top_p, lo=0.0, hi=1.0)
    p.min_p = 0.0 if min_p is None else _float("min_p", min_p, lo=0.0, hi=1.0)
    p.typical_p = 1.0 if typical_p is None else _float("typical_p", typical_p, lo=0.0, hi=1.0, lo_open=True)
    p.top_n_sigma = -1.0 if top_n_sigma is None else _float("top_n_sigma", top_n_sigma, lo=0.0)
    p.epsilon_cutoff = 0.0 if epsilon_cutoff is None else _float("epsilon_cutoff", epsilon_cutoff, lo=0.0, hi=1.0)
    p.eta_cutoff = 0.0 if eta_cutoff is None else _float("eta_cutoff", eta_cutoff, lo=0.0, hi=1.0)
    p.xtc_probability = 0.0 if xtc_probability is None else _float("xtc_probability", xtc_probability, lo=0.0, hi=1.0)
    if xtc_threshold is not None:
        p.xtc_threshold = _float("xtc_threshold", xtc_threshold, lo=0.0, hi=1.0)
    p.mirostat = _int("mirostat", mirostat, lo=0, hi=2, none_ok=True) or 0
    if exponential_decay_length_penalty is not None:
        decay = exponential_decay_length_penalty
        if not isinstance(decay, (tuple, list)) or len(decay) != 2:
            raise TypeError("exponential_decay_length_penalty must be (start, factor): the end tokens' scores grow "
                            "by factor ** (generated - start) past start generated tokens")
        p.decay_start = _int("exponential_decay_length_penalty start", decay[0], lo=0)
        p.decay_factor = _float("exponential_decay_length_penalty factor", decay[1], lo=0.0, lo_open=True)
    p.dynatemp_range = 0.0 if dynatemp_range is None else _float("dynatemp_range", dynatemp_range, lo=0.0)
    p.dynatemp_exponent = _float("dynatemp_exponent", dynatemp_exponent, lo=0.0)
    p.dry_multiplier = 0.0 if dry_multiplier is None else _float("dry_multiplier", dry_multiplier, lo=0.0)
    p.dry_base = _float("dry_base", dry_base)
    p.dry_allowed_length = _int("dry_allowed_length", dry_allowed_length)
    p.dry_penalty_last_n = _int("dry_penalty_last_n", dry_penalty_last_n)
    p.dry_sequence_breakers = _token_list("dry_sequence_breakers", list(dry_sequence_breakers), vocab_size)
    p.mirostat_tau = _float("mirostat_tau", mirostat_tau, lo=0.0)
    p.mirostat_eta = _float("mirostat_eta", mirostat_eta, lo=0.0)
    p.repetition_penalty = (1.0 if repetition_penalty is None else
                            _float("repetition_penalty", repetition_penalty, lo=0.0, lo_open=True))
    p.presence_penalty = 0.0 if presence_penalty is None else _float("presence_penalty", presence_penalty)
    p.frequency_penalty = 0.0 if frequency_penalty is None else _float("frequency_penalty", frequency_penalty)
    p.no_repeat_ngram_size = _int("no_repeat_ngram_size", no_repeat_ngram_size, lo=0, none_ok=True) or 0
    bias = []
    if logit_bias is not None:
        if not isinstance(logit_bias, dict):
            raise TypeError(f"logit_bias must be a dict {{token id: bias}}, got {type(logit_bias).__name__}")
        for k, b in logit_bias.items():
            tid = _int("logit_bias token id", k, lo=0, hi=vocab_size - 1)
            bias.append((tid, _float(f"logit_bias[{tid}]", b, allow_neg_inf=True)))
    p.logit_bias = bias
    seqs = []
    if sequence_bias is not None:
        if not isinstance(sequence_bias, dict):
            raise TypeError("sequence_bias must be a dict {(token id, ...): bias}, got "
                            f"{type(sequence_bias).__name__}")
        for k, b in sequence_bias.items():
            if _is_int(k):
                k = (k,)
            if not isinstance(k, tuple) or not k:
                raise TypeError(f"sequence_bias keys must be non-empty tuples of token ids, got {k!r}")
            ids = _token_list("sequence_bias key", list(k), vocab_size)
            seqs.append((ids, _float(f"sequence_bias[{tuple(ids)}]", b, allow_neg_inf=True)))
    if bad_words_ids is not None:
        if not isinstance(bad_words_ids, (list, tuple)) or not all(isinstance(w, (list, tuple)) for w in bad_words_ids):
            raise TypeError("bad_words_ids must be a list of lists of token ids")
        for w in bad_words_ids:
            if not w:
                raise ValueError("bad_words_ids: a banned sequence must have at least one token")
            ids = _token_list("bad_words_ids", list(w), vocab_size)
            if len(ids) == 1 and ids[0] in end_tokens:
                continue
            if any(s == ids for s, _ in seqs):
                raise ValueError(f"bad_words_ids bans {ids}, which sequence_bias or bad_words_ids lists already")
            seqs.append((ids, -math.inf))
    p.sequence_bias = seqs
    p.validate(vocab_size)
    return p


def _token_list(name, ids, vocab_size):
    if isinstance(ids, np.ndarray):
        if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
            raise TypeError(f"{name} must be a 1-D array of integer token ids")
        ids = ids.tolist()
    out = []
    for t in ids:
        if not _is_int(t):
            raise TypeError(f"{name} must hold integer token ids, got {type(t).__name__} {t!r}")
        t = int(t)
        if not 0 <= t < vocab_size:
            raise ValueError(f"{name}: token id {t} is outside the vocabulary [0, {vocab_size})")
        out.append(t)
    return out


def _callables(name: str, v) -> list:
    """A callable or a list of them (None: none) as a list."""
    if v is None:
        return []
    items = [v] if callable(v) else v
    if not isinstance(items, (list, tuple)) or not all(callable(f) for f in items):
        raise TypeError(f"{name} must be a callable or a list of callables, got {type(v).__name__}")
    return list(items)


class _Hooks:
    """The caller's own logits processors, prefix_allowed_tokens_fn and stopping criteria, as
    the C++ decode loop calls them (GenerateOptions.set_hooks): once per sequence and token, on
    the thread that steps the generation, with the GIL. What they raise comes out of the step
    (or, in a pygpt.Batcher, fails that request alone: Generation.contain_errors)."""

    def __init__(self, vocab_size: int, processors: list, criteria: list, allowed, beams: bool):
        self.V = vocab_size
        self.processors = processors
        self.criteria = criteria
        self.allowed = allowed
        self.force_allowed = not beams  # with beam search, the other beams may go on

    @classmethod
    def make(cls, vocab_size: int, logits_processor, stopping_criteria, prefix_allowed_tokens_fn, beams: bool):
        processors = _callables("logits_processor", logits_processor)
        criteria = _callables("stopping_criteria", stopping_criteria)
        if prefix_allowed_tokens_fn is not None and not callable(prefix_allowed_tokens_fn):
            raise TypeError("prefix_allowed_tokens_fn must be a callable (batch_id, input_ids) -> list of token ids, "
                            f"got {type(prefix_allowed_tokens_fn).__name__}")
        if not processors and not criteria and prefix_allowed_tokens_fn is None:
            return None
        return cls(vocab_size, processors, criteria, prefix_allowed_tokens_fn, beams)

    def install(self, opt) -> None:
        """Sets opt's hooks (a GenerateOptions)."""
        changes_scores = bool(self.processors) or self.allowed is not None
        opt.set_hooks(self._process if changes_scores else None, self._stop if self.criteria else None, self.V)

    def _process(self, batch_id: int, ids: np.ndarray, scores: np.ndarray) -> None:
        if self.allowed is not None:  # transformers' PrefixConstrainedLogitsProcessor
            allowed = self.allowed(batch_id, ids)
            try:
                keep = np.asarray(list(allowed))
            except TypeError:
                raise TypeError("prefix_allowed_tokens_fn must return a list of token ids, "
                                f"got {type(allowed).__name__}") from None
            if keep.size == 0:
                raise ValueError(f"prefix_allowed_tokens_fn returned no token for batch_id {batch_id} after "
                                 f"{len(ids)} tokens: nothing left to generate")
            if keep.ndim != 1 or not np.issubdtype(keep.dtype, np.integer):
                raise TypeError("prefix_allowed_tokens_fn must return a list of integer token ids")
            if keep.min() < 0 or keep.max() >= self.V:
                raise ValueError(f"prefix_allowed_tokens_fn returned a token id outside the vocabulary [0, {self.V})")
            masked = np.full(self.V, -np.inf, dtype=np.float32)
            masked[keep] = scores[keep]
            if self.force_allowed and np.isneginf(masked[keep]).all():
                masked[keep] = 0.0  # every allowed token was banned before: they stay possible, as in transformers
            scores[:] = masked
        for fn in self.processors:
            out = fn(ids, scores)
            if out is None or out is scores:
                continue
            out = np.asarray(out, dtype=np.float32)
            if out.shape != (self.V,):
                raise ValueError(f"logits_processor {getattr(fn, '__name__', fn)!r} returned an array of shape "
                                 f"{out.shape}; it must return the scores, shape ({self.V},)")
            scores[:] = out
        if np.isnan(scores).any():
            raise ValueError("logits_processor returned NaN scores")

    def _stop(self, batch_id: int, ids: np.ndarray, logits: np.ndarray) -> bool:
        return any(bool(fn(ids, logits)) for fn in self.criteria)


def _split_prompts(prompt) -> Tuple[list, bool]:
    """(list of prompts, whether the input was a batch)."""
    if isinstance(prompt, str):
        return [prompt], False
    if isinstance(prompt, (bytes, bytearray)):
        raise TypeError("prompt must be str or token ids, not bytes: decode it first")
    if isinstance(prompt, np.ndarray):
        if prompt.ndim == 1:
            return [prompt], False
        if prompt.ndim == 2:
            return list(prompt), True
        raise ValueError(f"a prompt array must be 1-D (ids) or 2-D (a batch), got shape {prompt.shape}")
    try:
        items = list(prompt)
    except TypeError:
        raise TypeError(f"prompt must be a str, a list of token ids, or a list of either; "
                        f"got {type(prompt).__name__}") from None
    if not items:
        raise ValueError("empty prompt: give a str (possibly '') or at least one token id")
    if all(_is_int(t) for t in items):
        return [items], False
    for i, p in enumerate(items):
        if isinstance(p, (str, np.ndarray)) or (isinstance(p, (list, tuple)) and all(_is_int(t) for t in p)):
            continue
        raise TypeError(f"prompt {i} of the batch must be a str or a list of token ids, got {p!r:.80}")
    return items, True


# beam search's options: the model's defaults for them are left out where beams cannot run
BEAM_OPTIONS = ("num_beams", "length_penalty", "early_stopping")


class _Request:
    """Everything one generate/stream call needs, checked."""

    def __init__(self, model, prompt, *, leave_out: tuple = (), **options):
        """The options a call leaves out come from the model's generation_config.json, as in
        transformers (pygpt/generation_config.py), but those in leave_out: what the caller cannot
        run (beam search in a stream or a Batcher)."""
        model_defaults = getattr(model, "generation_config", None) or {}
        tokenizer = getattr(model, "tokenizer", None)
        eot_id = tokenizer.eot_id if tokenizer is not None and tokenizer.eot_id >= 0 else None
        options = generation_config.from_call(options, model_defaults, eot_id)
        _check_names(options)
        defaults = {k: v for k, v in model_defaults.items() if k not in options and k not in leave_out}
        try:
            self._setup(model, prompt, **defaults, **options)
        except (TypeError, ValueError) as e:
            if defaults and e.args and isinstance(e.args[0], str):  # say where the values the call left out came from
                given = ", ".join(f"{k}={v!r}" for k, v in defaults.items())
                e.args = (f"{e.args[0]} (the model's generation_config.json gave {given}: pass an option to "
                          "override it)",) + e.args[1:]
            raise

    @classmethod
    def check(cls, model, options: dict) -> None:
        """Raises what generate would for these options, the model's defaults left out."""
        _check_names(options)
        cls.__new__(cls)._setup(model, [0], seed=0, **options)

    def _setup(self, model, prompt, *, max_new_tokens=DEFAULT_MAX_NEW_TOKENS, temperature=0.0, top_k=None,
                 top_p=None, min_p=None, typical_p=None, top_n_sigma=None, epsilon_cutoff=None, eta_cutoff=None,
                 xtc_probability=None, xtc_threshold=None, mirostat=0, mirostat_tau=5.0, mirostat_eta=0.1,
                 dynatemp_range=None, dynatemp_exponent=1.0, exponential_decay_length_penalty=None,
                 dry_multiplier=None, dry_base=1.75, dry_allowed_length=2, dry_penalty_last_n=-1,
                 dry_sequence_breakers=None, max_time=None, repetition_penalty=None, presence_penalty=None,
                 frequency_penalty=None, no_repeat_ngram_size=None, logit_bias=None, sequence_bias=None,
                 bad_words_ids=None, stop=None, include_stop_str_in_output=False,
                 stop_token_ids=None, ignore_eos=False, seed=None, logprobs=False, top_logprobs=0,
                 echo=False, num_return_sequences=1, truncate=None, min_new_tokens=0, num_beams=1,
                 length_penalty=1.0, early_stopping=False, prompt_lookup_num_tokens=None,
                 max_matching_ngram_size=2, logits_processor=None, stopping_criteria=None,
                 prefix_allowed_tokens_fn=None, assistant_model=None, num_assistant_tokens=None, grammar=None,
                 token_healing=False, guidance_scale=None, negative_prompt=None):
        if not hasattr(model, "_core") or not hasattr(model, "config"):
            raise TypeError(f"model must be a pygpt.Model (from pygpt.load), got {type(model).__name__}")
        if model._core is None:
            raise ValueError("the model is closed")
        self.model = model
        self.tokenizer = getattr(model, "tokenizer", None)
        V = int(model.config["vocab_size"])
        n_ctx = int(model.config["n_ctx"])

        opt = _core.GenerateOptions()
        opt.max_new_tokens = _int("max_new_tokens", max_new_tokens, lo=0)
        opt.min_new_tokens = _int("min_new_tokens", min_new_tokens, lo=0)
        if max_time is not None:
            opt.max_time = _float("max_time", max_time, lo=0.0, lo_open=True)
        if stop is None:
            stop = []
        elif isinstance(stop, str):
            stop = [stop]
        if not isinstance(stop, (list, tuple)) or not all(isinstance(s, str) for s in stop):
            raise TypeError("stop must be a str or a list of str")
        if any(s == "" for s in stop):
            raise ValueError("stop strings must not be empty")
        if stop and self.tokenizer is None:
            raise ValueError("stop strings need a model with a tokenizer (tokenizer.json or vocab.json + merges.txt)")
        opt.stop = list(stop)
        opt.include_stop_str_in_output = _bool("include_stop_str_in_output", include_stop_str_in_output)
        if stop_token_ids is None:
            stop_token_ids = []
        if _is_int(stop_token_ids) or not isinstance(stop_token_ids, (list, tuple, set, frozenset, np.ndarray)):
            raise TypeError("stop_token_ids must be a list of token ids")
        opt.stop_token_ids = _token_list("stop_token_ids", list(stop_token_ids), V)
        opt.ignore_eos = _bool("ignore_eos", ignore_eos)
        ends = set(opt.stop_token_ids)
        if self.tokenizer is not None and not opt.ignore_eos and self.tokenizer.eot_id >= 0:
            ends.add(self.tokenizer.eot_id)
        if dry_sequence_breakers is None:
            dry_sequence_breakers = DRY_SEQUENCE_BREAKERS if self.tokenizer is not None else []
        if isinstance(dry_sequence_breakers, str) or not isinstance(dry_sequence_breakers, (list, tuple)) or \
                not all(isinstance(b, str) for b in dry_sequence_breakers):
            raise TypeError("dry_sequence_breakers must be a list of str")
        if dry_sequence_breakers and self.tokenizer is None:
            raise ValueError("dry_sequence_breakers need a model with a tokenizer (tokenizer.json or vocab.json + merges.txt)")
        # the breakers' token ids (a pass over the vocabulary, kept per tokenizer) only for DRY
        dry_on = dry_multiplier is not None and dry_multiplier != 0
        breakers = self.tokenizer.tokens_containing(dry_sequence_breakers) if dry_on and dry_sequence_breakers else []
        opt.sampling = sampling_params(
            V, temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p, typical_p=typical_p,
            top_n_sigma=top_n_sigma, epsilon_cutoff=epsilon_cutoff, eta_cutoff=eta_cutoff,
            xtc_probability=xtc_probability, xtc_threshold=xtc_threshold, mirostat=mirostat,
            mirostat_tau=mirostat_tau, mirostat_eta=mirostat_eta, dynatemp_range=dynatemp_range,
            dynatemp_exponent=dynatemp_exponent, exponential_decay_length_penalty=exponential_decay_length_penalty,
            dry_multiplier=dry_multiplier, dry_base=dry_base,
            dry_allowed_length=dry_allowed_length, dry_penalty_last_n=dry_penalty_last_n,
            dry_sequence_breakers=breakers, repetition_penalty=repetition_penalty,
            presence_penalty=presence_penalty, frequency_penalty=frequency_penalty, no_repeat_ngram_size=no_repeat_ngram_size,
            logit_bias=logit_bias, sequence_bias=sequence_bias, bad_words_ids=bad_words_ids, end_tokens=ends)
        if seed is None:
            seed = secrets.randbits(64)
        opt.seed = _int("seed", seed, lo=0, hi=2 ** 64 - 1)
        self.logprobs = _bool("logprobs", logprobs)
        opt.top_logprobs = _int("top_logprobs", top_logprobs, lo=0, hi=V)
        opt.logprobs = self.logprobs or opt.top_logprobs > 0
        self.echo = _bool("echo", echo)
        opt.prompt_logprobs = self.echo and opt.logprobs
        opt.num_return_sequences = _int("num_return_sequences", num_return_sequences, lo=1)
        opt.num_beams = _int("num_beams", num_beams, lo=1)
        opt.prompt_lookup_num_tokens = _int("prompt_lookup_num_tokens", prompt_lookup_num_tokens, lo=0,
                                            none_ok=True) or 0
        opt.max_matching_ngram_size = _int("max_matching_ngram_size", max_matching_ngram_size, lo=1)
        if opt.prompt_lookup_num_tokens and opt.num_beams > 1:
            raise ValueError("prompt lookup decoding (prompt_lookup_num_tokens) does not go with beam search "
                             "(num_beams > 1)")
        if num_assistant_tokens is not None:
            if assistant_model is None:
                raise ValueError("num_assistant_tokens needs an assistant_model")
            opt.num_assistant_tokens = _int("num_assistant_tokens", num_assistant_tokens, lo=1)
        if opt.sampling.mirostat and (opt.prompt_lookup_num_tokens or assistant_model is not None):
            raise ValueError("mirostat's state follows each token drawn: it does not go with drafts "
                             "(prompt_lookup_num_tokens, assistant_model)")
        if assistant_model is not None:
            if not hasattr(assistant_model, "_core") or not hasattr(assistant_model, "config"):
                raise TypeError("assistant_model must be a pygpt.Model (from pygpt.load), got "
                                f"{type(assistant_model).__name__}")
            if assistant_model._core is None:
                raise ValueError("the assistant model is closed")
            if int(assistant_model.config["vocab_size"]) != V:
                raise ValueError(f"the assistant model's vocabulary ({assistant_model.config['vocab_size']} tokens) "
                                 f"is not the model's ({V}): they must share the tokenizer")
            if opt.num_beams > 1:
                raise ValueError("assisted decoding (assistant_model) does not go with beam search (num_beams > 1)")
            if opt.prompt_lookup_num_tokens:
                raise ValueError("assistant_model and prompt_lookup_num_tokens both make drafts: choose one")
            opt.assistant_model = assistant_model._core
        opt.length_penalty = _float("length_penalty", length_penalty)
        if early_stopping is True or early_stopping is False:
            opt.early_stopping = (_core.EarlyStopping.when_full if early_stopping
                                  else _core.EarlyStopping.heuristic)
        elif early_stopping == "never":
            opt.early_stopping = _core.EarlyStopping.never
        else:
            raise ValueError(f"early_stopping must be True, False or 'never', got {early_stopping!r}")
        if opt.num_beams > 1:
            if opt.sampling.temperature != 0.0:
                raise ValueError("beam search (num_beams > 1) is deterministic: temperature must be 0 "
                                 "(beam sampling is not supported)")
            if opt.num_return_sequences > opt.num_beams:
                raise ValueError(f"num_return_sequences ({opt.num_return_sequences}) must be at most "
                                 f"num_beams ({opt.num_beams})")
        if grammar is not None:
            grammar = as_grammar(grammar)
            if self.tokenizer is None:
                raise ValueError("a grammar needs a model with a tokenizer (tokenizer.json or vocab.json + merges.txt)")
            opt.sampling.grammar = grammar._core
            opt.sampling.grammar_vocab = self.tokenizer.vocab_trie()
        if truncate not in (None, "left"):
            raise ValueError(f"truncate must be None or 'left', got {truncate!r}")
        self.hooks = _Hooks.make(V, logits_processor, stopping_criteria, prefix_allowed_tokens_fn,
                                 beams=opt.num_beams > 1)
        if self.hooks is not None:
            if self.hooks.criteria and opt.num_beams > 1:
                raise ValueError("stopping_criteria do not go with beam search (num_beams > 1)")
            self.hooks.install(opt)
        self.options = opt

        items, self.batch = _split_prompts(prompt)
        self.prompts = []
        for i, p in enumerate(items):
            name = "prompt" if not self.batch else f"prompt {i}"
            if isinstance(p, str):
                if self.tokenizer is None:
                    raise ValueError("this model has no tokenizer: give the prompt as token ids")
                ids = self.tokenizer.encode(p, allowed_special="all") if p else []
                if not ids:  # generate from scratch: GPT-2 starts a document with <|endoftext|>
                    if self.tokenizer.eot_id < 0:
                        raise ValueError(f"{name} is empty and the tokenizer has no <|endoftext|> to start from")
                    ids = [self.tokenizer.eot_id]
            else:
                ids = _token_list(name, p, V)
                if not ids:
                    raise ValueError(f"{name} is empty: give at least one token id")
            if truncate == "left":
                keep = max(1, n_ctx - opt.max_new_tokens)
                ids = ids[-keep:]
            elif len(ids) > n_ctx:
                raise ValueError(f"{name} has {len(ids)} tokens, more than the model's context of {n_ctx}; "
                                 f"pass truncate='left' to keep its end")
            self.prompts.append(ids)
        self.healed = self._heal(_bool("token_healing", token_healing), grammar is not None)
        self._guide(opt, guidance_scale, negative_prompt, V)

    def _guide(self, opt, scale, negative, V: int) -> None:
        """Classifier-free guidance: guidance_scale (None or 1: off) and the negative prompt: text
        or ids for every prompt, or a list of them, one a prompt of a batch (None: each prompt's
        last token, as transformers' default)."""
        if scale is not None:
            opt.guidance_scale = _float("guidance_scale", scale)
        if negative is None:
            return
        if opt.guidance_scale == 1.0:
            raise ValueError("negative_prompt goes with guidance_scale (other than 1)")
        one = isinstance(negative, (str, np.ndarray)) or (isinstance(negative, (list, tuple)) and
                                                           all(_is_int(t) for t in negative))
        if not one and not isinstance(negative, (list, tuple)):
            raise TypeError(f"negative_prompt must be text or a list of token ids (or a list of those, one a prompt), "
                            f"not {type(negative).__name__}")
        items = [negative] if one else list(negative)
        if not one and len(items) != len(self.prompts):
            raise ValueError(f"negative_prompt: {len(items)} negative prompts for {len(self.prompts)} prompts")
        negatives = []
        for i, item in enumerate(items):
            name = "negative_prompt" if one else f"negative_prompt[{i}]"
            if isinstance(item, str):
                if self.tokenizer is None:
                    raise ValueError("this model has no tokenizer: give negative_prompt as token ids")
                ids = self.tokenizer.encode(item, allowed_special="all")
            elif isinstance(item, (list, tuple, np.ndarray)):
                ids = _token_list(name, item, V)
            else:
                raise TypeError(f"{name} must be text or a list of token ids, not {type(item).__name__}")
            if not ids:
                raise ValueError(f"{name} is empty: give at least one token (None: the prompt's last token)")
            negatives.append(ids)
        opt.negative_prompts = negatives

    def _heal(self, on: bool, has_grammar: bool) -> list:
        """Token healing: each prompt's last token is dropped and the first generated token must
        start with its bytes, so a prompt cut mid-word (or ending in a space) continues as the
        text would have been tokenized whole. Returns the dropped token of each prompt (None:
        not healed: a one-token prompt, a special token, bytes that are not whole UTF-8, or no
        new tokens)."""
        healed = [None] * len(self.prompts)
        if not on:
            return healed
        if self.tokenizer is None:
            raise ValueError("token_healing needs a model with a tokenizer (tokenizer.json or vocab.json + merges.txt)")
        if has_grammar:
            raise ValueError("token_healing does not go with a grammar (the grammar would have to match the "
                             "healed prompt text too)")
        specials = set(self.tokenizer.special_tokens.values())
        heal = []
        for p, ids in enumerate(self.prompts):
            piece = self.tokenizer.token_bytes(ids[-1])
            try:
                piece.decode("utf-8")
                whole = True
            except UnicodeDecodeError:
                whole = False
            if len(ids) < 2 or ids[-1] in specials or not whole or self.options.max_new_tokens == 0:
                heal.append(b"")
                continue
            healed[p] = ids[-1]
            self.prompts[p] = ids[:-1]
            heal.append(piece)
        self.options.heal = heal
        return healed

    def start(self) -> "_core.Generation":
        tok_core = self.tokenizer._core if self.tokenizer is not None else None
        return _core.Generation(self.model._core, tok_core, self.prompts, self.options,
                                getattr(self.model, "_prefix_cache", None))

    def prompt_text(self, p: int) -> Optional[str]:
        """Prompt p as the caller gave it (with a healed token's bytes)."""
        if self.tokenizer is None:
            return None
        return self.tokenizer.decode(self.prompts[p] + ([self.healed[p]] if self.healed[p] is not None else []))

    @property
    def n_sequences(self) -> int:
        return len(self.prompts) * self.options.num_return_sequences

    def outputs(self, gen, first: int = 0, timings: Optional[Timings] = None) -> list:
        """GenerationOutput of this request's sequences in gen (ids first, first + 1, ...:
        prompt-major), with gen's timings unless given."""
        if timings is None:
            t = gen.timings
            timings = Timings(t["prefill_tokens"], t["prefill_seconds"], t["decode_tokens"], t["decode_seconds"],
                              t["first_token_seconds"], t["draft_tokens"], t["accepted_draft_tokens"],
                              t["cached_tokens"], t["assistant_tokens"])
        outs = []
        for i in range(first, first + self.n_sequences):
            r = gen.result(i)
            p = r["prompt_index"]
            prompt = self.prompts[p]
            text = r["text"] if self.tokenizer is not None else None
            tokens = list(r["tokens"])
            lps = tops = None
            if self.options.logprobs:
                lps = list(r["logprobs"])
                tops = [list(map(tuple, row)) for row in r["top_logprobs"]] if self.options.top_logprobs else None
            if self.echo:
                if text is not None:
                    text = self.prompt_text(p) + text
                tokens = prompt + tokens
                if lps is not None:
                    lps = [None] + list(r["prompt_logprobs"]) + lps
                    if tops is not None:
                        tops = [None] + [list(map(tuple, row)) for row in r["prompt_top_logprobs"]] + tops
            outs.append(GenerationOutput(text=text, tokens=tokens, finish_reason=r["finish_reason"],
                                         timings=timings, prompt_tokens=list(prompt), logprobs=lps,
                                         top_logprobs=tops, score=r["score"], stop_reason=r["stop_reason"]))
        return outs

    def shape(self, outs: list):
        """The outputs laid out like the input: one, n, a batch, or a batch of n each."""
        n = self.options.num_return_sequences
        per_prompt = [outs[i * n:(i + 1) * n] for i in range(len(self.prompts))]
        if not self.batch:
            return per_prompt[0][0] if n == 1 else per_prompt[0]
        return [group[0] for group in per_prompt] if n == 1 else per_prompt


# -- public API ----------------------------------------------------------------------------------


# the options generate takes (_Request._setup's keyword arguments)
OPTIONS = frozenset(inspect.signature(_Request._setup).parameters) - {"self", "model", "prompt"}
# transformers' names for what pygpt counts otherwise
_HINTS = {"max_length": "use max_new_tokens: pygpt counts new tokens, transformers' max_length the prompt's too",
          "min_length": "use min_new_tokens: pygpt counts new tokens, transformers' min_length the prompt's too",
          "streamer": "use model.stream(...), which yields the text as it comes",
          "generation_config": "pass the options themselves; model.generation_config holds a model's defaults"}


def _check_names(options: dict) -> None:
    """A TypeError naming an option generate does not take, and what was meant where it can tell."""
    for name in options:
        if name not in OPTIONS:
            close = difflib.get_close_matches(name, OPTIONS, n=1)
            hint = _HINTS.get(name) or (f"did you mean {close[0]!r}?" if close else "see help(pygpt.generate)")
            raise TypeError(f"unknown generation option {name!r} ({hint})")


def generate(model, prompt: Union[Prompt, Sequence[Prompt]], **options):
    """Generates a continuation of prompt with model (a pygpt.Model).

    prompt: a str, a list of token ids, or a list of either (a batch, run together).
    Returns a GenerationOutput; a list of them for a batch or num_return_sequences > 1 (a list
    per prompt when both). Options (all keyword-only):

      max_new_tokens=50       tokens to generate at most
      min_new_tokens=0        eos and stop_token_ids are banned until this many are generated
      temperature=0.0         0 = greedy (the default); > 0 samples from softmax(logits / T)
      top_k, top_p, min_p, typical_p      sampling filters (None = off)
      repetition_penalty      > 1 discourages every token already in prompt + output
      presence_penalty, frequency_penalty OpenAI's penalties on generated tokens
      no_repeat_ngram_size    never repeat an n-gram of this size
      logit_bias              {token id: bias added to its logit} (-inf bans it)
      sequence_bias           {(id, ..., id): bias}: added to the last token's logit where the
                              sequence ends with the ids before it (transformers' sequence_bias)
      bad_words_ids           [[id, ...], ...]: never generate these sequences (their last
                              token is banned after the ones before it), as transformers'
      stop                    str or list of str: stop when the text contains one (not included)
      include_stop_str_in_output=False    True: the text ends after the stop string (vLLM's)
      stop_token_ids          stop after one of these tokens (not in the text)
      ignore_eos=False        keep going past <|endoftext|>
      do_sample, eos_token_id, pad_token_id   transformers' names, taken as transformers does:
                              do_sample=True samples (temperature 1 and top_k 50 unless given),
                              False is greedy; eos_token_id replaces the end tokens;
                              pad_token_id is checked and unused (no padding here)
      seed                    int: the same seed gives the same tokens, whatever the batch or
                              thread count; None: a random seed
      logprobs=False, top_logprobs=0      log-probabilities of the tokens (see GenerationOutput)
      echo=False              prepend the prompt to text and tokens
      num_return_sequences=1  samples per prompt (the prompt is run once, its cache forked);
                              with beam search, the best sequences found, best first
      prompt_lookup_num_tokens=None   each step also checks a draft of this many tokens copied
                              from where the last tokens occurred before (in the prompt or
                              output): greedy gives plain greedy decoding's tokens, sampling
                              its distribution (speculative sampling), in fewer forward calls
                              when the text repeats its input
      max_matching_ngram_size=2       prompt lookup: the longest tail that is looked up
      assistant_model=None    a pygpt.Model with the same vocabulary (a smaller one, or this
                              one at int8) that drafts tokens the model checks: greedy gives
                              greedy decoding's tokens, sampling its distribution (speculative
                              sampling); num_assistant_tokens=5: the longest draft a step
      num_beams=1             > 1: beam search (transformers' num_beams, do_sample=False);
                              needs temperature 0; outputs get .score
      length_penalty=1.0      beam search: a sequence scores sum(log-probs) / length ** this
      early_stopping=False    beam search: True stops a prompt once num_beams sequences have
                              finished; False once none of the running beams is likely to do
                              better; 'never' once none can (transformers' semantics)
      truncate=None           'left': cut the prompt's start so prompt + max_new_tokens fits
                              the context; otherwise a prompt longer than it is a ValueError
      logits_processor        a callable fn(input_ids, scores) or a list of them: your own
                              processors, run after the built-in ones (numpy: int64 ids, prompt
                              first; float32 scores to change in place or return anew)
      prefix_allowed_tokens_fn  fn(batch_id, input_ids) -> the token ids allowed next
      stopping_criteria       fn(input_ids, logits) -> bool, or a list: True stops the sequence
                              after its last token (finish_reason "stop"); not with beams

    Generation stops at the model's context (finish_reason "length"). Ctrl-C stops it within
    one token and raises KeyboardInterrupt; the model stays usable.
    """
    req = _Request(model, prompt, **options)
    gen = req.start()
    gen.run()
    return req.shape(req.outputs(gen))


class TextStream:
    """Iterator over the text pieces of one generation (see stream()). Once exhausted,
    .output holds the GenerationOutput; "".join(pieces) == output.text."""

    def __init__(self, req: _Request):
        self._req = req
        self._gen = req.start()
        self._pending_echo = req.echo
        self._finished = False
        self.output: Optional[GenerationOutput] = None

    def __iter__(self) -> Iterator[str]:
        return self

    def _echo(self) -> Optional[str]:
        """The prompt's text, once, first, with echo=True."""
        if self._pending_echo:
            self._pending_echo = False
            return self._req.prompt_text(0) or None
        return None

    def _after_step(self, more: bool) -> str:
        """The text of the step just run ("" if none yet); the output once it was the last."""
        piece = self._gen.take_text(0)
        if not more:
            self._finished = True
            self.output = self._req.outputs(self._gen)[0]
        return piece

    def __next__(self) -> str:
        text = self._echo()
        if text:
            return text
        while not self._finished:
            piece = self._after_step(self._gen.step())
            if piece:
                return piece
        raise StopIteration


class AsyncTextStream(TextStream):
    """The async iterator of astream(): each token is computed in a worker thread (the default
    executor of the running event loop), so the loop keeps serving other tasks meanwhile."""

    def __aiter__(self) -> "AsyncTextStream":
        return self

    async def __anext__(self) -> str:
        text = self._echo()
        if text:
            return text
        loop = asyncio.get_running_loop()
        while not self._finished:
            piece = self._after_step(await loop.run_in_executor(None, self._gen.step))
            if piece:
                return piece
        raise StopAsyncIteration


def stream(model, prompt: Prompt, **options) -> TextStream:
    """Like generate() for one prompt, but yields the text as it is generated: valid UTF-8
    pieces that never include a partial character or the start of a possible stop string.
    Breaking out of the loop stops generation; so does Ctrl-C (KeyboardInterrupt)."""
    return TextStream(_stream_request(model, prompt, options))


async def agenerate(model, prompt: Union[Prompt, Sequence[Prompt]], **options):
    """generate() for asyncio: the same options and outputs. The generation runs in a worker
    thread (the loop's default executor) without the GIL, so the event loop serves other tasks
    meanwhile; concurrent calls on one model take turns token by token. Cancelling the task
    stops the generation after the token in progress."""
    req = _Request(model, prompt, **options)
    gen = req.start()
    cancelled = threading.Event()

    def run() -> None:  # in the worker thread, one token after another until done or cancelled
        while not cancelled.is_set() and gen.step():
            pass

    try:
        await asyncio.get_running_loop().run_in_executor(None, run)
    except asyncio.CancelledError:
        cancelled.set()
        raise
    return req.shape(req.outputs(gen))


def astream(model, prompt: Prompt, **options) -> AsyncTextStream:
    """stream() for asyncio: `async for piece in astream(...)`; each token is computed in a
    worker thread. Leaving the loop (or cancelling the task) stops generation."""
    return AsyncTextStream(_stream_request(model, prompt, options))


# the model's defaults a stream cannot follow: it runs one sequence, without beams
STREAM_LEAVES_OUT = BEAM_OPTIONS + ("num_return_sequences",)


def _stream_request(model, prompt, options) -> _Request:
    req = _Request(model, prompt, leave_out=STREAM_LEAVES_OUT, **options)
    if req.batch:
        raise ValueError("stream() takes one prompt; use generate() for a batch")
    if req.options.num_return_sequences != 1:
        raise ValueError("stream() generates one sequence: num_return_sequences must be 1")
    if req.options.num_beams != 1:
        raise ValueError("stream() cannot stream beam search (num_beams > 1): the best beam is only "
                         "known at the end; use generate()")
    if req.tokenizer is None:
        raise ValueError("stream() yields text and this model has no tokenizer; use generate()")
    return req


def generate_text(prompt: Union[Prompt, Sequence[Prompt]], model=None, **options):
    """One call from text to text: loads model (a folder, a pygpt.Model, or None for the
    default model), generates, and returns the text (a list of texts for a batch or
    num_return_sequences > 1). Options as for generate()."""
    from .model import Model, load

    if model is None or isinstance(model, (str, os.PathLike)):
        model = load(model)
    elif not isinstance(model, Model):
        raise TypeError(f"model must be a folder path, a pygpt.Model or None, got {type(model).__name__}")
    out = generate(model, prompt, **options)

    def text(o):
        if isinstance(o, list):
            return [text(x) for x in o]
        return o.text

    return text(out)
