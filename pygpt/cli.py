"""The `pygpt` command (also `python -m pygpt`): generate, info, tokenize.

Errors are reported as one line on stderr with a non-zero exit status, never a traceback.
"""

from __future__ import annotations

import argparse
import collections
import os
import sys

# The command line samples by default, which reads better than greedy decoding; the Python
# API keeps transformers' greedy default.
CLI_TEMPERATURE = 0.8
CLI_TOP_P = 0.95
CLI_MAX_NEW_TOKENS = 100

EXIT_ERROR = 1
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report Ctrl-C


class CliError(Exception):
    """A user error with a message fit for one line on stderr."""


def _write(stream, text: str) -> None:
    # UTF-8 whatever the locale: generated text can hold any character
    buf = getattr(stream, "buffer", None)
    if buf is not None:
        stream.flush()
        buf.write(text.encode("utf-8", errors="replace"))
        buf.flush()
    else:
        stream.write(text)
        stream.flush()


def _read_prompt(prompt: str) -> str:
    if prompt != "-":
        return prompt
    data = sys.stdin.buffer.read()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise CliError(f"the prompt on stdin is not valid UTF-8 ({e.reason} at byte {e.start})") from None
    return text[:-1] if text.endswith("\n") else text  # the newline `echo` adds


def _load(path, threads, kv_cache="auto", lora=None):
    import pygpt

    if path is not None and not os.path.isdir(path):
        raise CliError(f"{path}: no such model folder" if not os.path.exists(path) else f"{path}: not a folder")
    return pygpt.load(path, n_threads=threads, kv_cache=kv_cache, lora=lora)


def _sampling_options(args, defaults: dict) -> dict:
    """generate options from the sampling and stopping arguments (all but the seed). An option
    the command line leaves out is the model's own (defaults: its generation_config), else the
    command line's: CLI_MAX_NEW_TOKENS, and CLI_TEMPERATURE (greedy with beams) and top-p
    CLI_TOP_P where the model sets no temperature (a model that samples says how)."""
    max_new_tokens, temperature, top_p = args.max_new_tokens, args.temperature, args.top_p
    if max_new_tokens is None:  # always given: pygpt chat fits the conversation to it
        max_new_tokens = defaults.get("max_new_tokens", CLI_MAX_NEW_TOKENS)
    if temperature is None and "temperature" not in defaults:  # beam search samples only when asked to (and fails)
        beams = args.num_beams if getattr(args, "num_beams", None) is not None else defaults.get("num_beams", 1)
        temperature = 0.0 if beams > 1 else CLI_TEMPERATURE
    if top_p is None and not args.mirostat and "temperature" not in defaults and "top_p" not in defaults:
        top_p = CLI_TOP_P
    beam_search = {k: getattr(args, k, None) for k in ("num_beams", "length_penalty")}  # generate's only
    options = dict(
        max_new_tokens=max_new_tokens, min_new_tokens=args.min_new_tokens, max_time=args.max_time,
        temperature=temperature, top_k=args.top_k, top_p=top_p,
        min_p=args.min_p, typical_p=args.typical_p, mirostat=args.mirostat, mirostat_tau=args.mirostat_tau,
        mirostat_eta=args.mirostat_eta, dynatemp_range=args.dynatemp_range, dynatemp_exponent=args.dynatemp_exponent,
        exponential_decay_length_penalty=args.exponential_decay_length_penalty,
        guidance_scale=args.guidance_scale, negative_prompt=args.negative_prompt,
        dry_multiplier=args.dry_multiplier, dry_base=args.dry_base,
        dry_allowed_length=args.dry_allowed_length, dry_penalty_last_n=args.dry_penalty_last_n,
        top_n_sigma=args.top_n_sigma, epsilon_cutoff=args.epsilon_cutoff, eta_cutoff=args.eta_cutoff,
        xtc_probability=args.xtc_probability, xtc_threshold=args.xtc_threshold,
        repetition_penalty=args.repetition_penalty, presence_penalty=args.presence_penalty,
        frequency_penalty=args.frequency_penalty, no_repeat_ngram_size=args.no_repeat_ngram_size,
        stop=args.stop or None, ignore_eos=args.ignore_eos, echo=args.echo,
        truncate="left" if args.truncate else None, prompt_lookup_num_tokens=args.prompt_lookup,
        token_healing=args.token_healing, **beam_search, **_grammar_options(args))
    return {k: v for k, v in options.items() if v is not None}  # None: the model's default, else pygpt's


def _grammar_options(args) -> dict:
    """grammar, from --grammar FILE, --json-schema FILE, --regex PATTERN or --json."""
    from .grammar import Grammar

    if args.json:
        return dict(grammar=Grammar.json())
    if args.regex is not None:
        try:
            return dict(grammar=Grammar.from_regex(args.regex))
        except ValueError as e:
            raise CliError(f"--regex: {e}") from None
    path = args.grammar or args.json_schema
    if path is None:
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise CliError(f"{path}: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise CliError(f"{path}: not UTF-8 text ({e.reason})") from None
    try:
        return dict(grammar=Grammar(text) if args.grammar else Grammar.from_json_schema(text))
    except ValueError as e:
        raise CliError(f"{path}: {e}") from None


def _assistant_options(args) -> dict:
    """assistant_model (loaded) and num_assistant_tokens from --assistant, --assistant-tokens."""
    if args.assistant is None:
        if args.assistant_tokens is not None:
            raise CliError("--assistant-tokens needs --assistant")
        return {}
    options = dict(assistant_model=_load(args.assistant, args.threads))
    if args.assistant_tokens is not None:
        options["num_assistant_tokens"] = args.assistant_tokens
    return options


# -- subcommands ---------------------------------------------------------------------------------


def _load_with_tokenizer(args):
    """_load for the commands that take text: a model folder without a tokenizer is an error."""
    model = _load(args.model, args.threads, args.kv_cache, args.lora)
    if model.tokenizer is None:
        raise CliError(f"{model.path}: the model folder has no tokenizer (tokenizer.json, or vocab.json + "
                       "merges.txt)")
    return model


def cmd_generate(args) -> int:
    prompt = _read_prompt(args.prompt)
    model = _load_with_tokenizer(args)
    options = dict(_sampling_options(args, model.generation_config), seed=args.seed, **_assistant_options(args))
    if options.get("num_beams", model.generation_config.get("num_beams", 1)) > 1:  # known at the end: print it then
        out = model.generate(prompt, **options)
        wrote = out.text
        _write(sys.stdout, wrote)
    else:
        stream = model.stream(prompt, **options)
        wrote = ""
        for piece in stream:
            _write(sys.stdout, piece)
            wrote = piece
        out = stream.output
    if sys.stdout.isatty() and not wrote.endswith("\n"):
        _write(sys.stdout, "\n")
    if args.stats:
        score = f", score={out.score:.4f}" if out.score is not None else ""
        t = out.timings
        drafts = f", {t.accepted_draft_tokens} of {t.draft_tokens} draft tokens right" if t.draft_tokens else ""
        _write(sys.stderr, f"[{len(out.tokens)} tokens, finish_reason={out.finish_reason}{score}{drafts}; {t}]\n")
    return 0


def _fit_conversation(model, template, messages: list, room: int) -> None:
    """Drops the oldest messages (not a leading system message) until the conversation's prompt
    leaves `room` tokens of the context, keeping at least the last message, and starting with
    a user's (templates may insist on turns that alternate)."""
    first = 1 if messages and messages[0]["role"] == "system" else 0
    n_ctx = model.config["n_ctx"]
    while len(messages) - first > 1 and \
            len(model.tokenizer.encode(model.apply_chat_template(messages, template=template), allowed_special="all")) \
            + room > n_ctx:
        del messages[first]
        while len(messages) - first > 1 and messages[first]["role"] != "user":
            del messages[first]


def cmd_chat(args) -> int:
    """A conversation on stdin and stdout: each line read is the user's message, the reply is
    streamed back; the conversation so far is the next reply's context."""
    import pygpt

    model = _load_with_tokenizer(args)
    template = args.chat_template
    options = dict(_sampling_options(args, model.generation_config), **_assistant_options(args))
    messages = [{"role": "system", "content": args.system}] if args.system else []
    interactive = sys.stdin.isatty()
    # a batcher keeps the last turn's keys and values: the next prompt, which starts with it,
    # runs only its new tokens
    batcher = pygpt.Batcher(model, max_batch=1, prefix_cache=1)
    try:
        _chat_turns(model, batcher, template, options, messages, interactive, args)
    finally:
        batcher.close()
    return 0


def _chat_turns(model, batcher, template, options, messages, interactive, args) -> None:
    turn = 0
    while True:
        if interactive:
            _write(sys.stderr, "> ")
        line = sys.stdin.readline()
        if not line:
            break
        if not line.strip():
            continue
        messages.append({"role": "user", "content": line.rstrip("\r\n")})
        _fit_conversation(model, template, messages, min(options["max_new_tokens"], model.config["n_ctx"] // 2))
        seed = None if args.seed is None else args.seed + turn  # turn k samples with seed + k
        reply = batcher.chat_stream(messages, template=template, seed=seed, **options)
        for piece in reply:
            _write(sys.stdout, piece)
        _write(sys.stdout, "\n")
        messages.append({"role": "assistant", "content": reply.output.text})
        turn += 1


def _batch_lines(f):
    """(line number, the input's JSON object) for each non-empty line of a batch input file."""
    import json

    for number, line in enumerate(f, 1):
        if not line.strip():
            continue
        if not line.startswith("{"):
            yield number, {"prompt": line.rstrip("\r\n")}
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as e:
            raise CliError(f"line {number}: not JSON: {e.msg}") from None
        if not isinstance(item, dict) or not isinstance(item.get("prompt"), str):
            raise CliError(f"line {number}: a JSON line must be an object with a \"prompt\" string")
        yield number, item


def cmd_batch(args) -> int:
    """Generates a continuation of every prompt of a file, in one continuous batch, and writes
    one JSON line each, in the input's order."""
    import json
    import time

    import pygpt
    from .generation import _Request

    model = _load_with_tokenizer(args)
    options = dict(_sampling_options(args, model.generation_config), **_assistant_options(args))
    _Request(model, [0], seed=0, **options)  # a bad option fails here, once, not on every line
    seed = args.seed
    try:
        src = sys.stdin if args.input == "-" else open(args.input, encoding="utf-8")
    except OSError as e:
        raise CliError(f"{args.input}: {e.strerror}") from None
    dst = sys.stdout if args.output is None else open(args.output, "w", encoding="utf-8")
    failed = done = tokens = prompt_tokens = cached = 0
    t0 = time.perf_counter()

    def write(number, item, job):
        nonlocal failed, done, tokens, prompt_tokens, cached
        try:
            out = job.result()
            item.update(text=out.text, finish_reason=out.finish_reason,
                        generated_tokens=len(out.tokens) - (len(out.prompt_tokens) if args.echo else 0))
            tokens += item["generated_tokens"]
            prompt_tokens += len(out.prompt_tokens)
            cached += out.timings.cached_tokens
        except (ValueError, TypeError, MemoryError) as e:
            item["error"] = str(e) or type(e).__name__
            failed += 1
        done += 1
        dst.write(json.dumps(item, ensure_ascii=False) + "\n")
        dst.flush()

    pending = collections.deque()  # (line number, item, job), in the input's order
    window = 4 * args.max_batch    # submitted ahead of the line being written
    try:
        with src, pygpt.Batcher(model, max_batch=args.max_batch, prefill_chunk=args.prefill_chunk,
                                prefix_cache=args.prefix_cache) as batcher:
            for number, item in _batch_lines(src):
                line_seed = None if seed is None else (seed + number) % 2 ** 64
                try:
                    job = batcher.submit(item["prompt"], seed=line_seed, **options)
                except (ValueError, TypeError) as e:
                    job = _Failed(e)
                pending.append((number, item, job))
                while len(pending) > window or (pending and pending[0][2].done()):
                    write(*pending.popleft())
            while pending:
                write(*pending.popleft())
    except UnicodeDecodeError as e:
        raise CliError(f"{args.input}: not UTF-8 text ({e.reason})") from None
    finally:
        if dst is not sys.stdout:
            dst.close()
    if args.stats:
        seconds = time.perf_counter() - t0
        _write(sys.stderr, f"[{done} prompts, {tokens} tokens in {seconds:.2f} s: {tokens / seconds:.1f} tok/s; "
                           f"{prompt_tokens} prompt tokens, {cached} of them reused]\n")
    if failed:
        raise CliError(f"{failed} of {done} prompts failed (see their \"error\")")
    return 0


class _Failed:
    """A batch line refused before it was queued: a Job's face on its error."""

    def __init__(self, error):
        self.error = error

    def done(self) -> bool:
        return True

    def result(self):
        raise self.error


def _huge_pages(model) -> str:
    n = model.huge_page_bytes()
    if n is None:
        return "unknown"
    return f"{n / 2 ** 20:.1f} MiB ({100 * n / model._core.file_bytes:.0f}%)"


def _adapters(model) -> str:
    if not model.lora:
        return "none"
    applied = ", ".join(f"{os.path.abspath(folder)} (scale {scale:g})" for folder, scale in model.lora)
    return f"{applied}; {model._core.lora_bytes / 2 ** 20:.2f} MiB of f32 A and B"


def _tokenizer_line(tok) -> str:
    """pygpt info's tokenizer line: its size and the tokens a fine-tune added past <|endoftext|>."""
    if tok is None:
        return "none"
    added = sorted((i, text) for text, i in tok.added_tokens.items() if text != "<|endoftext|>")
    if not added:
        return f"{tok.vocab_size} tokens"
    shown = ", ".join(repr(text) for _, text in added[:6]) + (", ..." if len(added) > 6 else "")
    return f"{tok.vocab_size} tokens, {len(added)} added ({shown})"


def _dtype_line(c: dict) -> str:
    """The weights' dtype, and for int8 / int4 how many weights share a scale."""
    if c["dtype"] not in ("int8", "int4"):
        return c["dtype"]
    g = c["quant_group_size"]
    return f"{c['dtype']} (a scale per {g} weights)" if g else f"{c['dtype']} (a scale per row)"


def cmd_info(args) -> int:
    import pygpt

    model = _load(args.model, args.threads, lora=args.lora)
    c = model.config
    tied = c.get("tie_word_embeddings", True)
    n_params = c["n_layer"] * 12 * c["n_embd"] ** 2 + ((1 if tied else 2) * c["vocab_size"] + c["n_ctx"]) * c["n_embd"]
    rows = [
        ("model", os.path.abspath(model.path)),
        ("architecture", "GPT-2"),
        ("n_layer", c["n_layer"]),
        ("n_head", c["n_head"]),
        ("n_embd", c["n_embd"]),
        ("n_ctx", c["n_ctx"]),
        ("vocab_size", c["vocab_size"]),
        ("parameters", f"~{n_params / 1e6:.1f} M"),
        ("dtype", _dtype_line(c)),
        ("lm head", "tied (the token embedding)" if tied else "its own (lm_head.weight)"),
        ("kv cache", f"{model.kv_cache} (auto)"),
        ("file size", f"{model._core.file_bytes / 2 ** 20:.1f} MiB"),
        ("in 2 MiB pages", _huge_pages(model)),
        ("lora adapters", _adapters(model)),
        ("tokenizer", _tokenizer_line(model.tokenizer)),
        ("chat template", "chat_template.jinja" if model.chat_template.name != "plain" else "plain (built in)"),
        ("generation defaults", ", ".join(f"{k}={v!r}" for k, v in model.generation_config.items()) or
         "none (pygpt's)"),
        ("isa", model.isa),
        ("threads", model.n_threads),
        ("pygpt", pygpt.__version__),
    ]
    width = max(len(k) for k, _ in rows)
    _write(sys.stdout, "".join(f"{k:<{width}}  {v}\n" for k, v in rows))
    return 0


def cmd_embed(args) -> int:
    import json

    model = _load(args.model, args.threads, lora=args.lora)
    texts = [_read_prompt(t) for t in args.texts]
    vectors = model.embed(texts, pooling=args.pooling, normalize=not args.no_normalize, truncate=args.truncate)
    _write(sys.stdout, "".join(json.dumps(v.tolist()) + "\n" for v in vectors))
    return 0


def cmd_tokenize(args) -> int:
    from .tokenizer import Tokenizer

    if not os.path.isdir(args.model):
        raise CliError(f"{args.model}: no such model folder")
    tok = Tokenizer.from_dir(args.model)
    ids = tok.encode(_read_prompt(args.text), allowed_special="all" if args.special else frozenset())
    if args.pieces:
        _write(sys.stdout, "".join(f"{i}\t{tok.token_bytes(i)!r}\n" for i in ids))
    else:
        _write(sys.stdout, " ".join(map(str, ids)) + "\n")
    return 0


# -- argument parsing ----------------------------------------------------------------------------


def _positive_int(text):
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {v}")
    return v


def _decay(text):
    """START,FACTOR of --exponential-decay-length-penalty."""
    try:
        start, factor = text.split(",")
        return int(start), float(factor)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not START,FACTOR (an integer and a number): {text!r}") from None


def _non_negative_int(text):
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {v}")
    return v


def _add_decoding_arguments(g, seed_help: str) -> None:
    """The options generate and batch share: length, sampling, stopping and output."""
    g.add_argument("-n", "--max-new-tokens", type=_non_negative_int, default=None, metavar="N",
                   help="generate at most N tokens; fewer at the end of the context (default: the model's "
                        f"generation_config.json, else {CLI_MAX_NEW_TOKENS})")
    s = g.add_argument_group("sampling")
    s.add_argument("-t", "--temperature", type=float, default=None,
                   help=f"0 = greedy (default: {CLI_TEMPERATURE}; 0 with --num-beams)")
    s.add_argument("--top-k", type=int, default=None, help="keep the K most likely tokens (default: off)")
    s.add_argument("--top-p", type=float, default=None, help="nucleus sampling: keep the most likely "
                                                              f"tokens up to this probability mass; 1 = off (default: {CLI_TOP_P}, "
                                                              "off with --mirostat)")
    s.add_argument("--min-p", type=float, default=None, help="drop tokens less likely than this times the top one (default: off)")
    s.add_argument("--typical-p", type=float, default=None, help="typical sampling: keep this mass of the most typical tokens (default: off)")
    s.add_argument("--top-n-sigma", type=float, default=None, metavar="N",
                   help="keep the tokens whose logit is within N standard deviations of the largest (default: off)")
    s.add_argument("--epsilon-cutoff", type=float, default=None, help="drop tokens less likely than this (default: off)")
    s.add_argument("--eta-cutoff", type=float, default=None,
                   help="eta sampling: drop tokens below a threshold that falls with the entropy (default: off)")
    s.add_argument("--xtc-probability", type=float, default=None,
                   help="XTC: with this probability, drop the likely tokens (p >= --xtc-threshold) but the least "
                        "likely of them (default: off)")
    s.add_argument("--xtc-threshold", type=float, default=None, help="XTC's threshold (default: 0.1)")
    s.add_argument("--mirostat", type=int, choices=(0, 1, 2), default=0,
                   help="Mirostat 1 or 2 (llama.cpp's): keep the surprise of the text near --mirostat-tau; "
                        "instead of the other filters (default: 0, off)")
    s.add_argument("--mirostat-tau", type=float, default=5.0, help="mirostat's target surprise, in bits (default: %(default)s)")
    s.add_argument("--mirostat-eta", type=float, default=0.1, help="mirostat's learning rate (default: %(default)s)")
    s.add_argument("--guidance-scale", type=float, default=None, metavar="S",
                   help="classifier-free guidance (transformers'): > 1 follows the prompt more closely, "
                        "against --negative-prompt (default: off)")
    s.add_argument("--negative-prompt", default=None, metavar="TEXT",
                   help="what guidance steers away from (default: the prompt's last token alone)")
    s.add_argument("--dynatemp-range", type=float, default=None, metavar="R",
                   help="dynamic temperature (llama.cpp's): from temperature - R for a confident model to "
                        "temperature + R for an unsure one, applied after the filters (default: off)")
    s.add_argument("--dynatemp-exponent", type=float, default=1.0, metavar="E",
                   help="how the dynamic temperature follows the entropy: (entropy / max)^E (default: %(default)s)")
    s.add_argument("--repetition-penalty", type=float, default=None,
                   help="> 1 discourages tokens already in the text (default: off)")
    s.add_argument("--presence-penalty", type=float, default=None, help="subtract this from the logit of every token generated so far (default: 0)")
    s.add_argument("--frequency-penalty", type=float, default=None, help="subtract this times its count from the logit of every generated token (default: 0)")
    s.add_argument("--dry-multiplier", type=float, default=None,
                   help="DRY (llama.cpp's): penalise a token that would extend a repeat of the last tokens "
                        "(default: off; 0.8 is usual)")
    s.add_argument("--dry-base", type=float, default=1.75, help="DRY's penalty grows as BASE^length (default: %(default)s)")
    s.add_argument("--dry-allowed-length", type=int, default=2, metavar="N",
                   help="DRY leaves repeats of up to N tokens alone (default: %(default)s)")
    s.add_argument("--dry-penalty-last-n", type=int, default=-1, metavar="N",
                   help="DRY looks at the last N tokens; -1: all (default: %(default)s)")
    s.add_argument("--no-repeat-ngram-size", type=int, default=None, metavar="N", help="never repeat an N-gram (default: off)")
    s.add_argument("--seed", type=int, default=None, help=seed_help)
    s.add_argument("--prompt-lookup", type=_non_negative_int, default=None, metavar="N",
                   help="also check N draft tokens a step, copied from where the last tokens occurred "
                        "before: faster when the text repeats its input; greedy gives the same text "
                        "(default: off)")
    s.add_argument("--assistant", metavar="DIR", default=None,
                   help="a model folder with the same vocabulary (a smaller model, or this one at int8) "
                        "whose drafts the model checks a step at a time: faster, the same text (greedy) or "
                        "the same distribution (sampling) (default: off)")
    s.add_argument("--assistant-tokens", type=_positive_int, default=None, metavar="N",
                   help="the longest draft of --assistant a step (default: 5)")
    c = g.add_argument_group("constrained output (one of)").add_mutually_exclusive_group()
    c.add_argument("--grammar", metavar="FILE", default=None,
                   help="generate only text that a GBNF grammar (llama.cpp's format) in FILE matches")
    c.add_argument("--json-schema", metavar="FILE", default=None,
                   help="generate only JSON valid under the JSON schema in FILE")
    c.add_argument("--regex", metavar="PATTERN", default=None,
                   help="generate only text that the regular expression matches whole (re.fullmatch; "
                        "\\d \\w \\s as ASCII classes)")
    c.add_argument("--json", action="store_true", help="generate only a JSON object")
    st = g.add_argument_group("stopping and output")
    st.add_argument("--max-time", type=float, default=None, metavar="SECONDS",
                    help="stop after this many seconds (default: no limit)")
    st.add_argument("--min-new-tokens", type=_non_negative_int, default=None, metavar="N",
                    help="do not end (eos or stop tokens) before N tokens (default: 0)")
    st.add_argument("--stop", action="append", metavar="TEXT",
                    help="stop when the text contains TEXT (not printed); may be repeated")
    st.add_argument("--ignore-eos", action="store_true", help="keep going past <|endoftext|>")
    st.add_argument("--exponential-decay-length-penalty", type=_decay, default=None, metavar="START,FACTOR",
                    help="past START new tokens, make the end more likely by FACTOR a token (transformers' "
                         "exponential_decay_length_penalty; default: off)")
    st.add_argument("--echo", action="store_true", help="print the prompt before the continuation")
    st.add_argument("--truncate", action="store_true",
                    help="drop the start of a prompt too long for the context instead of failing")
    st.add_argument("--token-healing", action="store_true",
                    help="regenerate the prompt's last token: the continuation of a prompt cut mid-word or "
                         "ending in a space starts as if the text had been tokenized whole")
    st.add_argument("--stats", action="store_true",
                    help="print token counts, finish reason and speed to stderr at the end")


def _add_runtime_arguments(g) -> None:
    from . import lora

    g.add_argument("--threads", type=_positive_int, default=None, help="threads (default: physical cores)")
    g.add_argument("--kv-cache", choices=("auto", "f32", "f16", "int8"), default="auto",
                   help="how the KV cache stores keys and values; f16 halves its memory and reads, int8 (a scale per "
                        "position and head) leaves 27%%; auto: f32 for "
                        "f32 weights, f16 for bf16/f16, int8 for int8/int4 (default: %(default)s)")
    lora.add_arguments(g)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pygpt", description="Fast CPU inference for GPT-2.",
        epilog="Run 'pygpt COMMAND --help' for the options of each command.")
    from . import __version__

    parser.add_argument("--version", action="version", version=f"pygpt {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    from . import lora

    model_help = "model folder (from pygpt convert); default: the model shipped with pygpt"
    g = sub.add_parser(
        "generate", help="continue a prompt, streaming the text to stdout",
        description="Continue PROMPT and stream the generated text to stdout. The command line samples "
                    f"with temperature {CLI_TEMPERATURE} and top-p {CLI_TOP_P} by default (the Python API "
                    "is greedy by default); --temperature 0 gives greedy decoding. Options left out "
                    "take the model's own defaults first, where its folder has a generation_config.json "
                    "(see 'pygpt info').")
    g.add_argument("prompt", metavar="PROMPT", help="the text to continue; '-' reads it from stdin "
                                                   "(one trailing newline is dropped)")
    g.add_argument("-m", "--model", metavar="DIR", default=None, help=model_help)
    _add_decoding_arguments(g, "random seed: the same seed gives the same text (default: a new one each run)")
    b = g.add_argument_group("beam search")
    b.add_argument("--num-beams", type=_positive_int, default=None, metavar="N",
                   help="> 1: search N beams for the most likely continuation (deterministic; printed "
                        "when done, not streamed) (default: 1)")
    b.add_argument("--length-penalty", type=float, default=None,
                   help="a beam scores its log-probability / length ** this: > 0 favours longer "
                        "sequences (default: 1.0)")
    _add_runtime_arguments(g)
    g.set_defaults(func=cmd_generate)

    from . import batching

    bt = sub.add_parser(
        "batch", help="continue every prompt of a file, in one continuous batch, to JSON lines",
        description="Continue every prompt of FILE and write one JSON line each, in FILE's order: the input "
                    "line's object with text, finish_reason and generated_tokens added (or error, for a prompt "
                    "refused). A line of FILE is a JSON object with a \"prompt\" string (its other keys are "
                    "copied to the output), or, if it does not start with '{', the prompt itself. The prompts "
                    "run together, --max-batch sequences at a time (pygpt.Batcher). The same options as "
                    "generate, without beam search.")
    bt.add_argument("input", metavar="FILE", help="prompts, one a line; '-' reads stdin")
    bt.add_argument("-o", "--output", metavar="FILE", default=None, help="write the JSON lines here (default: stdout)")
    bt.add_argument("-m", "--model", metavar="DIR", default=None, help=model_help)
    _add_decoding_arguments(bt, "random seed: line k samples with seed + k, so a run can be repeated "
                                "(default: a new one each run)")
    bt.add_argument("--max-batch", type=_positive_int, default=batching.DEFAULT_MAX_BATCH, metavar="N",
                    help="most sequences generated at once (default: %(default)s)")
    bt.add_argument("--prefill-chunk", type=_non_negative_int, default=batching.DEFAULT_PREFILL_CHUNK, metavar="N",
                    help="most prompt tokens a step runs; 0: whole prompts (default: %(default)s)")
    bt.add_argument("--prefix-cache", type=_non_negative_int, default=batching.DEFAULT_PREFIX_CACHE, metavar="N",
                    help="reuse the keys and values of a prefix prompts share (a few-shot preamble), keeping the "
                         "caches of the last N finished sequences; 0: off (default: %(default)s)")
    _add_runtime_arguments(bt)
    bt.set_defaults(func=cmd_batch)

    ch = sub.add_parser(
        "chat", help="a conversation: each line of stdin a message, each reply streamed to stdout",
        description="Chat with a model: each line read from stdin is the user's message; the assistant's reply is "
                    "streamed to stdout, one line of output a reply (a reply's own line breaks stay). The "
                    "conversation so far is the context of the next reply (its oldest turns are dropped when it "
                    "outgrows the context). The messages become a prompt through a chat template (Model.chat). "
                    "The same decoding options as generate.")
    ch.add_argument("-m", "--model", metavar="DIR", default=None, help=model_help)
    ch.add_argument("--system", metavar="TEXT", default=None, help="a system message first (default: none)")
    ch.add_argument("--chat-template", metavar="NAME|FILE", default=None,
                    help="'plain', 'chatml' or a Jinja file (default: the model folder's chat_template.jinja, "
                         "else plain)")
    _add_decoding_arguments(ch, "random seed: turn k samples with seed + k (default: a new one each turn)")
    _add_runtime_arguments(ch)
    ch.set_defaults(func=cmd_chat)

    i = sub.add_parser("info", help="show a model's configuration, size, ISA path and threads",
                       description="Show a model's configuration, data type, file size, the SIMD path (ISA) "
                                   "its kernels use on this CPU and the thread count.")
    i.add_argument("model", metavar="DIR", nargs="?", default=None, help=model_help)
    i.add_argument("--threads", type=_positive_int, default=None, help="threads (default: physical cores)")
    lora.add_arguments(i)
    i.set_defaults(func=cmd_info)

    t = sub.add_parser("tokenize", help="print the token ids of a text",
                       description="Print the GPT-2 token ids of TEXT, using the tokenizer in DIR.")
    t.add_argument("model", metavar="DIR", help="model (or tokenizer) folder with tokenizer.json or vocab.json + merges.txt")
    t.add_argument("text", metavar="TEXT", help="the text; '-' reads it from stdin (one trailing newline dropped)")
    t.add_argument("--pieces", action="store_true", help="one token per line: id and its bytes")
    t.add_argument("--special", action="store_true",
                   help="turn special token texts such as <|endoftext|> into their ids (default: plain text)")
    t.set_defaults(func=cmd_tokenize)

    e = sub.add_parser("embed", help="print the embedding of each text, a JSON array a line",
                       description="Print an embedding of each TEXT, one JSON array of n_embd numbers a line, in "
                                   "order: the model's final hidden states, averaged over the text's tokens (or "
                                   "the last token's), scaled to unit length (Model.embed).")
    e.add_argument("texts", metavar="TEXT", nargs="+", help="a text; '-' reads one from stdin "
                                                           "(one trailing newline is dropped)")
    e.add_argument("-m", "--model", metavar="DIR", default=None, help=model_help)
    e.add_argument("--pooling", choices=("mean", "last"), default="mean",
                   help="average the tokens' states, or take the last token's (default: %(default)s)")
    e.add_argument("--no-normalize", action="store_true", help="keep the vectors' lengths")
    e.add_argument("--truncate", action="store_true", help="embed the first n_ctx tokens of a longer text "
                                                            "(default: refuse it)")
    e.add_argument("--threads", type=_positive_int, default=None, help="threads (default: physical cores)")
    lora.add_arguments(e)
    e.set_defaults(func=cmd_embed)

    from . import perplexity

    pp = sub.add_parser("perplexity", help="perplexity of a text file under a model",
                        description="Perplexity of FILE under a model: strided sliding windows of n_ctx "
                                    "tokens, scored like the Hugging Face perplexity guide (pygpt/perplexity.py).")
    perplexity.add_arguments(pp)
    pp.set_defaults(func=perplexity.run)

    from . import bench

    bn = sub.add_parser("bench", help="a model's prefill and decode speed on this machine (as llama-bench)",
                        description=bench.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    bench.add_arguments(bn)
    bn.set_defaults(func=bench.run)

    from . import convert

    cv = sub.add_parser("convert", help="convert a GPT-2 checkpoint into a pygpt model folder",
                        description=convert.DESCRIPTION)
    convert.add_arguments(cv)
    cv.set_defaults(func=convert.run)

    from . import server

    sv = sub.add_parser("serve", help="serve a model over HTTP with OpenAI's completions and chat API",
                        description="Serve a model over HTTP: POST /v1/completions and /v1/chat/completions "
                                    "(OpenAI's completions and chat requests and responses, streaming "
                                    "included; chat messages become a prompt through a chat template, "
                                    "--chat-template), GET /v1/models, GET /health.")
    server.add_arguments(sv)
    sv.set_defaults(func=server.run)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        _write(sys.stderr, "\npygpt: interrupted\n")
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # the reader went away (| head): stop quietly, and keep Python from complaining at exit
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_ERROR
    except CliError as e:
        print(f"pygpt: error: {e}", file=sys.stderr)
        return EXIT_ERROR
    except (ValueError, TypeError, OSError, RuntimeError, MemoryError, ImportError) as e:
        # FileNotFoundError, pygpt.ModelFormatError (a ValueError), bad options...
        msg = str(e) or type(e).__name__
        if isinstance(e, OSError) and e.filename and e.strerror:
            msg = f"{e.filename}: {e.strerror}"
        print(f"pygpt: error: {msg}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
