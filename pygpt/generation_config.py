"""A model's own generation defaults: Hugging Face's generation_config.json, read as pygpt options.

transformers' generate() takes every option a call leaves out from the model's
generation_config.json, where a fine-tune's author writes how it should be decoded (sampled at
0.7 with top_p 0.9, a repetition penalty, beams, ...). pygpt does the same: the converter copies
the file into the model folder, pygpt.load reads it into `model.generation_config` (pygpt
option names), and generate, stream, chat, Batcher, `pygpt generate` and `pygpt serve` use
those values for the options a call does not give.

The reading follows transformers (GenerationConfig._get_default_generation_params):
  * `do_sample: true` samples at `temperature` (1.0 unless given) with `top_k` (50 unless
    given), as transformers does; `do_sample: false` is greedy; without `do_sample` the file
    sets no temperature, and its sampling filters apply when a call samples;
  * a key at transformers' neutral value (top_p 1.0, repetition_penalty 1.0, ...) sets nothing;
  * `eos_token_id` ids other than the tokenizer's end token become `stop_token_ids`,
    `stop_strings` `stop`, `suppress_tokens` a logit bias of -inf;
  * keys that only change what transformers returns, or how it computes (use_cache,
    output_scores, pad_token_id, ...), are left out;
  * keys pygpt cannot follow (max_length: pygpt counts new tokens; penalty_alpha; beam
    sampling; ...) are reported, so that load() can warn that they are ignored.
"""

from __future__ import annotations

import ast
import math

FILE = "generation_config.json"

# keys that are pygpt options of the same name, with transformers' neutral value (None: none)
_SAME = {
    "max_new_tokens": None, "min_new_tokens": 0, "max_time": None, "top_p": 1.0, "min_p": None,
    "typical_p": 1.0, "epsilon_cutoff": 0.0, "eta_cutoff": 0.0, "repetition_penalty": 1.0,
    "no_repeat_ngram_size": 0, "bad_words_ids": None, "num_beams": 1, "length_penalty": 1.0,
    "early_stopping": False, "num_return_sequences": 1, "guidance_scale": None, "token_healing": False,
    "prompt_lookup_num_tokens": None, "max_matching_ngram_size": None,
}

# transformers' sampling defaults where do_sample is true and the temperature or top_k is not given
SAMPLE_TEMPERATURE = 1.0
SAMPLE_TOP_K = 50

# keys that change what transformers returns or how it computes, not which tokens
_NO_EFFECT = {
    "transformers_version", "_from_model_config", "bos_token_id", "pad_token_id", "decoder_start_token_id",
    "use_cache", "cache_implementation", "cache_config", "max_cache_len", "output_attentions",
    "output_hidden_states", "output_scores", "output_logits", "return_dict_in_generate", "renormalize_logits",
    "remove_invalid_values", "compile_config", "disable_compile", "prefill_chunk_size",
    "continuous_batching_config", "is_assistant", "low_memory", "num_assistant_tokens",
    "num_assistant_tokens_schedule", "assistant_confidence_threshold", "assistant_lookbehind",
    "target_lookbehind", "assistant_early_exit", "speculation_type", "use_mtp",
}

# keys pygpt does not follow, with the value at which they do nothing in transformers
_UNSUPPORTED = {
    "max_length": None, "min_length": 0, "num_beam_groups": 1, "diversity_penalty": 0.0, "penalty_alpha": None,
    "dola_layers": None, "constraints": None, "force_words_ids": None, "forced_bos_token_id": None,
    "forced_eos_token_id": None, "begin_suppress_tokens": None, "watermarking_config": None,
    "encoder_repetition_penalty": 1.0, "encoder_no_repeat_ngram_size": 0, "top_h": None,
}


def _ids(name: str, value, where: str) -> list:
    """One token id or a list of them, as a list."""
    if isinstance(value, int) and not isinstance(value, bool):
        return [value]
    if isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return list(value)
    raise ValueError(f"{where}: {name} must be a token id or a list of them, got {value!r}")


def _sequence_bias(value, where: str) -> dict:
    """transformers' sequence_bias as saved: {"(id, ...)": bias}, or the older [[[ids], bias], ...]."""
    if isinstance(value, dict):
        items = []
        for key, bias in value.items():
            try:
                ids = ast.literal_eval(key)
            except (ValueError, SyntaxError):
                ids = None
            if not isinstance(ids, tuple):
                raise ValueError(f"{where}: sequence_bias key {key!r} is not a tuple of token ids like \"(1, 2)\"")
            items.append((ids, bias))
    elif isinstance(value, list) and all(isinstance(p, list) and len(p) == 2 and isinstance(p[0], list)
                                         for p in value):
        items = [(tuple(ids), bias) for ids, bias in value]
    else:
        raise ValueError(f"{where}: sequence_bias must be an object {{\"(id, ...)\": bias}}")
    return {ids: bias for ids, bias in items}  # the ids and biases are checked as generate's


def read(raw, where: str = FILE, eot_id: int | None = None, vocab_size: int | None = None) -> tuple[dict, list]:
    """(pygpt options, the keys ignored because pygpt cannot follow them) of a parsed
    generation_config.json. eot_id: the tokenizer's end token, which eos_token_id need not repeat;
    vocab_size: eos ids at or past it are left out (transformers' GPT2Config says 50256 for
    every vocabulary: a token the model cannot generate never ends it). The option values are
    checked where they are used (generate's own checks)."""
    if not isinstance(raw, dict):
        raise ValueError(f"{where}: must be a JSON object, got {type(raw).__name__}")
    options, ignored = {}, []
    for key, value in raw.items():
        if value is None or key in _NO_EFFECT or key in ("do_sample", "temperature", "top_k"):
            continue
        if key in _SAME:
            if value != _SAME[key] or isinstance(value, bool) != isinstance(_SAME[key], bool):
                options[key] = value
        elif key == "eos_token_id":
            stops = [i for i in _ids(key, value, where) if i != eot_id and (vocab_size is None or i < vocab_size)]
            if stops:
                options["stop_token_ids"] = stops
        elif key == "stop_strings":
            options["stop"] = value
        elif key == "suppress_tokens":
            options["logit_bias"] = {i: -math.inf for i in _ids(key, value, where)}
        elif key == "sequence_bias":
            options["sequence_bias"] = _sequence_bias(value, where)
        elif key == "exponential_decay_length_penalty":
            if not isinstance(value, list) or len(value) != 2:
                raise ValueError(f"{where}: exponential_decay_length_penalty must be [start, factor]")
            options[key] = tuple(value)
        elif key not in _UNSUPPORTED or value != _UNSUPPORTED[key]:
            ignored.append(key)
    do_sample = raw.get("do_sample")
    if do_sample is not None and not isinstance(do_sample, bool):
        raise ValueError(f"{where}: do_sample must be true or false, got {do_sample!r}")
    top_k = raw.get("top_k")
    if do_sample:
        temperature = raw.get("temperature")
        options["temperature"] = SAMPLE_TEMPERATURE if temperature is None else temperature
        options["top_k"] = SAMPLE_TOP_K if top_k is None else top_k
        if options.get("num_beams", 1) != 1:  # transformers' beam sampling
            ignored.append("num_beams (beam sampling)")
            for key in ("num_beams", "length_penalty", "early_stopping"):
                options.pop(key, None)
    else:
        if do_sample is False:
            options["temperature"] = 0.0
        if top_k is not None:
            options["top_k"] = top_k
    if options.get("top_k") == 0:  # transformers' "no top-k"
        del options["top_k"]
    return options, ignored


# transformers' generate() keyword arguments that are not pygpt options, which a call may pass
# as a transformers user writes them (from_call)
CALL_KEYS = ("do_sample", "eos_token_id", "pad_token_id")


def from_call(options: dict, defaults: dict, eot_id: int | None) -> dict:
    """A call's options with transformers' do_sample, eos_token_id and pad_token_id turned into
    pygpt's, as transformers' generate() takes them:
      * do_sample=True samples at the call's temperature, else the model's default, else 1.0,
        with top_k 50 unless the call or the model sets one; do_sample=False is greedy;
      * eos_token_id (an id or a list) replaces the model's end tokens: the ids become
        stop_token_ids, and <|endoftext|> ends generation only if it is one of them;
      * pad_token_id is checked and dropped: pygpt runs batches without padding."""
    if not any(key in options for key in CALL_KEYS):
        return options
    options = dict(options)
    pad = options.pop("pad_token_id", None)
    if pad is not None and (not isinstance(pad, int) or isinstance(pad, bool) or pad < 0):
        raise ValueError(f"pad_token_id must be a token id, got {pad!r}")
    if "eos_token_id" in options:
        eos = options.pop("eos_token_id")
        if eos is not None:
            if "stop_token_ids" in options or "ignore_eos" in options:
                raise ValueError("give transformers' eos_token_id or pygpt's stop_token_ids and ignore_eos, not both")
            ids = _ids("eos_token_id", eos, "generate")
            options["stop_token_ids"] = [i for i in ids if i != eot_id]
            options["ignore_eos"] = eot_id not in ids
    if "do_sample" in options:
        do_sample = options.pop("do_sample")
        if not isinstance(do_sample, bool):
            raise TypeError(f"do_sample must be True or False, got {do_sample!r}")
        if not do_sample:
            options["temperature"] = 0.0
        else:
            if options.get("num_beams", defaults.get("num_beams", 1)) != 1:
                raise ValueError("do_sample=True with num_beams > 1 is transformers' beam sampling, which pygpt "
                                 "does not run: sample (num_beams=1) or search (do_sample=False)")
            if "temperature" not in options:
                options["temperature"] = defaults.get("temperature") or SAMPLE_TEMPERATURE
            elif options["temperature"] == 0:
                raise ValueError("do_sample=True needs a temperature > 0 (do_sample=False is greedy)")
            if "top_k" not in options and "top_k" not in defaults:
                options["top_k"] = SAMPLE_TOP_K
    return options
